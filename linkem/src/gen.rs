//! Bursty cellular delivery traces from a seeded model, and the statistics
//! that compare a trace (generated or recorded) with what real links do.
//!
//! # Why a model
//!
//! Recorded LTE traces (mahimahi's, from phones) deliver in bursts: per
//! minute tens of gaps of 100 ms or more between delivery opportunities, a
//! few of half a second to 1.5 s, and a capacity that swings between nothing
//! and tens of Mbit/s within a second while the line is alive. A fixed rate
//! shows none of that, and a recorded trace is one phone on one day. The
//! [`Model`]s here generate as many different traces of that kind as there
//! are seeds, each long enough (minutes) that its repetition does not
//! matter.
//!
//! # The process
//!
//! A Markov-modulated process, stepped in whole milliseconds:
//!
//! - **Capacity states** (good, fair, poor). Each visit to a state draws a
//!   capacity log-uniformly from the state's range and a dwell time
//!   (exponential around the state's mean); then the chain moves to another
//!   state with the model's transition probabilities.
//! - **Delivery gaps.** While the line is alive, gaps start as a Poisson
//!   process at the state's rate (tens per minute); a gap lasts from
//!   [`GAP_MIN_MS`] to [`GAP_MAX_MS`], drawn from a bounded Pareto law, so
//!   most gaps are short and a few are long (scheduler stalls, handovers).
//! - **Outages.** Rarely, the line delivers nothing for 1 to 3 s.
//!
//! Outside gaps and outages a state of capacity `C` earns `C / 1000` bits
//! per millisecond; every 12 000 bits earned is one delivery opportunity of
//! 1500 bytes at that millisecond (mahimahi's format). Earnings do not carry
//! over a gap: the radio does not make up for lost time.
//!
//! Draws come from the model crate's splitmix64 generator and `f64`
//! arithmetic, so a (model, direction, seed, length) gives the same trace
//! on every run on the same platform.

use std::fmt;
use std::str::FromStr;

use crate::model::{SplitMix64, Trace, TraceError, TRACE_OPPORTUNITY_BYTES};

/// Shortest delivery gap the models make, in milliseconds.
pub const GAP_MIN_MS: u64 = 50;
/// Longest delivery gap the models make (outages aside), in milliseconds.
pub const GAP_MAX_MS: u64 = 1_500;
/// Shortest trace [`generate`] makes, in seconds.
pub const MIN_SECS: u64 = 1;
/// Longest trace [`generate`] makes, in seconds (one hour).
pub const MAX_SECS: u64 = 3_600;
/// Gap lengths [`TraceStats`] counts, in milliseconds.
pub const GAP_THRESHOLDS_MS: [u64; 5] = [50, 100, 200, 500, 1_000];

const BITS_PER_OPPORTUNITY: u64 = TRACE_OPPORTUNITY_BYTES * 8;

/// The generated traces' models: names as in [`Model::NAMES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Model {
    /// Typical urban LTE: 5-40 Mbit/s down, 20-30 gaps of 100 ms or more per
    /// minute, a few of half a second or more.
    LteBursty,
    /// LTE while driving: deeper swings, longer gaps, handovers, and a short
    /// outage every minute or two.
    LteDrive,
    /// LTE at the cell edge: 2-10 Mbit/s down, frequent gaps.
    LteWeak,
}

/// Which direction of a link a trace is for; up is slower.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// Towards the client (wan to client).
    Down,
    /// From the client (client to wan).
    Up,
}

/// A model name that is not one of [`Model::NAMES`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown trace model {name:?}; use one of {}", Model::NAMES.join(", "))]
pub struct UnknownModel {
    /// The name given.
    pub name: String,
}

/// A direction name that is neither `down` nor `up`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown direction {name:?}; use down or up")]
pub struct UnknownDir {
    /// The name given.
    pub name: String,
}

