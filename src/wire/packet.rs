//! IP/TCP packet views and in-place rewrites for the client's TCP redirect.
//!
//! The client reads raw IPv4 and IPv6 packets from its TUN device (no link
//! header, no packet-info prefix). [`classify`] sorts them by protocol;
//! TCP segments are checked once with [`TcpPacket::new_checked`] and then
//! redirected onto a local kernel listener by [`TcpPacket::rewrite`], which
//! swaps addresses and ports in place and updates the checksums
//! incrementally (RFC 1624), so the kernel's own TCP stack terminates the
//! flow. [`build_rst_for`] and [`build_icmp_unreachable_for`] answer a LAN
//! host when the tunnel refuses a connection.
//!
//! Everything here reads bytes from the network: no function panics on any
//! input, and the rewrite path does not allocate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// IP protocol and IPv6 next-header numbers.
mod ip_number {
    pub(super) const HOP_BY_HOP: u8 = 0;
    pub(super) const ICMP: u8 = 1;
    pub(super) const TCP: u8 = 6;
    pub(super) const UDP: u8 = 17;
    pub(super) const ROUTING: u8 = 43;
    pub(super) const FRAGMENT: u8 = 44;
    pub(super) const ICMPV6: u8 = 58;
    pub(super) const DESTINATION_OPTIONS: u8 = 60;
}

/// Byte offsets of header fields; TCP ones are relative to the TCP header.
mod field {
    pub(super) const IPV4_VERSION_IHL: usize = 0;
    pub(super) const IPV4_TOTAL_LEN: usize = 2;
    pub(super) const IPV4_FLAGS_FRAGMENT: usize = 6;
    pub(super) const IPV4_PROTOCOL: usize = 9;
    pub(super) const IPV4_CHECKSUM: usize = 10;
    pub(super) const IPV4_SRC: usize = 12;
    pub(super) const IPV4_DST: usize = 16;
    pub(super) const IPV4_MIN_HEADER_LEN: usize = 20;

    pub(super) const IPV6_PAYLOAD_LEN: usize = 4;
    pub(super) const IPV6_NEXT_HEADER: usize = 6;
    pub(super) const IPV6_SRC: usize = 8;
    pub(super) const IPV6_DST: usize = 24;
    pub(super) const IPV6_HEADER_LEN: usize = 40;

    pub(super) const IPV6_EXT_NEXT_HEADER: usize = 0;
    pub(super) const IPV6_EXT_LEN: usize = 1;
    pub(super) const IPV6_ROUTING_SEGMENTS_LEFT: usize = 3;
    pub(super) const IPV6_FRAGMENT_OFFSET: usize = 2;
    pub(super) const IPV6_FRAGMENT_HEADER_LEN: usize = 8;

    pub(super) const TCP_SRC_PORT: usize = 0;
    pub(super) const TCP_DST_PORT: usize = 2;
    pub(super) const TCP_SEQ: usize = 4;
    pub(super) const TCP_ACK: usize = 8;
    pub(super) const TCP_DATA_OFFSET: usize = 12;
    pub(super) const TCP_FLAGS: usize = 13;
    pub(super) const TCP_CHECKSUM: usize = 16;
    pub(super) const TCP_MIN_HEADER_LEN: usize = 20;

    pub(super) const ICMP_CHECKSUM: usize = 2;
    pub(super) const ICMP_HEADER_LEN: usize = 8;
}

/// TCP flag bits in the flags byte.
mod tcp_flag {
    pub(super) const FIN: u8 = 0x01;
    pub(super) const SYN: u8 = 0x02;
    pub(super) const RST: u8 = 0x04;
    pub(super) const PSH: u8 = 0x08;
    pub(super) const ACK: u8 = 0x10;
}

/// TTL and hop limit of the packets this module builds.
const HOP_LIMIT: u8 = 64;
/// IPv4 flags word with only Don't Fragment set: an atomic datagram, so its
/// identification may be zero (RFC 6864).
const IPV4_DONT_FRAGMENT: u16 = 0x4000;
/// Precedence "internetwork control", as RFC 1812 §4.3.2.5 asks of ICMP errors.
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;
/// RFC 4443 §2.4 (c): an ICMPv6 error must not exceed the minimum IPv6 MTU.
const IPV6_MIN_MTU: usize = 1280;

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

