//! ICMP (RFC 792) and ICMPv6 (RFC 4443) messages: a checked view of the
//! common header, and the errors mpbond sends: Destination Unreachable to
//! a LAN host whose connection the tunnel refused (host unreachable) or
//! whose QUIC the config blocks (port unreachable), and "fragmentation
//! needed" (ICMPv4) or Packet Too Big (ICMPv6) to whoever sends the
//! datagram tunnel a packet larger than its MTU.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::ip::{self, number};
use super::{be16, byte, bytes, ipv4, ipv6};

/// Byte offsets of the header's fields.
pub mod field {
    /// Message type.
    pub const TYPE: usize = 0;
    /// Code, by type.
    pub const CODE: usize = 1;
    /// Checksum: over the message (ICMPv4), or with the pseudo-header too
    /// (ICMPv6).
    pub const CHECKSUM: usize = 2;
}

/// Length of the header of the error messages: type, code, checksum and a
/// 4-byte field by type (unused for Destination Unreachable).
pub const HEADER_LEN: usize = 8;

/// Precedence "internetwork control", as RFC 1812 §4.3.2.5 asks of ICMP errors.
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;
/// RFC 4443 §2.4 (c): an ICMPv6 error must not exceed the minimum IPv6 MTU.
const IPV6_MIN_MTU: usize = 1280;

/// Why a buffer does not hold an ICMP header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Fewer than 8 bytes.
    #[error("ICMP header needs 8 bytes, the message has {len}")]
    HeaderTruncated {
        /// Bytes in the message.
        len: usize,
    },
}

/// A checked view of an ICMP or ICMPv6 message (what follows the IP
/// headers): its 8-byte header is in the buffer.
///
/// After [`Packet::new_checked`] no accessor can panic.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks that `buffer` starts with a whole ICMP header.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let len = buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::HeaderTruncated { len });
        }
        Ok(Self { buffer })
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Message type.
    pub fn msg_type(&self) -> u8 {
        byte(self.buffer.as_ref(), field::TYPE)
    }

    /// Code.
    pub fn code(&self) -> u8 {
        byte(self.buffer.as_ref(), field::CODE)
    }

    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// What follows the 8-byte header: for an error, the quoted packet.
    pub fn data(&self) -> &[u8] {
        self.buffer.as_ref().get(HEADER_LEN..).unwrap_or_default()
    }
}

/// Builds the ICMP error telling the sender of `packet` that its destination
/// is unreachable, sent from `from` (the router's own address, same family)
/// to the packet's source:
///
/// - IPv4: ICMP type 3 code 1 (host unreachable) quoting the IP header and
///   the first 8 bytes of its payload (RFC 792);
/// - IPv6: ICMPv6 type 1 code 3 (address unreachable) quoting as much of
///   the packet as fits in 1280 bytes (RFC 4443 §3.1).
///
/// TTL/hop limit 64; the ICMPv6 checksum covers the pseudo-header.
///
/// Returns `None` where no error may be sent (RFC 1812 §4.3.2.7, RFC 4443
/// §2.4 (e)): `from` of the other family, a malformed packet, an ICMP error
/// or redirect (or an ICMP packet too short to tell), a non-first fragment,
/// a multicast or broadcast destination, or a source that is not one
/// unicast host (unspecified, loopback, multicast, broadcast, class E).
pub fn build_icmp_unreachable_for(packet: &[u8], from: IpAddr) -> Option<Vec<u8>> {
    match (packet.first()? >> 4, from) {
        (4, IpAddr::V4(from)) => icmpv4_unreachable(packet, from, Unreachable::Host),
        (6, IpAddr::V6(from)) => icmpv6_unreachable(packet, from, Unreachable::Host),
        _ => None,
    }
}

