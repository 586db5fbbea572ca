//! Packets for the tests of the `wire` modules, built with etherparse (an
//! independent implementation to check against), and a seeded generator.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use etherparse::{
    ip_number as ep_ip, IpHeaders, Ipv4Header, Ipv6Extensions, Ipv6Header, Ipv6RawExtHeader,
    Ipv6RoutingExtensions, NetHeaders, PacketBuilder, PacketHeaders, TcpHeader, TransportHeader,
};

use super::{checksum, ipv4, ipv6, tcp, TcpPacket};
/// A seeded xorshift64 generator: reproducible randomness without a
/// dependency.
pub(super) struct XorShift(pub(super) u64);

impl XorShift {
    pub(super) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(super) fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    pub(super) fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }

    pub(super) fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        match self.below(8) {
            0 => {}
            1 => out = [0xff; N],
            _ => self.fill(&mut out),
        }
        out
    }

    pub(super) fn port(&mut self) -> u16 {
        match self.below(8) {
            0 => 0,
            1 => u16::MAX,
            _ => self.next() as u16,
        }
    }

    pub(super) fn v4(&mut self) -> SocketAddr {
        SocketAddr::new(Ipv4Addr::from(self.bytes::<4>()).into(), self.port())
    }

    pub(super) fn v6(&mut self) -> SocketAddr {
        SocketAddr::new(Ipv6Addr::from(self.bytes::<16>()).into(), self.port())
    }
}

pub(super) fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

pub(super) const LAN: &str = "192.168.1.23:51000";
pub(super) const SERVER: &str = "93.184.216.34:443";
pub(super) const FAKE: &str = "10.255.0.7:40001";
pub(super) const TUN: &str = "10.0.0.1:7000";
pub(super) const LAN6: &str = "[2001:db8:1::23]:51000";
pub(super) const SERVER6: &str = "[2606:2800:220:1:248:1893:25c8:1946]:443";
pub(super) const FAKE6: &str = "[fd00:ff::7]:40001";
pub(super) const TUN6: &str = "[fd00::1]:7000";

/// An ACK|PSH segment header with 20 bytes of options (MSS, SACK
/// permitted, timestamps, NOP, window scale).
pub(super) fn tcp_template() -> TcpHeader {
    let mut tcp = TcpHeader::new(0, 0, 0x1234_5678, 64240);
    tcp.ack = true;
    tcp.psh = true;
    tcp.acknowledgment_number = 0x9abc_def0;
    tcp.set_options_raw(&[
        2, 4, 0x05, 0xb4, 4, 2, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8, 1, 3, 3, 7,
    ])
    .expect("tcp options");
    tcp
}

pub(super) fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr) -> Ipv4Header {
    let mut ip =
        Ipv4Header::new(0, 64, ep_ip::TCP, src.octets(), dst.octets()).expect("ipv4 header");
    ip.identification = 0x4321;
    ip.dont_fragment = true;
    ip
}

/// An IPv4 TCP packet with 4 bytes of IP options (NOP, NOP, NOP, EOL).
pub(super) fn ipv4_tcp(
    src: SocketAddr,
    dst: SocketAddr,
    mut tcp: TcpHeader,
    payload: &[u8],
) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("ipv4_tcp needs IPv4 addresses");
    };
    let mut ip = ipv4_header(s, d);
    ip.options = etherparse::Ipv4Options::try_from(&[1u8, 1, 1, 0][..]).expect("ip options");
    tcp.source_port = src.port();
    tcp.destination_port = dst.port();
    let mut out = Vec::new();
    PacketBuilder::ip(IpHeaders::Ipv4(ip, Default::default()))
        .tcp_header(tcp)
        .write(&mut out, payload)
        .expect("build ipv4");
    out
}

pub(super) fn ipv6_tcp(
    src: SocketAddr,
    dst: SocketAddr,
    exts: Ipv6Extensions,
    mut tcp: TcpHeader,
    payload: &[u8],
) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (src.ip(), dst.ip()) else {
        panic!("ipv6_tcp needs IPv6 addresses");
    };
    let ip = Ipv6Header {
        traffic_class: 0,
        flow_label: Default::default(),
        payload_length: 0,
        next_header: ep_ip::TCP,
        hop_limit: 64,
        source: s.octets(),
        destination: d.octets(),
    };
    tcp.source_port = src.port();
    tcp.destination_port = dst.port();
    let mut out = Vec::new();
    PacketBuilder::ip(IpHeaders::Ipv6(ip, exts))
        .tcp_header(tcp)
        .write(&mut out, payload)
        .expect("build ipv6");
    out
}

