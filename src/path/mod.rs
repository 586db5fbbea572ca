//! The path core: one sans-IO state machine per uplink that decides
//! whether the line works.
//!
//! It is fed what the driver sees — probe answers, the interface's
//! counters, carrier and address changes, whether the site is busy — with
//! `now` passed in, and hands back probes to send ([`Path::poll_transmit`]),
//! when to wake it ([`Path::poll_timeout`]) and verdict changes
//! ([`Path::poll_event`]). It opens no socket and reads no clock, so the
//! tests step a fake clock through minutes of a bursty line in
//! microseconds.
//!
//! # Verdicts
//!
//! - **usable**: the line carries traffic and new tunnels may start on it.
//! - **suspect**: silent for half its limit: nothing changes yet (a
//!   status view shows it). Costs nothing if it was a hiccup.
//! - **dead**: silent past its limit, or no carrier or address: the driver
//!   takes the line out (its MPTCP endpoint is removed, so both ends move
//!   its traffic at once).
//! - **back**: answered again after being dead; carries traffic, but new
//!   tunnels prefer settled lines for [`Config::probation`].
//!
//! # What "silent past its limit" means
//!
//! Silence is the time since the first probe that is still unanswered.
//! There are two limits:
//!
//! - **quiet**: applies when the interface has also received nothing at all
//!   for as long (a blackholed line goes quiet at once; a busy line whose
//!   probes wait in a queue keeps receiving the data ahead of them). It is
//!   the larger of [`Config::quiet_floor`] (120 ms) and
//!   [`Config::learn_factor`] (2) times the longest delivery gap the line
//!   has shown lately (a decaying peak, [`Config::memory`] half-life).
//! - **busy**: applies whatever the interface receives (a line that keeps
//!   delivering but does not answer is odd, rarely an outage, so this one
//!   is lenient). The larger of [`Config::busy_floor`] (600 ms), twice the
//!   quiet limit, twice the longest probe silence that ended in an answer
//!   lately, and `srtt + 4·rttvar`.
//!
//! The busy limit applies only while another line answers: it must have
//! answered a probe sent in the second half of this line's silence (not
//! merely after it began: a silence shared by every line starts on each
//! a little apart, as far apart as their delays), and gone on doing so
//! for this line's own round trip (`srtt + 4·rttvar`) plus a probe
//! interval (a shared silence also ends on each a little apart: this
//! line's answer would have come by then). A line that keeps delivering while
//! every line's probes go unanswered points at what they share (the
//! concentrator, or this host too loaded to read its answers: seen at
//! Gbit/s), not at the line; calling it dead would move its traffic
//! nowhere and tear down every subflow at once. A quiet line (nothing
//! received either) is still condemned alone, as are carrier and address
//! loss.
//!
//! A third limit, **holding back**, applies only while the site's other
//! lines carry far less than they did lately (the driver tells, see
//! [`starved`]): a bonded connection's data is then waiting behind this
//! line's silence (head-of-line blocking), and every moment waited costs
//! the other lines' throughput, while calling it dead costs only a fresh
//! subflow on it. It is the largest of [`Config::hold_floor`] (250 ms),
//! twice the smallest round trip plus a probe interval, and the loaded
//! round trip's `srtt + 4·rttvar` plus a probe interval (a line with a
//! deep queue answers its probes only after the data queued ahead of
//! them: that wait is its habit, not silence); neither learned nor damped,
//! and such a verdict undone quickly is no false alarm. Like the busy
//! limit, it needs another line to have answered meanwhile.
//!
//! The quiet and busy limits are stretched by flap damping (a dead
//! verdict undone within [`Config::quick_return`] was a false alarm: the
//! penalty grows by one and halves every [`Config::damping_half_life`])
//! and capped at
//! [`Config::ceiling`] (3 s; the busy limit at twice that). So a DSL line that never pauses keeps 120 ms, an
//! LTE line that pauses for 700 ms now and then gets about 1.5 s, and a
//! line that flaps is suspected less eagerly for a while. Silences that
//! outlast a dead verdict by more than the quick return (true outages) are
//! not learned, so a real outage does not make the next one slower to see.
//!
//! While the site is idle, probes go every second and the line is dead
//! after [`Config::idle_dead_after`] of silence.
//!
//! # Estimates
//!
//! [`Path::estimates`] gives what a scheduler or the status view needs:
//! smoothed round trip and variation, smallest round trip, probe loss,
//! receive and transmit rates, the gap histogram and the current limits.

