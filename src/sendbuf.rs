//! Tunnel send buffers sized from what the kernel measures.
//!
//! What a dead line had in flight is re-sent behind what the surviving
//! lines already hold queued, so a deep send buffer makes failover slow;
//! a shallow one starves the faster line of window and costs goodput, and
//! one fixed size is wrong for one flow (too small) and for sixteen (too
//! deep: sixteen times the queue). The kernel applies an MPTCP socket's
//! `SO_SNDBUF` to each of its subflows and its scheduler spreads data over
//! them by drain time, so what matters is the connection's total: it should
//! cover what the connection's subflows deliver in a round trip of the
//! paths without their queues (what BBR calls the bandwidth-delay product)
//! with room for the window a sender keeps, and no more: what a deep
//! bottleneck queue holds on top is what a dead line's data would wait
//! behind.
//!
//! [`target`] is that rule, pure: the sum over established subflows of
//! delivery rate × (smallest round trip + [`Policy::slack`]) times
//! [`Policy::factor`], within [`Policy::floor`]..[`Policy::ceiling`]. [`Sizer`] applies it to a
//! socket every [`Policy::every`] while the relay writes to it, changing
//! the option only when the target moved by more than an eighth.

use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use socket2::SockRef;
use tracing::debug;

use crate::sys::{self, SubflowInfo};

/// How a connection's send buffer follows its subflows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// The smallest buffer, bytes.
    pub floor: u32,
    /// The largest buffer, bytes.
    pub ceiling: u32,
    /// What the bytes delivered per round trip are multiplied by.
    pub factor: f64,
    /// Added to each subflow's round trip.
    pub slack: Duration,
    /// How often the buffer is re-evaluated while data flows.
    pub every: Duration,
    /// How long after the first write the kernel's autotuning is left
    /// alone, while the connection ramps up.
    pub warmup: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            floor: 128 << 10,
            ceiling: 8 << 20,
            factor: 2.0,
            slack: Duration::from_millis(10),
            every: Duration::from_millis(100),
            warmup: Duration::from_millis(500),
        }
    }
}

impl Policy {
    /// For the concentrator's tunnels, which carry downloads: a deeper
    /// buffer (three round trips' worth) keeps lte's window full with one
    /// flow, and the download still fails over well within its budget
    /// (`scripts/bench.sh failover`).
    pub fn downloads() -> Self {
        Self {
            factor: 3.0,
            ..Self::default()
        }
    }
}

/// The send buffer (the value given to `SO_SNDBUF`) for a connection whose
/// subflows are `subflows`; `None` when no subflow is established (keep
/// what is set).
pub fn target(subflows: &[SubflowInfo], policy: &Policy) -> Option<u32> {
    let live = || subflows.iter().filter(|s| s.state == sys::TCP_ESTABLISHED);
    live().next()?;
    let per_trip: f64 = live()
        .map(|s| {
            let base = match s.min_rtt_us {
                0 => s.rtt_us,
                min => min,
            };
            let rtt = Duration::from_micros(u64::from(base)) + policy.slack;
            s.delivery_rate as f64 * rtt.as_secs_f64()
        })
        .sum();
    let want = per_trip * policy.factor;
    // In range by the clamp; the cast cannot wrap.
    Some(want.clamp(f64::from(policy.floor), f64::from(policy.ceiling)) as u32)
}

/// How many evaluations the applied size is the maximum of.
pub const WINDOW: usize = 10;

/// Applies [`target`] to one connection's socket as its subflows change.
#[derive(Debug)]
pub struct Sizer {
    policy: Policy,
    next: Option<Instant>,
    current: u32,
    recent: [u32; WINDOW],
    at: usize,
    scratch: Vec<u8>,
    subflows: Vec<SubflowInfo>,
}

impl Sizer {
    /// A sizer for a socket whose buffer is `current` now (0: autotuned).
    pub fn new(policy: Policy, current: u32) -> Self {
        Self {
            policy,
            next: None,
            current,
            recent: [0; WINDOW],
            at: 0,
            scratch: Vec::new(),
            subflows: Vec::new(),
        }
    }

    /// The buffer last set.
    pub fn current(&self) -> u32 {
        self.current
    }

