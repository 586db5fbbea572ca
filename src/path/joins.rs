//! Whether MPTCP works on a line: a sans-IO tally of one uplink's MP_JOIN
//! subflows and of the tunnels whose initial subflow started on it, and
//! the verdict "something on this line strips MPTCP options".
//!
//! Some mobile operators strip MPTCP options. The line then answers the
//! probes (UDP) and carries plain TCP, but every subflow the kernel tries
//! to join over it is reset at once (the SYN-ACK comes back without
//! MP_JOIN), and a tunnel whose first subflow starts on it falls back to
//! plain TCP. Nothing fails loudly: the line just carries nothing for the
//! tunnels. The driver feeds what it sees, with `now`:
//!
//! - [`Joins::on_join_established`] / [`Joins::on_join_failed`]: a subflow
//!   from the line's address was established, or closed without ever
//!   being established;
//! - [`Joins::on_tunnel`]: a tunnel whose initial subflow used the line is
//!   MPTCP, or fell back to plain TCP;
//! - [`Joins::set_line_works`]: whether the path core says the line
//!   carries traffic (its probes are answered); failures while it does
//!   not are the outage's, not the options'.
//!
//! The line is **stripped** once at least [`Config::failures`] failures
//! (failed joins or fallbacks, while the line works) came with no success
//! in between and the first of them is [`Config::span`] old; it
//! **recovers** at the first success. Each change is one [`JoinEvent`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Thresholds of the verdict.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Failures in a row (no join established, no MPTCP tunnel in
    /// between) before the line counts as stripped.
    pub failures: u32,
    /// How long the failures must have lasted: a burst at one instant
    /// (many tunnels opened together while a line hiccups) is not enough.
    pub span: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            failures: 3,
            span: Duration::from_secs(3),
        }
    }
}

/// What was seen on the line since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JoinCounts {
    /// Joins (MP_JOIN subflows) that ended one way or the other.
    pub attempts: u64,
    /// Joins established.
    pub established: u64,
    /// Joins closed without being established.
    pub failed: u64,
    /// Tunnels whose initial subflow used the line and fell back to TCP.
    pub fallbacks: u64,
    /// Tunnels whose initial subflow used the line with MPTCP.
    pub mptcp_tunnels: u64,
}

/// The verdict on the line's MPTCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinVerdict {
    /// No failure streak that counts: MPTCP works, or nothing was tried.
    Fine,
    /// Failures without success, not yet enough for a verdict.
    Doubtful,
    /// Subflows do not join: something strips MPTCP options.
    Stripped {
        /// When the failures began.
        since: Instant,
    },
}

/// A change of verdict, reported once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinEvent {
    /// The line strips MPTCP options.
    Stripped {
        /// When the failures began.
        since: Instant,
        /// Failed joins in the streak.
        failed: u32,
        /// Fallbacks to TCP in the streak.
        fallbacks: u32,
    },
    /// A join was established (or an MPTCP tunnel started) on it again.
    Recovered {
        /// How long it had been stripped, from its first failure.
        after: Duration,
    },
}

/// Failures without a success in between.
#[derive(Clone, Copy, Debug)]
struct Streak {
    since: Instant,
    failed: u32,
    fallbacks: u32,
}

impl Streak {
    fn failures(&self) -> u32 {
        self.failed.saturating_add(self.fallbacks)
    }
}

/// One uplink's tally and verdict.
#[derive(Debug)]
pub struct Joins {
    config: Config,
    counts: JoinCounts,
    works: bool,
    streak: Option<Streak>,
    stripped: bool,
    /// At most two pending: a verdict and its undoing.
    events: VecDeque<JoinEvent>,
}

