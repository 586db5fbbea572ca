//! Reloading the concentrator's config with SIGHUP, in the lab with both
//! clients (`lab.sh up --second-client`): a config that does not load is
//! refused with its file, line and key while everything goes on; a client
//! removed loses its connections at once while the other's connections
//! (a download among them) go on intact; added back, it connects again;
//! a policy that now denies a destination resets the connections to it.
//!
//! Needs root; one lab at a time.

mod harness;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use harness::download::{check_download, start_download, wait_for};
use harness::{connect, run_in, within, Behavior, Lab, NsServer, Pattern};

const SRV: &str = "mpb-srv";
const ECHO: &str = "198.51.100.10:7470";
const SOURCE: &str = "198.51.100.10:7471";
const DOWNLOAD_LEN: u64 = 48 << 20;
const DOWNLOAD_SEED: u64 = 0x7e10ad;

/// The lab's concentrator config, copied where the test may change it;
/// removed on drop.
struct ConfigCopy {
    dir: PathBuf,
    path: PathBuf,
    original: String,
}

impl ConfigCopy {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("mpbond-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the config directory");
        let original =
            std::fs::read_to_string(harness::root().join("deploy/lab/concentrator.toml"))
                .expect("read deploy/lab/concentrator.toml");
        // Same file name: the control socket's name follows it.
        let path = dir.join("concentrator.toml");
        let copy = Self {
            dir,
            path,
            original,
        };
        copy.write(&copy.original.clone());
        copy
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.path, text).expect("write the config copy");
    }

    /// The original without the `[[client]]` block of `id` (up to the
    /// next blank line).
    fn without_client(&self, id: &str) -> String {
        let start = self
            .original
            .find(&format!("[[client]]\nid = \"{id}\""))
            .unwrap_or_else(|| panic!("no [[client]] block for {id} in the lab's config"));
        let end = self.original[start..]
            .find("\n\n")
            .map_or(self.original.len(), |n| start + n + 1);
        let text = format!("{}{}", &self.original[..start], &self.original[end..]);
        assert!(
            !text.contains(&format!("\"{id}\"")),
            "{id} left in:\n{text}"
        );
        text
    }
}

impl Drop for ConfigCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An echo connection held open from a namespace.
struct Held {
    what: &'static str,
    stream: TcpStream,
    seed: u64,
}

impl Held {
    fn open(ns: &str, what: &'static str) -> Self {
        let addr: SocketAddr = ECHO.parse().expect("addr");
        let stream = run_in(ns, what, Duration::from_secs(15), move || {
            connect(addr, Duration::from_secs(5))
        })
        .unwrap_or_else(|e| panic!("{what}: cannot connect to the echo server: {e}"));
        let mut held = Self {
            what,
            stream,
            seed: 0,
        };
        held.round_trip()
            .unwrap_or_else(|e| panic!("{what}: the first round trip failed: {e}"));
        held
    }

    /// 4 KiB there and back, compared.
    fn round_trip(&mut self) -> io::Result<()> {
        self.seed += 1;
        let sent = Pattern::bytes(self.seed, 4096);
        self.stream.write_all(&sent)?;
        let mut back = vec![0; sent.len()];
        self.stream.read_exact(&mut back)?;
        if back != sent {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "echo differs"));
        }
        Ok(())
    }

    /// Waits until the connection is ended by the other side (a reset or
    /// an end of stream), within `limit`; how long that took.
    fn ended_within(&mut self, limit: Duration) -> Duration {
        let start = Instant::now();
        self.stream
            .set_read_timeout(Some(limit))
            .expect("set the read timeout");
        let mut buf = [0; 64];
        // A write may still go out before the reset arrives.
        let _ = self.stream.write_all(b"x");
        match self.stream.read(&mut buf) {
            Ok(0) => {}
            Err(e)
                if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::TimedOut => {
            }
            other => panic!(
                "{}: still open {:?} after the reload ({other:?})",
                self.what,
                start.elapsed()
            ),
        }
        start.elapsed()
    }
}

/// Whether a new echo connection from `ns` works (connects and round-trips).
fn new_connection_works(ns: &str) -> bool {
    let addr: SocketAddr = ECHO.parse().expect("addr");
    run_in(
        ns,
        "a new echo connection",
        Duration::from_secs(20),
        move || {
            let Ok(stream) = connect(addr, Duration::from_secs(3)) else {
                return false;
            };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
            let mut held = Held {
                what: "probe",
                stream,
                seed: 100,
            };
            held.round_trip().is_ok()
        },
    )
}

