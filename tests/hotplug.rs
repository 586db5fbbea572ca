//! Uplinks that come and go, in the lab (LAB.md): lte0 is deleted from
//! mpb-cli and created again with the same name and addresses
//! (`scripts/lab.sh link lte unplug` / `plug`), as a USB modem pulled out
//! and plugged back in, each time with a new interface index.
//!
//! Each test downloads from mpb-srv to the LAN host through the tunnel and
//! checks what a user would: the client runs without the modem, every byte
//! arrives (sha256), the modem carries the running download again soon
//! after it is plugged in, and nothing of mpbond's stays behind.
//!
//! Needs root; one lab at a time.

mod harness;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use harness::download::{check_download, start_download, wait_for};
use harness::state::installed;
use harness::within;
use harness::{if_bytes, ns_ok, subflows, Behavior, Lab, NsServer};

const SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
const CONCENTRATOR: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 9, 2));
const LTE: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 2, 2));
const CLI: &str = "mpb-cli";
const MIB: u64 = 1 << 20;
const LEN: u64 = 40 * MIB;
const SEED: u64 = 0x4071;

fn source(port: u16) -> NsServer {
    NsServer::start(
        "mpb-srv",
        SocketAddr::new(SERVER, port),
        Behavior::Source {
            request: 4,
            len: LEN,
            seed: SEED,
        },
    )
}

/// After lte is plugged in (at `plugged`): a running download gets a
/// subflow from lte's address within `limit`, and lte0 then receives over
/// 1 MiB within `limit` more. Prints both times.
fn lte_carries_again(plugged: Instant, limit: Duration) {
    let concentrator = SocketAddr::new(CONCENTRATOR, 7300);
    let mut seen = String::new();
    let subflow = within(limit, || {
        seen = ns_ok(CLI, &["ss", "-tinH"]);
        subflows(&seen, concentrator).contains(&LTE)
    });
    assert!(
        subflow.is_some(),
        "no subflow from lte's {LTE} within {limit:?} of the plug; ss -tinH:\n{seen}"
    );
    let before = if_bytes(CLI, "lte0").rx;
    let carried = within(limit, || if_bytes(CLI, "lte0").rx - before >= MIB);
    eprintln!(
        "after the plug: a subflow on lte after {subflow:?}, 1 MiB received on lte0 {carried:?} \
         later ({:.1} s after the plug)",
        plugged.elapsed().as_secs_f64()
    );
    assert!(
        carried.is_some(),
        "lte0 received less than 1 MiB in the {limit:?} after its subflow came: it carries \
         nothing"
    );
}

/// The client starts with lte's interface missing (the modem not plugged
/// in), works over dsl alone, and when lte0 appears a running download
/// gets a subflow on it within seconds; every byte arrives.
#[test]
fn a_modem_missing_at_start_joins_when_plugged_in() {
    let lab = Lab::up(&[]);
    lab.link(&["lte", "unplug"]);
    lab.start(&[]);
    assert!(lab.pid("client").is_some(), "the client did not start");
    let endpoints = ns_ok(CLI, &["ip", "mptcp", "endpoint", "show"]);
    assert!(
        !endpoints.contains("10.77.2.2") && endpoints.contains("10.77.1.2"),
        "with lte0 missing, only dsl has an endpoint:\n{endpoints}"
    );

    let srv = source(5701);
    let (tx, rx) = mpsc::channel();
    let download = start_download(srv.addr(), tx);
    wait_for(&rx, 6 * MIB);
    lab.link(&["lte", "plug"]);
    lte_carries_again(Instant::now(), Duration::from_secs(5));
    check_download(
        "40 MiB, lte plugged in at 6 MiB",
        download.join().expect("download thread"),
        &srv,
        LEN,
        SEED,
    );

    // A new connection uses both lines from its start.
    let srv = source(5702);
    let (tx, _rx) = mpsc::channel();
    let before = if_bytes(CLI, "lte0").rx;
    let download = start_download(srv.addr(), tx);
    check_download(
        "40 MiB after the plug",
        download.join().expect("download thread"),
        &srv,
        LEN,
        SEED,
    );
    let carried = if_bytes(CLI, "lte0").rx - before;
    eprintln!(
        "lte0 received {:.1} MiB during the second download",
        carried as f64 / MIB as f64
    );
    assert!(
        carried >= 4 * MIB,
        "lte0 received only {carried} bytes of a 40 MiB download after it joined"
    );
}

/// lte's modem is pulled out mid-download: the download completes intact
/// over dsl and lte's endpoint, rule and route go; plugged in again (a new
/// interface index), lte carries the download again within 3 s. After
/// `lab.sh stop` nothing of mpbond's is left.
#[test]
fn an_unplugged_modem_leaves_cleanly_and_rejoins() {
    let lab = Lab::up_and_start(&[], &[]);
    let srv = source(5703);
    let (tx, rx) = mpsc::channel();
    let download = start_download(srv.addr(), tx);
    wait_for(&rx, 6 * MIB);
    lab.link(&["lte", "unplug"]);
    // What was installed for lte goes: endpoint, rule, route.
    let mut left = Vec::new();
    let gone = within(Duration::from_secs(3), || {
        left = installed()
            .into_iter()
            .filter(|l| l.contains("10.77.2.2") || l.contains("7702"))
            .collect();
        left.is_empty()
    });
    eprintln!("lte's endpoint, rule and route gone {gone:?} after the unplug");
    assert!(gone.is_some(), "still there 3 s after the unplug: {left:?}");
    wait_for(&rx, 16 * MIB);
    lab.link(&["lte", "plug"]);
    lte_carries_again(Instant::now(), Duration::from_secs(3));
    check_download(
        "40 MiB, lte unplugged at 6 MiB and plugged in at 16 MiB",
        download.join().expect("download thread"),
        &srv,
        LEN,
        SEED,
    );

    lab.stop();
    assert_eq!(
        installed(),
        Vec::<String>::new(),
        "mpbond left things behind in mpb-cli"
    );
}