pub mod estimate;
pub mod joins;
#[cfg(test)]
mod sim;

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

pub use estimate::{Damping, Envelope, GapHistogram, RateMeter, RttEstimator, Throughput};

/// How many probes are remembered to match answers and count losses.
const RING: usize = 128;

/// How many verdict changes wait for [`Path::poll_event`] at most; older
/// ones are dropped first.
const MAX_EVENTS: usize = 16;

/// The path core's tunables. [`Config::default`] is what the client uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    /// Time between probes while the site has traffic.
    pub probe_every: Duration,
    /// Time between probes while the site is idle.
    pub idle_probe_every: Duration,
    /// How often the driver feeds the interface's counters while active.
    pub check_every: Duration,
    /// The smallest quiet limit.
    pub quiet_floor: Duration,
    /// The smallest busy limit.
    pub busy_floor: Duration,
    /// Silence that makes a line dead while the site is idle.
    pub idle_dead_after: Duration,
    /// The largest quiet limit, however bursty or damped the line (the
    /// busy limit's is twice this).
    pub ceiling: Duration,
    /// Learned gaps and silences are multiplied by this.
    pub learn_factor: f64,
    /// Half-life of the learned gaps and silences.
    pub memory: Duration,
    /// A dead verdict undone within this was a false alarm.
    pub quick_return: Duration,
    /// What each false alarm adds to the damping penalty.
    pub damping_step: f64,
    /// The largest damping penalty.
    pub damping_max: f64,
    /// Half-life of the damping penalty.
    pub damping_half_life: Duration,
    /// How long a line that came back stays [`Verdict::Back`].
    pub probation: Duration,
    /// The smallest silence after which a line holding the others back
    /// is dead.
    pub hold_floor: Duration,
    /// Half-life of the peak throughput the others are compared with.
    pub throughput_memory: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            probe_every: Duration::from_millis(30),
            idle_probe_every: Duration::from_secs(1),
            check_every: Duration::from_millis(10),
            quiet_floor: Duration::from_millis(120),
            busy_floor: Duration::from_millis(600),
            idle_dead_after: Duration::from_millis(3500),
            ceiling: Duration::from_secs(3),
            learn_factor: 2.0,
            memory: Duration::from_secs(120),
            quick_return: Duration::from_millis(1500),
            damping_step: 1.0,
            damping_max: 3.0,
            damping_half_life: Duration::from_secs(60),
            probation: Duration::from_secs(1),
            hold_floor: Duration::from_millis(250),
            throughput_memory: Duration::from_secs(5),
        }
    }
}

/// What the core thinks of a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Works; new tunnels may start on it.
    Usable,
    /// Silent for a while: keeps its traffic, new tunnels go elsewhere.
    Suspect,
    /// Out: no carrier or address, or silent past its limit.
    Dead,
    /// Answered again after being dead; on probation.
    Back,
}

impl Verdict {
    /// Whether the line should carry traffic (keep its MPTCP endpoint).
    pub fn carries(self) -> bool {
        self != Verdict::Dead
    }

    /// Preference for new tunnels: lower is better, `None` for a dead line.
    /// A suspect line ranks as a usable one: moving new tunnels off it on
    /// every hiccup throws the warm tunnels away, and tunnels opened
    /// elsewhere while it is still in the path manager try to join it.
    pub fn rank(self) -> Option<u8> {
        match self {
            Verdict::Usable | Verdict::Suspect => Some(0),
            Verdict::Back => Some(1),
            Verdict::Dead => None,
        }
    }

