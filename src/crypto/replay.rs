//! The anti-replay window of a session: RFC 6479's bitmap, wide enough for
//! the reordering of several uplinks with different delays, and for the
//! duplicates of redundant mode.
//!
//! The window remembers which of the last [`WINDOW`] counters were
//! received, in a ring of [`BLOCKS`] 64-bit words (RFC 6479 § 2): moving the
//! window forward clears whole words, at most [`BLOCKS`] of them, and
//! checking or marking a counter touches one bit, so each packet costs
//! O(1) however far the counter jumps.
//!
//! Checking is split in two (as WireGuard does, paper § 5.4.6): a packet is
//! first asked [`ReplayWindow::check`] (cheap, before the AEAD), and only
//! once its tag verified is it [`ReplayWindow::commit`]ted. Forged packets
//! with made-up counters therefore never move the window, so they cannot
//! push genuine packets out of it.

use super::timers::REJECT_AFTER_MESSAGES;

/// Words in the bitmap ring.
pub const BLOCKS: usize = 128;
/// Bits per word.
const BLOCK_BITS: u64 = 64;
/// How many counters below the highest one received are still accepted:
/// one word of the ring is the one being filled, so 127 × 64 = 8128.
pub const WINDOW: u64 = (BLOCKS as u64 - 1) * BLOCK_BITS;

/// Why a counter is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// This counter was received before (a replay, or a duplicate sent on
    /// another path in redundant mode).
    #[error("counter {counter} already received: replayed or duplicate packet")]
    Duplicate {
        /// The counter refused.
        counter: u64,
    },
    /// The counter is further behind the highest one received than the
    /// window remembers.
    #[error("counter {counter} is older than the replay window (highest received {highest})")]
    TooOld {
        /// The counter refused.
        counter: u64,
        /// The highest counter received so far.
        highest: u64,
    },
    /// The counter is past the last one a session may use; the sender
    /// should have rekeyed.
    #[error("counter {counter} is past the session's limit: the peer must handshake again")]
    Exhausted {
        /// The counter refused.
        counter: u64,
    },
}

/// Which counters of a session were received (RFC 6479).
#[derive(Clone)]
pub struct ReplayWindow {
    /// The highest counter received plus one; 0 before the first.
    top: u64,
    bitmap: [u64; BLOCKS],
}

impl ReplayWindow {
    /// A window that has received nothing.
    pub fn new() -> Self {
        Self {
            top: 0,
            bitmap: [0; BLOCKS],
        }
    }

    /// The highest counter received, if any.
    pub fn highest(&self) -> Option<u64> {
        self.top.checked_sub(1)
    }

    /// Whether a packet with `counter` would be accepted. Changes nothing:
    /// call [`ReplayWindow::commit`] once the packet authenticated.
    pub fn check(&self, counter: u64) -> Result<(), ReplayError> {
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(ReplayError::Exhausted { counter });
        }
        let Some(highest) = self.highest() else {
            return Ok(());
        };
        if counter > highest {
            return Ok(());
        }
        if highest - counter >= WINDOW {
            return Err(ReplayError::TooOld { counter, highest });
        }
        let (word, bit) = position(counter);
        if self.bitmap[word] & bit != 0 {
            return Err(ReplayError::Duplicate { counter });
        }
        Ok(())
    }

    /// Marks `counter` received, moving the window forward if it is the
    /// highest yet. Checks again first, so a counter is never accepted
    /// twice even if the caller skipped [`ReplayWindow::check`].
    pub fn commit(&mut self, counter: u64) -> Result<(), ReplayError> {
        self.check(counter)?;
        if counter >= self.top {
            let new_word = counter / BLOCK_BITS;
            match self.highest() {
                None => self.bitmap = [0; BLOCKS],
                Some(highest) => {
                    let old_word = highest / BLOCK_BITS;
                    let clear = (new_word - old_word).min(BLOCKS as u64);
                    for step in 1..=clear {
                        let word = (old_word.wrapping_add(step) % BLOCKS as u64) as usize;
                        self.bitmap[word] = 0;
                    }
                }
            }
            // No overflow: check refused counters at or past the limit.
            self.top = counter + 1;
        }
        let (word, bit) = position(counter);
        self.bitmap[word] |= bit;
        Ok(())
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("highest", &self.highest())
            .finish_non_exhaustive()
    }
}

