//! The virtio-net header that prefixes every packet on a TUN device opened
//! with `IFF_VNET_HDR` (Linux `struct virtio_net_hdr`, 10 bytes, in the
//! host's byte order: the TUN's legacy layout), and finishing a partial
//! checksum the kernel left to the device.
//!
//! With the TUN's offloads on, the kernel hands over TCP "super-packets"
//! (one IP header, up to 64 KiB of consecutive segments, `gso_size` bytes
//! of payload each) and packets whose transport checksum is partial
//! ([`NEEDS_CSUM`]: the field at `csum_start + csum_offset` holds the
//! pseudo-header sum, not complemented, and whoever sends the packet on
//! sums the bytes from `csum_start` on into it). Written back with the same
//! header, the kernel segments and checksums them itself.
//!
//! Nothing here panics on any input or allocates.

use super::checksum;

/// Bytes of the header in front of every packet.
pub const LEN: usize = 10;

/// `flags`: the checksum at `csum_start + csum_offset` is partial.
pub const NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum was verified (receive side only).
pub const DATA_VALID: u8 = 2;

/// `gso_type`: a single packet.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4 super-packet.
pub const GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation offload (obsolete).
pub const GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6 super-packet.
pub const GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP segmentation offload (USO).
pub const GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the TCP segments carry ECN's CWR.
pub const GSO_ECN: u8 = 0x80;

/// The header of a plain packet with a complete checksum: what goes in
/// front of every packet mpbond builds itself.
pub const PLAIN: [u8; LEN] = [0; LEN];

/// Why a header or a partial checksum cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Fewer than [`LEN`] bytes.
    #[error("virtio-net header truncated: {len} of {LEN} bytes")]
    Truncated {
        /// Bytes there were.
        len: usize,
    },
    /// The checksum field named by `csum_start + csum_offset` is not inside
    /// the packet.
    #[error("partial checksum at {start} + {offset} outside a {len}-byte packet")]
    ChecksumOutside {
        /// `csum_start`.
        start: usize,
        /// `csum_offset`.
        offset: usize,
        /// The packet's length.
        len: usize,
    },
    /// A super-packet's checksum cannot be finished in one piece: each
    /// segment has its own.
    #[error(
        "GSO super-packet (type {gso_type}): its segments' checksums are the kernel's to finish"
    )]
    Segmented {
        /// `gso_type`.
        gso_type: u8,
    },
}

/// A decoded virtio-net header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// [`NEEDS_CSUM`], [`DATA_VALID`].
    pub flags: u8,
    /// [`GSO_NONE`], [`GSO_TCPV4`], [`GSO_TCPV6`], [`GSO_UDP_L4`], maybe
    /// with [`GSO_ECN`].
    pub gso_type: u8,
    /// Length of the headers repeated in every segment.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the partial checksum's sum starts, from the IP header on.
    pub csum_start: u16,
    /// Where the checksum field is, from `csum_start`.
    pub csum_offset: u16,
}

