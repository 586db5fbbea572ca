//! IP packets as the client's redirect sees them: the version dispatch
//! over [`ipv4`] and [`ipv6`], [`classify`], and [`TcpPacket`], the
//! combined view of an IP packet carrying one whole TCP segment that the
//! redirect rewrites in place.
//!
//! The client reads raw IPv4 and IPv6 packets from its TUN device (no link
//! header, no packet-info prefix). [`classify`] sorts them by protocol;
//! TCP segments are checked once with [`TcpPacket::new_checked`] and then
//! redirected onto a local kernel listener by [`TcpPacket::rewrite`], which
//! swaps addresses and ports in place and updates the checksums
//! incrementally (RFC 1624), so the kernel's own TCP stack terminates the
//! flow.
//!
//! Everything here reads bytes from the network: no function panics on any
//! input, and the rewrite path does not allocate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use super::{be16, be32, byte, bytes, checksum, ipv4, ipv6, tcp};
use tcp::TcpFlags;

/// IP protocol and IPv6 next-header numbers.
pub mod number {
    /// IPv6 hop-by-hop options.
    pub const HOP_BY_HOP: u8 = 0;
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 routing header.
    pub const ROUTING: u8 = 43;
    /// IPv6 fragment header.
    pub const FRAGMENT: u8 = 44;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// IPv6 destination options.
    pub const DESTINATION_OPTIONS: u8 = 60;
}

/// TTL and hop limit of the packets this crate builds.
pub const HOP_LIMIT: u8 = 64;

/// IPv4 flags word with only Don't Fragment set: an atomic datagram, so its
/// identification may be zero (RFC 6864).
const IPV4_DONT_FRAGMENT: u16 = 0x4000;

/// What an IP packet carries, as far as the IP header (and IPv6 extension
/// headers) tell. The answer of [`classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// ICMP in an IPv4 packet (1) or ICMPv6 in an IPv6 packet (58).
    Icmp,
    /// Any other protocol, by number. An IPv6 fragment is `Other(44)`.
    Other(u8),
    /// Not an IPv4 or IPv6 packet, or too short to tell.
    Invalid,
}

/// Why a buffer is not a TCP segment the redirect can view and rewrite.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The buffer holds no bytes at all.
    #[error("empty packet")]
    Empty,
    /// The first nibble is neither 4 nor 6.
    #[error("IP version {version} is neither 4 nor 6")]
    UnknownVersion {
        /// The version nibble found.
        version: u8,
    },
    /// The IPv4 header or its total length does not fit.
    #[error(transparent)]
    Ipv4(#[from] ipv4::Error),
    /// A fragment, first or not; the kernel reassembles before the TUN.
    #[error(
        "IPv4 fragment (offset {offset}, more fragments: {more_fragments}): \
         only whole datagrams can be redirected"
    )]
    Ipv4Fragment {
        /// Fragment offset in bytes.
        offset: usize,
        /// The More Fragments flag.
        more_fragments: bool,
    },
    /// The IPv6 header, its payload or an extension header does not fit.
    #[error(transparent)]
    Ipv6(#[from] ipv6::Error),
    /// The packet carries an IPv6 fragment header.
    #[error("IPv6 fragment header at offset {offset}: only whole datagrams can be redirected")]
    Ipv6Fragment {
        /// Where the fragment header starts.
        offset: usize,
    },
    /// A routing header still has segments to visit, so the destination
    /// address is not the final destination the TCP checksum covers.
    #[error(
        "IPv6 routing header with {segments_left} segments left: \
         the destination address is not the final destination"
    )]
    Ipv6RoutingSegmentsLeft {
        /// The routing header's Segments Left field.
        segments_left: u8,
    },
    /// The IP packet carries something other than TCP.
    #[error("IP protocol {protocol} is not TCP (6)")]
    NotTcp {
        /// The IPv4 protocol or the IPv6 upper-layer next header.
        protocol: u8,
    },
    /// The TCP header does not fit in what follows the IP headers.
    #[error(transparent)]
    Tcp(#[from] tcp::Error),
    /// [`TcpPacket::rewrite`] was given addresses of the other IP family (or
    /// of two families).
    #[error("cannot write {src} -> {dst} into an IPv{ip_version} packet")]
    AddressFamily {
        /// The packet's IP version, 4 or 6.
        ip_version: u8,
        /// The source that was asked for.
        src: SocketAddr,
        /// The destination that was asked for.
        dst: SocketAddr,
    },
    /// The buffer's `AsMut` slice is shorter than the packet that
    /// `new_checked` saw (only an unusual `AsRef`/`AsMut` pair can do this).
    #[error("buffer shrank to {len} bytes since the {packet_len}-byte packet was checked")]
    BufferShrank {
        /// The packet's length when it was checked.
        packet_len: usize,
        /// The buffer's length now.
        len: usize,
    },
}

/// Where the parts of a checked packet lie in its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    ipv6: bool,
    /// Offset of the TCP header: the IP header plus any IPv6 extension headers.
    tcp_at: usize,
    tcp_header_len: usize,
    /// IPv4 total length, or 40 + IPv6 payload length; bytes past it are ignored.
    packet_len: usize,
}

