//! The path core on a fake clock, one behaviour at a time. The seeded
//! simulations of whole lines are in [`super::sim`].

use super::*;

fn clock() -> impl Fn(u64) -> Instant {
    let start = Instant::now();
    move |ms| start + Duration::from_millis(ms)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Drives `path` from `from` to `to` (ms) in 1 ms steps: probes answered
/// after `rtt` ms while `answering(t)`, the interface receiving a packet every
/// ms while `receiving(t)`. Returns the events seen.
struct Driver {
    rx: u64,
    /// The probes' round trip, ms.
    rtt: u64,
    /// Probes in flight: (seq, answer due at ms).
    flight: Vec<(u64, u64)>,
    /// Whether the site's other line answers its probes.
    others: bool,
    /// The other line's round trip, ms.
    others_rtt: u64,
}

impl Driver {
    fn new() -> Self {
        Self {
            rx: 0,
            rtt: 20,
            flight: Vec::new(),
            others: true,
            others_rtt: 20,
        }
    }

    fn run(
        &mut self,
        path: &mut Path,
        t: &impl Fn(u64) -> Instant,
        from: u64,
        to: u64,
        answering: impl Fn(u64) -> bool,
        receiving: impl Fn(u64) -> bool,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        for now in from..to {
            let mut i = 0;
            while i < self.flight.len() {
                let (seq, due) = self.flight[i];
                if due <= now {
                    self.flight.swap_remove(i);
                    if answering(now) {
                        path.on_answer(t(now), seq);
                        self.rx += 1;
                    }
                } else {
                    i += 1;
                }
            }
            if receiving(now) {
                self.rx += 1;
            }
            path.on_counters(
                t(now),
                Counters {
                    rx_packets: self.rx,
                    rx_bytes: self.rx * 1500,
                    tx_bytes: 0,
                },
            );
            if self.others {
                path.set_others_answered(Some(t(now.saturating_sub(self.others_rtt))));
            }
            path.handle_timeout(t(now));
            while let Some(seq) = path.poll_transmit(t(now)) {
                self.flight.push((seq, now + self.rtt));
            }
            events.extend(std::iter::from_fn(|| path.poll_event()));
        }
        events
    }
}

fn dead_at(events: &[Event]) -> Option<Instant> {
    events.iter().find(|e| e.to == Verdict::Dead).map(|e| e.at)
}

fn active_path(t: &impl Fn(u64) -> Instant) -> Path {
    let mut path = Path::new(Config::default(), t(0));
    path.set_active(t(0), true);
    path
}

#[test]
fn no_verdict_before_the_first_answer() {
    let t = clock();
    let mut path = active_path(&t);
    let mut d = Driver::new();
    let events = d.run(&mut path, &t, 0, 10_000, |_| false, |_| false);
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(path.verdict(), Verdict::Usable);
}

#[test]
fn a_quiet_line_is_dead_after_120_ms_and_a_busy_one_after_600() {
    let t = clock();
    let mut quiet = active_path(&t);
    let mut busy = active_path(&t);
    let (mut dq, mut db) = (Driver::new(), Driver::new());
    // Two seconds of a clean 20 ms line, then probes go unanswered at 2000.
    let answering = |now| now < 2000;
    let q = dq.run(&mut quiet, &t, 0, 3000, answering, answering);
    let b = db.run(&mut busy, &t, 0, 3000, answering, |_| true);
    // The first unanswered probe left at most 30 ms before the cut, minus
    // the round trip.
    let quiet_dead = dead_at(&q).expect("quiet line dead");
    assert!(
        quiet_dead >= t(2000 + 120 - 30) && quiet_dead <= t(2000 + 130),
        "{q:?}"
    );
    let busy_dead = dead_at(&b).expect("busy line dead");
    assert!(
        busy_dead >= t(2000 + 600 - 30) && busy_dead <= t(2000 + 610),
        "{b:?}"
    );
    assert!(matches!(
        q.iter().find(|e| e.to == Verdict::Dead).map(|e| e.reason),
        Some(Reason::Silent { quiet: true, .. })
    ));
    // Suspect first, at half the limit.
    assert_eq!(q[0].to, Verdict::Suspect, "{q:?}");
}

#[test]
fn an_idle_site_waits_longer() {
    let t = clock();
    let mut path = Path::new(Config::default(), t(0));
    let mut d = Driver::new();
    let events = d.run(&mut path, &t, 0, 12_000, |now| now < 5000, |_| false);
    let dead = dead_at(&events).expect("dead");
    // Probes every second: the first unanswered one left within a second
    // of the cut at 5000.
    assert!(
        dead >= t(5000 + 3500 - 1000) && dead <= t(5000 + 1000 + 3500),
        "{events:?}"
    );
}

#[test]
fn carrier_loss_is_dead_at_once_and_its_return_is_back_then_usable() {
    let t = clock();
    let mut path = active_path(&t);
    let mut d = Driver::new();
    d.run(&mut path, &t, 0, 1000, |_| true, |_| true);
    path.set_link(t(1000), false, true);
    assert_eq!(path.verdict(), Verdict::Dead);
    assert_eq!(
        path.poll_transmit(t(1000)),
        None,
        "no probes without carrier"
    );
    let events = d.run(&mut path, &t, 1000, 3000, |_| true, |_| true);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].reason, Reason::NoCarrier);
    path.set_link(t(3000), true, true);
    assert_eq!(path.verdict(), Verdict::Back);
    let events = d.run(&mut path, &t, 3000, 5000, |_| true, |_| true);
    assert_eq!(
        events.iter().map(|e| (e.to, e.reason)).collect::<Vec<_>>(),
        [
            (Verdict::Back, Reason::LinkBack),
            (Verdict::Usable, Reason::Settled)
        ]
    );
    assert_eq!(events[1].at, t(4000));
    // No penalty: carrier events say nothing about the line's habits.
    assert_eq!(path.estimates(t(5000)).false_alarms, 0);
    path.set_link(t(5000), true, false);
    assert_eq!(path.poll_event().map(|e| e.reason), Some(Reason::NoAddress));
}

