//! Consecutive UDP datagrams of one flow joined into one super-packet for
//! a TUN device opened with `IFF_VNET_HDR` ([`vnet::GSO_UDP_L4`]): the
//! kernel cuts it back into the same datagrams after one write and one
//! trip through routing, netfilter and the devices for up to
//! [`MAX_SEGMENTS`] of them, and the receiving socket's owner is woken once
//! per super-packet rather than once per datagram. Linux's own UDP GRO
//! joins datagrams on the same terms; wireguard-go writes its TUN this way.
//!
//! Only what the kernel gives back as it was joins: UDP over IPv4 without
//! options and not a fragment, or over IPv6 without extension headers;
//! the same addresses, ports, TOS / traffic class, TTL / hop limit, flow
//! label and DF; IPv4 identifications counting up by one from the first
//! (the kernel numbers the segments so), unless DF is set (an atomic
//! datagram's identification means nothing, RFC 6864); a valid checksum,
//! not zero (the kernel computes each segment's afresh, which must not
//! mend a broken one nor add a missing one); payloads of the first's size,
//! but for a shorter last one.
//!
//! Nothing here panics on any input or allocates.

use super::{checksum, vnet};

/// Datagrams in one super-packet at most (the kernel's
/// `UDP_MAX_SEGMENTS`).
pub const MAX_SEGMENTS: usize = 64;

/// Bytes in front of a super-packet's payloads at most: the virtio-net
/// header, IPv6's and UDP's.
pub const MAX_HEADER: usize = vnet::LEN + IPV6_LEN + UDP_LEN;

const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const UDP_LEN: usize = 8;
const UDP: u8 = 17;

/// The largest IP packet: IPv4's total length and IPv6's payload length
/// are 16 bits.
const MAX_IP: usize = 65_535;

/// Bytes of the fields that must match: IPv6's version, traffic class,
/// flow label, next header, hop limit, addresses and the UDP ports.
const KEY_LEN: usize = 4 + 2 + 32 + 4;

/// A UDP datagram that may be joined to others: what decides whether it
/// joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    /// The IP header's length: 20 or 40.
    ip_len: usize,
    /// The header bytes that must be equal, `KEY_LEN` at most.
    key: [u8; KEY_LEN],
    /// IPv4's identification (0 for IPv6).
    id: u16,
    /// IPv4's DF, or IPv6 (never fragmented on the way).
    atomic: bool,
    /// UDP payload bytes.
    payload: usize,
}

impl Datagram {
    /// `packet` if it is a datagram of the kind that joins others (see the
    /// module's documentation), from its headers alone: the checksum is
    /// [`Self::checksum_ok`]'s to check.
    pub fn of(packet: &[u8]) -> Option<Self> {
        match packet.first()? >> 4 {
            4 => Self::of_v4(packet),
            6 => Self::of_v6(packet),
            _ => None,
        }
    }

    fn of_v4(packet: &[u8]) -> Option<Self> {
        let h = packet.get(..IPV4_LEN + UDP_LEN)?;
        let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let flags = u16::from_be_bytes([h[6], h[7]]);
        // No options, the whole packet, UDP, not a fragment (MF or offset).
        if h[0] != 0x45 || total != packet.len() || h[9] != UDP || flags & 0x3fff != 0 {
            return None;
        }
        let payload = udp_payload(h, IPV4_LEN, total - IPV4_LEN)?;
        let mut key = [0; KEY_LEN];
        key[0] = h[1];
        key[1] = h[8];
        key[2] = (flags >> 8) as u8;
        key[3..11].copy_from_slice(&h[12..20]);
        key[11..15].copy_from_slice(&h[20..24]);
        Some(Self {
            ip_len: IPV4_LEN,
            key,
            id: u16::from_be_bytes([h[4], h[5]]),
            atomic: flags & 0x4000 != 0,
            payload,
        })
    }

    fn of_v6(packet: &[u8]) -> Option<Self> {
        let h = packet.get(..IPV6_LEN + UDP_LEN)?;
        let upper = usize::from(u16::from_be_bytes([h[4], h[5]]));
        if h[6] != UDP || IPV6_LEN + upper != packet.len() {
            return None;
        }
        let payload = udp_payload(h, IPV6_LEN, upper)?;
        let mut key = [0; KEY_LEN];
        key[..4].copy_from_slice(&h[..4]);
        key[4] = h[6];
        key[5] = h[7];
        key[6..38].copy_from_slice(&h[8..40]);
        key[38..42].copy_from_slice(&h[40..44]);
        Some(Self {
            ip_len: IPV6_LEN,
            key,
            id: 0,
            atomic: true,
            payload,
        })
    }