impl Header {
    /// Reads the first [`LEN`] bytes of `buf`.
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] if `buf` is shorter.
    pub fn parse(buf: &[u8]) -> Result<Self, Error> {
        let Some(b) = buf.get(..LEN) else {
            return Err(Error::Truncated { len: buf.len() });
        };
        let u16_at = |i: usize| {
            u16::from_ne_bytes([
                b.get(i).copied().unwrap_or(0),
                b.get(i + 1).copied().unwrap_or(0),
            ])
        };
        Ok(Self {
            flags: b.first().copied().unwrap_or(0),
            gso_type: b.get(1).copied().unwrap_or(0),
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// The header's bytes.
    pub fn to_bytes(&self) -> [u8; LEN] {
        let mut out = [0; LEN];
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        out
    }

    /// Whether the transport checksum is partial.
    pub fn needs_csum(&self) -> bool {
        self.flags & NEEDS_CSUM != 0
    }

    /// Whether the packet is a super-packet of several segments.
    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }

    /// Whether the packet is a UDP super-packet ([`GSO_UDP_L4`]) of
    /// `gso_size`-byte datagrams.
    pub fn is_udp_gso(&self) -> bool {
        self.gso_type & !GSO_ECN == GSO_UDP_L4
    }
}

/// Completes the partial checksum of one (not segmented) `packet` as the
/// device would: the ones-complement sum of the bytes from `csum_start` on,
/// the field's pseudo-header sum included, complemented into the field.
/// A packet without [`NEEDS_CSUM`] is left alone.
///
/// # Errors
///
/// [`Error::Segmented`] for a super-packet, [`Error::ChecksumOutside`] when
/// the field is not in the packet; the packet is then untouched.
pub fn finish_checksum(header: &Header, packet: &mut [u8]) -> Result<(), Error> {
    if !header.needs_csum() {
        return Ok(());
    }
    if header.is_gso() {
        return Err(Error::Segmented {
            gso_type: header.gso_type,
        });
    }
    let start = usize::from(header.csum_start);
    let field = start + usize::from(header.csum_offset);
    let len = packet.len();
    let outside = Error::ChecksumOutside {
        start,
        offset: usize::from(header.csum_offset),
        len,
    };
    if field.checked_add(2).is_none_or(|end| end > len) {
        return Err(outside);
    }
    let Some(covered) = packet.get(start..) else {
        return Err(outside);
    };
    let value = checksum::complement(checksum::sum_words(covered));
    // A UDP checksum of zero means "none": send the other zero.
    let value = if value == 0 { 0xffff } else { value };
    let Some(slot) = packet.get_mut(field..field + 2) else {
        return Err(outside);
    };
    slot.copy_from_slice(&value.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_short_input_is_an_error() {
        let h = Header {
            flags: NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            hdr_len: 52,
            gso_size: 1448,
            csum_start: 20,
            csum_offset: 16,
        };
        let bytes = h.to_bytes();
        assert_eq!(Header::parse(&bytes), Ok(h));
        assert!(h.is_gso() && h.needs_csum());
        assert_eq!(Header::parse(&bytes[..9]), Err(Error::Truncated { len: 9 }));
        assert_eq!(Header::parse(&PLAIN), Ok(Header::default()));
        assert!(!Header::default().is_gso());
    }

    #[test]
    fn finishing_a_partial_checksum_matches_a_full_computation() {
        for ipv6 in [false, true] {
            let mut packet = crate::wire::test_packets::udp_packet(ipv6);
            let (src, dst, udp_at) = if ipv6 {
                (8..24, 24..40, 40)
            } else {
                (12..16, 16..20, 20)
            };
            let field = udp_at + 6;
            let full = u16::from_be_bytes([packet[field], packet[field + 1]]);
            // What the kernel hands over: the pseudo-header sum, not complemented.
            let pseudo =
                checksum::pseudo_header_sum(&packet[src], &packet[dst], 17, packet.len() - udp_at);
            packet[field..field + 2].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
            let h = Header {
                flags: NEEDS_CSUM,
                csum_start: udp_at as u16,
                csum_offset: 6,
                ..Header::default()
            };
            finish_checksum(&h, &mut packet).expect("finished");
            assert_eq!(u16::from_be_bytes([packet[field], packet[field + 1]]), full);
        }
    }

    #[test]
    fn finishing_refuses_fields_outside_and_super_packets() {
        let mut packet = [0x45u8; 30];
        let mut h = Header {
            flags: NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 9,
            ..Header::default()
        };
        assert!(matches!(
            finish_checksum(&h, &mut packet),
            Err(Error::ChecksumOutside { .. })
        ));
        h.csum_start = u16::MAX;
        h.csum_offset = u16::MAX;
        assert!(matches!(
            finish_checksum(&h, &mut packet),
            Err(Error::ChecksumOutside { .. })
        ));
        h.gso_type = GSO_UDP_L4;
        assert!(matches!(
            finish_checksum(&h, &mut packet),
            Err(Error::Segmented { .. })
        ));
        assert_eq!(packet, [0x45u8; 30], "untouched");
        h.flags = 0;
        assert_eq!(finish_checksum(&h, &mut packet), Ok(()));
    }
}