/// A checked view of an IPv4 or IPv6 packet carrying one whole TCP segment.
///
/// [`TcpPacket::new_checked`] validates the IP and TCP headers once; after
/// that no accessor can panic, whatever the buffer holds. The buffer may be
/// longer than the packet: trailing bytes are ignored and never modified.
/// Checksums are not verified on the way in (the kernel computed them);
/// see [`TcpPacket::verify_checksums`].
#[derive(Debug, Clone)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
    layout: Layout,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Checks that `buffer` starts with an IPv4 or IPv6 packet carrying a
    /// complete TCP header, and returns a view of it.
    ///
    /// Rejected: fragments (IPv4 with MF set or a non-zero offset, IPv6 with
    /// a fragment header), non-TCP packets, IPv6 routing headers with
    /// segments left, and any length field that points past the buffer.
    /// IPv6 hop-by-hop, routing and destination options headers before TCP
    /// are walked.
    pub fn new_checked(buffer: T) -> Result<Self, PacketError> {
        let layout = Layout::parse(buffer.as_ref())?;
        Ok(Self { buffer, layout })
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Whether this is an IPv6 packet (otherwise IPv4).
    pub fn is_ipv6(&self) -> bool {
        self.layout.ipv6
    }

    /// Length of the IP header, IPv4 options and IPv6 extension headers
    /// included: the offset of the TCP header.
    pub fn ip_header_len(&self) -> usize {
        self.layout.tcp_at
    }

    /// Length of the TCP header, options included.
    pub fn tcp_header_len(&self) -> usize {
        self.layout.tcp_header_len
    }

    /// Length of the IP packet (IPv4 total length, or 40 + IPv6 payload
    /// length), which may be shorter than the buffer.
    pub fn packet_len(&self) -> usize {
        self.layout.packet_len
    }

    /// Number of TCP payload bytes.
    pub fn payload_len(&self) -> usize {
        self.layout
            .packet_len
            .saturating_sub(self.layout.tcp_at + self.layout.tcp_header_len)
    }

    /// The IP packet's bytes, without any trailing bytes of the buffer:
    /// what to write back to the TUN device.
    pub fn packet(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(..self.layout.packet_len)
            .unwrap_or_default()
    }

    /// The TCP payload.
    pub fn payload(&self) -> &[u8] {
        let start = self.layout.tcp_at + self.layout.tcp_header_len;
        self.buffer
            .as_ref()
            .get(start..self.layout.packet_len)
            .unwrap_or_default()
    }

    /// Source address and port.
    pub fn src(&self) -> SocketAddr {
        self.endpoint(ipv4::field::SRC, ipv6::field::SRC, tcp::field::SRC_PORT)
    }

    /// Destination address and port.
    pub fn dst(&self) -> SocketAddr {
        self.endpoint(ipv4::field::DST, ipv6::field::DST, tcp::field::DST_PORT)
    }

    /// The SYN, ACK, FIN, RST and PSH flags.
    pub fn flags(&self) -> TcpFlags {
        TcpFlags::from_byte(byte(self.buffer.as_ref(), self.tcp(tcp::field::FLAGS)))
    }

    /// Sequence number.
    pub fn seq(&self) -> u32 {
        be32(self.buffer.as_ref(), self.tcp(tcp::field::SEQ))
    }

    /// Acknowledgment number (meaningful when [`TcpFlags::ack`] is set).
    pub fn ack_number(&self) -> u32 {
        be32(self.buffer.as_ref(), self.tcp(tcp::field::ACK))
    }

    /// Whether the IPv4 header checksum (if any) and the TCP checksum are
    /// correct, computed in full over the packet and its pseudo-header.
    pub fn verify_checksums(&self) -> bool {
        let Layout {
            ipv6,
            tcp_at,
            packet_len,
            ..
        } = self.layout;
        let Some(packet) = self.buffer.as_ref().get(..packet_len) else {
            return false;
        };
        let Some(segment) = packet.get(tcp_at..) else {
            return false;
        };
        let (src, dst) = if ipv6 {
            (
                ipv6::field::SRC..ipv6::field::DST,
                ipv6::field::DST..ipv6::HEADER_LEN,
            )
        } else {
            let header_ok = packet
                .get(..tcp_at)
                .is_some_and(|header| checksum::fold(checksum::sum_words(header)) == 0xffff);
            if !header_ok {
                return false;
            }
            (
                ipv4::field::SRC..ipv4::field::DST,
                ipv4::field::DST..ipv4::MIN_HEADER_LEN,
            )
        };
        let pseudo = checksum::pseudo_header_sum(
            packet.get(src).unwrap_or_default(),
            packet.get(dst).unwrap_or_default(),
            number::TCP,
            segment.len(),
        );
        checksum::fold(pseudo + checksum::sum_words(segment)) == 0xffff
    }

    fn tcp(&self, offset: usize) -> usize {
        self.layout.tcp_at + offset
    }

    fn endpoint(&self, ipv4_at: usize, ipv6_at: usize, port_at: usize) -> SocketAddr {
        let buf = self.buffer.as_ref();
        let port = be16(buf, self.tcp(port_at));
        if self.layout.ipv6 {
            let ip = Ipv6Addr::from(bytes::<16>(buf, ipv6_at).unwrap_or([0; 16]));
            SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0))
        } else {
            let ip = Ipv4Addr::from(bytes::<4>(buf, ipv4_at).unwrap_or([0; 4]));
            SocketAddr::V4(SocketAddrV4::new(ip, port))
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    /// Sets the source and destination addresses and ports in place and
    /// updates the IPv4 header checksum and the TCP checksum incrementally
    /// (RFC 1624, equation 3), without allocating.
    ///
    /// A correct checksum stays correct and equals what a full computation
    /// gives (0x0000, never 0xffff, for a zero result); an incorrect one stays
    /// incorrect by the same amount, so the kernel still drops the segment.
    /// IPv6 flow information and scope ids of the addresses are ignored.
    ///
    /// # Errors
    ///
    /// [`PacketError::AddressFamily`] if `src` and `dst` are not both of the
    /// packet's IP family, [`PacketError::BufferShrank`] if the buffer no
    /// longer holds the packet; the packet is then left untouched.
    pub fn rewrite(&mut self, src: SocketAddr, dst: SocketAddr) -> Result<(), PacketError> {
        self.rewrite_with(src, dst, false)
    }

    /// As [`rewrite`](Self::rewrite), for a packet whose TCP checksum is
    /// partial (a TUN with offloads, `NEEDS_CSUM`; maybe a super-packet of
    /// many segments): the field holds the pseudo-header sum, not
    /// complemented, which the kernel completes over the TCP header and
    /// payload (per segment) when it takes the packet back. So the field
    /// gets the address change as a plain ones-complement addition and the
    /// ports none (they are in the part the kernel sums). The IPv4 header
    /// checksum is updated as by `rewrite`.
    ///
    /// # Errors
    ///
    /// As [`rewrite`](Self::rewrite).
    pub fn rewrite_partial(&mut self, src: SocketAddr, dst: SocketAddr) -> Result<(), PacketError> {
        self.rewrite_with(src, dst, true)
    }

    fn rewrite_with(
        &mut self,
        src: SocketAddr,
        dst: SocketAddr,
        partial: bool,
    ) -> Result<(), PacketError> {
        let Layout {
            ipv6,
            tcp_at,
            packet_len,
            ..
        } = self.layout;
        let addresses = match (src, dst, ipv6) {
            (SocketAddr::V4(s), SocketAddr::V4(d), false) => {
                Addresses::V4(s.ip().octets(), d.ip().octets())
            }
            (SocketAddr::V6(s), SocketAddr::V6(d), true) => {
                Addresses::V6(s.ip().octets(), d.ip().octets())
            }
            _ => {
                return Err(PacketError::AddressFamily {
                    ip_version: if ipv6 { 6 } else { 4 },
                    src,
                    dst,
                })
            }
        };
        let buf = self.buffer.as_mut();
        let len = buf.len();
        let packet = buf
            .get_mut(..packet_len)
            .ok_or(PacketError::BufferShrank { packet_len, len })?;

        let mut address_delta = 0;
        match addresses {
            Addresses::V4(s, d) => {
                checksum::replace(packet, ipv4::field::SRC, s, &mut address_delta);
                checksum::replace(packet, ipv4::field::DST, d, &mut address_delta);
                checksum::adjust(packet, ipv4::field::CHECKSUM, address_delta);
            }
            Addresses::V6(s, d) => {
                checksum::replace(packet, ipv6::field::SRC, s, &mut address_delta);
                checksum::replace(packet, ipv6::field::DST, d, &mut address_delta);
            }
        }
        let mut tcp_delta = address_delta;
        let src_port = tcp_at + tcp::field::SRC_PORT;
        let dst_port = tcp_at + tcp::field::DST_PORT;
        checksum::replace(packet, src_port, src.port().to_be_bytes(), &mut tcp_delta);
        checksum::replace(packet, dst_port, dst.port().to_be_bytes(), &mut tcp_delta);
        if partial {
            checksum::adjust_partial(packet, tcp_at + tcp::field::CHECKSUM, address_delta);
        } else {
            checksum::adjust(packet, tcp_at + tcp::field::CHECKSUM, tcp_delta);
        }
        Ok(())
    }
}

