//! The pure queueing model of one direction of an emulated link.
//!
//! [`Direction`] is sans-IO: the driver hands it each frame with the time it
//! arrived ([`Direction::on_frame`]), takes the frames that are due
//! ([`Direction::poll_transmit`]) and sleeps until
//! [`Direction::poll_timeout`]. Time is a [`Duration`] since an epoch the
//! driver picks; the model never reads a clock, so tests drive it with a fake
//! one. A `now` earlier than one already seen counts as the one already seen.
//!
//! # What happens to a frame
//!
//! 1. **Link state.** Unless the link is [`LinkState::Up`] the frame is
//!    dropped ([`Verdict::DroppedLinkDown`]).
//! 2. **Random loss.** With probability [`DirectionParams::loss`] the frame
//!    is dropped ([`Verdict::DroppedLoss`]). With
//!    [`DirectionParams::burst_loss`], a Gilbert-Elliott chain
//!    ([`BurstLoss`]) also takes one step per frame and drops it with its
//!    state's loss: loss in bursts, as on a radio link fading in and out.
//!    The draws come from PRNGs seeded in [`Direction::new`], so a run is
//!    exactly reproducible.
//! 3. **Bottleneck queue.** Frames wait here until the shaper has serialized
//!    them. Drop-tail: if the frames waiting (arrived, not yet fully
//!    serialized) plus this one exceed the [`QueueLimit`], the frame is
//!    dropped ([`Verdict::DroppedQueueFull`]). An empty queue accepts any one
//!    frame, so a limit smaller than a frame does not blackhole the link.
//!    [`QueueLimit::Time`] is converted to bytes with the rate (a trace's
//!    mean rate), at least [`TRACE_OPPORTUNITY_BYTES`]; unshaped, nothing
//!    ever waits, so no limit applies. Whatever the limit,
//!    the queue holds at most [`MAX_QUEUE_FRAMES`].
//! 4. **Shaping** decides when the frame leaves the bottleneck, in arrival
//!    order:
//!    - [`Shaping::Unlimited`]: when it arrives (or when the frame ahead of
//!      it left, after a live change of shaping).
//!    - [`Shaping::Rate`]: `max(arrival, previous departure) + ip_len * 8 /
//!      rate`, computed exactly (the fractional nanosecond is carried, so
//!      there is no drift over long runs; a departure is reported rounded up
//!      to the next whole nanosecond).
//!    - [`Shaping::Trace`] (mahimahi): every trace entry is one delivery
//!      opportunity of [`TRACE_OPPORTUNITY_BYTES`] at that millisecond
//!      offset, and the trace repeats with the period of its last entry. At
//!      an opportunity, frames leave from the head of the queue while their
//!      `ip_len` fits into what is left of its budget; the rest of the
//!      budget is lost. A frame that arrived after an opportunity cannot use
//!      it, and opportunities that pass while the queue is empty are wasted.
//!      A frame larger than the budget starts at a fresh opportunity and
//!      takes as many whole ones as it needs. The first period starts at
//!      time zero, or at the `now` of the [`Direction::set_params`] call
//!      that installed the trace.
//! 5. **Delay line.** The frame is delivered at `departure + delay + u`,
//!    `u` uniform in `[-jitter, +jitter]` and `delay + u` clamped at zero.
//!    Unless [`DirectionParams::allow_reorder`], a frame is never delivered
//!    before one that arrived earlier (its delivery time is raised to the
//!    latest one handed out). [`Direction::poll_transmit`] returns frames in
//!    delivery order. The model holds at most [`MAX_HELD_FRAMES`] frames in
//!    all; beyond that arrivals count as queue drops.
//!
//! Rates and queue limits count IP bytes, the frame length minus
//! [`ETH_HEADER_LEN`]; the byte counters in [`DirectionStats`] count whole
//! frames.
//!
//! # Live changes
//!
//! [`Direction::set_params`] applies to frames that arrive afterwards;
//! frames already accepted keep the departure and delivery times they were
//! given, and new frames still queue behind them.
//! [`Direction::set_state`] with [`LinkState::Down`] or
//! [`LinkState::Blackhole`] drops every frame queued or in flight (counted
//! as `drop_down`) and every later arrival until the link is `Up` again.
//! The two states differ only outside the model (carrier or not).
//!
//! # Cost
//!
//! Departure and delivery times are fixed when a frame is accepted, since
//! nothing that arrives later can change them: the work per frame is O(1),
//! plus a binary search within one trace period when a trace link was idle
//! (idle time is skipped arithmetically, however long) and a heap operation
//! when reordering is allowed. Nothing happens between frames, so
//! [`Direction::poll_timeout`] is simply the earliest delivery time.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Length of the Ethernet header that rates and queue limits do not count.
pub const ETH_HEADER_LEN: usize = 14;

/// Bytes (of IP packet) one trace delivery opportunity can carry.
pub const TRACE_OPPORTUNITY_BYTES: u64 = 1500;

/// Most frames the bottleneck queue holds, whatever its [`QueueLimit`].
pub const MAX_QUEUE_FRAMES: usize = 100_000;

/// Most frames one [`Direction`] holds in all (queued plus in flight).
pub const MAX_HELD_FRAMES: usize = 200_000;

/// Most delivery opportunities a [`Trace`] may list in one period.
pub const MAX_TRACE_OPPORTUNITIES: usize = 10_000_000;

/// Largest millisecond offset (and so period) a [`Trace`] may have: 7 days.
pub const MAX_TRACE_PERIOD_MS: u64 = 7 * 24 * 3600 * 1000;

const NANOS_PER_MS: u64 = 1_000_000;
const NANOS_PER_SEC: u128 = 1_000_000_000;
const PPM: u32 = 1_000_000;

/// Why a list of millisecond offsets is not a valid [`Trace`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    /// The list has no entry.
    #[error("empty trace")]
    Empty,
    /// The last entry, which is the period, is 0.
    #[error("the last entry is 0, but it is the trace's period and must be greater than 0")]
    ZeroPeriod,
    /// An entry is smaller than the one before it.
    #[error(
        "entry {index} ({value} ms) is less than the previous entry ({previous} ms): \
         a trace must not go back in time"
    )]
    GoesBack {
        /// Zero-based index of the offending entry.
        index: usize,
        /// Its value in milliseconds.
        value: u64,
        /// The previous entry's value in milliseconds.
        previous: u64,
    },
    /// An entry is later than [`MAX_TRACE_PERIOD_MS`].
    #[error("entry {index} ({value} ms) is later than the maximum of {MAX_TRACE_PERIOD_MS} ms")]
    TooLate {
        /// Zero-based index of the offending entry.
        index: usize,
        /// Its value in milliseconds.
        value: u64,
    },
    /// The list has more than [`MAX_TRACE_OPPORTUNITIES`] entries.
    #[error("{count} entries is more than the maximum of {MAX_TRACE_OPPORTUNITIES}")]
    TooMany {
        /// Number of entries given.
        count: usize,
    },
}

/// A mahimahi delivery trace: the millisecond offsets of the delivery
/// opportunities within one period, the period being the last offset.
#[derive(Clone, PartialEq, Eq)]
pub struct Trace {
    opportunities_ms: Vec<u64>,
    period_ms: u64,
}

impl Trace {
    /// Builds a trace from millisecond offsets: at least one, non-decreasing,
    /// the last (the period) greater than zero, within
    /// [`MAX_TRACE_OPPORTUNITIES`] and [`MAX_TRACE_PERIOD_MS`].
    pub fn new(opportunities_ms: Vec<u64>) -> Result<Self, TraceError> {
        if opportunities_ms.len() > MAX_TRACE_OPPORTUNITIES {
            return Err(TraceError::TooMany {
                count: opportunities_ms.len(),
            });
        }
        let mut previous = 0;
        for (index, &value) in opportunities_ms.iter().enumerate() {
            if value < previous {
                return Err(TraceError::GoesBack {
                    index,
                    value,
                    previous,
                });
            }
            if value > MAX_TRACE_PERIOD_MS {
                return Err(TraceError::TooLate { index, value });
            }
            previous = value;
        }
        let Some(&period_ms) = opportunities_ms.last() else {
            return Err(TraceError::Empty);
        };
        if period_ms == 0 {
            return Err(TraceError::ZeroPeriod);
        }
        Ok(Self {
            opportunities_ms,
            period_ms,
        })
    }

