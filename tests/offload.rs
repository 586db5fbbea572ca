//! The client's TUN offloads end to end in the lab (LAB.md), on plain veth
//! lines (profile none), where the kernel hands the TUN the largest
//! super-packets: with offloads on (the default) and off (`[tun] offload =
//! false`), large transfers both ways over IPv4 and IPv6 arrive intact,
//! requests and answers of sizes around the segment size and 64 KiB do too,
//! datagrams of several sizes cross the datagram tunnel, and no namespace's
//! kernel counts a bad TCP or UDP checksum.
//!
//! Needs root; run through scripts/test.sh (or `cargo test --release --test
//! offload -- --nocapture` as root). One lab at a time.

mod harness;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use harness::udp::{echo_once, Echo};
use harness::{
    download_hashed, netstat, ns_ok, on_fresh_daemons, root, run_in, short_request, upload_pattern,
    within, Behavior, Lab, NsServer, Pattern,
};

const SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
const SERVER6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10));
const LAN: &str = "mpb-lan";
const SRV: &str = "mpb-srv";
/// Every namespace a packet of these transfers is received in.
const NAMESPACES: [&str; 4] = ["mpb-lan", "mpb-cli", "mpb-conc", "mpb-srv"];
const MIB: u64 = 1 << 20;
/// Each way and family: large enough for thousands of super-packets.
const LARGE: u64 = 256 * MIB;