/// Why a buffer is not a TCP segment this module can view and rewrite.
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
    /// The IPv4 header (20 bytes, or as many as its IHL says) does not fit.
    #[error("IPv4 header length {header_len} exceeds packet of {len} bytes")]
    Ipv4HeaderExceedsPacket {
        /// Header length in bytes: 20, or IHL × 4 once IHL could be read.
        header_len: usize,
        /// Bytes in the buffer.
        len: usize,
    },
    /// IHL is below the minimum of 5 words.
    #[error("IPv4 header length field is {ihl} words, below the minimum of 5")]
    Ipv4HeaderLengthTooSmall {
        /// The IHL field, in 32-bit words.
        ihl: u8,
    },
    /// Total length does not even cover the IPv4 header.
    #[error("IPv4 total length {total_len} is shorter than its {header_len}-byte header")]
    Ipv4TotalLengthTooShort {
        /// The total length field.
        total_len: usize,
        /// Header length in bytes (IHL × 4).
        header_len: usize,
    },
    /// Total length claims more bytes than the buffer has.
    #[error("IPv4 total length {total_len} exceeds packet of {len} bytes")]
    Ipv4TotalLengthExceedsPacket {
        /// The total length field.
        total_len: usize,
        /// Bytes in the buffer.
        len: usize,
    },
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
    /// The buffer is shorter than the fixed IPv6 header.
    #[error("IPv6 header of 40 bytes exceeds packet of {len} bytes")]
    Ipv6HeaderExceedsPacket {
        /// Bytes in the buffer.
        len: usize,
    },
    /// Payload length claims more bytes than follow the IPv6 header.
    #[error(
        "IPv6 payload length {payload_len} exceeds the {available} bytes after the 40-byte header"
    )]
    Ipv6PayloadExceedsPacket {
        /// The payload length field.
        payload_len: usize,
        /// Bytes in the buffer after the fixed header.
        available: usize,
    },
    /// A hop-by-hop, routing or destination options header runs past the
    /// end of the packet.
    #[error(
        "IPv6 extension header {next_header} at offset {offset} runs past \
         the end of the {packet_len}-byte packet"
    )]
    Ipv6ExtensionTruncated {
        /// The extension header's type (its predecessor's next header).
        next_header: u8,
        /// Where the extension header starts.
        offset: usize,
        /// The packet's length (40 + payload length).
        packet_len: usize,
    },
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
    /// Fewer than 20 bytes follow the IP headers.
    #[error("TCP header needs 20 bytes, the segment has {segment_len}")]
    TcpHeaderTruncated {
        /// Bytes of the packet after the IP headers.
        segment_len: usize,
    },
    /// The data offset is below the minimum of 5 words.
    #[error("TCP data offset is {data_offset} words, below the minimum of 5")]
    TcpDataOffsetTooSmall {
        /// The data offset field, in 32-bit words.
        data_offset: u8,
    },
    /// The data offset points past the end of the segment.
    #[error("TCP header length {header_len} exceeds segment of {segment_len} bytes")]
    TcpHeaderExceedsSegment {
        /// Header length in bytes (data offset × 4).
        header_len: usize,
        /// Bytes of the packet after the IP headers.
        segment_len: usize,
    },
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

/// The TCP flags a redirect cares about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags {
    /// SYN: synchronize sequence numbers.
    pub syn: bool,
    /// ACK: the acknowledgment number is significant.
    pub ack: bool,
    /// FIN: no more data from the sender.
    pub fin: bool,
    /// RST: reset the connection.
    pub rst: bool,
    /// PSH: push function.
    pub psh: bool,
}

impl TcpFlags {
    fn from_byte(byte: u8) -> Self {
        Self {
            syn: byte & tcp_flag::SYN != 0,
            ack: byte & tcp_flag::ACK != 0,
            fin: byte & tcp_flag::FIN != 0,
            rst: byte & tcp_flag::RST != 0,
            psh: byte & tcp_flag::PSH != 0,
        }
    }
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
        self.endpoint(field::IPV4_SRC, field::IPV6_SRC, field::TCP_SRC_PORT)
    }

    /// Destination address and port.
    pub fn dst(&self) -> SocketAddr {
        self.endpoint(field::IPV4_DST, field::IPV6_DST, field::TCP_DST_PORT)
    }

    /// The SYN, ACK, FIN, RST and PSH flags.
    pub fn flags(&self) -> TcpFlags {
        TcpFlags::from_byte(byte(self.buffer.as_ref(), self.tcp(field::TCP_FLAGS)))
    }

    /// Sequence number.
    pub fn seq(&self) -> u32 {
        be32(self.buffer.as_ref(), self.tcp(field::TCP_SEQ))
    }

    /// Acknowledgment number (meaningful when [`TcpFlags::ack`] is set).
    pub fn ack_number(&self) -> u32 {
        be32(self.buffer.as_ref(), self.tcp(field::TCP_ACK))
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
                field::IPV6_SRC..field::IPV6_DST,
                field::IPV6_DST..field::IPV6_HEADER_LEN,
            )
        } else {
            let header_ok = packet
                .get(..tcp_at)
                .is_some_and(|header| fold(sum_words(header)) == 0xffff);
            if !header_ok {
                return false;
            }
            (
                field::IPV4_SRC..field::IPV4_DST,
                field::IPV4_DST..field::IPV4_MIN_HEADER_LEN,
            )
        };
        let pseudo = pseudo_header_sum(
            packet.get(src).unwrap_or_default(),
            packet.get(dst).unwrap_or_default(),
            ip_number::TCP,
            segment.len(),
        );
        fold(pseudo + sum_words(segment)) == 0xffff
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
                replace(packet, field::IPV4_SRC, s, &mut address_delta);
                replace(packet, field::IPV4_DST, d, &mut address_delta);
                adjust_checksum(packet, field::IPV4_CHECKSUM, address_delta);
            }
            Addresses::V6(s, d) => {
                replace(packet, field::IPV6_SRC, s, &mut address_delta);
                replace(packet, field::IPV6_DST, d, &mut address_delta);
            }
        }
        let mut tcp_delta = address_delta;
        let src_port = tcp_at + field::TCP_SRC_PORT;
        let dst_port = tcp_at + field::TCP_DST_PORT;
        replace(packet, src_port, src.port().to_be_bytes(), &mut tcp_delta);
        replace(packet, dst_port, dst.port().to_be_bytes(), &mut tcp_delta);
        adjust_checksum(packet, tcp_at + field::TCP_CHECKSUM, tcp_delta);
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

        let segment_len = packet_len.saturating_sub(tcp_at);
        if segment_len < field::TCP_MIN_HEADER_LEN {
            return Err(PacketError::TcpHeaderTruncated { segment_len });
        }
        let data_offset = byte(buf, tcp_at + field::TCP_DATA_OFFSET) >> 4;
        if data_offset < 5 {
            return Err(PacketError::TcpDataOffsetTooSmall { data_offset });
        }
        let tcp_header_len = usize::from(data_offset) * 4;
        if tcp_header_len > segment_len {
            return Err(PacketError::TcpHeaderExceedsSegment {
                header_len: tcp_header_len,
                segment_len,
            });
        }
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
    let len = buf.len();
    if len < field::IPV4_MIN_HEADER_LEN {
        return Err(PacketError::Ipv4HeaderExceedsPacket {
            header_len: field::IPV4_MIN_HEADER_LEN,
            len,
        });
    }
    let ihl = byte(buf, field::IPV4_VERSION_IHL) & 0x0f;
    if ihl < 5 {
        return Err(PacketError::Ipv4HeaderLengthTooSmall { ihl });
    }
    let header_len = usize::from(ihl) * 4;
    if header_len > len {
        return Err(PacketError::Ipv4HeaderExceedsPacket { header_len, len });
    }
    let total_len = usize::from(be16(buf, field::IPV4_TOTAL_LEN));
    if total_len < header_len {
        return Err(PacketError::Ipv4TotalLengthTooShort {
            total_len,
            header_len,
        });
    }
    if total_len > len {
        return Err(PacketError::Ipv4TotalLengthExceedsPacket { total_len, len });
    }
    let flags_fragment = be16(buf, field::IPV4_FLAGS_FRAGMENT);
    let offset = usize::from(flags_fragment & 0x1fff) * 8;
    let more_fragments = flags_fragment & 0x2000 != 0;
    if offset != 0 || more_fragments {
        return Err(PacketError::Ipv4Fragment {
            offset,
            more_fragments,
        });
    }
    let protocol = byte(buf, field::IPV4_PROTOCOL);
    if protocol != ip_number::TCP {
        return Err(PacketError::NotTcp { protocol });
    }
    Ok((header_len, total_len))
}