    /// The millisecond offsets of the opportunities in one period.
    pub fn opportunities_ms(&self) -> &[u64] {
        &self.opportunities_ms
    }

    /// The period after which the trace repeats (its last offset).
    pub fn period(&self) -> Duration {
        Duration::from_millis(self.period_ms)
    }

    /// The mean rate over one period, in bits of IP packet per second.
    pub fn mean_bits_per_sec(&self) -> u64 {
        let bits = self.opportunities_ms.len() as u128 * u128::from(TRACE_OPPORTUNITY_BYTES) * 8;
        saturate(bits * 1000 / u128::from(self.period_ms))
    }

    fn period_ns(&self) -> u64 {
        self.period_ms * NANOS_PER_MS
    }

    fn offset_ns(&self, index: usize) -> u64 {
        self.opportunities_ms
            .get(index)
            .map_or(self.period_ns(), |ms| ms * NANOS_PER_MS)
    }
}

impl fmt::Debug for Trace {
    // A trace may have millions of entries: show its shape, not its contents.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trace")
            .field("opportunities", &self.opportunities_ms.len())
            .field("period_ms", &self.period_ms)
            .finish()
    }
}

/// How a direction limits its throughput.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shaping {
    /// No limit: frames leave the bottleneck as they arrive.
    Unlimited,
    /// A serializer of this many bits (of IP packet) per second. A rate of 0
    /// is treated as 1.
    Rate {
        /// Bits per second.
        bits_per_sec: u64,
    },
    /// Delivery opportunities from a mahimahi trace.
    Trace(Arc<Trace>),
}

impl Shaping {
    /// The (mean) rate in bits per second, `None` when unlimited.
    pub fn mean_bits_per_sec(&self) -> Option<u64> {
        match self {
            Shaping::Unlimited => None,
            Shaping::Rate { bits_per_sec } => Some(*bits_per_sec),
            Shaping::Trace(trace) => Some(trace.mean_bits_per_sec()),
        }
    }
}

/// The size of the bottleneck queue (drop-tail), in IP bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueLimit {
    /// At most this many IP bytes waiting.
    Bytes(u64),
    /// At most this many frames waiting.
    Packets(u64),
    /// At most this long a wait at the (mean) rate.
    Time(Duration),
    /// No limit but [`MAX_QUEUE_FRAMES`].
    Unlimited,
}

impl QueueLimit {
    /// The byte limit this stands for under `shaping`, `None` when it does
    /// not limit bytes.
    fn bytes(&self, shaping: &Shaping) -> Option<u64> {
        match *self {
            QueueLimit::Bytes(bytes) => Some(bytes),
            QueueLimit::Time(time) => {
                let bits_per_sec = shaping.mean_bits_per_sec()?;
                let bytes = u128::from(bits_per_sec) * time.as_nanos() / (8 * NANOS_PER_SEC);
                Some(saturate(bytes).max(TRACE_OPPORTUNITY_BYTES))
            }
            QueueLimit::Packets(_) | QueueLimit::Unlimited => None,
        }
    }
}

/// A random loss probability, in parts per million.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Loss(u32);

impl Loss {
    /// No loss.
    pub const ZERO: Loss = Loss(0);
    /// Every frame lost.
    pub const ALL: Loss = Loss(PPM);

    /// A loss of `ppm` parts per million, `None` above 1 000 000.
    pub fn from_ppm(ppm: u32) -> Option<Self> {
        (ppm <= PPM).then_some(Self(ppm))
    }

    /// A loss of `percent` %, rounded to the nearest part per million;
    /// `None` unless `0 <= percent <= 100`.
    pub fn from_percent(percent: f64) -> Option<Self> {
        if !(0.0..=100.0).contains(&percent) {
            return None;
        }
        // In range, so the product is within 0..=1e6 and the cast is exact.
        Some(Self((percent * 10_000.0).round() as u32))
    }

    /// The probability in parts per million.
    pub fn ppm(self) -> u32 {
        self.0
    }

    /// The probability in percent.
    pub fn percent(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }
}

/// Gilbert-Elliott loss: a good and a bad state, each with its own loss.
///
/// Each frame first moves the chain (good to bad with probability `p`, bad
/// to good with `r`), then is lost with the loss of the state it is in. In
/// the long run the chain is bad `p / (p + r)` of the frames, and a stay in
/// the bad state lasts `1 / r` frames on average.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BurstLoss {
    /// Per frame, the probability of going from good to bad.
    pub p: Loss,
    /// Per frame, the probability of going from bad back to good.
    pub r: Loss,
    /// Loss in the good state (usually 0).
    pub loss_good: Loss,
    /// Loss in the bad state.
    pub loss_bad: Loss,
}

impl BurstLoss {
    /// The long-run fraction of frames lost, 0 to 1.
    pub fn mean_loss(&self) -> f64 {
        let (p, r) = (f64::from(self.p.ppm()), f64::from(self.r.ppm()));
        if p + r == 0.0 {
            return self.loss_good.percent() / 100.0;
        }
        let bad = p / (p + r);
        (bad * self.loss_bad.percent() + (1.0 - bad) * self.loss_good.percent()) / 100.0
    }
}

/// Everything that shapes one direction of a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectionParams {
    /// Rate limit or delivery trace.
    pub shaping: Shaping,
    /// One-way delay added after the bottleneck.
    pub delay: Duration,
    /// Half-width of the uniform jitter added to `delay`.
    pub jitter: Duration,
    /// Random loss probability.
    pub loss: Loss,
    /// Loss in bursts, on top of `loss`.
    pub burst_loss: Option<BurstLoss>,
    /// Size of the bottleneck queue.
    pub queue: QueueLimit,
    /// Whether jitter may reorder frames.
    pub allow_reorder: bool,
}

impl Default for DirectionParams {
    /// A transparent direction: unlimited, no delay, no loss.
    fn default() -> Self {
        Self {
            shaping: Shaping::Unlimited,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: Loss::ZERO,
            burst_loss: None,
            queue: QueueLimit::Unlimited,
            allow_reorder: false,
        }
    }
}

/// Whether a link carries traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LinkState {
    /// Working.
    #[default]
    Up,
    /// Carrier lost: everything is dropped.
    Down,
    /// Carrier up but everything silently dropped.
    Blackhole,
}

impl LinkState {
    /// The lowercase name used in commands and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Up => "up",
            LinkState::Down => "down",
            LinkState::Blackhole => "blackhole",
        }
    }
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`Direction::on_frame`] did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Accepted; it will come out of [`Direction::poll_transmit`].
    Queued,
    /// Dropped by random loss.
    DroppedLoss,
    /// Dropped because the bottleneck queue was full.
    DroppedQueueFull,
    /// Dropped because the link is down or blackholed.
    DroppedLinkDown,
}

/// Counters of one direction. Byte counts are whole frame lengths.
///
/// Every frame received is in exactly one of the other counts:
/// `rx_frames == tx_frames + drop_loss + drop_queue + drop_down +
/// queued_frames + in_flight_frames`. `queued_*` and `in_flight_*` are as of
/// the latest `now` given to the direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Frames handed to [`Direction::on_frame`].
    pub rx_frames: u64,
    /// Bytes handed to [`Direction::on_frame`].
    pub rx_bytes: u64,
    /// Frames returned by [`Direction::poll_transmit`].
    pub tx_frames: u64,
    /// Bytes returned by [`Direction::poll_transmit`].
    pub tx_bytes: u64,
    /// Frames dropped by random or burst loss.
    pub drop_loss: u64,
    /// Frames dropped because the queue (or the model's memory cap) was full.
    pub drop_queue: u64,
    /// Frames dropped because the link was down or blackholed.
    pub drop_down: u64,
    /// Frames waiting in the bottleneck queue.
    pub queued_frames: u64,
    /// Bytes waiting in the bottleneck queue.
    pub queued_bytes: u64,
    /// Frames past the bottleneck, waiting out their delay.
    pub in_flight_frames: u64,
    /// Bytes past the bottleneck, waiting out their delay.
    pub in_flight_bytes: u64,
}