/// Why [`generate`] made no trace.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GenError {
    /// The length asked for is out of range.
    #[error("{secs} s is outside the allowed trace length of {MIN_SECS} to {MAX_SECS} s")]
    Length {
        /// The length asked for.
        secs: u64,
    },
    /// The generated offsets are not a valid trace (a bug in the model).
    #[error("the generated trace is invalid")]
    Invalid(#[source] TraceError),
}

impl Model {
    /// Every model, in the order of [`Model::NAMES`].
    pub const ALL: [Model; 3] = [Model::LteBursty, Model::LteDrive, Model::LteWeak];
    /// The models' names.
    pub const NAMES: [&'static str; 3] = ["lte-bursty", "lte-drive", "lte-weak"];

    /// The model's name (`lte-bursty`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Model::LteBursty => Self::NAMES[0],
            Model::LteDrive => Self::NAMES[1],
            Model::LteWeak => Self::NAMES[2],
        }
    }

    /// The process's parameters for direction `dir`.
    fn params(self, dir: Dir) -> Params {
        let down = match self {
            Model::LteBursty => Params {
                states: [
                    State::new(20.0, 40.0, 1_500.0, 60.0),
                    State::new(9.0, 22.0, 1_500.0, 80.0),
                    State::new(5.0, 10.0, 800.0, 110.0),
                ],
                next: [[0.0, 0.7, 0.3], [0.5, 0.0, 0.5], [0.4, 0.6, 0.0]],
                gap_alpha: 1.7,
                outages_per_min: 0.0,
            },
            Model::LteDrive => Params {
                states: [
                    State::new(15.0, 45.0, 1_500.0, 45.0),
                    State::new(4.0, 15.0, 1_200.0, 65.0),
                    State::new(1.0, 4.0, 1_000.0, 90.0),
                ],
                next: [[0.0, 0.6, 0.4], [0.4, 0.0, 0.6], [0.3, 0.7, 0.0]],
                gap_alpha: 1.5,
                outages_per_min: 0.5,
            },
            Model::LteWeak => Params {
                states: [
                    State::new(6.0, 10.0, 1_200.0, 55.0),
                    State::new(3.5, 6.0, 1_200.0, 70.0),
                    State::new(2.0, 3.5, 1_000.0, 95.0),
                ],
                next: [[0.0, 0.7, 0.3], [0.4, 0.0, 0.6], [0.3, 0.7, 0.0]],
                gap_alpha: 1.65,
                outages_per_min: 0.2,
            },
        };
        match dir {
            Dir::Down => down,
            // Phones send slower than they receive; the radio's gaps are
            // the same.
            Dir::Up => down.scaled(0.3),
        }
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Model {
    type Err = UnknownModel;

    fn from_str(name: &str) -> Result<Self, UnknownModel> {
        Model::ALL
            .into_iter()
            .find(|model| model.name() == name)
            .ok_or_else(|| UnknownModel {
                name: name.to_owned(),
            })
    }
}

impl Dir {
    /// `down` or `up`.
    pub fn name(self) -> &'static str {
        match self {
            Dir::Down => "down",
            Dir::Up => "up",
        }
    }
}

impl fmt::Display for Dir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dir {
    type Err = UnknownDir;

    fn from_str(name: &str) -> Result<Self, UnknownDir> {
        match name {
            "down" => Ok(Dir::Down),
            "up" => Ok(Dir::Up),
            _ => Err(UnknownDir {
                name: name.to_owned(),
            }),
        }
    }
}

/// One capacity state of the chain.
#[derive(Clone, Copy, Debug)]
struct State {
    min_mbit: f64,
    max_mbit: f64,
    mean_dwell_ms: f64,
    gaps_per_min: f64,
}

impl State {
    const fn new(min_mbit: f64, max_mbit: f64, mean_dwell_ms: f64, gaps_per_min: f64) -> Self {
        Self {
            min_mbit,
            max_mbit,
            mean_dwell_ms,
            gaps_per_min,
        }
    }
}