/// SIGHUPs the concentrator and waits for the log line of the outcome
/// that contains `expect`; returns that line.
fn reload(lab: &Lab, expect: &str) -> String {
    let before = lab.log_tail("concentrator", 10_000).lines().count();
    let pid = lab.signal("concentrator", "-HUP");
    let mut found = None;
    let ok = within(Duration::from_secs(5), || {
        let log = lab.log_tail("concentrator", 10_000);
        found = log
            .lines()
            .skip(before)
            .find(|l| l.contains("reload refused") || l.contains("config reloaded"))
            .map(str::to_owned);
        found.is_some()
    });
    assert!(
        ok.is_some(),
        "the concentrator logged no reload outcome:\n{}",
        lab.log_tail("concentrator", 20)
    );
    let line = found.unwrap_or_default();
    eprintln!("concentrator: {line}");
    assert!(line.contains(expect), "expected \"{expect}\" in: {line}");
    assert_eq!(
        lab.pid("concentrator"),
        Some(pid),
        "the concentrator survives SIGHUP"
    );
    line
}

/// The concentrator's status as JSON text.
fn status_json(config: &Path) -> String {
    harness::ns_ok(
        "mpb-conc",
        &[
            harness::mpbond_bin().to_str().expect("utf-8 path"),
            "status",
            "--json",
            "--config",
            config.to_str().expect("utf-8 path"),
        ],
    )
}

#[test]
fn sighup_applies_client_and_policy_changes_and_refuses_a_broken_config() {
    let config = ConfigCopy::new();
    let path = config.path.to_str().expect("utf-8 path").to_owned();
    let lab = Lab::up_and_start(&["--second-client"], &["--concentrator-config", &path]);
    let _echo = NsServer::start(SRV, ECHO.parse().expect("addr"), Behavior::Echo);
    let source = NsServer::start(
        SRV,
        SOURCE.parse().expect("addr"),
        Behavior::Source {
            request: 4,
            len: DOWNLOAD_LEN,
            seed: DOWNLOAD_SEED,
        },
    );
    let mut lab1 = Held::open("mpb-lan", "lab's connection");
    let mut lab2 = Held::open("mpb-cli2", "lab2's connection");
    let (progress_tx, progress) = mpsc::channel();
    let download = start_download(source.addr(), progress_tx);
    wait_for(&progress, 4 << 20);

    // A config that does not load: refused with file, line and key.
    let broken =
        config
            .original
            .replacen("listen = ", "handshake_timeout = \"soon\"\nlisten = ", 1);
    let line = broken
        .lines()
        .position(|l| l.starts_with("handshake_timeout"))
        .expect("the broken line")
        + 1;
    config.write(&broken);
    let refused = reload(&lab, "reload refused");
    for part in [format!("{path}:{line}"), "handshake_timeout".to_owned()] {
        assert!(refused.contains(&part), "\"{part}\" not in: {refused}");
    }
    lab1.round_trip()
        .expect("lab's connection after the refused reload");
    lab2.round_trip()
        .expect("lab2's connection after the refused reload");

    // lab2 removed: its connection ends at once, lab's go on.
    config.write(&config.without_client("lab2"));
    let reloaded = reload(&lab, "config reloaded");
    assert!(
        reloaded.contains("clients removed (their connections reset): lab2"),
        "{reloaded}"
    );
    let took = lab2.ended_within(Duration::from_secs(5));
    eprintln!("lab2's connection ended {took:?} after the reload was logged");
    lab1.round_trip()
        .expect("lab's connection after lab2 was removed");
    assert!(
        !new_connection_works("mpb-cli2"),
        "a removed client still gets new connections through"
    );
    let status = status_json(&config.path);
    assert!(
        !status.contains("\"lab2\""),
        "lab2 still in the status: {status}"
    );
    assert!(
        status.contains("\"lab\""),
        "lab missing from the status: {status}"
    );

    // Back again: it connects again, by itself.
    config.write(&config.original);
    let reloaded = reload(&lab, "config reloaded");
    assert!(reloaded.contains("clients added: lab2"), "{reloaded}");
    assert!(
        within(Duration::from_secs(20), || new_connection_works("mpb-cli2")).is_some(),
        "lab2 gets no new connection through after it was added back"
    );
    lab1.round_trip()
        .expect("lab's connection after lab2 came back");

    check_download(
        "48 MiB through three reloads",
        download.join().expect("download thread"),
        &source,
        DOWNLOAD_LEN,
        DOWNLOAD_SEED,
    );

    // A policy that denies the echo server now: lab's connection to it
    // is reset, and a new one is refused.
    let denying = config.original.replace(
        "allow = [\"198.51.100.0/24\", \"2001:db8:100::/64\"]",
        "deny = [\"198.51.100.10/32\"]",
    );
    assert_ne!(denying, config.original, "the lab's [policy] changed shape");
    config.write(&denying);
    let reloaded = reload(&lab, "config reloaded");
    assert!(reloaded.contains("policy changed"), "{reloaded}");
    lab1.ended_within(Duration::from_secs(5));
    assert!(
        !new_connection_works("mpb-lan"),
        "a destination the policy denies is still reached"
    );
    drop(lab);
}
