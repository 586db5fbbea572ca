//! The concentrator's clock as a client keeps it, and the budget of the
//! answers that tell it.
//!
//! Every authenticated message a client sends carries a wall-clock
//! timestamp that the concentrator checks against its own clock within
//! ±30 s: connect headers ([`crate::auth::ConnectGuard`]), plain uplink
//! probes ([`crate::wire::probe`]) and, ordered per client, the datagram
//! tunnel's handshake ([`crate::crypto::handshake`]). A client whose clock
//! is off by more (a home router that booted without a real-time clock, or
//! whose NTP stepped it by minutes) would have every new connection
//! refused and its probes ignored.
//!
//! So the client stamps nothing with its own clock alone: every timestamp
//! is its wall clock plus an [`Offset`] (the concentrator's clock less its
//! own), 0 until it learns better. The concentrator answers a request
//! that authenticates but lies outside its window with its own clock,
//! under a MAC with the client's key bound to that very request
//! ([`crate::auth::sign_clock`] for a connect header, a probe's
//! [`crate::wire::probe::Kind::Clock`] echo for a probe). The client checks
//! the MAC and that the answer is for a request it sent within
//! [`MAX_SAMPLE_RTT`], adopts the offset ([`Offset::learn`]) and signs
//! again: after a step, one connection (or probe) costs one more round
//! trip, and everything after it carries the concentrator's time.
//!
//! Why learn from refusals rather than follow the monotonic clock or
//! stamp every answer:
//!
//! - The concentrator's clock is the one that judges, so its answer is the
//!   only measure that matters; the client's own clock may be right or
//!   wrong, and a step of it (in either direction, by NTP or by hand) is
//!   noticed the first time it matters, with no guess about which clock
//!   moved or about suspend (the monotonic clock stops while a laptop
//!   sleeps).
//! - An answer only ever comes for a request that authenticated with the
//!   client's key, costs the concentrator one MAC (rate-limited per client
//!   by an [`AnswerBudget`]) and nothing for packets that do not
//!   authenticate.
//! - An attacker on the path cannot shift the offset: an answer counts only
//!   with a MAC made with the client's key over the request it answers,
//!   and only within [`MAX_SAMPLE_RTT`] of that request; holding a genuine
//!   answer back shifts the estimate by at most half of that (2.5 s, well
//!   inside the window). Replays stay refused: the offset changes which
//!   timestamps the client makes, not which the concentrator accepts (its
//!   window, epoch and replay guard are unchanged).
//!
//! Pure: the caller passes both clocks.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The longest a request may have waited for its answer for that answer to
/// set the offset. The offset is estimated at the middle of the round
/// trip, so an answer held back on the way moves it by at most half this.
pub const MAX_SAMPLE_RTT: Duration = Duration::from_secs(5);

/// A change of the offset at least this large is a step worth a log line;
/// smaller ones are the estimate's noise (half a round trip).
pub const STEP_MS: u64 = 1_000;

/// What the client adds to its wall clock to get the concentrator's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offset {
    ms: i64,
}

/// One authenticated answer that told the concentrator's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// The concentrator's clock when it answered, unix milliseconds.
    pub concentrator_ms: u64,
    /// When the request it answers was sent (monotonic clock).
    pub sent: Instant,
    /// When the answer arrived (monotonic clock).
    pub received: Instant,
    /// The client's own wall clock when the answer arrived, unix
    /// milliseconds (without any offset).
    pub local_ms: u64,
}

/// Why a [`Sample`] was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SampleError {
    /// The answer came too long after the request: held back on the way,
    /// or a very slow line; its time would be too uncertain.
    #[error(
        "clock answer came {} ms after its request (at most {} ms count): not used",
        .rtt.as_millis(),
        MAX_SAMPLE_RTT.as_millis()
    )]
    TooSlow {
        /// The round trip.
        rtt: Duration,
    },
    /// The answer arrived before its request was sent: a caller's mistake.
    #[error("clock answer arrived before its request was sent: not used")]
    Reversed,
}

/// What [`Offset::learn`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Learnt {
    /// The offset before, in milliseconds.
    pub before_ms: i64,
    /// The offset now, in milliseconds.
    pub after_ms: i64,
}

impl Learnt {
    /// Whether the offset moved by at least [`STEP_MS`]: a clock stepped
    /// (or the first answer after start found the clocks apart).
    pub fn is_step(&self) -> bool {
        self.before_ms.abs_diff(self.after_ms) >= STEP_MS
    }
}