#[test]
fn a_quick_return_is_damped_and_learned() {
    let t = clock();
    let mut path = active_path(&t);
    let mut d = Driver::new();
    d.run(&mut path, &t, 0, 2000, |_| true, |_| true);
    assert_eq!(path.limits(t(2000)).quiet, ms(120));
    // A 400 ms pause in delivery (nothing arrives, answers included).
    let pause = |now| !(2000..2400).contains(&now);
    let events = d.run(&mut path, &t, 2000, 4000, pause, pause);
    let verdicts: Vec<Verdict> = events.iter().map(|e| e.to).collect();
    assert_eq!(
        verdicts,
        [
            Verdict::Suspect,
            Verdict::Dead,
            Verdict::Back,
            Verdict::Usable
        ],
        "{events:?}"
    );
    let e = path.estimates(t(4000));
    assert_eq!(e.false_alarms, 1);
    assert!(e.damping > 0.9, "{e:?}");
    // Learned (2 × about 400 ms) and damped (× about 2): the same pause
    // again is no longer an outage.
    assert!(e.limits.quiet >= ms(1500), "{e:?}");
    let pause = |now| !(4000..4400).contains(&now);
    let events = d.run(&mut path, &t, 4000, 6000, pause, pause);
    assert!(dead_at(&events).is_none(), "{events:?}");
}

#[test]
fn a_true_outage_is_not_learned() {
    let t = clock();
    let mut path = active_path(&t);
    let mut d = Driver::new();
    d.run(&mut path, &t, 0, 2000, |_| true, |_| true);
    // Blackholed for 8 s.
    let outage = |now| !(2000..10_000).contains(&now);
    let events = d.run(&mut path, &t, 2000, 12_000, outage, outage);
    let verdicts: Vec<Verdict> = events.iter().map(|e| e.to).collect();
    assert_eq!(
        verdicts,
        [
            Verdict::Suspect,
            Verdict::Dead,
            Verdict::Back,
            Verdict::Usable
        ],
        "{events:?}"
    );
    let e = path.estimates(t(12_000));
    assert_eq!(e.false_alarms, 0);
    assert_eq!(e.limits.quiet, ms(120), "{e:?}");
    // The next outage is seen as fast as the first.
    let outage = |now| !(12_000..13_000).contains(&now);
    let events = d.run(&mut path, &t, 12_000, 14_000, outage, outage);
    let dead = dead_at(&events).expect("dead");
    assert!(dead <= t(12_130), "{events:?}");
}

#[test]
fn damping_and_learning_fade() {
    let t = clock();
    let mut path = active_path(&t);
    let mut d = Driver::new();
    d.run(&mut path, &t, 0, 2000, |_| true, |_| true);
    let pause = |now| !(2000..2400).contains(&now);
    d.run(&mut path, &t, 2000, 4000, pause, pause);
    assert!(path.limits(t(4000)).quiet >= ms(1500));
    // Ten calm minutes later the line is judged as a clean one again.
    d.run(&mut path, &t, 4000, 600_000, |_| true, |_| true);
    let limits = path.limits(t(600_000));
    assert!(limits.quiet <= ms(130), "{limits:?}");
}

