//! Sorting the packets the datagram tunnel carries into flows.
//!
//! Everything the client's TUN reads that is not TCP (UDP, QUIC, DNS,
//! ICMP, any other IP protocol; IPv4 and IPv6) rides the datagram tunnel,
//! and its scheduler ([`crate::datagram::schedule`]) keeps each flow on one
//! path so that the flow's packets are not reordered. [`flow_of`] gives a
//! packet's [`FlowKey`] and tells DNS and QUIC apart, which have policies
//! of their own.
//!
//! What identifies a flow:
//!
//! - the protocol and both addresses, always;
//! - both ports for the protocols that start with a source and a
//!   destination port (UDP, UDP-Lite, SCTP, DCCP; TCP too, although the TCP
//!   path takes TCP before it gets here);
//! - the identifier of ICMP and ICMPv6 echo requests and replies, so that
//!   two pings to one host are two flows;
//! - nothing more for anything else (ICMP errors, GRE, ESP...).
//!
//! **Fragments.** A fragment that is not atomic (offset 0 and no more
//! fragments) is keyed on its protocol and addresses only, the first
//! fragment too, although it has the ports. So every fragment of a datagram
//! takes the same path (split over two paths, a datagram arrives as late as
//! the slower path and is lost if either loses a piece), and so do the
//! successive datagrams of a flow that fragments (keying on the fragment
//! id would make every datagram a flow of its own: reordered, and one
//! flow-table entry each). The price is that all fragmented traffic between
//! two hosts shares one path; fragments are rare, since the kernel
//! reassembles before NAT. IPv6 fragment headers are found by walking the
//! hop-by-hop, routing and destination options headers as [`super::ipv6`]
//! does; an atomic fragment is walked past like any other header.
//!
//! No function here allocates or panics, whatever the input (fuzzed:
//! `fuzz/fuzz_targets/flow.rs`).

use std::net::IpAddr;

use super::ip::number;
use super::{be16, byte, icmp, ipv4, ipv6, udp};

/// Protocol numbers with ports in their first four bytes, besides TCP and
/// UDP.
pub mod port_protocol {
    /// DCCP (RFC 4340).
    pub const DCCP: u8 = 33;
    /// SCTP (RFC 9260).
    pub const SCTP: u8 = 132;
    /// UDP-Lite (RFC 3828).
    pub const UDP_LITE: u8 = 136;
}

/// The DNS port.
pub const DNS_PORT: u16 = 53;
/// The port HTTP/3 (QUIC) servers listen on.
pub const QUIC_PORT: u16 = 443;
/// The first byte's bits of a QUIC long header (RFC 9000 § 17.2: header
/// form and fixed bit).
const QUIC_LONG_HEADER: u8 = 0xc0;
/// The Expedited Forwarding code point (RFC 3246).
pub const DSCP_EF: u8 = 46;

/// ICMP echo reply and request (RFC 792).
const ICMP_ECHO: [u8; 2] = [0, 8];
/// ICMPv6 echo request and reply (RFC 4443).
const ICMPV6_ECHO: [u8; 2] = [128, 129];
/// Offset of the identifier in an echo message.
const ECHO_ID: usize = 4;

/// What besides protocol and addresses tells a packet's flow apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Demux {
    /// Nothing: a protocol without ports, an ICMP message other than an
    /// echo, or a transport header cut short.
    Hosts,
    /// Source and destination port.
    Ports {
        /// Source port.
        src: u16,
        /// Destination port.
        dst: u16,
    },
    /// The identifier of an ICMP or ICMPv6 echo request or reply.
    Echo {
        /// The identifier.
        id: u16,
    },
    /// A fragment (not an atomic one): keyed on protocol and addresses,
    /// see the module documentation.
    Fragment,
}

/// A flow: what the scheduler keeps on one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The IPv4 protocol, or the IPv6 upper-layer next header (for a
    /// fragment: the fragment header's next header).
    pub protocol: u8,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Ports, echo identifier, or nothing.
    pub demux: Demux,
}

