//! No replay, ever (issue 10, item 1), tried in the lab as an attacker on
//! the path would: connect headers captured with tcpdump in mpb-wan (the
//! "internet") while the LAN host makes requests through the tunnel, then
//! a restart, then every captured first flight (header and the request
//! bytes after it) sent again from mpb-wan's own address to the
//! concentrator. The server in mpb-srv must see none of them, and the LAN
//! host's next connection must go through within 2 s of the restart.
//!
//! The replays go out inside the headers' 30 s freshness window, where the
//! concentrator's in-memory replay guard used to be the only defence (and
//! a restarted one remembered nothing). Both ends are restarted in turn.
//! A download running through the concentrator as it restarts must end on
//! the LAN host with a reset within 2 s, every byte before it intact
//! (issue 10, item 4).
//!
//! Needs root and tcpdump (scripts/deps.sh installs it); one lab at a time.

mod harness;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::download::{start_cut_download, Cut};
use harness::{connect, lab_ok, run_in, Behavior, Lab, NsServer, Sha256};
use mpbond::wire::convert::{self, Response};

const SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10)), 5210);
const CONCENTRATOR: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 9, 2));
const CONCENTRATOR_LISTEN: SocketAddr = SocketAddr::new(CONCENTRATOR, 7300);
/// The connect header's freshness window (`ReplayGuard::DEFAULT_WINDOW_MS`).
const WINDOW: Duration = Duration::from_secs(30);
/// How soon after a restart the LAN host's next connection must work.
const RECOVERY: Duration = Duration::from_secs(2);
const LAN: &str = "mpb-lan";
const WAN: &str = "mpb-wan";
const SRV: &str = "mpb-srv";