    /// The verdict's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Usable => "usable",
            Verdict::Suspect => "suspect",
            Verdict::Dead => "dead",
            Verdict::Back => "back",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a verdict changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Probes were answered again after this much silence.
    Answered {
        /// How long the probes had been unanswered.
        after: Duration,
    },
    /// Answered steadily for the probation time since coming back.
    Settled,
    /// Probes unanswered for `silent`, past `limit`.
    Silent {
        /// How long since the first unanswered probe.
        silent: Duration,
        /// The limit that was passed.
        limit: Duration,
        /// Whether the interface had received nothing meanwhile either.
        quiet: bool,
    },
    /// Probes unanswered for `silent`, past `limit`, while the other lines
    /// carried far less than lately: the bond waits for this line.
    HoldingBack {
        /// How long since the first unanswered probe.
        silent: Duration,
        /// The limit that was passed.
        limit: Duration,
    },
    /// The interface lost its carrier, was set down or disappeared.
    NoCarrier,
    /// The interface has no address of the concentrator's family.
    NoAddress,
    /// Carrier and address are back.
    LinkBack,
    /// The uplink moved to a new address; no verdict until it is answered.
    NewAddress,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Reason::Answered { after } => write!(f, "probes answered again after {after:?}"),
            Reason::Settled => f.write_str("answered steadily since it came back"),
            Reason::Silent {
                silent,
                limit,
                quiet: true,
            } => write!(
                f,
                "probes unanswered and nothing received for {silent:?} (limit {limit:?}): \
                 blackholed?"
            ),
            Reason::Silent {
                silent,
                limit,
                quiet: false,
            } => write!(f, "probes unanswered for {silent:?} (limit {limit:?})"),
            Reason::HoldingBack { silent, limit } => write!(
                f,
                "probes unanswered for {silent:?} (limit {limit:?}) while the other \
                 uplinks wait for it"
            ),
            Reason::NoCarrier => f.write_str("no carrier, down or gone"),
            Reason::NoAddress => {
                f.write_str("its interface has no address of the concentrator's family")
            }
            Reason::LinkBack => f.write_str("carrier and address are back"),
            Reason::NewAddress => f.write_str("it has a new address"),
        }
    }
}

/// A verdict change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// When it happened.
    pub at: Instant,
    /// The verdict before.
    pub from: Verdict,
    /// The verdict now.
    pub to: Verdict,
    /// Why.
    pub reason: Reason,
}

/// The two silence limits at some moment (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// When the interface received nothing either.
    pub quiet: Duration,
    /// Whatever the interface received.
    pub busy: Duration,
    /// While the other lines wait for this one.
    pub hold: Duration,
}

/// What the core knows of its line, for schedulers and the status view.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimates {
    /// The current verdict.
    pub verdict: Verdict,
    /// Smoothed probe round trip; `None` before the first answer.
    pub srtt: Option<Duration>,
    /// Its mean deviation.
    pub rttvar: Duration,
    /// The smallest recent round trip.
    pub min_rtt: Option<Duration>,
    /// Fraction of recent settled probes that went unanswered.
    pub loss: f64,
    /// Bytes per second the interface receives.
    pub rx_bytes_per_sec: u64,
    /// Bytes per second the interface sends.
    pub tx_bytes_per_sec: u64,
    /// The silence limits now.
    pub limits: Limits,
    /// The damping penalty now (0: none).
    pub damping: f64,
    /// Delivery gaps seen while active.
    pub gaps: GapHistogram,
    /// Verdict changes so far.
    pub changes: u64,
    /// Dead verdicts undone within the quick return so far.
    pub false_alarms: u64,
}

/// The interface counters the driver reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// Why a line is dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DeadBy {
    /// Its carrier or address (or it is not dead).
    Link,
    /// Its probes' silence.
    Silence,
    /// Its silence while the other lines waited for it.
    HoldingBack,
}

#[derive(Clone, Copy, Debug)]
struct Sent {
    seq: u64,
    at: Instant,
    answered: bool,
}

/// One uplink's health (see the module documentation).
#[derive(Debug)]
pub struct Path {
    config: Config,
    verdict: Verdict,
    /// When the verdict last changed.
    since: Instant,
    /// Why the current dead verdict was given.
    dead_by: DeadBy,
    carrier: bool,
    addressed: bool,
    active: bool,
    /// When the site last became active (or the line last came up): rx
    /// gaps are measured from here at the earliest.
    active_since: Instant,
    next_seq: u64,
    last_sent: Option<Instant>,
    sent: [Option<Sent>; RING],
    /// The newest answered probe.
    newest_answered: u64,
    /// When the oldest probe sent after the newest answered one left.
    waiting_since: Option<Instant>,
    ever_answered: bool,
    rtt: RttEstimator,
    /// The interface's received packets and since when unchanged.
    rx: Option<(u64, Instant)>,
    rx_gaps: Envelope,
    silences: Envelope,
    damping: Damping,
    gaps: GapHistogram,
    /// When the last dead period longer than the quick return ended:
    /// gaps that started before it are outages, not the line's habit.
    outage_end: Option<Instant>,
    rx_rate: RateMeter,
    tx_rate: RateMeter,
    throughput: Throughput,
    /// Whether the other lines carry far less than lately (set by the
    /// driver before each [`Path::handle_timeout`]).
    others_starved: bool,
    /// When the newest probe answered on another line left (set by the
    /// driver before each [`Path::handle_timeout`]).
    others_answered: Option<Instant>,
    /// When the newest probe answered on this line left.
    answered_sent: Option<Instant>,
    /// Since when another line has been answering during this line's
    /// silence, and the silence's start (`waiting_since`) it is about.
    alone_since: Option<(Instant, Instant)>,
    last_wake: Instant,
    events: VecDeque<Event>,
    changes: u64,
    false_alarms: u64,
}