/// A packet's flow and what the tunnel's policies need to know of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// The flow.
    pub key: FlowKey,
    /// UDP from or to port 53: small and latency-critical, sent redundantly.
    /// Never a fragment, whose ports are not known.
    pub dns: bool,
    /// UDP to port 443 with a QUIC long header (the first byte's two top
    /// bits set: Initial, 0-RTT, Handshake, what opens a connection),
    /// which `quic = "block"` refuses; other UDP to 443 (a VPN on that
    /// port) is not QUIC. [`Flow::new`], without the payload, goes by the
    /// port alone. Never a fragment (QUIC does not fragment: it sets DF).
    pub quic: bool,
    /// Marked Expedited Forwarding (DSCP 46, RFC 3246): voice and other
    /// real-time traffic, which the scheduler may send redundantly.
    pub ef: bool,
}

impl FlowKey {
    /// The key of the other direction: a reply's key is the request's
    /// reversed (addresses and ports swapped; an echo keeps its identifier).
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            protocol: self.protocol,
            src: self.dst,
            dst: self.src,
            demux: match self.demux {
                Demux::Ports { src, dst } => Demux::Ports { src: dst, dst: src },
                other => other,
            },
        }
    }

    /// The source and destination ports, if the key has them.
    pub fn ports(&self) -> Option<(u16, u16)> {
        match self.demux {
            Demux::Ports { src, dst } => Some((src, dst)),
            _ => None,
        }
    }
}

impl Flow {
    /// The flow of a packet with this key, DNS and QUIC told from its
    /// protocol and ports.
    pub fn new(key: FlowKey) -> Self {
        let udp_ports = (key.protocol == number::UDP).then(|| key.ports()).flatten();
        Self {
            key,
            dns: udp_ports.is_some_and(|(src, dst)| src == DNS_PORT || dst == DNS_PORT),
            quic: udp_ports.is_some_and(|(_, dst)| dst == QUIC_PORT),
            ef: false,
        }
    }
}