#[test]
fn limits_never_pass_the_ceiling() {
    let t = clock();
    let mut path = active_path(&t);
    let mut d = Driver::new();
    d.run(&mut path, &t, 0, 1000, |_| true, |_| true);
    // Repeated 1.4 s pauses, each a false alarm at first.
    let mut now = 1000;
    for _ in 0..6 {
        let (a, b) = (now, now + 1400);
        d.run(
            &mut path,
            &t,
            now,
            now + 3000,
            move |x| !(a..b).contains(&x),
            move |x| !(a..b).contains(&x),
        );
        now += 3000;
    }
    let e = path.estimates(t(now));
    assert_eq!(e.limits.quiet, Config::default().ceiling);
    assert_eq!(e.limits.busy, Config::default().ceiling * 2);
    assert!(e.false_alarms <= 2, "{e:?}");
}

#[test]
fn answers_must_match_a_probe_in_flight() {
    let t = clock();
    let mut path = active_path(&t);
    let seq = path.poll_transmit(t(0)).expect("a probe is due");
    assert_eq!(path.poll_transmit(t(1)), None, "one per period");
    assert!(!path.on_answer(t(5), 0));
    assert!(!path.on_answer(t(5), seq + 1), "not sent yet");
    assert!(path.on_answer(t(20), seq));
    assert!(!path.on_answer(t(21), seq), "a duplicate");
    assert_eq!(path.estimates(t(21)).srtt, Some(ms(20)));
    // A probe from before the ring wrapped is forgotten.
    let mut last = seq;
    for i in 1..=(RING as u64 + 1) {
        last = path.poll_transmit(t(30 * i)).expect("due");
    }
    assert!(!path.on_answer(t(30 * 130), last - RING as u64));
    assert!(path.on_answer(t(30 * 130), last));
}

#[test]
fn silence_counts_from_the_oldest_probe_after_the_newest_answer() {
    let t = clock();
    let mut path = active_path(&t);
    let a = path.poll_transmit(t(0)).expect("due");
    let b = path.poll_transmit(t(30)).expect("due");
    let _c = path.poll_transmit(t(60)).expect("due");
    assert!(path.on_answer(t(40), a));
    assert_eq!(path.waiting_since, Some(t(30)));
    // A late answer to an older probe moves nothing back.
    assert!(path.on_answer(t(70), b));
    assert_eq!(path.waiting_since, Some(t(60)));
}

#[test]
fn loss_and_rates_are_estimated() {
    let t = clock();
    let mut path = active_path(&t);
    let mut d = Driver::new();
    // Every other 30 ms probe period answered: drop answers when the
    // answer lands in an odd 30 ms slot.
    d.run(&mut path, &t, 0, 5000, |now| (now / 30) % 2 == 0, |_| true);
    let e = path.estimates(t(5000));
    assert!((0.3..0.7).contains(&e.loss), "{e:?}");
    // A packet of 1500 bytes every ms, plus answers.
    assert!(
        (1_400_000..2_300_000).contains(&e.rx_bytes_per_sec),
        "{e:?}"
    );
}

#[test]
fn a_new_address_starts_without_a_verdict_but_keeps_the_habits() {
    let t = clock();
    let mut path = active_path(&t);
    let mut d = Driver::new();
    d.run(&mut path, &t, 0, 2000, |_| true, |_| true);
    let pause = |now| !(2000..2400).contains(&now);
    d.run(&mut path, &t, 2000, 4000, pause, pause);
    let learned = path.limits(t(4000));
    path.readdressed(t(4000));
    assert_eq!(path.verdict(), Verdict::Back);
    assert_eq!(path.estimates(t(4000)).srtt, None);
    let l = path.limits(t(4000));
    assert_eq!(l.quiet, learned.quiet);
    let mut d = Driver::new();
    let events = d.run(&mut path, &t, 4000, 20_000, |_| false, |_| false);
    assert!(dead_at(&events).is_none(), "{events:?}");
}