/// Checks an IPv6 header chain ending in TCP; returns the offset of the TCP
/// header and the packet length.
fn parse_ipv6(buf: &[u8]) -> Result<(usize, usize), PacketError> {
    let len = buf.len();
    if len < field::IPV6_HEADER_LEN {
        return Err(PacketError::Ipv6HeaderExceedsPacket { len });
    }
    let payload_len = usize::from(be16(buf, field::IPV6_PAYLOAD_LEN));
    let available = len - field::IPV6_HEADER_LEN;
    if payload_len > available {
        return Err(PacketError::Ipv6PayloadExceedsPacket {
            payload_len,
            available,
        });
    }
    let packet_len = field::IPV6_HEADER_LEN + payload_len;
    let packet = buf.get(..packet_len).unwrap_or_default();
    let upper = walk_ipv6_extensions(
        packet,
        byte(packet, field::IPV6_NEXT_HEADER),
        field::IPV6_HEADER_LEN,
    )?;
    if upper.next_header == ip_number::FRAGMENT {
        return Err(PacketError::Ipv6Fragment {
            offset: upper.offset,
        });
    }
    if upper.next_header != ip_number::TCP {
        return Err(PacketError::NotTcp {
            protocol: upper.next_header,
        });
    }
    if upper.segments_left != 0 {
        return Err(PacketError::Ipv6RoutingSegmentsLeft {
            segments_left: upper.segments_left,
        });
    }
    Ok((upper.offset, packet_len))
}

/// The first IPv6 header that is not hop-by-hop, routing or destination
/// options.
struct Ipv6Upper {
    next_header: u8,
    offset: usize,
    /// The largest Segments Left of any routing header passed.
    segments_left: u8,
}

/// Walks hop-by-hop, routing and destination options headers in `packet`
/// (bounded to the packet's own length), starting with a header of type
/// `next_header` at `offset`.
fn walk_ipv6_extensions(
    packet: &[u8],
    mut next_header: u8,
    mut offset: usize,
) -> Result<Ipv6Upper, PacketError> {
    let mut segments_left = 0;
    while matches!(
        next_header,
        ip_number::HOP_BY_HOP | ip_number::ROUTING | ip_number::DESTINATION_OPTIONS
    ) {
        let truncated = PacketError::Ipv6ExtensionTruncated {
            next_header,
            offset,
            packet_len: packet.len(),
        };
        let Some(&ext_len) = packet.get(offset + field::IPV6_EXT_LEN) else {
            return Err(truncated);
        };
        let header_len = (usize::from(ext_len) + 1) * 8;
        if offset + header_len > packet.len() {
            return Err(truncated);
        }
        if next_header == ip_number::ROUTING {
            segments_left =
                segments_left.max(byte(packet, offset + field::IPV6_ROUTING_SEGMENTS_LEFT));
        }
        next_header = byte(packet, offset + field::IPV6_EXT_NEXT_HEADER);
        offset += header_len;
    }
    Ok(Ipv6Upper {
        next_header,
        offset,
        segments_left,
    })
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
            if buf.len() < field::IPV4_MIN_HEADER_LEN || first & 0x0f < 5 {
                return Protocol::Invalid;
            }
            match byte(buf, field::IPV4_PROTOCOL) {
                ip_number::TCP => Protocol::Tcp,
                ip_number::UDP => Protocol::Udp,
                ip_number::ICMP => Protocol::Icmp,
                other => Protocol::Other(other),
            }
        }
        6 => {
            if buf.len() < field::IPV6_HEADER_LEN {
                return Protocol::Invalid;
            }
            let next_header = byte(buf, field::IPV6_NEXT_HEADER);
            match walk_ipv6_extensions(buf, next_header, field::IPV6_HEADER_LEN) {
                Ok(upper) => match upper.next_header {
                    ip_number::TCP => Protocol::Tcp,
                    ip_number::UDP => Protocol::Udp,
                    ip_number::ICMPV6 => Protocol::Icmp,
                    other => Protocol::Other(other),
                },
                Err(_) => Protocol::Invalid,
            }
        }
        _ => Protocol::Invalid,
    }
}