    /// Whether `packet`, this datagram, has a valid UDP checksum (zero, "no
    /// checksum", is not: the kernel would add one) and, over IPv4, a valid
    /// header checksum (the super-packet's is computed afresh).
    pub fn checksum_ok(&self, packet: &[u8]) -> bool {
        let Some(udp) = packet.get(self.ip_len..) else {
            return false;
        };
        let Some(field) = udp.get(6..8) else {
            return false;
        };
        if field == [0, 0] {
            return false;
        }
        let (src, dst) = if self.ip_len == IPV4_LEN {
            let header_ok = packet
                .get(..IPV4_LEN)
                .is_some_and(|h| checksum::fold(checksum::sum_words(h)) == 0xffff);
            if !header_ok {
                return false;
            }
            (packet.get(12..16), packet.get(16..20))
        } else {
            (packet.get(8..24), packet.get(24..40))
        };
        let (Some(src), Some(dst)) = (src, dst) else {
            return false;
        };
        let pseudo = checksum::pseudo_header_sum(src, dst, UDP, udp.len());
        checksum::fold(pseudo + checksum::sum_words(udp)) == 0xffff
    }

    /// The bytes of headers in front of the payload.
    pub fn header_len(&self) -> usize {
        self.ip_len + UDP_LEN
    }

    /// UDP payload bytes.
    pub fn payload(&self) -> usize {
        self.payload
    }

    /// Whether `next` may follow in the super-packet this datagram starts,
    /// which holds `count` datagrams of `bytes` payload bytes so far, the
    /// last of them `last` bytes (headers only: the caller checks `next`'s
    /// checksum, and this one's before the first joins).
    pub fn joins(&self, count: usize, bytes: usize, last: usize, next: &Self) -> bool {
        count < MAX_SEGMENTS
            && self.payload > 0
            && last == self.payload
            && next.payload > 0
            && next.payload <= self.payload
            && next.ip_len == self.ip_len
            && next.key == self.key
            && (self.atomic || usize::from(next.id.wrapping_sub(self.id)) == count)
            && self.header_len() + bytes + next.payload <= MAX_IP
    }

    /// Writes into `out` the virtio-net header and `first`'s (this
    /// datagram's) IP and UDP headers for the super-packet of `bytes`
    /// payload bytes in all it starts: lengths set, the IPv4 header
    /// checksum computed, the UDP checksum partial (the pseudo-header's
    /// sum) for the kernel to finish per segment. Returns the bytes
    /// written; `None` if `out` has less than [`MAX_HEADER`] bytes or
    /// `first` is not this datagram.
    pub fn super_header(&self, first: &[u8], bytes: usize, out: &mut [u8]) -> Option<usize> {
        let hdr = self.header_len();
        let len = vnet::LEN + hdr;
        let out = out.get_mut(..len)?;
        let udp_len = u16::try_from(UDP_LEN + bytes).ok()?;
        let gso_size = u16::try_from(self.payload).ok()?;
        let (head, ip) = out.split_at_mut(vnet::LEN);
        ip.copy_from_slice(first.get(..hdr)?);
        let header = vnet::Header {
            flags: vnet::NEEDS_CSUM,
            gso_type: vnet::GSO_UDP_L4,
            hdr_len: u16::try_from(hdr).ok()?,
            gso_size,
            csum_start: u16::try_from(self.ip_len).ok()?,
            csum_offset: 6,
        };
        head.copy_from_slice(&header.to_bytes());
        let (addrs, udp_at) = if self.ip_len == IPV4_LEN {
            let total = u16::try_from(IPV4_LEN + UDP_LEN + bytes).ok()?;
            ip.get_mut(2..4)?.copy_from_slice(&total.to_be_bytes());
            ip.get_mut(10..12)?.copy_from_slice(&[0, 0]);
            let sum = checksum::complement(checksum::sum_words(ip.get(..IPV4_LEN)?));
            ip.get_mut(10..12)?.copy_from_slice(&sum.to_be_bytes());
            (12..20, IPV4_LEN)
        } else {
            ip.get_mut(4..6)?.copy_from_slice(&udp_len.to_be_bytes());
            (8..40, IPV6_LEN)
        };
        let half = (addrs.end - addrs.start) / 2;
        let addrs = ip.get(addrs)?;
        let (src, dst) = addrs.split_at(half);
        let pseudo = checksum::pseudo_header_sum(src, dst, UDP, usize::from(udp_len));
        let udp = ip.get_mut(udp_at..udp_at + UDP_LEN)?;
        udp.get_mut(4..6)?.copy_from_slice(&udp_len.to_be_bytes());
        udp.get_mut(6..8)?
            .copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
        Some(len)
    }
}