impl Path {
    /// A line with carrier and address, usable until its probes say
    /// otherwise (no verdict before the first answer).
    pub fn new(config: Config, now: Instant) -> Self {
        Self {
            config,
            verdict: Verdict::Usable,
            since: now,
            dead_by: DeadBy::Link,
            carrier: true,
            addressed: true,
            active: false,
            active_since: now,
            next_seq: 1,
            last_sent: None,
            sent: [None; RING],
            newest_answered: 0,
            waiting_since: None,
            ever_answered: false,
            rtt: RttEstimator::default(),
            rx: None,
            rx_gaps: Envelope::new(config.memory),
            silences: Envelope::new(config.memory),
            damping: Damping::new(config.damping_half_life, config.damping_max),
            gaps: GapHistogram::default(),
            outage_end: None,
            rx_rate: RateMeter::default(),
            tx_rate: RateMeter::default(),
            throughput: Throughput::new(config.throughput_memory),
            others_starved: false,
            others_answered: None,
            answered_sent: None,
            alone_since: None,
            last_wake: now,
            events: VecDeque::new(),
            changes: 0,
            false_alarms: 0,
        }
    }

    /// The current verdict.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// The smoothed probe round trip; `None` before the first answer.
    pub fn srtt(&self) -> Option<Duration> {
        self.rtt.srtt()
    }

    /// Whether the site has traffic: probes go faster and the interface's
    /// counters are watched.
    pub fn set_active(&mut self, now: Instant, active: bool) {
        if active != self.active {
            self.active = active;
            self.active_since = now;
        }
    }

    /// Carrier and address as the kernel reports them. Losing either makes
    /// the line dead at once; getting both back makes it [`Verdict::Back`].
    pub fn set_link(&mut self, now: Instant, carrier: bool, addressed: bool) {
        let was_up = self.carrier && self.addressed;
        self.carrier = carrier;
        self.addressed = addressed;
        let up = carrier && addressed;
        if was_up && !up {
            let reason = if carrier {
                Reason::NoAddress
            } else {
                Reason::NoCarrier
            };
            self.forget_probes();
            self.throughput.reset();
            self.transition(now, Verdict::Dead, reason);
            self.dead_by = DeadBy::Link;
        } else if !was_up && up {
            self.forget_probes();
            self.active_since = now;
            self.rx = None;
            self.transition(now, Verdict::Back, Reason::LinkBack);
        }
    }

    /// The uplink moved to a new address: what its probes taught about
    /// round trips no longer holds, what the line's habits are still does.
    pub fn readdressed(&mut self, now: Instant) {
        self.forget_probes();
        self.ever_answered = false;
        self.rtt = RttEstimator::default();
        if self.carrier && self.addressed {
            self.transition(now, Verdict::Back, Reason::NewAddress);
        }
    }

    /// Probes in flight no longer count (the line went down or moved).
    fn forget_probes(&mut self) {
        self.sent = [None; RING];
        self.newest_answered = self.next_seq.saturating_sub(1);
        self.waiting_since = None;
    }

    /// The next probe to send, if one is due: its sequence number.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<u64> {
        if !(self.carrier && self.addressed) {
            return None;
        }
        let every = self.probe_interval();
        // Wake-ups come a little early or late; half a check of slack keeps
        // the rate at one probe per period.
        let slack = self.config.check_every / 2;
        if self
            .last_sent
            .is_some_and(|at| now.saturating_duration_since(at) + slack < every)
        {
            return None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.sent[slot(seq)] = Some(Sent {
            seq,
            at: now,
            answered: false,
        });
        self.waiting_since.get_or_insert(now);
        self.last_sent = Some(now);
        Some(seq)
    }

