//! The IPv4 header (RFC 791): a checked view of a packet's fixed header,
//! options and total length.

use std::net::Ipv4Addr;

use super::checksum;
use super::{be16, byte, bytes};

/// Byte offsets of the header's fields.
pub mod field {
    /// Version (high nibble) and header length in 32-bit words (low nibble).
    pub const VERSION_IHL: usize = 0;
    /// Type of service (DSCP and ECN).
    pub const TOS: usize = 1;
    /// Total length of the datagram, header included.
    pub const TOTAL_LEN: usize = 2;
    /// Identification, for reassembly.
    pub const IDENTIFICATION: usize = 4;
    /// Flags (3 bits) and fragment offset in 8-byte units (13 bits).
    pub const FLAGS_FRAGMENT: usize = 6;
    /// Time to live.
    pub const TTL: usize = 8;
    /// The protocol of the payload.
    pub const PROTOCOL: usize = 9;
    /// The header checksum.
    pub const CHECKSUM: usize = 10;
    /// Source address.
    pub const SRC: usize = 12;
    /// Destination address.
    pub const DST: usize = 16;
}

/// Length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;

/// The More Fragments bit of the flags/fragment-offset word.
const MORE_FRAGMENTS: u16 = 0x2000;
/// The fragment offset bits of the flags/fragment-offset word.
const FRAGMENT_OFFSET: u16 = 0x1fff;

/// Why a buffer does not hold an IPv4 header and the datagram it
/// announces.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The header (20 bytes, or as many as its IHL says) does not fit.
    #[error("IPv4 header length {header_len} exceeds packet of {len} bytes")]
    HeaderExceedsPacket {
        /// Header length in bytes: 20, or IHL × 4 once IHL could be read.
        header_len: usize,
        /// Bytes in the buffer.
        len: usize,
    },
    /// IHL is below the minimum of 5 words.
    #[error("IPv4 header length field is {ihl} words, below the minimum of 5")]
    HeaderLengthTooSmall {
        /// The IHL field, in 32-bit words.
        ihl: u8,
    },
    /// Total length does not even cover the header.
    #[error("IPv4 total length {total_len} is shorter than its {header_len}-byte header")]
    TotalLengthTooShort {
        /// The total length field.
        total_len: usize,
        /// Header length in bytes (IHL × 4).
        header_len: usize,
    },
    /// Total length claims more bytes than the buffer has.
    #[error("IPv4 total length {total_len} exceeds packet of {len} bytes")]
    TotalLengthExceedsPacket {
        /// The total length field.
        total_len: usize,
        /// Bytes in the buffer.
        len: usize,
    },
}

