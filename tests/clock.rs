//! The client's clock steps by minutes while traffic runs (issue 10, item
//! 4), in the lab: the client alone runs under libfaketime (Debian package
//! `faketime`, preloaded through `MPB_CLIENT_ENV`), whose offset comes
//! from a file the test rewrites, so the machine's clock and the
//! concentrator's never move. With a download running, the client's clock
//! steps 5 minutes ahead, then back to 5 minutes behind. After each step,
//! as a user of the appliance would check:
//!
//! - a new connection from the LAN host goes through the tunnel within
//!   2 s of the step, and so do a few more;
//! - a UDP echo through the datagram tunnel comes back from the
//!   concentrator's address;
//! - the client says it now follows the concentrator's clock (so
//!   libfaketime did move its clock: a header was refused and answered
//!   with the concentrator's), and the concentrator logged that answer;
//! - no uplink was ever declared dead.
//!
//! At the end the download, which ran across both steps, is checked
//! whole (sha256) and through the tunnel.
//!
//! Needs root and libfaketime (scripts/deps.sh installs it); one lab.

mod harness;

use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use harness::udp::{echo_once, Echo};
use harness::{
    connect, run_in, short_request, Behavior, Hasher, Lab, NsServer, Pattern, Sha256, RUN,
};

const SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
const CONCENTRATOR: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 9, 2));
const SRV: &str = "mpb-srv";
const LAN: &str = "mpb-lan";
const MIB: u64 = 1 << 20;
/// The download that runs across both steps.
const LEN: u64 = 8 * MIB;
const SEED: u64 = 0xc10c;
/// It is read at this pace, and held 1 MiB before its end until both steps
/// are checked, so that it surely runs across them.
const PACE_PER_SEC: u64 = 2 * MIB;
const HOLD_AT: u64 = LEN - MIB;
/// How soon after a step new connections and datagrams must work.
const RECOVERY: Duration = Duration::from_secs(2);
/// What the client says when it adopts the concentrator's clock
/// (`client::clock`).
const FOLLOWS: &str = "timestamps now follow the concentrator's clock";
/// What the concentrator says when it answers a header with its clock.
const ANSWERED: &str = "answered with this host's clock";
/// What the client says when it declares an uplink dead.
const DEAD: &str = "uplink down:";

/// libfaketime's library, from Debian's package.
fn libfaketime() -> PathBuf {
    let out = Command::new("dpkg")
        .args(["-L", "libfaketime"])
        .output()
        .expect("run dpkg -L libfaketime");
    let listing = String::from_utf8_lossy(&out.stdout);
    let lib = listing
        .lines()
        .find(|l| l.ends_with("/libfaketime.so.1"))
        .map(PathBuf::from);
    match lib {
        Some(lib) if lib.is_file() => lib,
        _ => panic!(
            "libfaketime.so.1 not found: install Debian's faketime package \
             (scripts/deps.sh does)"
        ),
    }
}

/// The file libfaketime reads the client's clock offset from (re-read at
/// every call); removed on drop.
struct FakeClock {
    path: PathBuf,
}

impl FakeClock {
    fn new() -> Self {
        let path =
            std::env::temp_dir().join(format!("mpbond-clock-{}.faketime", std::process::id()));
        let clock = Self { path };
        clock.set("+0");
        clock
    }

    /// Steps the client's clock to `offset` (libfaketime's syntax: "+300"
    /// is 5 minutes ahead of the real clock). Written whole, then renamed,
    /// so the client never reads half a line.
    fn set(&self, offset: &str) {
        let tmp = self.path.with_extension("new");
        std::fs::write(&tmp, format!("{offset}\n")).expect("write the faketime file");
        std::fs::rename(&tmp, &self.path).expect("rename the faketime file");
    }

    fn env(&self) -> String {
        format!(
            "LD_PRELOAD={} FAKETIME_TIMESTAMP_FILE={} FAKETIME_NO_CACHE=1 \
             FAKETIME_DONT_FAKE_MONOTONIC=1",
            libfaketime().display(),
            self.path.display()
        )
    }
}

