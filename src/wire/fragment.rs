//! Packets larger than the datagram tunnel's MTU: what a router does with
//! them (RFC 791 §2.3 and §3.2, RFC 1191, RFC 8200 §5).
//!
//! [`fit`] decides: a packet that fits goes as it is; an IPv4 packet that
//! may be fragmented (DF clear) is cut into [`Fragments`] that each fit,
//! so every sealed datagram on the line is a whole UDP datagram (carrier
//! NATs often drop fragments of the outer datagram); one that may not (DF
//! set, or any IPv6 packet, which routers never fragment) is refused: the
//! caller answers it with [`super::icmp::build_icmp_too_big_for`], and the
//! sender's path MTU discovery does the rest. An IPv6 tunnel MTU below
//! 1280, the least IPv6 allows a link, still carries packets up to 1280:
//! those alone rely on the outer datagram being fragmented.
//!
//! Pure and panic-free; [`Fragments`] writes into a buffer the caller owns.

use super::{be16, byte, ipv4};

/// The smallest MTU every IPv6 link has (RFC 8200 §5).
pub const IPV6_MIN_MTU: usize = 1280;

/// The More Fragments bit of the flags/fragment-offset word.
const MORE_FRAGMENTS: u16 = 0x2000;
/// The Don't Fragment bit.
const DONT_FRAGMENT: u16 = 0x4000;
/// The fragment offset bits (in 8-byte units).
const OFFSET_BITS: u16 = 0x1fff;

/// What to do with a packet given the tunnel's MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Send it as it is: it fits, it is not an IP packet this module
    /// knows (the caller's parsers deal with it), or it may only go whole
    /// (an IPv6 packet of at most 1280 bytes, an IPv4 one with options).
    Send,
    /// An IPv4 packet that may be fragmented: send its [`Fragments`].
    Fragment,
    /// Too big and may not be fragmented: drop it and tell the sender the
    /// MTU (ICMP fragmentation needed, ICMPv6 Packet Too Big).
    Refuse,
}

/// What to do with `packet` when the tunnel carries IP packets of at most
/// `mtu` bytes.
pub fn fit(packet: &[u8], mtu: usize) -> Fit {
    if packet.len() <= mtu {
        return Fit::Send;
    }
    match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let Some(header_len) = ipv4_header_len(packet) else {
                return Fit::Send;
            };
            if be16(packet, ipv4::field::FLAGS_FRAGMENT) & DONT_FRAGMENT != 0 {
                Fit::Refuse
            } else if header_len != ipv4::MIN_HEADER_LEN || header_len + 8 > mtu {
                // Options would have to be sorted into those every fragment
                // copies and those only the first carries; packets with
                // options are rare and often filtered anyway.
                Fit::Send
            } else if usize::from(be16(packet, ipv4::field::TOTAL_LEN)) <= mtu {
                // Only trailing bytes past the datagram make it long.
                Fit::Send
            } else {
                Fit::Fragment
            }
        }
        Some(6) if packet.len() <= IPV6_MIN_MTU => Fit::Send,
        Some(6) => Fit::Refuse,
        _ => Fit::Send,
    }
}

/// The MTU to announce in the error for a refused packet: the tunnel's,
/// and never below 1280 for IPv6 (a smaller one is ignored by hosts, RFC
/// 8201 §4; up to 1280 the tunnel carries IPv6 anyway).
pub fn announced_mtu(packet: &[u8], mtu: usize) -> u16 {
    let floor = match packet.first().map(|b| b >> 4) {
        Some(6) => IPV6_MIN_MTU,
        _ => 68,
    };
    u16::try_from(mtu.max(floor)).unwrap_or(u16::MAX)
}

/// The header length of a well-formed IPv4 datagram whose total length
/// the buffer holds.
fn ipv4_header_len(packet: &[u8]) -> Option<usize> {
    let header_len = usize::from(byte(packet, ipv4::field::VERSION_IHL) & 0x0f) * 4;
    let total_len = usize::from(be16(packet, ipv4::field::TOTAL_LEN));
    (header_len >= ipv4::MIN_HEADER_LEN && header_len <= total_len && total_len <= packet.len())
        .then_some(header_len)
}