#[test]
fn a_line_the_others_wait_for_is_dead_sooner_and_that_is_no_false_alarm() {
    let t = clock();
    let mut path = active_path(&t);
    let mut d = Driver::new();
    // A busy line (its interface keeps receiving): probes unanswered from
    // 2000 would take 600 ms to condemn it; with the others starved, the
    // hold limit (250 ms) does.
    d.run(&mut path, &t, 0, 2000, |_| true, |_| true);
    path.set_others_starved(true);
    let events = d.run(&mut path, &t, 2000, 2400, |now| now < 2000, |_| true);
    let dead = events
        .iter()
        .find(|e| e.to == Verdict::Dead)
        .expect("dead while holding the others back");
    assert!(
        dead.at >= t(2000 + 250 - 30) && dead.at <= t(2000 + 260),
        "{events:?}"
    );
    assert!(matches!(dead.reason, Reason::HoldingBack { limit, .. } if limit == ms(250)));
    // It answers again 100 ms later: back, and not damped.
    let events = d.run(&mut path, &t, 2400, 3000, |_| true, |_| true);
    assert_eq!(
        events.first().map(|e| e.to),
        Some(Verdict::Back),
        "{events:?}"
    );
    let estimates = path.estimates(t(3000));
    assert_eq!(estimates.false_alarms, 0);
    assert_eq!(estimates.damping, 0.0);

    // The same silence while the others carry on: not dead within 500 ms.
    let mut calm = active_path(&t);
    let mut d = Driver::new();
    d.run(&mut calm, &t, 0, 2000, |_| true, |_| true);
    let events = d.run(&mut calm, &t, 2000, 2500, |now| now < 2000, |_| true);
    assert_eq!(dead_at(&events), None, "{events:?}");
}

#[test]
fn the_hold_limit_follows_the_smallest_round_trip() {
    let t = clock();
    let mut path = active_path(&t);
    let mut d = Driver::new();
    d.rtt = 200;
    d.run(&mut path, &t, 0, 3000, |_| true, |_| true);
    // 2 × 200 ms + a probe interval.
    assert_eq!(path.limits(t(3000)).hold, ms(430));
}

/// A line with a deep queue (lte-weak: 300 ms of it) answers its probes
/// only after the data queued ahead of them. While it holds the others
/// back that wait is no silence; when it does go silent, the hold rule
/// still condemns it well before the busy limit would.
#[test]
fn the_hold_limit_follows_the_loaded_round_trip() {
    let t = clock();
    let mut path = active_path(&t);
    let mut d = Driver::new();
    d.rtt = 40;
    d.run(&mut path, &t, 0, 2000, |_| true, |_| true);
    // Loaded: the queue fills and every probe waits 350 ms for its answer.
    d.rtt = 350;
    d.run(&mut path, &t, 2000, 4000, |_| true, |_| true);
    path.set_others_starved(true);
    let events = d.run(&mut path, &t, 4000, 10_000, |_| true, |_| true);
    assert_eq!(dead_at(&events), None, "{events:?}");
    let hold = path.limits(t(10_000)).hold;
    assert!(hold > ms(380), "{hold:?}");
    // Blackholed at 10 s.
    let events = d.run(&mut path, &t, 10_000, 13_000, |_| false, |_| true);
    let dead = events
        .iter()
        .find(|e| e.to == Verdict::Dead)
        .expect("dead once it goes silent");
    assert!(
        matches!(dead.reason, Reason::HoldingBack { .. }),
        "{events:?}"
    );
    assert!(dead.at <= t(10_000 + 350 + 600), "{events:?}");
}

#[test]
fn others_are_starved_below_half_their_peak_when_it_is_worth_a_transfer() {
    let t = clock();
    // A line carrying 1 MB/s from 0 to 1000 ms, then `after` bytes per
    // 100 ms.
    let line = |after: u64| {
        let mut path = active_path(&t);
        let mut total = 0;
        for step in 0..=15u64 {
            total += if step <= 10 { 100_000 } else { after };
            path.on_counters(
                t(step * 100),
                Counters {
                    rx_packets: total / 1500,
                    rx_bytes: total,
                    tx_bytes: 0,
                },
            );
        }
        path
    };
    let now = t(1500);
    let (full, slowed, stopped) = (line(100_000), line(60_000), line(10_000));
    assert!(!starved([&full], now));
    assert!(!starved([&slowed], now));
    assert!(starved([&stopped], now));
    // Together: 1.1 MB/s now against a peak near 2 MB/s.
    assert!(!starved([&full, &stopped], now));
    assert!(starved([&slowed, &stopped], now));
    // No other line, or one that never carried much: nothing to starve.
    assert!(!starved([], now));
    let trickle = {
        let mut path = active_path(&t);
        for step in 0..=15u64 {
            let total = if step <= 10 { step * 2_000 } else { 20_000 };
            path.on_counters(
                t(step * 100),
                Counters {
                    rx_packets: total / 100,
                    rx_bytes: total,
                    tx_bytes: 0,
                },
            );
        }
        path
    };
    assert!(!starved([&trickle], now));
}

