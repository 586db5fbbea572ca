//! The IPv6 header (RFC 8200) and the extension headers a router walks
//! past to find the upper layer: hop-by-hop, routing and destination
//! options (the fragment header ends the walk).

use std::net::Ipv6Addr;

use super::ip::number;
use super::{be16, byte, bytes};

/// Byte offsets of the fixed header's fields.
pub mod field {
    /// Payload length: bytes after the fixed header, extension headers
    /// included.
    pub const PAYLOAD_LEN: usize = 4;
    /// The type of the first extension header or of the upper layer.
    pub const NEXT_HEADER: usize = 6;
    /// Hop limit.
    pub const HOP_LIMIT: usize = 7;
    /// Source address.
    pub const SRC: usize = 8;
    /// Destination address.
    pub const DST: usize = 24;
}

/// Byte offsets in an extension header, from its start.
pub mod ext_field {
    /// The type of the header that follows.
    pub const NEXT_HEADER: usize = 0;
    /// Length in 8-byte units, not counting the first 8 (not in a fragment
    /// header).
    pub const LEN: usize = 1;
    /// A routing header's Segments Left.
    pub const ROUTING_SEGMENTS_LEFT: usize = 3;
    /// A fragment header's offset (13 bits, in 8-byte units) and flags.
    pub const FRAGMENT_OFFSET: usize = 2;
}

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;

/// Length of a fragment header.
pub const FRAGMENT_HEADER_LEN: usize = 8;

/// Why a buffer does not hold an IPv6 packet, or its extension headers do
/// not fit in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer is shorter than the fixed header.
    #[error("IPv6 header of 40 bytes exceeds packet of {len} bytes")]
    HeaderExceedsPacket {
        /// Bytes in the buffer.
        len: usize,
    },
    /// Payload length claims more bytes than follow the fixed header.
    #[error(
        "IPv6 payload length {payload_len} exceeds the {available} bytes after the 40-byte header"
    )]
    PayloadExceedsPacket {
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
    ExtensionTruncated {
        /// The extension header's type (its predecessor's next header).
        next_header: u8,
        /// Where the extension header starts.
        offset: usize,
        /// The packet's length (40 + payload length).
        packet_len: usize,
    },
}

/// The first header after the fixed header that is not hop-by-hop, routing
/// or destination options: the upper layer, or a fragment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer {
    /// Its type: an IP protocol number (44 for a fragment header).
    pub next_header: u8,
    /// Where it starts, from the start of the packet.
    pub offset: usize,
    /// The largest Segments Left of any routing header passed: if not 0,
    /// the destination address is not the final destination.
    pub segments_left: u8,
}

/// A checked view of an IPv6 packet: its fixed header and the payload
/// length it announces are in the buffer.
///
/// [`Packet::new_checked`] checks the lengths once; after that no accessor
/// can panic. The buffer may be longer than the packet: trailing bytes are
/// ignored. The version nibble is the caller's to dispatch on
/// ([`super::ip`]).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks that `buffer` holds the fixed header and the payload its
    /// length field announces. Extension headers are checked by
    /// [`Packet::upper_layer`].
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let buf = buffer.as_ref();
        let len = buf.len();
        if len < HEADER_LEN {
            return Err(Error::HeaderExceedsPacket { len });
        }
        let payload_len = usize::from(be16(buf, field::PAYLOAD_LEN));
        let available = len - HEADER_LEN;
        if payload_len > available {
            return Err(Error::PayloadExceedsPacket {
                payload_len,
                available,
            });
        }
        Ok(Self { buffer })
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The payload length field.
    pub fn payload_len(&self) -> usize {
        usize::from(be16(self.buffer.as_ref(), field::PAYLOAD_LEN))
    }

    /// The packet's length: 40 + payload length, at most the buffer's.
    pub fn packet_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    /// The differentiated services code point (the traffic class's upper
    /// six bits).
    pub fn dscp(&self) -> u8 {
        let buf = self.buffer.as_ref();
        let class = (byte(buf, 0) & 0x0f) << 4 | byte(buf, 1) >> 4;
        class >> 2
    }

    /// The fixed header's next header field.
    pub fn next_header(&self) -> u8 {
        byte(self.buffer.as_ref(), field::NEXT_HEADER)
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(bytes::<16>(self.buffer.as_ref(), field::SRC).unwrap_or([0; 16]))
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(bytes::<16>(self.buffer.as_ref(), field::DST).unwrap_or([0; 16]))
    }

    /// The packet's bytes, without trailing bytes of the buffer.
    pub fn packet(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(..self.packet_len())
            .unwrap_or_default()
    }

    /// Walks the hop-by-hop, routing and destination options headers
    /// within the packet to the upper layer (or a fragment header).
    pub fn upper_layer(&self) -> Result<UpperLayer, Error> {
        walk_extensions(self.packet(), self.next_header(), HEADER_LEN)
    }
}

/// Walks hop-by-hop, routing and destination options headers in `packet`
/// (bounded to its length), starting with a header of type `next_header`
/// at `offset`.
pub fn walk_extensions(
    packet: &[u8],
    mut next_header: u8,
    mut offset: usize,
) -> Result<UpperLayer, Error> {
    let mut segments_left = 0;
    while matches!(
        next_header,
        number::HOP_BY_HOP | number::ROUTING | number::DESTINATION_OPTIONS
    ) {
        let truncated = Error::ExtensionTruncated {
            next_header,
            offset,
            packet_len: packet.len(),
        };
        let Some(&ext_len) = packet.get(offset + ext_field::LEN) else {
            return Err(truncated);
        };
        let header_len = (usize::from(ext_len) + 1) * 8;
        if offset + header_len > packet.len() {
            return Err(truncated);
        }
        if next_header == number::ROUTING {
            segments_left =
                segments_left.max(byte(packet, offset + ext_field::ROUTING_SEGMENTS_LEFT));
        }
        next_header = byte(packet, offset + ext_field::NEXT_HEADER);
        offset += header_len;
    }
    Ok(UpperLayer {
        next_header,
        offset,
        segments_left,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hop-by-hop (8 bytes), routing with 2 segments left (8 bytes), then
    /// UDP with 4 bytes, in a buffer 3 bytes longer.
    fn packet() -> Vec<u8> {
        let mut buf = vec![0; 40 + 8 + 8 + 4 + 3];
        buf[0] = 0x60;
        buf[4..6].copy_from_slice(&20u16.to_be_bytes());
        buf[6] = number::HOP_BY_HOP;
        buf[8..24].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        buf[40] = number::ROUTING;
        buf[48] = number::UDP;
        buf[48 + 3] = 2;
        buf
    }

    #[test]
    fn walks_to_the_upper_layer() {
        let buf = packet();
        let packet = Packet::new_checked(&buf[..]).expect("valid");
        assert_eq!(packet.packet_len(), 60);
        assert_eq!(packet.src_addr(), Ipv6Addr::LOCALHOST);
        let upper = packet.upper_layer().expect("extensions fit");
        assert_eq!(
            upper,
            UpperLayer {
                next_header: number::UDP,
                offset: 56,
                segments_left: 2
            }
        );
    }

    #[test]
    fn an_extension_past_the_payload_is_truncated() {
        let mut buf = packet();
        buf[41] = 1;
        buf[4..6].copy_from_slice(&12u16.to_be_bytes());
        let packet = Packet::new_checked(&buf[..]).expect("lengths fit");
        assert_eq!(
            packet.upper_layer(),
            Err(Error::ExtensionTruncated {
                next_header: number::HOP_BY_HOP,
                offset: 40,
                packet_len: 52
            })
        );
    }
}
