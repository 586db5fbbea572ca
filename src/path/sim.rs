//! Seeded simulations of whole lines on a fake clock: a clean DSL line, a
//! lossy LTE line with jitter, and cellular lines that deliver in bursts
//! (on/off delivery with pauses of 50 ms to 1.5 s, tens per minute, each
//! direction on its own), probed as the client probes them while a
//! download keeps the line busy. The core must never call the pauses a
//! line normally has an outage once it has seen a few, and must still see
//! a real outage within the failover budget.

use super::*;

/// SplitMix64: small, seeded, good enough for a simulation.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + (self.unit() * (hi - lo) as f64) as u64
    }

    fn exp(&mut self, mean: f64) -> u64 {
        (-mean * (1.0 - self.unit()).ln()) as u64
    }
}

/// How a line pauses: on periods of exponential length, then a pause drawn
/// from `pauses` (weight, shortest ms, longest ms).
#[derive(Clone, Copy)]
struct Burstiness {
    mean_on_ms: f64,
    pauses: &'static [(f64, u64, u64)],
}

/// Typical urban LTE: about 20 pauses of 100 ms or more a minute, a few
/// of over half a second.
const BURSTY: Burstiness = Burstiness {
    mean_on_ms: 2000.0,
    pauses: &[
        (0.60, 50, 150),
        (0.28, 150, 400),
        (0.10, 400, 1000),
        (0.02, 1000, 1500),
    ],
};

/// A rougher line (driving, cell edge): pauses twice as often, longer.
const ROUGH: Burstiness = Burstiness {
    mean_on_ms: 1000.0,
    pauses: &[
        (0.45, 50, 150),
        (0.30, 150, 400),
        (0.20, 400, 1000),
        (0.05, 1000, 1500),
    ],
};

/// One direction's delivery: pauses as sorted (start, end) ms.
struct Schedule {
    pauses: Vec<(u64, u64)>,
}

impl Schedule {
    fn steady() -> Self {
        Self { pauses: Vec::new() }
    }

    fn bursty(rng: &mut Rng, how: Burstiness, until: u64) -> Self {
        let mut pauses = Vec::new();
        let mut t = 0;
        while t < until {
            t += rng.exp(how.mean_on_ms).max(20);
            let mut pick = rng.unit();
            let mut len = 100;
            for &(weight, lo, hi) in how.pauses {
                if pick < weight {
                    len = rng.between(lo, hi);
                    break;
                }
                pick -= weight;
            }
            pauses.push((t, t + len));
            t += len;
        }
        Self { pauses }
    }

    /// When something handed to the line at `t` comes out of a pause.
    fn deliver(&self, t: u64) -> u64 {
        let i = self.pauses.partition_point(|&(_, end)| end <= t);
        match self.pauses.get(i) {
            Some(&(start, end)) if start <= t => end,
            _ => t,
        }
    }

    fn paused(&self, t: u64) -> bool {
        self.deliver(t) != t
    }
}

/// A line: both directions, one-way delay, jitter and random loss, and an
/// outage (everything dropped) from `outage.0` to `outage.1` ms.
struct Line {
    up: Schedule,
    down: Schedule,
    delay: u64,
    jitter: u64,
    loss: f64,
    outage: Option<(u64, u64)>,
}

impl Line {
    fn out(&self, t: u64) -> bool {
        self.outage.is_some_and(|(a, b)| (a..b).contains(&t))
    }

    /// When the answer to a probe sent at `t` arrives, if it does.
    fn answer(&self, rng: &mut Rng, t: u64) -> Option<u64> {
        let there = self
            .up
            .deliver(t + self.delay + rng.between(0, self.jitter + 1));
        if self.out(t) || self.out(there) || rng.unit() < self.loss {
            return None;
        }
        let back = self
            .down
            .deliver(there + self.delay + rng.between(0, self.jitter + 1));
        if self.out(back) || rng.unit() < self.loss {
            return None;
        }
        Some(back)
    }

    /// Whether the download's packets arrive at `t`.
    fn receiving(&self, t: u64) -> bool {
        !self.out(t) && !self.down.paused(t)
    }
}