/// Every line's probes unanswered while the lines keep delivering (seen
/// at Gbit/s: the client too loaded to read its answers) is no line's
/// fault: silence alone condemns none of them, starved or not, until
/// another line gets a round trip through. Going quiet still does.
#[test]
fn silence_on_every_line_at_once_condemns_none_unless_quiet() {
    let t = clock();
    let mut path = active_path(&t);
    let mut d = Driver::new();
    d.run(&mut path, &t, 0, 2000, |_| true, |_| true);
    // From 2000 no line answers; this one keeps receiving.
    d.others = false;
    path.set_others_answered(Some(t(1990)));
    path.set_others_starved(true);
    let events = d.run(&mut path, &t, 2000, 6000, |now| now < 2000, |_| true);
    assert_eq!(dead_at(&events), None, "{events:?}");
    assert_eq!(path.verdict(), Verdict::Suspect, "{events:?}");
    // The other line answers again from 6000 and this one does not: its
    // silence is its own, and it is dead once its answer is overdue (its
    // round trip, 20 ms, and a probe interval after the other's).
    d.others = true;
    let events = d.run(&mut path, &t, 6000, 6200, |_| false, |_| true);
    let dead = events
        .iter()
        .find(|e| e.to == Verdict::Dead)
        .expect("dead once another line answers");
    assert!(dead.at <= t(6000 + 20 + 30 + 60), "{events:?}");

    // Every line silent and this one receives nothing either (blackholed
    // along with the rest): dead at the quiet limit as ever.
    let mut path = active_path(&t);
    let mut d = Driver::new();
    d.run(&mut path, &t, 0, 2000, |_| true, |_| true);
    d.others = false;
    let events = d.run(
        &mut path,
        &t,
        2000,
        3000,
        |now| now < 2000,
        |now| now < 2000,
    );
    let dead = events
        .iter()
        .find(|e| e.to == Verdict::Dead)
        .expect("a quiet line is dead alone");
    assert!(dead.at <= t(2000 + 130), "{events:?}");
    assert!(matches!(dead.reason, Reason::Silent { quiet: true, .. }));
}

/// What another line answered counts only from probes sent in the second
/// half of this line's silence: answers to older ones show nothing about
/// now, and a silence shared by every line starts on each a little apart
/// (a probe on a line with less delay got through just after the first
/// lost one on this line).
#[test]
fn only_answers_to_probes_sent_well_into_the_silence_count() {
    let t = clock();
    let mut path = active_path(&t);
    let mut d = Driver::new();
    d.run(&mut path, &t, 0, 2000, |_| true, |_| true);
    assert!(path.answered_sent().is_some_and(|at| at >= t(1950)));
    d.others = false;
    // The other line's newest answered probe left at 1995, before this
    // line's first unanswered one.
    path.set_others_answered(Some(t(1995)));
    let events = d.run(&mut path, &t, 2000, 4000, |now| now < 2000, |_| true);
    assert_eq!(dead_at(&events), None, "{events:?}");
    path.set_others_answered(Some(t(2100)));
    let events = d.run(&mut path, &t, 4000, 4010, |_| false, |_| true);
    assert_eq!(dead_at(&events), None, "{events:?}");
    // About 2 s of silence at 4010: a probe sent at 3100 is well into it.
    path.set_others_answered(Some(t(3100)));
    let events = d.run(&mut path, &t, 4010, 4200, |_| false, |_| true);
    assert!(dead_at(&events).is_some(), "{events:?}");
}

/// A silence shared by every line ends on each a little apart: the line
/// with less delay answers first. The slower one, whose answer is a round
/// trip away, is not condemned in that moment for a silence that long.
#[test]
fn the_end_of_a_shared_silence_condemns_none() {
    let t = clock();
    let mut path = active_path(&t);
    let mut d = Driver::new();
    d.rtt = 100;
    d.run(&mut path, &t, 0, 2000, |_| true, |_| true);
    // Every line silent from 2000 to 4000 (probes sent then are lost),
    // the interface receiving throughout; the other line (20 ms) answers
    // again from 4000, this one (100 ms) from 4100.
    d.others = false;
    let lost = |due: u64| !(2000..4000).contains(&due.saturating_sub(100));
    let events = d.run(&mut path, &t, 2000, 4000, lost, |_| true);
    assert_eq!(dead_at(&events), None, "{events:?}");
    d.others = true;
    let events = d.run(&mut path, &t, 4000, 5000, lost, |_| true);
    assert_eq!(dead_at(&events), None, "{events:?}");
    assert_eq!(path.verdict(), Verdict::Usable, "{events:?}");
}
