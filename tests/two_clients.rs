//! Two clients on one concentrator (LAB.md: `lab.sh up --second-client`
//! adds mpb-cli2, a laptop with one line): each one's datagrams go out and
//! come back, neither sees a packet of the other's (tcpdump on both TUNs)
//! or can reach the other's tunnel address, and a stranger flooding the
//! tunnel port with garbage and forged handshakes meanwhile gets no answer
//! and changes nothing for either.
//!
//! Needs root and tcpdump (scripts/deps.sh installs it); one lab at a time.

mod harness;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use harness::{in_ns, ping, Lab, Pattern};

const SRV: &str = "mpb-srv";
const ECHO: &str = "198.51.100.10:7430";
const CROSS_PORT: u16 = 7431;
const GAP: Duration = Duration::from_millis(20);
const COUNT: u64 = 150;

/// tcpdump on a TUN, writing one line per packet to a file; killed on drop.
struct Capture {
    child: Child,
    path: std::path::PathBuf,
}

impl Capture {
    fn start(ns: &str, dev: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "mpbond-two-clients-{}-{ns}.txt",
            std::process::id()
        ));
        let out = File::create(&path).expect("capture file");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "tcpdump", "-i", dev, "-n", "-l", "-U"])
            .stdout(Stdio::from(out))
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tcpdump (scripts/deps.sh installs it)");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        let capture = Self { child, path };
        rx.recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("tcpdump on {dev} in {ns} did not start listening"));
        capture
    }

    /// Stops the capture; its lines.
    fn finish(mut self) -> Vec<String> {
        // SIGINT lets tcpdump flush.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        std::fs::read_to_string(&self.path)
            .expect("read the capture")
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Lines of a tcpdump capture with a packet from one of `sources`.
fn from_any<'a>(lines: &'a [String], sources: &[&str]) -> Vec<&'a String> {
    lines
        .iter()
        .filter(|line| {
            sources.iter().any(|src| {
                [" IP ", " IP6 "].iter().any(|family| {
                    line.contains(&format!("{family}{src}."))
                        || line.contains(&format!("{family}{src} >"))
                })
            })
        })
        .collect()
}