struct Run {
    events: Vec<(u64, Event)>,
    path: Path,
    start: Instant,
}

impl Run {
    fn deads(&self) -> Vec<u64> {
        self.events
            .iter()
            .filter(|(_, e)| e.to == Verdict::Dead)
            .map(|&(t, _)| t)
            .collect()
    }
}

/// Probes `line` for `until` ms as the client's driver does, with the site
/// active throughout, waking when the core asks and when an answer lands.
fn simulate(line: &Line, seed: u64, until: u64) -> Run {
    simulate_with(Config::default(), line, seed, until)
}

fn simulate_with(config: Config, line: &Line, seed: u64, until: u64) -> Run {
    let start = Instant::now();
    let at = |ms: u64| start + Duration::from_millis(ms);
    let ms_of = |i: Instant| -> u64 {
        u64::try_from(i.saturating_duration_since(start).as_millis()).unwrap_or(u64::MAX)
    };
    let mut rng = Rng(seed ^ 0x5eed);
    let mut path = Path::new(config, at(0));
    path.set_active(at(0), true);
    // Answers in flight: (arrival ms, seq).
    let mut flight: Vec<(u64, u64)> = Vec::new();
    let mut rx = 0u64;
    let mut events = Vec::new();
    let mut now = 0;
    let mut last = 0;
    while now < until {
        // Packets that arrived since the last wake-up (one per ms while
        // the line delivers).
        rx += (last..now).filter(|&t| line.receiving(t)).count() as u64;
        last = now;
        flight.retain(|&(arrival, seq)| {
            if arrival <= now {
                path.on_answer(at(arrival), seq);
                rx += 1;
                false
            } else {
                true
            }
        });
        path.on_counters(
            at(now),
            Counters {
                rx_packets: rx,
                rx_bytes: rx * 1500,
                tx_bytes: 0,
            },
        );
        // The site's other line is clean: its probes come back in 20 ms.
        path.set_others_answered(Some(at(now.saturating_sub(20))));
        path.handle_timeout(at(now));
        while let Some(seq) = path.poll_transmit(at(now)) {
            if let Some(arrival) = line.answer(&mut rng, now) {
                flight.push((arrival, seq));
            }
        }
        while let Some(event) = path.poll_event() {
            events.push((ms_of(event.at), event));
        }
        let next_answer = flight.iter().map(|&(a, _)| a).min().unwrap_or(u64::MAX);
        now = ms_of(path.poll_timeout()).min(next_answer).max(now + 1);
    }
    Run {
        events,
        path,
        start,
    }
}

const MINUTES: u64 = 60_000;

fn clean(outage: Option<(u64, u64)>) -> Line {
    Line {
        up: Schedule::steady(),
        down: Schedule::steady(),
        delay: 10,
        jitter: 0,
        loss: 0.0,
        outage,
    }
}

fn lossy(outage: Option<(u64, u64)>) -> Line {
    Line {
        jitter: 10,
        delay: 30,
        loss: 0.005,
        ..clean(outage)
    }
}

fn bursty(seed: u64, how: Burstiness, until: u64, outage: Option<(u64, u64)>) -> Line {
    let mut rng = Rng(seed);
    Line {
        up: Schedule::bursty(&mut rng, how, until),
        down: Schedule::bursty(&mut rng, how, until),
        delay: 35,
        jitter: 10,
        loss: 0.005,
        outage,
    }
}

#[test]
fn steady_lines_are_never_called_dead() {
    for seed in 1..=3 {
        for (name, line) in [("clean", clean(None)), ("lossy", lossy(None))] {
            let run = simulate(&line, seed, 10 * MINUTES);
            assert!(
                run.deads().is_empty(),
                "{name} seed {seed}: {:?}",
                run.events
            );
            let e = run
                .path
                .estimates(run.start + Duration::from_millis(10 * MINUTES));
            assert_eq!(e.limits.quiet, Duration::from_millis(120), "{name}: {e:?}");
        }
    }
}