impl Joins {
    /// A line with nothing seen yet; it counts as working.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            counts: JoinCounts::default(),
            works: true,
            streak: None,
            stripped: false,
            events: VecDeque::with_capacity(2),
        }
    }

    /// Whether the path core says the line carries traffic now: failures
    /// count, and a verdict is given, only while it does.
    pub fn set_line_works(&mut self, works: bool) {
        self.works = works;
    }

    /// A join from the line's address was established.
    pub fn on_join_established(&mut self, now: Instant) {
        self.counts.attempts += 1;
        self.counts.established += 1;
        self.success(now);
    }

    /// A join from the line's address closed without being established.
    pub fn on_join_failed(&mut self, now: Instant) {
        self.counts.attempts += 1;
        self.counts.failed += 1;
        if let Some(streak) = self.failure(now) {
            streak.failed = streak.failed.saturating_add(1);
        }
        self.handle_timeout(now);
    }

    /// A tunnel whose initial subflow used the line: MPTCP, or (`fell_back`)
    /// plain TCP.
    pub fn on_tunnel(&mut self, now: Instant, fell_back: bool) {
        if !fell_back {
            self.counts.mptcp_tunnels += 1;
            self.success(now);
            return;
        }
        self.counts.fallbacks += 1;
        if let Some(streak) = self.failure(now) {
            streak.fallbacks = streak.fallbacks.saturating_add(1);
        }
        self.handle_timeout(now);
    }

    /// Gives the verdict once the streak is long enough.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(streak) = self.streak else { return };
        if self.stripped
            || !self.works
            || streak.failures() < self.config.failures
            || now < streak.since + self.config.span
        {
            return;
        }
        self.stripped = true;
        self.push(JoinEvent::Stripped {
            since: streak.since,
            failed: streak.failed,
            fallbacks: streak.fallbacks,
        });
    }

    /// When [`handle_timeout`](Self::handle_timeout) may give a verdict.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let streak = self.streak.filter(|_| !self.stripped)?;
        (streak.failures() >= self.config.failures).then(|| streak.since + self.config.span)
    }

    /// The next change of verdict.
    pub fn poll_event(&mut self) -> Option<JoinEvent> {
        self.events.pop_front()
    }

    /// The verdict now.
    pub fn verdict(&self) -> JoinVerdict {
        match self.streak {
            None => JoinVerdict::Fine,
            Some(streak) if self.stripped => JoinVerdict::Stripped {
                since: streak.since,
            },
            Some(_) => JoinVerdict::Doubtful,
        }
    }

    /// What was seen since start.
    pub fn counts(&self) -> JoinCounts {
        self.counts
    }

    fn success(&mut self, now: Instant) {
        let streak = self.streak.take();
        if std::mem::take(&mut self.stripped) {
            let since = streak.map_or(now, |s| s.since);
            self.push(JoinEvent::Recovered {
                after: now.saturating_duration_since(since),
            });
        }
    }

    /// The streak a failure extends, if it counts (the line works).
    fn failure(&mut self, now: Instant) -> Option<&mut Streak> {
        if !self.works {
            return None;
        }
        Some(self.streak.get_or_insert(Streak {
            since: now,
            failed: 0,
            fallbacks: 0,
        }))
    }

    fn push(&mut self, event: JoinEvent) {
        // A verdict and its undoing cancel out if nobody looked between.
        if self.events.len() >= 2 {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn failed_joins_over_some_seconds_make_a_stripped_line_once() {
        let t0 = Instant::now();
        let mut joins = Joins::new(Config::default());
        joins.on_join_failed(t0);
        joins.on_join_failed(t0 + s(0.2));
        assert_eq!(joins.verdict(), JoinVerdict::Doubtful);
        assert_eq!(joins.poll_timeout(), None, "two failures are not enough");
        joins.on_join_failed(t0 + s(0.5));
        assert_eq!(joins.poll_event(), None, "three at once are not enough");
        assert_eq!(joins.poll_timeout(), Some(t0 + s(3.0)));
        joins.handle_timeout(t0 + s(2.9));
        assert_eq!(joins.poll_event(), None);
        joins.handle_timeout(t0 + s(3.0));
        assert_eq!(
            joins.poll_event(),
            Some(JoinEvent::Stripped {
                since: t0,
                failed: 3,
                fallbacks: 0
            })
        );
        assert_eq!(joins.verdict(), JoinVerdict::Stripped { since: t0 });
        // More failures: the same episode, no second report.
        for i in 0..10 {
            joins.on_join_failed(t0 + s(4.0 + f64::from(i)));
            joins.handle_timeout(t0 + s(4.5 + f64::from(i)));
        }
        assert_eq!(joins.poll_event(), None);
        assert_eq!(joins.poll_timeout(), None);
        let counts = joins.counts();
        assert_eq!((counts.attempts, counts.failed), (13, 13));
    }

    #[test]
    fn a_join_established_in_between_keeps_the_line_fine() {
        let t0 = Instant::now();
        let mut joins = Joins::new(Config::default());
        joins.on_join_failed(t0);
        joins.on_join_failed(t0 + s(1.0));
        joins.on_join_established(t0 + s(2.0));
        assert_eq!(joins.verdict(), JoinVerdict::Fine);
        joins.on_join_failed(t0 + s(3.0));
        joins.on_join_failed(t0 + s(4.0));
        joins.handle_timeout(t0 + s(10.0));
        assert_eq!(joins.poll_event(), None);
        assert_eq!(joins.verdict(), JoinVerdict::Doubtful);
    }

    #[test]
    fn fallbacks_count_and_an_mptcp_tunnel_recovers() {
        let t0 = Instant::now();
        let mut joins = Joins::new(Config::default());
        joins.on_tunnel(t0, true);
        joins.on_join_failed(t0 + s(1.0));
        joins.on_tunnel(t0 + s(3.5), true);
        assert_eq!(
            joins.poll_event(),
            Some(JoinEvent::Stripped {
                since: t0,
                failed: 1,
                fallbacks: 2
            })
        );
        joins.on_tunnel(t0 + s(20.0), false);
        assert_eq!(
            joins.poll_event(),
            Some(JoinEvent::Recovered { after: s(20.0) })
        );
        assert_eq!(joins.verdict(), JoinVerdict::Fine);
        assert_eq!(joins.counts().fallbacks, 2);
        assert_eq!(joins.counts().mptcp_tunnels, 1);
    }

    #[test]
    fn a_join_established_ends_the_episode_and_a_new_one_is_reported_again() {
        let t0 = Instant::now();
        let mut joins = Joins::new(Config::default());
        for i in 0..3 {
            joins.on_join_failed(t0 + s(f64::from(i) * 2.0));
        }
        assert!(matches!(
            joins.poll_event(),
            Some(JoinEvent::Stripped { .. })
        ));
        joins.on_join_established(t0 + s(30.0));
        assert_eq!(
            joins.poll_event(),
            Some(JoinEvent::Recovered { after: s(30.0) })
        );
        for i in 0..3 {
            joins.on_join_failed(t0 + s(40.0 + f64::from(i) * 2.0));
        }
        assert_eq!(
            joins.poll_event(),
            Some(JoinEvent::Stripped {
                since: t0 + s(40.0),
                failed: 3,
                fallbacks: 0
            })
        );
    }

    #[test]
    fn failures_while_the_line_is_down_do_not_count() {
        let t0 = Instant::now();
        let mut joins = Joins::new(Config::default());
        joins.set_line_works(false);
        for i in 0..10 {
            joins.on_join_failed(t0 + s(f64::from(i)));
        }
        assert_eq!(joins.verdict(), JoinVerdict::Fine);
        assert_eq!(joins.poll_event(), None);
        assert_eq!(joins.counts().failed, 10);
        joins.set_line_works(true);
        joins.on_join_failed(t0 + s(11.0));
        assert_eq!(joins.verdict(), JoinVerdict::Doubtful);
        // Nor is a verdict given while it is down.
        joins.on_join_failed(t0 + s(12.0));
        joins.on_join_failed(t0 + s(13.0));
        joins.set_line_works(false);
        joins.handle_timeout(t0 + s(20.0));
        assert_eq!(joins.poll_event(), None);
        joins.set_line_works(true);
        joins.handle_timeout(t0 + s(20.1));
        assert!(matches!(
            joins.poll_event(),
            Some(JoinEvent::Stripped { .. })
        ));
    }
}