/// One direction of an emulated link. Generic over the frame type so tests
/// can use small frames.
#[derive(Debug)]
pub struct Direction<F> {
    params: DirectionParams,
    state: LinkState,
    /// Latest time seen, in nanoseconds.
    now: u64,
    shaper: Shaper,
    /// Departure time of the latest accepted frame: later ones leave no
    /// earlier.
    last_departure: u64,
    /// Latest delivery time handed out.
    last_delivery: u64,
    /// Frames not yet fully serialized, oldest first.
    bottleneck: VecDeque<Waiting>,
    bottleneck_ip_bytes: u64,
    bottleneck_frame_bytes: u64,
    /// Accepted frames in delivery order (no reordering allowed).
    in_order: VecDeque<Held<F>>,
    /// Accepted frames that may be reordered, earliest delivery on top.
    reordered: BinaryHeap<Reverse<Held<F>>>,
    held_bytes: u64,
    next_seq: u64,
    loss_rng: SplitMix64,
    jitter_rng: SplitMix64,
    burst_rng: SplitMix64,
    /// Whether the burst-loss chain is in its bad state.
    burst_bad: bool,
    counters: DirectionStats,
}

impl<F: AsRef<[u8]>> Direction<F> {
    /// A direction with `params`, link up, its random draws seeded by `seed`.
    pub fn new(params: DirectionParams, seed: u64) -> Self {
        let mut seeder = SplitMix64(seed);
        let loss_rng = SplitMix64(seeder.next_u64());
        let jitter_rng = SplitMix64(seeder.next_u64());
        let burst_rng = SplitMix64(seeder.next_u64());
        Self {
            shaper: Shaper::new(&params.shaping, 0, 0),
            params,
            state: LinkState::Up,
            now: 0,
            last_departure: 0,
            last_delivery: 0,
            bottleneck: VecDeque::new(),
            bottleneck_ip_bytes: 0,
            bottleneck_frame_bytes: 0,
            in_order: VecDeque::new(),
            reordered: BinaryHeap::new(),
            held_bytes: 0,
            next_seq: 0,
            loss_rng,
            jitter_rng,
            burst_rng,
            burst_bad: false,
            counters: DirectionStats::default(),
        }
    }

    /// The parameters new arrivals get.
    pub fn params(&self) -> &DirectionParams {
        &self.params
    }

    /// Changes the parameters for frames arriving from now on; frames
    /// already accepted keep their times. Installing a different trace
    /// starts its first period at `now`.
    pub fn set_params(&mut self, now: Duration, params: DirectionParams) {
        let now = self.advance(now);
        if !self.shaper.is(&params.shaping) {
            self.shaper = Shaper::new(&params.shaping, now, self.last_departure);
        }
        if params.burst_loss.is_none() {
            self.burst_bad = false;
        }
        self.params = params;
    }

    /// Whether the link is up, down or blackholed.
    pub fn state(&self) -> LinkState {
        self.state
    }

    /// Changes the link state. Down and blackhole drop every frame held.
    pub fn set_state(&mut self, now: Duration, state: LinkState) {
        let now = self.advance(now);
        self.state = state;
        if state == LinkState::Up {
            return;
        }
        self.counters.drop_down += self.held_frames() as u64;
        self.in_order.clear();
        self.reordered.clear();
        self.held_bytes = 0;
        self.bottleneck.clear();
        self.bottleneck_ip_bytes = 0;
        self.bottleneck_frame_bytes = 0;
        // The dropped frames no longer occupy the serializer or hold back
        // later deliveries.
        self.shaper.forget_backlog(now);
        self.last_departure = now;
        self.last_delivery = now;
    }

    /// Takes a frame that arrived at `now`.
    pub fn on_frame(&mut self, now: Duration, frame: F) -> Verdict {
        let now = self.advance(now);
        let frame_len = frame.as_ref().len() as u64;
        self.counters.rx_frames += 1;
        self.counters.rx_bytes = self.counters.rx_bytes.saturating_add(frame_len);

        if self.state != LinkState::Up {
            self.counters.drop_down += 1;
            return Verdict::DroppedLinkDown;
        }
        if self.lose() {
            self.counters.drop_loss += 1;
            return Verdict::DroppedLoss;
        }
        let ip_len = frame_len.saturating_sub(ETH_HEADER_LEN as u64);
        if !self.has_room(ip_len) {
            self.counters.drop_queue += 1;
            return Verdict::DroppedQueueFull;
        }

        let departure = self
            .shaper
            .depart(now, self.last_departure, ip_len)
            .max(self.last_departure);
        self.last_departure = departure;
        if departure > now {
            self.bottleneck.push_back(Waiting {
                departure,
                ip_len,
                frame_len,
            });
            self.bottleneck_ip_bytes = self.bottleneck_ip_bytes.saturating_add(ip_len);
            self.bottleneck_frame_bytes = self.bottleneck_frame_bytes.saturating_add(frame_len);
        }

        let mut deliver_at = departure.saturating_add(self.draw_delay());
        if !self.params.allow_reorder {
            deliver_at = deliver_at.max(self.last_delivery);
        }
        self.last_delivery = self.last_delivery.max(deliver_at);
        let held = Held {
            deliver_at,
            seq: self.next_seq,
            frame,
        };
        self.next_seq += 1;
        self.held_bytes = self.held_bytes.saturating_add(frame_len);
        if self.params.allow_reorder {
            self.reordered.push(Reverse(held));
        } else {
            self.in_order.push_back(held);
        }
        Verdict::Queued
    }

    /// The next frame whose delivery time is at or before `now`, in delivery
    /// order (ties in arrival order).
    pub fn poll_transmit(&mut self, now: Duration) -> Option<F> {
        let now = self.advance(now);
        let from_heap = match (self.in_order.front(), self.reordered.peek()) {
            (Some(first), Some(Reverse(other))) => other < first,
            (None, Some(_)) => true,
            (_, None) => false,
        };
        let held = if from_heap {
            if self.reordered.peek()?.0.deliver_at > now {
                return None;
            }
            self.reordered.pop()?.0
        } else {
            if self.in_order.front()?.deliver_at > now {
                return None;
            }
            self.in_order.pop_front()?
        };
        let frame_len = held.frame.as_ref().len() as u64;
        self.held_bytes = self.held_bytes.saturating_sub(frame_len);
        self.counters.tx_frames += 1;
        self.counters.tx_bytes = self.counters.tx_bytes.saturating_add(frame_len);
        Some(held.frame)
    }

    /// The earliest time a frame becomes deliverable, `None` when nothing
    /// is held.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let in_order = self.in_order.front().map(|held| held.deliver_at);
        let reordered = self.reordered.peek().map(|held| held.0.deliver_at);
        let earliest = match (in_order, reordered) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(Duration::from_nanos(earliest))
    }

    /// The counters, with queue occupancy as of the latest `now` seen.
    pub fn stats(&self) -> DirectionStats {
        let queued_frames = self.bottleneck.len() as u64;
        let queued_bytes = self.bottleneck_frame_bytes;
        DirectionStats {
            queued_frames,
            queued_bytes,
            in_flight_frames: (self.held_frames() as u64).saturating_sub(queued_frames),
            in_flight_bytes: self.held_bytes.saturating_sub(queued_bytes),
            ..self.counters
        }
    }

    /// Moves the clock to `now` (never backwards) and lets frames that have
    /// been serialized out of the bottleneck. Returns the clock.
    fn advance(&mut self, now: Duration) -> u64 {
        self.now = self.now.max(nanos(now));
        while let Some(waiting) = self.bottleneck.front() {
            if waiting.departure > self.now {
                break;
            }
            self.bottleneck_ip_bytes = self.bottleneck_ip_bytes.saturating_sub(waiting.ip_len);
            self.bottleneck_frame_bytes = self
                .bottleneck_frame_bytes
                .saturating_sub(waiting.frame_len);
            self.bottleneck.pop_front();
        }
        self.now
    }

    fn held_frames(&self) -> usize {
        self.in_order.len() + self.reordered.len()
    }

    fn lose(&mut self) -> bool {
        let random = chance(&mut self.loss_rng, self.params.loss);
        let Some(burst) = self.params.burst_loss else {
            return random;
        };
        let flip = if self.burst_bad { burst.r } else { burst.p };
        if chance(&mut self.burst_rng, flip) {
            self.burst_bad = !self.burst_bad;
        }
        let loss = if self.burst_bad {
            burst.loss_bad
        } else {
            burst.loss_good
        };
        // Drawn even when `random` already lost the frame, so that the
        // burst pattern does not depend on the random loss.
        chance(&mut self.burst_rng, loss) || random
    }

    fn has_room(&self, ip_len: u64) -> bool {
        if self.held_frames() >= MAX_HELD_FRAMES || self.bottleneck.len() >= MAX_QUEUE_FRAMES {
            return false;
        }
        if self.bottleneck.is_empty() {
            return true;
        }
        if let QueueLimit::Packets(packets) = self.params.queue {
            return (self.bottleneck.len() as u64) < packets;
        }
        match self.params.queue.bytes(&self.params.shaping) {
            Some(limit) => self.bottleneck_ip_bytes.saturating_add(ip_len) <= limit,
            None => true,
        }
    }

    /// Draws this frame's delay: `delay` plus uniform jitter, at least 0.
    fn draw_delay(&mut self) -> u64 {
        let delay = nanos(self.params.delay);
        // Capped so that the 2j+1 outcomes fit in a u64.
        let jitter = nanos(self.params.jitter).min(u64::MAX / 2 - 1);
        if jitter == 0 {
            return delay;
        }
        let offset = i128::from(self.jitter_rng.below(2 * jitter + 1)) - i128::from(jitter);
        saturate_i128(i128::from(delay) + offset)
    }
}