/// The word of the ring and the bit in it that stand for `counter`.
fn position(counter: u64) -> (usize, u64) {
    let word = ((counter / BLOCK_BITS) % BLOCKS as u64) as usize;
    (word, 1 << (counter % BLOCK_BITS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(window: &mut ReplayWindow, counter: u64) -> Result<(), ReplayError> {
        window.check(counter)?;
        window.commit(counter)
    }

    #[test]
    fn in_order_then_duplicates() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.highest(), None);
        for c in 0..20_000 {
            assert_eq!(accept(&mut w, c), Ok(()), "{c}");
        }
        assert_eq!(w.highest(), Some(19_999));
        for c in [19_999, 19_000, 20_000 - WINDOW] {
            assert_eq!(
                accept(&mut w, c),
                Err(ReplayError::Duplicate { counter: c })
            );
        }
        let old = 19_999 - WINDOW;
        assert_eq!(
            accept(&mut w, old),
            Err(ReplayError::TooOld {
                counter: old,
                highest: 19_999
            })
        );
    }

    #[test]
    fn counter_zero_is_a_counter() {
        let mut w = ReplayWindow::new();
        assert_eq!(accept(&mut w, 0), Ok(()));
        assert_eq!(
            accept(&mut w, 0),
            Err(ReplayError::Duplicate { counter: 0 })
        );
        assert_eq!(accept(&mut w, 1), Ok(()));

        // Zero arriving late, after others.
        let mut w = ReplayWindow::new();
        assert_eq!(accept(&mut w, 5), Ok(()));
        assert_eq!(accept(&mut w, 0), Ok(()));
        assert_eq!(
            accept(&mut w, 0),
            Err(ReplayError::Duplicate { counter: 0 })
        );
    }

    #[test]
    fn reordering_within_the_window_is_accepted_once() {
        // Two paths: evens arrive at once, odds WINDOW/2 packets late.
        let mut w = ReplayWindow::new();
        let lag = WINDOW / 2;
        let mut accepted = 0;
        for c in 0..50_000u64 {
            if c % 2 == 0 {
                assert_eq!(accept(&mut w, c), Ok(()));
                accepted += 1;
            }
            if let Some(late) = c.checked_sub(lag).filter(|l| l % 2 == 1) {
                assert_eq!(accept(&mut w, late), Ok(()), "{late}");
                accepted += 1;
                // Redundant mode: the same packet again over the other path.
                assert_eq!(
                    accept(&mut w, late),
                    Err(ReplayError::Duplicate { counter: late })
                );
            }
        }
        assert_eq!(accepted, 50_000 - lag / 2);
    }

    #[test]
    fn the_edge_of_the_window() {
        let mut w = ReplayWindow::new();
        let top = 100_000;
        assert_eq!(accept(&mut w, top), Ok(()));
        assert_eq!(accept(&mut w, top - WINDOW + 1), Ok(()));
        assert_eq!(
            accept(&mut w, top - WINDOW),
            Err(ReplayError::TooOld {
                counter: top - WINDOW,
                highest: top
            })
        );
    }

    #[test]
    fn a_jump_bigger_than_the_window_forgets_everything_before() {
        let mut w = ReplayWindow::new();
        for c in 0..1000 {
            assert_eq!(accept(&mut w, c), Ok(()));
        }
        let far = 1000 + 3 * WINDOW + 17;
        assert_eq!(accept(&mut w, far), Ok(()));
        assert!(matches!(
            accept(&mut w, 999),
            Err(ReplayError::TooOld { .. })
        ));
        // Everything inside the new window is fresh: no stale bit survived
        // the jump, even in words that wrapped around the ring.
        for c in far - WINDOW + 1..far {
            assert_eq!(w.check(c), Ok(()), "{c}");
        }
        for c in (far - WINDOW + 1..far).rev() {
            assert_eq!(accept(&mut w, c), Ok(()), "{c}");
        }
        // A jump of exactly one ring's worth of words.
        let next = far + BLOCKS as u64 * 64;
        assert_eq!(accept(&mut w, next), Ok(()));
        for c in next - WINDOW + 1..next {
            assert_eq!(w.check(c), Ok(()), "{c}");
        }
    }

    #[test]
    fn jumps_of_every_size_clear_exactly_what_they_pass() {
        let mut w = ReplayWindow::new();
        let mut highest = 0u64;
        assert_eq!(accept(&mut w, 0), Ok(()));
        for jump in [
            1u64, 63, 64, 65, 127, 128, 4000, 8127, 8128, 8129, 8192, 9000,
        ] {
            let counter = highest + jump;
            assert_eq!(accept(&mut w, counter), Ok(()));
            // The previous highest is remembered iff still in the window.
            let again = accept(&mut w, highest);
            if jump < WINDOW {
                assert_eq!(again, Err(ReplayError::Duplicate { counter: highest }));
            } else {
                assert!(matches!(again, Err(ReplayError::TooOld { .. })));
            }
            highest = counter;
        }
    }

    #[test]
    fn check_alone_does_not_move_the_window() {
        let mut w = ReplayWindow::new();
        assert_eq!(accept(&mut w, 10), Ok(()));
        // A forged packet far ahead is checked, fails its AEAD, and is
        // never committed: the window stays where it was.
        assert_eq!(w.check(1_000_000), Ok(()));
        assert_eq!(w.highest(), Some(10));
        assert_eq!(accept(&mut w, 9), Ok(()));
    }

    #[test]
    fn near_the_end_of_the_counter_space() {
        let last = REJECT_AFTER_MESSAGES - 1;
        let mut w = ReplayWindow::new();
        assert_eq!(accept(&mut w, last - 1), Ok(()));
        assert_eq!(accept(&mut w, last), Ok(()));
        assert_eq!(
            accept(&mut w, last),
            Err(ReplayError::Duplicate { counter: last })
        );
        for counter in [REJECT_AFTER_MESSAGES, u64::MAX - 1, u64::MAX] {
            assert_eq!(
                accept(&mut w, counter),
                Err(ReplayError::Exhausted { counter })
            );
        }
        assert_eq!(accept(&mut w, last - 100), Ok(()));
        assert!(matches!(accept(&mut w, 0), Err(ReplayError::TooOld { .. })));
    }
}
