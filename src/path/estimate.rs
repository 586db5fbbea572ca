//! The estimators the path core keeps per uplink: round trip (RFC 6298),
//! a decaying peak of the silences and delivery gaps the line has shown,
//! flap damping, and a receive/transmit rate meter. All pure: every
//! method takes `now`.

use std::time::{Duration, Instant};

/// Smoothed round trip and its variation, as TCP keeps them (RFC 6298:
/// gains 1/8 and 1/4), plus the smallest sample seen lately.
#[derive(Clone, Copy, Debug, Default)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    min: Option<(Duration, Instant)>,
}

/// How long the smallest round trip is remembered before a larger sample
/// replaces it (a route change can lengthen the base delay).
const MIN_RTT_WINDOW: Duration = Duration::from_secs(30);

impl RttEstimator {
    /// Adds one round-trip sample taken at `now`.
    pub fn sample(&mut self, now: Instant, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(rtt);
                self.rttvar = self.rttvar * 3 / 4 + diff / 4;
                self.srtt = Some(srtt * 7 / 8 + rtt / 8);
            }
        }
        self.min = match self.min {
            Some((min, at)) if min <= rtt && now.saturating_duration_since(at) < MIN_RTT_WINDOW => {
                Some((min, at))
            }
            _ => Some((rtt, now)),
        };
    }

    /// The smoothed round trip; `None` before the first sample.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The round trip's mean deviation.
    pub fn rttvar(&self) -> Duration {
        self.rttvar
    }

    /// The smallest recent sample.
    pub fn min(&self) -> Option<Duration> {
        self.min.map(|(min, _)| min)
    }

    /// TCP's retransmission timeout without its floor: `srtt + 4·rttvar`.
    pub fn rto(&self) -> Option<Duration> {
        self.srtt.map(|srtt| srtt + self.rttvar * 4)
    }
}

/// The largest sample seen, decaying by half every `half_life` since it was
/// taken: it remembers a line's worst normal pause for minutes and forgets
/// it when the line has been calm for long.
#[derive(Clone, Copy, Debug)]
pub struct Envelope {
    half_life: Duration,
    peak: Option<(Duration, Instant)>,
}

impl Envelope {
    /// An empty envelope (value zero).
    pub fn new(half_life: Duration) -> Self {
        Self {
            half_life,
            peak: None,
        }
    }

    /// The envelope's value at `now`.
    pub fn value(&self, now: Instant) -> Duration {
        let Some((peak, at)) = self.peak else {
            return Duration::ZERO;
        };
        peak.mul_f64(decay(now.saturating_duration_since(at), self.half_life))
    }

    /// Takes a sample: the envelope rises to it if it is above the current
    /// value.
    pub fn sample(&mut self, now: Instant, value: Duration) {
        if value > self.value(now) {
            self.peak = Some((value, now));
        }
    }
}

/// `2^(-elapsed / half_life)`, in `(0, 1]`.
fn decay(elapsed: Duration, half_life: Duration) -> f64 {
    if half_life.is_zero() {
        return 0.0;
    }
    (-elapsed.as_secs_f64() / half_life.as_secs_f64()).exp2()
}

/// Flap damping, as BGP's route-flap damping: each false alarm adds to a
/// penalty that halves every `half_life`; the penalty stretches the line's
/// silence limits by `1 + penalty`.
#[derive(Clone, Copy, Debug)]
pub struct Damping {
    half_life: Duration,
    max: f64,
    penalty: f64,
    at: Option<Instant>,
}

impl Damping {
    /// No penalty yet; it never exceeds `max`.
    pub fn new(half_life: Duration, max: f64) -> Self {
        Self {
            half_life,
            max,
            penalty: 0.0,
            at: None,
        }
    }

    /// The penalty at `now`.
    pub fn penalty(&self, now: Instant) -> f64 {
        match self.at {
            None => 0.0,
            Some(at) => self.penalty * decay(now.saturating_duration_since(at), self.half_life),
        }
    }

    /// What the limits are multiplied by at `now`.
    pub fn factor(&self, now: Instant) -> f64 {
        1.0 + self.penalty(now)
    }

    /// Adds `amount` to the penalty at `now`.
    pub fn add(&mut self, now: Instant, amount: f64) {
        self.penalty = (self.penalty(now) + amount).min(self.max);
        self.at = Some(now);
    }
}