/// A model's process for one direction.
#[derive(Clone, Copy, Debug)]
struct Params {
    states: [State; 3],
    /// `next[i][j]`: probability of moving from state `i` to `j`.
    next: [[f64; 3]; 3],
    /// Shape of the bounded Pareto law of gap lengths: larger, fewer long
    /// gaps.
    gap_alpha: f64,
    /// Mean rate of 1-3 s outages.
    outages_per_min: f64,
}

impl Params {
    fn scaled(mut self, factor: f64) -> Self {
        for state in &mut self.states {
            state.min_mbit *= factor;
            state.max_mbit *= factor;
        }
        self
    }
}

/// A `secs`-second trace of `model` for direction `dir`, from `seed`.
///
/// The last entry is `secs * 1000`, the trace's period.
pub fn generate(model: Model, dir: Dir, seed: u64, secs: u64) -> Result<Trace, GenError> {
    if !(MIN_SECS..=MAX_SECS).contains(&secs) {
        return Err(GenError::Length { secs });
    }
    let params = model.params(dir);
    // Each direction and model has its own stream for the same seed.
    let stream = match dir {
        Dir::Down => 0x646f_776e,
        Dir::Up => 0x7570,
    } ^ (model as u64) << 32;
    let mut rng = Rng(SplitMix64::new(seed ^ stream));
    let period_ms = secs * 1000;

    let mut offsets = Vec::new();
    let mut state = 0usize;
    let mut capacity_bits_per_ms = 0u64;
    let mut state_until = 0u64;
    let mut quiet_until = 0u64;
    let mut next_gap = 0u64;
    let mut next_outage = 0u64;
    let mut earned = 0u64;
    let mut first = true;
    for ms in 0..period_ms {
        if ms >= state_until {
            if !first {
                state = rng.pick(&params.next[state]);
            }
            let s = params.states[state];
            let mbit = rng.log_uniform(s.min_mbit, s.max_mbit);
            capacity_bits_per_ms = (mbit * 1000.0) as u64;
            state_until = ms + rng.exponential_ms(s.mean_dwell_ms).max(100);
            next_gap = ms + rng.exponential_ms(60_000.0 / s.gaps_per_min);
            if first {
                next_outage = ms + after(&mut rng, params.outages_per_min);
                first = false;
            }
        }
        if ms >= quiet_until {
            if ms >= next_outage {
                quiet_until = ms + 1_000 + rng.below(2_001);
                next_outage = quiet_until + after(&mut rng, params.outages_per_min);
            } else if ms >= next_gap {
                quiet_until = ms + rng.bounded_pareto(params.gap_alpha);
                let s = params.states[state];
                next_gap = quiet_until + rng.exponential_ms(60_000.0 / s.gaps_per_min);
            }
        }
        if ms < quiet_until {
            earned = 0;
            continue;
        }
        earned += capacity_bits_per_ms;
        while earned >= BITS_PER_OPPORTUNITY {
            earned -= BITS_PER_OPPORTUNITY;
            offsets.push(ms);
        }
    }
    // The period is the last entry, so the trace ends with an opportunity.
    offsets.push(period_ms);
    Trace::new(offsets).map_err(GenError::Invalid)
}

/// Milliseconds until the next event of a Poisson process of `per_min`
/// events per minute; practically never when the rate is 0.
fn after(rng: &mut Rng, per_min: f64) -> u64 {
    if per_min <= 0.0 {
        return u64::MAX / 2;
    }
    rng.exponential_ms(60_000.0 / per_min)
}

/// The draws the process needs, on splitmix64.
struct Rng(SplitMix64);

