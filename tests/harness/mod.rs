//! Harness for lab integration tests: one lab at a time (a file lock), built
//! with `scripts/lab.sh`, always torn down, also when the test fails.
//!
//! Lab tests need root. They never skip: without root they fail and say so.
//!
//! Besides the lab itself: [`Lab::up_and_start`] runs mpbond in it,
//! [`NsServer`] is a TCP server on a thread inside a namespace, [`run_in`]
//! runs a closure (a TCP client) inside a namespace with a deadline, and
//! [`Pattern`] / [`Sha256`] make and check deterministic payloads.

#![allow(dead_code)] // each test binary uses its own subset
#![allow(unreachable_pub)] // shared by test binaries, not an API

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use ring::digest;

pub mod download;
pub mod state;
pub mod udp;

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The release binary the lab runs, with the link emulator beside it
/// (neither may be a debug build: it would distort delays and rates);
/// `MPBOND=PATH` in the environment runs that binary instead (as
/// `scripts/lab.sh` does).
///
/// Under `cargo test --release` (the test command) it is the binary cargo
/// built for this test; otherwise it is built once per test binary. Cargo
/// builds the binary for tests with the dev-dependencies' features
/// unified in, so a plain `cargo build --release` here would rebuild it
/// (a minute on two cores) and the next test run would rebuild it back.
pub fn mpbond_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("MPBOND").filter(|b| !b.is_empty()) {
            let bin = PathBuf::from(bin);
            assert!(bin.is_file(), "MPBOND={} is not a file", bin.display());
            return bin;
        }
        let release = !cfg!(debug_assertions);
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--release", "--quiet", "--bin", "mpbond-linkem"]);
        if !release {
            build.args(["--bin", "mpbond"]);
        }
        let status = build
            .current_dir(root())
            .status()
            .expect("run cargo build --release");
        assert!(status.success(), "cargo build --release failed");
        if release {
            PathBuf::from(env!("CARGO_BIN_EXE_mpbond"))
        } else {
            root().join("target/release/mpbond")
        }
    })
}

/// The link emulator the lab runs, found as `scripts/lab.sh` finds it:
/// `MPBOND_LINKEM=PATH`, else `mpbond-linkem` next to [`mpbond_bin`].
pub fn linkem_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("MPBOND_LINKEM").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    mpbond_bin().with_file_name("mpbond-linkem")
}

fn require_root() {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .expect("read /proc/self");
    assert_eq!(
        uid, 0,
        "lab tests need root (network namespaces, AF_PACKET); run scripts/test.sh as root"
    );
    for tool in ["ip", "ethtool", "ping", "flock"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(found, "lab tests need {tool}; scripts/test.sh installs it");
    }
}

/// Runs `scripts/lab.sh ARGS` and returns its output (not checked).
pub fn lab_sh(args: &[&str]) -> Output {
    Command::new(root().join("scripts/lab.sh"))
        .args(args)
        .env("MPBOND", mpbond_bin())
        .output()
        .expect("run scripts/lab.sh")
}

