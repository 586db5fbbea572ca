//! Faults around a running client, on one lab (issue 10): every uplink
//! down for 10 s and back; destinations that refuse, reset and blackhole;
//! the client restarting under a download. Each time: nothing panics, no
//! byte is corrupted, a cut connection ends with a reset on the LAN host
//! (never a hang, never a clean end that passes a cut download off as
//! complete), every other connection carries on, new connections work
//! again by themselves, and what the client installed is as it was.
//!
//! Needs root; one lab at a time.

mod harness;

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use harness::download::{check_download, start_cut_download, start_download, wait_for, Cut};
use harness::state::{client_state, describe, ClientState};
use harness::{connect, ns_ok, ns_run, run_in, scenario, Behavior, Lab, NsServer};

const LAN: &str = "mpb-lan";
const SRV: &str = "mpb-srv";
/// Serves one short answer per request (the "does it work" probe).
const REPLY: &str = "198.51.100.10:7480";
/// A download the faults cut, or that goes on through them.
const LONG: &str = "198.51.100.10:7481";
const LONG_LEN: u64 = 48 << 20;
const LONG_SEED: u64 = 0xfa017;
/// A download that must go on through the destination faults.
const BULK: &str = "198.51.100.10:7482";
const BULK_LEN: u64 = 24 << 20;
const BULK_SEED: u64 = 0xb01c;
/// No one listens here: refused.
const REFUSING: &str = "198.51.100.10:7483";
/// Sends 1 MiB, then resets.
const RESETTING: &str = "198.51.100.10:7484";
const RESET_SEED: u64 = 0x5e7;
/// mpb-srv drops every packet to this port: blackholed.
const BLACKHOLED: &str = "198.51.100.10:7485";

/// Whether one short request through the tunnel gets its whole answer.
fn request_works(seed: u64) -> bool {
    let addr: SocketAddr = REPLY.parse().expect("addr");
    run_in(LAN, "a short request", Duration::from_secs(10), move || {
        harness::short_request(addr, seed, 64, 4096).unwrap_or(false)
    })
}

/// Polls short requests until one works; how long that took, or `None`
/// after `limit`.
fn works_again_within(limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut seed = 1;
    while start.elapsed() < limit {
        if request_works(seed) {
            return Some(start.elapsed());
        }
        seed += 1;
        thread::sleep(Duration::from_millis(100));
    }
    None
}

/// Starts a long download to the LAN host and waits until 1 MiB
/// arrived; its end and its progress.
fn long_download() -> (Receiver<Cut>, Receiver<u64>) {
    start_cut_download(LONG.parse().expect("addr"), LONG_SEED, ())
}