impl Rng {
    /// Uniform in (0, 1]: never 0, so its logarithm is finite.
    fn unit(&mut self) -> f64 {
        ((self.0.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0.below(n)
    }

    /// Exponential with mean `mean_ms`, in whole milliseconds.
    fn exponential_ms(&mut self, mean_ms: f64) -> u64 {
        (-self.unit().ln() * mean_ms) as u64
    }

    fn log_uniform(&mut self, min: f64, max: f64) -> f64 {
        (min.ln() + self.unit() * (max.ln() - min.ln())).exp()
    }

    /// A gap length from the Pareto law of shape `alpha` bounded to
    /// [`GAP_MIN_MS`], [`GAP_MAX_MS`] (inverse of its distribution).
    fn bounded_pareto(&mut self, alpha: f64) -> u64 {
        let (low, high) = (GAP_MIN_MS as f64, GAP_MAX_MS as f64);
        let u = self.unit();
        let ratio = (low / high).powf(alpha);
        let x = low / (1.0 - u * (1.0 - ratio)).powf(1.0 / alpha);
        (x as u64).clamp(GAP_MIN_MS, GAP_MAX_MS)
    }

    /// An index drawn with the probabilities `weights` (summing to 1).
    fn pick(&mut self, weights: &[f64; 3]) -> usize {
        let mut u = self.unit();
        for (index, &weight) in weights.iter().enumerate() {
            if u <= weight {
                return index;
            }
            u -= weight;
        }
        weights.iter().rposition(|&w| w > 0.0).unwrap_or(0)
    }
}

/// What a trace looks like: its rate, its gaps and how its rate swings.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceStats {
    /// Length of one period.
    pub secs: f64,
    /// Delivery opportunities in one period.
    pub opportunities: usize,
    /// Mean rate over the period, in Mbit/s.
    pub mean_mbit: f64,
    /// Per minute, the gaps between consecutive delivery opportunities at
    /// least as long as each of [`GAP_THRESHOLDS_MS`].
    pub gaps_per_min: [f64; GAP_THRESHOLDS_MS.len()],
    /// The longest gap between consecutive opportunities, in milliseconds.
    pub longest_gap_ms: u64,
    /// Rate of each whole second of the period, in Mbit/s, sorted.
    pub per_second_mbit: Vec<f64>,
}

impl TraceStats {
    /// The statistics of `trace`.
    pub fn of(trace: &Trace) -> Self {
        let offsets = trace.opportunities_ms();
        let period_ms = offsets.last().copied().unwrap_or(0).max(1);
        let minutes = period_ms as f64 / 60_000.0;
        let mut gaps = [0u64; GAP_THRESHOLDS_MS.len()];
        let mut longest_gap_ms = 0;
        for pair in offsets.windows(2) {
            let gap = pair[1] - pair[0];
            longest_gap_ms = longest_gap_ms.max(gap);
            for (count, &threshold) in gaps.iter_mut().zip(&GAP_THRESHOLDS_MS) {
                *count += u64::from(gap >= threshold);
            }
        }
        // Whole seconds only: a partial last second would read as slow.
        let seconds = (period_ms / 1000).max(1);
        let mut per_second = vec![0u64; seconds as usize];
        for &ms in offsets {
            if let Some(count) = per_second.get_mut((ms / 1000) as usize) {
                *count += 1;
            }
        }
        let mbit = |count: u64| (count * BITS_PER_OPPORTUNITY) as f64 / 1e6;
        let mut per_second_mbit: Vec<f64> = per_second.into_iter().map(mbit).collect();
        per_second_mbit.sort_by(f64::total_cmp);
        Self {
            secs: period_ms as f64 / 1000.0,
            opportunities: offsets.len(),
            mean_mbit: trace.mean_bits_per_sec() as f64 / 1e6,
            gaps_per_min: gaps.map(|count| count as f64 / minutes),
            longest_gap_ms,
            per_second_mbit,
        }
    }

    /// Per minute, the gaps of at least `threshold_ms` (one of
    /// [`GAP_THRESHOLDS_MS`]; 0 for any other).
    pub fn gaps_at_least(&self, threshold_ms: u64) -> f64 {
        GAP_THRESHOLDS_MS
            .iter()
            .position(|&t| t == threshold_ms)
            .and_then(|index| self.gaps_per_min.get(index))
            .copied()
            .unwrap_or(0.0)
    }