impl Offset {
    /// No offset: the client's clock is taken as the concentrator's.
    pub const ZERO: Self = Self { ms: 0 };

    /// The offset in milliseconds (the concentrator's clock less the
    /// client's).
    pub fn as_ms(self) -> i64 {
        self.ms
    }

    /// The concentrator's clock for the client's wall clock `local_ms`
    /// (unix milliseconds); saturates at 0 and `u64::MAX`.
    pub fn stamp_ms(self, local_ms: u64) -> u64 {
        let stamped = i128::from(local_ms) + i128::from(self.ms);
        u64::try_from(stamped.max(0)).unwrap_or(u64::MAX)
    }

    /// [`Self::stamp_ms`] for a time since 1970 with sub-millisecond
    /// precision (the datagram handshake's TAI64N timestamp).
    pub fn stamp(self, local: Duration) -> Duration {
        let shift = Duration::from_millis(self.ms.unsigned_abs());
        if self.ms >= 0 {
            local.saturating_add(shift)
        } else {
            local.saturating_sub(shift)
        }
    }

    /// Adopts the offset `sample` shows: the concentrator's clock at the
    /// middle of the round trip against the client's at the answer's
    /// arrival, moved on by half the round trip.
    pub fn learn(&mut self, sample: &Sample) -> Result<Learnt, SampleError> {
        let rtt = sample
            .received
            .checked_duration_since(sample.sent)
            .ok_or(SampleError::Reversed)?;
        if rtt > MAX_SAMPLE_RTT {
            return Err(SampleError::TooSlow { rtt });
        }
        // Below MAX_SAMPLE_RTT: a few thousand milliseconds.
        let half = i128::try_from(rtt.as_millis() / 2).unwrap_or(0);
        let ms = i128::from(sample.concentrator_ms) + half - i128::from(sample.local_ms);
        let ms = i64::try_from(ms).unwrap_or(if ms < 0 { i64::MIN } else { i64::MAX });
        let before_ms = self.ms;
        self.ms = ms;
        Ok(Learnt {
            before_ms,
            after_ms: ms,
        })
    }
}

/// The plain probes a client sent lately, so that a clock answer counts
/// only for a probe it really sent, and only once.
#[derive(Debug, Clone, Default)]
pub struct ProbeLedger {
    sent: VecDeque<SentProbe>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SentProbe {
    uplink: usize,
    seq: u64,
    sent_ms: u64,
    at: Instant,
}

impl ProbeLedger {
    /// How many probes it remembers: a few seconds' worth of eight
    /// uplinks probing every 30 ms.
    pub const CAPACITY: usize = 1024;

    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes probe `seq` sent over `uplink` at `at`, stamped `sent_ms`.
    pub fn sent(&mut self, uplink: usize, seq: u64, sent_ms: u64, at: Instant) {
        if self.sent.len() >= Self::CAPACITY {
            self.sent.pop_front();
        }
        self.sent.push_back(SentProbe {
            uplink,
            seq,
            sent_ms,
            at,
        });
    }

    /// When the probe an answer echoes (`uplink`, `seq`, `sent_ms`) was
    /// sent, if it was and has not been answered with a clock before;
    /// forgets it (an answer replayed later matches nothing).
    pub fn take(&mut self, uplink: usize, seq: u64, sent_ms: u64) -> Option<Instant> {
        let position = self
            .sent
            .iter()
            .rposition(|p| p.uplink == uplink && p.seq == seq && p.sent_ms == sent_ms)?;
        self.sent.remove(position).map(|p| p.at)
    }

    /// How many probes it remembers.
    pub fn len(&self) -> usize {
        self.sent.len()
    }

    /// Whether it remembers none.
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }
}

/// How many clock answers the concentrator gives one client: a burst of
/// [`AnswerBudget::BURST`], then [`AnswerBudget::PER_SEC`] a second.
///
/// Anyone who captured a client's request can make the concentrator
/// answer it; this bounds what that costs (a MAC and a small write each).
/// A client whose clock stepped needs one answer (its other requests
/// refused meanwhile retry once, by then on the right clock).
#[derive(Debug, Clone)]
pub struct AnswerBudget {
    tokens: u32,
    refilled: Option<Instant>,
}

