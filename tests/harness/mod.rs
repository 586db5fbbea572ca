//! Harness for lab integration tests: one lab at a time (a file lock), built
//! with `scripts/lab.sh`, always torn down, also when the test fails.
//!
//! Lab tests need root. They never skip: without root they fail and say so.

#![allow(dead_code)] // each test binary uses its own subset
#![allow(unreachable_pub)] // shared by test binaries, not an API

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The release binary the lab runs (the emulator must not be a debug build:
/// it would distort delays). Built once per test binary.
pub fn mpbond_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--quiet", "--bin", "mpbond"])
            .current_dir(root())
            .status()
            .expect("run cargo build --release");
        assert!(status.success(), "cargo build --release failed");
        root().join("target/release/mpbond")
    })
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
        file.lock().expect("lock the lab test lock");
        // Whatever a crashed earlier run left behind goes first.
        lab_ok(&["down"]);
        Self { _file: file }
    }
}

/// A running lab; dropping it runs `lab.sh down`.
pub struct Lab {
    _lock: LabLock,
}

impl Lab {
    /// Brings the lab up with `lab.sh up ARGS`.
    pub fn up(args: &[&str]) -> Self {
        let lock = LabLock::acquire();
        let mut full = vec!["up"];
        full.extend_from_slice(args);
        let lab = Self { _lock: lock };
        lab_ok(&full);
        lab
    }

    /// `lab.sh link NAME ACTION...`, checked.
    pub fn link(&self, args: &[&str]) {
        let mut full = vec!["link"];
        full.extend_from_slice(args);
        lab_ok(&full);
    }

    /// Emulator counters of `link` as key=value pairs (`up.rx_frames` ...).
    pub fn link_stats(&self, link: &str) -> Vec<(String, String)> {
        let sock = format!("/run/mpbond-lab/{link}.sock");
        let out = Command::new(mpbond_bin())
            .args(["linkem", "ctl", "--control", &sock, "stats", "--kv"])
            .output()
            .expect("run mpbond linkem ctl");
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
        let out = lab_sh(&["down"]);
        if !out.status.success() && !thread::panicking() {
            panic!(
                "lab.sh down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
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