impl Drop for FakeClock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(self.path.with_extension("new"));
    }
}

/// From the LAN host, UDP to `echo` until it answers (each try waits
/// 200 ms) or `limit` passes: the address the echo saw.
fn udp_echo(echo: SocketAddr, limit: Duration) -> Option<IpAddr> {
    run_in(LAN, "UDP echo", limit + Duration::from_secs(5), move || {
        let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let deadline = Instant::now() + limit;
        for n in 0u32.. {
            if Instant::now() >= deadline {
                return None;
            }
            let payload = format!("clock step echo {n}");
            let seen = echo_once(
                &socket,
                echo,
                payload.as_bytes(),
                Duration::from_millis(200),
            );
            if seen.is_some() {
                return seen;
            }
        }
        None
    })
}

/// The download: paced, held before its end until `release`, hashed.
fn start_download(
    server: SocketAddr,
    release: Arc<AtomicBool>,
    progress: mpsc::Sender<u64>,
) -> thread::JoinHandle<std::io::Result<(u64, Sha256)>> {
    thread::spawn(move || {
        run_in(LAN, "download", Duration::from_secs(90), move || {
            let mut s = connect(server, Duration::from_secs(5))?;
            std::io::Write::write_all(&mut s, b"get\n")?;
            let started = Instant::now();
            let mut hasher = Hasher::new();
            let mut buf = vec![0; 64 << 10];
            loop {
                let got = hasher.len();
                let paced = PACE_PER_SEC * started.elapsed().as_millis() as u64 / 1000;
                let released = release.load(Ordering::Relaxed);
                if !released && (got >= HOLD_AT || got > paced) {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                }
                let want = if released {
                    buf.len()
                } else {
                    usize::try_from((HOLD_AT - got).min(buf.len() as u64)).unwrap_or(buf.len())
                };
                let n = s.read(&mut buf[..want])?;
                if n == 0 {
                    return Ok((hasher.len(), hasher.finish()));
                }
                hasher.update(&buf[..n]);
                let _ = progress.send(hasher.len());
            }
        })
    })
}

fn log(name: &str) -> String {
    std::fs::read_to_string(format!("{RUN}/{name}.log")).unwrap_or_default()
}

/// Lines of `name`'s log from line `from` on that contain `what`.
fn log_lines(name: &str, from: usize, what: &str) -> Vec<String> {
    log(name)
        .lines()
        .skip(from)
        .filter(|l| l.contains(what))
        .map(str::to_owned)
        .collect()
}

/// The value of field `offset_ms=` in a log line.
fn offset_ms(line: &str) -> Option<i64> {
    let (_, rest) = line.split_once("offset_ms=")?;
    rest.split(|c: char| !(c == '-' || c.is_ascii_digit()))
        .next()?
        .parse()
        .ok()
}