/// Datagrams one super-packet read from a TUN may hold at most: the
/// kernel's `UDP_MAX_SEGMENTS` (64 before Linux 6.2, 128 since).
pub const MAX_SPLIT: usize = 128;

/// Bytes [`split`] may write for one super-packet of at most 64 KiB:
/// its payloads and each datagram's headers.
pub const MAX_SPLIT_LEN: usize = MAX_IP + MAX_SPLIT * (IPV6_LEN + UDP_LEN);

/// Why a UDP super-packet read from a TUN cannot be cut into datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// Not UDP over IPv4 (without options, not a fragment) or over IPv6
    /// without extension headers, or its lengths do not match the bytes.
    #[error("UDP super-packet of {len} bytes is not a whole UDP datagram over IPv4 or IPv6")]
    NotUdp {
        /// The packet's length.
        len: usize,
    },
    /// A segment size of zero, or more than [`MAX_SPLIT`] segments.
    #[error("UDP super-packet with segments of {gso_size} bytes: {count} datagrams")]
    Segments {
        /// `gso_size`.
        gso_size: usize,
        /// The datagrams it would make.
        count: usize,
    },
    /// `out` cannot hold the datagrams.
    #[error("{need} bytes needed for the datagrams of a UDP super-packet, {room} free")]
    NoRoom {
        /// Bytes needed.
        need: usize,
        /// Bytes there are.
        room: usize,
    },
}

