//! A line dying under a running transfer, in the lab (LAB.md): carrier
//! lost (`down`, seen through the kernel's link events) and blackholed
//! (carrier up, everything dropped: seen by the client's probes).
//!
//! Each test downloads from mpb-srv to the LAN host through the tunnel on
//! the default profiles (as much as it needs to see the line fail and the
//! transfer carry on for seconds after; 60 MiB at most), changes a line mid-transfer with
//! `scripts/lab.sh link`, and checks what a user would: every byte arrives
//! (sha256), the connection lives to the end, and how long the receiver
//! waited at most (printed). Others open connection after connection
//! while a line dies, and check each ends intact or reset, never hangs.
//!
//! Needs root; one lab at a time.

mod harness;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use harness::download::{check_download, start_download, wait_for, NOTED_GAP};
use harness::NsServer;
use harness::{
    bad_requests, if_bytes, ns_ok, ns_run, run_in, short_request, subflows, within, Behavior, Lab,
};

const SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
const CONCENTRATOR: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 9, 2));
const SRV: &str = "mpb-srv";
const LAN: &str = "mpb-lan";
const CLI: &str = "mpb-cli";
const WAN: &str = "mpb-wan";
const MIB: u64 = 1 << 20;
const SEED: u64 = 0xfa11;

/// A line's return is measured for 5 s after it: 8 MiB before the cut,
/// up to 8 s of one line, then 5 s of both (about 6.6 MB/s).
const RETURN_LEN: u64 = 60 * MIB;

/// A cut at 10 MiB leaves 20 MiB to the other line: 9 s over dsl alone.
const OUTAGE_LEN: u64 = 30 * MIB;

/// The longest a line's return (or renumbering) may stall the download
/// here. The failover goal itself (300 ms) is a speed goal, measured by
/// `bench.sh failover` against kernel MPTCP in the same run: on a shared
/// machine one run in a few misses it by tens of milliseconds (373 ms
/// once in the suite; 142-206 ms in three reruns). A return that goes
/// wrong (data waiting for a retransmission timeout on a subflow that did
/// not come back) stalls a second or more, which this still catches.
const RETURN_STALL_LIMIT: Duration = Duration::from_secs(1);

fn source(port: u16, len: u64) -> NsServer {
    NsServer::start(
        SRV,
        SocketAddr::new(SERVER, port),
        Behavior::Source {
            request: 4,
            len,
            seed: SEED,
        },
    )
}

/// `link` fails (`how`: down or blackhole) at 10 MiB into a download: the
/// download completes intact over the other line, and the client says why
/// it moved.
fn outage_mid_transfer(link: &str, how: &str, port: u16, why: &str) {
    let lab = Lab::up_and_start(&[], &[]);
    let srv = source(port, OUTAGE_LEN);
    let (tx, rx) = mpsc::channel();
    let download = start_download(srv.addr(), tx);
    wait_for(&rx, 10 * MIB);
    lab.link(&[link, how]);
    let got = download.join().expect("download thread");
    check_download(
        &format!("{link} {how} at 10 MiB"),
        got,
        &srv,
        OUTAGE_LEN,
        SEED,
    );
    let log = lab.log_tail("client", 50);
    assert!(
        log.contains("uplink down") && log.contains(&format!("uplink={link}")) && log.contains(why),
        "the client did not log the {link} outage ({why}):\n{log}"
    );
}

#[test]
fn dsl_down_mid_transfer_loses_nothing() {
    outage_mid_transfer("dsl", "down", 5601, "no carrier");
}

/// lte carries two thirds of the bytes; blackholed, its carrier stays up.
#[test]
fn lte_blackholed_mid_transfer_loses_nothing() {
    outage_mid_transfer("lte", "blackhole", 5604, "probes unanswered");
}

