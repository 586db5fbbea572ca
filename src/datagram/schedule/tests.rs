//! The scheduler with a fake clock: pinned flows, failover, backups, the
//! three modes, DNS and QUIC policies, the bounded flow table, and seeded
//! simulations of jittery and failing paths.

use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::path::{GapHistogram, Limits};
use crate::wire::Demux;

const A: PathId = PathId(0);
const B: PathId = PathId(1);
const C: PathId = PathId(2);

/// A seeded xorshift64 generator: reproducible simulations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn next_u32(&mut self) -> u32 {
        (self.next() >> 32) as u32
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn estimates(verdict: Verdict, srtt_ms: Option<u64>) -> Estimates {
    Estimates {
        verdict,
        srtt: srtt_ms.map(ms),
        rttvar: ms(1),
        min_rtt: srtt_ms.map(ms),
        loss: 0.0,
        rx_bytes_per_sec: 0,
        tx_bytes_per_sec: 0,
        limits: Limits {
            quiet: ms(120),
            busy: ms(600),
            hold: ms(250),
        },
        damping: 0.0,
        gaps: GapHistogram::default(),
        changes: 0,
        false_alarms: 0,
    }
}

fn flow(n: u32) -> Flow {
    let [a, b, c, d] = n.to_be_bytes();
    Flow::new(FlowKey {
        protocol: 17,
        src: IpAddr::V4(Ipv4Addr::new(10, a, b, c)),
        dst: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10)),
        demux: Demux::Ports {
            src: 1024 + u16::from(d),
            dst: 9,
        },
    })
}

fn dns() -> Flow {
    let mut f = flow(1);
    f.key.demux = Demux::Ports {
        src: 40000,
        dst: 53,
    };
    Flow::new(f.key)
}

fn quic() -> Flow {
    let mut f = flow(1);
    f.key.demux = Demux::Ports {
        src: 40000,
        dst: 443,
    };
    Flow::new(f.key)
}

/// A scheduler at a fake clock with paths of the given backup settings.
struct Bench {
    s: Scheduler,
    now: Instant,
}

impl Bench {
    fn new(config: SchedulerConfig, backups: &[bool]) -> Self {
        let now = Instant::now();
        let mut s = Scheduler::new(config, now);
        for (i, &backup) in backups.iter().enumerate() {
            s.add_path(now, PathId(i as u8), PathSettings { backup })
                .expect("in range");
        }
        Self { s, now }
    }

    fn latency(backups: &[bool]) -> Self {
        Self::new(SchedulerConfig::default(), backups)
    }

    fn mode(mode: Mode, backups: &[bool]) -> Self {
        Self::new(
            SchedulerConfig {
                mode,
                ..SchedulerConfig::default()
            },
            backups,
        )
    }

    fn set(&mut self, id: PathId, verdict: Verdict, srtt_ms: Option<u64>) {
        self.s.update(id, self.now, &estimates(verdict, srtt_ms));
    }

    /// Path `id` usable, its base round trip `min_ms` with `queue_ms` of
    /// queue on top, delivering `rate` bytes per second.
    fn load(&mut self, id: PathId, min_ms: u64, queue_ms: u64, rate: u64) {
        let e = Estimates {
            srtt: Some(ms(min_ms + queue_ms)),
            min_rtt: Some(ms(min_ms)),
            ..estimates(Verdict::Usable, Some(min_ms))
        };
        self.s.update(id, self.now, &e);
        self.s.set_rate(id, self.now, rate);
    }

    /// One packet of each flow, each on its one path.
    fn send_all(&mut self, flows: &[Flow]) {
        for f in flows {
            self.path(f);
        }
    }