/// Source and destination address bytes for [`TcpPacket::rewrite`].
enum Addresses {
    V4([u8; 4], [u8; 4]),
    V6([u8; 16], [u8; 16]),
}

impl Layout {
    fn parse(buf: &[u8]) -> Result<Self, PacketError> {
        let first = *buf.first().ok_or(PacketError::Empty)?;
        let (ipv6, tcp_at, packet_len) = match first >> 4 {
            4 => {
                let (tcp_at, packet_len) = parse_ipv4(buf)?;
                (false, tcp_at, packet_len)
            }
            6 => {
                let (tcp_at, packet_len) = parse_ipv6(buf)?;
                (true, tcp_at, packet_len)
            }
            version => return Err(PacketError::UnknownVersion { version }),
        };
        let segment = buf.get(tcp_at..packet_len).unwrap_or_default();
        let tcp_header_len = tcp::Packet::new_checked(segment)?.header_len();
        Ok(Self {
            ipv6,
            tcp_at,
            tcp_header_len,
            packet_len,
        })
    }
}

/// Checks an IPv4 header for a whole TCP datagram; returns the header length
/// and the total length.
fn parse_ipv4(buf: &[u8]) -> Result<(usize, usize), PacketError> {
    let packet = ipv4::Packet::new_checked(buf)?;
    let offset = packet.fragment_offset();
    let more_fragments = packet.more_fragments();
    if offset != 0 || more_fragments {
        return Err(PacketError::Ipv4Fragment {
            offset,
            more_fragments,
        });
    }
    let protocol = packet.protocol();
    if protocol != number::TCP {
        return Err(PacketError::NotTcp { protocol });
    }
    Ok((packet.header_len(), packet.total_len()))
}

/// Checks an IPv6 header chain ending in TCP; returns the offset of the TCP
/// header and the packet length.
fn parse_ipv6(buf: &[u8]) -> Result<(usize, usize), PacketError> {
    let packet = ipv6::Packet::new_checked(buf)?;
    let upper = packet.upper_layer()?;
    if upper.next_header == number::FRAGMENT {
        return Err(PacketError::Ipv6Fragment {
            offset: upper.offset,
        });
    }
    if upper.next_header != number::TCP {
        return Err(PacketError::NotTcp {
            protocol: upper.next_header,
        });
    }
    if upper.segments_left != 0 {
        return Err(PacketError::Ipv6RoutingSegmentsLeft {
            segments_left: upper.segments_left,
        });
    }
    Ok((upper.offset, packet.packet_len()))
}

/// Tells what an IP packet carries from its version and protocol (IPv4) or
/// upper-layer next header (IPv6, after hop-by-hop, routing and destination
/// options headers), without checking anything else. Cheap enough to run on
/// every packet before anything else.
///
/// Packets that [`TcpPacket::new_checked`] later rejects (fragments,
/// truncated TCP headers) can still classify as [`Protocol::Tcp`].
pub fn classify(buf: &[u8]) -> Protocol {
    let Some(&first) = buf.first() else {
        return Protocol::Invalid;
    };
    match first >> 4 {
        4 => {
            if buf.len() < ipv4::MIN_HEADER_LEN || first & 0x0f < 5 {
                return Protocol::Invalid;
            }
            match byte(buf, ipv4::field::PROTOCOL) {
                number::TCP => Protocol::Tcp,
                number::UDP => Protocol::Udp,
                number::ICMP => Protocol::Icmp,
                other => Protocol::Other(other),
            }
        }
        6 => {
            if buf.len() < ipv6::HEADER_LEN {
                return Protocol::Invalid;
            }
            let next_header = byte(buf, ipv6::field::NEXT_HEADER);
            match ipv6::walk_extensions(buf, next_header, ipv6::HEADER_LEN) {
                Ok(upper) => match upper.next_header {
                    number::TCP => Protocol::Tcp,
                    number::UDP => Protocol::Udp,
                    number::ICMPV6 => Protocol::Icmp,
                    other => Protocol::Other(other),
                },
                Err(_) => Protocol::Invalid,
            }
        }
        _ => Protocol::Invalid,
    }
}

