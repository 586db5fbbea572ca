//! The UDP header (RFC 768): a checked view of a datagram's 8-byte header.
//!
//! The datagram tunnel reads UDP only to sort packets into flows (ports)
//! and to recognise DNS and QUIC ([`super::flow`]); it never rewrites
//! them, so there is no checksum code here.

use super::be16;

/// Byte offsets of the header's fields, from the start of the datagram.
pub mod field {
    /// Source port.
    pub const SRC_PORT: usize = 0;
    /// Destination port.
    pub const DST_PORT: usize = 2;
    /// Length of header and payload.
    pub const LENGTH: usize = 4;
    /// Checksum over the pseudo-header and the datagram (0: none, IPv4 only).
    pub const CHECKSUM: usize = 6;
}

/// Length of the header.
pub const HEADER_LEN: usize = 8;

/// Why a buffer does not hold a UDP header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Fewer than 8 bytes.
    #[error("UDP header needs 8 bytes, the datagram has {len}")]
    HeaderTruncated {
        /// Bytes in the datagram.
        len: usize,
    },
}

/// A checked view of a UDP datagram: the buffer is what follows the IP
/// headers, up to the IP packet's end, and holds the whole 8-byte header.
///
/// After [`Packet::new_checked`] no accessor can panic. The length field is
/// reported as written; [`Packet::payload`] trusts the buffer, not the field
/// (the IP length already bounds the datagram, and a wrong field is the
/// receiver's to refuse, not the tunnel's).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks that `buffer` starts with a whole UDP header.
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

    /// Source port.
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The length field: header and payload, as the sender wrote it.
    pub fn len_field(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH)
    }

    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Everything after the header.
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(HEADER_LEN..).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accessors_read_the_header() {
        let buf = [
            0x13, 0x89, 0x00, 0x35, 0x00, 0x0d, 0xab, 0xcd, b'q', b'u', b'e', b'r', b'y',
        ];
        let udp = Packet::new_checked(&buf[..]).expect("valid");
        assert_eq!(udp.src_port(), 5001);
        assert_eq!(udp.dst_port(), 53);
        assert_eq!(udp.len_field(), 13);
        assert_eq!(udp.checksum(), 0xabcd);
        assert_eq!(udp.payload(), b"query");
        assert_eq!(udp.into_inner().len(), 13);
    }

    #[test]
    fn short_buffers_are_refused() {
        let buf = [0u8; 8];
        for len in 0..8 {
            assert_eq!(
                Packet::new_checked(&buf[..len]).err(),
                Some(Error::HeaderTruncated { len })
            );
        }
        let udp = Packet::new_checked(&buf[..]).expect("a bare header");
        assert!(udp.payload().is_empty());
    }
}
