//! The datagram tunnel's TUN writes against the real kernel: a flow's
//! consecutive UDP datagrams written as one super-packet
//! ([`mpbond::udp::TunWriter`], a TUN with `IFF_VNET_HDR`) reach a socket
//! as the datagrams that went in, in order, byte for byte, IPv4 and IPv6;
//! what must not join (a broken checksum, none at all, another flow) goes
//! as it is, so the kernel treats it as it would have. Runs in a network
//! namespace of its own (`mpbt-tunw-PID-N`).
//!
//! Needs root and never skips: without it, it fails and says so.

mod netns;

use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::os::fd::AsFd;
use std::time::Duration;

use etherparse::{IpNumber, Ipv4Header, PacketBuilder};
use mpbond::udp::TunWriter;
use netns::TestNs;

const TUN: &str = "mpbt0";

/// A UDP datagram of `payload` from `src` to `dst`; over IPv4 with DF
/// and identification `id`.
fn datagram(src: SocketAddr, dst: SocketAddr, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            let mut ip = Ipv4Header::new(0, 64, IpNumber::UDP, s.ip().octets(), d.ip().octets())
                .expect("header");
            ip.dont_fragment = true;
            ip.identification = id;
            PacketBuilder::ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
                .udp(s.port(), d.port())
                .write(&mut out, payload)
                .expect("udp4");
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            PacketBuilder::ipv6(s.ip().octets(), d.ip().octets(), 64)
                .udp(s.port(), d.port())
                .write(&mut out, payload)
                .expect("udp6");
        }
        _ => unreachable!("one family"),
    }
    out
}

fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|k| (i * 31 + k * 7) as u8).collect()
}

/// The TUN's received packet count (a super-packet counts once).
fn tun_rx_packets(ns: &TestNs) -> u64 {
    let out = ns.ip(&["-s", "link", "show", TUN]);
    let lines: Vec<&str> = out.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim_start().starts_with("RX:"))
        .expect("RX line");
    lines[at + 1]
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("RX packets")
}

/// Reads datagrams on `socket` until none comes for 300 ms.
fn drain(socket: &UdpSocket) -> Vec<(SocketAddr, Vec<u8>)> {
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0; 65_536];
    while let Ok((n, from)) = socket.recv_from(&mut buf) {
        got.push((from, buf[..n].to_vec()));
    }
    got
}

#[test]
fn super_packets_reach_the_socket_as_the_datagrams_that_went_in() {
    let ns = TestNs::new("tunw");
    ns.set_sysctl("net.ipv6.conf.default.accept_dad", "0");
    ns.run(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _entered = runtime.enter();
        let tun = tun_rs::DeviceBuilder::new()
            .name(TUN)
            .ipv4(
                "10.99.0.1".parse::<std::net::Ipv4Addr>().expect("addr"),
                24,
                None,
            )
            .ipv6("fd99::1".parse::<std::net::Ipv6Addr>().expect("addr"), 64)
            .offload(true)
            .build_async()
            .expect("a TUN with virtio-net headers");
        mpbond::sys::set_tun_offloads(tun.as_fd(), 0).expect("no offloads asked");
        let v4 = UdpSocket::bind("10.99.0.1:7000").expect("bind v4");
        // The address may take a moment to become usable.
        let v6 = (0..100)
            .find_map(|_| {
                let bound = UdpSocket::bind("[fd99::1]:7000").ok();
                if bound.is_none() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                bound
            })
            .expect("bind v6");
        let (from4, to4): (SocketAddr, SocketAddr) = (
            "10.99.0.2:5000".parse().expect("addr"),
            "10.99.0.1:7000".parse().expect("addr"),
        );
        let (from6, to6): (SocketAddr, SocketAddr) = (
            "[fd99::2]:5000".parse().expect("addr"),
            "[fd99::1]:7000".parse().expect("addr"),
        );
        let other4: SocketAddr = "10.99.0.3:5001".parse().expect("addr");

        // 20 full datagrams and a shorter last (one super-packet), one of
        // another flow, 10 over IPv6 (another), then one without a
        // checksum and one with a broken checksum (each alone).
        let mut sent4 = Vec::new();
        let mut sent6 = Vec::new();
        let mut packets = Vec::new();
        for i in 0..21 {
            let p = payload(i, if i == 20 { 300 } else { 1200 });
            packets.push(datagram(from4, to4, 100 + i as u16, &p));
            sent4.push((from4, p));
        }
        let p = payload(99, 1200);
        packets.push(datagram(other4, to4, 7, &p));
        sent4.push((other4, p));
        for i in 0..10 {
            let p = payload(200 + i, 1000);
            packets.push(datagram(from6, to6, 0, &p));
            sent6.push((from6, p));
        }
        let p = payload(300, 500);
        let mut no_checksum = datagram(from4, to4, 500, &p);
        no_checksum[26..28].copy_from_slice(&[0, 0]);
        packets.push(no_checksum);
        sent4.push((from4, p));
        let mut broken = datagram(from4, to4, 501, &payload(301, 500));
        broken[40] ^= 0xff;
        packets.push(broken);

        let mut buf = Vec::new();
        let mut ranges: Vec<Range<usize>> = Vec::new();
        for p in &packets {
            ranges.push(buf.len()..buf.len() + p.len());
            buf.extend_from_slice(p);
        }
        let before = tun_rx_packets(&ns);
        let writer = TunWriter::new(true);
        let (failed, error) = writer.write(&tun, &buf, &ranges);
        assert_eq!((failed, error.map(|e| e.to_string())), (0, None));
        let written = tun_rx_packets(&ns) - before;
        assert_eq!(
            written, 5,
            "one super-packet per flow's run (IPv4, IPv6) and the three others alone"
        );

        assert_eq!(
            drain(&v4),
            sent4,
            "IPv4: each datagram, in order; the broken one dropped"
        );
        assert_eq!(drain(&v6), sent6, "IPv6: each datagram, in order");
    });
}