/// tcpdump on mpb-wan's link to the concentrator (`conc0`), writing what
/// goes to its TCP port into a pcap file; killed and removed on drop.
struct Capture {
    child: Child,
    path: PathBuf,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Capture {
    fn start(what: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("mpbond-replay-{}-{what}.pcap", std::process::id()));
        let filter = format!(
            "tcp and dst host {} and dst port {}",
            CONCENTRATOR_LISTEN.ip(),
            CONCENTRATOR_LISTEN.port()
        );
        let mut child = Command::new("ip")
            // Immediate mode and -U: each packet is in the file as soon as
            // it is seen, not when a ring block fills or times out.
            .args(["netns", "exec", WAN, "tcpdump", "-i", "conc0", "-n", "-U"])
            .arg("--immediate-mode")
            // Root keeps writing the file (tcpdump otherwise opens it as
            // user tcpdump).
            .args(["-Z", "root", "-s", "0", "-w"])
            .arg(&path)
            .arg(&filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tcpdump (scripts/deps.sh installs it)");
        let stderr = child.stderr.take().expect("tcpdump's stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = std::sync::Arc::clone(&lines);
        thread::spawn(move || {
            use std::io::BufRead as _;
            for line in io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
                kept.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let capture = Self {
            child,
            path,
            stderr: lines,
        };
        rx.recv_timeout(Duration::from_secs(10))
            .expect("tcpdump on conc0 in mpb-wan did not start listening");
        capture
    }

    /// Waits (at most 5 s) until the capture holds `expect` connect headers
    /// for `destination`, stops it and returns them, each with the rest of
    /// its segment (the first bytes of the LAN host's request, when they
    /// went with it), once each.
    fn finish(mut self, destination: SocketAddr, expect: usize) -> Vec<Captured> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.headers(destination, false).len() < expect && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "tcpdump did not stop on SIGINT");
            thread::sleep(Duration::from_millis(20));
        }
        self.headers(destination, true)
    }

    /// The connect headers for `destination` in the file so far, each with
    /// the bytes its connection carried after it, as an attacker would
    /// reassemble them.
    fn headers(&self, destination: SocketAddr, report: bool) -> Vec<Captured> {
        let pcap = std::fs::read(&self.path).unwrap_or_default();
        let frames = pcap_frames(&pcap);
        // Per connection (its source address): (sequence of the first
        // data byte, payload, rode a SYN).
        let mut streams: BTreeMap<SocketAddr, Vec<(u32, Vec<u8>, bool)>> = BTreeMap::new();
        for frame in &frames {
            let Ok(packet) = etherparse::SlicedPacket::from_ethernet(frame) else {
                continue;
            };
            let src = match &packet.net {
                Some(etherparse::NetSlice::Ipv4(ip)) => IpAddr::V4(ip.header().source_addr()),
                Some(etherparse::NetSlice::Ipv6(ip)) => IpAddr::V6(ip.header().source_addr()),
                _ => continue,
            };
            let Some(etherparse::TransportSlice::Tcp(tcp)) = packet.transport else {
                continue;
            };
            if tcp.payload().is_empty() {
                continue;
            }
            // A SYN's data starts one after its sequence number.
            let seq = tcp.sequence_number().wrapping_add(u32::from(tcp.syn()));
            streams
                .entry(SocketAddr::new(src, tcp.source_port()))
                .or_default()
                .push((seq, tcp.payload().to_vec(), tcp.syn()));
        }
        let mut found: Vec<Captured> = Vec::new();
        for segments in streams.values_mut() {
            // Retransmissions carry the same bytes again.
            segments.sort_by_key(|(seq, _, _)| *seq);
            segments.dedup_by_key(|(seq, _, _)| *seq);
            let Some((at, request)) = segments
                .iter()
                .enumerate()
                .find_map(|(i, (_, payload, _))| Some((i, RawHeader::parse(payload)?)))
            else {
                continue;
            };
            if request.destination != destination {
                continue;
            }
            let (mut next, mut flight, syn) = (segments[at].0, Vec::new(), segments[at].2);
            for (seq, payload, _) in &segments[at..] {
                if *seq != next {
                    break; // a hole: stop where the capture does
                }
                flight.extend_from_slice(payload);
                next = seq.wrapping_add(payload.len() as u32);
            }
            found.push(Captured {
                first_flight: flight,
                syn,
                request,
            });
        }
        if report {
            eprintln!(
                "capture: {} frames, {} connections with data, {} connect headers for {destination}; \
                 tcpdump said {:?}",
                frames.len(),
                streams.len(),
                found.len(),
                self.stderr.lock().unwrap_or_else(|e| e.into_inner())
            );
        }
        found
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One connect header seen on the wire.
#[derive(Debug)]
struct Captured {
    /// The header, then what the client sent after it on that connection.
    first_flight: Vec<u8>,
    /// Whether it rode a SYN (TCP Fast Open) rather than a warm tunnel.
    syn: bool,
    request: RawHeader,
}

/// What the test reads of a captured connect header: by offsets that every
/// version of it shares (the Connect TLV first, then the Auth TLV's
/// timestamp), so that the test also runs against an older mpbond
/// (`MPBOND=PATH`) and shows what it let through.
#[derive(Debug)]
struct RawHeader {
    destination: SocketAddr,
    timestamp_ms: u64,
}

impl RawHeader {
    fn parse(payload: &[u8]) -> Option<Self> {
        let len = convert::header_len(payload).ok()??;
        let header = payload.get(..len)?;
        // Connect TLV (type 10) at 4: port at 6..8, address at 8..24; Auth
        // TLV (type 200) at 24: timestamp at 28..36.
        if header.get(4) != Some(&10) || header.get(24) != Some(&200) {
            return None;
        }
        let port = u16::from_be_bytes(header.get(6..8)?.try_into().ok()?);
        let octets: [u8; 16] = header.get(8..24)?.try_into().ok()?;
        let ip = std::net::Ipv6Addr::from(octets);
        let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
        let timestamp_ms = u64::from_be_bytes(header.get(28..36)?.try_into().ok()?);
        Some(Self {
            destination: SocketAddr::new(ip, port),
            timestamp_ms,
        })
    }
}

/// The frames of a classic pcap file (either byte order, Ethernet); stops
/// at the first truncated record.
fn pcap_frames(pcap: &[u8]) -> Vec<&[u8]> {
    let Some(magic) = pcap.get(..4) else {
        return Vec::new(); // nothing written yet
    };
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => panic!("not a pcap file: magic {magic:02x?}"),
    };
    let u32_at = |at: usize| -> Option<u32> {
        let bytes: [u8; 4] = pcap.get(at..at + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(bytes)
        } else {
            u32::from_be_bytes(bytes)
        })
    };
    assert_eq!(
        u32_at(20),
        Some(1),
        "the capture must be Ethernet (linktype 1)"
    );
    let mut frames = Vec::new();
    let mut at = 24;
    while let Some(len) = u32_at(at + 8) {
        let start = at + 16;
        let Some(frame) = pcap.get(start..start + len as usize) else {
            break;
        };
        frames.push(frame);
        at = start + len as usize;
    }
    frames
}

fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(since.as_millis()).expect("ms fit u64")
}

/// The request the LAN host sends on connection `n`: what a replay would
/// deliver again.
fn request_bytes(n: usize) -> Vec<u8> {
    format!("POST /order/{n} HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 0\r\n\r\n")
        .into_bytes()
}

/// From the LAN host through the tunnel: sends `payload` to [`SERVER`],
/// half-closes and waits for the server to close.
fn lan_request(payload: Vec<u8>) -> io::Result<()> {
    run_in(LAN, "LAN request", Duration::from_secs(20), move || {
        let mut s = connect(SERVER, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(&payload)?;
        s.shutdown(Shutdown::Write)?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)?;
        Ok(())
    })
}

