//! Faults (issue 10, item 4), in one lab (LAB.md): what the LAN host and
//! the server see when the concentrator's destination refuses, resets or
//! never answers; when every uplink is down for 10 s; and when the
//! concentrator or the client restarts mid-transfer, by SIGTERM and by
//! `kill -9`.
//!
//! Every stream is checked byte by byte: an echo stream (the LAN host
//! sends [`Pattern`] bytes at a steady pace, the server in mpb-srv sends
//! each back) crosses the tunnel both ways for as long as a fault lasts.
//! A stream a fault cuts must end as a reset at both ends, never as a clean
//! end of stream: for a protocol without a length, a clean end after a
//! truncated stream is silent corruption. A stream a fault does not concern
//! carries on intact.
//!
//! Needs root; one lab at a time.

mod harness;

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use harness::state::{assert_clean, client_state, describe, ClientState};
use harness::udp::{echo_once, Echo};
use harness::{
    connect, lab_ok, ns_ok, ns_run, read_pattern, run_in, short_request, Behavior, Lab, NsServer,
    Pattern, Served, Sha256,
};

const SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
/// An extra address on the server's subnet that mpb-wan blackholes: SYNs
/// to it vanish without an answer.
const BLACKHOLED: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 20));
/// An address on the server's subnet that nobody owns: mpb-wan's ARP gets
/// no answer and it reports the host unreachable.
const UNOWNED: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 21));
/// What a server sees for a flow that came through the tunnel.
const CONCENTRATOR: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 9, 2));
const LAN: &str = "mpb-lan";
const SRV: &str = "mpb-srv";
const CONC: &str = "mpb-conc";
const WAN: &str = "mpb-wan";
const KIB: u64 = 1 << 10;
/// The lab concentrator's connect_timeout (the default).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The lab client's warm_connections (the default).
const WARM: usize = 2;
/// How soon after a restart the LAN host's new connections must work.
const RECOVERY: Duration = Duration::from_secs(2);
/// Each echo stream sends a chunk this big...
const CHUNK: usize = 16 << 10;
/// ... this often: 640 KiB/s each way, a fraction of either line, so that
/// the relays' queues are mostly empty, as for most real connections.
const PACE: Duration = Duration::from_millis(25);
/// Longest any echo stream runs, whatever happens.
const STREAM_LIFETIME: Duration = Duration::from_secs(90);
/// How long a cut stream may take to end at the LAN host: longer means it
/// hangs.
const CUT_LIMIT: Duration = Duration::from_secs(15);