/// Why a packet has no flow: it is no IP packet, or its headers do not fit
/// in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    /// No bytes at all.
    #[error("empty packet")]
    Empty,
    /// The first nibble is neither 4 nor 6.
    #[error("IP version {version} is neither 4 nor 6")]
    UnknownVersion {
        /// The version nibble found.
        version: u8,
    },
    /// The IPv4 header or its total length does not fit.
    #[error("not an IPv4 packet")]
    Ipv4(#[source] ipv4::Error),
    /// The IPv6 header, its payload or an extension header does not fit.
    #[error("not an IPv6 packet")]
    Ipv6(#[source] ipv6::Error),
}

/// The flow of an IPv4 or IPv6 packet read from the TUN device.
///
/// The IP header and (IPv6) the extension headers before the upper layer
/// must fit in the packet; a transport header cut short only costs the
/// ports ([`Demux::Hosts`]). Nothing is allocated.
pub fn flow_of(packet: &[u8]) -> Result<Flow, FlowError> {
    let first = *packet.first().ok_or(FlowError::Empty)?;
    let (key, seen) = match first >> 4 {
        4 => ipv4_key(packet)?,
        6 => ipv6_key(packet)?,
        version => return Err(FlowError::UnknownVersion { version }),
    };
    let flow = Flow::new(key);
    Ok(Flow {
        ef: seen.dscp == DSCP_EF,
        quic: flow.quic && seen.long_header,
        ..flow
    })
}

/// What [`flow_of`] reads beside the key.
struct Seen {
    dscp: u8,
    /// A UDP datagram whose payload starts with a QUIC long header.
    long_header: bool,
}

/// Whether a whole UDP datagram's payload starts like a QUIC long header.
fn long_header(protocol: u8, message: &[u8]) -> bool {
    protocol == number::UDP
        && message
            .get(udp::HEADER_LEN)
            .is_some_and(|&b| b & QUIC_LONG_HEADER == QUIC_LONG_HEADER)
}

fn ipv4_key(buf: &[u8]) -> Result<(FlowKey, Seen), FlowError> {
    let packet = ipv4::Packet::new_checked(buf).map_err(FlowError::Ipv4)?;
    let protocol = packet.protocol();
    let fragment = packet.fragment_offset() != 0 || packet.more_fragments();
    let demux = if fragment {
        Demux::Fragment
    } else {
        demux(protocol, false, packet.payload())
    };
    let seen = Seen {
        dscp: packet.dscp(),
        long_header: !fragment && long_header(protocol, packet.payload()),
    };
    let key = FlowKey {
        protocol,
        src: packet.src_addr().into(),
        dst: packet.dst_addr().into(),
        demux,
    };
    Ok((key, seen))
}

fn ipv6_key(buf: &[u8]) -> Result<(FlowKey, Seen), FlowError> {
    use ipv6::ext_field;

    let packet = ipv6::Packet::new_checked(buf).map_err(FlowError::Ipv6)?;
    let bytes = packet.packet();
    let mut upper = packet.upper_layer().map_err(FlowError::Ipv6)?;
    let mut fragment = false;
    if upper.next_header == number::FRAGMENT {
        let at = upper.offset;
        let next = byte(bytes, at + ext_field::NEXT_HEADER);
        let offset_flags = be16(bytes, at + ext_field::FRAGMENT_OFFSET);
        let atomic = offset_flags & 0xfff9 == 0;
        if at + ipv6::FRAGMENT_HEADER_LEN > bytes.len() {
            // Cut short inside the fragment header: neither its next header
            // nor whether it is atomic can be trusted.
            fragment = true;
            upper.next_header = number::FRAGMENT;
        } else if atomic {
            upper = ipv6::walk_extensions(bytes, next, at + ipv6::FRAGMENT_HEADER_LEN)
                .map_err(FlowError::Ipv6)?;
        } else {
            fragment = true;
            upper.next_header = next;
        }
    }
    let message = bytes.get(upper.offset..).unwrap_or_default();
    let demux = if fragment {
        Demux::Fragment
    } else {
        demux(upper.next_header, true, message)
    };
    let seen = Seen {
        dscp: packet.dscp(),
        long_header: !fragment && long_header(upper.next_header, message),
    };
    let key = FlowKey {
        protocol: upper.next_header,
        src: packet.src_addr().into(),
        dst: packet.dst_addr().into(),
        demux,
    };
    Ok((key, seen))
}

/// Ports or echo identifier of a whole (unfragmented) upper-layer message.
fn demux(protocol: u8, ipv6: bool, message: &[u8]) -> Demux {
    match protocol {
        number::TCP
        | number::UDP
        | port_protocol::DCCP
        | port_protocol::SCTP
        | port_protocol::UDP_LITE => {
            if message.len() < 4 {
                return Demux::Hosts;
            }
            Demux::Ports {
                src: be16(message, udp::field::SRC_PORT),
                dst: be16(message, udp::field::DST_PORT),
            }
        }
        number::ICMP if !ipv6 => echo(message, ICMP_ECHO),
        number::ICMPV6 if ipv6 => echo(message, ICMPV6_ECHO),
        _ => Demux::Hosts,
    }
}

fn echo(message: &[u8], echo_types: [u8; 2]) -> Demux {
    let Ok(icmp) = icmp::Packet::new_checked(message) else {
        return Demux::Hosts;
    };
    if echo_types.contains(&icmp.msg_type()) {
        Demux::Echo {
            id: be16(message, ECHO_ID),
        }
    } else {
        Demux::Hosts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_packets::*;
    use etherparse::{IpHeaders, Ipv6Header, PacketBuilder};
    use std::net::{Ipv4Addr, Ipv6Addr};

    const V4_SRC: [u8; 4] = [192, 168, 77, 2];
    const V4_DST: [u8; 4] = [198, 51, 100, 10];

    fn v6(s: &str) -> [u8; 16] {
        s.parse::<Ipv6Addr>().expect("v6").octets()
    }

    fn udp4(src_port: u16, dst_port: u16) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4(V4_SRC, V4_DST, 64)
            .udp(src_port, dst_port)
            .write(&mut out, b"datagram")
            .expect("udp4");
        out
    }

    /// Sets the IP and UDP length fields of a packet whose payload was
    /// replaced (the UDP header at `udp_end - 8`); checksums are not
    /// looked at by [`flow_of`].
    fn fix_lengths(packet: &mut [u8], udp_end: usize) {
        let udp_len = u16::try_from(packet.len() - (udp_end - 8)).expect("small");
        packet[udp_end - 4..udp_end - 2].copy_from_slice(&udp_len.to_be_bytes());
        if packet[0] >> 4 == 4 {
            let total = u16::try_from(packet.len()).expect("small");
            packet[2..4].copy_from_slice(&total.to_be_bytes());
        } else {
            packet[4..6].copy_from_slice(&udp_len.to_be_bytes());
        }
    }

    fn udp6(src_port: u16, dst_port: u16) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv6(v6("fd77:77::2"), v6("2001:db8:100::10"), 64)
            .udp(src_port, dst_port)
            .write(&mut out, b"datagram")
            .expect("udp6");
        out
    }

    fn key(bytes: &[u8]) -> FlowKey {
        flow_of(bytes).expect("a flow").key
    }

    #[test]
    fn udp_is_keyed_on_addresses_and_ports() {
        let flow = flow_of(&udp4(40000, 9)).expect("flow");
        assert_eq!(
            flow.key,
            FlowKey {
                protocol: number::UDP,
                src: Ipv4Addr::from(V4_SRC).into(),
                dst: Ipv4Addr::from(V4_DST).into(),
                demux: Demux::Ports { src: 40000, dst: 9 },
            }
        );
        assert!(!flow.dns && !flow.quic);
        assert_ne!(key(&udp4(40000, 9)), key(&udp4(40001, 9)));

        let flow = flow_of(&udp6(40000, 9)).expect("flow");
        assert_eq!(flow.key.protocol, number::UDP);
        assert_eq!(flow.key.src, "fd77:77::2".parse::<IpAddr>().expect("ip"));
        assert_eq!(flow.key.ports(), Some((40000, 9)));
    }

    #[test]
    fn dns_both_ways_and_quic_to_443() {
        for bytes in [udp4(5353, 53), udp4(53, 5353), udp6(40000, 53), udp6(53, 1)] {
            let flow = flow_of(&bytes).expect("flow");
            assert!(flow.dns && !flow.quic, "{flow:?}");
        }
        // A QUIC Initial: a long header, version 1.
        let initial = [0xc3, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8];
        let quic = |mut packet: Vec<u8>, payload_at: usize| {
            packet.truncate(payload_at);
            packet.extend_from_slice(&initial);
            fix_lengths(&mut packet, payload_at);
            packet
        };
        for bytes in [quic(udp4(50000, 443), 28), quic(udp6(50000, 443), 48)] {
            let flow = flow_of(&bytes).expect("flow");
            assert!(flow.quic && !flow.dns, "{flow:?}");
        }
        // Other UDP to 443 (a VPN on that port: WireGuard's first byte is
        // 1-4, OpenVPN's has the top bit clear) is not QUIC.
        for bytes in [udp4(50000, 443), udp6(50000, 443)] {
            assert!(!flow_of(&bytes).expect("flow").quic, "{bytes:?}");
        }
        // The answer of a QUIC server is not a new QUIC flow to refuse.
        assert!(!flow_of(&udp4(443, 50000)).expect("flow").quic);
        // TCP to 53 or 443 is not this tunnel's DNS or QUIC.
        let tcp = ipv4_tcp(
            addr("10.0.0.2:5000"),
            addr("10.0.0.1:53"),
            tcp_template(),
            b"",
        );
        let flow = flow_of(&tcp).expect("flow");
        assert_eq!(flow.key.ports(), Some((5000, 53)));
        assert!(!flow.dns && !flow.quic);
    }

    #[test]
    fn pings_are_keyed_on_their_identifier() {
        let ping = |id: u16, reply: bool| {
            let mut out = Vec::new();
            let builder = PacketBuilder::ipv4(V4_SRC, V4_DST, 64);
            let builder = if reply {
                builder.icmpv4_echo_reply(id, 1)
            } else {
                builder.icmpv4_echo_request(id, 1)
            };
            builder.write(&mut out, b"ping").expect("ping");
            out
        };
        assert_eq!(key(&ping(7, false)).demux, Demux::Echo { id: 7 });
        assert_eq!(key(&ping(7, true)).demux, Demux::Echo { id: 7 });
        assert_ne!(key(&ping(7, false)), key(&ping(8, false)));

        let mut ping6 = Vec::new();
        PacketBuilder::ipv6(v6("fd77:77::2"), v6("2001:db8:100::10"), 64)
            .icmpv6_echo_request(0x1234, 9)
            .write(&mut ping6, b"ping")
            .expect("ping6");
        let k = key(&ping6);
        assert_eq!((k.protocol, k.demux), (58, Demux::Echo { id: 0x1234 }));

        // An ICMP error, or ICMPv6 numbering inside IPv4, has no identifier.
        let unreachable =
            crate::wire::build_icmp_unreachable_for(&udp4(1, 2), ROUTER.into()).expect("built");
        assert_eq!(key(&unreachable).demux, Demux::Hosts);
        let mut odd = ping(7, false);
        odd[20] = 128;
        assert_eq!(key(&odd).demux, Demux::Hosts);
    }

    #[test]
    fn other_protocols_are_keyed_on_addresses() {
        let mut gre = udp4(1, 2);
        gre[9] = 47;
        assert_eq!(key(&gre).demux, Demux::Hosts);
        assert_eq!(key(&gre).protocol, 47);
        for protocol in [33, 132, 136] {
            let mut bytes = udp4(1000, 2000);
            bytes[9] = protocol;
            assert_eq!(key(&bytes).ports(), Some((1000, 2000)), "{protocol}");
        }
        // A UDP header cut short by the IP length costs only the ports.
        let mut short = udp4(1000, 2000);
        short[2..4].copy_from_slice(&23u16.to_be_bytes());
        assert_eq!(key(&short).demux, Demux::Hosts);
    }

    #[test]
    fn ipv4_fragments_share_one_key_without_ports() {
        let whole = udp4(40000, 9);
        let mut first = whole.clone();
        first[6] = 0x20; // more fragments
        let mut later = whole.clone();
        later[6..8].copy_from_slice(&185u16.to_be_bytes());
        later[20..24].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]); // payload, not ports
        let (a, b) = (key(&first), key(&later));
        assert_eq!(a, b);
        assert_eq!(a.demux, Demux::Fragment);
        assert_eq!(a.protocol, number::UDP);
        assert_ne!(a, key(&whole));
        assert!(!flow_of(&first).expect("flow").dns);
    }

    /// `payload` behind a fragment header with `offset_flags`.
    fn ipv6_fragmented(offset_flags: u16, next: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0x60, 0, 0, 0, 0, 0, number::FRAGMENT, 64];
        bytes.extend_from_slice(&v6("fd77:77::2"));
        bytes.extend_from_slice(&v6("2001:db8:100::10"));
        bytes.extend_from_slice(&[next, 0]);
        bytes.extend_from_slice(&offset_flags.to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0x12, 0x34]);
        bytes.extend_from_slice(payload);
        let payload_len = (bytes.len() - 40) as u16;
        bytes[4..6].copy_from_slice(&payload_len.to_be_bytes());
        bytes
    }

    #[test]
    fn ipv6_fragments_share_one_key_and_atomic_ones_are_walked() {
        let whole = udp6(40000, 53);
        let udp = &whole[40..];
        let first = ipv6_fragmented(1, number::UDP, udp);
        let later = ipv6_fragmented(185 << 3, number::UDP, &[0xaa; 16]);
        assert_eq!(key(&first), key(&later));
        assert_eq!(key(&first).demux, Demux::Fragment);
        assert_eq!(key(&first).protocol, number::UDP);
        assert!(!flow_of(&first).expect("flow").dns);

        let atomic = ipv6_fragmented(0, number::UDP, udp);
        let flow = flow_of(&atomic).expect("flow");
        assert_eq!(flow.key, key(&whole));
        assert!(flow.dns);

        // Cut inside the fragment header.
        let mut cut = ipv6_fragmented(0, number::UDP, &[]);
        cut.truncate(44);
        cut[4..6].copy_from_slice(&4u16.to_be_bytes());
        assert_eq!(key(&cut).demux, Demux::Fragment);
        assert_eq!(key(&cut).protocol, number::FRAGMENT);
    }

    #[test]
    fn ipv6_extension_headers_are_walked() {
        let mut out = Vec::new();
        let ip = Ipv6Header {
            next_header: etherparse::ip_number::UDP,
            hop_limit: 64,
            source: v6("fd77:77::2"),
            destination: v6("2001:db8:100::10"),
            ..Default::default()
        };
        let mut exts = hop_by_hop_and_destination_options();
        exts.hop_by_hop_options
            .as_mut()
            .expect("hop-by-hop")
            .next_header = etherparse::ip_number::IPV6_DEST_OPTIONS;
        PacketBuilder::ip(IpHeaders::Ipv6(ip, exts))
            .udp(4000, 53)
            .write(&mut out, b"q")
            .expect("built");
        assert_eq!((out[6], out[40], out[48]), (0, 60, 17));
        let flow = flow_of(&out).expect("flow");
        assert_eq!(flow.key.ports(), Some((4000, 53)));
        assert!(flow.dns);
    }

    #[test]
    fn broken_packets_have_no_flow() {
        assert_eq!(flow_of(&[]), Err(FlowError::Empty));
        assert_eq!(
            flow_of(&[0x50; 40]),
            Err(FlowError::UnknownVersion { version: 5 })
        );
        let v4 = udp4(1, 2);
        assert!(matches!(flow_of(&v4[..19]), Err(FlowError::Ipv4(_))));
        assert!(matches!(
            flow_of(&v4[..v4.len() - 1]),
            Err(FlowError::Ipv4(_))
        ));
        let v6 = udp6(1, 2);
        assert!(matches!(flow_of(&v6[..39]), Err(FlowError::Ipv6(_))));
        let mut hop = v6.clone();
        hop[6] = 0; // hop-by-hop claimed, its length runs past the end
        hop[41] = 200;
        assert!(matches!(flow_of(&hop), Err(FlowError::Ipv6(_))));
        // A valid IPv4 header with trailing bytes is fine.
        let mut trailing = v4.clone();
        trailing.extend_from_slice(&[0xee; 9]);
        assert_eq!(key(&trailing), key(&v4));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = XorShift(0x5eed_f10e);
        let seeds = [udp4(1, 53), udp6(2, 443), ipv6_fragmented(8, 17, &[1; 9])];
        for _ in 0..20_000 {
            let mut bytes = seeds[rng.below(seeds.len())].clone();
            for _ in 0..rng.below(4) + 1 {
                let at = rng.below(bytes.len());
                bytes[at] = rng.next() as u8;
            }
            bytes.truncate(rng.below(bytes.len() + 1));
            let _ = flow_of(&bytes);
        }
    }

    #[test]
    fn expedited_forwarding_is_told_in_both_families() {
        let plain = udp4(5004, 5004);
        assert!(!flow_of(&plain).expect("flow").ef);
        let mut ef = plain.clone();
        ef[1] = DSCP_EF << 2 | 0b01; // ECN bits do not matter
        let flow = flow_of(&ef).expect("flow");
        assert!(flow.ef);
        assert_eq!(flow.key, flow_of(&plain).expect("flow").key, "same flow");
        let mut af41 = plain;
        af41[1] = 34 << 2;
        assert!(!flow_of(&af41).expect("flow").ef);

        let plain6 = udp6(5004, 5004);
        assert!(!flow_of(&plain6).expect("flow").ef);
        let mut ef6 = plain6;
        // Version 6, traffic class 0xb8 across the first two bytes.
        ef6[0] = 0x60 | (DSCP_EF << 2) >> 4;
        ef6[1] = (ef6[1] & 0x0f) | ((DSCP_EF << 2) & 0x0f) << 4;
        assert!(flow_of(&ef6).expect("flow").ef);
    }
}