/// Makes `count` requests from the LAN host, each checked at the server
/// (through the tunnel, bytes intact), while tcpdump records them.
fn capture_requests(srv: &NsServer, what: &str, count: usize) -> Vec<Captured> {
    let capture = Capture::start(what);
    let before = srv.accepted();
    for n in 0..count {
        lan_request(request_bytes(n)).unwrap_or_else(|e| panic!("LAN request {n}: {e}"));
        let served = srv.next(Duration::from_secs(10));
        assert_eq!(served.sha256, Sha256::of(&request_bytes(n)), "request {n}");
        assert_eq!(
            served.peer.ip(),
            CONCENTRATOR,
            "request {n} bypassed the tunnel"
        );
    }
    assert_eq!(srv.accepted(), before + count);
    let captured = capture.finish(SERVER, count);
    eprintln!(
        "{what}: captured {} connect headers ({} in a SYN), {} with the request after them",
        captured.len(),
        captured.iter().filter(|c| c.syn).count(),
        captured
            .iter()
            .filter(|c| c.first_flight.ends_with(b"\r\n\r\n"))
            .count()
    );
    assert_eq!(
        captured.len(),
        count,
        "every request's connect header must be in the capture"
    );
    captured
}

/// What the concentrator answered one replay with.
#[derive(Debug)]
struct Replayed {
    /// Bytes it sent back (nothing, or a refusal).
    answer: Vec<u8>,
    end: Result<(), io::ErrorKind>,
}

/// Sends each captured first flight again from mpb-wan's own address
/// (10.77.9.1, not the client's lines) on a new connection, half-closes,
/// and reads what comes back until the concentrator closes.
fn replay_from_wan(captured: &[Captured]) -> Vec<Replayed> {
    let flights: Vec<Vec<u8>> = captured.iter().map(|c| c.first_flight.clone()).collect();
    run_in(WAN, "replays", Duration::from_secs(60), move || {
        flights
            .into_iter()
            .map(|flight| {
                let mut s =
                    TcpStream::connect_timeout(&CONCENTRATOR_LISTEN, Duration::from_secs(3))
                        .expect("connect to the concentrator from mpb-wan");
                s.set_read_timeout(Some(Duration::from_secs(15)))
                    .expect("read timeout");
                // A refused header is reset at once, maybe before the
                // attacker has sent it all or half-closed: that is the
                // refusal, not a failure of the test.
                let sent = s
                    .write_all(&flight)
                    .and_then(|()| s.shutdown(Shutdown::Write));
                if let Err(e) = sent {
                    return Replayed {
                        answer: Vec::new(),
                        end: Err(e.kind()),
                    };
                }
                let mut answer = Vec::new();
                let end = s.read_to_end(&mut answer).map(drop).map_err(|e| e.kind());
                Replayed { answer, end }
            })
            .collect()
    })
}

/// Asserts no replay was let through: each got silence or a refusal, and
/// the server accepted nothing new.
fn assert_refused(what: &str, replays: &[Replayed], srv: &NsServer, accepted_before: usize) {
    // The concentrator answers Connected only after connecting to the
    // server, so a replay let through would be counted by now; a short
    // poll covers the server thread's own lag.
    let deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < deadline && srv.accepted() == accepted_before {
        thread::sleep(Duration::from_millis(20));
    }
    let served = srv.drain();
    assert_eq!(
        srv.accepted(),
        accepted_before,
        "{what}: captured headers sent again reached the server: {served:?}; \
         the concentrator answered {replays:?}"
    );
    for (i, replay) in replays.iter().enumerate() {
        if replay.answer.is_empty() {
            continue;
        }
        let decoded = convert::header_len(&replay.answer)
            .ok()
            .flatten()
            .and_then(|len| Response::decode(replay.answer.get(..len)?).ok());
        match decoded {
            Some((Response::StaleEpoch { .. } | Response::Error { .. }, used))
                if used == replay.answer.len() => {}
            other => panic!(
                "{what}: replay {i} must get silence or a refusal and nothing more, got \
                 {other:?} ({} bytes, {:?})",
                replay.answer.len(),
                replay.end
            ),
        }
    }
}

/// Asserts every captured header is still inside its freshness window, so
/// that only the restart defence can have refused it.
fn assert_inside_window(what: &str, captured: &[Captured]) {
    let now = now_ms();
    for c in captured {
        let age = Duration::from_millis(now.saturating_sub(c.request.timestamp_ms));
        assert!(
            age + Duration::from_secs(3) < WINDOW,
            "{what}: a header {age:?} old was replayed; the test must replay inside the \
             {WINDOW:?} window (a slow restart?)"
        );
    }
}

