//! Ten thousand connections through one concentrator, in the lab (LAB.md):
//! each echoes its own payload intact, twice (once when it opens, once
//! when all are open at the same time), while a download on another
//! connection goes on; past what the open-file limit carries, new
//! connections are refused cleanly (a reset) and say why in the log; and
//! every descriptor comes back when they close.
//!
//! Lines are plain veths (profile none): the point is the count, not the
//! shaping. The load is `scripts/lib/conns.py` (also `bench.sh scale`).
//!
//! Needs root; one lab at a time.

mod harness;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use harness::download::{check_download, start_download, wait_for};
use harness::{root, Behavior, Lab, NsServer, RUN};
use mpbond::concentrator::MAX_HANDSHAKES;
use mpbond::nofile;

const SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
const ECHO_PORT: u16 = 7400;
const GOAL: usize = 10_000;
/// Connections asked for past what the limits carry, to see them refused.
const PAST_THE_CAP: usize = 100;
const MIB: u64 = 1 << 20;
const DOWNLOAD: u64 = 24 * MIB;
const SEED: u64 = 0x5ca1e;

/// The lab's concentrator config with room for every connection of the
/// test in the lab client's own limit (`max_connections`).
fn concentrator_config() -> TempConfig {
    let text = std::fs::read_to_string(root().join("deploy/lab/concentrator.toml"))
        .expect("read deploy/lab/concentrator.toml");
    let text = text.replacen(
        "tunnel_v6 = \"fd77::2\"",
        "tunnel_v6 = \"fd77::2\"\nmax_connections = 12000",
        1,
    );
    assert!(
        text.contains("max_connections = 12000"),
        "the lab client's entry moved"
    );
    TempConfig::write("concentrator-scale.toml", &text)
}

/// A file under the lab's state directory, removed on drop.
struct TempConfig(std::path::PathBuf);

impl TempConfig {
    fn write(name: &str, text: &str) -> Self {
        let path = std::path::Path::new(RUN).join(name);
        std::fs::write(&path, text).expect("write a config under the lab's directory");
        Self(path)
    }