/// A byte counter read now and then, turned into a rate over intervals of
/// at least [`Sampler::INTERVAL`]. A counter that went backwards (an
/// interface re-created) starts over.
#[derive(Clone, Copy, Debug, Default)]
struct Sampler {
    last: Option<(u64, Instant)>,
}

impl Sampler {
    const INTERVAL: Duration = Duration::from_millis(100);

    /// The counter read `total` at `now`: the rate since the last sample
    /// once an interval has passed.
    fn sample(&mut self, now: Instant, total: u64) -> Option<f64> {
        let Some((last, at)) = self.last.filter(|&(last, _)| last <= total) else {
            self.last = Some((total, now));
            return None;
        };
        let elapsed = now.saturating_duration_since(at);
        if elapsed < Self::INTERVAL {
            return None;
        }
        self.last = Some((total, now));
        Some((total - last) as f64 / elapsed.as_secs_f64())
    }
}

/// Bytes per second through a counter, smoothed over intervals of at least
/// [`RateMeter::INTERVAL`] with gain 1/4.
#[derive(Clone, Copy, Debug, Default)]
pub struct RateMeter {
    sampler: Sampler,
    rate: f64,
}

impl RateMeter {
    /// The shortest interval a rate is computed over.
    pub const INTERVAL: Duration = Sampler::INTERVAL;

    /// The counter read `total` at `now`. A counter that went backwards
    /// (an interface re-created) starts over.
    pub fn update(&mut self, now: Instant, total: u64) {
        if let Some(sample) = self.sampler.sample(now, total) {
            self.rate += (sample - self.rate) / 4.0;
        }
    }

    /// The smoothed rate in bytes per second.
    pub fn bytes_per_sec(&self) -> u64 {
        // Non-negative and finite by construction; the cast saturates.
        self.rate.max(0.0) as u64
    }
}

/// How much a line carries now against what it carried lately: the rate
/// over the last [`Throughput::INTERVAL`] (no smoothing, so a line that
/// stops carrying shows it within two intervals) and a decaying peak of
/// that rate. A bonded connection whose data waits behind a silent line
/// shows on its other lines as a rate far below their peak.
#[derive(Clone, Copy, Debug)]
pub struct Throughput {
    sampler: Sampler,
    rate: f64,
    peak: Option<(f64, Instant)>,
    half_life: Duration,
}

impl Throughput {
    /// The interval a rate is computed over.
    pub const INTERVAL: Duration = Sampler::INTERVAL;

    /// A meter whose peak halves every `half_life`.
    pub fn new(half_life: Duration) -> Self {
        Self {
            sampler: Sampler::default(),
            rate: 0.0,
            peak: None,
            half_life,
        }
    }

    /// The bytes counted so far (received plus sent) were `total` at
    /// `now`. A counter that went backwards starts over.
    pub fn update(&mut self, now: Instant, total: u64) {
        let Some(rate) = self.sampler.sample(now, total) else {
            return;
        };
        self.rate = rate;
        if rate > self.peak(now) {
            self.peak = Some((rate, now));
        }
    }

    /// The rate over the last interval, in bytes per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The decaying peak of the rate at `now`, in bytes per second.
    pub fn peak(&self, now: Instant) -> f64 {
        self.peak.map_or(0.0, |(peak, at)| {
            peak * decay(now.saturating_duration_since(at), self.half_life)
        })
    }

    /// Forgets what the line carried (it went down or moved).
    pub fn reset(&mut self) {
        *self = Self::new(self.half_life);
    }
}

/// Counts of delivery gaps by length: how often the line pauses, for the
/// status view and for a scheduler that wants to know how bursty a line is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GapHistogram {
    /// Gaps of at least 50, 100, 200, 500, 1000 and 2000 ms, in that order.
    pub at_least: [u64; 6],
}

impl GapHistogram {
    /// The lower bounds of the buckets, in milliseconds.
    pub const BOUNDS_MS: [u64; 6] = [50, 100, 200, 500, 1000, 2000];