/// A checked view of an IPv4 datagram: its header, options included, and
/// the `total_len` bytes it announces are all in the buffer.
///
/// [`Packet::new_checked`] checks the lengths once; after that no accessor
/// can panic. The buffer may be longer than the datagram: trailing bytes
/// are ignored. The version nibble is the caller's to dispatch on
/// ([`super::ip`]); it is not checked here, as in smoltcp.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks that `buffer` holds a whole IPv4 header and the datagram its
    /// total length announces.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let buf = buffer.as_ref();
        let len = buf.len();
        if len < MIN_HEADER_LEN {
            return Err(Error::HeaderExceedsPacket {
                header_len: MIN_HEADER_LEN,
                len,
            });
        }
        let ihl = byte(buf, field::VERSION_IHL) & 0x0f;
        if ihl < 5 {
            return Err(Error::HeaderLengthTooSmall { ihl });
        }
        let header_len = usize::from(ihl) * 4;
        if header_len > len {
            return Err(Error::HeaderExceedsPacket { header_len, len });
        }
        let total_len = usize::from(be16(buf, field::TOTAL_LEN));
        if total_len < header_len {
            return Err(Error::TotalLengthTooShort {
                total_len,
                header_len,
            });
        }
        if total_len > len {
            return Err(Error::TotalLengthExceedsPacket { total_len, len });
        }
        Ok(Self { buffer })
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Header length in bytes, options included (IHL × 4).
    pub fn header_len(&self) -> usize {
        usize::from(byte(self.buffer.as_ref(), field::VERSION_IHL) & 0x0f) * 4
    }

    /// The total length field: header and payload, at most the buffer's
    /// length.
    pub fn total_len(&self) -> usize {
        usize::from(be16(self.buffer.as_ref(), field::TOTAL_LEN))
    }

    /// The differentiated services code point (the type of service byte's
    /// upper six bits).
    pub fn dscp(&self) -> u8 {
        byte(self.buffer.as_ref(), 1) >> 2
    }

    /// The protocol number of the payload.
    pub fn protocol(&self) -> u8 {
        byte(self.buffer.as_ref(), field::PROTOCOL)
    }

    /// Fragment offset in bytes.
    pub fn fragment_offset(&self) -> usize {
        usize::from(be16(self.buffer.as_ref(), field::FLAGS_FRAGMENT) & FRAGMENT_OFFSET) * 8
    }

    /// The More Fragments flag.
    pub fn more_fragments(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLAGS_FRAGMENT) & MORE_FRAGMENTS != 0
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(bytes::<4>(self.buffer.as_ref(), field::SRC).unwrap_or([0; 4]))
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(bytes::<4>(self.buffer.as_ref(), field::DST).unwrap_or([0; 4]))
    }

    /// The header's bytes, options included.
    pub fn header(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(..self.header_len())
            .unwrap_or_default()
    }

    /// The datagram's bytes, without trailing bytes of the buffer.
    pub fn packet(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(..self.total_len())
            .unwrap_or_default()
    }

    /// The payload: what follows the header, up to the total length.
    pub fn payload(&self) -> &[u8] {
        self.packet().get(self.header_len()..).unwrap_or_default()
    }

    /// Whether the header checksum is correct.
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum_words(self.header())) == 0xffff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 24-byte header (4 bytes of options) announcing 28 bytes, with a
    /// correct checksum, in a 30-byte buffer.
    fn datagram() -> Vec<u8> {
        let mut buf = vec![0; 30];
        buf[0] = 0x46;
        buf[2..4].copy_from_slice(&28u16.to_be_bytes());
        buf[6..8].copy_from_slice(&(0x2000u16 | 185).to_be_bytes());
        buf[8] = 64;
        buf[9] = 17;
        buf[12..16].copy_from_slice(&[192, 168, 1, 23]);
        buf[16..20].copy_from_slice(&[9, 9, 9, 9]);
        buf[24..28].copy_from_slice(b"data");
        let sum = checksum::complement(checksum::sum_words(&buf[..24]));
        buf[10..12].copy_from_slice(&sum.to_be_bytes());
        buf
    }

    #[test]
    fn accessors_read_the_header() {
        let buf = datagram();
        let packet = Packet::new_checked(&buf[..]).expect("valid");
        assert_eq!(packet.header_len(), 24);
        assert_eq!(packet.total_len(), 28);
        assert_eq!(packet.protocol(), 17);
        assert_eq!(packet.fragment_offset(), 1480);
        assert!(packet.more_fragments());
        assert_eq!(packet.src_addr(), Ipv4Addr::new(192, 168, 1, 23));
        assert_eq!(packet.dst_addr(), Ipv4Addr::new(9, 9, 9, 9));
        assert_eq!(packet.payload(), b"data");
        assert_eq!(packet.packet().len(), 28);
        assert!(packet.verify_checksum());
    }

    #[test]
    fn every_prefix_is_refused_or_whole() {
        let buf = datagram();
        for len in 0..buf.len() {
            let result = Packet::new_checked(&buf[..len]);
            assert_eq!(result.is_ok(), len >= 28, "length {len}");
        }
    }
}