    /// Re-evaluates `socket`'s buffer if it is time at `now`. Failures (a
    /// connection that fell back to TCP, a closed socket) leave it as is.
    pub fn tick(&mut self, now: Instant, socket: &impl AsFd) {
        let Some(next) = self.next else {
            self.next = Some(now + self.policy.warmup);
            return;
        };
        if now < next {
            return;
        }
        self.next = Some(now + self.policy.every);
        if sys::mptcp_subflows(socket, &mut self.scratch, &mut self.subflows).is_err() {
            return;
        }
        let Some(sample) = target(&self.subflows, &self.policy) else {
            return;
        };
        let want = self.windowed(sample);
        if self.current > 0 && want.abs_diff(self.current) <= self.current / 8 {
            return;
        }
        if set(socket, want).is_ok() {
            debug!(
                from = self.current,
                to = want,
                subflows = ?self.subflows,
                "tunnel send buffer resized"
            );
            self.current = want;
        }
    }
}

impl Sizer {
    /// Records `sample` and returns the largest of the last [`WINDOW`].
    fn windowed(&mut self, sample: u32) -> u32 {
        self.recent[self.at] = sample;
        self.at = (self.at + 1) % WINDOW;
        self.recent.iter().copied().max().unwrap_or(sample)
    }
}

fn set(socket: &impl AsFd, bytes: u32) -> io::Result<()> {
    SockRef::from(socket).set_send_buffer_size(bytes as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subflow(rate_mbit: u64, rtt_ms: u32, unacked: u32) -> SubflowInfo {
        SubflowInfo {
            state: sys::TCP_ESTABLISHED,
            rtt_us: rtt_ms * 3000,
            min_rtt_us: rtt_ms * 1000,
            snd_cwnd: unacked,
            snd_mss: 1420,
            unacked,
            notsent_bytes: 0,
            pacing_rate: rate_mbit * 125_000,
            delivery_rate: rate_mbit * 125_000,
        }
    }

    #[test]
    fn the_buffer_covers_what_the_subflows_deliver_per_round_trip() {
        let p = Policy::default();
        // dsl 20 Mbit/s at 30 ms, lte 40 Mbit/s at 70 ms (+10 ms slack each):
        // 2.5 MB/s × 40 ms + 5 MB/s × 80 ms = 500 kB, twice that.
        let both = [subflow(20, 30, 10), subflow(40, 70, 20)];
        assert_eq!(target(&both, &p), Some(1_000_000));
        // One flow of sixteen gets a sixteenth.
        let share = [subflow(1, 30, 2), subflow(3, 70, 4)];
        assert_eq!(target(&share, &p), Some(p.floor));
    }

    #[test]
    fn queueing_delay_does_not_count() {
        let p = Policy::default();
        // The same paths with their bottleneck queues full (srtt three
        // times the smallest round trip): the same buffer.
        let mut bloated = [subflow(20, 30, 10), subflow(40, 70, 20)];
        for s in &mut bloated {
            s.rtt_us *= 3;
        }
        assert_eq!(target(&bloated, &p), Some(1_000_000));
        // Without a smallest round trip (older kernels), srtt stands in.
        bloated[0].min_rtt_us = 0;
        assert!(target(&bloated, &p) > Some(1_000_000));
    }

    #[test]
    fn only_established_subflows_count_and_the_range_holds() {
        let p = Policy::default();
        assert_eq!(target(&[], &p), None);
        let mut closing = subflow(40, 70, 20);
        closing.state = 4;
        assert_eq!(target(&[closing], &p), None);
        assert_eq!(target(&[closing, subflow(1, 1, 1)], &p), Some(p.floor));
        assert_eq!(target(&[subflow(10_000, 500, 0)], &p), Some(p.ceiling));
    }

    #[test]
    fn the_size_grows_at_once_and_shrinks_after_a_window() {
        let mut sizer = Sizer::new(Policy::default(), 0);
        assert_eq!(sizer.windowed(500_000), 500_000);
        assert_eq!(sizer.windowed(900_000), 900_000);
        for _ in 0..WINDOW - 1 {
            assert_eq!(sizer.windowed(300_000), 900_000);
        }
        assert_eq!(sizer.windowed(300_000), 300_000);
    }

    #[test]
    fn a_plain_tcp_socket_is_left_alone() {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let mut sizer = Sizer::new(Policy::default(), 200_000);
        let now = Instant::now();
        sizer.tick(now, &socket);
        sizer.tick(now + Duration::from_secs(1), &socket);
        assert_eq!(sizer.current(), 200_000);
    }
}