fn at(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

// ---------------------------------------------------------------- echo streams

/// A connection from the LAN host to an echo server in mpb-srv through the
/// tunnel: a writer sends [`Pattern`] `seed` in [`CHUNK`]s every [`PACE`],
/// a reader checks every byte that comes back.
struct EchoStream {
    what: String,
    srv: NsServer,
    stop: Arc<AtomicBool>,
    echoed: Arc<AtomicU64>,
    writer: thread::JoinHandle<(u64, Sha256, io::Result<()>)>,
    reader: mpsc::Receiver<(u64, io::Result<()>, Instant)>,
    started: Instant,
}

/// How an echo stream ended.
#[derive(Debug)]
struct Ended {
    /// Bytes the LAN host wrote and their hash.
    sent: u64,
    sent_sha256: Sha256,
    /// How writing ended.
    write: io::Result<()>,
    /// Bytes that came back (all of them right) and how reading ended.
    echoed: u64,
    read: io::Result<()>,
    /// The server's report.
    served: Served,
    /// When the LAN host's read ended, since the stream started.
    after: Duration,
    /// When the LAN host's read ended.
    at: Instant,
}

impl EchoStream {
    fn start(what: &str, port: u16, seed: u64) -> Self {
        let srv = NsServer::start(SRV, at(SERVER, port), Behavior::Echo);
        let addr = srv.addr();
        let stream = run_in(
            LAN,
            "echo stream connect",
            Duration::from_secs(10),
            move || connect(addr, Duration::from_secs(5)),
        )
        .unwrap_or_else(|e| panic!("{what}: connecting through the tunnel failed: {e}"));
        stream
            .set_read_timeout(Some(CUT_LIMIT + Duration::from_secs(5)))
            .expect("read timeout");
        let mut read_half = stream.try_clone().expect("clone the stream");
        let stop = Arc::new(AtomicBool::new(false));
        let echoed = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let writer = {
            let stop = Arc::clone(&stop);
            let mut stream = stream;
            thread::spawn(move || {
                let mut pattern = Pattern::new(seed);
                let mut hash = harness::Hasher::new();
                let mut buf = vec![0; CHUNK];
                let mut next = Instant::now();
                let end = loop {
                    if stop.load(Ordering::SeqCst) || started.elapsed() > STREAM_LIFETIME {
                        break stream.shutdown(Shutdown::Write);
                    }
                    pattern.fill(&mut buf);
                    if let Err(e) = stream.write_all(&buf) {
                        break Err(e);
                    }
                    hash.update(&buf);
                    next += PACE;
                    thread::sleep(next.saturating_duration_since(Instant::now()));
                };
                (hash.len(), hash.finish(), end)
            })
        };
        let (tx, reader) = mpsc::channel();
        {
            let echoed = Arc::clone(&echoed);
            thread::spawn(move || {
                let ended =
                    read_pattern(&mut read_half, seed, |n| echoed.store(n, Ordering::SeqCst));
                let _ = tx.send((ended.0, ended.1, Instant::now()));
            });
        }
        Self {
            what: what.to_owned(),
            srv,
            stop,
            echoed,
            writer,
            reader,
            started,
        }
    }

    /// Waits until `bytes` have come back: the stream runs.
    fn wait_echoed(&self, bytes: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.echoed.load(Ordering::SeqCst) < bytes {
            assert!(
                Instant::now() < deadline,
                "{}: only {} bytes came back within 10 s",
                self.what,
                self.echoed.load(Ordering::SeqCst)
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops writing (a half-close after the last chunk) and waits, at most
    /// `limit`, for the stream to end.
    fn finish(self, limit: Duration) -> Ended {
        self.stop.store(true, Ordering::SeqCst);
        self.wait_end(limit)
    }

    /// Waits, at most `limit`, for the stream to end by itself (a fault cut
    /// it); then stops the writer.
    fn wait_end(self, limit: Duration) -> Ended {
        let read = self.reader.recv_timeout(limit);
        self.stop.store(true, Ordering::SeqCst);
        let (echoed, read, at) = read.unwrap_or_else(|_| {
            panic!(
                "{}: the LAN host's stream neither ended nor failed within {limit:?} \
                 ({} bytes came back): it hangs",
                self.what,
                self.echoed.load(Ordering::SeqCst)
            )
        });
        let after = at - self.started;
        let (sent, sent_sha256, write) = self.writer.join().expect("the writer thread");
        let served = self.srv.next(Duration::from_secs(10));
        Ended {
            sent,
            sent_sha256,
            write,
            echoed,
            read,
            served,
            after,
            at,
        }
    }
}

/// A stream no fault concerned: every byte went there and back, once,
/// through the tunnel, and both ends closed cleanly.
fn assert_intact(what: &str, ended: &Ended) {
    eprintln!(
        "{what}: {} KiB sent, {} KiB echoed, intact: {}",
        ended.sent / KIB,
        ended.echoed / KIB,
        ended.read.is_ok() && ended.echoed == ended.sent
    );
    assert!(
        ended.write.is_ok() && ended.read.is_ok(),
        "{what}: the stream failed: write {:?}, read {:?} (server: {:?})",
        ended.write,
        ended.read,
        ended.served
    );
    assert_eq!(
        ended.echoed, ended.sent,
        "{what}: {} bytes sent, {} came back",
        ended.sent, ended.echoed
    );
    assert_eq!(
        (
            ended.served.received,
            ended.served.sha256,
            &ended.served.error
        ),
        (ended.sent, ended.sent_sha256, &None),
        "{what}: the server did not get exactly what the LAN host sent"
    );
    assert_eq!(
        ended.served.peer.ip(),
        CONCENTRATOR,
        "{what}: bypassed the tunnel"
    );
}

/// A stream a fault cut: the LAN host's read ended with a reset after
/// bytes that were all right, and the server saw an error, not a clean end
/// of stream.
fn assert_reset(what: &str, ended: &Ended) {
    eprintln!(
        "{what}: cut after {:.1} s: {} KiB sent, {} KiB echoed (all right); LAN host read: \
         {:?}, write: {:?}; server: {} KiB in, {:?}",
        ended.after.as_secs_f64(),
        ended.sent / KIB,
        ended.echoed / KIB,
        ended.read,
        ended.write,
        ended.served.received / KIB,
        ended.served.error
    );
    match &ended.read {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Ok(()) => panic!(
            "{what}: the LAN host saw a clean end of stream after {} of {} bytes: a truncated \
             stream that looks complete",
            ended.echoed, ended.sent
        ),
        Err(e) => panic!("{what}: the LAN host's read must fail with a reset, got {e:?}"),
    }
    assert!(
        ended.served.error.is_some(),
        "{what}: the server saw a clean end of stream after {} of the {} bytes the LAN host \
         wrote: an upload cut short that looks complete",
        ended.served.received,
        ended.sent
    );
    assert!(
        ended.echoed <= ended.served.sent && ended.served.received <= ended.sent,
        "{what}: more bytes arrived than were sent: {ended:?}"
    );
}

// ---------------------------------------------------------------- checks

/// Retries `attempt` on a thread in mpb-lan, 50 ms apart, until it
/// returns `Ok(true)`; returns how long after `since` that was. Fails with
/// every attempt's outcome once `limit` has passed since `since`.
fn first_success(
    what: &str,
    since: Instant,
    limit: Duration,
    attempt: impl Fn() -> io::Result<bool> + Send + 'static,
) -> Duration {
    let outcome = run_in(LAN, what, limit + Duration::from_secs(10), move || {
        let mut attempts = Vec::new();
        loop {
            let result = attempt();
            if matches!(result, Ok(true)) {
                return Ok(since.elapsed());
            }
            attempts.push(format!(
                "{:.2} s: {result:?}",
                since.elapsed().as_secs_f64()
            ));
            if since.elapsed() >= limit {
                return Err(attempts);
            }
            thread::sleep(Duration::from_millis(50));
        }
    });
    let took = outcome.unwrap_or_else(|attempts| {
        panic!(
            "{what}: nothing worked within {limit:?}; attempts:\n{}",
            attempts.join("\n")
        )
    });
    eprintln!("{what}: worked {:.0} ms after", took.as_secs_f64() * 1e3);
    took
}

/// A new TCP connection from the LAN host: a short request to `reply`
/// (a [`Behavior::Reply`] server) answered intact.
fn new_connection(reply: SocketAddr) -> impl Fn() -> io::Result<bool> + Send + 'static {
    let seed = AtomicU64::new(9000);
    move || short_request(reply, seed.fetch_add(1, Ordering::SeqCst), 100, 1024)
}

/// A UDP echo from the LAN host through the datagram tunnel: answered, and
/// the server saw the concentrator's address.
fn datagram(echo: SocketAddr) -> impl Fn() -> io::Result<bool> + Send + 'static {
    move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        let seen = echo_once(&socket, echo, b"faults", Duration::from_millis(300));
        Ok(seen == Some(CONCENTRATOR))
    }
}

/// Established MPTCP connections to the concentrator's port in mpb-conc.
fn tunnels_at_concentrator() -> usize {
    let out = ns_run(
        CONC,
        &["ss", "-MnH", "state", "established", "sport", "=", ":7300"],
    );
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Polls until mpb-cli's state is `expected` again (within 5 s).
fn assert_state_back(expected: &ClientState, when: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let expected = expected.installed();
    loop {
        let now = client_state().installed();
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{when}: mpb-cli's set-up is not what the running client had before:\n{}",
            describe(&expected, &now)
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A blackhole route for [`BLACKHOLED`] in mpb-wan; removed on drop.
struct Blackhole;

impl Blackhole {
    fn add() -> Self {
        ns_ok(
            WAN,
            &[
                "ip",
                "route",
                "add",
                "blackhole",
                &format!("{BLACKHOLED}/32"),
            ],
        );
        Self
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        let _ = ns_run(
            WAN,
            &[
                "ip",
                "route",
                "del",
                "blackhole",
                &format!("{BLACKHOLED}/32"),
            ],
        );
    }
}

/// From the LAN host: connects to `dst` (in fast mode the client answers
/// at once), writes a byte and reads: how that ended and when.
fn try_destination(dst: SocketAddr) -> thread::JoinHandle<(io::Result<usize>, Duration)> {
    thread::spawn(move || {
        run_in(
            LAN,
            "destination fault",
            Duration::from_secs(30),
            move || {
                let started = Instant::now();
                let result = (|| {
                    let mut s = connect(dst, Duration::from_secs(10))?;
                    s.set_read_timeout(Some(CONNECT_TIMEOUT + Duration::from_secs(10)))?;
                    s.write_all(b"x")?;
                    let mut buf = [0; 16];
                    s.read(&mut buf)
                })();
                (result, started.elapsed())
            },
        )
    })
}

// ---------------------------------------------------------------- phases

/// The destination refuses, resets mid-stream and never answers, while an
/// unrelated echo stream runs: each fault reaches the LAN host as a reset
/// within the concentrator's connect timeout, and the stream is intact.
fn destination_faults() {
    let bystander = EchoStream::start("bystander of destination faults", 6001, 0xb1);
    bystander.wait_echoed(64 * KIB);
    let _blackhole = Blackhole::add();
    let silent = try_destination(at(BLACKHOLED, 80));
    let unowned = try_destination(at(UNOWNED, 80));

    // A server that resets in the middle of a download: the LAN host gets
    // every byte sent before the reset, intact, then the reset.
    const LEN: u64 = 256 * KIB;
    let srv = NsServer::start(
        SRV,
        at(SERVER, 6002),
        Behavior::ResetMidStream {
            len: LEN,
            seed: 0x5e,
        },
    );
    let addr = srv.addr();
    let (got, end) = run_in(
        LAN,
        "reset mid-stream",
        Duration::from_secs(20),
        move || {
            let mut s = connect(addr, Duration::from_secs(5)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            s.write_all(b"get\n").expect("request");
            let mut got = vec![0; LEN as usize];
            if let Err(e) = s.read_exact(&mut got) {
                return (Vec::new(), Err(e));
            }
            s.write_all(b"k").expect("the acknowledgement");
            let mut more = [0; 16];
            (got, s.read(&mut more))
        },
    );
    eprintln!(
        "server reset mid-stream: {} KiB arrived, then {end:?}",
        got.len() as u64 / KIB
    );
    assert!(
        got == Pattern::bytes(0x5e, LEN as usize),
        "the bytes before the server's reset must arrive intact ({} bytes came)",
        got.len()
    );
    match end {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => {
            panic!("a server's reset mid-stream must reach the LAN host as a reset, got {other:?}")
        }
    }
    let served = srv.next(Duration::from_secs(5));
    assert_eq!(
        served.peer.ip(),
        CONCENTRATOR,
        "the reset flow bypassed the tunnel"
    );

    for (what, handle) in [
        ("a blackholed destination", silent),
        ("an address nobody owns", unowned),
    ] {
        let (result, took) = handle.join().expect("the destination thread");
        eprintln!("{what}: {result:?} after {:.2} s", took.as_secs_f64());
        assert!(
            matches!(&result, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{what}: the LAN host must get a reset, got {result:?}"
        );
        assert!(
            took < CONNECT_TIMEOUT + Duration::from_millis(1500),
            "{what}: the LAN host waited {took:?}, longer than the concentrator's connect \
             timeout ({CONNECT_TIMEOUT:?})"
        );
    }
    let ended = bystander.finish(Duration::from_secs(10));
    assert_intact("bystander of destination faults", &ended);
}

/// Both uplinks lose their carrier for 10 s and come back: new TCP
/// connections and datagrams work again within a few seconds of their
/// return, by themselves, and the client's set-up is as before.
fn every_uplink_down(lab: &Lab, running: &ClientState, reply: SocketAddr, udp: SocketAddr) {
    const OUTAGE: Duration = Duration::from_secs(10);
    const BACK_WITHIN: Duration = Duration::from_secs(5);
    let stream = EchoStream::start("echo stream across the outage", 6003, 0x0d);
    stream.wait_echoed(64 * KIB);
    lab.link(&["dsl", "down"]);
    lab.link(&["lte", "down"]);
    let down = Instant::now();
    thread::sleep(OUTAGE.saturating_sub(down.elapsed()));
    lab.link(&["dsl", "up"]);
    lab.link(&["lte", "up"]);
    let back = Instant::now();
    eprintln!("every uplink down for {:.1} s", (back - down).as_secs_f64());
    first_success(
        "new TCP connection after the outage",
        back,
        BACK_WITHIN,
        new_connection(reply),
    );
    first_success(
        "UDP echo after the outage",
        back,
        BACK_WITHIN,
        datagram(udp),
    );
    let ended = stream.finish(Duration::from_secs(20));
    assert_intact("echo stream across the outage", &ended);
    assert_state_back(running, "after every uplink was down for 10 s");
}

/// How a daemon is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// `lab.sh restart`: SIGTERM, then start again.
    Term,
    /// `kill -9`, then `lab.sh restart` starts it again.
    Kill,
}

/// `daemon` restarts under a running echo stream: the stream ends as a
/// reset at both ends; new connections work within [`RECOVERY`]; the
/// client's warm tunnels are made again; the client's set-up is as before.
fn restart(lab: &Lab, daemon: &str, how: How, port: u16, reply: SocketAddr, running: &ClientState) {
    let what = format!("{daemon} restart ({how:?})");
    let stream = EchoStream::start(
        &format!("echo stream under the {what}"),
        port,
        u64::from(port),
    );
    stream.wait_echoed(128 * KIB);
    let started = Instant::now();
    if how == How::Kill {
        lab.kill_9(daemon);
    }
    lab_ok(&["restart", daemon]);
    let back = Instant::now();
    eprintln!("{what}: took {:.2} s", (back - started).as_secs_f64());
    let ended = stream.wait_end(CUT_LIMIT);
    assert_reset(&format!("echo stream under the {what}"), &ended);
    let cut = ended.at.saturating_duration_since(started);
    eprintln!(
        "{what}: the LAN host saw the reset {:.2} s after the fault",
        cut.as_secs_f64()
    );
    if (daemon, how) == ("client", How::Term) {
        // A client that stops resets its flows itself, at once: a LAN host
        // that only receives would otherwise wait for ever.
        assert!(
            cut < Duration::from_secs(1),
            "{what}: the LAN host saw the reset {cut:?} after the SIGTERM; a client that \
             stops must reset its flows at once"
        );
    }
    first_success(
        &format!("new TCP connection after the {what}"),
        back,
        RECOVERY,
        new_connection(reply),
    );
    if daemon == "concentrator" {
        let deadline = Instant::now() + Duration::from_secs(3);
        while tunnels_at_concentrator() < WARM {
            assert!(
                Instant::now() < deadline,
                "{what}: the client's {WARM} warm tunnels were not made again within 3 s \
                 ({} established at the concentrator)",
                tunnels_at_concentrator()
            );
            thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "{what}: {} tunnels established at the concentrator {:.2} s after it was back",
            tunnels_at_concentrator(),
            back.elapsed().as_secs_f64()
        );
    }
    assert_state_back(running, &format!("after the {what}"));
}

/// Panics and their like in a daemon's log (the whole of it: restarts
/// append).
fn panics_in(lab: &Lab, daemon: &str) -> Vec<String> {
    lab.log_tail(daemon, usize::MAX)
        .lines()
        .filter(|l| l.contains("panic"))
        .map(str::to_owned)
        .collect()
}

/// One lab for all the faults, in order: the destination's, every uplink
/// down, then each daemon restarted both ways; no panic in either log, and
/// nothing left in mpb-cli after the stop.
#[test]
fn faults_end_connections_cleanly_and_everything_else_carries_on() {
    let lab = Lab::up(&[]);
    let baseline = client_state();
    lab.start(&[]);
    let running = client_state();
    let reply_srv = NsServer::start(
        SRV,
        at(SERVER, 6000),
        Behavior::Reply {
            request: 100,
            reply: 1024,
        },
    );
    let reply = reply_srv.addr();
    let udp = at(SERVER, 6400);
    let _echo = Echo::start(SRV, &[udp]);

    destination_faults();
    every_uplink_down(&lab, &running, reply, udp);
    let mut port = 6010;
    for daemon in ["concentrator", "client"] {
        for how in [How::Term, How::Kill] {
            restart(&lab, daemon, how, port, reply, &running);
            port += 1;
        }
    }
    for daemon in ["client", "concentrator"] {
        let panics = panics_in(&lab, daemon);
        assert!(
            panics.is_empty(),
            "the {daemon} logged panics:\n{}",
            panics.join("\n")
        );
    }
    drop(reply_srv);
    lab.stop();
    assert_clean(&baseline, "after the faults and lab.sh stop");
}