fn at(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

#[test]
fn large_transfers_are_intact_with_tun_offloads_on_and_off_and_no_checksum_fails() {
    let lab = Lab::up(&["--dsl", "none", "--lte", "none"]);
    on_fresh_daemons(&lab, &[], "offloads on", || transfers(true));
    let plain = PlainConfig::write();
    on_fresh_daemons(
        &lab,
        &["--client-config", &plain.path()],
        "offloads off",
        || transfers(false),
    );
}

/// The lab's client config with `offload = false` in `[tun]`, removed when
/// dropped.
struct PlainConfig(PathBuf);

impl PlainConfig {
    fn write() -> Self {
        let lab = harness::root().join("deploy/lab/client.toml");
        let text = std::fs::read_to_string(&lab).expect("read the lab's client config");
        assert!(
            text.contains("\n[tun]\n"),
            "{} has no [tun] table",
            lab.display()
        );
        let text = text.replacen("\n[tun]\n", "\n[tun]\noffload = false\n", 1);
        let path =
            std::env::temp_dir().join(format!("mpbond-offload-off-{}.toml", std::process::id()));
        std::fs::write(&path, text).expect("write the config without offloads");
        Self(path)
    }

    fn path(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

impl Drop for PlainConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn transfers(offload: bool) {
    let features = ns_ok("mpb-cli", &["ethtool", "-k", "mpb0"]);
    let feature = |name: &str| {
        features
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.trim_start_matches(':').trim().starts_with("on"))
            .unwrap_or_else(|| panic!("ethtool -k mpb0 shows no {name}:\n{features}"))
    };
    assert_eq!(
        feature("tcp-segmentation-offload"),
        offload,
        "TCP segmentation on the client's TUN:\n{features}"
    );
    // UDP segmentation comes with the other offloads (Linux 6.2 on): a
    // sender's UDP super-packet reaches the TUN whole and is cut up by
    // the client. The concentrator's TUN asks for it whatever the
    // client's config says.
    assert_eq!(
        feature("tx-udp-segmentation"),
        offload,
        "UDP segmentation on the client's TUN:\n{features}"
    );
    let conc = ns_ok("mpb-conc", &["ethtool", "-k", "mpbc0"]);
    assert!(
        conc.lines()
            .any(|l| l.trim().starts_with("tx-udp-segmentation: on")),
        "UDP segmentation on the concentrator's TUN:\n{conc}"
    );
    for (i, server) in [SERVER, SERVER6].into_iter().enumerate() {
        let port = 5400 + 10 * i as u16;
        download(at(server, port), LARGE);
        upload(at(server, port + 1), LARGE);
        edge_sizes(server, port + 2);
    }
    datagrams();
    gso_bursts();
    let errors = checksum_errors();
    eprintln!("offload {offload}: checksum errors {errors:?}");
    assert!(
        errors.iter().all(|(_, _, n)| *n == 0),
        "offload {offload}: the kernel counted bad checksums: {errors:?}"
    );
}

fn download(server: SocketAddr, len: u64) {
    let seed = 0x0ff1;
    let srv = NsServer::start(
        SRV,
        server,
        Behavior::Source {
            request: 4,
            len,
            seed,
        },
    );
    let (got, took) = download_hashed(LAN, server, Duration::from_secs(120), "download");
    eprintln!(
        "download from {server}: {} MiB in {:.1} s ({:.2} Gbit/s)",
        len / MIB,
        took.as_secs_f64(),
        len as f64 * 8.0 / took.as_secs_f64() / 1e9
    );
    assert_eq!(
        got,
        (len, Pattern::sha256(seed, len)),
        "download from {server} arrived corrupted or incomplete"
    );
    let _ = srv.next(Duration::from_secs(10));
}

fn upload(server: SocketAddr, len: u64) {
    let seed = 0x0ff2;
    let srv = NsServer::start(SRV, server, Behavior::Sink);
    let (sent, took) = upload_pattern(LAN, server, seed, len, Duration::from_secs(120), "upload");
    let served = srv.next(Duration::from_secs(10));
    eprintln!(
        "upload to {server}: {} MiB in {:.1} s ({:.2} Gbit/s)",
        len / MIB,
        took.as_secs_f64(),
        len as f64 * 8.0 / took.as_secs_f64() / 1e9
    );
    assert_eq!(
        (served.received, served.sha256),
        (len, sent),
        "upload to {server} arrived corrupted or incomplete ({:?})",
        served.error
    );
}

/// Requests and answers of sizes around one segment (MPTCP's 1420, TCP's
/// 1448 payload bytes per 1500-byte packet), two, and 64 KiB (the largest
/// super-packet): each on a new connection, each checked.
fn edge_sizes(server: IpAddr, port: u16) {
    const SIZES: [usize; 12] = [
        8, 1419, 1420, 1421, 1447, 1448, 1449, 2896, 2897, 65_535, 65_536, 65_537,
    ];
    for (i, &size) in SIZES.iter().enumerate() {
        let addr = at(server, port);
        let srv = NsServer::start(
            SRV,
            addr,
            Behavior::Reply {
                request: size,
                reply: size,
            },
        );
        let seed = 0xed9e_0000 + i as u64;
        let ok = run_in(
            LAN,
            "edge-size request",
            Duration::from_secs(20),
            move || short_request(addr, seed, size, size),
        );
        assert!(
            matches!(ok, Ok(true)),
            "a {size}-byte request and answer with {addr}: {ok:?}"
        );
        drop(srv);
    }
}

/// Datagrams of several sizes through the datagram tunnel, both families:
/// each echoed intact (the first waits for the tunnel's handshake).
fn datagrams() {
    let servers = [at(SERVER, 5490), at(SERVER6, 5490)];
    let _echo = Echo::start(SRV, &servers);
    for server in servers {
        let got = run_in(LAN, "datagrams", Duration::from_secs(30), move || {
            let socket = UdpSocket::bind(if server.is_ipv6() {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            })
            .expect("bind");
            let mut failed = Vec::new();
            for (i, len) in [1usize, 100, 1200, 1400].into_iter().enumerate() {
                let payload = Pattern::bytes(0xda7a + i as u64, len);
                let answered = within(Duration::from_secs(10), || {
                    echo_once(&socket, server, &payload, Duration::from_millis(300)).is_some()
                });
                if answered.is_none() {
                    failed.push(len);
                }
            }
            failed
        });
        assert!(
            got.is_empty(),
            "datagrams of {got:?} bytes to {server} got no intact echo through the tunnel"
        );
    }
}

/// UDP bursts sent as one super-packet each (`UDP_SEGMENT`, as QUIC stacks
/// send) both ways, IPv4 and IPv6: every datagram arrives intact, as the
/// sender cut it (`scripts/lib/gso.py`; the last of each upload burst is
/// shorter). With the TUNs' UDP segmentation on, the client and the
/// concentrator read each burst whole and cut it themselves.
fn gso_bursts() {
    let script = root().join("scripts/lib/gso.py");
    let script = script.to_str().expect("a UTF-8 path");
    for (server, port) in [(SERVER, 5495u16), (SERVER6, 5496)] {
        let ip = server.to_string();
        let _srv = Background::spawn(SRV, &["python3", script, "serve", &ip, &port.to_string()]);
        let filter = format!("sport = :{port}");
        within(Duration::from_secs(5), || {
            !ns_ok(SRV, &["ss", "-Hlun", &filter]).trim().is_empty()
        })
        .unwrap_or_else(|| panic!("gso.py serve does not listen on {ip} port {port}"));
        let out = ns_ok(
            LAN,
            &[
                "timeout",
                "120",
                "python3",
                script,
                "check",
                &ip,
                &port.to_string(),
                "20",
                "10",
                "1200",
            ],
        );
        eprintln!("UDP_SEGMENT bursts to {ip}: {}", out.trim());
        let got: serde_json::Value = serde_json::from_str(out.trim()).expect("gso.py prints JSON");
        assert_eq!(got["bad"], 0, "{ip}: datagrams damaged or cut wrong: {got}");
        assert_eq!(got["acked"], got["sent"], "{ip}: upload bursts: {got}");
        assert_eq!(
            got["received"], got["asked"],
            "{ip}: download bursts: {got}"
        );
        assert_eq!(got["sent"], 200, "{got}");
    }
}

/// A program in a namespace, killed when dropped.
struct Background(std::process::Child);

impl Background {
    fn spawn(ns: &str, cmd: &[&str]) -> Self {
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", ns])
            .args(cmd)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("in {ns}: {}: {e}", cmd.join(" ")));
        Self(child)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `(namespace, counter, value)` of every bad-checksum counter.
fn checksum_errors() -> Vec<(&'static str, &'static str, u64)> {
    let mut out = Vec::new();
    for ns in NAMESPACES {
        for name in ["TcpInCsumErrors", "UdpInCsumErrors"] {
            out.push((ns, name, netstat(ns, name)));
        }
        let snmp6 = ns_ok(ns, &["cat", "/proc/net/snmp6"]);
        let udp6 = snmp6
            .lines()
            .find_map(|l| l.strip_prefix("Udp6InCsumErrors"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no Udp6InCsumErrors in {ns}'s /proc/net/snmp6"));
        out.push((ns, "Udp6InCsumErrors", udp6));
    }
    out
}
