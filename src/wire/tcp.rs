//! The TCP header (RFC 9293): a checked view of a segment, its flags, and
//! the reset that refuses one.

use super::ip::{self, number, TcpPacket};
use super::{be16, be32, byte};

/// Byte offsets of the header's fields, from the start of the segment.
pub mod field {
    /// Source port.
    pub const SRC_PORT: usize = 0;
    /// Destination port.
    pub const DST_PORT: usize = 2;
    /// Sequence number.
    pub const SEQ: usize = 4;
    /// Acknowledgment number.
    pub const ACK: usize = 8;
    /// Data offset: header length in 32-bit words (high nibble).
    pub const DATA_OFFSET: usize = 12;
    /// The flags byte.
    pub const FLAGS: usize = 13;
    /// Receive window.
    pub const WINDOW: usize = 14;
    /// Checksum, over the pseudo-header and the whole segment.
    pub const CHECKSUM: usize = 16;
}

/// Length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;

/// TCP flag bits in the flags byte.
pub mod flag {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function.
    pub const PSH: u8 = 0x08;
    /// The acknowledgment number is significant.
    pub const ACK: u8 = 0x10;
}

/// Why a buffer does not hold a TCP header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Fewer than 20 bytes.
    #[error("TCP header needs 20 bytes, the segment has {segment_len}")]
    HeaderTruncated {
        /// Bytes in the segment.
        segment_len: usize,
    },
    /// The data offset is below the minimum of 5 words.
    #[error("TCP data offset is {data_offset} words, below the minimum of 5")]
    DataOffsetTooSmall {
        /// The data offset field, in 32-bit words.
        data_offset: u8,
    },
    /// The data offset points past the end of the segment.
    #[error("TCP header length {header_len} exceeds segment of {segment_len} bytes")]
    HeaderExceedsSegment {
        /// Header length in bytes (data offset × 4).
        header_len: usize,
        /// Bytes in the segment.
        segment_len: usize,
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
    /// The flags set in a header's flags byte.
    pub fn from_byte(byte: u8) -> Self {
        Self {
            syn: byte & flag::SYN != 0,
            ack: byte & flag::ACK != 0,
            fin: byte & flag::FIN != 0,
            rst: byte & flag::RST != 0,
            psh: byte & flag::PSH != 0,
        }
    }
}

/// A checked view of a TCP segment: the buffer is the segment (what
/// follows the IP headers, up to the IP packet's end) and holds its whole
/// header, options included.
///
/// [`Packet::new_checked`] checks the header once; after that no accessor
/// can panic. The checksum needs the IP addresses: see
/// [`TcpPacket::verify_checksums`] for a segment in its IP packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks that `buffer` starts with a whole TCP header.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let buf = buffer.as_ref();
        let segment_len = buf.len();
        if segment_len < MIN_HEADER_LEN {
            return Err(Error::HeaderTruncated { segment_len });
        }
        let data_offset = byte(buf, field::DATA_OFFSET) >> 4;
        if data_offset < 5 {
            return Err(Error::DataOffsetTooSmall { data_offset });
        }
        let header_len = usize::from(data_offset) * 4;
        if header_len > segment_len {
            return Err(Error::HeaderExceedsSegment {
                header_len,
                segment_len,
            });
        }
        Ok(Self { buffer })
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// Sequence number.
    pub fn seq_number(&self) -> u32 {
        be32(self.buffer.as_ref(), field::SEQ)
    }

    /// Acknowledgment number (meaningful when [`TcpFlags::ack`] is set).
    pub fn ack_number(&self) -> u32 {
        be32(self.buffer.as_ref(), field::ACK)
    }

    /// The SYN, ACK, FIN, RST and PSH flags.
    pub fn flags(&self) -> TcpFlags {
        TcpFlags::from_byte(byte(self.buffer.as_ref(), field::FLAGS))
    }

    /// Header length in bytes, options included (data offset × 4).
    pub fn header_len(&self) -> usize {
        usize::from(byte(self.buffer.as_ref(), field::DATA_OFFSET) >> 4) * 4
    }

    /// The payload: everything after the header.
    pub fn payload(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(self.header_len()..)
            .unwrap_or_default()
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
        (segment.ack_number(), 0, flag::RST)
    } else {
        // A checked segment's payload is below 64 KiB, so this cannot truncate.
        let segment_len = (segment.payload_len() as u32)
            .wrapping_add(u32::from(flags.syn))
            .wrapping_add(u32::from(flags.fin));
        (
            0,
            segment.seq().wrapping_add(segment_len),
            flag::RST | flag::ACK,
        )
    };
    let (src, dst) = (segment.dst(), segment.src());
    let mut tcp = [0; MIN_HEADER_LEN];
    tcp[field::SRC_PORT..field::SRC_PORT + 2].copy_from_slice(&src.port().to_be_bytes());
    tcp[field::DST_PORT..field::DST_PORT + 2].copy_from_slice(&dst.port().to_be_bytes());
    tcp[field::SEQ..field::SEQ + 4].copy_from_slice(&seq.to_be_bytes());
    tcp[field::ACK..field::ACK + 4].copy_from_slice(&ack.to_be_bytes());
    tcp[field::DATA_OFFSET] = 5 << 4;
    tcp[field::FLAGS] = control;
    ip::emit(
        src.ip(),
        dst.ip(),
        number::TCP,
        0,
        &mut tcp,
        field::CHECKSUM,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_packets::*;
    use etherparse::{Ipv6Extensions, NetHeaders, PacketHeaders, TcpHeader, TransportHeader};

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
}