/// Builds the reset that refuses `segment`, from its destination to its
/// source, as RFC 9293 §3.10.7.1 prescribes (and Linux sends):
///
/// - if the segment has ACK set: RST with `seq` = its acknowledgment number
///   and no ACK;
/// - otherwise (a SYN, typically): RST|ACK with `seq` = 0 and `ack` = its
///   sequence number + payload length + SYN + FIN.
///
/// Same IP family, no options, window 0, TTL/hop limit 64, correct
/// checksums. Returns `None` for a segment that is itself a reset: a reset
/// is never answered.
pub fn build_rst_for<T: AsRef<[u8]>>(segment: &TcpPacket<T>) -> Option<Vec<u8>> {
    let flags = segment.flags();
    if flags.rst {
        return None;
    }
    let (seq, ack, control) = if flags.ack {
        (segment.ack_number(), 0, tcp_flag::RST)
    } else {
        // A checked segment's payload is below 64 KiB, so this cannot truncate.
        let segment_len = (segment.payload_len() as u32)
            .wrapping_add(u32::from(flags.syn))
            .wrapping_add(u32::from(flags.fin));
        (
            0,
            segment.seq().wrapping_add(segment_len),
            tcp_flag::RST | tcp_flag::ACK,
        )
    };
    let (src, dst) = (segment.dst(), segment.src());
    let mut tcp = [0; field::TCP_MIN_HEADER_LEN];
    tcp[field::TCP_SRC_PORT..field::TCP_SRC_PORT + 2].copy_from_slice(&src.port().to_be_bytes());
    tcp[field::TCP_DST_PORT..field::TCP_DST_PORT + 2].copy_from_slice(&dst.port().to_be_bytes());
    tcp[field::TCP_SEQ..field::TCP_SEQ + 4].copy_from_slice(&seq.to_be_bytes());
    tcp[field::TCP_ACK..field::TCP_ACK + 4].copy_from_slice(&ack.to_be_bytes());
    tcp[field::TCP_DATA_OFFSET] = 5 << 4;
    tcp[field::TCP_FLAGS] = control;
    emit(
        src.ip(),
        dst.ip(),
        ip_number::TCP,
        0,
        &mut tcp,
        field::TCP_CHECKSUM,
    )
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
        (4, IpAddr::V4(from)) => icmpv4_unreachable(packet, from),
        (6, IpAddr::V6(from)) => icmpv6_unreachable(packet, from),
        _ => None,
    }
}

fn icmpv4_unreachable(packet: &[u8], from: Ipv4Addr) -> Option<Vec<u8>> {
    const DESTINATION_UNREACHABLE: u8 = 3;
    const HOST_UNREACHABLE: u8 = 1;
    /// Unreachable, source quench, redirect, time exceeded, parameter problem.
    const ERROR_TYPES: [u8; 5] = [3, 4, 5, 11, 12];

    if packet.len() < field::IPV4_MIN_HEADER_LEN {
        return None;
    }
    let header_len = usize::from(byte(packet, field::IPV4_VERSION_IHL) & 0x0f) * 4;
    let total_len = usize::from(be16(packet, field::IPV4_TOTAL_LEN)).min(packet.len());
    if header_len < field::IPV4_MIN_HEADER_LEN || header_len > total_len {
        return None;
    }
    let packet = packet.get(..total_len)?;
    if be16(packet, field::IPV4_FLAGS_FRAGMENT) & 0x1fff != 0 {
        return None;
    }
    let src = Ipv4Addr::from(bytes::<4>(packet, field::IPV4_SRC)?);
    let dst = Ipv4Addr::from(bytes::<4>(packet, field::IPV4_DST)?);
    let single_host = !(src.octets()[0] == 0
        || src.is_loopback()
        || src.is_multicast()
        || src.is_broadcast()
        || src.octets()[0] >= 240);
    if !single_host || dst.is_multicast() || dst.is_broadcast() {
        return None;
    }
    if byte(packet, field::IPV4_PROTOCOL) == ip_number::ICMP {
        let icmp_type = packet.get(header_len)?;
        if ERROR_TYPES.contains(icmp_type) {
            return None;
        }
    }
    let quoted = packet.get(..total_len.min(header_len + 8))?;
    let mut message = Vec::with_capacity(field::ICMP_HEADER_LEN + quoted.len());
    message.extend_from_slice(&[DESTINATION_UNREACHABLE, HOST_UNREACHABLE, 0, 0, 0, 0, 0, 0]);
    message.extend_from_slice(quoted);
    emit(
        IpAddr::V4(from),
        IpAddr::V4(src),
        ip_number::ICMP,
        TOS_INTERNETWORK_CONTROL,
        &mut message,
        field::ICMP_CHECKSUM,
    )
}