/// Builds the ICMP error a host sends for a UDP datagram to a port nobody
/// listens on, from the packet's destination to its source: ICMP type 3
/// code 3 (port unreachable), or ICMPv6 type 1 code 4. The datagram
/// tunnel answers QUIC with it under `quic = "block"`: a browser's
/// connected UDP socket then fails at once (`ECONNREFUSED`) and the
/// browser falls back to TCP instead of waiting for QUIC to time out.
///
/// Quoting and the cases where nothing may be sent are those of
/// [`build_icmp_unreachable_for`].
pub fn build_icmp_port_unreachable_for(packet: &[u8]) -> Option<Vec<u8>> {
    match packet.first()? >> 4 {
        4 => {
            let dst = Ipv4Addr::from(bytes::<4>(packet, ipv4::field::DST)?);
            icmpv4_unreachable(packet, dst, Unreachable::Port)
        }
        6 => {
            let dst = Ipv6Addr::from(bytes::<16>(packet, ipv6::field::DST)?);
            icmpv6_unreachable(packet, dst, Unreachable::Port)
        }
        _ => None,
    }
}

/// Builds the error that tells the sender of `packet` it is larger than
/// the next hop's `mtu`, from the packet's destination to its source (the
/// datagram tunnel is not a hop with an address of its own the sender
/// could route back to; hosts take these errors from any source and check
/// the quoted packet instead): ICMP type 3 code 4 (fragmentation needed
/// and DF set) with the next-hop MTU (RFC 1191), or ICMPv6 type 2 (Packet
/// Too Big) with the MTU (RFC 4443 §3.2).
///
/// Quoting and the cases where nothing may be sent are those of
/// [`build_icmp_unreachable_for`].
pub fn build_icmp_too_big_for(packet: &[u8], mtu: u16) -> Option<Vec<u8>> {
    match packet.first()? >> 4 {
        4 => {
            let dst = Ipv4Addr::from(bytes::<4>(packet, ipv4::field::DST)?);
            icmpv4_unreachable(packet, dst, Unreachable::TooBig(mtu))
        }
        6 => {
            let dst = Ipv6Addr::from(bytes::<16>(packet, ipv6::field::DST)?);
            icmpv6_unreachable(packet, dst, Unreachable::TooBig(mtu))
        }
        _ => None,
    }
}

/// Which error to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unreachable {
    /// From a router: the host (IPv4) or address (IPv6) cannot be reached.
    Host,
    /// From the destination: no one listens on the port.
    Port,
    /// From a hop whose MTU, this one, the packet exceeds.
    TooBig(u16),
}

/// The IPv4 half of [`build_icmp_unreachable_for`]. Lenient where the view
/// is strict: a datagram cut short of its total length is still answered,
/// quoting what there is.
fn icmpv4_unreachable(packet: &[u8], from: Ipv4Addr, kind: Unreachable) -> Option<Vec<u8>> {
    use ipv4::field as v4;
    const DESTINATION_UNREACHABLE: u8 = 3;
    let (code, mtu) = match kind {
        Unreachable::Host => (1, 0),
        Unreachable::Port => (3, 0),
        Unreachable::TooBig(mtu) => (4, mtu),
    };
    /// Unreachable, source quench, redirect, time exceeded, parameter problem.
    const ERROR_TYPES: [u8; 5] = [3, 4, 5, 11, 12];

    if packet.len() < ipv4::MIN_HEADER_LEN {
        return None;
    }
    let header_len = usize::from(byte(packet, v4::VERSION_IHL) & 0x0f) * 4;
    let total_len = usize::from(be16(packet, v4::TOTAL_LEN)).min(packet.len());
    if header_len < ipv4::MIN_HEADER_LEN || header_len > total_len {
        return None;
    }
    let packet = packet.get(..total_len)?;
    if be16(packet, v4::FLAGS_FRAGMENT) & 0x1fff != 0 {
        return None;
    }
    let src = Ipv4Addr::from(bytes::<4>(packet, v4::SRC)?);
    let dst = Ipv4Addr::from(bytes::<4>(packet, v4::DST)?);
    let single_host = !(src.octets()[0] == 0
        || src.is_loopback()
        || src.is_multicast()
        || src.is_broadcast()
        || src.octets()[0] >= 240);
    if !single_host || dst.is_multicast() || dst.is_broadcast() {
        return None;
    }
    if byte(packet, v4::PROTOCOL) == number::ICMP {
        let icmp_type = packet.get(header_len)?;
        if ERROR_TYPES.contains(icmp_type) {
            return None;
        }
    }
    let quoted = packet.get(..total_len.min(header_len + 8))?;
    let mut message = Vec::with_capacity(HEADER_LEN + quoted.len());
    let [mtu_hi, mtu_lo] = mtu.to_be_bytes();
    message.extend_from_slice(&[DESTINATION_UNREACHABLE, code, 0, 0, 0, 0, mtu_hi, mtu_lo]);
    message.extend_from_slice(quoted);
    ip::emit(
        IpAddr::V4(from),
        IpAddr::V4(src),
        number::ICMP,
        TOS_INTERNETWORK_CONTROL,
        &mut message,
        field::CHECKSUM,
    )
}