/// A UDP echo in mpb-srv answering with the sender's address; stops when
/// `stop` is set.
fn echo(stop: Arc<AtomicBool>) -> thread::JoinHandle<BTreeSet<IpAddr>> {
    let (tx, rx) = mpsc::channel();
    let handle = in_ns(SRV, move || {
        let socket = UdpSocket::bind(ECHO).expect("bind the echo");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let _ = tx.send(());
        let mut seen = BTreeSet::new();
        let mut buf = [0; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                seen.insert(from.ip());
                let _ = socket.send_to(&buf[..n], from);
            }
        }
        seen
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("echo binds");
    handle
}

/// A UDP listener on [`CROSS_PORT`] in `ns`: how many datagrams reached it.
fn listener(ns: &str, stop: Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    let (tx, rx) = mpsc::channel();
    let handle = in_ns(ns, move || {
        let socket = UdpSocket::bind(("::", CROSS_PORT)).expect("bind the listener");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let _ = tx.send(());
        let mut got = 0;
        let mut buf = [0; 2048];
        while !stop.load(Ordering::Relaxed) {
            if socket.recv(&mut buf).is_ok() {
                got += 1;
            }
        }
        got
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("listener binds");
    handle
}

/// From `ns`: [`COUNT`] echoes [`GAP`] apart to the server, with datagrams
/// to the other client's tunnel addresses in between; how many echoes
/// came back.
fn stream(ns: &str, other: [&'static str; 2]) -> thread::JoinHandle<u64> {
    in_ns(ns, move || {
        let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
        let socket6 = UdpSocket::bind("[::]:0").expect("bind v6");
        socket
            .set_read_timeout(Some(Duration::from_millis(2)))
            .expect("timeout");
        let server: SocketAddr = ECHO.parse().expect("addr");
        let mut answered = BTreeSet::new();
        let mut buf = [0; 64];
        let start = Instant::now();
        for seq in 0..COUNT {
            let _ = socket.send_to(&seq.to_be_bytes(), server);
            if seq.is_multiple_of(5) {
                let v4: IpAddr = other[0].parse().expect("addr");
                let v6: IpAddr = other[1].parse().expect("addr");
                let _ = socket.send_to(b"cross", (v4, CROSS_PORT));
                let _ = socket6.send_to(b"cross", (v6, CROSS_PORT));
            }
            while Instant::now() < start + GAP * (seq as u32 + 1) {
                if let Ok(n) = socket.recv(&mut buf) {
                    if let Some(seq) = buf.get(..n).and_then(|b| b.try_into().ok()) {
                        answered.insert(u64::from_be_bytes(seq));
                    }
                }
            }
        }
        let drain = Instant::now() + Duration::from_millis(300);
        while Instant::now() < drain {
            if let Ok(n) = socket.recv(&mut buf) {
                if let Some(seq) = buf.get(..n).and_then(|b| b.try_into().ok()) {
                    answered.insert(u64::from_be_bytes(seq));
                }
            }
        }
        answered.len() as u64
    })
}

/// A stranger in mpb-wan: garbage and forged handshakes at the tunnel
/// port, bounded in count; how many answers it got.
fn stranger() -> thread::JoinHandle<(u64, u64)> {
    in_ns("mpb-wan", || {
        let socket = UdpSocket::bind("10.77.9.1:0").expect("bind");
        socket.set_nonblocking(true).expect("nonblocking");
        let port: SocketAddr = "10.77.9.2:7300".parse().expect("addr");
        let mut sent = 0;
        let mut answers = 0;
        let mut buf = [0; 2048];
        let until = Instant::now() + GAP * COUNT as u32;
        let mut i = 0u64;
        // At most 6,000 datagrams, about 2,000 a second: a handshake flood
        // well past the load threshold (200/s).
        while Instant::now() < until && sent < 6_000 {
            let (kind, len) = [(1u8, 149), (1, 149), (4, 64), (2, 93), (0, 40)][(i % 5) as usize];
            let mut message = Pattern::bytes(i, len);
            message[0] = kind;
            message[1..4].fill(0);
            if socket.send_to(&message, port).is_ok() {
                sent += 1;
            }
            while socket.recv(&mut buf).is_ok() {
                answers += 1;
            }
            i += 1;
            if i.is_multiple_of(20) {
                thread::sleep(Duration::from_millis(10));
            }
        }
        thread::sleep(Duration::from_millis(300));
        while socket.recv(&mut buf).is_ok() {
            answers += 1;
        }
        (sent, answers)
    })
}

#[test]
fn two_clients_see_nothing_of_each_other_and_a_stranger_changes_nothing() {
    let lab = Lab::up_and_start(&["--second-client"], &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let echo = echo(Arc::clone(&stop));
    let listen_lan = listener("mpb-lan", Arc::clone(&stop));
    let listen_cli2 = listener("mpb-cli2", Arc::clone(&stop));
    let capture1 = Capture::start("mpb-cli", "mpb0");
    let capture2 = Capture::start("mpb-cli2", "mpb0");

    let stranger = stranger();
    let one = stream("mpb-lan", ["10.77.0.3", "fd77::3"]);
    let two = stream("mpb-cli2", ["10.77.0.2", "fd77::2"]);
    let pings = ping("mpb-lan", "10.77.0.3", 3, Duration::from_millis(100));
    let pings2 = ping("mpb-cli2", "10.77.0.2", 3, Duration::from_millis(100));
    let one = one.join().expect("client one's stream");
    let two = two.join().expect("client two's stream");
    let (sent, answers) = stranger.join().expect("the stranger");
    stop.store(true, Ordering::Relaxed);
    let seen = echo.join().expect("the echo");
    let crossed_to_lan = listen_lan.join().expect("listener");
    let crossed_to_cli2 = listen_cli2.join().expect("listener");
    let lines1 = capture1.finish();
    let lines2 = capture2.finish();
    println!(
        "echoes answered: client one {one}/{COUNT}, client two {two}/{COUNT}; the server saw \
         {seen:?}; the stranger sent {sent}, got {answers} answers; datagrams that crossed: \
         {crossed_to_lan} to mpb-lan, {crossed_to_cli2} to mpb-cli2; captured {} and {} packets",
        lines1.len(),
        lines2.len()
    );

    assert!(
        one >= COUNT - 1 && two >= COUNT - 1,
        "both clients' datagrams come back while the stranger floods: {one} and {two} of {COUNT}"
    );
    let concentrator: IpAddr = "10.77.9.2".parse().expect("addr");
    assert_eq!(
        seen,
        BTreeSet::from([concentrator]),
        "the server sees both clients as the concentrator"
    );
    assert!(sent >= 1_000, "the stranger's flood ran: {sent} datagrams");
    assert_eq!(answers, 0, "the stranger gets no answer");
    assert_eq!(
        (crossed_to_lan, crossed_to_cli2),
        (0, 0),
        "no datagram reaches the other client's host"
    );
    assert_eq!(
        pings.received, 0,
        "client one cannot ping client two: {pings:?}"
    );
    assert_eq!(
        pings2.received, 0,
        "client two cannot ping client one: {pings2:?}"
    );
    // Each capture saw its own client's traffic (so it worked) and nothing
    // from the other client.
    for (name, lines, own, other) in [
        ("mpb-cli", &lines1, "10.77.0.2", ["10.77.0.3", "fd77::3"]),
        ("mpb-cli2", &lines2, "10.77.0.3", ["10.77.0.2", "fd77::2"]),
    ] {
        assert!(
            from_any(lines, &[own]).len() as u64 >= COUNT,
            "tcpdump on {name}'s TUN saw its own datagrams: {} lines",
            lines.len()
        );
        let leaked = from_any(lines, &other);
        assert!(
            leaked.is_empty(),
            "{name}'s TUN got packets from the other client: {leaked:?}"
        );
    }
    drop(lab);
}
