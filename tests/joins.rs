//! A line that strips MPTCP options, in the lab (LAB.md): an nftables
//! rule in mpb-wan removes the MPTCP option from lte's TCP to and from the
//! concentrator, as some mobile operators do. The kernel's joins over lte
//! then never establish; downloads still complete over dsl, and the client
//! says so once, naming lte — and says nothing like it while the line is
//! fine, nor about dsl.
//!
//! Needs root and `nft` (scripts/deps.sh installs nftables); one lab at a
//! time.

mod harness;

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use harness::{connect, if_bytes, ns_ok, run_in, Behavior, Hasher, Lab, NsServer, Pattern};

const SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
const CONCENTRATOR: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 9, 2));
const MIB: u64 = 1 << 20;
const LEN: u64 = 4 * MIB;
const SEED: u64 = 0x701e;
const WAN: &str = "mpb-wan";
const TABLE: &str = "mpbstrip";

/// What the client says about a stripped line, and about its end.
const WARNING: &str = "MPTCP subflows do not join";
const RECOVERED: &str = "MPTCP subflows join again";

/// The nftables table that strips MPTCP options from lte's traffic with
/// the concentrator, both ways (SYN, and SYN-ACK); removed on drop, also
/// when the test fails.
struct Stripper;

impl Stripper {
    fn install() -> Self {
        let rules = format!(
            "table inet {TABLE} {{
                chain strip {{
                    type filter hook forward priority -150;
                    ip saddr 10.77.2.0/24 tcp dport 7300 reset tcp option mptcp
                    ip daddr 10.77.2.0/24 tcp sport 7300 reset tcp option mptcp
                }}
            }}"
        );
        let out = Command::new("ip")
            .args(["netns", "exec", WAN, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(rules.as_bytes())?;
                child.wait_with_output()
            })
            .expect("run nft (scripts/deps.sh installs nftables)");
        assert!(
            out.status.success(),
            "nft refused the rules: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self
    }

    fn remove(self) {}
}

impl Drop for Stripper {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args([
                "netns", "exec", WAN, "nft", "delete", "table", "inet", TABLE,
            ])
            .output();
    }
}

/// Downloads `LEN` bytes through the tunnel from `srv` to the LAN host and
/// checks them; returns how many bytes lte0 received meanwhile.
fn download(srv: &NsServer) -> u64 {
    let before = if_bytes("mpb-cli", "lte0").rx;
    let addr = srv.addr();
    let got = run_in("mpb-lan", "download", Duration::from_secs(60), move || {
        let mut s = connect(addr, Duration::from_secs(5))?;
        s.write_all(b"get\n")?;
        let mut hasher = Hasher::new();
        let mut buf = vec![0; 64 << 10];
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok::<_, io::Error>((hasher.len(), hasher.finish()))
    })
    .expect("the download failed");
    assert_eq!(got.0, LEN, "length differs");
    assert_eq!(got.1, Pattern::sha256(SEED, LEN), "bytes corrupted");
    let served = srv.next(Duration::from_secs(10));
    assert_eq!(served.peer.ip(), CONCENTRATOR, "bypassed the tunnel");
    if_bytes("mpb-cli", "lte0").rx - before
}

/// `n` downloads one after the other: each is a tunnel of its own, whose
/// join over lte the kernel tries once it is established (short requests
/// close before the kernel gets to it). Returns what lte0 received.
fn downloads(srv: &NsServer, n: usize) -> u64 {
    (0..n).map(|_| download(srv)).sum()
}

fn client_log(lab: &Lab) -> String {
    lab.log_tail("client", 100_000)
}

fn count(log: &str, uplink: &str, what: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(what) && l.contains(&format!("uplink {uplink} (")))
        .count()
}

/// Polls the client's log until `what` shows for `uplink` or `limit` passes.
fn wait_for_log(lab: &Lab, uplink: &str, what: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if count(&client_log(lab), uplink, what) > 0 {
            return true;
        }
        thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn a_line_that_strips_mptcp_is_reported_once_and_its_return_too() {
    let lab = Lab::up_and_start(&[], &[]);
    let source = NsServer::start(
        "mpb-srv",
        SocketAddr::new(SERVER, 5701),
        Behavior::Source {
            request: 4,
            len: LEN,
            seed: SEED,
        },
    );
    // A fine line: joins over lte establish, and nothing is said.
    let lte_rx = downloads(&source, 3);
    thread::sleep(Duration::from_secs(4));
    let log = client_log(&lab);
    assert_eq!(
        count(&log, "lte", WARNING),
        0,
        "warned without a reason:\n{log}"
    );
    eprintln!("fine lines: lte received {lte_rx} bytes during the downloads");
    assert!(lte_rx > MIB, "lte carried nothing while it was fine");

    // lte strips MPTCP: its joins are reset, everything goes over dsl.
    let strip = Stripper::install();
    let lte_rx = downloads(&source, 3);
    eprintln!("lte stripped: lte received {lte_rx} bytes during the downloads");
    assert!(
        lte_rx < MIB,
        "lte carried {lte_rx} bytes through a rule that strips MPTCP"
    );
    assert!(
        wait_for_log(&lab, "lte", WARNING, Duration::from_secs(10)),
        "no warning about lte:\n{}\nnft counters:\n{}",
        lab.log_tail("client", 40),
        ns_ok(WAN, &["nft", "list", "table", "inet", TABLE])
    );
    let _ = downloads(&source, 3);
    let log = client_log(&lab);
    assert_eq!(
        count(&log, "lte", WARNING),
        1,
        "not exactly one warning:\n{log}"
    );
    assert_eq!(count(&log, "dsl", WARNING), 0, "dsl warned about:\n{log}");
    let line = log
        .lines()
        .find(|l| l.contains(WARNING))
        .expect("the warning");
    assert!(
        line.contains("uplink lte (lte0, 10.77.2.2)") && line.contains("strips MPTCP options"),
        "the warning does not name the line and the cause: {line}"
    );

    // The options pass again: the next join establishes and the client
    // says so.
    strip.remove();
    let _ = downloads(&source, 1);
    assert!(
        wait_for_log(&lab, "lte", RECOVERED, Duration::from_secs(10)),
        "lte's return was not reported:\n{}",
        lab.log_tail("client", 40)
    );
    assert_eq!(count(&client_log(&lab), "lte", WARNING), 1);
}