    /// The answer to probe `seq` arrived at `now`. `false` if it matches no
    /// probe in flight (unknown, too old or a duplicate): then nothing
    /// changed.
    pub fn on_answer(&mut self, now: Instant, seq: u64) -> bool {
        if seq == 0 || seq >= self.next_seq {
            return false;
        }
        let Some(sent) = self.sent[slot(seq)].as_mut() else {
            return false;
        };
        if sent.seq != seq || sent.answered {
            return false;
        }
        sent.answered = true;
        let sent_at = sent.at;
        self.rtt.sample(now, now.saturating_duration_since(sent_at));
        self.ever_answered = true;
        self.answered_sent = self.answered_sent.max(Some(sent_at));
        let silent = self.waiting_since.map(|w| now.saturating_duration_since(w));
        if seq > self.newest_answered {
            self.newest_answered = seq;
            self.waiting_since = self.oldest_unanswered_after(seq);
        }
        if let Some(silent) = silent {
            let start = now - silent;
            if self.learnable(start, now) {
                self.silences.sample(now, silent.min(self.config.ceiling));
            }
        }
        match self.verdict {
            Verdict::Dead if self.dead_by != DeadBy::Link => {
                let dead_for = now.saturating_duration_since(self.since);
                if dead_for > self.config.quick_return {
                    self.outage_end = Some(now);
                } else if self.dead_by == DeadBy::Silence {
                    self.false_alarms += 1;
                    self.damping.add(now, self.config.damping_step);
                }
                let after = silent.unwrap_or(dead_for);
                self.transition(now, Verdict::Back, Reason::Answered { after });
            }
            Verdict::Suspect => {
                let after = silent.unwrap_or_default();
                self.transition(now, Verdict::Usable, Reason::Answered { after });
            }
            _ => {}
        }
        true
    }

    /// The interface's counters read at `now`.
    pub fn on_counters(&mut self, now: Instant, counters: Counters) {
        self.rx_rate.update(now, counters.rx_bytes);
        self.tx_rate.update(now, counters.tx_bytes);
        self.throughput
            .update(now, counters.rx_bytes.saturating_add(counters.tx_bytes));
        let count = counters.rx_packets;
        self.rx = match self.rx {
            Some((last, since)) if last == count => Some((last, since)),
            Some((_, since)) => {
                if self.active && self.carrier && self.addressed && since >= self.active_since {
                    let gap = now.saturating_duration_since(since);
                    if self.learnable(since, now) {
                        self.rx_gaps.sample(now, gap.min(self.config.ceiling));
                        self.gaps.record(gap);
                    }
                }
                Some((count, now))
            }
            None => Some((count, now)),
        };
    }

    /// The interface's counters could not be read: judge by probes alone.
    pub fn counters_unavailable(&mut self) {
        self.rx = None;
    }

    /// Whether the site's other lines carry far less than they did lately
    /// (see [`starved`]); the driver tells before each
    /// [`Path::handle_timeout`].
    pub fn set_others_starved(&mut self, starved: bool) {
        self.others_starved = starved;
    }

    /// When the newest probe answered on the site's other lines left
    /// (the latest of their [`Path::answered_sent`]); the driver tells
    /// before each [`Path::handle_timeout`]. Only while one has answered
    /// a probe sent in the second half of this line's silence can silence
    /// alone (the busy and holding-back limits) condemn it.
    pub fn set_others_answered(&mut self, at: Option<Instant>) {
        self.others_answered = at;
    }

    /// When the newest probe answered on this line was sent; `None`
    /// before the first answer.
    pub fn answered_sent(&self) -> Option<Instant> {
        self.answered_sent
    }

    /// What the line carries now against its recent peak.
    pub fn throughput(&self) -> &Throughput {
        &self.throughput
    }

    /// Whether a silence or gap that began at `start` shows the line's
    /// habit (to be learned) rather than an outage.
    fn learnable(&self, start: Instant, now: Instant) -> bool {
        if self.verdict == Verdict::Dead
            && now.saturating_duration_since(self.since) > self.config.quick_return
        {
            return false;
        }
        self.outage_end.is_none_or(|end| start >= end)
    }