/// `link` fails (`how`) for `outage` at 8 MiB into a download and comes
/// back: within 2 s of its return the running connection carries bytes on
/// it again (the kernel alone never re-creates a subflow an outage closed,
/// and an old one's timers have backed off to seconds), and the return
/// stalls the download no longer than the goal.
fn line_returns(link: &str, how: &str, outage: Duration, port: u16) {
    let lab = Lab::up_and_start(&[], &[]);
    let srv = source(port, RETURN_LEN);
    let dev = format!("{link}0");
    let (tx, rx) = mpsc::channel();
    let download = start_download(srv.addr(), tx);
    wait_for(&rx, 8 * MIB);
    lab.link(&[link, how]);
    thread::sleep(outage);
    lab.link(&[link, "up"]);
    let back = Instant::now();
    let before = if_bytes(CLI, &dev).rx;
    thread::sleep(Duration::from_secs(2));
    let carried = if_bytes(CLI, &dev).rx - before;
    eprintln!(
        "{link} received {:.1} MiB in the {:.1} s after its return",
        carried as f64 / MIB as f64,
        back.elapsed().as_secs_f64()
    );
    let got = download.join().expect("download thread");
    let got = check_download(
        &format!("{link} {how} for {outage:?}"),
        got,
        &srv,
        RETURN_LEN,
        SEED,
    );
    let stall = got.longest_gap_within(back, back + Duration::from_secs(5));
    eprintln!("longest wait for a byte within 5 s of {link}'s return: {stall:?}");
    assert!(
        stall <= RETURN_STALL_LIMIT,
        "{link}'s return stalled the download for {stall:?} (at most {RETURN_STALL_LIMIT:?}); \
         gaps over {NOTED_GAP:?}: {:?}",
        got.gaps
    );
    // 2 s of dsl (20 Mbit/s) is 5 MB, of lte 10 MB; a working subflow
    // moves well over 1 MiB even while it ramps up.
    assert!(
        carried >= MIB,
        "{link} carried only {carried} bytes in the 2 s after it came back: the running \
         connection did not get a subflow on it again"
    );
}

#[test]
fn dsl_returns_to_the_running_connection_after_a_flap() {
    line_returns("dsl", "down", Duration::from_secs(2), 5602);
}

#[test]
fn lte_returns_to_the_running_connection_after_an_8s_blackhole() {
    line_returns("lte", "blackhole", Duration::from_secs(8), 5605);
}

/// lte's address changes mid-transfer (as a DHCP renumbering: the old
/// address goes, a new one comes): the running connection gets a subflow
/// from the new address, which carries the download's bytes again, and
/// nothing is lost.
#[test]
fn a_renumbered_line_returns_to_the_running_connection() {
    let lab = Lab::up_and_start(&[], &[]);
    let srv = source(5608, RETURN_LEN);
    let (tx, rx) = mpsc::channel();
    let download = start_download(srv.addr(), tx);
    wait_for(&rx, 8 * MIB);
    let new: IpAddr = "10.77.2.3".parse().expect("address");
    lab.link(&["lte", "renumber", "3"]);
    let renumbered = Instant::now();
    // The subflow from the new address, seen by ss within 2 s.
    let concentrator = SocketAddr::new(CONCENTRATOR, 7300);
    let (found, seen) = loop {
        let seen = ns_ok(CLI, &["ss", "-tinH"]);
        if subflows(&seen, concentrator).contains(&new) {
            break (Some(renumbered.elapsed()), seen);
        }
        if renumbered.elapsed() > Duration::from_secs(2) {
            break (None, seen);
        }
        thread::sleep(Duration::from_millis(20));
    };
    let before = if_bytes(CLI, "lte0").rx;
    thread::sleep(Duration::from_secs(2));
    let carried = if_bytes(CLI, "lte0").rx - before;
    eprintln!(
        "subflow from {new} after {found:?}; lte0 received {:.1} MiB in the next 2 s",
        carried as f64 / MIB as f64
    );
    let got = download.join().expect("download thread");
    let got = check_download("lte renumbered at 8 MiB", got, &srv, RETURN_LEN, SEED);
    let stall = got.longest_gap_within(renumbered, renumbered + Duration::from_secs(5));
    eprintln!("longest wait for a byte within 5 s of the renumbering: {stall:?}");
    assert!(
        found.is_some(),
        "no subflow from lte's new address {new} within 2 s; ss -tinH:\n{seen}"
    );
    // Only the new address is on lte0: what it receives is the new
    // subflow's.
    assert!(
        carried >= MIB,
        "lte0 received only {carried} bytes in 2 s after the renumbering: the subflow from the \
         new address carries nothing"
    );
    let log = lab.log_tail("client", 50);
    assert!(
        log.contains("uplink has a new address") && log.contains("new=10.77.2.3"),
        "the client did not log lte's new address:\n{log}"
    );
}

