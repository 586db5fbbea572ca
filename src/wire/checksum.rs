//! The Internet checksum (RFC 1071): full sums, the pseudo-header of TCP,
//! UDP and ICMPv6, and in-place incremental updates (RFC 1624) for a
//! rewrite that changes a few fields of a packet.
//!
//! Sums are kept unfolded in a `u64` (no carry is lost for any packet
//! below 2^48 bytes) and folded to 16 bits at the end with [`fold`]. A
//! checksum field holds the complement of the folded sum.

/// Sum of `data` as big-endian 16-bit words (an odd last byte padded with
/// zero), unfolded: equal, once folded, to adding the words one by one.
/// Eight bytes at a time, as two 32-bit words (`2^16` is 1 modulo
/// `0xffff`, so a 32-bit word adds what its two halves would): the
/// checksum of every datagram through the tunnel runs through here.
pub fn sum_words(data: &[u8]) -> u64 {
    let mut wide = data.chunks_exact(8);
    let mut sum: u64 = 0;
    for chunk in wide.by_ref() {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_be_bytes(word);
        sum += (word >> 32) + (word & 0xffff_ffff);
    }
    let mut words = wide.remainder().chunks_exact(2);
    sum += words
        .by_ref()
        .map(|word| match word {
            [hi, lo] => u64::from(u16::from_be_bytes([*hi, *lo])),
            _ => 0,
        })
        .sum::<u64>();
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Sum of the ones complements of the 16-bit words of an even-length
/// `data` (a trailing odd byte is ignored), unfolded.
pub fn sum_complemented_words(data: &[u8]) -> u64 {
    data.chunks_exact(2)
        .map(|word| match word {
            [hi, lo] => u64::from(!u16::from_be_bytes([*hi, *lo])),
            _ => 0,
        })
        .sum()
}

/// Folds an unfolded ones-complement sum into 16 bits (end-around carry).
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Ones-complement sum of the TCP/UDP/ICMPv6 pseudo-header (IPv4 or IPv6,
/// by address length), unfolded: the source and destination addresses,
/// the protocol and the upper-layer length.
pub fn pseudo_header_sum(src: &[u8], dst: &[u8], protocol: u8, upper_len: usize) -> u64 {
    sum_words(src)
        + sum_words(dst)
        + u64::from(protocol)
        + (upper_len as u64 >> 16)
        + (upper_len as u64 & 0xffff)
}

/// The checksum of data whose unfolded sum (pseudo-header included where
/// the protocol has one) is `sum`: what to write into the checksum field,
/// which was zero while summing.
pub fn complement(sum: u64) -> u16 {
    !fold(sum)
}

/// Overwrites the `N` bytes at `at` with `new`, adding the change to the
/// ones-complement `delta` (`~old + new`, word by word) for
/// [`adjust`]. `N` is even. Does nothing if the bytes are not in `packet`.
pub fn replace<const N: usize>(packet: &mut [u8], at: usize, new: [u8; N], delta: &mut u64) {
    let Some(slot) = packet
        .get_mut(at..at.saturating_add(N))
        .and_then(|slot| <&mut [u8; N]>::try_from(slot).ok())
    else {
        return;
    };
    *delta += sum_complemented_words(slot) + sum_words(&new);
    *slot = new;
}

/// Applies `delta` (from [`replace`]) to the checksum field at `at`: RFC
/// 1624 equation 3, `HC' = ~(~HC + ~m + m')`. A correct checksum stays
/// correct and equals a full computation (0x0000, never 0xffff, for a zero
/// result); an incorrect one stays incorrect by the same amount. Does
/// nothing if the field is not in `packet`.
pub fn adjust(packet: &mut [u8], at: usize, delta: u64) {
    let Some(slot) = field(packet, at) else {
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

/// Applies `delta` (from [`replace`]) to a partial checksum field at `at`:
/// one that holds a pseudo-header sum, not complemented, for the device
/// to complete (a TUN's `NEEDS_CSUM`). The sum simply gains the change:
/// `S' = S + ~m + m'`. Does nothing if the field is not in `packet`.
pub fn adjust_partial(packet: &mut [u8], at: usize, delta: u64) {
    let Some(slot) = field(packet, at) else {
        return;
    };
    let old = u16::from_be_bytes(*slot);
    *slot = fold(u64::from(old) + delta).to_be_bytes();
}

/// The two-byte checksum field at `at`, if `packet` holds it.
fn field(packet: &mut [u8], at: usize) -> Option<&mut [u8; 2]> {
    packet
        .get_mut(at..at.saturating_add(2))
        .and_then(|slot| <&mut [u8; 2]>::try_from(slot).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 §3's example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
    #[test]
    fn rfc_1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum_words(&data)), 0xddf2);
        assert_eq!(complement(sum_words(&data)), !0xddf2);
    }

    #[test]
    fn wide_sums_fold_as_word_by_word_sums() {
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..300 {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng as u8
                })
                .collect();
            let mut words = data
                .chunks(2)
                .map(|w| u64::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)])));
            let slow: u64 = words.by_ref().sum();
            assert_eq!(fold(sum_words(&data)), fold(slow), "{len} bytes");
        }
        assert_eq!(fold(sum_words(&[0xff; 64])), 0xffff);
        assert_eq!(fold(sum_words(&[0; 64])), 0);
    }

    #[test]
    fn an_odd_last_byte_is_padded_with_zero() {
        assert_eq!(sum_words(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }

    /// RFC 1624 §4's example: a word changing from 0x5555 to 0x3285 under
    /// a checksum of 0xdd2f gives 0x0000, not 0xffff.
    #[test]
    fn rfc_1624_example_gives_positive_zero() {
        let mut packet = [0x55, 0x55, 0xdd, 0x2f];
        let mut delta = 0;
        replace(&mut packet, 0, [0x32, 0x85], &mut delta);
        adjust(&mut packet, 2, delta);
        assert_eq!(packet, [0x32, 0x85, 0x00, 0x00]);
    }

    #[test]
    fn fields_outside_the_packet_are_left_alone() {
        let mut packet = [1, 2, 3];
        let mut delta = 0;
        replace(&mut packet, 2, [9, 9], &mut delta);
        replace(&mut packet, usize::MAX, [9, 9], &mut delta);
        adjust(&mut packet, 2, 7);
        adjust(&mut packet, usize::MAX, 7);
        assert_eq!((packet, delta), ([1, 2, 3], 0));
    }
}