    /// Whether this line's silence, from `waiting` and `silent` long at
    /// `now`, is its own (see the module documentation): another line got
    /// round trips through well after it began, for long enough that this
    /// line's answers would have come too if the silence had been shared.
    fn alone(&mut self, now: Instant, waiting: Instant, silent: Duration) -> bool {
        let answering = self
            .others_answered
            .is_some_and(|at| at >= waiting + silent / 2);
        if !answering {
            self.alone_since = None;
            return false;
        }
        let since = match self.alone_since {
            Some((about, since)) if about == waiting => since,
            _ => {
                self.alone_since = Some((waiting, now));
                now
            }
        };
        let confirm = self.rtt.rto().unwrap_or_default() + self.config.probe_every;
        now.saturating_duration_since(since) >= confirm
    }

    /// Re-evaluates the verdict at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_wake = now;
        if !(self.carrier && self.addressed) {
            return;
        }
        if self.verdict == Verdict::Back
            && now.saturating_duration_since(self.since) >= self.config.probation
            && self.ever_answered
        {
            self.transition(now, Verdict::Usable, Reason::Settled);
        }
        let Some(waiting) = self.waiting_since.filter(|_| self.ever_answered) else {
            return;
        };
        let silent = now.saturating_duration_since(waiting);
        let (dead, suspect) = if self.active {
            let limits = self.limits(now);
            let rx_quiet = self.rx.map_or(Duration::ZERO, |(_, since)| {
                now.saturating_duration_since(since.max(self.active_since))
            });
            let quiet_for = silent.min(rx_quiet);
            let alone = self.alone(now, waiting, silent);
            let dead = if alone && silent >= limits.busy {
                Some(Reason::Silent {
                    silent,
                    limit: limits.busy,
                    quiet: quiet_for >= limits.busy,
                })
            } else if quiet_for >= limits.quiet {
                Some(Reason::Silent {
                    silent,
                    limit: limits.quiet,
                    quiet: true,
                })
            } else if alone && self.others_starved && silent >= limits.hold {
                Some(Reason::HoldingBack {
                    silent,
                    limit: limits.hold,
                })
            } else {
                None
            };
            let suspect = silent >= limits.busy / 2 || quiet_for >= limits.quiet / 2;
            (dead, suspect)
        } else {
            let limit = self.config.idle_dead_after;
            let dead = (silent >= limit).then_some(Reason::Silent {
                silent,
                limit,
                quiet: false,
            });
            (dead, silent >= limit / 2)
        };
        match (dead, self.verdict) {
            (Some(_), Verdict::Dead) => {}
            (Some(reason), _) => {
                self.transition(now, Verdict::Dead, reason);
                self.dead_by = match reason {
                    Reason::HoldingBack { .. } => DeadBy::HoldingBack,
                    _ => DeadBy::Silence,
                };
            }
            (None, Verdict::Usable | Verdict::Back) if suspect => {
                let limits = self.limits(now);
                self.transition(
                    now,
                    Verdict::Suspect,
                    Reason::Silent {
                        silent,
                        limit: limits.quiet,
                        quiet: false,
                    },
                );
            }
            _ => {}
        }
    }

    /// When the driver should next call [`Path::handle_timeout`] (and feed
    /// counters, while active). Never before the last wake-up: a deadline
    /// that has passed without effect (a dead line's silence, a line that
    /// came back but was never answered) is not returned again.
    pub fn poll_timeout(&self) -> Instant {
        let c = &self.config;
        let after = |at: Instant| (at > self.last_wake).then_some(at);
        let mut next = self.last_wake
            + if self.active {
                c.check_every
            } else {
                c.idle_probe_every
            };
        if !(self.carrier && self.addressed) {
            return next;
        }
        match self.last_sent {
            // Due now: the driver's poll_transmit sends it.
            None => return self.last_wake,
            Some(at) => next = next.min((at + self.probe_interval()).max(self.last_wake)),
        }
        if !self.active && self.verdict != Verdict::Dead && self.ever_answered {
            if let Some(deadline) = self
                .waiting_since
                .and_then(|w| after(w + c.idle_dead_after))
            {
                next = next.min(deadline);
            }
        }
        if self.verdict == Verdict::Back && self.ever_answered {
            if let Some(deadline) = after(self.since + c.probation) {
                next = next.min(deadline);
            }
        }
        next
    }

    /// The next verdict change, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The silence limits at `now`.
    pub fn limits(&self, now: Instant) -> Limits {
        let c = &self.config;
        let damp = self.damping.factor(now);
        let learned_rx = self.rx_gaps.value(now).mul_f64(c.learn_factor) + c.check_every * 2;
        let learned_silence = self.silences.value(now).mul_f64(c.learn_factor) + c.probe_every;
        let rto = self.rtt.rto().unwrap_or_default() + c.probe_every;
        let quiet_base = c.quiet_floor.max(learned_rx);
        let busy_base = c
            .busy_floor
            .max(learned_silence)
            .max(rto)
            .max(quiet_base * 2);
        let quiet = quiet_base.mul_f64(damp).min(c.ceiling);
        let busy = busy_base.mul_f64(damp).min(c.ceiling * 2);
        // A probe waiting its turn in the line's own queue under load is
        // not silence: never less than the loaded round trip's RTO.
        let hold = c
            .hold_floor
            .max(self.rtt.min().unwrap_or_default() * 2 + c.probe_every)
            .max(rto)
            .min(busy);
        Limits { quiet, busy, hold }
    }

    /// What the core knows of its line at `now`.
    pub fn estimates(&self, now: Instant) -> Estimates {
        Estimates {
            verdict: self.verdict,
            srtt: self.rtt.srtt(),
            rttvar: self.rtt.rttvar(),
            min_rtt: self.rtt.min(),
            loss: self.loss(now),
            rx_bytes_per_sec: self.rx_rate.bytes_per_sec(),
            tx_bytes_per_sec: self.tx_rate.bytes_per_sec(),
            limits: self.limits(now),
            damping: self.damping.penalty(now),
            gaps: self.gaps,
            changes: self.changes,
            false_alarms: self.false_alarms,
        }
    }

    /// Fraction of the remembered probes old enough to have been answered
    /// that were not.
    fn loss(&self, now: Instant) -> f64 {
        let settle = self.limits(now).busy;
        let (mut settled, mut lost) = (0u32, 0u32);
        for sent in self.sent.iter().flatten() {
            if now.saturating_duration_since(sent.at) >= settle {
                settled += 1;
                lost += u32::from(!sent.answered);
            }
        }
        if settled == 0 {
            0.0
        } else {
            f64::from(lost) / f64::from(settled)
        }
    }

    fn probe_interval(&self) -> Duration {
        if self.active {
            self.config.probe_every
        } else {
            self.config.idle_probe_every
        }
    }

    /// The send time of the oldest unanswered probe newer than `seq`.
    fn oldest_unanswered_after(&self, seq: u64) -> Option<Instant> {
        self.sent
            .iter()
            .flatten()
            .filter(|s| s.seq > seq && !s.answered)
            .min_by_key(|s| s.seq)
            .map(|s| s.at)
    }

    fn transition(&mut self, now: Instant, to: Verdict, reason: Reason) {
        if to == self.verdict {
            return;
        }
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(Event {
            at: now,
            from: self.verdict,
            to,
            reason,
        });
        self.verdict = to;
        self.since = now;
        self.changes += 1;
    }
}

/// Below this share of their recent peak, lines are starved.
const STARVED_SHARE: f64 = 0.5;

/// Lines whose peak together is below this (bytes per second) carry too
/// little for a wait to cost anything: never starved.
const STARVED_MIN_PEAK: f64 = 256.0 * 1024.0;

/// Whether `others` (the lines that work, besides the one in question)
/// carry far less than they did lately: together below half their peak,
/// and that peak worth a bulk transfer. With no other line, nothing can
/// be starved by this one.
pub fn starved<'a>(others: impl IntoIterator<Item = &'a Path>, now: Instant) -> bool {
    let (rate, peak) = others.into_iter().fold((0.0, 0.0), |(rate, peak), path| {
        let t = path.throughput();
        (rate + t.rate(), peak + t.peak(now))
    });
    peak >= STARVED_MIN_PEAK && rate < peak * STARVED_SHARE
}

fn slot(seq: u64) -> usize {
    // The remainder is below RING.
    (seq % RING as u64) as usize
}

#[cfg(test)]
mod tests;