    /// The `percent` percentile (0 to 100) of the per-second rates, in
    /// Mbit/s.
    pub fn rate_percentile(&self, percent: u32) -> f64 {
        let n = self.per_second_mbit.len();
        if n == 0 {
            return 0.0;
        }
        let index = (n - 1) * percent.min(100) as usize / 100;
        self.per_second_mbit.get(index).copied().unwrap_or(0.0)
    }

    /// Seconds of the period with no delivery at all.
    pub fn silent_seconds(&self) -> usize {
        self.per_second_mbit
            .iter()
            .take_while(|&&r| r == 0.0)
            .count()
    }
}

impl fmt::Display for TraceStats {
    /// The multi-line report `mpbond-linkem trace stats` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "length        {:.1} s, {} delivery opportunities",
            self.secs, self.opportunities
        )?;
        writeln!(f, "mean rate     {:.2} Mbit/s", self.mean_mbit)?;
        write!(f, "gaps/min     ")?;
        for (threshold, per_min) in GAP_THRESHOLDS_MS.iter().zip(&self.gaps_per_min) {
            write!(f, " >={threshold}ms {per_min:.1}")?;
        }
        writeln!(f)?;
        writeln!(f, "longest gap   {} ms", self.longest_gap_ms)?;
        write!(f, "rate/s Mbit/s")?;
        for percent in [0, 10, 25, 50, 75, 90, 100] {
            let label = match percent {
                0 => "min".to_owned(),
                100 => "max".to_owned(),
                p => format!("p{p}"),
            };
            write!(f, " {label} {:.1}", self.rate_percentile(percent))?;
        }
        writeln!(f)?;
        writeln!(f, "silent secs   {}", self.silent_seconds())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEEDS: [u64; 4] = [1, 2, 3, 0xdead_beef];

    fn stats(model: Model, dir: Dir, seed: u64) -> TraceStats {
        TraceStats::of(&generate(model, dir, seed, 300).expect("generate"))
    }

    /// Asserts `value` lies in `range`, naming what it is.
    fn within(what: &str, value: f64, range: std::ops::RangeInclusive<f64>) {
        assert!(
            range.contains(&value),
            "{what} = {value:.2}, want {range:?}"
        );
    }

    #[test]
    fn same_seed_same_trace_other_seed_other_trace() {
        for model in Model::ALL {
            let a = generate(model, Dir::Down, 5, 60).expect("generate");
            let b = generate(model, Dir::Down, 5, 60).expect("generate");
            let c = generate(model, Dir::Down, 6, 60).expect("generate");
            let up = generate(model, Dir::Up, 5, 60).expect("generate");
            assert_eq!(a, b, "{model}");
            assert_ne!(a, c, "{model}");
            assert_ne!(a, up, "{model}");
        }
    }

    #[test]
    fn a_trace_is_as_long_as_asked_and_valid() {
        for model in Model::ALL {
            for secs in [1, 7, 120] {
                let trace = generate(model, Dir::Up, 9, secs).expect("generate");
                assert_eq!(trace.period().as_secs(), secs, "{model}");
                let offsets = trace.opportunities_ms();
                assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
            }
        }
        assert_eq!(
            generate(Model::LteBursty, Dir::Down, 1, 0),
            Err(GenError::Length { secs: 0 })
        );
        assert_eq!(
            generate(Model::LteBursty, Dir::Down, 1, MAX_SECS + 1),
            Err(GenError::Length { secs: MAX_SECS + 1 })
        );
    }

    #[test]
    fn every_model_has_the_gaps_of_a_real_lte_link() {
        for model in Model::ALL {
            for dir in [Dir::Down, Dir::Up] {
                for seed in SEEDS {
                    let s = stats(model, dir, seed);
                    let what = |w: &str| format!("{model} {dir} seed {seed}: {w}");
                    within(
                        &what("gaps >= 100 ms/min"),
                        s.gaps_at_least(100),
                        10.0..=45.0,
                    );
                    within(
                        &what("gaps >= 200 ms/min"),
                        s.gaps_at_least(200),
                        2.0..=11.0,
                    );
                    within(&what("gaps >= 500 ms/min"), s.gaps_at_least(500), 0.3..=5.0);
                    // The longest: a long gap, not an endless one (outages
                    // last up to 3 s, plus the spacing of a slow state).
                    within(
                        &what("longest gap ms"),
                        s.longest_gap_ms as f64,
                        500.0..=3_500.0,
                    );
                }
            }
        }
    }