    /// A packet of `f` arrives on `on`; the path to steer it to, if any.
    fn receive(&mut self, f: &Flow, on: PathId) -> Option<PathId> {
        self.s.on_received(self.now, &f.key, on)
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    fn send(&mut self, f: &Flow) -> Decision {
        self.s.schedule(self.now, f, 100)
    }

    /// The one path a pinned flow's packet goes on.
    fn path(&mut self, f: &Flow) -> PathId {
        match self.send(f) {
            Decision::Send(paths) if paths.len() == 1 => paths.first().expect("one"),
            other => panic!("expected one path, got {other:?}"),
        }
    }
}

#[test]
fn flows_take_the_fastest_path_and_stick_to_it() {
    let mut b = Bench::latency(&[false, false]);
    b.set(A, Verdict::Usable, Some(30));
    b.set(B, Verdict::Usable, Some(20));
    let flows: Vec<Flow> = (0..50).map(flow).collect();
    for f in &flows {
        assert_eq!(b.path(f), B);
    }
    // A becomes a little faster: not clearly (18 ms vs 20 ms), nothing
    // moves; new flows take A.
    b.set(A, Verdict::Usable, Some(18));
    for _ in 0..100 {
        b.advance(ms(30));
        for f in &flows {
            assert_eq!(b.path(f), B);
        }
    }
    assert_eq!(b.path(&flow(1000)), A);
    assert_eq!(b.s.stats().moved, 0);
    assert_eq!(b.s.stats().flows, 51);
}

#[test]
fn a_clearly_faster_path_takes_the_flows_only_after_the_hold() {
    let mut b = Bench::latency(&[false, false]);
    b.set(A, Verdict::Usable, Some(20));
    b.set(B, Verdict::Usable, Some(60));
    let f = flow(1);
    assert_eq!(b.path(&f), A);
    // B clearly faster (5 × 1.25 + 10 < 20), but only for 900 ms.
    b.set(B, Verdict::Usable, Some(5));
    b.advance(ms(900));
    assert_eq!(b.path(&f), A);
    assert_eq!(b.path(&flow(2)), B, "new flows take the best path at once");
    // A blip back: the hold starts over.
    b.set(B, Verdict::Usable, Some(19));
    b.advance(ms(10));
    b.set(B, Verdict::Usable, Some(5));
    b.advance(ms(999));
    assert_eq!(b.path(&f), A);
    // Held for a whole second: it moves, without any update (the
    // scheduler catches up by itself).
    b.advance(ms(2));
    assert_eq!(b.path(&f), B);
    assert_eq!(b.path(&flow(2)), B);
    assert_eq!(b.s.stats().moved, 1);
}

#[test]
fn a_dead_path_hands_its_flows_over_at_the_next_packet() {
    let mut b = Bench::latency(&[false, false, false]);
    b.set(A, Verdict::Usable, Some(10));
    b.set(B, Verdict::Usable, Some(30));
    b.set(C, Verdict::Usable, Some(40));
    let flows: Vec<Flow> = (0..20).map(flow).collect();
    for f in &flows {
        assert_eq!(b.path(f), A);
    }
    b.advance(ms(5));
    b.set(A, Verdict::Dead, Some(10));
    for f in &flows {
        assert_eq!(b.path(f), B, "the next best, within one update");
    }
    assert_eq!(b.s.stats().moved, 20);

    // A comes back: on probation nothing moves to it, even when faster...
    b.set(A, Verdict::Back, Some(10));
    b.advance(ms(500));
    for f in &flows {
        assert_eq!(b.path(f), B);
    }
    // ...and after the hold the flows return to it.
    b.advance(ms(600));
    b.set(A, Verdict::Usable, Some(10));
    for f in &flows {
        assert_eq!(b.path(f), A);
    }
}

#[test]
fn removed_paths_hand_their_flows_over() {
    let mut b = Bench::latency(&[false, false]);
    b.set(A, Verdict::Usable, Some(10));
    b.set(B, Verdict::Usable, Some(30));
    let f = flow(7);
    assert_eq!(b.path(&f), A);
    b.s.remove_path(b.now, A);
    assert_eq!(b.path(&f), B);
    b.set(A, Verdict::Usable, Some(1));
    b.advance(ms(5000));
    assert_eq!(b.path(&f), B, "updates of a removed path are ignored");
    // Plugged back in, it is a fresh path; the flow's count moved with it.
    b.s.add_path(b.now, A, PathSettings::default())
        .expect("in range");
    assert_eq!(b.s.paths[A.index()].flows, 0);
    assert_eq!(b.s.paths[B.index()].flows, 1);
    assert_eq!(b.path(&flow(8)), B, "unknown round trip ranks last");
    assert_eq!(
        b.s.add_path(b.now, PathId(8), PathSettings::default()),
        Err(ScheduleError::AddPath { id: 8 })
    );
}

#[test]
fn backups_carry_only_when_no_other_path_does() {
    for mode in [Mode::Latency, Mode::Redundant, Mode::Aggregate] {
        let mut b = Bench::mode(mode, &[false, true]);
        // The backup is much faster: it still gets nothing, not even DNS.
        b.set(A, Verdict::Usable, Some(80));
        b.set(B, Verdict::Usable, Some(5));
        let f = flow(1);
        assert_eq!(b.send(&f), Decision::Send(Paths::one(A)), "{mode:?}");
        assert_eq!(b.send(&dns()), Decision::Send(Paths::one(A)), "{mode:?}");

        b.set(A, Verdict::Dead, Some(80));
        assert_eq!(b.send(&f), Decision::Send(Paths::one(B)), "{mode:?}");
        assert_eq!(b.send(&dns()), Decision::Send(Paths::one(B)), "{mode:?}");

        // A returns: new flows use it at once, pinned ones leave the backup
        // once it has carried for the hold.
        b.advance(ms(10));
        b.set(A, Verdict::Back, Some(80));
        assert_eq!(b.send(&flow(2)), Decision::Send(Paths::one(A)), "{mode:?}");
        if mode != Mode::Redundant {
            assert_eq!(b.path(&f), B, "{mode:?}");
        }
        b.advance(ms(1000));
        assert_eq!(b.send(&f), Decision::Send(Paths::one(A)), "{mode:?}");
        let stats = b.s.stats();
        assert!(stats.packets[B.index()] >= 2, "{mode:?}");
    }
}

#[test]
fn redundant_mode_sends_on_every_carrying_path() {
    let mut b = Bench::mode(Mode::Redundant, &[false, false, false]);
    b.set(A, Verdict::Usable, Some(40));
    b.set(B, Verdict::Suspect, Some(10));
    b.set(C, Verdict::Usable, Some(20));
    let Decision::Send(paths) = b.send(&flow(1)) else {
        panic!("sent");
    };
    assert_eq!(paths.as_slice(), &[C, A, B], "best first, suspect last");
    b.set(B, Verdict::Dead, Some(10));
    let Decision::Send(paths) = b.send(&flow(1)) else {
        panic!("sent");
    };
    assert_eq!(paths.as_slice(), &[C, A]);
    assert_eq!(b.s.stats().flows, 0, "redundant flows need no entry");
    assert_eq!(b.s.stats().packets, [2, 1, 2, 0, 0, 0, 0, 0]);
    assert_eq!(b.s.stats().bytes[C.index()], 200);
}

#[test]
fn dns_goes_on_the_best_two_paths_unless_switched_off() {
    let mut b = Bench::latency(&[false, false, false]);
    b.set(A, Verdict::Usable, Some(40));
    b.set(B, Verdict::Usable, Some(10));
    b.set(C, Verdict::Usable, Some(20));
    assert!(dns().dns);
    let Decision::Send(paths) = b.send(&dns()) else {
        panic!("sent");
    };
    assert_eq!(paths.as_slice(), &[B, C]);
    assert_eq!(b.s.stats().flows, 0);

    let mut b = Bench::new(
        SchedulerConfig {
            dns_redundant: false,
            ..SchedulerConfig::default()
        },
        &[false, false],
    );
    b.set(A, Verdict::Usable, Some(40));
    b.set(B, Verdict::Usable, Some(10));
    assert_eq!(b.send(&dns()), Decision::Send(Paths::one(B)));
    assert_eq!(b.s.stats().flows, 1);
}

#[test]
fn real_time_flows_go_on_every_path_whatever_the_mode() {
    let call = |port: u16, ef: bool| {
        let mut f = flow(7);
        f.key.demux = Demux::Ports {
            src: 40000,
            dst: port,
        };
        Flow {
            ef,
            ..Flow::new(f.key)
        }
    };
    for mode in [Mode::Latency, Mode::Aggregate] {
        let mut b = Bench::new(
            SchedulerConfig {
                mode,
                redundant_ports: PortSet::new(&[3478, 5060]).expect("two ports"),
                ..SchedulerConfig::default()
            },
            &[false, false, true],
        );
        b.set(A, Verdict::Usable, Some(40));
        b.set(B, Verdict::Usable, Some(10));
        b.set(C, Verdict::Usable, Some(5));
        let mut on = |f: &Flow| match b.send(f) {
            Decision::Send(paths) => paths.as_slice().to_vec(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            on(&call(9999, true)),
            [B, A],
            "{mode:?}: EF, not the backup"
        );
        assert_eq!(
            on(&call(3478, false)),
            [B, A],
            "{mode:?}: a configured port"
        );
        let reply = Flow::new(call(3478, false).key.reversed());
        assert_eq!(on(&reply), [B, A], "{mode:?}: from the port too");
        assert_eq!(b.s.stats().flows, 0, "{mode:?}: no entries");
        assert!(
            matches!(b.send(&call(9999, false)), Decision::Send(p) if p.len() == 1),
            "{mode:?}: anything else pinned"
        );
    }
    let mut b = Bench::new(
        SchedulerConfig {
            redundant_ef: false,
            ..SchedulerConfig::default()
        },
        &[false, false],
    );
    b.set(A, Verdict::Usable, Some(40));
    b.set(B, Verdict::Usable, Some(10));
    assert_eq!(
        b.send(&call(9999, true)),
        Decision::Send(Paths::one(B)),
        "EF off"
    );
    assert!(PortSet::new(&[1; MAX_REDUNDANT_PORTS + 1]).is_none());
}

#[test]
fn nothing_carries_so_packets_are_dropped() {
    let mut b = Bench::latency(&[false, true]);
    b.set(A, Verdict::Dead, Some(10));
    b.set(B, Verdict::Dead, Some(10));
    assert_eq!(b.send(&flow(1)), Decision::Drop);
    assert_eq!(b.send(&dns()), Decision::Drop);
    assert_eq!(b.s.stats().dropped, 2);
    let mut empty = Bench::latency(&[]);
    assert_eq!(empty.send(&flow(1)), Decision::Drop);
}

#[test]
fn quic_is_blocked_unless_tunnelled() {
    let mut b = Bench::new(
        SchedulerConfig {
            quic: QuicPolicy::Tunnel,
            ..SchedulerConfig::default()
        },
        &[false],
    );
    b.set(A, Verdict::Usable, Some(10));
    assert_eq!(b.send(&quic()), Decision::Send(Paths::one(A)));
    let mut b = Bench::latency(&[false]);
    b.set(A, Verdict::Usable, Some(10));
    assert_eq!(b.send(&quic()), Decision::Block);
    assert_eq!(b.send(&flow(1)), Decision::Send(Paths::one(A)));
    // Blocked even with no path: the browser should fall back at once.
    b.set(A, Verdict::Dead, Some(10));
    assert_eq!(b.send(&quic()), Decision::Block);
    assert_eq!(b.s.stats().blocked, 2);
}

#[test]
fn suspect_paths_get_no_new_flows_and_lose_theirs_after_the_grace() {
    let mut b = Bench::latency(&[false, false]);
    b.set(A, Verdict::Usable, Some(10));
    b.set(B, Verdict::Usable, Some(30));
    let f = flow(1);
    assert_eq!(b.path(&f), A);
    b.set(A, Verdict::Suspect, Some(10));
    assert_eq!(b.path(&flow(2)), B, "new flows go elsewhere at once");
    b.advance(ms(40));
    assert_eq!(b.path(&f), A, "within the grace the flow stays");
    b.set(A, Verdict::Usable, Some(10));
    b.advance(ms(100));
    assert_eq!(b.path(&f), A, "a hiccup moved nothing");
    assert_eq!(b.s.stats().moved, 0);

    b.set(A, Verdict::Suspect, Some(10));
    b.advance(ms(50));
    assert_eq!(b.path(&f), B, "suspect past the grace");

    // When every path is suspect, flows stay where they are.
    let mut b = Bench::latency(&[false, false]);
    b.set(A, Verdict::Usable, Some(10));
    b.set(B, Verdict::Usable, Some(30));
    assert_eq!(b.path(&f), A);
    b.set(A, Verdict::Suspect, Some(10));
    b.set(B, Verdict::Suspect, Some(30));
    b.advance(ms(500));
    assert_eq!(b.path(&f), A);
}

#[test]
fn idle_flows_are_forgotten() {
    let mut b = Bench::latency(&[false, false]);
    b.set(A, Verdict::Usable, Some(10));
    b.set(B, Verdict::Usable, Some(30));
    for n in 0..5 {
        b.path(&flow(n));
    }
    b.advance(Duration::from_secs(30));
    b.path(&flow(0));
    b.advance(Duration::from_secs(31));
    b.path(&flow(100));
    let stats = b.s.stats();
    assert_eq!(
        stats.expired, 4,
        "flow 0 was used 31 s ago, the others 61 s"
    );
    assert_eq!(stats.flows, 2);
    assert!(b.s.path_of(&flow(0).key).is_some());
    assert!(b.s.path_of(&flow(1).key).is_none());
    assert_eq!(b.s.paths[A.index()].flows, 2);
}

#[test]
fn a_flood_of_flows_stays_within_the_table() {
    let mut b = Bench::new(
        SchedulerConfig {
            max_flows: 1000,
            ..SchedulerConfig::default()
        },
        &[false, false],
    );
    b.set(A, Verdict::Usable, Some(10));
    b.set(B, Verdict::Usable, Some(30));
    let capacity = (b.s.table.entries.capacity(), b.s.table.index.len());
    for n in 0..200_000 {
        b.advance(Duration::from_micros(10));
        assert_eq!(b.path(&flow(n)), A);
    }
    let stats = b.s.stats();
    assert_eq!(stats.flows, 1000);
    assert_eq!(stats.evicted, 199_000);
    assert_eq!(
        (b.s.table.entries.capacity(), b.s.table.index.len()),
        capacity,
        "nothing grew"
    );
    // The newest flows are the ones kept, and all of them are found.
    for n in 199_000..200_000 {
        assert_eq!(b.s.path_of(&flow(n).key), Some(A));
    }
    assert_eq!(b.s.path_of(&flow(198_999).key), None);
    assert_eq!(b.s.paths[A.index()].flows, 1000);
}

#[test]
fn aggregate_spreads_flows_by_capacity_and_moves_only_a_dead_paths_flows() {
    let mut b = Bench::mode(Mode::Aggregate, &[false, false, false]);
    // Each path was full lately: its peak rate is its capacity.
    b.load(A, 10, 50, 2_500_000);
    b.load(B, 30, 100, 5_000_000);
    b.load(C, 50, 100, 1_250_000);
    b.advance(ms(100));
    b.load(A, 10, 0, 0);
    b.load(B, 30, 0, 0);
    b.load(C, 50, 0, 0);
    let mut rng = Rng::new(7);
    let flows: Vec<Flow> = (0..7000).map(|_| flow(rng.next_u32())).collect();
    let mut on = [0usize; 3];
    let mut first = Vec::new();
    for f in &flows {
        let p = b.path(f);
        on[p.index()] += 1;
        first.push(p);
    }
    let total = on.iter().sum::<usize>() as f64;
    for (i, share) in [2.0 / 7.0, 4.0 / 7.0, 1.0 / 7.0].iter().enumerate() {
        let got = on[i] as f64 / total;
        assert!(
            (got - share).abs() <= share * 0.2,
            "path {i}: {got:.3} of the flows, capacity share {share:.3} ({on:?})"
        );
    }
    // A flow never changes path while paths are steady.
    for (f, p) in flows.iter().zip(&first) {
        assert_eq!(b.path(f), *p);
    }
    // B dies: its flows are spread over A and C by capacity (2:1), the
    // others stay where they were.
    b.set(B, Verdict::Dead, Some(30));
    let mut moved = [0usize; 3];
    for (f, p) in flows.iter().zip(&first) {
        let now = b.path(f);
        if *p == B {
            assert_ne!(now, B);
            moved[now.index()] += 1;
        } else {
            assert_eq!(now, *p);
        }
    }
    assert_eq!(moved[0] + moved[2], on[1]);
    assert_eq!(b.s.stats().moved as usize, on[1]);
    assert_eq!(b.s.stats().rebalanced, 0);
    let a_total = (on[0] + moved[0]) as f64;
    let c_total = (on[2] + moved[2]) as f64;
    assert!(
        (a_total / c_total - 2.0).abs() <= 0.4,
        "{a_total} : {c_total}"
    );
}

#[test]
fn aggregate_counts_a_line_never_full_as_good_as_the_best() {
    // Nothing known: even.
    let mut b = Bench::mode(Mode::Aggregate, &[false, false]);
    b.set(A, Verdict::Usable, Some(10));
    b.set(B, Verdict::Usable, Some(30));
    let mut on = [0usize; 2];
    for n in 0..100 {
        on[b.path(&flow(n)).index()] += 1;
    }
    assert_eq!(on, [50, 50]);
    // A carried 20 Mbit/s without filling, B only its probes: B is idle,
    // not slow, and counts as at least A.
    let mut b = Bench::mode(Mode::Aggregate, &[false, false]);
    b.load(A, 10, 0, 2_500_000);
    b.load(B, 30, 0, 2_000);
    let mut on = [0usize; 2];
    for n in 0..100 {
        on[b.path(&flow(n)).index()] += 1;
    }
    assert_eq!(on, [50, 50]);
    // Once A is known to fill at 2.5 MB/s and C at 7.5, C takes three
    // flows of four; B, never full, counts as the best (7.5).
    let mut b = Bench::mode(Mode::Aggregate, &[false, false, false]);
    b.load(A, 10, 50, 2_500_000);
    b.load(B, 10, 0, 1_000);
    b.load(C, 10, 50, 7_500_000);
    b.advance(ms(10));
    for id in [A, B, C] {
        b.load(id, 10, 0, 0);
    }
    let mut on = [0usize; 3];
    for n in 0..700 {
        on[b.path(&flow(n)).index()] += 1;
    }
    assert_eq!(on, [100, 300, 300]);
}

#[test]
fn a_full_path_sheds_one_flow_at_a_time_until_both_are_full() {
    // dsl (10 ms, fills at 2.5 MB/s) and lte (30 ms): eight flows start
    // evenly, 1 MB/s each offered; dsl fills.
    let mut b = Bench::mode(Mode::Aggregate, &[false, false]);
    b.load(A, 10, 0, 0);
    b.load(B, 30, 0, 0);
    let flows: Vec<Flow> = (0..8).map(flow).collect();
    b.send_all(&flows);
    let count = |b: &mut Bench| {
        let mut on = [0; 2];
        for f in &flows {
            on[b.s.path_of(&f.key).expect("pinned").index()] += 1;
        }
        on
    };
    assert_eq!(count(&mut b), [4, 4]);
    b.load(A, 10, 50, 2_500_000);
    b.load(B, 30, 5, 4_000_000);
    // Not before the path has been full for FULL_FOR.
    b.advance(ms(200));
    b.load(A, 10, 50, 2_500_000);
    b.send_all(&flows);
    assert_eq!(count(&mut b), [4, 4], "full for 200 ms: nothing moves");
    b.advance(ms(150));
    b.load(A, 10, 50, 2_500_000);
    b.send_all(&flows);
    assert_eq!(count(&mut b), [3, 5], "one flow moved, not more");
    assert_eq!(b.s.stats().rebalanced, 1);
    // Still full, lte not yet: the next flow waits for REBALANCE_EVERY.
    b.advance(ms(500));
    b.load(A, 10, 50, 2_500_000);
    b.send_all(&flows);
    assert_eq!(count(&mut b), [3, 5]);
    b.advance(ms(600));
    b.load(A, 10, 50, 2_500_000);
    b.load(B, 30, 5, 5_000_000);
    b.send_all(&flows);
    assert_eq!(count(&mut b), [2, 6]);
    // Now lte is full too: nothing moves any more, either way.
    for _ in 0..20 {
        b.advance(ms(500));
        b.load(A, 10, 40, 2_000_000);
        b.load(B, 30, 100, 5_000_000);
        b.send_all(&flows);
    }
    assert_eq!(count(&mut b), [2, 6]);
    assert_eq!(b.s.stats().rebalanced, 2);
}

#[test]
fn a_full_path_of_many_flows_gives_one_to_a_line_with_half_its_share_free() {
    // Eight flows on dsl (fills at 2.5 MB/s) and lte (at 5 MB/s).
    let mut b = Bench::mode(Mode::Aggregate, &[false, false]);
    b.load(A, 10, 50, 2_500_000);
    b.load(B, 30, 100, 5_000_000);
    b.advance(ms(10));
    let flows: Vec<Flow> = (0..8).map(flow).collect();
    b.send_all(&flows);
    let on_a = |b: &Bench| {
        flows
            .iter()
            .filter(|f| b.s.path_of(&f.key) == Some(A))
            .count()
    };
    assert_eq!(on_a(&b), 3, "placed by capacity");
    // The same with a stale, low capacity for dsl.
    let mut b = Bench::mode(Mode::Aggregate, &[false, false]);
    b.load(A, 10, 50, 1_700_000);
    b.load(B, 30, 100, 5_000_000);
    b.advance(ms(10));
    b.send_all(&flows);
    assert_eq!(on_a(&b), 2, "a stale, low capacity for dsl: 2:6");
    // dsl really delivers 2.5 MB/s; with its two flows it carries 2.0 and
    // is not full; lte stays full.
    b.load(A, 10, 0, 2_500_000);
    for _ in 0..5 {
        b.advance(ms(100));
        b.load(A, 10, 0, 2_000_000);
        b.load(B, 30, 100, 5_000_000);
        b.send_all(&flows);
    }
    assert_eq!(on_a(&b), 3, "0.5 MB/s free on dsl, half a share is 0.42");
    // A line with less room than half a share gets nothing.
    for _ in 0..30 {
        b.advance(ms(100));
        b.load(A, 10, 0, 2_200_000);
        b.load(B, 30, 100, 5_000_000);
        b.send_all(&flows);
    }
    assert_eq!(on_a(&b), 3);
    assert_eq!(b.s.stats().rebalanced, 1);
    // Carrying 2.4 (above 90 % of its peak) without filling: the peak was
    // too low, the capacity is unknown again, and dsl gets another flow.
    for _ in 0..5 {
        b.advance(ms(100));
        b.load(A, 10, 0, 2_400_000);
        b.load(B, 30, 100, 5_000_000);
        b.send_all(&flows);
    }
    assert_eq!(on_a(&b), 4, "one more within half a second, not two");
}

#[test]
fn a_flow_that_fills_every_line_settles_on_the_biggest_and_stays() {
    for mode in [Mode::Latency, Mode::Aggregate] {
        let mut b = Bench::mode(mode, &[false, false]);
        b.load(A, 10, 0, 0);
        b.load(B, 30, 0, 0);
        let f = flow(1);
        assert_eq!(b.path(&f), A, "{mode:?}: the first flow on the first line");
        // It fills dsl (2.5 MB/s); lte was never full: it may carry more.
        for _ in 0..4 {
            b.advance(ms(100));
            b.load(A, 10, 50, 2_500_000);
            b.load(B, 30, 0, 1_000);
        }
        assert_eq!(b.path(&f), B, "{mode:?}: off the full line");
        // It fills lte at 5 MB/s; dsl drained, its 2.5 MB/s of room is
        // less than the flow's 5: it stays, however long.
        for _ in 0..100 {
            b.advance(ms(100));
            b.load(A, 10, 0, 0);
            b.load(B, 30, 100, 5_000_000);
            assert_eq!(b.path(&f), B, "{mode:?}: no bouncing back");
        }
        assert_eq!(b.s.stats().rebalanced, 1, "{mode:?}");
    }
}

#[test]
fn a_flow_that_only_receives_is_steered() {
    let mut b = Bench::mode(Mode::Aggregate, &[false, false]);
    b.load(A, 10, 0, 0);
    b.load(B, 30, 0, 0);
    let f = flow(1);
    assert_eq!(b.path(&f), A, "its first packet pins it (iperf3 -R)");
    assert_eq!(b.receive(&f, A), None, "on its own path: nothing to say");
    assert_eq!(b.receive(&flow(2), A), None, "not a flow of ours");
    // Its downloads fill dsl: the arriving packets move it, with a steer.
    for _ in 0..4 {
        b.advance(ms(100));
        b.load(A, 10, 50, 2_500_000);
        b.load(B, 30, 0, 1_000);
        if b.receive(&f, A).is_some() {
            break;
        }
    }
    assert_eq!(b.s.path_of(&f.key), Some(B));
    assert_eq!(b.s.stats().steered, 1);
    // The steer was lost: packets keep arriving on dsl. It is repeated,
    // at most every STEER_AGAIN_MS.
    b.advance(ms(10));
    assert_eq!(b.receive(&f, A), None, "just steered");
    b.advance(ms(500));
    assert_eq!(b.receive(&f, A), Some(B), "steered again");
    assert_eq!(b.receive(&f, A), None);
    assert_eq!(b.receive(&f, B), None, "arrives where it should");
    // Its path dies: no steer towards it; the far end leaves it by
    // itself.
    b.advance(ms(600));
    b.set(B, Verdict::Dead, Some(30));
    assert_eq!(b.receive(&f, A), None);
    // Receiving keeps a flow from being forgotten as idle.
    let mut b = Bench::mode(Mode::Latency, &[false]);
    b.set(A, Verdict::Usable, Some(10));
    b.path(&f);
    for _ in 0..120 {
        b.advance(Duration::from_secs(1));
        b.receive(&f, A);
    }
    // Another flow's packet runs the idle sweep.
    b.path(&flow(2));
    assert_eq!(b.s.path_of(&f.key), Some(A));
    assert_eq!(b.s.stats().expired, 0);
}

/// Seeded simulation: three paths with jittery round trips, random
/// outages, many flows. Checks on every packet that only carrying paths of
/// the tier are used, and that a flow changes path only when its path
/// stopped carrying, had been suspect past the grace, or another had been
/// clearly faster for the hold.
#[test]
fn simulated_jitter_and_outages_keep_the_rules() {
    for seed in 1..=5 {
        let mut rng = Rng::new(seed);
        let mut b = Bench::latency(&[false, false, true]);
        let base = [20.0, 24.0, 15.0];
        let mut verdict = [Verdict::Usable; 3];
        let mut srtt = [20u64, 24, 15];
        let flows: Vec<Flow> = (0..64).map(|n| flow(n + 1000 * seed as u32)).collect();
        let mut pinned: Vec<Option<PathId>> = vec![None; flows.len()];
        let mut steady_moves = 0;
        for step in 0..20_000u32 {
            b.advance(ms(5));
            if step % 6 == 0 {
                for i in 0..3 {
                    // ±3 ms of jitter on round trips 4 ms apart: never
                    // clearly faster.
                    srtt[i] = (base[i] + rng.uniform(-3.0, 3.0)) as u64;
                    if rng.chance(0.002) {
                        verdict[i] = Verdict::Dead;
                    } else if verdict[i] == Verdict::Dead && rng.chance(0.01) {
                        verdict[i] = Verdict::Back;
                    } else if verdict[i] == Verdict::Back && rng.chance(0.02) {
                        verdict[i] = Verdict::Usable;
                    }
                    b.set(PathId(i as u8), verdict[i], Some(srtt[i]));
                }
            }
            let k = rng.below(flows.len());
            let carries = |id: PathId| verdict[id.index()] != Verdict::Dead;
            let primary_carries = carries(A) || carries(B);
            match b.send(&flows[k]) {
                Decision::Send(paths) => {
                    let p = paths.first().expect("one path");
                    assert!(carries(p), "seed {seed} step {step}: dead path {p:?}");
                    if let Some(old) = pinned[k] {
                        if old != p && carries(old) && (old == C) != primary_carries {
                            steady_moves += 1;
                        }
                    }
                    if pinned[k].is_none() && primary_carries {
                        assert_ne!(p, C, "a new flow on the backup while a primary works");
                    }
                    pinned[k] = Some(p);
                }
                Decision::Drop => assert!(!verdict.iter().any(|v| v.carries())),
                Decision::Block => panic!("no QUIC here"),
            }
        }
        // The primaries are never clearly faster than each other, so no
        // flow moved between two that carried.
        assert_eq!(steady_moves, 0, "seed {seed}");
        assert!(
            b.s.stats().moved > 0,
            "seed {seed}: the outages moved flows"
        );
    }
}

/// While the paths are steady (verdicts unchanged, jitter only), no flow
/// ever changes path, so its packets arrive in the order sent.
#[test]
fn no_reordering_while_paths_are_steady() {
    let mut rng = Rng::new(42);
    let mut b = Bench::latency(&[false, false]);
    b.set(A, Verdict::Usable, Some(30));
    b.set(B, Verdict::Usable, Some(32));
    let flows: Vec<Flow> = (0..200).map(flow).collect();
    let first: Vec<PathId> = flows.iter().map(|f| b.path(f)).collect();
    for step in 0..50_000 {
        b.advance(ms(1));
        if step % 30 == 0 {
            b.set(A, Verdict::Usable, Some(30 + rng.below(8) as u64));
            b.set(B, Verdict::Usable, Some(26 + rng.below(8) as u64));
        }
        let k = rng.below(flows.len());
        assert_eq!(b.path(&flows[k]), first[k], "step {step}");
    }
    assert_eq!(b.s.stats().moved, 0);
}

/// The table's index stays consistent through random inserts, lookups,
/// evictions and expiries.
#[test]
fn the_flow_table_survives_random_churn() {
    let mut rng = Rng::new(3);
    let mut b = Bench::new(
        SchedulerConfig {
            max_flows: 64,
            idle_timeout: ms(200),
            ..SchedulerConfig::default()
        },
        &[false],
    );
    b.set(A, Verdict::Usable, Some(10));
    for _ in 0..100_000 {
        b.advance(Duration::from_micros(rng.below(3000) as u64));
        let f = flow(rng.below(300) as u32);
        b.path(&f);
        assert_eq!(b.s.path_of(&f.key), Some(A));
    }
    let t = &b.s.table;
    // Walk the list: as many entries as the count, each found by its key.
    let mut at = t.head;
    let mut n = 0;
    while at != NIL {
        let e = t.entries[at as usize];
        assert_eq!(t.find(&e.key, e.hash).map(|(i, _)| i), Some(at));
        at = e.next;
        n += 1;
    }
    assert_eq!(n, t.len);
    assert_eq!(t.index.iter().filter(|&&v| v != 0).count(), t.len);
    assert_eq!(b.s.paths[A.index()].flows as usize, t.len);
}

/// What the README promises: at most about 5 MB for 65,536 flows.
#[test]
fn a_full_table_stays_near_five_megabytes() {
    let table = FlowTable::new(SchedulerConfig::default().max_flows);
    let bytes = table.entries.capacity() * std::mem::size_of::<Entry>()
        + table.index.len() * std::mem::size_of::<u32>();
    assert!(bytes <= 5_300_000, "{bytes} bytes");
}

/// One simulated line driven by the real path core: probes answered after
/// `rtt` while the line is up, the interface receiving steadily (the site
/// is busy); blackholed, nothing comes back and nothing is received.
struct Line {
    path: crate::path::Path,
    rtt: Duration,
    up: bool,
    rx: u64,
    answers: std::collections::VecDeque<(Instant, u64)>,
    last_counters: Instant,
}

impl Line {
    fn new(now: Instant, rtt: Duration) -> Self {
        let mut path = crate::path::Path::new(crate::path::Config::default(), now);
        path.set_active(now, true);
        Self {
            path,
            rtt,
            up: true,
            rx: 0,
            answers: std::collections::VecDeque::new(),
            last_counters: now,
        }
    }

    fn step(&mut self, now: Instant) {
        while let Some(seq) = self.path.poll_transmit(now) {
            if self.up {
                self.answers.push_back((now + self.rtt, seq));
            }
        }
        while self.answers.front().is_some_and(|&(at, _)| at <= now) {
            if let Some((_, seq)) = self.answers.pop_front() {
                if self.up {
                    self.path.on_answer(now, seq);
                }
            }
        }
        if self.up {
            self.rx += 1;
        }
        if now.saturating_duration_since(self.last_counters) >= ms(10) {
            self.last_counters = now;
            self.path.on_counters(
                now,
                crate::path::Counters {
                    rx_packets: self.rx,
                    rx_bytes: self.rx * 1200,
                    tx_bytes: self.rx * 1200,
                },
            );
        }
        if now >= self.path.poll_timeout() {
            self.path.handle_timeout(now);
        }
    }
}

/// The failover budget at the scheduler's level: a 50 packets/s
/// stream over a 20 ms dsl and a 60 ms lte, both judged by the real path
/// core. When dsl is blackholed, latency mode loses at most 300 ms of
/// packets and redundant mode none; when dsl returns the stream moves back
/// once dsl proved itself.
#[test]
fn a_blackholed_line_costs_at_most_300_ms_in_latency_mode_and_nothing_redundant() {
    for mode in [Mode::Latency, Mode::Redundant] {
        let start = Instant::now();
        let mut now = start;
        let mut s = Scheduler::new(
            SchedulerConfig {
                mode,
                ..SchedulerConfig::default()
            },
            now,
        );
        let mut lines = [Line::new(now, ms(20)), Line::new(now, ms(60))];
        for id in [A, B] {
            s.add_path(now, id, PathSettings::default())
                .expect("in range");
        }
        let stream = flow(5);
        let (cut, heal) = (Duration::from_secs(10), Duration::from_secs(20));
        let mut lost: Vec<Duration> = Vec::new();
        let mut back_on_dsl: Option<Duration> = None;
        let mut tick = 0u64;
        while now.saturating_duration_since(start) < Duration::from_secs(30) {
            now += ms(5);
            tick += 1;
            let t = now.saturating_duration_since(start);
            lines[0].up = !(cut..heal).contains(&t);
            for (i, line) in lines.iter_mut().enumerate() {
                line.step(now);
                s.update(PathId(i as u8), now, &line.path.estimates(now));
            }
            if !tick.is_multiple_of(4) {
                continue;
            }
            let Decision::Send(paths) = s.schedule(now, &stream, 200) else {
                panic!("{mode:?} at {t:?}: both lines cannot be dead");
            };
            if !paths.iter().any(|id| lines[id.index()].up) {
                lost.push(t);
            }
            if t > heal && back_on_dsl.is_none() && paths.first() == Some(A) {
                back_on_dsl = Some(t - heal);
            }
            if t < cut && t > Duration::from_secs(1) {
                assert_eq!(paths.first(), Some(A), "{mode:?}: on dsl, the faster line");
            }
        }
        match mode {
            Mode::Redundant => assert!(lost.is_empty(), "redundant lost {lost:?}"),
            _ => {
                let (first, last) = (lost.first().copied(), lost.last().copied());
                let (Some(first), Some(last)) = (first, last) else {
                    panic!("a blackhole loses something in latency mode");
                };
                assert!(first >= cut, "lost before the cut: {lost:?}");
                assert!(
                    last - cut <= ms(300),
                    "packets lost for {:?} after the cut: {lost:?}",
                    last - cut
                );
            }
        }
        let back = back_on_dsl.expect("the stream returns to dsl");
        assert!(
            back <= Duration::from_secs(3),
            "{mode:?}: back after {back:?}"
        );
    }
}

#[test]
fn a_new_policy_applies_from_the_next_packet() {
    let mut b = Bench::latency(&[false, false]);
    b.set(A, Verdict::Usable, Some(10));
    b.set(B, Verdict::Usable, Some(30));
    assert_eq!(b.path(&flow(1)), A);
    assert_eq!(b.send(&quic()), Decision::Block);
    let redundant = SchedulerConfig {
        mode: Mode::Redundant,
        quic: QuicPolicy::Tunnel,
        // Not a policy: stays as the scheduler was made.
        max_flows: 3,
        ..SchedulerConfig::default()
    };
    b.s.set_policy(b.now, &redundant);
    let Decision::Send(paths) = b.send(&flow(1)) else {
        panic!("sent");
    };
    assert_eq!(
        paths.as_slice(),
        &[A, B],
        "the pinned flow goes on both now"
    );
    assert!(
        matches!(b.send(&quic()), Decision::Send(_)),
        "QUIC is carried"
    );
    assert_eq!(b.s.config().max_flows, SchedulerConfig::default().max_flows);
    b.s.set_policy(b.now, &SchedulerConfig::default());
    assert_eq!(b.path(&flow(2)), A);
    assert_eq!(b.send(&quic()), Decision::Block);
}
