//! Network namespaces for tests against the real kernel: one
//! [`TestNs`] per test, named `mpbt-<tag>-<pid>-<n>` (apart from the lab's
//! `mpb-*`), set up and checked with the `ip` tool, deleted on drop, also
//! when the test fails.
//!
//! `scripts/test.sh` reads the PID from the name's second-to-last
//! dash-separated field and reports namespaces whose test process is gone
//! as leaked.
//!
//! These tests need root. They never skip: without root they fail and say
//! so.

#![allow(dead_code)] // each test binary uses its own subset
#![allow(unreachable_pub)] // shared by test binaries, not an API

use std::os::unix::fs::MetadataExt as _;
use std::panic;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Numbers the namespaces of one test process.
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A named network namespace, deleted on drop (also when a test fails).
#[derive(Debug)]
pub struct TestNs {
    name: String,
}

impl TestNs {
    /// An empty namespace `mpbt-<tag>-<pid>-<n>`, with only `lo` (down).
    /// `tag` says which tests made it (`nl`, `up`); it may contain dashes.
    ///
    /// Panics, saying why, if the process is not root or `ip netns add`
    /// fails.
    pub fn new(tag: &str) -> Self {
        require_root();
        assert!(
            !tag.is_empty() && !tag.contains('/'),
            "{tag:?} is not a namespace tag"
        );
        let name = format!(
            "mpbt-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run_ip(&["netns", "add", &name]);
        Self { name }
    }

    /// The namespace's name, for `ip netns exec` or
    /// [`mpbond::sys::enter_netns`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds an uplink-like interface `dev`: the end of a veth pair (this
    /// kernel has no `dummy` driver) whose peer `<dev>p` is up too, so
    /// `dev` has carrier; then adds `addrs` (`ADDR/LEN`, IPv6 without
    /// duplicate address detection, so they are usable at once).
    pub fn veth(&self, dev: &str, addrs: &[&str]) {
        let peer = format!("{dev}p");
        self.ip(&["link", "add", dev, "type", "veth", "peer", "name", &peer]);
        self.ip(&["link", "set", &peer, "up"]);
        self.ip(&["link", "set", dev, "up"]);
        for addr in addrs {
            self.ip(&["addr", "add", addr, "dev", dev, "nodad"]);
        }
    }

    /// Adds the TUN device `dev`, up (no process holds it, so it has no
    /// carrier: routes into it are accepted, packets into it dropped).
    pub fn tun(&self, dev: &str) {
        self.ip(&["tuntap", "add", "mode", "tun", "name", dev]);
        self.ip(&["link", "set", dev, "up"]);
    }

    /// `ip -N -n NAME ARGS`, which must succeed; its output.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-N", "-n", &self.name];
        all.extend_from_slice(args);
        run_ip(&all)
    }

    /// The trimmed lines of `ip ARGS` that mention `needle`, whitespace
    /// collapsed to single spaces, for exact comparisons.
    pub fn ip_lines(&self, args: &[&str], needle: &str) -> Vec<String> {
        self.ip(args)
            .lines()
            .filter(|l| l.contains(needle))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            // Without /etc/protocols, ip names TCP "ipproto-6".
            .map(|l| l.replace("ipproto ipproto-6", "ipproto tcp"))
            .collect()
    }

    /// The first line of `ip route get ARGS`, whitespace collapsed: where
    /// a packet goes.
    pub fn route_get(&self, args: &[&str]) -> String {
        let mut all = vec!["route", "get"];
        all.extend_from_slice(args);
        let out = self.ip(&all);
        let first = out.lines().next().unwrap_or_default();
        first.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The interface index of `dev`, as `ip link` reports it.
    pub fn link_index(&self, dev: &str) -> u32 {
        let out = self.ip(&["-o", "link", "show", "dev", dev]);
        out.split(':')
            .next()
            .and_then(|index| index.trim().parse().ok())
            .unwrap_or_else(|| panic!("no index in `ip link show dev {dev}`: {out}"))
    }

    /// `sysctl -n KEY` inside the namespace.
    pub fn sysctl(&self, key: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "sysctl", "-n", key])
            .output()
            .expect("run sysctl");
        assert!(
            out.status.success(),
            "sysctl -n {key} in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `sysctl -w KEY=VALUE` inside the namespace, which must succeed.
    pub fn set_sysctl(&self, key: &str, value: &str) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "sysctl", "-qw"])
            .arg(format!("{key}={value}"))
            .output()
            .expect("run sysctl");
        assert!(
            out.status.success(),
            "sysctl -w {key}={value} in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `f` on a thread inside the namespace (sockets and netlink
    /// handles it opens belong there), its `tracing` logs shown when the
    /// test fails; a panic there fails the test after the namespace is
    /// gone.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            let thread = scope.spawn(|| {
                let _logs = tracing::subscriber::set_default(
                    tracing_subscriber::fmt()
                        .with_test_writer()
                        .with_max_level(tracing::Level::DEBUG)
                        .finish(),
                );
                mpbond::sys::enter_netns(&self.name).unwrap_or_else(|e| {
                    panic!("cannot enter the test namespace {}: {e}", self.name)
                });
                f()
            });
            thread
                .join()
                .unwrap_or_else(|panic| panic::resume_unwind(panic))
        })
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let deleted = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        match deleted {
            Ok(out) if out.status.success() => {}
            // Not a panic: this may run while a failed test unwinds.
            Ok(out) => eprintln!(
                "cannot delete test namespace {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("cannot delete test namespace {}: {e}", self.name),
        }
    }
}

/// Fails the test unless it runs as root: namespaces, veths and TUN
/// devices need it, and a test that skipped would hide what it checks.
pub fn require_root() {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .expect("read /proc/self");
    assert_eq!(
        uid, 0,
        "this test creates network namespaces and needs root: run it as root \
         (sudo scripts/test.sh), it never skips"
    );
}

/// `ip ARGS`, which must succeed; its output.
pub fn run_ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `out`'s lines, trimmed, for exact comparisons.
pub fn lines(out: &str) -> Vec<String> {
    out.lines().map(|l| l.trim().to_owned()).collect()
}