/// The LAN host's next connection after a restart, retried until it works
/// or [`RECOVERY`] has passed since `restarted`; returns how long that took.
fn lan_recovers(srv: &NsServer, restarted: Instant, what: &str) -> Duration {
    let payload = format!("after the {what}").into_bytes();
    let mut attempts = Vec::new();
    loop {
        let result = lan_request(payload.clone());
        // The server reports a connection once it has closed it, which is
        // when the LAN host's request returns.
        let ok = result.is_ok() && {
            let served = srv.next(Duration::from_secs(2));
            served.sha256 == Sha256::of(&payload) && served.peer.ip() == CONCENTRATOR
        };
        attempts.push(result.map_err(|e| e.to_string()));
        let took = restarted.elapsed();
        if ok {
            return took;
        }
        assert!(
            took < RECOVERY,
            "after the {what}, the LAN host's connections failed for {took:?}: {attempts:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Captures three requests, restarts `daemon` (`concentrator` or
/// `client`), replays them from mpb-wan inside the window: the server sees
/// none of them, and the LAN host's next connection goes through within
/// [`RECOVERY`].
fn replays_open_nothing_after_restarting(srv: &NsServer, daemon: &str) {
    let captured = capture_requests(srv, &format!("before the {daemon} restart"), 3);
    // A download running through the concentrator as it restarts.
    let running = (daemon == "concentrator").then(running_download);
    let started = Instant::now();
    lab_ok(&["restart", daemon]);
    let restarted = Instant::now();
    if let Some((ended, progress)) = running {
        check_cut_download(ended, progress, started, restarted);
    }
    eprintln!(
        "{daemon} restarted in {:.2} s",
        (restarted - started).as_secs_f64()
    );
    let what = format!("{daemon} restart");
    assert_inside_window(&what, &captured);
    let accepted = srv.accepted();
    let replays = replay_from_wan(&captured);
    eprintln!("replays after the {what}: {replays:?}");
    assert_refused(&format!("after the {what}"), &replays, srv, accepted);
    let took = lan_recovers(srv, restarted, &what);
    eprintln!(
        "the LAN host's next connection went through {:.0} ms after the {what}",
        took.as_secs_f64() * 1e3
    );
}

/// Pattern seed and port of the download cut by the concentrator's
/// restart.
const CUT_SEED: u64 = 0xc07;
const CUT_SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10)), 5211);

/// Starts a long download through the tunnel to the LAN host and waits
/// until it runs (1 MiB in); returns its end and its progress.
fn running_download() -> (
    std::sync::mpsc::Receiver<Cut>,
    std::sync::mpsc::Receiver<u64>,
) {
    let srv = NsServer::start(
        SRV,
        CUT_SERVER,
        Behavior::Source {
            request: 4,
            len: 1 << 32,
            seed: CUT_SEED,
        },
    );
    start_cut_download(CUT_SERVER, CUT_SEED, srv)
}

/// A download running through the concentrator as it restarted ends on
/// the LAN host with a reset soon after, every byte before it intact: a
/// clean end of stream would pass a cut download off as complete, and a
/// hang would keep the application waiting for ever.
fn check_cut_download(
    ended: std::sync::mpsc::Receiver<Cut>,
    progress: std::sync::mpsc::Receiver<u64>,
    started: Instant,
    restarted: Instant,
) {
    let (len, how, at) = ended
        .recv_timeout(Duration::from_secs(30))
        .expect("the download running through the concentrator as it restarted never ended");
    drop(progress);
    let after = at.saturating_duration_since(restarted);
    // The old concentrator gives open connections 5 s (SHUTDOWN_GRACE) to
    // finish, then resets them.
    eprintln!(
        "download cut by the concentrator restart: {} MiB intact, then {how:?}, {:.0} ms after \
         the restart began",
        len >> 20,
        at.saturating_duration_since(started).as_secs_f64() * 1e3
    );
    match &how {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!(
            "a download cut by the concentrator's restart must end with a reset on the LAN \
             host, after {len} intact bytes it ended with {other:?}"
        ),
    }
    assert!(
        after < RECOVERY,
        "the LAN host learned of the cut {after:?} after the restart; within {RECOVERY:?} expected"
    );
}

/// Headers captured before a concentrator restart, and before a client
/// restart, open nothing afterwards; the LAN host carries on within 2 s
/// each time, nobody acting.
#[test]
fn headers_captured_before_a_restart_open_nothing_after_it() {
    let lab = Lab::up_and_start(&[], &[]);
    let srv = NsServer::start(SRV, SERVER, Behavior::Sink);

    // The concentrator restarts; then the client (the concentrator keeps
    // its run and its guard).
    for daemon in ["concentrator", "client"] {
        replays_open_nothing_after_restarting(&srv, daemon);
    }
    drop(lab);
}