impl AnswerBudget {
    /// Answers available at once.
    pub const BURST: u32 = 16;
    /// Answers a second after the burst.
    pub const PER_SEC: u32 = 8;

    /// A full budget.
    pub fn new() -> Self {
        Self {
            tokens: Self::BURST,
            refilled: None,
        }
    }

    /// Takes one answer at `now` if there is one left.
    pub fn take(&mut self, now: Instant) -> bool {
        let every = Duration::from_secs(1) / Self::PER_SEC;
        let since = *self.refilled.get_or_insert(now);
        let earned = now.saturating_duration_since(since).as_nanos() / every.as_nanos();
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(Self::BURST);
            self.refilled = Some(if self.tokens == Self::BURST {
                now
            } else {
                since + every * earned
            });
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

impl Default for AnswerBudget {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: u64 = 1_795_000_000_000;
    const FIVE_MIN_MS: u64 = 300_000;

    fn sample(t0: Instant, concentrator_ms: u64, rtt_ms: u64, local_ms: u64) -> Sample {
        Sample {
            concentrator_ms,
            sent: t0,
            received: t0 + Duration::from_millis(rtt_ms),
            local_ms,
        }
    }

    #[test]
    fn no_offset_stamps_the_local_clock() {
        assert_eq!(Offset::ZERO.stamp_ms(NOW_MS), NOW_MS);
        let d = Duration::new(1_795_000_000, 123_456_789);
        assert_eq!(Offset::ZERO.stamp(d), d);
    }

    #[test]
    fn a_clock_stepped_forwards_then_backwards_keeps_the_concentrators_time() {
        // A fake clock pair: the concentrator's wall clock, the client's
        // monotonic clock, and the client's wall clock, which steps by +5
        // and then by -10 minutes while the concentrator's runs on.
        let t0 = Instant::now();
        let mut offset = Offset::ZERO;
        let mut conc_ms = NOW_MS;
        let mut mono = t0;
        let mut step: i64 = 0;
        let local = |conc_ms: u64, step: i64| conc_ms.saturating_add_signed(step);
        let advance = |ms: u64, conc_ms: &mut u64, mono: &mut Instant| {
            *conc_ms += ms;
            *mono += Duration::from_millis(ms);
        };
        assert_eq!(offset.stamp_ms(local(conc_ms, step)), conc_ms);

        for (new_step, expected) in [(300_000i64, -300_000i64), (-300_000, 300_000)] {
            advance(1_000, &mut conc_ms, &mut mono);
            step = new_step;
            // Before any answer, the stamp is off by the step: refused.
            let stamped = offset.stamp_ms(local(conc_ms, step));
            assert!(stamped.abs_diff(conc_ms) >= FIVE_MIN_MS);
            // The refusal's answer: sent now, answered 20 ms later with the
            // concentrator's clock at the middle of the round trip.
            let sent = mono;
            advance(10, &mut conc_ms, &mut mono);
            let answered_at = conc_ms;
            advance(10, &mut conc_ms, &mut mono);
            let learnt = offset
                .learn(&Sample {
                    concentrator_ms: answered_at,
                    sent,
                    received: mono,
                    local_ms: local(conc_ms, step),
                })
                .expect("a prompt answer counts");
            assert!(learnt.is_step());
            assert_eq!(offset.as_ms(), expected);
            // From now on every stamp is the concentrator's time.
            for _ in 0..100 {
                advance(37, &mut conc_ms, &mut mono);
                assert_eq!(offset.stamp_ms(local(conc_ms, step)), conc_ms);
            }
        }
    }

    #[test]
    fn the_estimate_takes_the_middle_of_the_round_trip() {
        let t0 = Instant::now();
        let mut offset = Offset::ZERO;
        // The concentrator read the clock at 1000 on its side; 200 ms round
        // trip, so at arrival its clock reads about 1100.
        let learnt = offset
            .learn(&sample(t0, NOW_MS + 1_000, 200, NOW_MS))
            .expect("counts");
        assert_eq!(offset.as_ms(), 1_100);
        assert!(learnt.is_step());
        // A small correction is no step.
        let learnt = offset
            .learn(&sample(t0, NOW_MS + 1_040, 100, NOW_MS))
            .expect("counts");
        assert_eq!(learnt.after_ms, 1_090);
        assert!(!learnt.is_step());
    }

    #[test]
    fn a_held_back_answer_moves_the_offset_by_at_most_half_the_limit() {
        let t0 = Instant::now();
        let mut offset = Offset::ZERO;
        // Held back past the limit: not used at all.
        assert_eq!(
            offset.learn(&sample(t0, NOW_MS, 5_001, NOW_MS + 5_001)),
            Err(SampleError::TooSlow {
                rtt: Duration::from_millis(5_001)
            })
        );
        assert_eq!(offset, Offset::ZERO);
        // Held back just inside it (the clocks agree; the concentrator
        // answered at once and the attacker sat on the answer for 5 s).
        offset
            .learn(&sample(t0, NOW_MS, 5_000, NOW_MS + 5_000))
            .expect("counts");
        assert_eq!(offset.as_ms(), -2_500);
        assert!(offset.as_ms().unsigned_abs() < crate::auth::ReplayGuard::DEFAULT_WINDOW_MS);
        let reversed = Sample {
            concentrator_ms: NOW_MS,
            sent: t0 + Duration::from_secs(1),
            received: t0,
            local_ms: NOW_MS,
        };
        assert_eq!(offset.learn(&reversed), Err(SampleError::Reversed));
    }

    #[test]
    fn stamps_saturate_and_carry_nanoseconds() {
        let mut offset = Offset::ZERO;
        let t0 = Instant::now();
        offset.learn(&sample(t0, 0, 0, NOW_MS)).expect("counts");
        assert_eq!(offset.stamp_ms(1), 0);
        assert_eq!(offset.stamp(Duration::from_secs(1)), Duration::ZERO);
        offset.learn(&sample(t0, u64::MAX, 0, 0)).expect("counts");
        assert_eq!(offset.as_ms(), i64::MAX);
        assert_eq!(offset.stamp_ms(u64::MAX), u64::MAX);
        offset
            .learn(&sample(t0, NOW_MS + 1_500, 0, NOW_MS))
            .expect("counts");
        assert_eq!(
            offset.stamp(Duration::new(10, 7)),
            Duration::new(11, 500_000_007)
        );
    }

    #[test]
    fn the_ledger_matches_each_probe_once() {
        let t0 = Instant::now();
        let mut ledger = ProbeLedger::new();
        ledger.sent(0, 1, NOW_MS, t0);
        ledger.sent(1, 1, NOW_MS, t0 + Duration::from_millis(1));
        ledger.sent(0, 2, NOW_MS + 30, t0 + Duration::from_millis(30));
        // Another uplink's, another time's, a probe never sent: nothing.
        assert_eq!(ledger.take(2, 1, NOW_MS), None);
        assert_eq!(ledger.take(0, 1, NOW_MS + 1), None);
        assert_eq!(ledger.take(0, 3, NOW_MS), None);
        assert_eq!(
            ledger.take(1, 1, NOW_MS),
            Some(t0 + Duration::from_millis(1))
        );
        // The same answer again (replayed): nothing.
        assert_eq!(ledger.take(1, 1, NOW_MS), None);
        assert_eq!(ledger.len(), 2);
        // Bounded: the oldest go first.
        for seq in 0..ProbeLedger::CAPACITY as u64 {
            ledger.sent(3, 100 + seq, NOW_MS, t0);
        }
        assert_eq!(ledger.len(), ProbeLedger::CAPACITY);
        assert_eq!(ledger.take(0, 1, NOW_MS), None);
        assert_eq!(ledger.take(3, 100, NOW_MS), Some(t0));
    }

    #[test]
    fn the_answer_budget_allows_a_burst_then_a_steady_rate() {
        let t0 = Instant::now();
        let mut budget = AnswerBudget::new();
        let burst = (0..100).filter(|_| budget.take(t0)).count();
        assert_eq!(burst, AnswerBudget::BURST as usize);
        // Ten seconds of a flood at 1000 a second: 8 a second get through.
        let mut answered = 0;
        for ms in 1..=10_000u64 {
            if budget.take(t0 + Duration::from_millis(ms)) {
                answered += 1;
            }
        }
        assert_eq!(answered, 10 * AnswerBudget::PER_SEC as usize);
        // After a quiet while the burst is back, and no more.
        let later = t0 + Duration::from_secs(60);
        let burst = (0..100).filter(|_| budget.take(later)).count();
        assert_eq!(burst, AnswerBudget::BURST as usize);
    }
}