/// Runs `scripts/lab.sh ARGS` and panics with its stderr if it fails.
pub fn lab_ok(args: &[&str]) -> String {
    let out = lab_sh(args);
    assert!(
        out.status.success(),
        "scripts/lab.sh {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exclusive use of the lab's fixed namespace names by one test.
pub struct LabLock {
    _file: File,
}

impl LabLock {
    /// Waits for every other lab test (in any process) to finish.
    pub fn acquire() -> Self {
        require_root();
        let file = File::create("/run/mpbond-lab-user.lock").expect("create the lab test lock");
        let asked = Instant::now();
        file.lock().expect("lock the lab test lock");
        eprintln!(
            "lab: waited {:.1} s for the lab lock",
            asked.elapsed().as_secs_f64()
        );
        // Whatever a crashed earlier run left behind goes first.
        lab_ok(&["down"]);
        Self { _file: file }
    }
}

/// The lab's state directory (`MPB_LAB_RUN` of `scripts/lab.sh`).
pub const RUN: &str = "/run/mpbond-lab";

/// A running lab; dropping it runs `lab.sh down` (which also stops mpbond).
/// When the test is failing, the drop first prints the tails of the
/// client's and the concentrator's logs.
pub struct Lab {
    _lock: LabLock,
    since: Instant,
}

/// Polls `condition` every 20 ms until it holds or `limit` has passed;
/// how long it took.
pub fn within(limit: Duration, mut condition: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if condition() {
            return Some(started.elapsed());
        }
        if started.elapsed() > limit {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` is alive: not gone, and not a zombie waiting for
/// init to reap it (which here may take two seconds; a zombie holds
/// nothing any more).
pub fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The command name, in parentheses, may hold spaces.
    let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
    !matches!(state, Some(Some('Z' | 'X' | 'x')) | None)
}

/// Where each test's time holding the lab is appended (test name and
/// seconds), to see what the suite's time goes to.
pub const LAB_TIMES: &str = "/tmp/mpbond-lab-times.log";

impl Lab {
    /// Brings the lab up with `lab.sh up ARGS`.
    pub fn up(args: &[&str]) -> Self {
        let lock = LabLock::acquire();
        let mut full = vec!["up"];
        full.extend_from_slice(args);
        let lab = Self {
            _lock: lock,
            since: Instant::now(),
        };
        lab_ok(&full);
        lab
    }

    /// Brings the lab up with `lab.sh up UP_ARGS` and starts mpbond in it
    /// with `lab.sh start START_ARGS` (returns once the tunnel carries
    /// traffic, or, with `--no-client`, once the concentrator listens).
    pub fn up_and_start(up_args: &[&str], start_args: &[&str]) -> Self {
        let lab = Self::up(up_args);
        lab.start(start_args);
        lab
    }

    /// `lab.sh start ARGS`; panics with its output (which holds the tails
    /// of the logs) if the tunnel does not come up.
    pub fn start(&self, args: &[&str]) {
        let mut full = vec!["start"];
        full.extend_from_slice(args);
        let started = Instant::now();
        lab_ok(&full);
        eprintln!(
            "lab: start {} took {:.1} s",
            args.join(" "),
            started.elapsed().as_secs_f64()
        );
    }

    /// [`Lab::start`] with `env` (name, value) added to `lab.sh`'s
    /// environment (`MPB_CLIENT_ENV`, say: see LAB.md).
    pub fn start_with_env(&self, args: &[&str], env: &[(&str, &str)]) {
        let started = Instant::now();
        let out = Command::new(root().join("scripts/lab.sh"))
            .arg("start")
            .args(args)
            .env("MPBOND", mpbond_bin())
            .envs(env.iter().copied())
            .output()
            .expect("run scripts/lab.sh");
        assert!(
            out.status.success(),
            "scripts/lab.sh start {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "lab: start {} took {:.1} s",
            args.join(" "),
            started.elapsed().as_secs_f64()
        );
    }

    /// `lab.sh stop`, checked.
    pub fn stop(&self) {
        lab_ok(&["stop"]);
    }

    /// The last `lines` lines of `$RUN/NAME.log` (`client`, `concentrator`,
    /// `probe`, `linkem-dsl`...).
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        log_tail(name, lines)
    }

    /// The pid of a process `lab.sh start` runs (`client`, `concentrator`,
    /// `probe`), from its pid file.
    pub fn pid(&self, name: &str) -> Option<u32> {
        let text = std::fs::read_to_string(format!("{RUN}/{name}.pid")).ok()?;
        text.split_whitespace().next()?.parse().ok()
    }

    /// Sends daemon `name` (`client`, `concentrator`) the signal `flag`
    /// (`kill`'s, e.g. `-HUP`); returns its pid.
    pub fn signal(&self, name: &str, flag: &str) -> u32 {
        let pid = self
            .pid(name)
            .unwrap_or_else(|| panic!("no pid file for {name}"));
        let sent = Command::new("kill")
            .args([flag, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill {flag} {pid} ({name})");
        pid
    }

    /// Kills daemon `name` (`client`, `concentrator`) with SIGKILL, as a
    /// crash would, and waits until it is gone.
    pub fn kill_9(&self, name: &str) {
        let pid = self.signal(name, "-9");
        let deadline = Instant::now() + Duration::from_secs(5);
        while running(pid) {
            assert!(Instant::now() < deadline, "{name} survived kill -9");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `lab.sh link NAME ACTION...`, checked.
    pub fn link(&self, args: &[&str]) {
        let mut full = vec!["link"];
        full.extend_from_slice(args);
        lab_ok(&full);
    }

    /// Emulator counters of `link` as key=value pairs (`up.rx_frames` ...).
    pub fn link_stats(&self, link: &str) -> Vec<(String, String)> {
        let sock = format!("{RUN}/{link}.sock");
        let out = Command::new(linkem_bin())
            .args(["ctl", "--control", &sock, "stats", "--kv"])
            .output()
            .expect("run mpbond-linkem ctl");
        assert!(
            out.status.success(),
            "stats of {link}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if thread::panicking() {
            for name in ["client", "concentrator"] {
                eprintln!(
                    "--- {RUN}/{name}.log (last 30 lines):\n{}",
                    log_tail(name, 30)
                );
            }
        }
        let out = lab_sh(&["down"]);
        let name = thread::current().name().unwrap_or("?").to_owned();
        let line = format!("{name} {:.1}\n", self.since.elapsed().as_secs_f64());
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(LAB_TIMES)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if !out.status.success() && !thread::panicking() {
            panic!(
                "lab.sh down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Runs `f`, one scenario of a test that runs several on one lab: says
/// on stderr when it starts and how long it took, and, if it panics, that
/// this scenario failed (after the panic's own message).
pub fn scenario<T>(name: &str, f: impl FnOnce() -> T) -> T {
    struct Failed<'a>(&'a str);
    impl Drop for Failed<'_> {
        fn drop(&mut self) {
            if thread::panicking() {
                eprintln!("lab: scenario {} FAILED", self.0);
            }
        }
    }
    eprintln!("lab: scenario {name}");
    let started = Instant::now();
    let failed = Failed(name);
    let value = f();
    drop(failed);
    eprintln!(
        "lab: scenario {name} passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    value
}

/// Runs [`scenario`] `name` on mpbond started afresh with
/// [`Lab::start`]`(START_ARGS)`, then stops mpbond: several scenarios
/// share one lab, none sees another's daemons (their flows, tunnels,
/// sessions). Measured: `start` then `stop` take about 2.5 s, a lab of
/// its own (`up`, `start`, `down`) about 5 s.
pub fn on_fresh_daemons(lab: &Lab, start_args: &[&str], name: &str, f: impl FnOnce()) {
    lab.start(start_args);
    scenario(name, f);
    lab.stop();
}

fn log_tail(name: &str, lines: usize) -> String {
    match std::fs::read_to_string(format!("{RUN}/{name}.log")) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(no log: {e})"),
    }
}

/// Runs a command inside namespace `ns` and returns its output.
pub fn ns_run(ns: &str, cmd: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()
        .unwrap_or_else(|e| panic!("ip netns exec {ns} {}: {e}", cmd.join(" ")))
}

/// Like [`ns_run`], panicking with stderr on failure; returns stdout.
pub fn ns_ok(ns: &str, cmd: &[&str]) -> String {
    let out = ns_run(ns, cmd);
    assert!(
        out.status.success(),
        "in {ns}: {} failed:\n{}{}",
        cmd.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a thread that lives in namespace `ns` (sockets it opens
/// belong there) and returns its result.
pub fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let ns = ns.to_owned();
    thread::spawn(move || {
        mpbond::sys::enter_netns(&ns).unwrap_or_else(|e| panic!("enter namespace {ns}: {e}"));
        f()
    })
}

/// Runs `f` on a thread in namespace `ns` and returns its result; panics
/// (naming `what`) if it panicked or takes longer than `limit`. A thread
/// that overruns is left behind: the test fails anyway.
pub fn run_in<T: Send + 'static>(
    ns: &str,
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = in_ns(ns, move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(value) => {
            let _ = handle.join();
            value
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} (in {ns}) did not finish within {limit:?}")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the thread ended without a result or a panic"),
        },
    }
}

/// Ping statistics.
#[derive(Debug, Clone, Copy)]
pub struct PingStats {
    pub sent: u32,
    pub received: u32,
    pub min_ms: f64,
    pub avg_ms: f64,
    pub max_ms: f64,
}

/// Pings `addr` from `ns` `count` times `interval` apart (each reply waited
/// for at most 1 s) and parses the summary.
pub fn ping(ns: &str, addr: &str, count: u32, interval: Duration) -> PingStats {
    let out = ns_run(
        ns,
        &[
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            &format!("{:.3}", interval.as_secs_f64()),
            "-W",
            "1",
            addr,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    parse_ping(&text)
        .unwrap_or_else(|| panic!("cannot parse ping output from {ns} to {addr}:\n{text}"))
}

fn parse_ping(text: &str) -> Option<PingStats> {
    // "5 packets transmitted, 5 received, 0% packet loss, time 4005ms"
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut nums = line
        .split(',')
        .map(|p| p.trim().split(' ').next().unwrap_or(""));
    let sent = nums.next()?.parse().ok()?;
    let received = nums.next()?.parse().ok()?;
    // "rtt min/avg/max/mdev = 20.1/20.2/20.3/0.1 ms" (absent when none came back)
    let (min_ms, avg_ms, max_ms) = match text.lines().find(|l| l.contains("min/avg/max")) {
        Some(l) => {
            let v: Vec<f64> = l
                .split('=')
                .nth(1)?
                .trim()
                .split(' ')
                .next()?
                .split('/')
                .filter_map(|x| x.parse().ok())
                .collect();
            (*v.first()?, *v.get(1)?, *v.get(2)?)
        }
        None => (f64::NAN, f64::NAN, f64::NAN),
    };
    Some(PingStats {
        sent,
        received,
        min_ms,
        avg_ms,
        max_ms,
    })
}

// ---------------------------------------------------------------- payloads

/// Deterministic pseudo-random bytes (xorshift64), generated as they are
/// sent, so a transfer of any size costs no memory.
#[derive(Debug, Clone)]
pub struct Pattern {
    state: u64,
}

impl Pattern {
    /// The stream for `seed`; different seeds give different streams.
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        }
    }

    /// Fills `buf` with the next bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            chunk.copy_from_slice(&self.state.to_le_bytes()[..chunk.len()]);
        }
    }

    /// The first `len` bytes for `seed`.
    pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        Self::new(seed).fill(&mut buf);
        buf
    }

    /// The SHA-256 of the first `len` bytes for `seed`.
    pub fn sha256(seed: u64, len: u64) -> Sha256 {
        send_pattern(&mut io::sink(), seed, len).expect("writing to a sink cannot fail")
    }
}

/// A SHA-256 digest (printed in hex).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        let mut h = Hasher::new();
        h.update(data);
        h.finish()
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first 8 bytes are plenty to tell two digests apart in a message.
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…")
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Incremental SHA-256 that also counts bytes.
pub struct Hasher {
    ctx: digest::Context,
    len: u64,
}

impl Hasher {
    /// An empty hash.
    pub fn new() -> Self {
        Self {
            ctx: digest::Context::new(&digest::SHA256),
            len: 0,
        }
    }

    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.ctx.update(data);
        self.len += data.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The digest.
    pub fn finish(self) -> Sha256 {
        let mut out = [0; 32];
        out.copy_from_slice(self.ctx.finish().as_ref());
        Sha256(out)
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------- TCP clients

/// Read and write timeout of every socket the harness makes: a stalled
/// transfer fails instead of hanging the suite.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects to `addr` within `timeout`, with [`IO_TIMEOUT`] on reads and
/// writes and Nagle off. Call it on a thread inside the namespace (see
/// [`run_in`]).
pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Writes the first `len` bytes of [`Pattern`] `seed`; returns their hash.
/// One short request to a [`Behavior::Reply`] server at `addr`: `request`
/// bytes whose first 8 are `seed`, then the whole answer; `Ok(true)` if it
/// is the `reply` bytes of [`Pattern`] `seed`. Connect and read time out
/// after 2 s, so a hang fails at once.
pub fn short_request(
    addr: SocketAddr,
    seed: u64,
    request: usize,
    reply: usize,
) -> io::Result<bool> {
    let mut s = connect(addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut bytes = Pattern::bytes(seed, request);
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    s.write_all(&bytes)?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    Ok(answer == Pattern::bytes(seed, reply))
}

/// The requests among `results` (number, outcome of [`short_request`],
/// time taken) that failed, answered wrong or took `limit` or longer, one
/// line each for an assertion message.
pub fn bad_requests(results: &[(u64, io::Result<bool>, Duration)], limit: Duration) -> Vec<String> {
    results
        .iter()
        .filter(|(_, r, t)| !matches!(r, Ok(true)) || *t >= limit)
        .map(|(i, r, t)| format!("request {i}: {r:?} after {t:?}"))
        .collect()
}

/// Asks `server` (a [`Behavior::Source`]) for its data from namespace
/// `ns` and reads to the end; returns how many bytes came, their hash and
/// how long it took. Panics (naming `what`) if it fails or takes longer
/// than `limit`.
pub fn download_hashed(
    ns: &str,
    server: SocketAddr,
    limit: Duration,
    what: &str,
) -> ((u64, Sha256), Duration) {
    let started = Instant::now();
    let got = run_in(ns, what, limit, move || {
        let mut s = connect(server, Duration::from_secs(5))?;
        s.write_all(b"get\n")?;
        read_hashed(&mut s)
    });
    let took = started.elapsed();
    let got = got.unwrap_or_else(|e| panic!("{what}: download from {server} failed: {e}"));
    (got, took)
}

/// Uploads `len` bytes of the pattern `seed` from namespace `ns` to
/// `server` (a [`Behavior::Sink`]), half-closes and waits for the server
/// to close; returns the hash sent and how long it took. Panics (naming
/// `what`) if it fails or takes longer than `limit`.
pub fn upload_pattern(
    ns: &str,
    server: SocketAddr,
    seed: u64,
    len: u64,
    limit: Duration,
    what: &str,
) -> (Sha256, Duration) {
    let started = Instant::now();
    let sent = run_in(ns, what, limit, move || {
        let mut s = connect(server, Duration::from_secs(5))?;
        let hash = send_pattern(&mut s, seed, len)?;
        s.shutdown(std::net::Shutdown::Write)?;
        // The server closes after reading everything.
        read_hashed(&mut s)?;
        Ok::<_, io::Error>(hash)
    });
    let took = started.elapsed();
    let sent =
        sent.unwrap_or_else(|e| panic!("{what}: upload of {len} bytes to {server} failed: {e}"));
    (sent, took)
}

pub fn send_pattern(stream: &mut impl Write, seed: u64, len: u64) -> io::Result<Sha256> {
    let mut pattern = Pattern::new(seed);
    let mut hash = Hasher::new();
    let mut buf = vec![0; 64 << 10];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).expect("fits");
        pattern.fill(&mut buf[..n]);
        stream.write_all(&buf[..n])?;
        hash.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hash.finish())
}

/// Reads to the end of the stream; returns how many bytes came and their
/// hash. Bounded by the socket's read timeout.
pub fn read_hashed(stream: &mut impl Read) -> io::Result<(u64, Sha256)> {
    let mut hash = Hasher::new();
    let mut buf = vec![0; 64 << 10];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok((hash.len(), hash.finish()));
        }
        hash.update(&buf[..n]);
    }
}

/// Reads `stream` to its end, checking every byte against [`Pattern`]
/// `seed` as it comes; `after_read` gets the count after each read (to
/// pace the reader or report progress). Returns how many bytes came, all
/// of them right, and how the stream ended: `Ok` for a clean end of stream,
/// the read's error otherwise (`InvalidData` at the first wrong byte).
pub fn read_pattern(
    stream: &mut impl Read,
    seed: u64,
    mut after_read: impl FnMut(u64),
) -> (u64, io::Result<()>) {
    // The stream as send_pattern makes it: blocks of 64 KiB (a multiple of
    // 8, so that no generated byte is skipped).
    let mut pattern = Pattern::new(seed);
    let mut block = vec![0; 64 << 10];
    pattern.fill(&mut block);
    let (mut at, mut buf, mut total) = (0, vec![0; 64 << 10], 0u64);
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return (total, Ok(())),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return (total, Err(e)),
        };
        for &byte in &buf[..n] {
            if byte != block[at] {
                return (
                    total,
                    Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("byte {total} differs from the pattern"),
                    )),
                );
            }
            total += 1;
            at += 1;
            if at == block.len() {
                pattern.fill(&mut block);
                at = 0;
            }
        }
        after_read(total);
    }
}

// ---------------------------------------------------------------- TCP servers

/// What an [`NsServer`] does with each connection it accepts.
#[derive(Debug, Clone, Copy)]
pub enum Behavior {
    /// Reads to the end and reports the hash.
    Sink,
    /// Reads a request of `request` bytes, then sends `len` bytes of
    /// [`Pattern`] `seed` and closes.
    Source { request: usize, len: u64, seed: u64 },
    /// Reads to the end (the peer's half-close), then sends `len` bytes of
    /// [`Pattern`] `seed` and closes.
    SendAfterEof { len: u64, seed: u64 },
    /// Reads `after` bytes, then resets the connection (`SO_LINGER` 0).
    Reset { after: usize },
    /// Reads a request of 4 bytes, sends `len` bytes of [`Pattern`] `seed`,
    /// waits for one byte from the peer (it has them all), then resets the
    /// connection: a reset in the middle of a download.
    ResetMidStream { len: u64, seed: u64 },
    /// Reads to the end, answers with the 32-byte SHA-256 of what came, and
    /// closes.
    HashReply,
    /// Reads a request of `request` bytes and answers with `reply` bytes of
    /// [`Pattern`] seeded by the request's first 8 bytes, then closes.
    Reply { request: usize, reply: usize },
    /// Sends back every byte as it comes, until the end of stream (then
    /// closes) or an error; reports what it received.
    Echo,
}

/// What one connection to an [`NsServer`] brought.
#[derive(Debug, Clone)]
pub struct Served {
    /// The peer's address as the server saw it.
    pub peer: SocketAddr,
    /// Bytes received and their hash.
    pub received: u64,
    /// Hash of the bytes received.
    pub sha256: Sha256,
    /// Bytes sent.
    pub sent: u64,
    /// The error that ended the connection, if any.
    pub error: Option<String>,
}

/// Most connections an [`NsServer`] serves at once (a thread each).
pub const MAX_SERVED: usize = 512;
/// How long an [`NsServer`] lives at most, whatever the test does.
pub const SERVER_LIFETIME: Duration = Duration::from_secs(600);

/// A TCP server on threads inside a namespace: one listener, one thread per
/// connection (at most [`MAX_SERVED`]), each reported on a channel. Stops
/// when dropped.
pub struct NsServer {
    addr: SocketAddr,
    ns: String,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    reports: mpsc::Receiver<Served>,
    listener: Option<thread::JoinHandle<()>>,
}

impl NsServer {
    /// Listens on `addr` in namespace `ns` (panics if it cannot).
    pub fn start(ns: &str, addr: SocketAddr, behavior: Behavior) -> Self {
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (report_tx, reports) = mpsc::channel();
        let listener = {
            let (accepted, stop) = (Arc::clone(&accepted), Arc::clone(&stop));
            in_ns(ns, move || {
                let listener = match bind_listener(addr) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                accept_loop(&listener, behavior, &accepted, &stop, &report_tx);
            })
        };
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("server in {ns} cannot listen on {addr}: {e}"),
            Err(e) => panic!("server in {ns} on {addr} did not start: {e}"),
        }
        Self {
            addr,
            ns: ns.to_owned(),
            accepted,
            stop,
            reports,
            listener: Some(listener),
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The report of the next connection that ended; panics after `limit`.
    pub fn next(&self, limit: Duration) -> Served {
        self.reports.recv_timeout(limit).unwrap_or_else(|e| {
            panic!(
                "server {} in {}: no connection ended within {limit:?} ({e}; {} accepted)",
                self.addr,
                self.ns,
                self.accepted()
            )
        })
    }

    /// Reports of connections that ended so far, without waiting.
    pub fn drain(&self) -> Vec<Served> {
        self.reports.try_iter().collect()
    }
}

impl Drop for NsServer {
    /// Stops accepting and closes the listener before returning, so the
    /// next server can listen on the same address. Connections being
    /// served finish on their own threads (bounded by [`IO_TIMEOUT`]).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(listener) = self.listener.take() {
            // The accept loop polls the flag every 10 ms.
            let _ = listener.join();
        }
    }
}

fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    let listener: TcpListener = socket.into();
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn accept_loop(
    listener: &TcpListener,
    behavior: Behavior,
    accepted: &Arc<AtomicUsize>,
    stop: &Arc<AtomicBool>,
    reports: &mpsc::Sender<Served>,
) {
    let started = Instant::now();
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) && started.elapsed() < SERVER_LIFETIME {
        let (stream, peer) = match listener.accept() {
            Ok(conn) => conn,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(_) => {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        if active.load(Ordering::SeqCst) >= MAX_SERVED {
            continue; // dropped: the peer sees a close
        }
        active.fetch_add(1, Ordering::SeqCst);
        let (reports, active) = (reports.clone(), Arc::clone(&active));
        thread::spawn(move || {
            let report = serve(stream, peer, behavior);
            let _ = reports.send(report);
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

fn serve(mut stream: TcpStream, peer: SocketAddr, behavior: Behavior) -> Served {
    let mut report = Served {
        peer,
        received: 0,
        sha256: Hasher::new().finish(),
        sent: 0,
        error: None,
    };
    if let Err(e) = serve_io(&mut stream, behavior, &mut report) {
        report.error = Some(format!("{:?}: {e}", e.kind()));
    }
    report
}

fn serve_io(stream: &mut TcpStream, behavior: Behavior, report: &mut Served) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let read_exact = |stream: &mut TcpStream, report: &mut Served, n: usize| {
        let mut buf = vec![0; n];
        stream.read_exact(&mut buf)?;
        report.received = n as u64;
        report.sha256 = Sha256::of(&buf);
        Ok::<_, io::Error>(buf)
    };
    match behavior {
        Behavior::Sink => {
            (report.received, report.sha256) = read_hashed(stream)?;
        }
        Behavior::Source { request, len, seed } => {
            read_exact(stream, report, request)?;
            send_pattern(stream, seed, len)?;
            report.sent = len;
            stream.shutdown(Shutdown::Write)?;
            // Wait for the peer's close, so that our close sends no reset.
            read_hashed(stream)?;
        }
        Behavior::SendAfterEof { len, seed } => {
            (report.received, report.sha256) = read_hashed(stream)?;
            send_pattern(stream, seed, len)?;
            report.sent = len;
            stream.shutdown(Shutdown::Write)?;
        }
        Behavior::Reset { after } => {
            read_exact(stream, report, after)?;
            socket2::SockRef::from(&*stream).set_linger(Some(Duration::ZERO))?;
        }
        Behavior::ResetMidStream { len, seed } => {
            read_exact(stream, report, 4)?;
            send_pattern(stream, seed, len)?;
            report.sent = len;
            let mut ack = [0; 1];
            stream.read_exact(&mut ack)?;
            socket2::SockRef::from(&*stream).set_linger(Some(Duration::ZERO))?;
        }
        Behavior::Echo => {
            let mut hash = Hasher::new();
            let mut buf = vec![0; 64 << 10];
            loop {
                let n = match stream.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        report.sha256 = hash.finish();
                        return Err(e);
                    }
                };
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                report.received = hash.len();
                stream.write_all(&buf[..n])?;
                report.sent += n as u64;
            }
            report.sha256 = hash.finish();
            stream.shutdown(Shutdown::Write)?;
        }
        Behavior::HashReply => {
            (report.received, report.sha256) = read_hashed(stream)?;
            stream.write_all(&report.sha256.0)?;
            report.sent = 32;
            stream.shutdown(Shutdown::Write)?;
        }
        Behavior::Reply { request, reply } => {
            let got = read_exact(stream, report, request)?;
            let seed = u64::from_le_bytes(
                got.get(..8)
                    .and_then(|b| b.try_into().ok())
                    .unwrap_or([0; 8]),
            );
            stream.write_all(&Pattern::bytes(seed, reply))?;
            report.sent = reply as u64;
            stream.shutdown(Shutdown::Write)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- counters

/// Local addresses of established TCP sockets to `peer` whose info line
/// (`ss -tinH`) says they are MPTCP subflows.
pub fn subflows(ss: &str, peer: SocketAddr) -> Vec<IpAddr> {
    let peer = peer.to_string();
    let mut found = Vec::new();
    let mut current: Option<IpAddr> = None;
    for line in ss.lines() {
        if !line.starts_with(char::is_whitespace) {
            // "ESTAB 0 0 10.77.1.2:41234 10.77.9.2:7300"
            let cols: Vec<&str> = line.split_whitespace().collect();
            current = match cols.as_slice() {
                [state, _, _, local, to, ..] if *state == "ESTAB" && **to == peer => ss_ip(local),
                _ => None,
            };
        } else if line.contains("tcp-ulp-mptcp") {
            if let Some(ip) = current.take() {
                found.push(ip);
            }
        }
    }
    found
}

/// The address of an `ss` column: `10.77.2.2%lte0:50179` (a socket bound
/// to a device), `10.77.1.2:41234`, `[fd77:1::2]:41234`.
pub fn ss_ip(column: &str) -> Option<IpAddr> {
    let (host, _port) = column.rsplit_once(':')?;
    let host = host.split('%').next()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Bytes an interface received and sent (`/sys/class/net/DEV/statistics`).
#[derive(Debug, Clone, Copy, Default)]
pub struct IfBytes {
    /// `rx_bytes`.
    pub rx: u64,
    /// `tx_bytes`.
    pub tx: u64,
}

/// The byte counters of `dev` in namespace `ns`.
pub fn if_bytes(ns: &str, dev: &str) -> IfBytes {
    let read = |what: &str| -> u64 {
        let path = format!("/sys/class/net/{dev}/statistics/{what}");
        let text = ns_ok(ns, &["cat", &path]);
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{ns} {path}: {text:?}: {e}"))
    };
    IfBytes {
        rx: read("rx_bytes"),
        tx: read("tx_bytes"),
    }
}

/// A kernel SNMP counter of namespace `ns`, as `nstat` names it
/// (`TcpExtTCPFastOpenActive`, `TcpActiveOpens`...), read from
/// `/proc/net/netstat` and `/proc/net/snmp` (what nstat reads, without its
/// history file).
pub fn netstat(ns: &str, name: &str) -> u64 {
    for file in ["/proc/net/netstat", "/proc/net/snmp"] {
        let text = ns_ok(ns, &["cat", file]);
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let Some((prefix, names)) = names.split_once(':') else {
                continue;
            };
            let values = values.split_once(':').map_or("", |(_, v)| v);
            for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
                if format!("{prefix}{n}") == name {
                    return v
                        .parse()
                        .unwrap_or_else(|e| panic!("{ns} {file} {name}={v}: {e}"));
                }
            }
        }
    }
    panic!("no counter {name} in {ns}'s /proc/net/netstat or /proc/net/snmp")
}