    #[test]
    fn bursty_swings_between_5_and_40_mbit_down() {
        for seed in SEEDS {
            let s = stats(Model::LteBursty, Dir::Down, seed);
            within("mean", s.mean_mbit, 10.0..=25.0);
            within("p10", s.rate_percentile(10), 3.0..=12.0);
            within("p90", s.rate_percentile(90), 20.0..=40.0);
            // Only a rare gap of over a second can silence a whole second.
            assert!(s.silent_seconds() <= 2, "seed {seed}: lte-bursty is alive");
        }
    }

    #[test]
    fn drive_swings_deeper_and_has_outages() {
        for seed in SEEDS {
            let s = stats(Model::LteDrive, Dir::Down, seed);
            within("mean", s.mean_mbit, 5.0..=20.0);
            within("p10", s.rate_percentile(10), 0.5..=5.0);
            within("p90", s.rate_percentile(90), 15.0..=45.0);
            within("gaps >= 1 s/min", s.gaps_at_least(1_000), 0.4..=3.0);
            assert!(s.longest_gap_ms >= 1_000, "seed {seed}: an outage");
        }
    }

    #[test]
    fn weak_stays_between_2_and_10_mbit() {
        for seed in SEEDS {
            let s = stats(Model::LteWeak, Dir::Down, seed);
            within("mean", s.mean_mbit, 2.0..=7.0);
            within("p10", s.rate_percentile(10), 0.5..=4.0);
            within("p90", s.rate_percentile(90), 4.0..=10.0);
        }
    }

    #[test]
    fn up_is_slower_than_down() {
        for model in Model::ALL {
            for seed in SEEDS {
                let (down, up) = (stats(model, Dir::Down, seed), stats(model, Dir::Up, seed));
                assert!(up.mean_mbit < down.mean_mbit * 0.5, "{model} seed {seed}");
                assert!(up.mean_mbit > 0.3, "{model} seed {seed}: up still works");
            }
        }
    }

    #[test]
    fn stats_of_a_small_trace_are_exact() {
        // 2 s: opportunities at 0, 10, 20 (gaps 10, 10), then 400 (gap
        // 380), 1000 (600) and 2000 (1000, the period).
        let trace = Trace::new(vec![0, 10, 20, 400, 1000, 2000]).expect("trace");
        let s = TraceStats::of(&trace);
        assert_eq!(s.secs, 2.0);
        assert_eq!(s.opportunities, 6);
        assert_eq!(s.longest_gap_ms, 1000);
        // Per minute over 2 s: counts times 30.
        assert_eq!(s.gaps_per_min, [90.0, 90.0, 90.0, 60.0, 30.0]);
        assert_eq!(s.gaps_at_least(200), 90.0);
        assert_eq!(s.gaps_at_least(123), 0.0);
        // Second 0 has 4 opportunities, second 1 has one; the one at the
        // period (2000) begins the next period.
        assert_eq!(s.per_second_mbit, vec![0.012, 0.048]);
        assert_eq!(s.rate_percentile(0), 0.012);
        assert_eq!(s.rate_percentile(100), 0.048);
        assert_eq!(s.silent_seconds(), 0);
        assert!(s.to_string().contains(">=500ms 60.0"));
    }

    #[test]
    fn names_round_trip_and_unknown_ones_say_what_exists() {
        for model in Model::ALL {
            assert_eq!(model.name().parse::<Model>(), Ok(model));
        }
        let err = "lte-fast".parse::<Model>().expect_err("unknown");
        assert!(err.to_string().contains("lte-bursty, lte-drive, lte-weak"));
        assert_eq!("up".parse::<Dir>(), Ok(Dir::Up));
        assert!("sideways".parse::<Dir>().is_err());
    }
}