    fn as_str(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Soft open-file limit and descriptors in use of process `pid`.
fn descriptors(pid: u32) -> (u64, usize) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .expect("Max open files in /proc/PID/limits");
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count();
    (soft, open)
}

/// Resident memory of process `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The value of `key=N` in the concentrator's "concentrator listening"
/// line.
fn listening_field(log: &str, key: &str) -> Option<usize> {
    let line = log.lines().find(|l| l.contains("concentrator listening"))?;
    let value = line.split_whitespace().find_map(|w| w.strip_prefix(key))?;
    value.parse().ok()
}

/// `conns.py run` in mpb-lan: stdin to release the held connections,
/// stdout for its two JSON lines.
struct Load {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Load {
    fn start(count: usize) -> Self {
        let script = root().join("scripts/lib/conns.py");
        let mut child = Command::new("ip")
            .args(["netns", "exec", "mpb-lan", "python3"])
            .arg(&script)
            .args([
                "run",
                &SERVER.to_string(),
                &ECHO_PORT.to_string(),
                &count.to_string(),
                "--hold",
                "120",
                "--deadline",
                "240",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run conns.py in mpb-lan");
        let stdin = child.stdin.take();
        let stdout: ChildStdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// The next JSON line, within `limit`.
    fn next(&mut self, what: &str, limit: Duration) -> String {
        let line = self
            .lines
            .recv_timeout(limit)
            .unwrap_or_else(|e| panic!("conns.py: no {what} line within {limit:?} ({e})"));
        assert!(
            line.contains(&format!("\"phase\": \"{what}\"")),
            "conns.py: {line}"
        );
        line
    }

    fn release(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"go\n");
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The echo server in mpb-srv (`conns.py serve`), killed on drop.
struct EchoServer(Child);

impl EchoServer {
    fn start() -> Self {
        let script = root().join("scripts/lib/conns.py");
        let child = Command::new("ip")
            .args(["netns", "exec", "mpb-srv", "python3"])
            .arg(&script)
            .args(["serve", &SERVER.to_string(), &ECHO_PORT.to_string()])
            .spawn()
            .expect("run conns.py serve in mpb-srv");
        let server = Self(child);
        let addr = SocketAddr::new(SERVER, ECHO_PORT);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = harness::run_in("mpb-srv", "echo probe", Duration::from_secs(2), move || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            });
            if up {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "the echo server did not listen on {addr}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The number after `"key": ` in one of conns.py's JSON lines (its keys
/// are unique within a line); `None` if absent.
fn field(line: &str, key: &str) -> Option<usize> {
    let at = line.find(&format!("\"{key}\": "))? + key.len() + 4;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn count(line: &str, key: &str) -> usize {
    field(line, key).unwrap_or_else(|| panic!("conns.py: no {key} in {line}"))
}

#[test]
fn ten_thousand_connections_echo_intact_next_to_a_download_and_give_back_every_descriptor() {
    let lab = Lab::up(&["--dsl", "none", "--lte", "none"]);
    let t0 = Instant::now();
    let at = move || format!("[{:.1} s]", t0.elapsed().as_secs_f64());
    let config = concentrator_config();
    lab.start(&["--concentrator-config", config.as_str()]);
    let (client, concentrator) = (
        lab.pid("client").expect("client pid"),
        lab.pid("concentrator").expect("concentrator pid"),
    );

    // What the open-file limits carry: the client resets new flows past
    // two descriptors each (less a spare); the concentrator says in its
    // listening line how many it carries.
    let (client_limit, client_idle) = descriptors(client);
    let (_, concentrator_idle) = descriptors(concentrator);
    let client_cap = usize::try_from(nofile::connections_for(client_limit)).expect("cap");
    let log = lab.log_tail("concentrator", 200);
    let concentrator_cap = listening_field(&log, "connections=")
        .unwrap_or_else(|| panic!("no connections= in the listening line:\n{log}"));
    let cap = client_cap.min(concentrator_cap);
    let (target, asked) = if cap >= GOAL {
        (GOAL, GOAL)
    } else {
        eprintln!(
            "scale: this machine's open-file limits let the client carry {client_cap} and the \
             concentrator {concentrator_cap} connections (two descriptors each); {GOAL} needs a \
             hard limit of about {} (ulimit -Hn, LimitNOFILE=): holding {cap}, and asking for \
             {PAST_THE_CAP} more to see them refused",
            nofile::needed(GOAL as u64) + MAX_HANDSHAKES as u64
        );
        (cap, cap + PAST_THE_CAP)
    };
    assert!(
        target >= 5_000,
        "limits too low for a scale test: {cap} connections"
    );

    let _echo = EchoServer::start();
    let srv = NsServer::start(
        "mpb-srv",
        SocketAddr::new(SERVER, 7401),
        Behavior::Source {
            request: 4,
            len: DOWNLOAD,
            seed: SEED,
        },
    );
    let (rss_client, rss_concentrator) = (rss_kib(client), rss_kib(concentrator));

    // The download starts, then the connections open beside it.
    let (tx, rx) = mpsc::channel();
    let download = start_download(srv.addr(), tx);
    wait_for(&rx, MIB);
    let started = Instant::now();
    let mut load = Load::start(asked);
    let open = load.next("open", Duration::from_secs(240));
    let opened = count(&open, "opened");
    eprintln!(
        "scale: {} {opened} of {asked} open in {:.1} s ({} per s); errors {}",
        at(),
        started.elapsed().as_secs_f64(),
        field(&open, "per_sec").unwrap_or(0),
        open.split_once("\"errors\": ").map_or("", |(_, e)| e)
    );
    assert_eq!(count(&open, "corrupt"), 0, "echoes corrupted: {open}");
    assert_eq!(opened, target, "connections opened: {open}");
    if asked > target {
        let refused = field(&open, "ECONNRESET").unwrap_or(0);
        assert_eq!(
            (refused, count(&open, "failed")),
            (PAST_THE_CAP, PAST_THE_CAP),
            "past the limit, new connections must be reset, nothing else: {open}"
        );
        let log = lab.log_tail("concentrator", 400) + &lab.log_tail("client", 100);
        assert!(
            log.contains("open-file limit reached") || log.contains("as many flows are open"),
            "a refusal for want of descriptors must say so in the log:\n{}",
            log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
        );
    }

    // All open at once: what each end holds.
    let (_, client_open) = descriptors(client);
    let (_, concentrator_open) = descriptors(concentrator);
    let per_conn = |now: u64, before: u64| (now.saturating_sub(before) as f64) / (opened as f64);
    eprintln!(
        "scale: with {opened} open: client {client_open} descriptors, {:.1} KiB each; \
         concentrator {concentrator_open} descriptors, {:.1} KiB each",
        per_conn(rss_kib(client), rss_client),
        per_conn(rss_kib(concentrator), rss_concentrator)
    );
    for (name, open, idle) in [
        ("client", client_open, client_idle),
        ("concentrator", concentrator_open, concentrator_idle),
    ] {
        assert!(
            open <= idle + 2 * opened + 64,
            "{name}: {open} descriptors for {opened} connections ({idle} idle)"
        );
    }

    load.release();
    let done = load.next("done", Duration::from_secs(120));
    eprintln!("scale: {} second echo {done}", at());
    assert_eq!(
        (
            count(&done, "echoed"),
            count(&done, "lost"),
            count(&done, "corrupt")
        ),
        (opened, 0, 0),
        "every connection open at once echoes again intact: {done}"
    );
    check_download(
        "the download beside them",
        download.join().expect("thread"),
        &srv,
        DOWNLOAD,
        SEED,
    );

    eprintln!("scale: {} download checked", at());
    // Every descriptor comes back.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (client_now, concentrator_now) = (descriptors(client).1, descriptors(concentrator).1);
        if client_now <= client_idle + 8 && concentrator_now <= concentrator_idle + 8 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "descriptors not given back 30 s after every connection closed: client \
             {client_now} (idle {client_idle}), concentrator {concentrator_now} (idle \
             {concentrator_idle})"
        );
        thread::sleep(Duration::from_millis(200));
    }
    eprintln!("scale: {} descriptors back", at());
    for name in ["client", "concentrator"] {
        let log = std::fs::read_to_string(format!("{RUN}/{name}.log")).expect("log");
        assert!(!log.contains("panicked"), "{name} panicked:\n{log}");
    }
    drop(lab);
    eprintln!("scale: {} lab down", at());
}