/// Hop-by-hop options (8 bytes) and destination options (16 bytes),
/// both PadN only.
pub(super) fn hop_by_hop_and_destination_options() -> Ipv6Extensions {
    let mut dest = [0; 14];
    dest[..2].copy_from_slice(&[1, 12]);
    Ipv6Extensions {
        hop_by_hop_options: Some(
            Ipv6RawExtHeader::new_raw(ep_ip::TCP, &[1, 4, 0, 0, 0, 0]).expect("hop-by-hop"),
        ),
        destination_options: Some(
            Ipv6RawExtHeader::new_raw(ep_ip::TCP, &dest).expect("destination options"),
        ),
        ..Default::default()
    }
}

pub(super) fn routing_header(segments_left: u8) -> Ipv6Extensions {
    let mut data = [0; 22];
    data[1] = segments_left;
    Ipv6Extensions {
        routing: Some(Ipv6RoutingExtensions {
            routing: Ipv6RawExtHeader::new_raw(ep_ip::TCP, &data).expect("routing"),
            final_destination_options: None,
        }),
        ..Default::default()
    }
}

/// What etherparse, independently, makes of a TCP packet.
#[derive(Debug)]
pub(super) struct Reference {
    pub(super) src: SocketAddr,
    pub(super) dst: SocketAddr,
    pub(super) tcp_checksum: u16,
    pub(super) full_tcp_checksum: u16,
    /// IPv4 only: the header checksum field and a full computation.
    pub(super) ip_checksum: Option<(u16, u16)>,
    pub(super) payload: Vec<u8>,
}

pub(super) fn reference(bytes: &[u8]) -> Reference {
    let headers = PacketHeaders::from_ip_slice(bytes).expect("etherparse parses the packet");
    let Some(TransportHeader::Tcp(tcp)) = headers.transport else {
        panic!("etherparse finds no TCP header");
    };
    let payload = headers.payload.slice();
    match headers.net {
        Some(NetHeaders::Ipv4(ip, _)) => Reference {
            src: SocketAddr::new(Ipv4Addr::from(ip.source).into(), tcp.source_port),
            dst: SocketAddr::new(Ipv4Addr::from(ip.destination).into(), tcp.destination_port),
            tcp_checksum: tcp.checksum,
            full_tcp_checksum: tcp.calc_checksum_ipv4(&ip, payload).expect("checksum"),
            ip_checksum: Some((ip.header_checksum, ip.calc_header_checksum())),
            payload: payload.to_vec(),
        },
        Some(NetHeaders::Ipv6(ip, _)) => Reference {
            src: SocketAddr::new(Ipv6Addr::from(ip.source).into(), tcp.source_port),
            dst: SocketAddr::new(Ipv6Addr::from(ip.destination).into(), tcp.destination_port),
            tcp_checksum: tcp.checksum,
            full_tcp_checksum: tcp.calc_checksum_ipv6(&ip, payload).expect("checksum"),
            ip_checksum: None,
            payload: payload.to_vec(),
        },
        other => panic!("etherparse finds no IP header: {other:?}"),
    }
}

/// Rewrites `bytes` and checks the result against etherparse and our
/// own full checksum computation.
pub(super) fn rewrite_and_check(bytes: &mut [u8], src: SocketAddr, dst: SocketAddr) {
    let payload_before = reference(bytes).payload;
    let mut packet = TcpPacket::new_checked(&mut *bytes).expect("valid packet");
    packet.rewrite(src, dst).expect("rewrite");
    assert_eq!((packet.src(), packet.dst()), (src, dst));
    assert!(packet.verify_checksums(), "checksums after {src} -> {dst}");
    let r = reference(bytes);
    assert_eq!((r.src, r.dst), (src, dst));
    assert_eq!(
        r.tcp_checksum, r.full_tcp_checksum,
        "incremental TCP checksum differs from a full one after {src} -> {dst}"
    );
    if let Some((field, full)) = r.ip_checksum {
        assert_eq!(field, full, "IPv4 header checksum after {src} -> {dst}");
    }
    assert_eq!(r.payload, payload_before);
}

/// Writes correct checksums into a packet that [`TcpPacket::new_checked`]
/// accepts.
pub(super) fn fill_checksums(buf: &mut [u8]) {
    let (ipv6, tcp_at, packet_len) = {
        let packet = TcpPacket::new_checked(&*buf).expect("parsable");
        (
            packet.is_ipv6(),
            packet.ip_header_len(),
            packet.packet_len(),
        )
    };
    let tcp_checksum = tcp_at + tcp::field::CHECKSUM;
    buf[tcp_checksum..tcp_checksum + 2].fill(0);
    let packet = &mut buf[..packet_len];
    let (src, dst) = if ipv6 {
        (ipv6::field::SRC..ipv6::field::DST, ipv6::field::DST..40)
    } else {
        packet[10..12].fill(0);
        let sum = checksum::complement(checksum::sum_words(&packet[..tcp_at]));
        packet[10..12].copy_from_slice(&sum.to_be_bytes());
        (ipv4::field::SRC..ipv4::field::DST, ipv4::field::DST..20)
    };
    let segment = &packet[tcp_at..];
    let pseudo = checksum::pseudo_header_sum(&packet[src], &packet[dst], 6, segment.len());
    let sum = checksum::complement(pseudo + checksum::sum_words(segment));
    packet[tcp_checksum..tcp_checksum + 2].copy_from_slice(&sum.to_be_bytes());
}