    /// Counts one gap.
    pub fn record(&mut self, gap: Duration) {
        let ms = u64::try_from(gap.as_millis()).unwrap_or(u64::MAX);
        for (count, bound) in self.at_least.iter_mut().zip(Self::BOUNDS_MS) {
            if ms >= bound {
                *count += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> impl Fn(u64) -> Instant {
        let start = Instant::now();
        move |ms| start + Duration::from_millis(ms)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn throughput_is_the_last_interval_and_its_peak_decays() {
        let t = clock();
        let mut meter = Throughput::new(ms(1000));
        meter.update(t(0), 0);
        // Too soon for a rate.
        meter.update(t(50), 10_000);
        assert_eq!(meter.rate(), 0.0);
        meter.update(t(100), 100_000);
        assert_eq!(meter.rate(), 1_000_000.0);
        // A line that stops carrying shows it after one interval.
        meter.update(t(200), 100_000);
        assert_eq!(meter.rate(), 0.0);
        assert!((meter.peak(t(200)) - 1_000_000.0 / 2f64.powf(0.1)).abs() < 1.0);
        assert!((meter.peak(t(1100)) - 500_000.0).abs() < 1.0);
        // A counter that went backwards starts over.
        meter.update(t(300), 5);
        assert_eq!(meter.rate(), 0.0);
        meter.reset();
        assert_eq!(meter.peak(t(300)), 0.0);
    }

    #[test]
    fn rtt_follows_rfc6298() {
        let t = clock();
        let mut rtt = RttEstimator::default();
        assert_eq!(rtt.srtt(), None);
        rtt.sample(t(0), ms(100));
        assert_eq!((rtt.srtt(), rtt.rttvar()), (Some(ms(100)), ms(50)));
        assert_eq!(rtt.rto(), Some(ms(300)));
        rtt.sample(t(10), ms(20));
        // rttvar = 3/4 * 50 + 1/4 * 80; srtt = 7/8 * 100 + 1/8 * 20
        assert_eq!(rtt.rttvar(), ms(57) + Duration::from_micros(500));
        assert_eq!(rtt.srtt(), Some(ms(90)));
        assert_eq!(rtt.min(), Some(ms(20)));
        rtt.sample(t(20), ms(40));
        assert_eq!(rtt.min(), Some(ms(20)));
        // A larger sample replaces an old minimum.
        rtt.sample(t(40_000), ms(40));
        assert_eq!(rtt.min(), Some(ms(40)));
    }

    #[test]
    fn the_envelope_keeps_the_peak_and_halves_it_every_half_life() {
        let t = clock();
        let mut e = Envelope::new(Duration::from_secs(60));
        assert_eq!(e.value(t(0)), Duration::ZERO);
        e.sample(t(0), ms(800));
        e.sample(t(1000), ms(200));
        assert!(e.value(t(1000)) > ms(780));
        assert_eq!(e.value(t(60_000)), ms(400));
        assert_eq!(e.value(t(120_000)), ms(200));
        e.sample(t(120_000), ms(300));
        assert_eq!(e.value(t(120_000)), ms(300));
    }

    #[test]
    fn damping_adds_decays_and_saturates() {
        let t = clock();
        let mut d = Damping::new(Duration::from_secs(30), 3.0);
        assert_eq!(d.factor(t(0)), 1.0);
        d.add(t(0), 1.0);
        assert_eq!(d.factor(t(0)), 2.0);
        assert!((d.penalty(t(30_000)) - 0.5).abs() < 1e-9);
        for _ in 0..10 {
            d.add(t(30_000), 1.0);
        }
        assert_eq!(d.penalty(t(30_000)), 3.0);
    }

    #[test]
    fn rates_are_measured_and_survive_a_counter_reset() {
        let t = clock();
        let mut r = RateMeter::default();
        r.update(t(0), 1000);
        r.update(t(50), 2000);
        assert_eq!(r.bytes_per_sec(), 0, "below the interval");
        r.update(t(100), 101_000);
        assert_eq!(r.bytes_per_sec(), 250_000);
        r.update(t(200), 5);
        assert_eq!(r.bytes_per_sec(), 250_000);
        r.update(t(300), 100_005);
        assert_eq!(r.bytes_per_sec(), 250_000 + 750_000 / 4);
    }

    #[test]
    fn gaps_are_counted_by_length() {
        let mut h = GapHistogram::default();
        h.record(ms(30));
        h.record(ms(150));
        h.record(ms(1500));
        assert_eq!(h.at_least, [2, 2, 1, 1, 1, 0]);
    }
}