/// Cuts `packet`, a UDP super-packet as a TUN with UDP segmentation
/// offload hands it over ([`vnet::GSO_UDP_L4`]: one IP and UDP header,
/// then the payloads of datagrams of `gso_size` bytes, the last maybe
/// shorter), into its datagrams, as the kernel would have before the
/// TUN: written one after the other into `out` as whole IP packets, each
/// with the first's headers, its own lengths, the IPv4 identification
/// counting up from the first's, the IPv4 header checksum and a complete
/// UDP checksum (the super-packet's is partial or stale). Calls `each`
/// with every datagram's range in `out`, in order; returns the bytes of
/// `out` used. Nothing is written when it fails.
///
/// # Errors
///
/// [`SplitError`] for a packet that is not one UDP datagram over IPv4
/// (without options: what a TUN gets of a UDP socket's sends) or IPv6 (no
/// extension headers), a segment size of zero or more than
/// [`MAX_SPLIT`] datagrams, and an `out` too small.
pub fn split(
    packet: &[u8],
    gso_size: usize,
    out: &mut [u8],
    mut each: impl FnMut(std::ops::Range<usize>),
) -> Result<usize, SplitError> {
    let not_udp = SplitError::NotUdp { len: packet.len() };
    let (ip_len, v4) = match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let h = packet.get(..IPV4_LEN).ok_or(not_udp)?;
            let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
            let fragment = u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0;
            if h[0] != 0x45 || total != packet.len() || h[9] != UDP || fragment {
                return Err(not_udp);
            }
            (IPV4_LEN, true)
        }
        Some(6) => {
            let h = packet.get(..IPV6_LEN).ok_or(not_udp)?;
            let upper = usize::from(u16::from_be_bytes([h[4], h[5]]));
            if h[6] != UDP || IPV6_LEN + upper != packet.len() {
                return Err(not_udp);
            }
            (IPV6_LEN, false)
        }
        _ => return Err(not_udp),
    };
    let hdr = ip_len + UDP_LEN;
    let udp_len = packet.get(ip_len + 4..ip_len + 6).ok_or(not_udp)?;
    // The UDP length is the whole super-packet's, as the IP length is.
    if usize::from(u16::from_be_bytes([udp_len[0], udp_len[1]])) != packet.len() - ip_len {
        return Err(not_udp);
    }
    let payload = packet.get(hdr..).ok_or(not_udp)?;
    let count = if gso_size == 0 {
        0
    } else {
        payload.len().div_ceil(gso_size)
    };
    if gso_size == 0 || count > MAX_SPLIT {
        return Err(SplitError::Segments { gso_size, count });
    }
    let need = payload.len() + count.max(1) * hdr;
    if need > out.len() {
        return Err(SplitError::NoRoom {
            need,
            room: out.len(),
        });
    }
    let headers = packet.get(..hdr).ok_or(not_udp)?;
    let id = u16::from_be_bytes([headers[4], headers[5]]);
    let (src, dst) = if v4 {
        (12..16, 16..20)
    } else {
        (8..24, 24..40)
    };
    let mut at = 0;
    // An empty payload is one empty datagram.
    let mut chunks = payload.chunks(gso_size.max(1));
    let mut n = 0;
    loop {
        let chunk = chunks.next();
        if chunk.is_none() && n > 0 {
            break;
        }
        let chunk = chunk.unwrap_or(&[]);
        let len = hdr + chunk.len();
        let Some(dgram) = out.get_mut(at..at + len) else {
            return Err(SplitError::NoRoom {
                need,
                room: out.len(),
            });
        };
        let (head, body) = dgram.split_at_mut(hdr);
        head.copy_from_slice(headers);
        body.copy_from_slice(chunk);
        let udp_len = u16::try_from(UDP_LEN + chunk.len()).map_err(|_| not_udp)?;
        if v4 {
            let total = u16::try_from(len).map_err(|_| not_udp)?;
            head[2..4].copy_from_slice(&total.to_be_bytes());
            // Counted per datagram, wrapping, as the kernel's segmentation
            // numbers them (the truncation to 16 bits is the point).
            head[4..6].copy_from_slice(&id.wrapping_add(n as u16).to_be_bytes());
            head[10..12].copy_from_slice(&[0, 0]);
            let sum = checksum::complement(checksum::sum_words(&head[..ip_len]));
            head[10..12].copy_from_slice(&sum.to_be_bytes());
        } else {
            head[4..6].copy_from_slice(&udp_len.to_be_bytes());
        }
        let udp_at = ip_len;
        head[udp_at + 4..udp_at + 6].copy_from_slice(&udp_len.to_be_bytes());
        head[udp_at + 6..udp_at + 8].copy_from_slice(&[0, 0]);
        let pseudo = checksum::pseudo_header_sum(
            &head[src.clone()],
            &head[dst.clone()],
            UDP,
            usize::from(udp_len),
        );
        let sum = pseudo + checksum::sum_words(&head[udp_at..]) + checksum::sum_words(chunk);
        let value = checksum::complement(sum);
        // Zero means "no checksum": send the other zero.
        let value = if value == 0 { 0xffff } else { value };
        head[udp_at + 6..udp_at + 8].copy_from_slice(&value.to_be_bytes());
        each(at..at + len);
        at += len;
        n += 1;
    }
    Ok(at)
}