pub(super) fn addr_octets(s: &str) -> [u8; 16] {
    match addr(s).ip() {
        IpAddr::V6(ip) => ip.octets(),
        IpAddr::V4(_) => panic!("not IPv6"),
    }
}

pub(super) fn set_be16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

pub(super) fn udp_packet(ipv6: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if ipv6 {
        PacketBuilder::ipv6(addr_octets(LAN6), addr_octets(SERVER6), 64)
            .udp(5353, 53)
            .write(&mut out, b"query")
            .expect("udp6");
    } else {
        PacketBuilder::ipv4([192, 168, 1, 23], [9, 9, 9, 9], 64)
            .udp(5353, 53)
            .write(&mut out, b"query")
            .expect("udp4");
    }
    out
}

/// An IPv6 TCP packet behind an atomic fragment header.
pub(super) fn ipv6_fragment() -> Vec<u8> {
    let whole = ipv6_tcp(
        addr(LAN6),
        addr(SERVER6),
        Ipv6Extensions::default(),
        tcp_template(),
        b"payload",
    );
    let mut bytes = whole[..40].to_vec();
    bytes[6] = 44;
    let payload_len = whole.len() - 40 + 8;
    set_be16(&mut bytes, ipv6::field::PAYLOAD_LEN, payload_len as u16);
    bytes.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 7]);
    bytes.extend_from_slice(&whole[40..]);
    bytes
}

pub(super) const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub(super) const ROUTER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);

/// A UDP datagram of `payload` bytes from the client's tunnel address
/// (10.77.0.2; fd… over IPv6) to a server, over IPv4 with DF as given
/// (identification 0x1234) or over IPv6.
pub(crate) fn sized_udp(ipv6: bool, payload: usize, dont_fragment: bool) -> Vec<u8> {
    let data: Vec<u8> = (0..payload).map(|i| (i % 251) as u8).collect();
    let mut out = Vec::new();
    if ipv6 {
        PacketBuilder::ipv6([0xfd; 16], [0x20; 16], 64)
            .udp(5000, 7400)
            .write(&mut out, &data)
            .expect("udp6");
    } else {
        let mut header = Ipv4Header::new(
            0,
            64,
            etherparse::IpNumber::UDP,
            [10, 77, 0, 2],
            [198, 51, 100, 10],
        )
        .expect("header");
        header.dont_fragment = dont_fragment;
        header.identification = 0x1234;
        PacketBuilder::ip(IpHeaders::Ipv4(header, Default::default()))
            .udp(5000, 7400)
            .write(&mut out, &data)
            .expect("udp4");
    }
    out
}

/// Turns a packet's TCP checksum into what a TUN with offloads hands
/// over with `NEEDS_CSUM`: the pseudo-header sum, not complemented.
/// Returns where the kernel starts summing (the TCP header).
pub(crate) fn make_partial(bytes: &mut [u8]) -> usize {
    let (ipv6, tcp_at, len) = {
        let p = TcpPacket::new_checked(&*bytes).expect("valid");
        (p.is_ipv6(), p.ip_header_len(), p.packet_len())
    };
    let (src, dst) = if ipv6 {
        (8..24, 24..40)
    } else {
        (12..16, 16..20)
    };
    let pseudo = checksum::pseudo_header_sum(&bytes[src], &bytes[dst], 6, len - tcp_at);
    let at = tcp_at + tcp::field::CHECKSUM;
    bytes[at..at + 2].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
    tcp_at
}

/// What the kernel does with a partial TCP checksum when it takes the
/// packet back (for a super-packet, before segmenting): sums the TCP
/// header and payload into it and complements.
pub(crate) fn finish_partial(bytes: &mut [u8]) {
    let (tcp_at, len) = {
        let p = TcpPacket::new_checked(&*bytes).expect("valid");
        (p.ip_header_len(), p.packet_len())
    };
    let at = tcp_at + tcp::field::CHECKSUM;
    let sum = checksum::complement(checksum::sum_words(&bytes[tcp_at..len]));
    bytes[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}