/// A frame's place in the bottleneck queue.
#[derive(Clone, Copy, Debug)]
struct Waiting {
    departure: u64,
    ip_len: u64,
    frame_len: u64,
}

/// An accepted frame and when to deliver it; ordered by delivery time, then
/// arrival.
#[derive(Debug)]
struct Held<F> {
    deliver_at: u64,
    seq: u64,
    frame: F,
}

impl<F> Held<F> {
    fn key(&self) -> (u64, u64) {
        (self.deliver_at, self.seq)
    }
}

impl<F> PartialEq for Held<F> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl<F> Eq for Held<F> {}

impl<F> PartialOrd for Held<F> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<F> Ord for Held<F> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// The state of the bottleneck's server between frames.
#[derive(Debug)]
enum Shaper {
    Unlimited,
    Rate {
        bits_per_sec: u64,
        /// The latest departure is exactly `busy_until + busy_rem /
        /// bits_per_sec` nanoseconds.
        busy_until: u64,
        busy_rem: u64,
    },
    Trace(TraceClock),
}

impl Shaper {
    /// A shaper for `shaping` whose trace (if any) starts at `epoch` and
    /// whose serializer is busy until `busy_until`.
    fn new(shaping: &Shaping, epoch: u64, busy_until: u64) -> Self {
        match shaping {
            Shaping::Unlimited => Shaper::Unlimited,
            Shaping::Rate { bits_per_sec } => Shaper::Rate {
                bits_per_sec: (*bits_per_sec).max(1),
                busy_until,
                busy_rem: 0,
            },
            Shaping::Trace(trace) => Shaper::Trace(TraceClock {
                trace: Arc::clone(trace),
                epoch,
                current: None,
            }),
        }
    }

    /// Whether this shaper already implements `shaping`.
    fn is(&self, shaping: &Shaping) -> bool {
        match (self, shaping) {
            (Shaper::Unlimited, Shaping::Unlimited) => true,
            (Shaper::Rate { bits_per_sec, .. }, Shaping::Rate { bits_per_sec: new }) => {
                *bits_per_sec == (*new).max(1)
            }
            (Shaper::Trace(clock), Shaping::Trace(new)) => {
                Arc::ptr_eq(&clock.trace, new) || *clock.trace == **new
            }
            _ => false,
        }
    }

    /// Forgets the frames ahead (they were dropped) as of `now`.
    fn forget_backlog(&mut self, now: u64) {
        match self {
            Shaper::Unlimited => {}
            Shaper::Rate {
                busy_until,
                busy_rem,
                ..
            } => {
                *busy_until = now;
                *busy_rem = 0;
            }
            Shaper::Trace(clock) => clock.current = None,
        }
    }

    /// When a frame of `ip_len` bytes arriving at `arrival` leaves, given
    /// that the frame ahead of it leaves at `not_before`.
    fn depart(&mut self, arrival: u64, not_before: u64, ip_len: u64) -> u64 {
        match self {
            Shaper::Unlimited => arrival.max(not_before),
            Shaper::Rate {
                bits_per_sec,
                busy_until,
                busy_rem,
            } => {
                let idle = arrival > *busy_until || (arrival == *busy_until && *busy_rem == 0);
                let (start, start_rem) = if idle {
                    (arrival, 0)
                } else {
                    (*busy_until, *busy_rem)
                };
                let rate = u128::from(*bits_per_sec);
                let numerator = u128::from(ip_len) * 8 * NANOS_PER_SEC + u128::from(start_rem);
                *busy_until = start.saturating_add(saturate(numerator / rate));
                // Less than the rate, which is a u64.
                *busy_rem = (numerator % rate) as u64;
                busy_until.saturating_add(u64::from(*busy_rem > 0))
            }
            Shaper::Trace(clock) => clock.depart(arrival.max(not_before), ip_len),
        }
    }
}

/// Where a trace-shaped bottleneck is in its trace.
#[derive(Debug)]
struct TraceClock {
    trace: Arc<Trace>,
    /// Start of period 0, in nanoseconds.
    epoch: u64,
    /// The opportunity the latest frame left at, with the budget it has
    /// left; `None` before the first frame or after a backlog was dropped.
    current: Option<Opportunity>,
}

#[derive(Clone, Copy, Debug)]
struct Opportunity {
    period: u64,
    index: usize,
    budget: u64,
}

impl TraceClock {
    /// When a frame of `need` bytes, ready at `ready`, leaves.
    fn depart(&mut self, ready: u64, need: u64) -> u64 {
        let fresh = match self.current {
            Some(mut current) if self.time(current) >= ready => {
                if need <= current.budget {
                    current.budget -= need;
                    self.current = Some(current);
                    return self.time(current);
                }
                self.skip(current, 1)
            }
            _ => self.seek(ready),
        };
        let last = if need <= TRACE_OPPORTUNITY_BYTES {
            Opportunity {
                budget: TRACE_OPPORTUNITY_BYTES - need,
                ..fresh
            }
        } else {
            let extra = need - TRACE_OPPORTUNITY_BYTES;
            let more = extra.div_ceil(TRACE_OPPORTUNITY_BYTES);
            let partial = extra % TRACE_OPPORTUNITY_BYTES;
            Opportunity {
                budget: if partial == 0 {
                    0
                } else {
                    TRACE_OPPORTUNITY_BYTES - partial
                },
                ..self.skip(fresh, more)
            }
        };
        self.current = Some(last);
        self.time(last)
    }

    fn time(&self, opportunity: Opportunity) -> u64 {
        self.epoch
            .saturating_add(opportunity.period.saturating_mul(self.trace.period_ns()))
            .saturating_add(self.trace.offset_ns(opportunity.index))
    }

    /// The opportunity `count` after `from`, with a full budget.
    fn skip(&self, from: Opportunity, count: u64) -> Opportunity {
        let len = self.trace.opportunities_ms.len().max(1) as u128;
        let position = from.index as u128 + u128::from(count);
        Opportunity {
            period: from.period.saturating_add(saturate(position / len)),
            // Less than the trace's length, which is a usize.
            index: (position % len) as usize,
            budget: TRACE_OPPORTUNITY_BYTES,
        }
    }

    /// The first opportunity at or after `time`, with a full budget.
    fn seek(&self, time: u64) -> Opportunity {
        let period_ns = self.trace.period_ns();
        let since_epoch = time.saturating_sub(self.epoch);
        let period = since_epoch / period_ns;
        let offset = since_epoch % period_ns;
        let offsets = &self.trace.opportunities_ms;
        // The previous period's last entries (equal to the period) fall on
        // the boundary itself and come before this period's entries.
        let (period, index) = if offset == 0 && period > 0 {
            let index = offsets.partition_point(|&ms| ms < self.trace.period_ms);
            (period - 1, index)
        } else {
            let index = offsets.partition_point(|&ms| ms * NANOS_PER_MS < offset);
            (period, index)
        };
        Opportunity {
            period,
            index,
            budget: TRACE_OPPORTUNITY_BYTES,
        }
    }
}

/// True with probability `loss`; draws nothing when it is 0 or 1.
fn chance(rng: &mut SplitMix64, loss: Loss) -> bool {
    match loss.ppm() {
        0 => false,
        ppm if ppm >= PPM => true,
        ppm => rng.below(u64::from(PPM)) < u64::from(ppm),
    }
}

/// The splitmix64 generator: tiny, fast, deterministic; not cryptographic.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; bias below 2^-40 for the
    /// ranges used here). `n` must be > 0.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        // The product is below n * 2^64, so the high half is below n.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