/// The payload's length of the UDP datagram at `at` of `h` whose IP
/// packet gives it `upper` bytes, if its own length says the same.
fn udp_payload(h: &[u8], at: usize, upper: usize) -> Option<usize> {
    let field = h.get(at + 4..at + 6)?;
    let len = usize::from(u16::from_be_bytes([field[0], field[1]]));
    (len == upper && len >= UDP_LEN).then(|| len - UDP_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_packets::sized_udp;

    /// What the kernel does with a super-packet: each segment with the
    /// first's headers, its lengths, IPv4 identification counting up, and
    /// its checksums complete.
    fn segment(header: &[u8], payloads: &[u8]) -> Vec<Vec<u8>> {
        let h = vnet::Header::parse(header).expect("vnet header");
        assert_eq!(h.gso_type, vnet::GSO_UDP_L4);
        assert!(h.needs_csum());
        let ip = &header[vnet::LEN..];
        assert_eq!(ip.len(), usize::from(h.hdr_len));
        let v6 = ip[0] >> 4 == 6;
        let ip_len = if v6 { 40 } else { 20 };
        assert_eq!(usize::from(h.csum_start), ip_len);
        assert_eq!(h.csum_offset, 6);
        // The partial checksum covers the whole: pseudo-header of its length.
        let whole = payloads.len() + 8;
        let (src, dst) = if v6 {
            (&ip[8..24], &ip[24..40])
        } else {
            (&ip[12..16], &ip[16..20])
        };
        assert_eq!(
            u16::from_be_bytes([ip[ip_len + 6], ip[ip_len + 7]]),
            checksum::fold(checksum::pseudo_header_sum(src, dst, 17, whole))
        );
        assert_eq!(
            usize::from(u16::from_be_bytes([ip[ip_len + 4], ip[ip_len + 5]])),
            whole
        );
        if v6 {
            assert_eq!(usize::from(u16::from_be_bytes([ip[4], ip[5]])), whole);
        } else {
            assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), whole + 20);
            assert_eq!(checksum::fold(checksum::sum_words(&ip[..20])), 0xffff);
        }
        payloads
            .chunks(usize::from(h.gso_size))
            .enumerate()
            .map(|(k, payload)| {
                let mut p = ip.to_vec();
                p.extend_from_slice(payload);
                let udp_len = 8 + payload.len();
                p[ip_len + 4..ip_len + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
                if v6 {
                    p[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
                } else {
                    p[2..4].copy_from_slice(&((udp_len + 20) as u16).to_be_bytes());
                    let id = u16::from_be_bytes([p[4], p[5]]).wrapping_add(k as u16);
                    p[4..6].copy_from_slice(&id.to_be_bytes());
                    p[10..12].copy_from_slice(&[0, 0]);
                    let sum = checksum::complement(checksum::sum_words(&p[..20]));
                    p[10..12].copy_from_slice(&sum.to_be_bytes());
                }
                p[ip_len + 6..ip_len + 8].copy_from_slice(&[0, 0]);
                let (src, dst) = if v6 {
                    (&p[8..24], &p[24..40])
                } else {
                    (&p[12..16], &p[16..20])
                };
                let pseudo = checksum::pseudo_header_sum(src, dst, 17, udp_len);
                let mut sum = checksum::complement(pseudo + checksum::sum_words(&p[ip_len..]));
                if sum == 0 {
                    sum = 0xffff;
                }
                p[ip_len + 6..ip_len + 8].copy_from_slice(&sum.to_be_bytes());
                p
            })
            .collect()
    }

    /// `n` datagrams of one flow, payloads of `len` bytes (the last
    /// `last`), IPv4 identifications counting up.
    fn train(v6: bool, n: usize, len: usize, last: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let size = if i + 1 == n { last } else { len };
                let mut p = sized_udp(v6, size, true);
                for (k, b) in p.iter_mut().enumerate().skip(if v6 { 48 } else { 28 }) {
                    *b = (i * 7 + k) as u8;
                }
                if !v6 {
                    p[4..6].copy_from_slice(&(1000 + i as u16).to_be_bytes());
                    p[10..12].copy_from_slice(&[0, 0]);
                    let sum = checksum::complement(checksum::sum_words(&p[..20]));
                    p[10..12].copy_from_slice(&sum.to_be_bytes());
                }
                fix_udp(&mut p);
                p
            })
            .collect()
    }

    fn fix_udp(p: &mut [u8]) {
        let v6 = p[0] >> 4 == 6;
        let at = if v6 { 40 } else { 20 };
        p[at + 6..at + 8].copy_from_slice(&[0, 0]);
        let (src, dst) = if v6 {
            (&p[8..24], &p[24..40])
        } else {
            (&p[12..16], &p[16..20])
        };
        let pseudo = checksum::pseudo_header_sum(src, dst, 17, p.len() - at);
        let mut sum = checksum::complement(pseudo + checksum::sum_words(&p[at..]));
        if sum == 0 {
            sum = 0xffff;
        }
        p[at + 6..at + 8].copy_from_slice(&sum.to_be_bytes());
    }

    /// Joins `packets` from the first as far as they go: how many joined
    /// and the super-packet's segments as the kernel would cut them.
    fn join(packets: &[Vec<u8>]) -> (usize, Vec<Vec<u8>>) {
        let first = Datagram::of(&packets[0]).expect("joinable");
        assert!(first.checksum_ok(&packets[0]));
        let (mut count, mut bytes, mut last) = (1, first.payload(), first.payload());
        for p in &packets[1..] {
            let Some(next) = Datagram::of(p) else { break };
            if !first.joins(count, bytes, last, &next) || !next.checksum_ok(p) {
                break;
            }
            count += 1;
            bytes += next.payload();
            last = next.payload();
        }
        let mut header = [0; MAX_HEADER];
        let len = first
            .super_header(&packets[0], bytes, &mut header)
            .expect("header");
        let payloads: Vec<u8> = packets[..count]
            .iter()
            .flat_map(|p| p[first.header_len()..].to_vec())
            .collect();
        (count, segment(&header[..len], &payloads))
    }

    #[test]
    fn a_train_comes_back_from_the_kernel_as_it_went_in() {
        for v6 in [false, true] {
            let packets = train(v6, 10, 1200, 333);
            let (count, segments) = join(&packets);
            assert_eq!(count, 10);
            assert_eq!(segments, packets, "v6 {v6}");
        }
    }

    #[test]
    fn a_train_stops_at_the_kernels_limits_and_after_a_short_datagram() {
        let packets = train(false, 70, 1000, 1000);
        assert_eq!(join(&packets).0, MAX_SEGMENTS);
        let (count, segments) = join(&packets[..MAX_SEGMENTS]);
        assert_eq!(segments, &packets[..count]);

        let mut packets = train(false, 5, 1200, 1200);
        packets[2] = train(false, 3, 1200, 700).remove(2);
        let (count, segments) = join(&packets);
        assert_eq!(count, 3, "a shorter datagram joins as the last");
        assert_eq!(segments, &packets[..3]);
        let mut short = train(false, 5, 1200, 1200);
        short[1] = train(false, 2, 1200, 700).remove(1);
        assert_eq!(join(&short).0, 2, "nothing follows a shorter datagram");

        // 64 KiB of IP packet at most.
        let big = train(true, 3, 30_000, 30_000);
        assert_eq!(join(&big).0, 2);
    }

    #[test]
    fn only_what_the_kernel_gives_back_unchanged_joins() {
        let base = train(false, 2, 500, 500);
        let first = Datagram::of(&base[0]).expect("joinable");
        let joins = |p: &[u8]| {
            Datagram::of(p).is_some_and(|d| first.joins(1, 500, 500, &d) && d.checksum_ok(p))
        };
        assert!(joins(&base[1]));
        // Each field that must match, changed (checksums fixed after).
        for (at, value) in [(1, 0x10u8), (8, 1), (15, 9), (19, 9), (21, 9), (23, 9)] {
            let mut p = base[1].clone();
            p[at] ^= value;
            p[10..12].copy_from_slice(&[0, 0]);
            let sum = checksum::complement(checksum::sum_words(&p[..20]));
            p[10..12].copy_from_slice(&sum.to_be_bytes());
            fix_udp(&mut p);
            assert!(!joins(&p), "byte {at} changed");
        }
        // A bad UDP checksum, none at all, a bad header checksum.
        let mut p = base[1].clone();
        p[40] ^= 1;
        assert!(!joins(&p));
        let mut p = base[1].clone();
        p[26..28].copy_from_slice(&[0, 0]);
        assert!(!joins(&p));
        let mut p = base[1].clone();
        p[11] ^= 1;
        assert!(!joins(&p));
        // Identifications not counting up, unless DF is set.
        let mut p = base[1].clone();
        p[5] ^= 0x10;
        p[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum::complement(checksum::sum_words(&p[..20]));
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        assert!(joins(&p), "DF set: the id means nothing");
        let without_df: Vec<Vec<u8>> = train(false, 2, 500, 500)
            .into_iter()
            .map(|mut p| {
                p[6] &= !0x40;
                p[10..12].copy_from_slice(&[0, 0]);
                let sum = checksum::complement(checksum::sum_words(&p[..20]));
                p[10..12].copy_from_slice(&sum.to_be_bytes());
                p
            })
            .collect();
        let first = Datagram::of(&without_df[0]).expect("joinable");
        let mut p = without_df[1].clone();
        assert!(first.joins(1, 500, 500, &Datagram::of(&p).expect("udp")));
        p[5] ^= 0x10;
        assert!(!first.joins(1, 500, 500, &Datagram::of(&p).expect("udp")));
    }

    #[test]
    fn fragments_options_other_protocols_and_short_input_do_not_join() {
        let p = train(false, 1, 100, 100).remove(0);
        let mut fragment = p.clone();
        fragment[6] |= 0x20;
        assert_eq!(Datagram::of(&fragment), None);
        let mut options = p.clone();
        options[0] = 0x46;
        assert_eq!(Datagram::of(&options), None);
        let mut tcp = p.clone();
        tcp[9] = 6;
        assert_eq!(Datagram::of(&tcp), None);
        assert_eq!(Datagram::of(&p[..p.len() - 1]), None, "lengths disagree");
        for len in 0..30 {
            let _ = Datagram::of(&p[..len]);
        }
        let v6 = train(true, 1, 100, 100).remove(0);
        let mut ext = v6.clone();
        ext[6] = 0;
        assert_eq!(Datagram::of(&ext), None);
        let d = Datagram::of(&v6).expect("joinable");
        assert!(d.checksum_ok(&v6));
        assert!(!d.checksum_ok(&v6[..20]));
        assert_eq!(d.super_header(&v6[..10], 100, &mut [0; MAX_HEADER]), None);
        assert_eq!(d.super_header(&v6, 100, &mut [0; 20]), None);
    }

    /// The super-packet the train's datagrams make (what a TUN with UDP
    /// segmentation offload reads), without its virtio-net header, and
    /// its segment size.
    fn super_packet(packets: &[Vec<u8>]) -> (Vec<u8>, usize) {
        let first = Datagram::of(&packets[0]).expect("joinable");
        let hdr = first.header_len();
        let payloads: Vec<u8> = packets.iter().flat_map(|p| p[hdr..].to_vec()).collect();
        let mut head = [0; MAX_HEADER];
        let len = first
            .super_header(&packets[0], payloads.len(), &mut head)
            .expect("header");
        let mut whole = head[vnet::LEN..len].to_vec();
        whole.extend_from_slice(&payloads);
        (whole, first.payload())
    }

    fn split_all(packet: &[u8], gso_size: usize) -> Result<Vec<Vec<u8>>, SplitError> {
        let mut out = vec![0; MAX_SPLIT_LEN];
        let mut ranges = Vec::new();
        let used = split(packet, gso_size, &mut out, |r| ranges.push(r))?;
        assert_eq!(ranges.last().map_or(0, |r| r.end), used);
        Ok(ranges.into_iter().map(|r| out[r].to_vec()).collect())
    }

    #[test]
    fn a_super_packet_splits_into_the_datagrams_it_was_made_of() {
        for v6 in [false, true] {
            for (n, len, last) in [
                (1, 1200, 1200),
                (5, 1200, 1200),
                (10, 1200, 300),
                (64, 1000, 1),
            ] {
                let packets = train(v6, n, len, last);
                let (whole, gso_size) = super_packet(&packets);
                let got = split_all(&whole, gso_size).expect("splits");
                assert_eq!(got, packets, "v6 {v6}, {n} x {len}, last {last}");
                for p in &got {
                    assert!(Datagram::of(p).expect("a datagram").checksum_ok(p));
                }
            }
        }
    }

    #[test]
    fn a_partial_or_broken_checksum_in_the_super_packet_does_not_matter() {
        // The kernel hands it over with the pseudo-header's sum (partial),
        // or anything: each datagram's is computed afresh.
        let packets = train(false, 3, 500, 500);
        let (mut whole, gso_size) = super_packet(&packets);
        whole[26..28].copy_from_slice(&[0xde, 0xad]);
        assert_eq!(split_all(&whole, gso_size).expect("splits"), packets);
    }

    #[test]
    fn what_is_not_a_udp_super_packet_is_refused_without_a_panic() {
        let packets = train(true, 4, 800, 800);
        let (whole, gso_size) = super_packet(&packets);
        assert!(matches!(
            split_all(&whole, 0),
            Err(SplitError::Segments { gso_size: 0, .. })
        ));
        assert!(matches!(
            split_all(&whole, 10),
            Err(SplitError::Segments { count: 320, .. })
        ));
        for cut in 0..whole.len() {
            assert!(split_all(&whole[..cut], gso_size).is_err(), "cut at {cut}");
        }
        let mut tcp = whole.clone();
        tcp[6] = 6;
        assert_eq!(
            split_all(&tcp, gso_size),
            Err(SplitError::NotUdp { len: whole.len() })
        );
        let mut small = vec![0; 100];
        assert!(matches!(
            split(&whole, gso_size, &mut small, |_| panic!("nothing emitted")),
            Err(SplitError::NoRoom { room: 100, .. })
        ));
        // An empty payload is one empty datagram.
        let empty = train(false, 1, 0, 0);
        assert_eq!(split_all(&empty[0], 1200).expect("splits"), empty);
    }
}