/// What the client has installed, once it matches `baseline` (within
/// `limit`: endpoints and routes come back as the lines do).
fn installed_again(baseline: &ClientState, limit: Duration, when: &str) {
    let deadline = Instant::now() + limit;
    loop {
        let now = client_state().installed();
        if &now == baseline {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{when}: what the client installed differs from before:\n{}",
            describe(baseline, &now)
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// A table in mpb-srv that drops TCP to one port; removed on drop.
struct Blackhole;

impl Blackhole {
    const TABLE: &'static str = "mpbt_faults";

    fn port(port: u16) -> Self {
        let rules = format!(
            "add table inet {t}; add chain inet {t} input {{ type filter hook input priority 0; }}; \
             add rule inet {t} input tcp dport {port} drop",
            t = Self::TABLE
        );
        ns_ok(SRV, &["nft", &rules]);
        Self
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        let _ = ns_run(SRV, &["nft", "delete", "table", "inet", Self::TABLE]);
    }
}

/// Connects from the LAN host to `addr` and sends a request; how the
/// connection ended, after how many bytes, and when.
fn lan_fetch(addr: &str, expect_seed: Option<u64>) -> (u64, io::Result<()>, Duration) {
    let addr: SocketAddr = addr.parse().expect("addr");
    run_in(LAN, "a fetch", Duration::from_secs(30), move || {
        let start = Instant::now();
        let mut s = match connect(addr, Duration::from_secs(5)) {
            Ok(s) => s,
            Err(e) => return (0, Err(e), start.elapsed()),
        };
        if let Err(e) = s.write_all(b"get\n") {
            return (0, Err(e), start.elapsed());
        }
        match expect_seed {
            Some(seed) => {
                let (len, how) = harness::read_pattern(&mut s, seed, |_| {});
                (len, how, start.elapsed())
            }
            None => {
                let mut buf = [0; 256];
                let how = match s.read(&mut buf) {
                    Ok(0) => Ok(()),
                    Ok(n) => Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{n} bytes from a destination that sends none"),
                    )),
                    Err(e) => Err(e),
                };
                (0, how, start.elapsed())
            }
        }
    })
}

fn is_reset(how: &io::Result<()>) -> bool {
    matches!(how, Err(e) if e.kind() == io::ErrorKind::ConnectionReset)
}

#[test]
fn faults_around_the_client_lose_nothing_and_heal_by_themselves() {
    let lab = Lab::up_and_start(&[], &[]);
    let _reply = NsServer::start(
        SRV,
        REPLY.parse().expect("addr"),
        Behavior::Reply {
            request: 64,
            reply: 4096,
        },
    );
    let _long = NsServer::start(
        SRV,
        LONG.parse().expect("addr"),
        Behavior::Source {
            request: 4,
            len: LONG_LEN,
            seed: LONG_SEED,
        },
    );
    assert!(request_works(0), "the tunnel does not work at the start");
    let baseline = client_state().installed();
    let pid = lab.pid("client").expect("the client runs");

    scenario("every uplink down for 10 s", || {
        let (ended, _progress) = long_download();
        lab.link(&["dsl", "down"]);
        lab.link(&["lte", "down"]);
        let down = Instant::now();
        // The outage itself: ten seconds with no line at all.
        thread::sleep(Duration::from_secs(10));
        assert_eq!(
            lab.pid("client"),
            Some(pid),
            "the client died in the outage"
        );
        assert!(
            !request_works(1_000),
            "a request got through with no line up"
        );
        lab.link(&["dsl", "up"]);
        lab.link(&["lte", "up"]);
        let back = Instant::now();
        let took = works_again_within(Duration::from_secs(15))
            .expect("no request works 15 s after the lines came back");
        eprintln!(
            "all lines down {:.1} s: new requests work again {:.0} ms after they came back",
            (back - down).as_secs_f64(),
            took.as_secs_f64() * 1e3
        );
        // The download running through the outage goes on to its end,
        // or ends with a reset; every byte it got is intact either way.
        let (len, how, _) = ended
            .recv_timeout(Duration::from_secs(40))
            .expect("the download through the outage neither ended nor was reset");
        match how {
            Ok(()) => assert_eq!(len, LONG_LEN, "the download through the outage ended early"),
            how => assert!(
                is_reset(&how),
                "the download through the outage ended with {how:?} after {len} bytes"
            ),
        }
        eprintln!(
            "the download through the outage: {} MiB intact, then {}",
            len >> 20,
            if len == LONG_LEN {
                "its end"
            } else {
                "a reset"
            }
        );
        installed_again(&baseline, Duration::from_secs(15), "after the outage");
    });

    scenario("destinations refuse, reset and blackhole", || {
        let bulk = NsServer::start(
            SRV,
            BULK.parse().expect("addr"),
            Behavior::Source {
                request: 4,
                len: BULK_LEN,
                seed: BULK_SEED,
            },
        );
        let (progress_tx, progress) = mpsc::channel();
        let download = start_download(bulk.addr(), progress_tx);
        wait_for(&progress, 1 << 20);

        let (len, how, took) = lan_fetch(REFUSING, None);
        assert!(
            is_reset(&how)
                || matches!(&how, Err(e) if e.kind() == io::ErrorKind::ConnectionRefused),
            "a refused destination: {how:?} after {len} bytes"
        );
        eprintln!("refused destination: {how:?} after {took:?}");

        let _resetting = NsServer::start(
            SRV,
            RESETTING.parse().expect("addr"),
            Behavior::ResetMidStream {
                len: 1 << 20,
                seed: RESET_SEED,
            },
        );
        let addr: SocketAddr = RESETTING.parse().expect("addr");
        let (len, how) = run_in(
            LAN,
            "a reset download",
            Duration::from_secs(30),
            move || {
                let mut s = connect(addr, Duration::from_secs(5)).expect("connect");
                s.write_all(b"get\n").expect("request");
                // All of it, then one byte back: the server resets.
                let (got, read) =
                    harness::read_pattern(&mut (&mut s).take(1 << 20), RESET_SEED, |_| {});
                if let Err(e) = read {
                    return (got, Err(e));
                }
                let _ = s.write_all(b"!");
                let mut buf = [0; 16];
                let how = match s.read(&mut buf) {
                    Ok(0) => Ok(()),
                    Ok(n) => Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{n} bytes after the end"),
                    )),
                    Err(e) => Err(e),
                };
                (got, how)
            },
        );
        assert_eq!(
            len,
            1 << 20,
            "bytes before the destination's reset: {how:?}"
        );
        assert!(
            is_reset(&how),
            "a destination's reset reached the LAN host as {how:?}"
        );

        let blackholed: SocketAddr = BLACKHOLED.parse().expect("addr");
        let _blackhole = Blackhole::port(blackholed.port());
        let (len, how, took) = lan_fetch(BLACKHOLED, None);
        eprintln!("blackholed destination: {how:?} after {took:?}");
        assert!(
            is_reset(&how),
            "a blackholed destination ended with {how:?} after {len} bytes"
        );
        // The concentrator gives up after its connect_timeout (5 s).
        assert!(took < Duration::from_secs(10), "{took:?}");

        check_download(
            "the download beside the faulty destinations",
            download.join().expect("download thread"),
            &bulk,
            BULK_LEN,
            BULK_SEED,
        );
    });

    scenario("the client restarts under a download", || {
        let (ended, _progress) = long_download();
        let restart = Instant::now();
        harness::lab_ok(&["restart", "client"]);
        let restarted = restart.elapsed();
        let (len, how, at) = ended
            .recv_timeout(Duration::from_secs(15))
            .expect("the download through the client's restart never ended");
        assert!(
            is_reset(&how),
            "a download cut by the client's restart ended with {how:?} after {len} intact bytes"
        );
        eprintln!(
            "client restart took {:.1} s; the download ended {:.0} ms into it, {} MiB intact",
            restarted.as_secs_f64(),
            at.saturating_duration_since(restart).as_secs_f64() * 1e3,
            len >> 20
        );
        let took = works_again_within(Duration::from_secs(5))
            .expect("no request works 5 s after the client was back");
        eprintln!(
            "new requests work {:.0} ms after the restart",
            took.as_secs_f64() * 1e3
        );
        installed_again(
            &baseline,
            Duration::from_secs(10),
            "after the client's restart",
        );
    });
    drop(lab);
}