/// Connections opened one after the other by 16 LAN hosts while dsl dies
/// (`how`) under them: each ends within 5 s, intact or reset, none hangs.
/// Then, with dsl still down, new connections start on lte at once: 20
/// small requests each complete within 2 s (one lost SYN on lte allowed).
///
/// Those whose tunnel got no answer before the cut are sent again from
/// lte (the concentrator's replay guard refuses the copy if the first got
/// through); those the concentrator holds on dsl alone, which the kernel
/// cannot move (it refuses joins before the handshake completed), are
/// reset within about 3 s instead of hanging for the 30 s connect timeout
/// or until TCP gives up.
fn connections_opened_as_dsl_dies(how: &str, port: u16) {
    let lab = Lab::up_and_start(&[], &[]);
    let srv = NsServer::start(
        SRV,
        SocketAddr::new(SERVER, port),
        Behavior::Reply {
            // Past the 1 KiB that rides in the SYN: the rest follows the
            // answer.
            request: 2000,
            reply: 2000,
        },
    );
    let addr = srv.addr();
    const WORKERS: u64 = 16;
    const HANG: Duration = Duration::from_secs(5);
    let results = thread::scope(|scope| {
        let requests = scope.spawn(move || {
            run_in(LAN, "requests", Duration::from_secs(90), move || {
                let started = Instant::now();
                let workers: Vec<_> = (0..WORKERS)
                    .map(|w| {
                        thread::spawn(move || {
                            let mut out = Vec::new();
                            let mut i = 0;
                            while started.elapsed() < Duration::from_secs(5) {
                                let seed = 20_000 + w * 10_000 + i;
                                let begun = Instant::now();
                                let result = request(addr, seed);
                                out.push((seed, result, begun.elapsed()));
                                i += 1;
                            }
                            out
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .flat_map(|w| w.join().expect("worker"))
                    .collect::<Vec<_>>()
            })
        });
        thread::sleep(Duration::from_secs(2));
        lab.link(&["dsl", how]);
        requests.join().expect("requests")
    });
    let ok = results.iter().filter(|r| matches!(r.1, Ok(true))).count();
    let resets: Vec<_> = results
        .iter()
        .filter(|r| matches!(&r.1, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset))
        .collect();
    let slowest = results.iter().map(|r| r.2).max().unwrap_or_default();
    eprintln!(
        "dsl {how} under {} connections: {ok} intact, {} reset, slowest {slowest:?}",
        results.len(),
        resets.len()
    );
    let bad: Vec<String> = results
        .iter()
        .filter(|(_, r, t)| {
            *t >= HANG
                || match r {
                    Ok(intact) => !intact,
                    Err(e) => e.kind() != std::io::ErrorKind::ConnectionReset,
                }
        })
        .map(|(seed, r, t)| format!("request {seed}: {r:?} after {t:?}"))
        .collect();
    assert!(
        bad.is_empty(),
        "with dsl {how} under new connections, each must end within {HANG:?}, intact or \
         reset:\n{}\nclient log:\n{}",
        bad.join("\n"),
        lab.log_tail("client", 30)
    );
    // Each LAN host loses at most the connection it had open at the cut,
    // and new ones work after it.
    assert!(
        resets.len() as u64 <= WORKERS,
        "{} connections were reset; at most one per LAN host may be",
        resets.len()
    );
    assert!(ok > 100, "only {ok} requests completed");

    let small = NsServer::start(
        SRV,
        SocketAddr::new(SERVER, port + 1000),
        Behavior::Reply {
            request: 100,
            reply: 1024,
        },
    );
    let addr = small.addr();
    let results = run_in(LAN, "requests", Duration::from_secs(60), move || {
        (0..20u64)
            .map(|i| {
                let started = Instant::now();
                let result = short_request(addr, 9000 + i, 100, 1024);
                (i, result, started.elapsed())
            })
            .collect::<Vec<_>>()
    });
    let slowest = results.iter().map(|r| r.2).max().unwrap_or_default();
    eprintln!("20 requests with dsl {how}: slowest {slowest:?}");
    // Within 2 s: lte loses 0.5 % of packets each way, and a lost SYN or
    // SYN-ACK costs TCP's 1 s initial retransmission timeout (20 requests
    // right after the burst crossed 1 s in about one run in five); one
    // waiting on dead dsl would take the 3 s rescue or the 30 s timeout.
    let bad = bad_requests(&results, Duration::from_secs(2));
    assert!(
        bad.is_empty(),
        "with dsl {how}, requests must complete within 2 s:\n{}",
        bad.join("\n")
    );
}

/// One request of [`connections_opened_as_dsl_dies`]: 2000 bytes whose
/// first 8 are `seed`, then the whole answer; `Ok(true)` if it is the
/// 2000 bytes the server derives from `seed`. Everything times out after
/// 20 s, so a hang shows as its duration.
fn request(addr: SocketAddr, seed: u64) -> std::io::Result<bool> {
    use std::io::{Read, Write};
    let mut s = harness::connect(addr, Duration::from_secs(20))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut bytes = harness::Pattern::bytes(seed, 2000);
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    s.write_all(&bytes)?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    Ok(answer == harness::Pattern::bytes(seed, 2000))
}

#[test]
fn connections_opened_as_dsl_goes_down_end_intact_or_reset_and_new_ones_use_lte() {
    connections_opened_as_dsl_dies("down", 5603);
}

#[test]
fn connections_opened_as_dsl_is_blackholed_end_intact_or_reset_and_new_ones_use_lte() {
    connections_opened_as_dsl_dies("blackhole", 5606);
}

/// 12 MiB over dsl alone, then 12 MiB over lte alone.
const BACKUP_LEN: u64 = 24 * MIB;

/// With lte as a `backup` uplink (deploy/lab/client-backup.toml): lte
/// carries (almost) nothing while dsl works; when dsl is blackholed, the
/// transfer carries on over lte.
#[test]
fn a_backup_uplink_takes_over_only_when_needed() {
    let config = harness::root()
        .join("deploy/lab/client-backup.toml")
        .to_string_lossy()
        .into_owned();
    let lab = Lab::up_and_start(&[], &["--client-config", &config]);
    let srv = source(5607, BACKUP_LEN);
    let (tx, rx) = mpsc::channel();
    let (dsl0, lte0) = (if_bytes(CLI, "dsl0").rx, if_bytes(CLI, "lte0").rx);
    let download = start_download(srv.addr(), tx);
    wait_for(&rx, 12 * MIB);
    let (dsl, lte) = (
        if_bytes(CLI, "dsl0").rx - dsl0,
        if_bytes(CLI, "lte0").rx - lte0,
    );
    eprintln!(
        "while dsl works: dsl0 received {:.1} MiB, lte0 (backup) {:.3} MiB",
        dsl as f64 / MIB as f64,
        lte as f64 / MIB as f64
    );
    assert!(
        lte * 100 < dsl + lte,
        "the backup uplink carried {lte} of {} bytes while dsl worked (want < 1 %)",
        dsl + lte
    );
    lab.link(&["dsl", "blackhole"]);
    let got = download.join().expect("download thread");
    check_download("dsl blackholed, lte backup", got, &srv, BACKUP_LEN, SEED);
}

/// What the issue asks of a bursty line: 60 MiB.
const BURSTY_LEN: u64 = 60 * MIB;

/// On a bursty cellular lte (profile `lte-bursty`: delivery pauses of
/// 50 ms to 1.5 s tens of times a minute while the line is alive), a 60 MiB
/// download arrives intact, and the client calls lte dead only while it
/// learns the line's pauses: a handful of times at most, where fixed
/// limits called it dead every few seconds.
#[test]
fn a_bursty_lte_is_not_mistaken_for_a_dead_one() {
    let lab = Lab::up_and_start(&["--lte", "lte-bursty"], &[]);
    let srv = source(5609, BURSTY_LEN);
    let (tx, _rx) = mpsc::channel();
    let download = start_download(srv.addr(), tx);
    let got = download.join().expect("download thread");
    let got = check_download(
        "60 MiB over dsl and a bursty lte",
        got,
        &srv,
        BURSTY_LEN,
        SEED,
    );
    let log = lab.log_tail("client", 2000);
    let lte_downs = || {
        log.lines()
            .filter(|l| l.contains("uplink down") && l.contains("uplink=lte"))
    };
    // Taken out while dsl waited for it (head-of-line blocking): on
    // purpose, and cheap; any other dead verdict mistook a pause for an
    // outage.
    let holds = lte_downs()
        .filter(|l| l.contains("other uplinks wait for it"))
        .count();
    let mistaken = lte_downs().count() - holds;
    let backs = log
        .lines()
        .filter(|l| l.contains("uplink back") && l.contains("uplink=lte"))
        .count();
    let secs = got.took.as_secs_f64();
    eprintln!(
        "lte called dead {mistaken} times for silence and taken out {holds} times while dsl \
         waited for it, back {backs} times in {secs:.1} s; {:.1} Mbit/s",
        BURSTY_LEN as f64 * 8.0 / secs / 1e6
    );
    let verdicts = || {
        log.lines()
            .filter(|l| l.contains("uplink verdict"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        mistaken <= 3,
        "lte was called dead {mistaken} times for silence during the download; its verdicts:\n{}",
        verdicts()
    );
    // bench.sh tcp saw 3 in 20 s on this profile; one every 250 ms of
    // silence would be 80.
    assert!(
        holds <= 12,
        "lte was taken out {holds} times while dsl waited for it; its verdicts:\n{}",
        verdicts()
    );
}

/// Drops the probes (UDP to the concentrator's port: the datagram
/// tunnel's too) that `lines` (10.77.N.0/24) send, in mpb-wan; TCP passes.
/// Each its own table, removed on drop, also when the test fails.
struct ProbeDrop(String);

impl ProbeDrop {
    fn lines(lines: &[u8]) -> Self {
        let names: Vec<String> = lines.iter().map(u8::to_string).collect();
        let t = format!("mpbt_probe_drop_{}", names.join("_"));
        let _ = ns_run(WAN, &["nft", "delete", "table", "inet", &t]);
        let mut rules = format!(
            "add table inet {t}; add chain inet {t} probes {{ type filter hook forward priority 0; }}"
        );
        for n in lines {
            rules +=
                &format!("; add rule inet {t} probes ip saddr 10.77.{n}.0/24 udp dport 7300 drop");
        }
        ns_ok(WAN, &["nft", &rules]);
        Self(t)
    }
}

impl Drop for ProbeDrop {
    fn drop(&mut self) {
        let _ = ns_run(WAN, &["nft", "delete", "table", "inet", &self.0]);
    }
}

/// Client log lines since `skip` that give an uplink verdict.
fn verdicts_since(lab: &Lab, skip: usize) -> Vec<String> {
    lab.log_tail("client", usize::MAX)
        .lines()
        .skip(skip)
        .filter(|l| l.contains("uplink down") || l.contains("uplink back"))
        .map(str::to_owned)
        .collect()
}

/// Every line's probes unanswered while both keep delivering the data
/// (what a client too loaded to read its answers in time sees, at
/// Gbit/s): no line is called dead, since that would move the traffic
/// nowhere and tear down every subflow, and the download goes on without
/// a stall. Once lte answers again, dsl's silence is its own: dsl is dead
/// within a second, and the download still ends intact over lte.
#[test]
fn probes_lost_on_every_line_condemn_none_but_one_answering_condemns_the_other() {
    let lab = Lab::up_and_start(&[], &[]);
    let srv = source(5609, RETURN_LEN);
    let (tx, rx) = mpsc::channel();
    let download = start_download(srv.addr(), tx);
    wait_for(&rx, 4 * MIB);
    let skip = lab.log_tail("client", usize::MAX).lines().count();
    let both = ProbeDrop::lines(&[1, 2]);
    let silent_from = Instant::now();
    // Five busy limits (600 ms) of silence on both lines.
    thread::sleep(Duration::from_secs(3));
    let silent_to = Instant::now();
    let verdicts = verdicts_since(&lab, skip);
    assert!(
        verdicts.is_empty(),
        "lines called dead while every line's probes went unanswered:\n{}",
        verdicts.join("\n")
    );
    let endpoints = ns_ok(CLI, &["ip", "mptcp", "endpoint", "show"]);
    assert!(
        endpoints.contains("10.77.1.2") && endpoints.contains("10.77.2.2"),
        "an endpoint went while every line's probes went unanswered:\n{endpoints}"
    );
    // lte answers again; dsl's probes still go unanswered.
    let dsl_only = ProbeDrop::lines(&[1]);
    drop(both);
    let dead = within(Duration::from_secs(3), || {
        verdicts_since(&lab, skip)
            .iter()
            .any(|l| l.contains("uplink down") && l.contains("uplink=dsl"))
    });
    let got = download.join().expect("download thread");
    drop(dsl_only);
    let got = check_download(
        "probes lost on both lines, then on dsl",
        got,
        &srv,
        RETURN_LEN,
        SEED,
    );
    let stall = got.longest_gap_within(silent_from, silent_to);
    eprintln!(
        "both lines' probes lost for 3 s: longest wait for a byte {stall:?}; dsl dead {dead:?} after lte answered"
    );
    assert!(
        stall < RETURN_STALL_LIMIT,
        "the download stalled {stall:?} while every line's probes were lost"
    );
    let dead = dead.unwrap_or_else(|| {
        panic!(
            "dsl not called dead within 3 s of lte answering again:\n{}",
            lab.log_tail("client", usize::MAX)
                .lines()
                .skip(skip)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert!(
        dead < Duration::from_secs(1),
        "dsl called dead only {dead:?} after lte answered"
    );
}