/// The fragments of an IPv4 datagram, each at most the MTU: the header
/// copied with its total length, More Fragments bit, offset and checksum
/// set; a fragment of a fragment keeps its place in the original datagram
/// (offset added, More Fragments kept on the last piece).
#[derive(Debug, Clone)]
pub struct Fragments<'a> {
    packet: &'a [u8],
    /// Payload bytes per fragment, a multiple of 8.
    step: usize,
    /// Offset of the next piece in the payload.
    at: usize,
}

impl<'a> Fragments<'a> {
    /// The fragments of `packet` for `mtu`, if [`fit`] says
    /// [`Fit::Fragment`].
    pub fn new(packet: &'a [u8], mtu: usize) -> Option<Self> {
        if fit(packet, mtu) != Fit::Fragment {
            return None;
        }
        let total_len = usize::from(be16(packet, ipv4::field::TOTAL_LEN));
        let step = (mtu - ipv4::MIN_HEADER_LEN) & !7;
        Some(Self {
            packet: packet.get(..total_len)?,
            step,
            at: 0,
        })
    }

    /// How many fragments there are in all.
    pub fn count(&self) -> usize {
        let payload = self.packet.len() - ipv4::MIN_HEADER_LEN;
        payload.div_ceil(self.step)
    }

    /// Writes the next fragment at the start of `out` and returns its
    /// length; `None` when all are written or `out` is too small for the
    /// next (at most the MTU).
    pub fn next_into(&mut self, out: &mut [u8]) -> Option<usize> {
        use ipv4::field;
        const HEADER: usize = ipv4::MIN_HEADER_LEN;
        let payload = self.packet.get(HEADER..)?;
        let piece = payload.get(self.at..)?;
        if piece.is_empty() {
            return None;
        }
        let len = piece.len().min(self.step);
        let out = out.get_mut(..HEADER + len)?;
        let (header, body) = out.split_at_mut(HEADER);
        header.copy_from_slice(self.packet.get(..HEADER)?);
        body.copy_from_slice(piece.get(..len)?);

        let flags = be16(self.packet, field::FLAGS_FRAGMENT);
        let last = self.at + len == payload.len();
        let offset = (flags & OFFSET_BITS) + u16::try_from(self.at / 8).ok()?;
        let more = if last {
            flags & MORE_FRAGMENTS
        } else {
            MORE_FRAGMENTS
        };
        let word = (flags & !(OFFSET_BITS | MORE_FRAGMENTS)) | more | (offset & OFFSET_BITS);
        let total = u16::try_from(HEADER + len).ok()?;
        header[field::TOTAL_LEN..field::TOTAL_LEN + 2].copy_from_slice(&total.to_be_bytes());
        header[field::FLAGS_FRAGMENT..field::FLAGS_FRAGMENT + 2]
            .copy_from_slice(&word.to_be_bytes());
        header[field::CHECKSUM..field::CHECKSUM + 2].copy_from_slice(&[0, 0]);
        let sum = super::checksum::complement(super::checksum::sum_words(header));
        header[field::CHECKSUM..field::CHECKSUM + 2].copy_from_slice(&sum.to_be_bytes());
        self.at += len;
        Some(HEADER + len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_packets::{sized_udp as udp, XorShift};
    use etherparse::{defrag::IpDefragPool, NetSlice, SlicedPacket};

    fn all(packet: &[u8], mtu: usize) -> Vec<Vec<u8>> {
        let mut fragments = Fragments::new(packet, mtu).expect("fragmentable");
        let count = fragments.count();
        let mut out = vec![0; mtu];
        let mut pieces = Vec::new();
        while let Some(len) = fragments.next_into(&mut out) {
            pieces.push(out[..len].to_vec());
        }
        assert_eq!(pieces.len(), count);
        pieces
    }

    #[test]
    fn what_fits_goes_and_what_may_not_be_cut_is_refused() {
        let mtu = 1438;
        assert_eq!(
            fit(&udp(false, 1410, true), mtu),
            Fit::Send,
            "1438 bytes fit"
        );
        assert_eq!(fit(&udp(false, 1411, true), mtu), Fit::Refuse, "DF set");
        assert_eq!(fit(&udp(false, 1411, false), mtu), Fit::Fragment);
        assert_eq!(fit(&udp(true, 1390, false), mtu), Fit::Send);
        assert_eq!(
            fit(&udp(true, 1391, false), mtu),
            Fit::Refuse,
            "IPv6: never cut"
        );
        assert_eq!(
            fit(&udp(true, 1232, false), 1200),
            Fit::Send,
            "IPv6 up to 1280 always goes"
        );
        assert_eq!(fit(&udp(true, 1233, false), 1200), Fit::Refuse);
        assert_eq!(announced_mtu(&udp(true, 1233, false), 1200), 1280);
        assert_eq!(announced_mtu(&udp(false, 1233, true), 1200), 1200);
        // Not IP, or an IPv4 header that lies: left to the parsers.
        assert_eq!(fit(&[0u8; 2000], mtu), Fit::Send);
        let mut lying = udp(false, 1411, false);
        lying[2..4].copy_from_slice(&5000u16.to_be_bytes());
        assert_eq!(fit(&lying, mtu), Fit::Send);
        let mut options = udp(false, 1411, false);
        options[0] = 0x46;
        assert_eq!(fit(&options, mtu), Fit::Send, "options: whole");
        // Trailing bytes beyond the total length do not count.
        let mut padded = udp(false, 1000, false);
        padded.resize(1600, 0);
        assert_eq!(fit(&padded, mtu), Fit::Send);
    }

    #[test]
    fn fragments_fit_and_reassemble_to_the_original() {
        for (payload, mtu) in [
            (1472, 1438),
            (8000, 1438),
            (3000, 576),
            (1411, 1438),
            (100, 68),
        ] {
            let packet = udp(false, payload, false);
            let pieces = all(&packet, mtu);
            let mut pool = IpDefragPool::<(), ()>::new();
            let mut whole = None;
            for piece in &pieces {
                assert!(piece.len() <= mtu, "{} > {mtu}", piece.len());
                let sliced = SlicedPacket::from_ip(piece).expect("a fragment parses");
                let Some(NetSlice::Ipv4(ip)) = &sliced.net else {
                    panic!("IPv4")
                };
                let header = ip.header().to_header();
                assert_eq!(header.header_checksum, header.calc_header_checksum());
                if let Some(done) = pool
                    .process_sliced_packet(&sliced, (), ())
                    .expect("reassembles")
                {
                    whole = Some(done);
                }
            }
            let whole = whole.expect("complete");
            assert_eq!(
                whole.payload,
                packet[20..],
                "payload {payload} at mtu {mtu}"
            );
        }
    }

    #[test]
    fn a_fragment_of_a_fragment_keeps_its_place() {
        let packet = udp(false, 2000, false);
        // The second half of the original, as a fragment at offset 1000.
        let mut second = packet[..20].to_vec();
        second.extend_from_slice(&packet[20 + 1000..]);
        let total = second.len() as u16;
        second[2..4].copy_from_slice(&total.to_be_bytes());
        second[6..8].copy_from_slice(&(1000u16 / 8).to_be_bytes());
        let pieces = all(&second, 576);
        let offsets: Vec<(u16, bool)> = pieces
            .iter()
            .map(|p| {
                let word = u16::from_be_bytes([p[6], p[7]]);
                (word & OFFSET_BITS, word & MORE_FRAGMENTS != 0)
            })
            .collect();
        assert_eq!(
            offsets,
            [(125, true), (194, false)],
            "offsets in 8-byte units; the original's last piece ends it"
        );
        // A middle fragment (More Fragments set) keeps it on its last piece.
        second[6..8].copy_from_slice(&(MORE_FRAGMENTS | 125).to_be_bytes());
        let pieces = all(&second, 576);
        assert!(pieces.iter().all(|p| p[6] & 0x20 != 0));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = XorShift(0x5eed);
        let mut out = vec![0; 2048];
        for _ in 0..20_000 {
            let len = rng.below(2048);
            let mut packet = vec![0; len];
            rng.fill(&mut packet);
            if rng.chance(2) && len > 0 {
                packet[0] = 0x45;
            }
            let mtu = 60 + rng.below(2000);
            let _ = fit(&packet, mtu);
            if let Some(mut fragments) = Fragments::new(&packet, mtu) {
                let mut n = 0;
                while let Some(len) = fragments.next_into(&mut out) {
                    assert!(len <= mtu);
                    n += 1;
                    assert!(n <= 2048, "bounded");
                }
            }
        }
    }
}