/// The pauses a bursty line normally has cost at most a couple of false
/// alarms while the core learns them, then none. With the fixed limits of
/// before (120 ms quiet, 300 ms busy) the same lines were called dead
/// dozens of times a minute.
#[test]
fn bursty_lines_learn_their_pauses() {
    for seed in 1..=4 {
        for (name, how) in [("bursty", BURSTY), ("rough", ROUGH)] {
            let line = bursty(seed, how, 10 * MINUTES, None);
            let run = simulate(&line, seed, 10 * MINUTES);
            let deads = run.deads();
            let e = run
                .path
                .estimates(run.start + Duration::from_millis(10 * MINUTES));
            eprintln!(
                "{name} seed {seed}: dead at {deads:?} ms; limits {:?}; gaps {:?}",
                e.limits, e.gaps.at_least
            );
            for (t, e) in run.events.iter().filter(|(_, e)| e.to == Verdict::Dead) {
                eprintln!("  {t}: {:?}", e.reason);
            }
            assert!(deads.len() <= 2, "{name} seed {seed}: {deads:?}");
            assert!(
                deads.iter().all(|&t| t < MINUTES),
                "{name} seed {seed}: called dead after learning: {deads:?}"
            );
            // It still pauses as often as a real line.
            assert!(e.gaps.at_least[1] >= 100, "{name}: {e:?}");
        }
    }
}

/// The same lines with the limits fixed (nothing learned, no damping), as
/// the client had them before the path core: called dead again and again.
#[test]
fn fixed_limits_flap_on_the_same_lines() {
    let fixed = Config {
        learn_factor: 0.0,
        damping_step: 0.0,
        busy_floor: Duration::from_millis(300),
        ..Config::default()
    };
    for seed in 1..=2 {
        let line = bursty(seed, BURSTY, 2 * MINUTES, None);
        let run = simulate_with(fixed, &line, seed, 2 * MINUTES);
        assert!(run.deads().len() >= 20, "seed {seed}: {:?}", run.deads());
    }
}

/// How long after the line went silent at `cut` the core called it dead.
fn detection(run: &Run, cut: u64) -> u64 {
    let dead = run
        .deads()
        .into_iter()
        .find(|&t| t >= cut)
        .unwrap_or_else(|| panic!("never dead after {cut}: {:?}", run.events));
    dead - cut
}

#[test]
fn a_clean_line_that_goes_silent_is_dead_within_the_failover_budget() {
    for seed in 1..=3 {
        let cut = 5 * MINUTES + seed * 7;
        for (name, line) in [
            ("clean", clean(Some((cut, cut + 8000)))),
            ("lossy", lossy(Some((cut, cut + 8000)))),
        ] {
            let run = simulate(&line, seed, cut + 20_000);
            let after = detection(&run, cut);
            // The quiet limit, plus up to one counter check for the last packet
            // to be seen and one for the verdict.
            assert!(
                after <= 140,
                "{name} seed {seed}: dead {after} ms after the cut"
            );
            // And back soon after the outage, with no damping.
            let back = run
                .events
                .iter()
                .find(|(t, e)| *t >= cut + 8000 && e.to == Verdict::Back)
                .map(|&(t, _)| t - cut - 8000)
                .expect("back");
            // A probe interval, then a round trip.
            let most = 2 * (line.delay + line.jitter) + 40;
            assert!(back <= most, "{name}: back after {back} ms");
            assert_eq!(run.path.estimates(run.start).false_alarms, 0);
        }
    }
}

#[test]
fn a_bursty_line_that_goes_silent_is_dead_within_its_limit() {
    for seed in 1..=3 {
        let cut = 5 * MINUTES + seed * 7;
        let line = bursty(seed, BURSTY, cut + 20_000, Some((cut, cut + 8000)));
        let run = simulate(&line, seed, cut + 20_000);
        let after = detection(&run, cut);
        eprintln!("bursty seed {seed}: dead {after} ms after the cut");
        assert!(
            after <= Config::default().ceiling.as_millis() as u64 + 100,
            "seed {seed}: {after} ms"
        );
    }
}