/// Puts `message` (an upper-layer header and data, checksum field zero) in an
/// IP packet from `src` to `dst`, filling in the message's checksum at
/// `checksum_at`: over the message alone for ICMPv4, with the pseudo-header
/// for everything else. `None` if the families differ or it would not fit.
pub(crate) fn emit(
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    tos: u8,
    message: &mut [u8],
    checksum_at: usize,
) -> Option<Vec<u8>> {
    let message_len = u16::try_from(message.len()).ok()?;
    let mut packet;
    let pseudo = match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            use ipv4::field;
            let total_len = message_len.checked_add(ipv4::MIN_HEADER_LEN as u16)?;
            let mut header = [0; ipv4::MIN_HEADER_LEN];
            header[field::VERSION_IHL] = 0x45;
            header[field::TOS] = tos;
            header[field::TOTAL_LEN..field::TOTAL_LEN + 2]
                .copy_from_slice(&total_len.to_be_bytes());
            header[field::FLAGS_FRAGMENT..field::FLAGS_FRAGMENT + 2]
                .copy_from_slice(&IPV4_DONT_FRAGMENT.to_be_bytes());
            header[field::TTL] = HOP_LIMIT;
            header[field::PROTOCOL] = protocol;
            header[field::SRC..field::DST].copy_from_slice(&src.octets());
            header[field::DST..ipv4::MIN_HEADER_LEN].copy_from_slice(&dst.octets());
            let sum = checksum::complement(checksum::sum_words(&header));
            header[field::CHECKSUM..field::CHECKSUM + 2].copy_from_slice(&sum.to_be_bytes());
            packet = Vec::with_capacity(header.len() + message.len());
            packet.extend_from_slice(&header);
            if protocol == number::ICMP {
                0
            } else {
                checksum::pseudo_header_sum(&src.octets(), &dst.octets(), protocol, message.len())
            }
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            use ipv6::field;
            let mut header = [0; ipv6::HEADER_LEN];
            header[0] = 0x60;
            header[field::PAYLOAD_LEN..field::PAYLOAD_LEN + 2]
                .copy_from_slice(&message_len.to_be_bytes());
            header[field::NEXT_HEADER] = protocol;
            header[field::HOP_LIMIT] = HOP_LIMIT;
            header[field::SRC..field::DST].copy_from_slice(&src.octets());
            header[field::DST..ipv6::HEADER_LEN].copy_from_slice(&dst.octets());
            packet = Vec::with_capacity(header.len() + message.len());
            packet.extend_from_slice(&header);
            checksum::pseudo_header_sum(&src.octets(), &dst.octets(), protocol, message.len())
        }
        _ => return None,
    };
    let sum = checksum::complement(pseudo + checksum::sum_words(message));
    message
        .get_mut(checksum_at..checksum_at + 2)?
        .copy_from_slice(&sum.to_be_bytes());
    packet.extend_from_slice(message);
    Some(packet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_packets::*;
    use crate::wire::{build_icmp_unreachable_for, build_rst_for};
    use etherparse::{Ipv6Extensions, PacketBuilder, TcpHeader};

    /// Seeds of `fuzz/fuzz_targets/packet.rs` (see `crate::fuzz_seeds`):
    /// TCP packets as the TUN delivers them, with IP and TCP options, IPv6
    /// extension headers, a payload, a reset, and a broken checksum.
    #[test]
    fn write_fuzz_corpus() {
        let mut syn = tcp_template();
        (syn.syn, syn.ack, syn.psh) = (true, false, false);
        let mut rst = TcpHeader::new(0, 0, 1, 0);
        rst.rst = true;
        let mut broken = ipv4_tcp(addr(LAN), addr(SERVER), tcp_template(), b"x");
        let last = broken.len() - 1;
        broken[last] ^= 0xff;
        crate::fuzz_seeds::write(
            "packet",
            &[
                (
                    "v4-syn",
                    ipv4_tcp(addr(LAN), addr(SERVER), syn.clone(), b""),
                ),
                (
                    "v4-ack-payload",
                    ipv4_tcp(addr(LAN), addr(SERVER), tcp_template(), b"hello, world"),
                ),
                ("v4-rst", ipv4_tcp(addr(SERVER), addr(LAN), rst, b"")),
                ("v4-bad-checksum", broken),
                (
                    "v6-syn",
                    ipv6_tcp(
                        addr(LAN6),
                        addr(SERVER6),
                        Ipv6Extensions::default(),
                        syn,
                        b"",
                    ),
                ),
                (
                    "v6-ext-headers",
                    ipv6_tcp(
                        addr(LAN6),
                        addr(SERVER6),
                        hop_by_hop_and_destination_options(),
                        tcp_template(),
                        b"data",
                    ),
                ),
                (
                    "v6-routing",
                    ipv6_tcp(
                        addr(LAN6),
                        addr(SERVER6),
                        routing_header(0),
                        tcp_template(),
                        b"",
                    ),
                ),
            ],
        );
    }

    #[test]
    fn accessors_read_an_ipv4_segment() {
        let bytes = ipv4_tcp(addr(LAN), addr(SERVER), tcp_template(), b"hello, world");
        let packet = TcpPacket::new_checked(&bytes[..]).expect("valid");
        assert!(!packet.is_ipv6());
        assert_eq!(packet.src(), addr(LAN));
        assert_eq!(packet.dst(), addr(SERVER));
        assert_eq!(packet.ip_header_len(), 24);
        assert_eq!(packet.tcp_header_len(), 40);
        assert_eq!(packet.payload_len(), 12);
        assert_eq!(packet.payload(), b"hello, world");
        assert_eq!(packet.packet_len(), bytes.len());
        assert_eq!(packet.seq(), 0x1234_5678);
        assert_eq!(packet.ack_number(), 0x9abc_def0);
        let flags = TcpFlags {
            ack: true,
            psh: true,
            ..TcpFlags::default()
        };
        assert_eq!(packet.flags(), flags);
        assert!(packet.verify_checksums());
    }

    #[test]
    fn rewrite_ipv4_in_several_patterns() {
        let original = ipv4_tcp(
            addr(LAN),
            addr(SERVER),
            tcp_template(),
            b"odd-length payload!",
        );
        let mut bytes = original.clone();
        let patterns = [
            (FAKE, TUN),
            (TUN, FAKE),
            (SERVER, LAN),
            (SERVER, LAN),
            ("0.0.0.0:0", "0.0.0.0:0"),
            ("255.255.255.255:65535", "255.255.255.255:65535"),
            ("255.255.255.255:0", "0.0.0.0:65535"),
            (FAKE, TUN),
            (LAN, SERVER),
        ];
        for (src, dst) in patterns {
            rewrite_and_check(&mut bytes, addr(src), addr(dst));
        }
        assert_eq!(bytes, original, "rewriting back restores every byte");
    }

    /// A partial checksum rewritten as a partial one and then completed
    /// equals a full checksum of the rewritten packet, for IPv4 and IPv6,
    /// small packets and 60 KB super-packets, and every address pattern;
    /// the full-checksum update applied to a partial field would not.
    #[test]
    fn partial_checksums_follow_the_rewrite_as_pseudo_header_sums() {
        let big: Vec<u8> = (0..60_001u32).map(|i| (i * 7 % 253) as u8).collect();
        let packets = [
            ipv4_tcp(
                addr(LAN),
                addr(SERVER),
                tcp_template(),
                b"odd-length payload!",
            ),
            ipv4_tcp(addr(LAN), addr(SERVER), tcp_template(), &big),
            ipv6_tcp(
                addr(LAN6),
                addr(SERVER6),
                Ipv6Extensions::default(),
                tcp_template(),
                b"x",
            ),
            ipv6_tcp(
                addr(LAN6),
                addr(SERVER6),
                Ipv6Extensions::default(),
                tcp_template(),
                &big,
            ),
        ];
        for original in packets {
            let v6 = original[0] >> 4 == 6;
            let patterns: &[(&str, &str)] = if v6 {
                &[
                    (FAKE6, TUN6),
                    (TUN6, FAKE6),
                    (SERVER6, LAN6),
                    ("[::]:0", "[::]:0"),
                    ("[::ffff:10.0.0.1]:1", "[::1]:2"),
                ]
            } else {
                &[
                    (FAKE, TUN),
                    (TUN, FAKE),
                    (SERVER, LAN),
                    ("0.0.0.0:0", "0.0.0.0:0"),
                    ("255.255.255.255:65535", "255.255.255.255:65535"),
                ]
            };
            for (src, dst) in patterns {
                let mut partial = original.clone();
                let _ = make_partial(&mut partial);
                let mut wrong = partial.clone();
                TcpPacket::new_checked(&mut partial[..])
                    .expect("valid")
                    .rewrite_partial(addr(src), addr(dst))
                    .expect("rewrite");
                finish_partial(&mut partial);
                let mut full = original.clone();
                rewrite_and_check(&mut full, addr(src), addr(dst));
                assert_eq!(partial, full, "{src} -> {dst}, {} bytes", original.len());
                assert!(TcpPacket::new_checked(&partial[..])
                    .expect("valid")
                    .verify_checksums());
                TcpPacket::new_checked(&mut wrong[..])
                    .expect("valid")
                    .rewrite(addr(src), addr(dst))
                    .expect("rewrite");
                finish_partial(&mut wrong);
                // A swap of the endpoints changes no sum: either update fits.
                let swapped = [(SERVER, LAN), (SERVER6, LAN6)].contains(&(*src, *dst));
                if !swapped {
                    assert_ne!(
                        wrong, full,
                        "a full-checksum update must not fit a partial field"
                    );
                }
            }
        }
    }

    #[test]
    fn rewrite_ipv6_in_several_patterns() {
        let original = ipv6_tcp(
            addr(LAN6),
            addr(SERVER6),
            Ipv6Extensions::default(),
            tcp_template(),
            b"odd-length payload!",
        );
        let mut bytes = original.clone();
        let patterns = [
            (FAKE6, TUN6),
            (TUN6, FAKE6),
            (SERVER6, LAN6),
            (SERVER6, LAN6),
            ("[::]:0", "[::]:0"),
            (
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
            ),
            ("[::ffff:10.0.0.1]:1", "[::1]:2"),
            (LAN6, SERVER6),
        ];
        for (src, dst) in patterns {
            rewrite_and_check(&mut bytes, addr(src), addr(dst));
        }
        assert_eq!(bytes, original, "rewriting back restores every byte");
    }

    #[test]
    fn ipv6_extension_headers_before_tcp() {
        let exts = hop_by_hop_and_destination_options();
        let original = ipv6_tcp(addr(LAN6), addr(SERVER6), exts, tcp_template(), b"data");
        assert_eq!((original[6], original[40], original[48]), (0, 60, 6));
        let packet = TcpPacket::new_checked(&original[..]).expect("valid");
        assert!(packet.is_ipv6());
        assert_eq!(packet.ip_header_len(), 40 + 8 + 16);
        assert_eq!(packet.tcp_header_len(), 40);
        assert_eq!(packet.payload(), b"data");
        assert_eq!((packet.src(), packet.dst()), (addr(LAN6), addr(SERVER6)));
        assert!(packet.verify_checksums());
        assert_eq!(classify(&original), Protocol::Tcp);

        let mut bytes = original.clone();
        rewrite_and_check(&mut bytes, addr(FAKE6), addr(TUN6));
        assert_eq!(
            bytes[40..64],
            original[40..64],
            "extension headers untouched"
        );
        rewrite_and_check(&mut bytes, addr(LAN6), addr(SERVER6));
        assert_eq!(bytes, original);
    }

    #[test]
    fn ipv6_routing_header_only_without_segments_left() {
        let done = ipv6_tcp(
            addr(LAN6),
            addr(SERVER6),
            routing_header(0),
            tcp_template(),
            b"x",
        );
        let packet = TcpPacket::new_checked(&done[..]).expect("no segments left");
        assert_eq!(packet.ip_header_len(), 40 + 24);
        let mut bytes = done.clone();
        rewrite_and_check(&mut bytes, addr(FAKE6), addr(TUN6));

        let pending = ipv6_tcp(
            addr(LAN6),
            addr(SERVER6),
            routing_header(2),
            tcp_template(),
            b"x",
        );
        assert_eq!(
            TcpPacket::new_checked(&pending[..]).err(),
            Some(PacketError::Ipv6RoutingSegmentsLeft { segments_left: 2 })
        );
        assert_eq!(classify(&pending), Protocol::Tcp);
    }

    #[test]
    fn trailing_bytes_are_ignored_and_untouched() {
        let mut bytes = ipv4_tcp(addr(LAN), addr(SERVER), tcp_template(), b"abc");
        let len = bytes.len();
        bytes.extend_from_slice(&[0xee; 13]);
        let mut packet = TcpPacket::new_checked(&mut bytes[..]).expect("trailing bytes allowed");
        assert_eq!(packet.packet_len(), len);
        assert_eq!(packet.packet().len(), len);
        assert_eq!(packet.payload(), b"abc");
        packet.rewrite(addr(FAKE), addr(TUN)).expect("rewrite");
        assert!(packet.verify_checksums());
        assert_eq!(bytes[len..], [0xee; 13]);
        rewrite_and_check(&mut bytes[..len], addr(SERVER), addr(LAN));
    }

    #[test]
    fn incremental_matches_full_for_random_rewrites() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..4_000 {
            let mut payload = vec![0; rng.below(48)];
            rng.fill(&mut payload);
            let mut tcp = tcp_template();
            tcp.sequence_number = rng.next() as u32;
            tcp.acknowledgment_number = rng.next() as u32;
            tcp.window_size = rng.next() as u16;
            if rng.chance(2) {
                tcp.set_options_raw(&[]).expect("no options");
            }
            let ipv6 = rng.chance(2);
            let mut bytes = if ipv6 {
                let exts = if rng.chance(2) {
                    hop_by_hop_and_destination_options()
                } else {
                    Ipv6Extensions::default()
                };
                ipv6_tcp(rng.v6(), rng.v6(), exts, tcp, &payload)
            } else {
                ipv4_tcp(rng.v4(), rng.v4(), tcp, &payload)
            };
            for _ in 0..6 {
                let (src, dst) = if ipv6 {
                    (rng.v6(), rng.v6())
                } else {
                    (rng.v4(), rng.v4())
                };
                // Some rounds change only ports, or nothing at all.
                let (src, dst) = match rng.below(6) {
                    0 => {
                        let packet = TcpPacket::new_checked(&bytes[..]).expect("valid");
                        (packet.src(), packet.dst())
                    }
                    1 => {
                        let packet = TcpPacket::new_checked(&bytes[..]).expect("valid");
                        (
                            SocketAddr::new(packet.src().ip(), src.port()),
                            SocketAddr::new(packet.dst().ip(), dst.port()),
                        )
                    }
                    _ => (src, dst),
                };
                rewrite_and_check(&mut bytes, src, dst);
            }
        }
    }

    /// Sweeps one 16-bit field over every value; each rewrite must match a
    /// full computation, including the values where the checksum is 0x0000.
    #[test]
    fn sweep_hits_zero_checksums() {
        let mut bytes = ipv4_tcp(addr(LAN), addr(SERVER), tcp_template(), b"edge");
        let (mut tcp_zero, mut ip_zero) = (0, 0);
        for value in 0..=u16::MAX {
            let [hi, lo] = value.to_be_bytes();
            let src = SocketAddr::new(Ipv4Addr::new(10, 255, hi, lo).into(), value);
            let mut packet = TcpPacket::new_checked(&mut bytes[..]).expect("valid");
            packet.rewrite(src, addr(TUN)).expect("rewrite");
            let r = reference(&bytes);
            assert_eq!(r.tcp_checksum, r.full_tcp_checksum, "value {value}");
            let (ip_field, ip_full) = r.ip_checksum.expect("ipv4");
            assert_eq!(ip_field, ip_full, "value {value}");
            tcp_zero += usize::from(r.tcp_checksum == 0);
            ip_zero += usize::from(ip_field == 0);
        }
        assert!(tcp_zero > 0 && ip_zero > 0, "sweep never reached 0x0000");

        let mut bytes = ipv6_tcp(
            addr(LAN6),
            addr(SERVER6),
            Ipv6Extensions::default(),
            tcp_template(),
            b"edge",
        );
        let mut zero = 0;
        for port in 0..=u16::MAX {
            let src = SocketAddr::new(addr(FAKE6).ip(), port);
            let mut packet = TcpPacket::new_checked(&mut bytes[..]).expect("valid");
            packet.rewrite(src, addr(TUN6)).expect("rewrite");
            let r = reference(&bytes);
            assert_eq!(r.tcp_checksum, r.full_tcp_checksum, "port {port}");
            zero += usize::from(r.tcp_checksum == 0);
        }
        assert!(zero > 0, "sweep never reached 0x0000");
    }

    /// A packet whose correct checksums are 0x0000 but carry the other zero,
    /// 0xffff, in both checksum fields. All-ones addresses and ports make
    /// the worst case: rewriting them to all zeros adds nothing to the sum.
    fn negative_zero_packet(ipv6: bool) -> Vec<u8> {
        let ones4 = addr("255.255.255.255:65535");
        let ones6 = addr("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535");
        let build = |word: u16| {
            if ipv6 {
                ipv6_tcp(
                    ones6,
                    ones6,
                    Ipv6Extensions::default(),
                    tcp_template(),
                    &word.to_be_bytes(),
                )
            } else {
                ipv4_tcp(ones4, ones4, tcp_template(), &word.to_be_bytes())
            }
        };
        let mut bytes = (0..=u16::MAX)
            .map(build)
            .find(|bytes| reference(bytes).tcp_checksum == 0)
            .expect("some payload word gives a zero TCP checksum");
        if !ipv6 {
            let id = (0..=u16::MAX)
                .find(|&id| {
                    let mut probe = bytes.clone();
                    set_be16(&mut probe, 4, id);
                    fill_checksums(&mut probe);
                    reference(&probe).ip_checksum == Some((0, 0))
                })
                .expect("some identification gives a zero header checksum");
            set_be16(&mut bytes, 4, id);
            fill_checksums(&mut bytes);
            set_be16(&mut bytes, ipv4::field::CHECKSUM, 0xffff);
        }
        let tcp_at = TcpPacket::new_checked(&bytes[..])
            .expect("valid")
            .ip_header_len();
        assert_eq!(bytes[tcp_at + 16..tcp_at + 18], [0, 0]);
        set_be16(&mut bytes, tcp_at + tcp::field::CHECKSUM, 0xffff);
        bytes
    }

    #[test]
    fn negative_zero_checksum_fields() {
        for ipv6 in [false, true] {
            let zeros = if ipv6 {
                addr("[::]:0")
            } else {
                addr("0.0.0.0:0")
            };
            let bytes = negative_zero_packet(ipv6);
            let tcp_at = TcpPacket::new_checked(&bytes[..])
                .expect("valid")
                .ip_header_len();
            let tcp_checksum = tcp_at + tcp::field::CHECKSUM;
            assert!(
                TcpPacket::new_checked(&bytes[..])
                    .expect("valid")
                    .verify_checksums(),
                "0xffff is a valid (negative) zero"
            );

            // No change at all: the sum gains ~m + m = -0 per word.
            let mut same = bytes.clone();
            let (src, dst) = {
                let p = TcpPacket::new_checked(&same[..]).expect("valid");
                (p.src(), p.dst())
            };
            rewrite_and_check(&mut same, src, dst);
            assert_eq!(same[tcp_checksum..tcp_checksum + 2], [0, 0]);

            // All-ones to all-zeros: every term of the sum is +0.
            let mut flipped = bytes.clone();
            rewrite_and_check(&mut flipped, zeros, zeros);
            assert_eq!(flipped[tcp_checksum..tcp_checksum + 2], [0, 0]);
            if !ipv6 {
                assert_eq!(flipped[10..12], [0, 0]);
            }

            // And on to ordinary addresses.
            let (fake, tun) = if ipv6 { (FAKE6, TUN6) } else { (FAKE, TUN) };
            let mut onward = bytes.clone();
            rewrite_and_check(&mut onward, addr(fake), addr(tun));
        }
    }

    #[test]
    fn wrong_checksum_stays_wrong_by_the_same_amount() {
        let mut bytes = ipv4_tcp(addr(LAN), addr(SERVER), tcp_template(), b"abc");
        let tcp_checksum = 24 + tcp::field::CHECKSUM;
        let good = u16::from_be_bytes([bytes[tcp_checksum], bytes[tcp_checksum + 1]]);
        set_be16(&mut bytes, tcp_checksum, good.wrapping_add(3));
        let mut packet = TcpPacket::new_checked(&mut bytes[..]).expect("valid");
        assert!(!packet.verify_checksums());
        packet.rewrite(addr(FAKE), addr(TUN)).expect("rewrite");
        assert!(
            !packet.verify_checksums(),
            "a broken checksum must not be repaired"
        );
        let r = reference(&bytes);
        assert_eq!(r.tcp_checksum, r.full_tcp_checksum.wrapping_add(3));
    }

    #[test]
    fn rewrite_refuses_the_other_family_and_leaves_the_packet_alone() {
        let original = ipv4_tcp(addr(LAN), addr(SERVER), tcp_template(), b"abc");
        let mut bytes = original.clone();
        let mut packet = TcpPacket::new_checked(&mut bytes[..]).expect("valid");
        for (src, dst) in [(FAKE6, TUN6), (FAKE, TUN6), (FAKE6, TUN)] {
            assert_eq!(
                packet.rewrite(addr(src), addr(dst)),
                Err(PacketError::AddressFamily {
                    ip_version: 4,
                    src: addr(src),
                    dst: addr(dst)
                })
            );
        }
        assert_eq!(bytes, original);

        let original = ipv6_tcp(
            addr(LAN6),
            addr(SERVER6),
            Ipv6Extensions::default(),
            tcp_template(),
            b"abc",
        );
        let mut bytes = original.clone();
        let mut packet = TcpPacket::new_checked(&mut bytes[..]).expect("valid");
        let error = packet.rewrite(addr(FAKE), addr(TUN)).expect_err("family");
        assert_eq!(
            error.to_string(),
            "cannot write 10.255.0.7:40001 -> 10.0.0.1:7000 into an IPv6 packet"
        );
        assert_eq!(bytes, original);
    }

    /// A buffer whose mutable view is shorter than its shared one.
    struct Shrinking(Vec<u8>);

    impl AsRef<[u8]> for Shrinking {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    impl AsMut<[u8]> for Shrinking {
        fn as_mut(&mut self) -> &mut [u8] {
            &mut self.0[..10]
        }
    }

    #[test]
    fn rewrite_survives_a_buffer_that_changes_length() {
        let bytes = ipv4_tcp(addr(LAN), addr(SERVER), tcp_template(), b"abc");
        let len = bytes.len();
        let mut packet = TcpPacket::new_checked(Shrinking(bytes)).expect("valid");
        assert_eq!(
            packet.rewrite(addr(FAKE), addr(TUN)),
            Err(PacketError::BufferShrank {
                packet_len: len,
                len: 10
            })
        );
    }

    #[test]
    fn error_messages_name_the_problem() {
        let too_short = TcpPacket::new_checked(&[0x45u8; 12][..]).expect_err("too short");
        assert_eq!(
            too_short.to_string(),
            "IPv4 header length 20 exceeds packet of 12 bytes"
        );
        let udp = udp_packet(false);
        assert_eq!(
            TcpPacket::new_checked(&udp[..])
                .expect_err("udp")
                .to_string(),
            "IP protocol 17 is not TCP (6)"
        );
    }

    #[test]
    fn truncation_at_every_length_is_a_specific_error() {
        let v4 = ipv4_tcp(addr(LAN), addr(SERVER), tcp_template(), b"payload");
        let total = v4.len();
        for len in 0..total {
            let expected = match len {
                0 => PacketError::Empty,
                1..=19 => PacketError::Ipv4(ipv4::Error::HeaderExceedsPacket {
                    header_len: 20,
                    len,
                }),
                20..=23 => PacketError::Ipv4(ipv4::Error::HeaderExceedsPacket {
                    header_len: 24,
                    len,
                }),
                _ => PacketError::Ipv4(ipv4::Error::TotalLengthExceedsPacket {
                    total_len: total,
                    len,
                }),
            };
            assert_eq!(TcpPacket::new_checked(&v4[..len]).err(), Some(expected));

            // The same prefix with its length field believing it.
            if len >= 24 {
                let mut cut = v4[..len].to_vec();
                set_be16(&mut cut, ipv4::field::TOTAL_LEN, len as u16);
                let segment_len = len - 24;
                let result = TcpPacket::new_checked(&cut[..]).err();
                match segment_len {
                    0..=19 => assert_eq!(
                        result,
                        Some(PacketError::Tcp(tcp::Error::HeaderTruncated {
                            segment_len
                        }))
                    ),
                    20..=39 => assert_eq!(
                        result,
                        Some(PacketError::Tcp(tcp::Error::HeaderExceedsSegment {
                            header_len: 40,
                            segment_len
                        }))
                    ),
                    _ => assert_eq!(result, None, "length {len}"),
                }
            }
        }

        let exts = hop_by_hop_and_destination_options();
        let v6 = ipv6_tcp(addr(LAN6), addr(SERVER6), exts, tcp_template(), b"payload");
        let payload_len = v6.len() - 40;
        for len in 0..v6.len() {
            let expected = match len {
                0 => PacketError::Empty,
                1..=39 => PacketError::Ipv6(ipv6::Error::HeaderExceedsPacket { len }),
                _ => PacketError::Ipv6(ipv6::Error::PayloadExceedsPacket {
                    payload_len,
                    available: len - 40,
                }),
            };
            assert_eq!(TcpPacket::new_checked(&v6[..len]).err(), Some(expected));

            if len >= 40 {
                let mut cut = v6[..len].to_vec();
                set_be16(&mut cut, ipv6::field::PAYLOAD_LEN, (len - 40) as u16);
                let result = TcpPacket::new_checked(&cut[..]).err();
                let segment_len = len.saturating_sub(64);
                let expected = match len {
                    40..=47 => Some(PacketError::Ipv6(ipv6::Error::ExtensionTruncated {
                        next_header: 0,
                        offset: 40,
                        packet_len: len,
                    })),
                    48..=63 => Some(PacketError::Ipv6(ipv6::Error::ExtensionTruncated {
                        next_header: 60,
                        offset: 48,
                        packet_len: len,
                    })),
                    64..=83 => Some(PacketError::Tcp(tcp::Error::HeaderTruncated {
                        segment_len,
                    })),
                    84..=103 => Some(PacketError::Tcp(tcp::Error::HeaderExceedsSegment {
                        header_len: 40,
                        segment_len,
                    })),
                    _ => None,
                };
                assert_eq!(result, expected, "length {len}");
            }
        }
    }

    #[test]
    fn malformed_headers_are_specific_errors() {
        let v4 = ipv4_tcp(addr(LAN), addr(SERVER), tcp_template(), b"payload");
        let check = |bytes: &[u8], expected: PacketError| {
            assert_eq!(TcpPacket::new_checked(bytes).err(), Some(expected));
        };
        let patched = |at: usize, value: u8| {
            let mut bytes = v4.clone();
            bytes[at] = value;
            bytes
        };

        check(
            &patched(0, 0x44),
            PacketError::Ipv4(ipv4::Error::HeaderLengthTooSmall { ihl: 4 }),
        );
        check(
            &patched(0, 0x40),
            PacketError::Ipv4(ipv4::Error::HeaderLengthTooSmall { ihl: 0 }),
        );
        check(
            &patched(0, 0x4f),
            PacketError::Tcp(tcp::Error::HeaderTruncated { segment_len: 11 }),
        );
        check(
            &patched(0, 0x55),
            PacketError::UnknownVersion { version: 5 },
        );
        check(
            &patched(3, 10),
            PacketError::Ipv4(ipv4::Error::TotalLengthTooShort {
                total_len: 10,
                header_len: 24,
            }),
        );
        check(
            &patched(24 + 12, 0x40),
            PacketError::Tcp(tcp::Error::DataOffsetTooSmall { data_offset: 4 }),
        );
        check(
            &patched(24 + 12, 0xf0),
            PacketError::Tcp(tcp::Error::HeaderExceedsSegment {
                header_len: 60,
                segment_len: 47,
            }),
        );

        let mut bare_tcp = TcpHeader::new(0, 0, 1, 1);
        bare_tcp.syn = true;
        let mut bare = ipv4_tcp(addr(LAN), addr(SERVER), bare_tcp, &[]);
        bare[24 + 12] = 0x60;
        check(
            &bare,
            PacketError::Tcp(tcp::Error::HeaderExceedsSegment {
                header_len: 24,
                segment_len: 20,
            }),
        );

        check(&udp_packet(false), PacketError::NotTcp { protocol: 17 });
        check(&udp_packet(true), PacketError::NotTcp { protocol: 17 });

        let mut more_fragments = v4.clone();
        set_be16(&mut more_fragments, ipv4::field::FLAGS_FRAGMENT, 0x2000);
        check(
            &more_fragments,
            PacketError::Ipv4Fragment {
                offset: 0,
                more_fragments: true,
            },
        );
        let mut later_fragment = v4.clone();
        set_be16(&mut later_fragment, ipv4::field::FLAGS_FRAGMENT, 185);
        check(
            &later_fragment,
            PacketError::Ipv4Fragment {
                offset: 1480,
                more_fragments: false,
            },
        );
        assert_eq!(classify(&later_fragment), Protocol::Tcp);
        let mut dont_fragment = v4.clone();
        set_be16(&mut dont_fragment, ipv4::field::FLAGS_FRAGMENT, 0x4000);
        assert!(TcpPacket::new_checked(&dont_fragment[..]).is_ok());

        let fragment = ipv6_fragment();
        check(&fragment, PacketError::Ipv6Fragment { offset: 40 });
        assert_eq!(classify(&fragment), Protocol::Other(44));

        let v6 = ipv6_tcp(
            addr(LAN6),
            addr(SERVER6),
            hop_by_hop_and_destination_options(),
            tcp_template(),
            b"payload",
        );
        let mut long_ext = v6.clone();
        long_ext[41] = 255;
        let packet_len = v6.len();
        check(
            &long_ext,
            PacketError::Ipv6(ipv6::Error::ExtensionTruncated {
                next_header: 0,
                offset: 40,
                packet_len,
            }),
        );
        assert_eq!(classify(&long_ext), Protocol::Invalid);
    }

    #[test]
    fn classify_by_version_and_next_header() {
        let v4 = ipv4_tcp(addr(LAN), addr(SERVER), tcp_template(), b"");
        let v6 = ipv6_tcp(
            addr(LAN6),
            addr(SERVER6),
            Ipv6Extensions::default(),
            tcp_template(),
            b"",
        );
        assert_eq!(classify(&v4), Protocol::Tcp);
        assert_eq!(classify(&v6), Protocol::Tcp);
        assert_eq!(classify(&udp_packet(false)), Protocol::Udp);
        assert_eq!(classify(&udp_packet(true)), Protocol::Udp);

        let mut ping = Vec::new();
        PacketBuilder::ipv4([192, 168, 1, 23], [9, 9, 9, 9], 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut ping, b"ping")
            .expect("ping");
        assert_eq!(classify(&ping), Protocol::Icmp);
        let mut ping6 = Vec::new();
        PacketBuilder::ipv6(addr_octets(LAN6), addr_octets(SERVER6), 64)
            .icmpv6_echo_request(1, 1)
            .write(&mut ping6, b"ping")
            .expect("ping6");
        assert_eq!(classify(&ping6), Protocol::Icmp);

        let mut gre = v4.clone();
        gre[9] = 47;
        assert_eq!(classify(&gre), Protocol::Other(47));
        let mut icmp_in_v6 = v6.clone();
        icmp_in_v6[6] = 1;
        assert_eq!(classify(&icmp_in_v6), Protocol::Other(1));

        assert_eq!(classify(&[]), Protocol::Invalid);
        assert_eq!(classify(&[0x45; 19]), Protocol::Invalid);
        assert_eq!(classify(&v6[..39]), Protocol::Invalid);
        assert_eq!(classify(&[0x75; 60]), Protocol::Invalid);
        let mut short_ihl = v4.clone();
        short_ihl[0] = 0x44;
        assert_eq!(classify(&short_ihl), Protocol::Invalid);
    }

    /// A buffer of `len` bytes: fully random, a plausible IPv4 or IPv6 TCP
    /// header over random bytes, or a mutated real packet.
    fn random_buffer(rng: &mut XorShift, templates: &[Vec<u8>]) -> Vec<u8> {
        let len = rng.below(120);
        let mut buf = vec![0; len];
        rng.fill(&mut buf);
        match rng.below(4) {
            0 => {}
            1 if len >= 20 => {
                let ihl = if rng.chance(8) { rng.below(16) } else { 5 };
                buf[0] = 0x40 | ihl as u8;
                let total = if rng.chance(6) { rng.below(130) } else { len };
                buf[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                if !rng.chance(6) {
                    buf[6..8].copy_from_slice(&[0x40, 0]);
                }
                if !rng.chance(6) {
                    buf[9] = 6;
                }
                let tcp = ihl * 4 + 12;
                if tcp < len && !rng.chance(6) {
                    buf[tcp] = ((5 + rng.below(3)) << 4) as u8;
                }
            }
            2 if len >= 40 => {
                buf[0] = 0x60;
                let payload = if rng.chance(6) {
                    rng.below(90)
                } else {
                    len - 40
                };
                buf[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
                let mut at = 40;
                let mut next = 6;
                while rng.chance(3) && at + 8 <= len {
                    let ext = [0, 43, 60, 44][rng.below(4)];
                    buf[if at == 40 { 6 } else { at - 8 }] = ext;
                    buf[at + 1] = if rng.chance(5) { buf[at + 1] } else { 0 };
                    next = ext;
                    at += 8;
                }
                if next != 44 && !rng.chance(6) {
                    buf[if at == 40 { 6 } else { at - 8 }] = 6;
                }
                if at + 12 < len && !rng.chance(6) {
                    buf[at + 12] = ((5 + rng.below(3)) << 4) as u8;
                }
            }
            _ => {
                let template = &templates[rng.below(templates.len())];
                buf = template[..rng.below(template.len() + 1)].to_vec();
                for _ in 0..rng.below(4) {
                    if !buf.is_empty() {
                        let at = rng.below(buf.len());
                        buf[at] = rng.next() as u8;
                    }
                }
            }
        }
        buf
    }

    #[test]
    fn random_buffers_never_panic() {
        let templates = vec![
            ipv4_tcp(addr(LAN), addr(SERVER), tcp_template(), b"0123456789"),
            ipv6_tcp(
                addr(LAN6),
                addr(SERVER6),
                hop_by_hop_and_destination_options(),
                tcp_template(),
                b"",
            ),
            ipv6_tcp(
                addr(LAN6),
                addr(SERVER6),
                routing_header(0),
                tcp_template(),
                b"ab",
            ),
            ipv6_fragment(),
            udp_packet(false),
            udp_packet(true),
        ];
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let (mut tcp, mut answered) = (0, 0);
        for _ in 0..300_000 {
            let buf = random_buffer(&mut rng, &templates);
            let _ = classify(&buf);
            for from in [IpAddr::V4(ROUTER), IpAddr::V6(ROUTER6)] {
                if let Some(icmp) = build_icmp_unreachable_for(&buf, from) {
                    answered += 1;
                    assert_eq!(classify(&icmp), Protocol::Icmp);
                    assert!(icmp.len() <= 1280);
                }
            }
            let Ok(packet) = TcpPacket::new_checked(&buf[..]) else {
                continue;
            };
            tcp += 1;
            assert!(packet.ip_header_len() + packet.tcp_header_len() <= packet.packet_len());
            assert_eq!(
                packet.ip_header_len() + packet.tcp_header_len() + packet.payload_len(),
                packet.packet_len()
            );
            assert_eq!(packet.payload().len(), packet.payload_len());
            let _ = (packet.flags(), packet.seq(), packet.ack_number());
            let _ = (packet.src(), packet.dst(), packet.verify_checksums());
            assert_eq!(classify(&buf), Protocol::Tcp);
            if let Some(rst) = build_rst_for(&packet) {
                let rst = TcpPacket::new_checked(&rst[..]).expect("RST parses");
                assert!(rst.verify_checksums());
                assert_eq!((rst.src(), rst.dst()), (packet.dst(), packet.src()));
            }

            let mut copy = buf.clone();
            if rng.chance(2) {
                fill_checksums(&mut copy);
            }
            let mut packet = TcpPacket::new_checked(&mut copy[..]).expect("same bytes");
            let valid = packet.verify_checksums();
            let (src, dst, wrong) = if packet.is_ipv6() {
                (rng.v6(), rng.v6(), rng.v4())
            } else {
                (rng.v4(), rng.v4(), rng.v6())
            };
            assert!(packet.rewrite(wrong, dst).is_err());
            packet.rewrite(src, dst).expect("same family");
            assert_eq!((packet.src(), packet.dst()), (src, dst));
            assert_eq!(packet.verify_checksums(), valid);
        }
        assert!(tcp > 30_000, "only {tcp} buffers reached the TCP view");
        assert!(
            answered > 10_000,
            "only {answered} buffers got an ICMP answer"
        );
    }
}