fn nanos(duration: Duration) -> u64 {
    saturate(duration.as_nanos())
}

fn saturate(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

fn saturate_i128(value: i128) -> u64 {
    u64::try_from(value.max(0)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    static ZEROS: [u8; 65_536] = [0; 65_536];

    /// A cheap test frame: an id and a length (at most 64 KiB).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Frame {
        id: u64,
        len: usize,
    }

    impl AsRef<[u8]> for Frame {
        fn as_ref(&self) -> &[u8] {
            &ZEROS[..self.len]
        }
    }

    /// 1500 bytes of IP packet.
    const FULL: usize = 1514;

    fn frame(id: u64, len: usize) -> Frame {
        Frame { id, len }
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn us(us: u64) -> Duration {
        Duration::from_micros(us)
    }

    fn rate(bits_per_sec: u64) -> DirectionParams {
        DirectionParams {
            shaping: Shaping::Rate { bits_per_sec },
            ..DirectionParams::default()
        }
    }

    fn traced(offsets_ms: &[u64]) -> DirectionParams {
        DirectionParams {
            shaping: Shaping::Trace(Arc::new(Trace::new(offsets_ms.to_vec()).expect("valid"))),
            ..DirectionParams::default()
        }
    }

    /// Feeds `arrivals` (sorted by time) and polls exactly at every
    /// `poll_timeout`; returns each frame with the time it came out.
    fn run<F: AsRef<[u8]>>(
        direction: &mut Direction<F>,
        arrivals: impl IntoIterator<Item = (Duration, F)>,
    ) -> Vec<(Duration, F)> {
        let mut arrivals = arrivals.into_iter().peekable();
        let mut out = Vec::new();
        loop {
            let next_arrival = arrivals.peek().map(|(at, _)| *at);
            match (next_arrival, direction.poll_timeout()) {
                (None, None) => return out,
                (Some(at), timeout) if timeout.is_none_or(|timeout| at < timeout) => {
                    let (at, frame) = arrivals.next().expect("peeked");
                    direction.on_frame(at, frame);
                }
                (_, Some(timeout)) => {
                    let before = out.len();
                    while let Some(frame) = direction.poll_transmit(timeout) {
                        out.push((timeout, frame));
                    }
                    assert!(
                        out.len() > before,
                        "poll_timeout {timeout:?} delivered nothing"
                    );
                }
                (Some(_), None) => unreachable!(),
            }
        }
    }

    fn times<F>(out: &[(Duration, F)]) -> Vec<Duration> {
        out.iter().map(|(at, _)| *at).collect()
    }

    fn ids(out: &[(Duration, Frame)]) -> Vec<u64> {
        out.iter().map(|(_, frame)| frame.id).collect()
    }

    fn assert_accounted(stats: DirectionStats) {
        assert_eq!(
            stats.rx_frames,
            stats.tx_frames
                + stats.drop_loss
                + stats.drop_queue
                + stats.drop_down
                + stats.queued_frames
                + stats.in_flight_frames,
            "{stats:?}"
        );
    }

    #[test]
    fn rate_spaces_full_frames_by_their_ip_serialization_time() {
        let mut link = Direction::new(rate(10_000_000), 1);
        let out = run(
            &mut link,
            (0..10).map(|id| (Duration::ZERO, frame(id, FULL))),
        );
        // 1500 IP bytes at 10 Mbit/s: the Ethernet header is not counted.
        let expected: Vec<_> = (1..=10).map(|k| us(1200 * k)).collect();
        assert_eq!(times(&out), expected);
        assert_eq!(ids(&out), (0..10).collect::<Vec<_>>());
        let stats = link.stats();
        assert_eq!((stats.tx_frames, stats.tx_bytes), (10, 10 * FULL as u64));
    }

    #[test]
    fn rate_has_no_cumulative_drift_over_a_long_run() {
        // 12000 bits at 7 Mbit/s is 1714285.714... ns: rounding each frame
        // would drift by 71 us over the run.
        let mut link = Direction::new(rate(7_000_000), 1);
        let arrivals = (0..100_000).map(|k| (Duration::from_nanos(k * 1_714_285), frame(k, FULL)));
        let out = run(&mut link, arrivals);
        assert_eq!(out.len(), 100_000);
        for (k, (at, frame)) in out.iter().enumerate() {
            let exact = (k as u64 + 1) * 12_000_000 / 7;
            let ceil = exact + u64::from(!((k as u64 + 1) * 12_000_000).is_multiple_of(7));
            assert_eq!((frame.id, *at), (k as u64, Duration::from_nanos(ceil)));
        }
        assert_eq!(out[99_999].0, Duration::from_nanos(171_428_571_429));
    }

    #[test]
    fn delay_is_exact_to_the_nanosecond() {
        let mut link = Direction::new(
            DirectionParams {
                delay: ms(10),
                ..rate(10_000_000)
            },
            1,
        );
        assert_eq!(link.on_frame(ms(5), frame(0, FULL)), Verdict::Queued);
        let due = ms(5) + us(1200) + ms(10);
        assert_eq!(link.poll_timeout(), Some(due));
        assert_eq!(link.poll_transmit(due - Duration::from_nanos(1)), None);
        assert_eq!(link.poll_transmit(due), Some(frame(0, FULL)));
        assert_eq!(link.poll_timeout(), None);
        assert_eq!(link.poll_transmit(due + ms(100)), None);
    }

    #[test]
    fn queue_drops_tail_by_bytes() {
        // 12 ms per full frame.
        let mut link = Direction::new(
            DirectionParams {
                queue: QueueLimit::Bytes(4500),
                ..rate(1_000_000)
            },
            1,
        );
        let verdicts: Vec<_> = (0..4)
            .map(|id| link.on_frame(ms(0), frame(id, FULL)))
            .collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Queued,
                Verdict::Queued,
                Verdict::Queued,
                Verdict::DroppedQueueFull
            ]
        );
        let stats = link.stats();
        assert_eq!(stats.drop_queue, 1);
        assert_eq!(
            (stats.queued_frames, stats.queued_bytes),
            (3, 3 * FULL as u64)
        );
        // Once the first frame is serialized there is room for one more.
        assert_eq!(link.on_frame(ms(12), frame(4, FULL)), Verdict::Queued);
        assert_eq!(
            link.on_frame(ms(12), frame(5, FULL)),
            Verdict::DroppedQueueFull
        );
        let out = run(&mut link, []);
        assert_eq!(ids(&out), [0, 1, 2, 4]);
        assert_eq!(times(&out), [ms(12), ms(24), ms(36), ms(48)]);
        assert_eq!(link.stats().drop_queue, 2);
        assert_accounted(link.stats());
    }

    #[test]
    fn queue_drops_tail_by_packets() {
        let mut link = Direction::new(
            DirectionParams {
                queue: QueueLimit::Packets(2),
                ..rate(1_000_000)
            },
            1,
        );
        let verdicts: Vec<_> = (0..3)
            .map(|id| link.on_frame(ms(0), frame(id, 100)))
            .collect();
        assert_eq!(
            verdicts,
            [Verdict::Queued, Verdict::Queued, Verdict::DroppedQueueFull]
        );
        assert_eq!(ids(&run(&mut link, [])), [0, 1]);
    }

    #[test]
    fn queue_drops_tail_by_time_at_the_rate() {
        // 4 ms at 12 Mbit/s is 6000 bytes: four full frames.
        let mut link = Direction::new(
            DirectionParams {
                queue: QueueLimit::Time(ms(4)),
                ..rate(12_000_000)
            },
            1,
        );
        let verdicts: Vec<_> = (0..5)
            .map(|id| link.on_frame(ms(0), frame(id, FULL)))
            .collect();
        assert_eq!(verdicts[..4], [Verdict::Queued; 4]);
        assert_eq!(verdicts[4], Verdict::DroppedQueueFull);
        assert_eq!(ids(&run(&mut link, [])), [0, 1, 2, 3]);
    }

    #[test]
    fn queue_time_limit_uses_a_traces_mean_rate() {
        // 3.6 Mbit/s for 10 ms is 4500 bytes: three full frames. Arriving at
        // 1 ms, they all wait for the opportunities at 10 ms.
        let mut link = Direction::new(
            DirectionParams {
                queue: QueueLimit::Time(ms(10)),
                ..traced(&[0, 0, 10])
            },
            1,
        );
        let verdicts: Vec<_> = (0..4)
            .map(|id| link.on_frame(ms(1), frame(id, FULL)))
            .collect();
        assert_eq!(verdicts[..3], [Verdict::Queued; 3]);
        assert_eq!(verdicts[3], Verdict::DroppedQueueFull);
    }

    #[test]
    fn queue_time_limit_holds_at_least_one_full_frame() {
        // 1 us at 12 Mbit/s is 1.5 bytes, raised to 1500.
        let mut link = Direction::new(
            DirectionParams {
                queue: QueueLimit::Time(us(1)),
                ..rate(12_000_000)
            },
            1,
        );
        let verdicts: Vec<_> = (0..3)
            .map(|id| link.on_frame(ms(0), frame(id, 714)))
            .collect();
        assert_eq!(
            verdicts,
            [Verdict::Queued, Verdict::Queued, Verdict::DroppedQueueFull]
        );
    }

    #[test]
    fn queue_accepts_a_frame_larger_than_the_limit_when_empty() {
        let mut link = Direction::new(
            DirectionParams {
                queue: QueueLimit::Bytes(100),
                ..rate(1_000_000)
            },
            1,
        );
        assert_eq!(link.on_frame(ms(0), frame(0, FULL)), Verdict::Queued);
        assert_eq!(
            link.on_frame(ms(0), frame(1, 60)),
            Verdict::DroppedQueueFull
        );
        assert_eq!(link.on_frame(ms(12), frame(2, FULL)), Verdict::Queued);
    }

    #[test]
    fn unlimited_queue_is_still_capped() {
        // 1 IP byte at 8 kbit/s takes 1 ms: nothing leaves while we fill.
        let mut link = Direction::new(rate(8_000), 1);
        for id in 0..MAX_QUEUE_FRAMES as u64 {
            assert_eq!(link.on_frame(ms(0), frame(id, 15)), Verdict::Queued);
        }
        assert_eq!(
            link.on_frame(ms(0), frame(0, 15)),
            Verdict::DroppedQueueFull
        );
        let stats = link.stats();
        assert_eq!(
            (stats.queued_frames, stats.drop_queue),
            (MAX_QUEUE_FRAMES as u64, 1)
        );
    }

    #[test]
    fn delay_line_is_capped_without_shaping() {
        let mut link = Direction::new(
            DirectionParams {
                delay: ms(1000),
                ..DirectionParams::default()
            },
            1,
        );
        for id in 0..MAX_HELD_FRAMES as u64 {
            assert_eq!(link.on_frame(ms(0), frame(id, 60)), Verdict::Queued);
        }
        assert_eq!(
            link.on_frame(ms(0), frame(0, 60)),
            Verdict::DroppedQueueFull
        );
        let stats = link.stats();
        assert_eq!(stats.in_flight_frames, MAX_HELD_FRAMES as u64);
        assert_eq!(stats.queued_frames, 0);
    }

    fn jittered(allow_reorder: bool) -> DirectionParams {
        DirectionParams {
            delay: ms(20),
            jitter: ms(5),
            allow_reorder,
            ..DirectionParams::default()
        }
    }

    /// 2000 frames, one per millisecond: frame `id` arrives at `id` ms.
    fn run_jittered(params: DirectionParams, seed: u64) -> Vec<(Duration, Frame)> {
        let mut link = Direction::new(params, seed);
        run(&mut link, (0..2000).map(|id| (ms(id), frame(id, 100))))
    }

    /// Delivery time minus arrival time of each frame, in delivery order.
    fn offsets(out: &[(Duration, Frame)]) -> Vec<Duration> {
        out.iter().map(|(at, frame)| *at - ms(frame.id)).collect()
    }

    #[test]
    fn jitter_without_reordering_keeps_order() {
        let out = run_jittered(jittered(false), 7);
        assert_eq!(ids(&out), (0..2000).collect::<Vec<_>>());
        assert!(times(&out).is_sorted());
        let offsets = offsets(&out);
        assert!(offsets.iter().all(|d| (ms(15)..=ms(25)).contains(d)));
        // Jitter is applied, not just the delay (low draws are often held
        // back behind the frame before, so only a few come out early).
        assert!(offsets.iter().min() < Some(&ms(18)));
        assert!(offsets.iter().max() > Some(&ms(24)));
    }

    #[test]
    fn jitter_with_reordering_is_uniform_and_reorders() {
        let out = run_jittered(jittered(true), 7);
        assert_eq!(out.len(), 2000);
        assert!(ids(&out).windows(2).any(|pair| pair[0] > pair[1]));
        assert!(times(&out).is_sorted(), "delivered in delivery order");
        let offsets = offsets(&out);
        assert!(offsets.iter().all(|d| (ms(15)..=ms(25)).contains(d)));
        assert!(offsets.iter().min() < Some(&us(15_100)));
        assert!(offsets.iter().max() > Some(&us(24_900)));
        // The mean of 2000 uniform draws is within 0.07 ms (1 sigma) of 20 ms.
        let mean = offsets.iter().sum::<Duration>() / 2000;
        assert!((us(19_700)..=us(20_300)).contains(&mean), "{mean:?}");
    }

    #[test]
    fn jitter_is_reproducible_from_the_seed() {
        for reorder in [false, true] {
            let first = run_jittered(jittered(reorder), 7);
            assert_eq!(first, run_jittered(jittered(reorder), 7));
            assert_ne!(first, run_jittered(jittered(reorder), 8));
        }
    }

    #[test]
    fn jitter_larger_than_delay_is_clamped_at_zero() {
        let params = DirectionParams {
            delay: ms(1),
            ..jittered(true)
        };
        let offsets = offsets(&run_jittered(params, 7));
        assert!(offsets.iter().all(|d| *d <= ms(6)));
        // P(delay + u < 0) = 0.4.
        assert!(offsets.iter().filter(|d| d.is_zero()).count() > 600);
    }

    fn loss_pattern(loss: Loss, seed: u64, frames: u64) -> Vec<Verdict> {
        let mut link = Direction::new(
            DirectionParams {
                loss,
                ..DirectionParams::default()
            },
            seed,
        );
        (0..frames)
            .map(|id| {
                let verdict = link.on_frame(ms(id), frame(id, 100));
                while link.poll_transmit(ms(id)).is_some() {}
                verdict
            })
            .collect()
    }

    fn count(verdicts: &[Verdict], verdict: Verdict) -> usize {
        verdicts.iter().filter(|&&v| v == verdict).count()
    }

    #[test]
    fn zero_loss_loses_nothing_and_full_loss_everything() {
        let none = loss_pattern(Loss::ZERO, 3, 10_000);
        assert_eq!(count(&none, Verdict::Queued), 10_000);
        let all = loss_pattern(Loss::ALL, 3, 10_000);
        assert_eq!(count(&all, Verdict::DroppedLoss), 10_000);
    }

    #[test]
    fn one_percent_loss_is_accurate_and_reproducible() {
        let loss = Loss::from_percent(1.0).expect("in range");
        let pattern = loss_pattern(loss, 3, 100_000);
        // 1000 expected, sigma 31.5.
        let lost = count(&pattern, Verdict::DroppedLoss);
        assert!((850..=1150).contains(&lost), "{lost}");
        assert_eq!(pattern, loss_pattern(loss, 3, 100_000));
        assert_ne!(pattern, loss_pattern(loss, 4, 100_000));
    }

    fn burst(p: f64, r: f64, good: f64, bad: f64) -> BurstLoss {
        let loss = |percent| Loss::from_percent(percent).expect("in range");
        BurstLoss {
            p: loss(p),
            r: loss(r),
            loss_good: loss(good),
            loss_bad: loss(bad),
        }
    }

    fn burst_pattern(burst: BurstLoss, loss: Loss, seed: u64, frames: u64) -> Vec<Verdict> {
        let mut link = Direction::new(
            DirectionParams {
                loss,
                burst_loss: Some(burst),
                ..DirectionParams::default()
            },
            seed,
        );
        let verdicts = (0..frames)
            .map(|id| {
                let verdict = link.on_frame(us(id * 100), frame(id, 100));
                while link.poll_transmit(us(id * 100)).is_some() {}
                verdict
            })
            .collect();
        assert_accounted(link.stats());
        verdicts
    }

    /// Lengths of the runs of consecutive losses.
    fn loss_runs(verdicts: &[Verdict]) -> Vec<usize> {
        verdicts
            .split(|&v| v != Verdict::DroppedLoss)
            .map(<[Verdict]>::len)
            .filter(|&len| len > 0)
            .collect()
    }

    #[test]
    fn burst_loss_edge_cases_are_exact() {
        // Never bad: nothing lost.
        let never = burst_pattern(burst(0.0, 50.0, 0.0, 100.0), Loss::ZERO, 1, 10_000);
        assert_eq!(count(&never, Verdict::Queued), 10_000);
        // Bad from the first frame on and never back: everything lost.
        let stuck = burst(100.0, 0.0, 0.0, 100.0);
        let all = burst_pattern(stuck, Loss::ZERO, 1, 10_000);
        assert_eq!(count(&all, Verdict::DroppedLoss), 10_000);
        // Alternating states: every second frame lost.
        let flip = burst_pattern(burst(100.0, 100.0, 0.0, 100.0), Loss::ZERO, 1, 10);
        assert_eq!(loss_runs(&flip), [1; 5]);
        assert_eq!(flip[0], Verdict::DroppedLoss);
        assert_eq!(flip[1], Verdict::Queued);
    }

    #[test]
    fn burst_loss_comes_in_bursts_of_the_configured_length() {
        // Bad 1 / (1 + 25) of the time, stays 4 frames: 3.85 % lost in runs
        // of 4 on average.
        let params = burst(1.0, 25.0, 0.0, 100.0);
        let pattern = burst_pattern(params, Loss::ZERO, 7, 400_000);
        let lost = count(&pattern, Verdict::DroppedLoss) as f64 / 400_000.0;
        assert!((0.034..=0.043).contains(&lost), "{lost}");
        assert!((params.mean_loss() - 1.0 / 26.0).abs() < 1e-9);
        let runs = loss_runs(&pattern);
        let mean_run = runs.iter().sum::<usize>() as f64 / runs.len() as f64;
        assert!((3.6..=4.4).contains(&mean_run), "{mean_run}");
        // Independent loss of the same mean: runs of about one frame.
        let random = loss_pattern(Loss::from_percent(3.85).expect("in range"), 7, 400_000);
        let runs = loss_runs(&random);
        let mean_run = runs.iter().sum::<usize>() as f64 / runs.len() as f64;
        assert!(mean_run < 1.1, "{mean_run}");
    }

    #[test]
    fn burst_loss_is_reproducible_and_adds_to_random_loss() {
        let params = burst(0.5, 25.0, 0.0, 50.0);
        let a = burst_pattern(params, Loss::ZERO, 3, 50_000);
        assert_eq!(a, burst_pattern(params, Loss::ZERO, 3, 50_000));
        assert_ne!(a, burst_pattern(params, Loss::ZERO, 4, 50_000));
        // The burst pattern does not depend on the random loss: adding 1 %
        // only loses more, never less.
        let both = burst_pattern(
            params,
            Loss::from_percent(1.0).expect("in range"),
            3,
            50_000,
        );
        for (alone, with_random) in a.iter().zip(&both) {
            if *alone == Verdict::DroppedLoss {
                assert_eq!(*with_random, Verdict::DroppedLoss);
            }
        }
        assert!(count(&both, Verdict::DroppedLoss) > count(&a, Verdict::DroppedLoss));
    }

    #[test]
    fn removing_burst_loss_live_ends_the_burst() {
        let mut link = Direction::new(
            DirectionParams {
                burst_loss: Some(burst(100.0, 0.0, 0.0, 100.0)),
                ..DirectionParams::default()
            },
            1,
        );
        assert_eq!(link.on_frame(ms(0), frame(0, 100)), Verdict::DroppedLoss);
        link.set_params(ms(1), DirectionParams::default());
        assert_eq!(link.on_frame(ms(2), frame(1, 100)), Verdict::Queued);
        assert_eq!(link.poll_transmit(ms(2)), Some(frame(1, 100)));
    }

    #[test]
    fn loss_from_percent_validates() {
        assert_eq!(Loss::from_percent(0.5).map(Loss::ppm), Some(5_000));
        assert_eq!(Loss::from_percent(100.0), Some(Loss::ALL));
        assert_eq!(Loss::from_percent(0.0), Some(Loss::ZERO));
        for bad in [-0.1, 100.1, f64::NAN, f64::INFINITY] {
            assert_eq!(Loss::from_percent(bad), None);
        }
        assert_eq!(Loss::from_ppm(1_000_001), None);
    }

    #[test]
    fn trace_shares_an_opportunity_among_small_frames() {
        // Opportunities: 2 at 0 ms, then 3 at every 10 ms (the period's last
        // entry coincides with the next period's two at 0).
        let mut link = Direction::new(traced(&[0, 0, 10]), 1);
        let out = run(&mut link, (0..20).map(|id| (ms(0), frame(id, 514))));
        let mut expected = vec![ms(0); 6];
        expected.extend([ms(10); 9]);
        expected.extend([ms(20); 5]);
        assert_eq!(times(&out), expected);
        assert_eq!(ids(&out), (0..20).collect::<Vec<_>>());
    }

    #[test]
    fn trace_loses_leftover_budget() {
        let mut link = Direction::new(traced(&[0, 0, 10]), 1);
        // 1000 + 1000 do not share an opportunity; 600 does not fit the 500
        // left at 0 ms and waits for 10 ms, where 400 joins it.
        let sizes = [1000, 1000, 600, 400, 1000, 1000, 1000];
        let arrivals = sizes
            .iter()
            .enumerate()
            .map(|(id, &ip)| (ms(0), frame(id as u64, ip + ETH_HEADER_LEN)));
        let out = run(&mut link, arrivals);
        assert_eq!(
            times(&out),
            [ms(0), ms(0), ms(10), ms(10), ms(10), ms(10), ms(20)]
        );
    }

    #[test]
    fn trace_opportunity_cannot_serve_a_frame_that_arrived_after_it() {
        let mut link = Direction::new(traced(&[0, 0, 10]), 1);
        let arrivals = [
            (ms(0), frame(0, 514)),
            // The 0 ms opportunity has 1000 bytes left, but it is past.
            (ms(1), frame(1, 514)),
            // Arriving right at 10 ms it can share frame 1's opportunity.
            (ms(10), frame(2, 514)),
        ];
        let out = run(&mut link, arrivals);
        assert_eq!(times(&out), [ms(0), ms(10), ms(10)]);
    }

    #[test]
    fn trace_repeats_with_its_period() {
        // Opportunities at 10k + 3 and 10k + 10 ms.
        let mut link = Direction::new(traced(&[3, 10]), 1);
        let arrivals = (0..1000).flat_map(|k| {
            [
                (us(10_000 * k + 500), frame(2 * k, 100)),
                (us(10_000 * k + 4_000), frame(2 * k + 1, 100)),
            ]
        });
        let out = run(&mut link, arrivals);
        let expected: Vec<_> = (0..1000)
            .flat_map(|k| [ms(10 * k + 3), ms(10 * k + 10)])
            .collect();
        assert_eq!(times(&out), expected);
    }

    #[test]
    fn trace_counts_all_opportunities_on_a_period_boundary() {
        // At 30 ms: the last of period 2 and the first two of period 3.
        let mut link = Direction::new(traced(&[0, 0, 10]), 1);
        let out = run(&mut link, (0..4).map(|id| (ms(30), frame(id, FULL))));
        assert_eq!(times(&out), [ms(30), ms(30), ms(30), ms(40)]);
    }

    #[test]
    fn trace_skips_long_idle_gaps_arithmetically() {
        // One opportunity every millisecond: 3.6e10 of them in 10,000 hours.
        let mut link = Direction::new(traced(&[1]), 1);
        let hours = Duration::from_secs(10_000 * 3600);
        let started = Instant::now();
        let arrivals = [
            (ms(0), frame(0, FULL)),
            (hours + us(500), frame(1, FULL)),
            (hours + ms(5), frame(2, FULL)),
            (hours + ms(5), frame(3, FULL)),
        ];
        let out = run(&mut link, arrivals);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(
            times(&out),
            [ms(1), hours + ms(1), hours + ms(5), hours + ms(6)]
        );
    }

    #[test]
    fn trace_gives_an_oversized_frame_several_opportunities() {
        let mut link = Direction::new(traced(&[1]), 1);
        let arrivals = [
            (ms(0), frame(0, 4000 + ETH_HEADER_LEN)),
            (ms(0), frame(1, 500 + ETH_HEADER_LEN)),
            (ms(0), frame(2, 1 + ETH_HEADER_LEN)),
        ];
        let out = run(&mut link, arrivals);
        assert_eq!(times(&out), [ms(3), ms(3), ms(4)]);
    }

    #[test]
    fn trace_installed_live_starts_at_that_time() {
        let mut link = Direction::new(rate(1_000_000), 1);
        link.set_params(ms(1005), traced(&[0, 0, 10]));
        let arrivals = [(ms(1005), frame(0, FULL)), (ms(1006), frame(1, FULL))];
        assert_eq!(times(&run(&mut link, arrivals)), [ms(1005), ms(1015)]);
    }

    #[test]
    fn trace_validates_and_knows_its_mean_rate() {
        let trace = Trace::new(vec![0, 0, 10]).expect("valid");
        assert_eq!(trace.mean_bits_per_sec(), 3_600_000);
        assert_eq!(trace.period(), ms(10));
        assert_eq!(Trace::new(vec![]), Err(TraceError::Empty));
        assert_eq!(Trace::new(vec![0, 0]), Err(TraceError::ZeroPeriod));
        assert_eq!(
            Trace::new(vec![5, 4, 10]),
            Err(TraceError::GoesBack {
                index: 1,
                value: 4,
                previous: 5
            })
        );
        assert!(matches!(
            Trace::new(vec![MAX_TRACE_PERIOD_MS + 1]),
            Err(TraceError::TooLate { index: 0, .. })
        ));
    }

    #[test]
    fn link_down_or_blackhole_drops_everything_until_up() {
        for state in [LinkState::Down, LinkState::Blackhole] {
            // 12 ms per frame, then 50 ms of delay.
            let mut link = Direction::new(
                DirectionParams {
                    delay: ms(50),
                    ..rate(1_000_000)
                },
                1,
            );
            for id in 0..3 {
                link.on_frame(ms(0), frame(id, FULL));
            }
            assert_eq!(link.poll_transmit(ms(20)), None);
            let stats = link.stats();
            assert_eq!((stats.queued_frames, stats.in_flight_frames), (2, 1));

            link.set_state(ms(20), state);
            assert_eq!(link.state(), state);
            let stats = link.stats();
            assert_eq!(stats.drop_down, 3);
            assert_eq!((stats.queued_frames, stats.in_flight_frames), (0, 0));
            assert_eq!(link.poll_timeout(), None);
            assert_eq!(
                link.on_frame(ms(25), frame(3, FULL)),
                Verdict::DroppedLinkDown
            );
            assert_eq!(link.poll_transmit(ms(1000)), None);
            assert_eq!(link.stats().drop_down, 4);

            // The dropped frames no longer hold the serializer (busy until
            // 36 ms) or the delay line.
            link.set_state(ms(1000), LinkState::Up);
            let out = run(&mut link, [(ms(1000), frame(4, FULL))]);
            assert_eq!(times(&out), [ms(1062)]);
            assert_accounted(link.stats());
        }
    }

    #[test]
    fn set_params_changes_rate_and_delay_for_new_arrivals_only() {
        let mut link = Direction::new(
            DirectionParams {
                delay: ms(10),
                ..rate(1_000_000)
            },
            1,
        );
        link.on_frame(ms(0), frame(0, FULL));
        link.on_frame(ms(0), frame(1, FULL));
        let faster = DirectionParams {
            delay: ms(5),
            ..rate(10_000_000)
        };
        link.set_params(ms(1), faster.clone());
        assert_eq!(link.params(), &faster);
        let arrivals = [
            // Queues behind frame 1 (leaves at 24 ms), then 1.2 ms at the
            // new rate; held back to not overtake frame 1's delivery.
            (ms(1), frame(2, FULL)),
            (ms(100), frame(3, FULL)),
        ];
        let out = run(&mut link, arrivals);
        assert_eq!(ids(&out), [0, 1, 2, 3]);
        assert_eq!(times(&out), [ms(22), ms(34), ms(34), us(106_200)]);
    }

    #[test]
    fn set_params_with_reordering_changes_only_new_frames() {
        let mut link = Direction::new(
            DirectionParams {
                delay: ms(50),
                ..DirectionParams::default()
            },
            1,
        );
        link.on_frame(ms(0), frame(0, 100));
        link.set_params(
            ms(1),
            DirectionParams {
                delay: ms(10),
                allow_reorder: true,
                ..DirectionParams::default()
            },
        );
        let out = run(&mut link, [(ms(1), frame(1, 100))]);
        assert_eq!(ids(&out), [1, 0]);
        assert_eq!(times(&out), [ms(11), ms(50)]);
    }

    #[test]
    fn set_params_ending_reordering_does_not_overtake_earlier_frames() {
        let mut link = Direction::new(
            DirectionParams {
                delay: ms(50),
                allow_reorder: true,
                ..DirectionParams::default()
            },
            1,
        );
        link.on_frame(ms(0), frame(0, 100));
        link.set_params(
            ms(1),
            DirectionParams {
                delay: ms(10),
                ..DirectionParams::default()
            },
        );
        let out = run(&mut link, [(ms(1), frame(1, 100))]);
        assert_eq!(ids(&out), [0, 1]);
        assert_eq!(times(&out), [ms(50), ms(50)]);
    }

    #[test]
    fn stats_account_for_every_frame() {
        let mut link = Direction::new(
            DirectionParams {
                delay: ms(20),
                jitter: ms(15),
                loss: Loss::from_percent(5.0).expect("in range"),
                queue: QueueLimit::Packets(20),
                allow_reorder: true,
                ..rate(2_000_000)
            },
            9,
        );
        let mut random = SplitMix64(1);
        let mut sent = 0u64;
        let mut received = 0u64;
        for step in 0..20_000u64 {
            let now = us(step * 100);
            match random.below(100) {
                0 => link.set_state(now, LinkState::Down),
                1..=3 => link.set_state(now, LinkState::Up),
                _ => {
                    let len = random.below(FULL as u64 + 1) as usize;
                    sent += len as u64;
                    link.on_frame(now, frame(step, len));
                }
            }
            while let Some(frame) = link.poll_transmit(now) {
                received += frame.len as u64;
            }
            assert_accounted(link.stats());
        }
        let stats = link.stats();
        assert_eq!((stats.rx_bytes, stats.tx_bytes), (sent, received));
        assert!(stats.tx_frames > 0 && stats.drop_loss > 0 && stats.drop_queue > 0);
        assert!(stats.drop_down > 0);
    }

    #[test]
    fn time_going_backwards_counts_as_the_latest_time() {
        let mut link = Direction::new(
            DirectionParams {
                delay: ms(10),
                ..DirectionParams::default()
            },
            1,
        );
        link.on_frame(ms(10), frame(0, 100));
        link.on_frame(ms(5), frame(1, 100));
        assert_eq!(link.poll_transmit(ms(15)), None);
        assert_eq!(link.poll_timeout(), Some(ms(20)));
        assert_eq!(times(&run(&mut link, [])), [ms(20), ms(20)]);
    }

    #[test]
    fn extreme_inputs_do_not_panic() {
        let huge = vec![0u8; 1 << 24];
        let extremes = [
            rate(0),
            rate(1),
            rate(u64::MAX),
            traced(&[1]),
            traced(&[MAX_TRACE_PERIOD_MS]),
            DirectionParams {
                delay: Duration::MAX,
                jitter: Duration::MAX,
                allow_reorder: true,
                ..rate(1)
            },
            DirectionParams {
                jitter: Duration::MAX,
                queue: QueueLimit::Time(Duration::MAX),
                ..traced(&[0, 0, 10])
            },
            DirectionParams {
                queue: QueueLimit::Packets(0),
                ..rate(8_000)
            },
        ];
        for params in extremes {
            let mut link = Direction::new(params, u64::MAX);
            for (i, frame) in [&huge[..], &[], &huge[..5], &huge[..]].iter().enumerate() {
                let now = Duration::from_secs(i as u64);
                link.on_frame(now, *frame);
                while link.poll_transmit(now).is_some() {}
            }
            link.on_frame(Duration::MAX, &huge[..100]);
            link.on_frame(Duration::ZERO, &huge[..100]);
            while link.poll_transmit(Duration::MAX).is_some() {}
            assert_eq!(link.poll_timeout(), None);
            assert_accounted(link.stats());
            assert_eq!(link.stats().rx_frames, 6);
        }
    }
}