fn icmpv6_unreachable(packet: &[u8], from: Ipv6Addr) -> Option<Vec<u8>> {
    const DESTINATION_UNREACHABLE: u8 = 1;
    const ADDRESS_UNREACHABLE: u8 = 3;
    const FIRST_INFORMATIONAL_TYPE: u8 = 128;
    const REDIRECT: u8 = 137;

    if packet.len() < field::IPV6_HEADER_LEN {
        return None;
    }
    let packet_len = (field::IPV6_HEADER_LEN + usize::from(be16(packet, field::IPV6_PAYLOAD_LEN)))
        .min(packet.len());
    let packet = packet.get(..packet_len)?;
    let src = Ipv6Addr::from(bytes::<16>(packet, field::IPV6_SRC)?);
    let dst = Ipv6Addr::from(bytes::<16>(packet, field::IPV6_DST)?);
    if src.is_unspecified() || src.is_loopback() || src.is_multicast() || dst.is_multicast() {
        return None;
    }
    let mut upper = walk_ipv6_extensions(
        packet,
        byte(packet, field::IPV6_NEXT_HEADER),
        field::IPV6_HEADER_LEN,
    )
    .ok()?;
    if upper.next_header == ip_number::FRAGMENT {
        let fragment = bytes::<{ field::IPV6_FRAGMENT_HEADER_LEN }>(packet, upper.offset)?;
        let offset_flags = u16::from_be_bytes([
            fragment[field::IPV6_FRAGMENT_OFFSET],
            fragment[field::IPV6_FRAGMENT_OFFSET + 1],
        ]);
        // A later fragment hides whether the datagram is itself an ICMPv6 error.
        if offset_flags >> 3 != 0 {
            return None;
        }
        upper = walk_ipv6_extensions(
            packet,
            fragment[field::IPV6_EXT_NEXT_HEADER],
            upper.offset + field::IPV6_FRAGMENT_HEADER_LEN,
        )
        .ok()?;
    }
    if upper.next_header == ip_number::ICMPV6 {
        let icmp_type = *packet.get(upper.offset)?;
        if icmp_type < FIRST_INFORMATIONAL_TYPE || icmp_type == REDIRECT {
            return None;
        }
    }
    let room = IPV6_MIN_MTU - field::IPV6_HEADER_LEN - field::ICMP_HEADER_LEN;
    let quoted = packet.get(..packet_len.min(room))?;
    let mut message = Vec::with_capacity(field::ICMP_HEADER_LEN + quoted.len());
    message.extend_from_slice(&[
        DESTINATION_UNREACHABLE,
        ADDRESS_UNREACHABLE,
        0,
        0,
        0,
        0,
        0,
        0,
    ]);
    message.extend_from_slice(quoted);
    emit(
        IpAddr::V6(from),
        IpAddr::V6(src),
        ip_number::ICMPV6,
        0,
        &mut message,
        field::ICMP_CHECKSUM,
    )
}

/// Puts `message` (an upper-layer header and data, checksum field zero) in an
/// IP packet from `src` to `dst`, filling in the message's checksum at
/// `checksum_at`: over the message alone for ICMPv4, with the pseudo-header
/// for everything else. `None` if the families differ or it would not fit.
fn emit(
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
            let total_len = message_len.checked_add(field::IPV4_MIN_HEADER_LEN as u16)?;
            let mut header = [0; field::IPV4_MIN_HEADER_LEN];
            header[field::IPV4_VERSION_IHL] = 0x45;
            header[1] = tos;
            header[field::IPV4_TOTAL_LEN..field::IPV4_TOTAL_LEN + 2]
                .copy_from_slice(&total_len.to_be_bytes());
            header[field::IPV4_FLAGS_FRAGMENT..field::IPV4_FLAGS_FRAGMENT + 2]
                .copy_from_slice(&IPV4_DONT_FRAGMENT.to_be_bytes());
            header[8] = HOP_LIMIT;
            header[field::IPV4_PROTOCOL] = protocol;
            header[field::IPV4_SRC..field::IPV4_DST].copy_from_slice(&src.octets());
            header[field::IPV4_DST..field::IPV4_MIN_HEADER_LEN].copy_from_slice(&dst.octets());
            let checksum = !fold(sum_words(&header));
            header[field::IPV4_CHECKSUM..field::IPV4_CHECKSUM + 2]
                .copy_from_slice(&checksum.to_be_bytes());
            packet = Vec::with_capacity(header.len() + message.len());
            packet.extend_from_slice(&header);
            if protocol == ip_number::ICMP {
                0
            } else {
                pseudo_header_sum(&src.octets(), &dst.octets(), protocol, message.len())
            }
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let mut header = [0; field::IPV6_HEADER_LEN];
            header[0] = 0x60;
            header[field::IPV6_PAYLOAD_LEN..field::IPV6_PAYLOAD_LEN + 2]
                .copy_from_slice(&message_len.to_be_bytes());
            header[field::IPV6_NEXT_HEADER] = protocol;
            header[7] = HOP_LIMIT;
            header[field::IPV6_SRC..field::IPV6_DST].copy_from_slice(&src.octets());
            header[field::IPV6_DST..field::IPV6_HEADER_LEN].copy_from_slice(&dst.octets());
            packet = Vec::with_capacity(header.len() + message.len());
            packet.extend_from_slice(&header);
            pseudo_header_sum(&src.octets(), &dst.octets(), protocol, message.len())
        }
        _ => return None,
    };
    let checksum = !fold(pseudo + sum_words(message));
    message
        .get_mut(checksum_at..checksum_at + 2)?
        .copy_from_slice(&checksum.to_be_bytes());
    packet.extend_from_slice(message);
    Some(packet)
}

/// Overwrites the `N` bytes at `at` with `new`, adding the change to the
/// ones-complement `delta` (`~old + new`, word by word).
fn replace<const N: usize>(packet: &mut [u8], at: usize, new: [u8; N], delta: &mut u64) {
    let Some(slot) = packet
        .get_mut(at..at + N)
        .and_then(|slot| <&mut [u8; N]>::try_from(slot).ok())
    else {
        return;
    };
    *delta += sum_complemented_words(slot) + sum_words(&new);
    *slot = new;
}

/// Applies `delta` (from [`replace`]) to the checksum at `at`: RFC 1624
/// equation 3, `HC' = ~(~HC + ~m + m')`.
fn adjust_checksum(packet: &mut [u8], at: usize, delta: u64) {
    let Some(slot) = packet
        .get_mut(at..at + 2)
        .and_then(|slot| <&mut [u8; 2]>::try_from(slot).ok())
    else {
        return;
    };
    let old = u16::from_be_bytes(*slot);
    let sum = fold(u64::from(!old) + delta);
    // The sum folds to +0 only when every term was zero (an old checksum of
    // 0xffff and no net change). The headers it covers are never all zero, so
    // the true sum is the other zero, 0xffff, and a full computation gives a
    // checksum of 0x0000: say so rather than 0xffff.
    let sum = if sum == 0 { 0xffff } else { sum };
    *slot = (!sum).to_be_bytes();
}