#[test]
fn the_clients_clock_steps_by_minutes_and_everything_keeps_working() {
    let fake = FakeClock::new();
    let lab = Lab::up(&[]);
    let test_started = Instant::now();
    lab.start_with_env(&[], &[("MPB_CLIENT_ENV", &fake.env())]);

    let download_srv = NsServer::start(
        SRV,
        SocketAddr::new(SERVER, 5301),
        Behavior::Source {
            request: 4,
            len: LEN,
            seed: SEED,
        },
    );
    let reply_srv = NsServer::start(
        SRV,
        SocketAddr::new(SERVER, 5302),
        Behavior::Reply {
            request: 64,
            reply: 4096,
        },
    );
    let echo_addr = SocketAddr::new(SERVER, 5303);
    let _echo = Echo::start(SRV, &[echo_addr]);
    assert_eq!(
        udp_echo(echo_addr, RECOVERY),
        Some(CONCENTRATOR),
        "before any step, a UDP echo comes back through the datagram tunnel"
    );

    let release = Arc::new(AtomicBool::new(false));
    let (progress_tx, progress) = mpsc::channel();
    let download = start_download(download_srv.addr(), Arc::clone(&release), progress_tx);
    let deadline = Instant::now() + Duration::from_secs(20);
    while progress.try_iter().last().unwrap_or(0) < MIB {
        assert!(
            Instant::now() < deadline && !download.is_finished(),
            "the download did not start"
        );
        thread::sleep(Duration::from_millis(20));
    }

    let mut seed = 1u64;
    for (step, expected_offset_ms) in [("+300", -300_000i64), ("-300", 300_000)] {
        let client_from = log("client").lines().count();
        let conc_from = log("concentrator").lines().count();
        fake.set(step);
        let stepped = Instant::now();

        // New connections: the first within RECOVERY of the step, then a
        // few more, all through the tunnel, all answered right.
        let mut first = None;
        for i in 0..5 {
            seed += 1;
            let started = Instant::now();
            let ok = run_in(LAN, "short request", Duration::from_secs(10), move || {
                short_request(SocketAddr::new(SERVER, 5302), seed, 64, 4096)
            });
            let took = started.elapsed();
            assert!(
                matches!(ok, Ok(true)),
                "clock {step}: request {i} after the step failed or was answered wrong: {ok:?} \
                 after {took:?}"
            );
            let served = reply_srv.next(Duration::from_secs(5));
            assert_eq!(
                served.peer.ip(),
                CONCENTRATOR,
                "clock {step}: request {i} bypassed the tunnel"
            );
            first.get_or_insert(stepped.elapsed());
        }
        let first = first.expect("five requests");
        eprintln!(
            "clock {step}: the first new connection after the step was done {first:?} after it"
        );
        assert!(
            first < RECOVERY,
            "clock {step}: the first connection after the step took {first:?} (goal {RECOVERY:?})"
        );

        let echo_started = Instant::now();
        assert_eq!(
            udp_echo(echo_addr, RECOVERY),
            Some(CONCENTRATOR),
            "clock {step}: no UDP echo through the datagram tunnel within {RECOVERY:?}"
        );
        eprintln!(
            "clock {step}: UDP echo back {:?} after the step ({:?} for the echo)",
            stepped.elapsed(),
            echo_started.elapsed()
        );

        // libfaketime moved the client's clock, the concentrator refused
        // and answered with its clock, and the client adopted it.
        let follows = log_lines("client", client_from, FOLLOWS);
        for line in &follows {
            eprintln!("clock {step}: client: {line}");
        }
        let offsets: Vec<i64> = follows.iter().filter_map(|l| offset_ms(l)).collect();
        assert!(
            offsets
                .iter()
                .any(|&o| (o - expected_offset_ms).abs() < 2_000),
            "clock {step}: the client did not adopt an offset near {expected_offset_ms} ms \
             (its clock did not step, or no answer came): {follows:?}"
        );
        assert!(
            !log_lines("concentrator", conc_from, ANSWERED).is_empty(),
            "clock {step}: the concentrator answered no header with its clock"
        );
        assert!(
            !download.is_finished(),
            "clock {step}: the download ended before the step was checked"
        );
    }

    release.store(true, Ordering::Relaxed);
    let (len, sha256) = download
        .join()
        .expect("the download thread")
        .unwrap_or_else(|e| panic!("the download across both steps failed: {e}"));
    assert_eq!(len, LEN, "the download across both steps lost bytes");
    assert_eq!(
        sha256,
        Pattern::sha256(SEED, LEN),
        "the download across both steps was corrupted"
    );
    let served = download_srv.next(Duration::from_secs(10));
    assert_eq!(
        served.peer.ip(),
        CONCENTRATOR,
        "the download bypassed the tunnel"
    );
    assert!(served.error.is_none(), "server: {:?}", served.error);

    let dead = log_lines("client", 0, DEAD);
    assert!(dead.is_empty(), "an uplink was declared dead: {dead:?}");
    eprintln!(
        "the test after lab up: {:.1} s",
        test_started.elapsed().as_secs_f64()
    );
    drop(lab);
}