/// The IPv6 half of [`build_icmp_unreachable_for`], as lenient as the IPv4
/// one about a packet cut short.
fn icmpv6_unreachable(packet: &[u8], from: Ipv6Addr, kind: Unreachable) -> Option<Vec<u8>> {
    use ipv6::{ext_field, field as v6};
    const DESTINATION_UNREACHABLE: u8 = 1;
    const PACKET_TOO_BIG: u8 = 2;
    let (msg_type, code, mtu) = match kind {
        Unreachable::Host => (DESTINATION_UNREACHABLE, 3, 0),
        Unreachable::Port => (DESTINATION_UNREACHABLE, 4, 0),
        Unreachable::TooBig(mtu) => (PACKET_TOO_BIG, 0, u32::from(mtu)),
    };
    const FIRST_INFORMATIONAL_TYPE: u8 = 128;
    const REDIRECT: u8 = 137;

    if packet.len() < ipv6::HEADER_LEN {
        return None;
    }
    let packet_len =
        (ipv6::HEADER_LEN + usize::from(be16(packet, v6::PAYLOAD_LEN))).min(packet.len());
    let packet = packet.get(..packet_len)?;
    let src = Ipv6Addr::from(bytes::<16>(packet, v6::SRC)?);
    let dst = Ipv6Addr::from(bytes::<16>(packet, v6::DST)?);
    if src.is_unspecified() || src.is_loopback() || src.is_multicast() || dst.is_multicast() {
        return None;
    }
    let mut upper =
        ipv6::walk_extensions(packet, byte(packet, v6::NEXT_HEADER), ipv6::HEADER_LEN).ok()?;
    if upper.next_header == number::FRAGMENT {
        let fragment = bytes::<{ ipv6::FRAGMENT_HEADER_LEN }>(packet, upper.offset)?;
        let offset_flags = u16::from_be_bytes([
            fragment[ext_field::FRAGMENT_OFFSET],
            fragment[ext_field::FRAGMENT_OFFSET + 1],
        ]);
        // A later fragment hides whether the datagram is itself an ICMPv6 error.
        if offset_flags >> 3 != 0 {
            return None;
        }
        upper = ipv6::walk_extensions(
            packet,
            fragment[ext_field::NEXT_HEADER],
            upper.offset + ipv6::FRAGMENT_HEADER_LEN,
        )
        .ok()?;
    }
    if upper.next_header == number::ICMPV6 {
        let icmp_type = *packet.get(upper.offset)?;
        if icmp_type < FIRST_INFORMATIONAL_TYPE || icmp_type == REDIRECT {
            return None;
        }
    }
    let room = IPV6_MIN_MTU - ipv6::HEADER_LEN - HEADER_LEN;
    let quoted = packet.get(..packet_len.min(room))?;
    let mut message = Vec::with_capacity(HEADER_LEN + quoted.len());
    message.extend_from_slice(&[msg_type, code, 0, 0]);
    message.extend_from_slice(&mtu.to_be_bytes());
    message.extend_from_slice(quoted);
    ip::emit(
        IpAddr::V6(from),
        IpAddr::V6(src),
        number::ICMPV6,
        0,
        &mut message,
        field::CHECKSUM,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_packets::*;
    use etherparse::{
        ip_number as ep_ip, Ipv6Extensions, NetHeaders, PacketBuilder, PacketHeaders,
        TransportHeader,
    };

    #[test]
    fn icmpv4_unreachable_quotes_header_and_eight_bytes() {
        let mut offending = ipv4_tcp(addr(LAN), addr(SERVER), tcp_template(), b"payload");
        let len = offending.len();
        offending.extend_from_slice(&[0xee; 5]);
        let icmp = build_icmp_unreachable_for(&offending, ROUTER.into()).expect("answered");
        assert_eq!(icmp.len(), 20 + 8 + 24 + 8);

        let headers = PacketHeaders::from_ip_slice(&icmp).expect("parses");
        let Some(NetHeaders::Ipv4(ip, _)) = headers.net else {
            panic!("not IPv4");
        };
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
        assert_eq!(ip.time_to_live, 64);
        assert_eq!(ip.source, ROUTER.octets());
        assert_eq!(ip.destination, [192, 168, 1, 23]);
        assert_eq!(ip.protocol, ep_ip::ICMP);
        let Some(TransportHeader::Icmpv4(header)) = headers.transport else {
            panic!("not ICMP");
        };
        let quoted = headers.payload.slice();
        assert_eq!(
            header.icmp_type,
            etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::Host
            )
        );
        assert_eq!((icmp[20], icmp[21]), (3, 1));
        let expected = etherparse::Icmpv4Header::with_checksum(header.icmp_type.clone(), quoted);
        assert_eq!(header.checksum, expected.checksum);
        assert_eq!(quoted, &offending[..24 + 8]);
        assert!(len > 24 + 8);

        // Fewer than 8 bytes of payload: all of it, not the trailing bytes.
        let mut short = offending[..24].to_vec();
        short.extend_from_slice(&[1, 2, 3]);
        set_be16(&mut short, ipv4::field::TOTAL_LEN, 27);
        short[9] = 253;
        short.extend_from_slice(&[0xee; 9]);
        let icmp = build_icmp_unreachable_for(&short, ROUTER.into()).expect("answered");
        assert_eq!(icmp[28..], short[..27]);
        let headers = PacketHeaders::from_ip_slice(&icmp).expect("parses");
        let Some(TransportHeader::Icmpv4(header)) = headers.transport else {
            panic!("not ICMP");
        };
        let expected = etherparse::Icmpv4Header::with_checksum(
            header.icmp_type.clone(),
            headers.payload.slice(),
        );
        assert_eq!(header.checksum, expected.checksum);
    }

    #[test]
    fn icmpv6_unreachable_quotes_up_to_1280_bytes() {
        let big = vec![0x5a; 2000];
        let mut offending = Vec::new();
        PacketBuilder::ipv6(addr_octets(LAN6), addr_octets(SERVER6), 64)
            .udp(5353, 443)
            .write(&mut offending, &big)
            .expect("udp");
        let icmp = build_icmp_unreachable_for(&offending, ROUTER6.into()).expect("answered");
        assert_eq!(icmp.len(), 1280);
        assert_eq!(icmp[48..], offending[..1232]);
        check_icmpv6(&icmp, addr_octets(LAN6));

        let small = ipv6_tcp(
            addr(LAN6),
            addr(SERVER6),
            hop_by_hop_and_destination_options(),
            tcp_template(),
            b"syn",
        );
        let mut with_trailer = small.clone();
        with_trailer.extend_from_slice(&[0xee; 7]);
        let icmp = build_icmp_unreachable_for(&with_trailer, ROUTER6.into()).expect("answered");
        assert_eq!(icmp[48..], small[..]);
        check_icmpv6(&icmp, addr_octets(LAN6));

        let mut ping6 = Vec::new();
        PacketBuilder::ipv6(addr_octets(LAN6), addr_octets(SERVER6), 64)
            .icmpv6_echo_request(1, 1)
            .write(&mut ping6, b"ping")
            .expect("ping6");
        assert!(build_icmp_unreachable_for(&ping6, ROUTER6.into()).is_some());
    }

    fn check_icmpv6(icmp: &[u8], to: [u8; 16]) {
        let headers = PacketHeaders::from_ip_slice(icmp).expect("parses");
        let Some(NetHeaders::Ipv6(ip, _)) = headers.net else {
            panic!("not IPv6");
        };
        assert_eq!(ip.hop_limit, 64);
        assert_eq!(ip.source, ROUTER6.octets());
        assert_eq!(ip.destination, to);
        assert_eq!(ip.next_header, ep_ip::IPV6_ICMP);
        assert_eq!((icmp[40], icmp[41]), (1, 3));
        let Some(TransportHeader::Icmpv6(header)) = headers.transport else {
            panic!("not ICMPv6");
        };
        assert_eq!(
            header.icmp_type,
            etherparse::Icmpv6Type::DestinationUnreachable(
                etherparse::icmpv6::DestUnreachableCode::Address
            )
        );
        let expected = etherparse::Icmpv6Header::with_checksum(
            header.icmp_type,
            ip.source,
            ip.destination,
            headers.payload.slice(),
        )
        .expect("checksum");
        assert_eq!(header.checksum, expected.checksum);
        let slice = etherparse::Icmpv6Slice::from_slice(&icmp[40..]).expect("slice");
        assert!(slice.is_checksum_valid(ip.source, ip.destination));
    }

    /// An ICMPv4 error from the server (9.9.9.9) to the LAN host, checked
    /// (IP header checksum, addresses, ICMP checksum): its type and what
    /// it quotes.
    fn icmpv4_from_server(icmp: &[u8]) -> (etherparse::Icmpv4Type, Vec<u8>) {
        let headers = PacketHeaders::from_ip_slice(icmp).expect("parses");
        let Some(NetHeaders::Ipv4(ip, _)) = headers.net else {
            panic!("not IPv4");
        };
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
        assert_eq!(
            (ip.source, ip.destination),
            ([9, 9, 9, 9], [192, 168, 1, 23])
        );
        let Some(TransportHeader::Icmpv4(header)) = headers.transport else {
            panic!("not ICMP");
        };
        let quoted = headers.payload.slice();
        let expected = etherparse::Icmpv4Header::with_checksum(header.icmp_type.clone(), quoted);
        assert_eq!(header.checksum, expected.checksum);
        (header.icmp_type, quoted.to_vec())
    }

    /// An ICMPv6 error from the server to the LAN host, checked likewise.
    fn icmpv6_from_server(icmp: &[u8]) -> (etherparse::Icmpv6Type, Vec<u8>) {
        let headers = PacketHeaders::from_ip_slice(icmp).expect("parses");
        let Some(NetHeaders::Ipv6(ip, _)) = headers.net else {
            panic!("not IPv6");
        };
        assert_eq!(ip.source, addr_octets(SERVER6));
        assert_eq!(ip.destination, addr_octets(LAN6));
        let Some(TransportHeader::Icmpv6(header)) = headers.transport else {
            panic!("not ICMPv6");
        };
        let slice = etherparse::Icmpv6Slice::from_slice(&icmp[40..]).expect("slice");
        assert!(slice.is_checksum_valid(ip.source, ip.destination));
        (header.icmp_type, headers.payload.slice().to_vec())
    }

    #[test]
    fn port_unreachable_comes_from_the_destination_and_parses() {
        let v4 = udp_packet(false);
        let icmp = build_icmp_port_unreachable_for(&v4).expect("answered");
        let (icmp_type, quoted) = icmpv4_from_server(&icmp);
        assert_eq!(
            icmp_type,
            etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::Port
            )
        );
        assert_eq!(quoted, &v4[..20 + 8], "the IP header and 8 bytes");

        let v6 = udp_packet(true);
        let icmp = build_icmp_port_unreachable_for(&v6).expect("answered");
        let (icmp_type, quoted) = icmpv6_from_server(&icmp);
        assert_eq!(
            icmp_type,
            etherparse::Icmpv6Type::DestinationUnreachable(
                etherparse::icmpv6::DestUnreachableCode::Port
            )
        );
        assert_eq!(quoted, v6);

        // Never to or from a multicast address, nor for garbage.
        let mut multicast = v4.clone();
        multicast[16..20].copy_from_slice(&[239, 1, 2, 3]);
        assert_eq!(build_icmp_port_unreachable_for(&multicast), None);
        assert_eq!(build_icmp_port_unreachable_for(&[]), None);
        assert_eq!(build_icmp_port_unreachable_for(&[0x45; 10]), None);
        assert_eq!(build_icmp_port_unreachable_for(&[0x60; 30]), None);
        let unreachable = build_icmp_port_unreachable_for(&v4).expect("answered");
        assert_eq!(build_icmp_port_unreachable_for(&unreachable), None);
    }

    #[test]
    fn too_big_carries_the_mtu_from_the_destination() {
        let v4 = udp_packet(false);
        let icmp = build_icmp_too_big_for(&v4, 1438).expect("answered");
        let (icmp_type, quoted) = icmpv4_from_server(&icmp);
        assert_eq!(
            icmp_type,
            etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: 1438
                }
            )
        );
        assert_eq!(quoted, &v4[..20 + 8]);

        let v6 = udp_packet(true);
        let icmp = build_icmp_too_big_for(&v6, 1418).expect("answered");
        let (icmp_type, quoted) = icmpv6_from_server(&icmp);
        assert_eq!(
            icmp_type,
            etherparse::Icmpv6Type::PacketTooBig { mtu: 1418 }
        );
        assert_eq!(quoted, v6);
        assert_eq!(
            build_icmp_too_big_for(&icmp, 1418),
            None,
            "never for an error"
        );
    }

    #[test]
    fn icmp_is_not_sent_where_the_rfcs_forbid_it() {
        let v4 = ipv4_tcp(addr(LAN), addr(SERVER), tcp_template(), b"x");
        let v6 = ipv6_tcp(
            addr(LAN6),
            addr(SERVER6),
            Ipv6Extensions::default(),
            tcp_template(),
            b"x",
        );
        assert!(build_icmp_unreachable_for(&v4, ROUTER.into()).is_some());
        assert!(build_icmp_unreachable_for(&v6, ROUTER6.into()).is_some());
        assert_eq!(build_icmp_unreachable_for(&v4, ROUTER6.into()), None);
        assert_eq!(build_icmp_unreachable_for(&v6, ROUTER.into()), None);
        assert_eq!(build_icmp_unreachable_for(&[], ROUTER.into()), None);
        assert_eq!(build_icmp_unreachable_for(&v4[..19], ROUTER.into()), None);
        assert_eq!(build_icmp_unreachable_for(&v6[..39], ROUTER6.into()), None);

        let patched = |base: &[u8], at: usize, value: &[u8]| {
            let mut bytes = base.to_vec();
            bytes[at..at + value.len()].copy_from_slice(value);
            bytes
        };
        for bytes in [
            patched(&v4, 12, &[0, 0, 0, 0]),
            patched(&v4, 12, &[127, 0, 0, 1]),
            patched(&v4, 12, &[224, 0, 0, 9]),
            patched(&v4, 12, &[255, 255, 255, 255]),
            patched(&v4, 12, &[240, 0, 0, 1]),
            patched(&v4, 16, &[239, 1, 2, 3]),
            patched(&v4, 16, &[255, 255, 255, 255]),
            patched(&v4, 6, &[0, 1]),
            patched(&v4, 0, &[0x44]),
        ] {
            assert_eq!(build_icmp_unreachable_for(&bytes, ROUTER.into()), None);
        }
        let multicast6 = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        for bytes in [
            patched(&v6, 8, &[0; 16]),
            patched(&v6, 8, &multicast6),
            patched(&v6, 24, &multicast6),
        ] {
            assert_eq!(build_icmp_unreachable_for(&bytes, ROUTER6.into()), None);
        }

        let icmp = build_icmp_unreachable_for(&v4, ROUTER.into()).expect("answered");
        let mut reflected = icmp.clone();
        reflected[12..16].copy_from_slice(&[192, 168, 1, 99]);
        assert_eq!(
            build_icmp_unreachable_for(&reflected, ROUTER.into()),
            None,
            "an ICMP error is never answered"
        );
        let icmp6 = build_icmp_unreachable_for(&v6, ROUTER6.into()).expect("answered");
        assert_eq!(build_icmp_unreachable_for(&icmp6, ROUTER6.into()), None);

        let mut later_fragment6 = ipv6_fragment();
        later_fragment6[42..44].copy_from_slice(&(185u16 << 3).to_be_bytes());
        assert_eq!(
            build_icmp_unreachable_for(&later_fragment6, ROUTER6.into()),
            None
        );
        assert!(build_icmp_unreachable_for(&ipv6_fragment(), ROUTER6.into()).is_some());
    }
}