/// Ones-complement sum of the TCP/UDP/ICMPv6 pseudo-header (IPv4 or IPv6,
/// by address length), unfolded.
fn pseudo_header_sum(src: &[u8], dst: &[u8], protocol: u8, upper_len: usize) -> u64 {
    sum_words(src)
        + sum_words(dst)
        + u64::from(protocol)
        + (upper_len as u64 >> 16)
        + (upper_len as u64 & 0xffff)
}

/// Sum of `data` as big-endian 16-bit words (an odd last byte padded with
/// zero), unfolded.
fn sum_words(data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(2);
    let mut sum: u64 = words
        .by_ref()
        .map(|word| match word {
            [hi, lo] => u64::from(u16::from_be_bytes([*hi, *lo])),
            _ => 0,
        })
        .sum();
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Sum of the ones complements of the 16-bit words of an even-length `data`.
fn sum_complemented_words(data: &[u8]) -> u64 {
    data.chunks_exact(2)
        .map(|word| match word {
            [hi, lo] => u64::from(!u16::from_be_bytes([*hi, *lo])),
            _ => 0,
        })
        .sum()
}

/// Folds an unfolded ones-complement sum into 16 bits (end-around carry).
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn bytes<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn byte(buf: &[u8], at: usize) -> u8 {
    buf.get(at).copied().unwrap_or(0)
}

fn be16(buf: &[u8], at: usize) -> u16 {
    bytes(buf, at).map_or(0, u16::from_be_bytes)
}

fn be32(buf: &[u8], at: usize) -> u32 {
    bytes(buf, at).map_or(0, u32::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{
        ip_number as ep_ip, IpHeaders, Ipv4Header, Ipv6Extensions, Ipv6Header, Ipv6RawExtHeader,
        Ipv6RoutingExtensions, NetHeaders, PacketBuilder, PacketHeaders, TcpHeader,
        TransportHeader,
    };

    /// A seeded xorshift64 generator: reproducible randomness without a
    /// dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn chance(&mut self, one_in: usize) -> bool {
            self.below(one_in) == 0
        }

        fn fill(&mut self, buf: &mut [u8]) {
            for b in buf {
                *b = self.next() as u8;
            }
        }

        fn bytes<const N: usize>(&mut self) -> [u8; N] {
            let mut out = [0; N];
            match self.below(8) {
                0 => {}
                1 => out = [0xff; N],
                _ => self.fill(&mut out),
            }
            out
        }

        fn port(&mut self) -> u16 {
            match self.below(8) {
                0 => 0,
                1 => u16::MAX,
                _ => self.next() as u16,
            }
        }

        fn v4(&mut self) -> SocketAddr {
            SocketAddr::new(Ipv4Addr::from(self.bytes::<4>()).into(), self.port())
        }

        fn v6(&mut self) -> SocketAddr {
            SocketAddr::new(Ipv6Addr::from(self.bytes::<16>()).into(), self.port())
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    const LAN: &str = "192.168.1.23:51000";
    const SERVER: &str = "93.184.216.34:443";
    const FAKE: &str = "10.255.0.7:40001";
    const TUN: &str = "10.0.0.1:7000";
    const LAN6: &str = "[2001:db8:1::23]:51000";
    const SERVER6: &str = "[2606:2800:220:1:248:1893:25c8:1946]:443";
    const FAKE6: &str = "[fd00:ff::7]:40001";
    const TUN6: &str = "[fd00::1]:7000";

    /// An ACK|PSH segment header with 20 bytes of options (MSS, SACK
    /// permitted, timestamps, NOP, window scale).
    fn tcp_template() -> TcpHeader {
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

    fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr) -> Ipv4Header {
        let mut ip =
            Ipv4Header::new(0, 64, ep_ip::TCP, src.octets(), dst.octets()).expect("ipv4 header");
        ip.identification = 0x4321;
        ip.dont_fragment = true;
        ip
    }

    /// An IPv4 TCP packet with 4 bytes of IP options (NOP, NOP, NOP, EOL).
    fn ipv4_tcp(src: SocketAddr, dst: SocketAddr, mut tcp: TcpHeader, payload: &[u8]) -> Vec<u8> {
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

    fn ipv6_tcp(
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
    fn hop_by_hop_and_destination_options() -> Ipv6Extensions {
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

    fn routing_header(segments_left: u8) -> Ipv6Extensions {
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
    struct Reference {
        src: SocketAddr,
        dst: SocketAddr,
        tcp_checksum: u16,
        full_tcp_checksum: u16,
        /// IPv4 only: the header checksum field and a full computation.
        ip_checksum: Option<(u16, u16)>,
        payload: Vec<u8>,
    }

    fn reference(bytes: &[u8]) -> Reference {
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
    fn rewrite_and_check(bytes: &mut [u8], src: SocketAddr, dst: SocketAddr) {
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

    /// Writes correct checksums into a packet that `Layout::parse` accepts.
    fn fill_checksums(buf: &mut [u8]) {
        let layout = Layout::parse(buf).expect("parsable");
        let tcp_checksum = layout.tcp_at + field::TCP_CHECKSUM;
        buf[tcp_checksum..tcp_checksum + 2].fill(0);
        let packet = &mut buf[..layout.packet_len];
        let (src, dst) = if layout.ipv6 {
            (field::IPV6_SRC..field::IPV6_DST, field::IPV6_DST..40)
        } else {
            packet[10..12].fill(0);
            let sum = !fold(sum_words(&packet[..layout.tcp_at]));
            packet[10..12].copy_from_slice(&sum.to_be_bytes());
            (field::IPV4_SRC..field::IPV4_DST, field::IPV4_DST..20)
        };
        let segment = &packet[layout.tcp_at..];
        let pseudo = pseudo_header_sum(&packet[src], &packet[dst], 6, segment.len());
        let sum = !fold(pseudo + sum_words(segment));
        packet[tcp_checksum..tcp_checksum + 2].copy_from_slice(&sum.to_be_bytes());
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

    fn addr_octets(s: &str) -> [u8; 16] {
        match addr(s).ip() {
            IpAddr::V6(ip) => ip.octets(),
            IpAddr::V4(_) => panic!("not IPv6"),
        }
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

    fn set_be16(bytes: &mut [u8], at: usize, value: u16) {
        bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
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
            set_be16(&mut bytes, field::IPV4_CHECKSUM, 0xffff);
        }
        let tcp_at = TcpPacket::new_checked(&bytes[..])
            .expect("valid")
            .ip_header_len();
        assert_eq!(bytes[tcp_at + 16..tcp_at + 18], [0, 0]);
        set_be16(&mut bytes, tcp_at + field::TCP_CHECKSUM, 0xffff);
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
            let tcp_checksum = tcp_at + field::TCP_CHECKSUM;
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
        let tcp_checksum = 24 + field::TCP_CHECKSUM;
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
                1..=19 => PacketError::Ipv4HeaderExceedsPacket {
                    header_len: 20,
                    len,
                },
                20..=23 => PacketError::Ipv4HeaderExceedsPacket {
                    header_len: 24,
                    len,
                },
                _ => PacketError::Ipv4TotalLengthExceedsPacket {
                    total_len: total,
                    len,
                },
            };
            assert_eq!(TcpPacket::new_checked(&v4[..len]).err(), Some(expected));

            // The same prefix with its length field believing it.
            if len >= 24 {
                let mut cut = v4[..len].to_vec();
                set_be16(&mut cut, field::IPV4_TOTAL_LEN, len as u16);
                let segment_len = len - 24;
                let result = TcpPacket::new_checked(&cut[..]).err();
                match segment_len {
                    0..=19 => assert_eq!(
                        result,
                        Some(PacketError::TcpHeaderTruncated { segment_len })
                    ),
                    20..=39 => assert_eq!(
                        result,
                        Some(PacketError::TcpHeaderExceedsSegment {
                            header_len: 40,
                            segment_len
                        })
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
                1..=39 => PacketError::Ipv6HeaderExceedsPacket { len },
                _ => PacketError::Ipv6PayloadExceedsPacket {
                    payload_len,
                    available: len - 40,
                },
            };
            assert_eq!(TcpPacket::new_checked(&v6[..len]).err(), Some(expected));

            if len >= 40 {
                let mut cut = v6[..len].to_vec();
                set_be16(&mut cut, field::IPV6_PAYLOAD_LEN, (len - 40) as u16);
                let result = TcpPacket::new_checked(&cut[..]).err();
                let segment_len = len.saturating_sub(64);
                let expected = match len {
                    40..=47 => Some(PacketError::Ipv6ExtensionTruncated {
                        next_header: 0,
                        offset: 40,
                        packet_len: len,
                    }),
                    48..=63 => Some(PacketError::Ipv6ExtensionTruncated {
                        next_header: 60,
                        offset: 48,
                        packet_len: len,
                    }),
                    64..=83 => Some(PacketError::TcpHeaderTruncated { segment_len }),
                    84..=103 => Some(PacketError::TcpHeaderExceedsSegment {
                        header_len: 40,
                        segment_len,
                    }),
                    _ => None,
                };
                assert_eq!(result, expected, "length {len}");
            }
        }
    }

    fn udp_packet(ipv6: bool) -> Vec<u8> {
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
            PacketError::Ipv4HeaderLengthTooSmall { ihl: 4 },
        );
        check(
            &patched(0, 0x40),
            PacketError::Ipv4HeaderLengthTooSmall { ihl: 0 },
        );
        check(
            &patched(0, 0x4f),
            PacketError::TcpHeaderTruncated { segment_len: 11 },
        );
        check(
            &patched(0, 0x55),
            PacketError::UnknownVersion { version: 5 },
        );
        check(
            &patched(3, 10),
            PacketError::Ipv4TotalLengthTooShort {
                total_len: 10,
                header_len: 24,
            },
        );
        check(
            &patched(24 + 12, 0x40),
            PacketError::TcpDataOffsetTooSmall { data_offset: 4 },
        );
        check(
            &patched(24 + 12, 0xf0),
            PacketError::TcpHeaderExceedsSegment {
                header_len: 60,
                segment_len: 47,
            },
        );

        let mut bare_tcp = TcpHeader::new(0, 0, 1, 1);
        bare_tcp.syn = true;
        let mut bare = ipv4_tcp(addr(LAN), addr(SERVER), bare_tcp, &[]);
        bare[24 + 12] = 0x60;
        check(
            &bare,
            PacketError::TcpHeaderExceedsSegment {
                header_len: 24,
                segment_len: 20,
            },
        );

        check(&udp_packet(false), PacketError::NotTcp { protocol: 17 });
        check(&udp_packet(true), PacketError::NotTcp { protocol: 17 });

        let mut more_fragments = v4.clone();
        set_be16(&mut more_fragments, field::IPV4_FLAGS_FRAGMENT, 0x2000);
        check(
            &more_fragments,
            PacketError::Ipv4Fragment {
                offset: 0,
                more_fragments: true,
            },
        );
        let mut later_fragment = v4.clone();
        set_be16(&mut later_fragment, field::IPV4_FLAGS_FRAGMENT, 185);
        check(
            &later_fragment,
            PacketError::Ipv4Fragment {
                offset: 1480,
                more_fragments: false,
            },
        );
        assert_eq!(classify(&later_fragment), Protocol::Tcp);
        let mut dont_fragment = v4.clone();
        set_be16(&mut dont_fragment, field::IPV4_FLAGS_FRAGMENT, 0x4000);
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
            PacketError::Ipv6ExtensionTruncated {
                next_header: 0,
                offset: 40,
                packet_len,
            },
        );
        assert_eq!(classify(&long_ext), Protocol::Invalid);
    }

    /// An IPv6 TCP packet behind an atomic fragment header.
    fn ipv6_fragment() -> Vec<u8> {
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
        set_be16(&mut bytes, field::IPV6_PAYLOAD_LEN, payload_len as u16);
        bytes.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 7]);
        bytes.extend_from_slice(&whole[40..]);
        bytes
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

    /// Parses a built TCP packet with etherparse and checks its checksums.
    fn parse_built_tcp(bytes: &[u8]) -> (TcpHeader, Reference) {
        let r = reference(bytes);
        assert_eq!(r.tcp_checksum, r.full_tcp_checksum, "TCP checksum");
        if let Some((field, full)) = r.ip_checksum {
            assert_eq!(field, full, "IPv4 header checksum");
        }
        let headers = PacketHeaders::from_ip_slice(bytes).expect("parses");
        match headers.net {
            Some(NetHeaders::Ipv4(ip, _)) => {
                assert_eq!(ip.time_to_live, 64);
                assert_eq!(usize::from(ip.total_len), bytes.len());
            }
            Some(NetHeaders::Ipv6(ip, _)) => {
                assert_eq!(ip.hop_limit, 64);
                assert_eq!(usize::from(ip.payload_length) + 40, bytes.len());
            }
            _ => panic!("no IP header"),
        }
        let Some(TransportHeader::Tcp(tcp)) = headers.transport else {
            panic!("no TCP header");
        };
        assert!(TcpPacket::new_checked(bytes)
            .expect("own view")
            .verify_checksums());
        (tcp, r)
    }

    #[test]
    fn rst_for_a_syn_acknowledges_it() {
        for (client, server, ipv6) in [(LAN, SERVER, false), (LAN6, SERVER6, true)] {
            let mut syn = TcpHeader::new(0, 0, 1000, 64240);
            syn.syn = true;
            let bytes = if ipv6 {
                ipv6_tcp(
                    addr(client),
                    addr(server),
                    Ipv6Extensions::default(),
                    syn,
                    &[],
                )
            } else {
                ipv4_tcp(addr(client), addr(server), syn, &[])
            };
            let segment = TcpPacket::new_checked(&bytes[..]).expect("valid");
            let rst = build_rst_for(&segment).expect("a SYN is answered");
            let (tcp, r) = parse_built_tcp(&rst);
            assert_eq!((r.src, r.dst), (addr(server), addr(client)));
            assert!(tcp.rst && tcp.ack && !tcp.syn && !tcp.fin && !tcp.psh);
            assert_eq!(tcp.sequence_number, 0);
            assert_eq!(tcp.acknowledgment_number, 1001);
            assert!(r.payload.is_empty());
        }

        // A SYN with data (TCP Fast Open) and FIN: all of it is acknowledged.
        let mut syn = TcpHeader::new(0, 0, u32::MAX - 5, 64240);
        syn.syn = true;
        syn.fin = true;
        let bytes = ipv4_tcp(addr(LAN), addr(SERVER), syn, b"0123456789");
        let segment = TcpPacket::new_checked(&bytes[..]).expect("valid");
        let (tcp, _) = parse_built_tcp(&build_rst_for(&segment).expect("answered"));
        assert_eq!(tcp.acknowledgment_number, 6, "wraps around");
    }

    #[test]
    fn rst_for_a_segment_with_ack_takes_its_sequence_from_the_ack() {
        for (client, server, ipv6) in [(LAN, SERVER, false), (LAN6, SERVER6, true)] {
            let mut data = TcpHeader::new(0, 0, 5000, 64240);
            data.ack = true;
            data.psh = true;
            data.acknowledgment_number = 7000;
            let bytes = if ipv6 {
                let exts = hop_by_hop_and_destination_options();
                ipv6_tcp(addr(client), addr(server), exts, data, &[0x55; 100])
            } else {
                ipv4_tcp(addr(client), addr(server), data, &[0x55; 100])
            };
            let segment = TcpPacket::new_checked(&bytes[..]).expect("valid");
            let rst = build_rst_for(&segment).expect("answered");
            let (tcp, r) = parse_built_tcp(&rst);
            assert_eq!((r.src, r.dst), (addr(server), addr(client)));
            assert!(tcp.rst && !tcp.ack && !tcp.syn);
            assert_eq!(tcp.sequence_number, 7000);
            assert_eq!(tcp.acknowledgment_number, 0);
        }
    }

    #[test]
    fn rst_is_never_answered() {
        let mut rst = TcpHeader::new(0, 0, 5000, 0);
        rst.rst = true;
        let bytes = ipv4_tcp(addr(LAN), addr(SERVER), rst, &[]);
        let segment = TcpPacket::new_checked(&bytes[..]).expect("valid");
        assert_eq!(build_rst_for(&segment), None);
    }

    const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const ROUTER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);

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
        set_be16(&mut short, field::IPV4_TOTAL_LEN, 27);
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
