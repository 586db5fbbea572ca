//! The datagram scheduler: which paths (uplinks) carry each packet.
//!
//! Pure and sans-IO: the driver feeds each path's [`Estimates`] from the
//! path core ([`Scheduler::update`]) and its delivery rate
//! ([`Scheduler::set_rate`]), asks [`Scheduler::schedule`] for every
//! packet it sends and tells [`Scheduler::on_received`] of every packet it
//! receives, `now` passed in. The answer is a [`Decision`]: a small set of
//! paths ([`Paths`], no allocation), [`Decision::Drop`] when no path
//! carries, or [`Decision::Block`] for QUIC under `quic = "block"` (the
//! driver answers with an ICMP port unreachable,
//! [`crate::wire::build_icmp_port_unreachable_for`], so the browser falls
//! back to TCP, which MPTCP bonds).
//!
//! # Which paths may carry
//!
//! A path carries unless its verdict is dead. Backup paths carry only when
//! no other path does ("tier"): while one non-backup path carries, backups
//! get nothing, not even DNS or redundant copies. Within the tier, new flows
//! prefer usable paths, then paths back on probation, then suspect ones.
//!
//! # Modes
//!
//! - **latency** (default): each flow is pinned to one path, so its packets
//!   are never reordered while paths are steady. A new flow takes the
//!   current best path: the lowest smoothed probe round trip among the
//!   best-verdict paths of the tier. A pinned flow moves (to the best path)
//!   only when its path stops carrying (dead, or removed: at the next
//!   packet after the update that says so), when its path has been suspect
//!   for [`SchedulerConfig::suspect_grace`], or when another path of the
//!   tier has been clearly faster than its own, `rtt × 1.25 + 10 ms`
//!   below (the rule new TCP tunnels follow), for
//!   [`SchedulerConfig::switch_hold`] (1 s). So jitter between two similar
//!   lines never moves a flow, a flow moves back to a line that returned
//!   once it proved itself, and leaves a backup once a non-backup line has
//!   carried for that long. A path slow because it is full keeps its flows
//!   (they would fill the faster one and come back): they move for load,
//!   one at a time (below).
//! - **redundant**: every packet on every carrying path of the tier; the
//!   receiver's replay window drops the duplicates.
//! - **aggregate**: flows (never one flow's packets) spread over the tier's
//!   paths in proportion to their capacity: a new flow goes where
//!   `(pinned flows + 1) / capacity` is lowest. A path's capacity is its
//!   peak delivery rate if it was full within the last minute and does
//!   not now carry nearly that much without being full; otherwise it is
//!   unknown and counts as the best of the others' (an idle line is not a
//!   slow one). Flows move when their path stops carrying (re-spread the
//!   same way), leaves a backup, or for load (below).
//!
//! # Moving for load (latency and aggregate)
//!
//! A path is full while its smoothed round trip stands above its smallest
//! by more than 20 ms or the smallest itself, whichever is more: its queue
//! is standing. Once a path has been full for 300 ms, one of its flows
//! (the next that has a packet) moves to the best-ranked path
//! of the tier that is not full and, if its capacity is known, has room
//! for the flow's share of the full path's rate: all of it for a path's
//! only flow (a flow that fills every line must not bounce between them),
//! half of it for one of several (the rest still fill the path it leaves,
//! so what the other path carries is gain). At most one flow moves each
//! second, and a moved flow stays 10 s: a move may reorder it.
//!
//! The far end sends a flow's packets on the path this end last sent it
//! on, so a flow that only receives (a download) is moved by a steer:
//! [`Scheduler::on_received`] answers the path to steer it to, and the
//! driver tells the far end on that path. A flow whose packets keep
//! arriving on another path than its own (a steer lost) is steered again,
//! at most every 500 ms. Receiving also keeps a flow from being forgotten
//! as idle.
//!
//! DNS (UDP from or to port 53), small and latency-critical, goes on the
//! best two carrying paths of the tier whatever the mode, unless
//! [`SchedulerConfig::dns_redundant`] is off. Real-time traffic goes on
//! every carrying path of the tier whatever the mode, as in redundant
//! mode: packets marked Expedited Forwarding (DSCP 46, what voice and
//! video call apps set), unless [`SchedulerConfig::redundant_ef`] is off,
//! and the flows from or to the [`SchedulerConfig::redundant_ports`].
//!
//! # Suspect paths
//!
//! A suspect path (silent for half its limit) keeps its pinned flows for
//! [`SchedulerConfig::suspect_grace`] (50 ms), then they move if a path that
//! is not suspect carries: most suspicions end within a few probe periods
//! (then nothing moved, nothing was reordered), and one that lasts is
//! usually an outage whose dead verdict would come later still (up to
//! seconds on a bursty cellular line). New flows go elsewhere at once if
//! another path is not suspect. Redundant copies and DNS still use a
//! suspect path: a copy costs only bandwidth.
//!
//! # The flow table
//!
//! Pinned flows live in a table of at most [`SchedulerConfig::max_flows`]
//! entries (65,536), all allocated when the scheduler is made: open
//! addressing over a slab with a least-recently-used list, so a lookup, an
//! insertion and an eviction are O(1) and a packet allocates nothing. A
//! flow idle for [`SchedulerConfig::idle_timeout`] (60 s) is forgotten
//! (at most a few per packet, oldest first); when the table is full the
//! least recently used flow makes room. Keys are hashed with the standard
//! library's randomly keyed SipHash, so a LAN host cannot aim collisions.
//! Redundant, real-time and DNS packets need no entry.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use crate::path::{Estimates, Verdict};
use crate::wire::{Flow, FlowKey};

/// The most paths a scheduler handles (the client's most uplinks).
pub const MAX_PATHS: usize = 8;

/// How many idle flows one call forgets at most, so that work per packet
/// stays bounded after a long pause.
const EXPIRE_PER_CALL: usize = 8;

/// No entry (a list end, an empty index slot is 0 instead).
const NIL: u32 = u32::MAX;

/// A path is full (its queue is standing) while its smoothed round trip is
/// above its smallest by more than this or than the smallest itself,
/// whichever is more: 20 ms on a 10 ms line, 30 ms on a 30 ms one.
const FULL_QUEUE: Duration = Duration::from_millis(20);

/// How long a path must have been full before one of its flows moves off.
const FULL_FOR: Duration = Duration::from_millis(300);

/// At most one flow moves for load each this often, so that the paths'
/// round trips and rates show the last move before the next.
const REBALANCE_EVERY: Duration = Duration::from_secs(1);

/// A flow moved for load stays put this long: moving reorders it.
const REBALANCED_STAYS_MS: u64 = 10_000;

/// A path's capacity counts as known this long after it was last full.
const CAPACITY_KNOWN_FOR: Duration = Duration::from_secs(60);

/// The peak delivery rate (the capacity estimate) halves this often: by
/// at most 7 % while the capacity counts as known.
const PEAK_HALF_LIFE: Duration = Duration::from_secs(600);

/// A flow whose packets keep arriving on another path than its own is
/// steered again at most this often (a steer can be lost), in ticks.
const STEER_AGAIN: u32 = 5;

/// The unit of a flow's move and steer times, in milliseconds.
const TICK_MS: u64 = 100;

/// Milliseconds since the epoch in ticks ([`TICK_MS`]), saturating.
fn ticks(ms: u64) -> u32 {
    u32::try_from(ms / TICK_MS).unwrap_or(u32::MAX)
}

/// A path: the index of its uplink in the client's config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathId(pub u8);

impl PathId {
    fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// `datagram.mode`: how flows use the paths.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Each flow on the healthy path with the lowest round trip.
    #[default]
    Latency,
    /// Every packet on every carrying path.
    Redundant,
    /// Flows spread over paths in proportion to their delivery rate.
    Aggregate,
}

impl Mode {
    /// The mode's name, as in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Latency => "latency",
            Mode::Redundant => "redundant",
            Mode::Aggregate => "aggregate",
        }
    }
}

/// `datagram.quic`: what happens to QUIC (a long header to UDP port 443).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QuicPolicy {
    /// Carried like any UDP: a flow on one line at a time.
    Tunnel,
    /// Refused at once, so that browsers fall back to TCP, which MPTCP
    /// bonds over every line.
    #[default]
    Block,
}

impl QuicPolicy {
    /// The policy's name, as in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            QuicPolicy::Tunnel => "tunnel",
            QuicPolicy::Block => "block",
        }
    }
}

/// The scheduler's settings; [`SchedulerConfig::default`] is what the
/// client uses unless its config says otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// How flows use the paths.
    pub mode: Mode,
    /// DNS goes on the best two paths whatever the mode.
    pub dns_redundant: bool,
    /// Packets marked Expedited Forwarding (DSCP 46: voice) go on every
    /// path of the tier whatever the mode.
    pub redundant_ef: bool,
    /// So do the flows from or to these ports (UDP, UDP-Lite, SCTP,
    /// DCCP).
    pub redundant_ports: PortSet,
    /// What happens to QUIC.
    pub quic: QuicPolicy,
    /// Most flows remembered.
    pub max_flows: usize,
    /// A flow idle this long is forgotten.
    pub idle_timeout: Duration,
    /// How long another path must have been clearly better before pinned
    /// flows move to it (latency mode) or leave a backup for it.
    pub switch_hold: Duration,
    /// How long a suspect path keeps its pinned flows.
    pub suspect_grace: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Latency,
            dns_redundant: true,
            redundant_ef: true,
            redundant_ports: PortSet::EMPTY,
            quic: QuicPolicy::Block,
            max_flows: 65_536,
            idle_timeout: Duration::from_secs(60),
            switch_hold: Duration::from_secs(1),
            suspect_grace: Duration::from_millis(50),
        }
    }
}

/// The most ports [`SchedulerConfig::redundant_ports`] holds.
pub const MAX_REDUNDANT_PORTS: usize = 16;

/// A small set of ports. Copy, no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSet {
    ports: [u16; MAX_REDUNDANT_PORTS],
    len: u8,
}

impl PortSet {
    /// No port.
    pub const EMPTY: PortSet = PortSet {
        ports: [0; MAX_REDUNDANT_PORTS],
        len: 0,
    };

    /// These ports; `None` if there are more than [`MAX_REDUNDANT_PORTS`].
    pub fn new(ports: &[u16]) -> Option<Self> {
        let mut set = Self::EMPTY;
        set.ports.get_mut(..ports.len())?.copy_from_slice(ports);
        set.len = u8::try_from(ports.len()).ok()?;
        Some(set)
    }

    /// The ports.
    pub fn as_slice(&self) -> &[u16] {
        self.ports.get(..usize::from(self.len)).unwrap_or_default()
    }

    /// Whether `port` is one of them.
    pub fn contains(&self, port: u16) -> bool {
        self.as_slice().contains(&port)
    }
}

/// What the config says of a path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathSettings {
    /// Carries traffic only when no other path does.
    pub backup: bool,
}

/// A set of at most [`MAX_PATHS`] paths, best first. Copy, no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paths {
    ids: [PathId; MAX_PATHS],
    len: u8,
}

impl Paths {
    /// No path.
    pub const EMPTY: Paths = Paths {
        ids: [PathId(0); MAX_PATHS],
        len: 0,
    };

    /// One path.
    pub fn one(id: PathId) -> Self {
        let mut paths = Self::EMPTY;
        paths.push(id);
        paths
    }

    fn push(&mut self, id: PathId) {
        if let Some(slot) = self.ids.get_mut(usize::from(self.len)) {
            *slot = id;
            self.len += 1;
        }
    }

    /// The paths, best first.
    pub fn as_slice(&self) -> &[PathId] {
        self.ids.get(..usize::from(self.len)).unwrap_or_default()
    }

    /// The paths, best first.
    pub fn iter(&self) -> impl Iterator<Item = PathId> + '_ {
        self.as_slice().iter().copied()
    }

    /// How many paths.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether there is no path.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `id` is one of them.
    pub fn contains(&self, id: PathId) -> bool {
        self.as_slice().contains(&id)
    }

    /// The best one.
    pub fn first(&self) -> Option<PathId> {
        self.as_slice().first().copied()
    }
}

/// What to do with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send it on each of these paths (one, unless redundant).
    Send(Paths),
    /// No path carries: drop it (the driver counts it).
    Drop,
    /// QUIC under `quic = "block"`: answer with an ICMP port unreachable.
    Block,
}

/// Why the scheduler refused a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// [`Scheduler::add_path`] with an id past [`MAX_PATHS`].
    #[error("path id {id} is out of range: the scheduler handles paths 0 to {}", MAX_PATHS - 1)]
    AddPath {
        /// The id asked for.
        id: u8,
    },
}

/// Counters for the status view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Flows in the table now.
    pub flows: usize,
    /// Flows forgotten after being idle.
    pub expired: u64,
    /// Flows evicted to make room in a full table.
    pub evicted: u64,
    /// Pinned flows moved to another path.
    pub moved: u64,
    /// Of those, the flows moved off a full path for load.
    pub rebalanced: u64,
    /// Steers asked for (flows that only receive, moved or put right).
    pub steered: u64,
    /// Packets dropped because no path carried.
    pub dropped: u64,
    /// QUIC packets blocked.
    pub blocked: u64,
    /// Packets sent per path (a redundant packet counts on each).
    pub packets: [u64; MAX_PATHS],
    /// Bytes sent per path.
    pub bytes: [u64; MAX_PATHS],
}

/// What the scheduler knows of one path.
#[derive(Clone, Copy, Debug)]
struct PathState {
    present: bool,
    backup: bool,
    verdict: Verdict,
    srtt: Option<Duration>,
    min_rtt: Option<Duration>,
    /// Since when the path has been suspect.
    suspect_since: Option<Instant>,
    /// Delivery rate in bytes per second; 0: unknown.
    rate: u64,
    /// Bytes per second sent on it.
    tx: u64,
    /// The highest delivery rate, and when (it decays: [`PEAK_HALF_LIFE`]).
    peak: Option<(u64, Instant)>,
    /// Since when it has been full, while it is.
    full_since: Option<Instant>,
    /// When it was last full: its peak rate is then its capacity.
    full_at: Option<Instant>,
    /// Flows pinned to it.
    flows: u32,
}

impl PathState {
    const ABSENT: PathState = PathState {
        present: false,
        backup: false,
        verdict: Verdict::Usable,
        srtt: None,
        min_rtt: None,
        suspect_since: None,
        rate: 0,
        tx: 0,
        peak: None,
        full_since: None,
        full_at: None,
        flows: 0,
    };

    fn carries(&self) -> bool {
        self.present && self.verdict.carries()
    }

    /// Preference for new flows, lower is better.
    fn class(&self) -> u8 {
        match self.verdict {
            Verdict::Usable => 0,
            Verdict::Back => 1,
            Verdict::Suspect | Verdict::Dead => 2,
        }
    }

    fn rtt(&self) -> Duration {
        self.srtt.unwrap_or(Duration::MAX)
    }

    /// Whether its queue stands (see [`FULL_QUEUE`]).
    fn is_full(&self) -> bool {
        match (self.srtt, self.min_rtt) {
            (Some(srtt), Some(min)) => srtt > min + min.max(FULL_QUEUE),
            _ => false,
        }
    }

    /// The peak delivery rate at `now`, decayed.
    fn peak(&self, now: Instant) -> u64 {
        self.peak.map_or(0, |(peak, at)| {
            let halvings =
                now.saturating_duration_since(at).as_secs_f64() / PEAK_HALF_LIFE.as_secs_f64();
            // In [0, peak]: the cast saturates.
            (peak as f64 * (-halvings).exp2()) as u64
        })
    }

    /// What it can deliver, if known: its peak rate while it was full
    /// lately. A path never full may carry more than it ever did, and so
    /// may one that carries nearly its peak without being full (the peak
    /// was taken too briefly, or the line got faster).
    fn capacity(&self, now: Instant) -> Option<u64> {
        let peak = self.peak(now);
        let near_peak = !self.is_full() && self.rate >= peak / 10 * 9;
        self.full_at
            .filter(|&at| now.saturating_duration_since(at) < CAPACITY_KNOWN_FOR && !near_peak)
            .map(|_| peak.max(self.rate))
    }
}

/// Where the flows pinned to a path go at their next packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// They stay.
    Stay,
    /// They move: to the best path (latency) or re-spread (aggregate).
    Leave,
}

/// Whether `other` is faster than `current` by enough to move flows: the
/// same rule as new TCP tunnels (`client::health`), so that jitter between
/// two similar lines never moves a flow.
fn clearly_faster(other: Duration, current: Duration) -> bool {
    other
        .saturating_add(other / 4)
        .saturating_add(Duration::from_millis(10))
        < current
}

/// One pinned flow.
#[derive(Clone, Copy, Debug)]
struct Entry {
    key: FlowKey,
    /// The key's hash, folded to 32 bits (the index is smaller).
    hash: u32,
    /// Last packet, in milliseconds since the scheduler's epoch.
    last_ms: u64,
    /// Towards the most recently used entry.
    prev: u32,
    /// Towards the least recently used entry (or the next free entry).
    next: u32,
    /// Until when it may not move for load, in [`TICK_MS`] since the
    /// epoch (the entry stays 72 bytes).
    settled: u32,
    /// When it was last steered, in [`TICK_MS`] since the epoch.
    steered: u32,
    path: PathId,
}

/// The flow table: a slab of entries, an open-addressing index over it
/// (linear probing, backward-shift deletion, at most half full) and a
/// least-recently-used list through the entries.
#[derive(Debug)]
struct FlowTable {
    entries: Vec<Entry>,
    /// Entry index + 1 per slot; 0: empty. A power of two long.
    index: Vec<u32>,
    free: u32,
    len: usize,
    max: usize,
    /// Most recently used.
    head: u32,
    /// Least recently used.
    tail: u32,
}

impl FlowTable {
    fn new(max: usize) -> Self {
        // Entry indices (+1) must fit in a u32 index slot.
        let max = max.clamp(1, (u32::MAX / 4) as usize);
        let slots = (max * 2).next_power_of_two();
        Self {
            entries: Vec::with_capacity(max),
            index: vec![0; slots],
            free: NIL,
            len: 0,
            max,
            head: NIL,
            tail: NIL,
        }
    }

    fn mask(&self) -> usize {
        self.index.len() - 1
    }

    fn entry(&self, at: u32) -> Option<&Entry> {
        self.entries.get(at as usize)
    }

    fn entry_mut(&mut self, at: u32) -> Option<&mut Entry> {
        self.entries.get_mut(at as usize)
    }

    /// The entry holding `key`, and its index slot.
    fn find(&self, key: &FlowKey, hash: u32) -> Option<(u32, usize)> {
        let mask = self.mask();
        let mut slot = hash as usize & mask;
        loop {
            let value = *self.index.get(slot)?;
            if value == 0 {
                return None;
            }
            let at = value - 1;
            let entry = self.entry(at)?;
            if entry.hash == hash && entry.key == *key {
                return Some((at, slot));
            }
            slot = (slot + 1) & mask;
        }
    }

    /// Makes `at` the most recently used entry.
    fn touch(&mut self, at: u32, now_ms: u64) {
        self.unlink(at);
        self.push_front(at);
        if let Some(entry) = self.entry_mut(at) {
            entry.last_ms = now_ms;
        }
    }

    fn unlink(&mut self, at: u32) {
        let Some(&Entry { prev, next, .. }) = self.entry(at) else {
            return;
        };
        match self.entry_mut(prev) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.entry_mut(next) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
    }

    fn push_front(&mut self, at: u32) {
        let head = self.head;
        if let Some(entry) = self.entry_mut(at) {
            entry.prev = NIL;
            entry.next = head;
        }
        match self.entry_mut(head) {
            Some(h) => h.prev = at,
            None => self.tail = at,
        }
        self.head = at;
    }

    /// Adds a flow known not to be in the table, which must have room.
    fn insert(&mut self, key: FlowKey, hash: u32, path: PathId, now_ms: u64) -> Option<u32> {
        let entry = Entry {
            key,
            hash,
            last_ms: now_ms,
            prev: NIL,
            next: NIL,
            settled: 0,
            steered: 0,
            path,
        };
        let at = if self.free != NIL {
            let at = self.free;
            let slot = self.entry_mut(at)?;
            let next_free = slot.next;
            *slot = entry;
            self.free = next_free;
            at
        } else if self.entries.len() < self.max {
            self.entries.push(entry);
            u32::try_from(self.entries.len() - 1).ok()?
        } else {
            return None;
        };
        let mask = self.mask();
        let mut slot = hash as usize & mask;
        while self.index.get(slot).is_some_and(|&v| v != 0) {
            slot = (slot + 1) & mask;
        }
        *self.index.get_mut(slot)? = at + 1;
        self.push_front(at);
        self.len += 1;
        Some(at)
    }

    /// Removes the least recently used flow if `expired` says so of its
    /// last use; returns its path.
    fn pop_oldest_if(&mut self, expired: impl Fn(u64) -> bool) -> Option<PathId> {
        let at = self.tail;
        let entry = *self.entry(at)?;
        if !expired(entry.last_ms) {
            return None;
        }
        let (_, slot) = self.find(&entry.key, entry.hash)?;
        self.remove(at, slot);
        Some(entry.path)
    }

    fn remove(&mut self, at: u32, slot: usize) {
        self.unlink(at);
        self.remove_slot(slot);
        let free = self.free;
        if let Some(entry) = self.entry_mut(at) {
            entry.next = free;
            entry.prev = NIL;
        }
        self.free = at;
        self.len -= 1;
    }

    /// Empties `slot` and shifts back the entries of its probe run that
    /// would no longer be found (no tombstones, so lookups stay short).
    fn remove_slot(&mut self, mut hole: usize) {
        let mask = self.mask();
        if let Some(v) = self.index.get_mut(hole) {
            *v = 0;
        }
        let mut slot = hole;
        loop {
            slot = (slot + 1) & mask;
            let value = self.index.get(slot).copied().unwrap_or(0);
            if value == 0 {
                return;
            }
            let home = self
                .entry(value - 1)
                .map_or(slot, |e| e.hash as usize & mask);
            // The entry at `slot` may fill the hole unless its home lies
            // cyclically in (hole, slot].
            let stays = if hole <= slot {
                hole < home && home <= slot
            } else {
                hole < home || home <= slot
            };
            if !stays {
                if let Some(v) = self.index.get_mut(hole) {
                    *v = value;
                }
                if let Some(v) = self.index.get_mut(slot) {
                    *v = 0;
                }
                hole = slot;
            }
        }
    }
}

/// The datagram scheduler (see the module documentation).
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    epoch: Instant,
    hasher: RandomState,
    paths: [PathState; MAX_PATHS],
    /// Since when path `q` has been clearly better than path `p`:
    /// `better_since[q][p]`.
    better_since: [[Option<Instant>; MAX_PATHS]; MAX_PATHS],
    /// Whether backups are the tier (no other path carries).
    backup_tier: bool,
    /// Where new and moving flows go in latency mode: the first of
    /// `ranked`.
    best: Option<PathId>,
    /// Where the flows pinned to each path go.
    routes: [Route; MAX_PATHS],
    /// The paths of the tier, best first.
    ranked: Paths,
    /// When a hold or grace period ends and the routes must be worked out
    /// again even without an update.
    next_refresh: Option<Instant>,
    /// One flow of the first path moves to the second at its next packet,
    /// for load.
    rebalance: Option<(PathId, PathId)>,
    /// No flow moves for load before this.
    next_rebalance: Instant,
    /// The last move for load not yet taken by [`Scheduler::take_moved`].
    moved: Option<(PathId, PathId)>,
    table: FlowTable,
    stats: Stats,
}

impl Scheduler {
    /// A scheduler with no paths yet; `now` is its epoch.
    pub fn new(config: SchedulerConfig, now: Instant) -> Self {
        Self {
            config,
            epoch: now,
            hasher: RandomState::new(),
            paths: [PathState::ABSENT; MAX_PATHS],
            better_since: [[None; MAX_PATHS]; MAX_PATHS],
            backup_tier: false,
            best: None,
            routes: [Route::Stay; MAX_PATHS],
            ranked: Paths::EMPTY,
            next_refresh: None,
            rebalance: None,
            next_rebalance: now,
            moved: None,
            table: FlowTable::new(config.max_flows),
            stats: Stats::default(),
        }
    }

    /// The settings it was made with.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Takes the policy of `config` (mode, redundancy, QUIC) from now on,
    /// as a config reload asks: each packet is scheduled by the policy of
    /// its time, and the routes are worked out again at once. The flow
    /// table keeps its size and its flows (`max_flows` and the timers stay
    /// as they were made).
    pub fn set_policy(&mut self, now: Instant, config: &SchedulerConfig) {
        self.config.mode = config.mode;
        self.config.dns_redundant = config.dns_redundant;
        self.config.redundant_ef = config.redundant_ef;
        self.config.redundant_ports = config.redundant_ports;
        self.config.quic = config.quic;
        self.rebalance = None;
        self.refresh(now);
    }

    /// Adds path `id` (or changes its settings). Until its first
    /// [`Scheduler::update`] it counts as usable with an unknown round
    /// trip, as the path core does.
    pub fn add_path(
        &mut self,
        now: Instant,
        id: PathId,
        settings: PathSettings,
    ) -> Result<(), ScheduleError> {
        let Some(path) = self.paths.get_mut(id.index()) else {
            return Err(ScheduleError::AddPath { id: id.0 });
        };
        if !path.present {
            // Flows pinned before a removal are still in the table and
            // still counted, until they move or expire.
            *path = PathState {
                present: true,
                flows: path.flows,
                ..PathState::ABSENT
            };
        }
        path.backup = settings.backup;
        self.refresh(now);
        Ok(())
    }

    /// Removes path `id`: its flows move at their next packet.
    pub fn remove_path(&mut self, now: Instant, id: PathId) {
        if let Some(path) = self.paths.get_mut(id.index()) {
            path.present = false;
            path.suspect_since = None;
        }
        self.refresh(now);
    }

    /// What the path core says of path `id` at `now`; ignored for a path
    /// not added.
    pub fn update(&mut self, id: PathId, now: Instant, estimates: &Estimates) {
        let Some(path) = self.paths.get_mut(id.index()).filter(|p| p.present) else {
            return;
        };
        path.verdict = estimates.verdict;
        path.srtt = estimates.srtt;
        path.min_rtt = estimates.min_rtt;
        path.tx = estimates.tx_bytes_per_sec;
        path.suspect_since = match estimates.verdict {
            Verdict::Suspect => Some(path.suspect_since.unwrap_or(now)),
            _ => None,
        };
        if path.is_full() {
            path.full_since = Some(path.full_since.unwrap_or(now));
            path.full_at = Some(now);
        } else {
            path.full_since = None;
        }
        self.refresh(now);
    }

    /// The delivery rate of path `id` at `now` in bytes per second (0:
    /// unknown). Its decaying peak, taken while the path is full, is the
    /// path's capacity, which aggregate mode spreads flows by and which
    /// says whether a flow moved for load would fit.
    pub fn set_rate(&mut self, id: PathId, now: Instant, bytes_per_sec: u64) {
        if let Some(path) = self.paths.get_mut(id.index()) {
            path.rate = bytes_per_sec;
            if bytes_per_sec > path.peak(now) {
                path.peak = Some((bytes_per_sec, now));
            }
        }
    }

    /// The paths of the last flow moved for load (from, to), once: for a
    /// log line (at most one a second).
    pub fn take_moved(&mut self) -> Option<(PathId, PathId)> {
        self.moved.take()
    }

    /// Counters for the status view.
    pub fn stats(&self) -> Stats {
        Stats {
            flows: self.table.len,
            ..self.stats
        }
    }

    /// The path flow `key` is pinned to, if it is in the table.
    pub fn path_of(&self, key: &FlowKey) -> Option<PathId> {
        let hash = self.hash(key);
        let (at, _) = self.table.find(key, hash)?;
        self.table.entry(at).map(|e| e.path)
    }

    /// When the scheduler's routes change without an update (a hold or a
    /// grace period ends). Nothing needs a wake-up: [`Scheduler::schedule`]
    /// catches up by itself; this is for a status view.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_refresh
    }

    /// Which paths carry a `len`-byte packet of `flow` at `now`.
    pub fn schedule(&mut self, now: Instant, flow: &Flow, len: usize) -> Decision {
        if flow.quic && self.config.quic == QuicPolicy::Block {
            self.stats.blocked += 1;
            return Decision::Block;
        }
        if self.next_refresh.is_some_and(|at| now >= at) {
            self.refresh(now);
        }
        self.expire(now);
        if self.ranked.is_empty() {
            self.stats.dropped += 1;
            return Decision::Drop;
        }
        let paths = if flow.dns && self.config.dns_redundant {
            self.best_two()
        } else if self.real_time(flow) {
            self.ranked
        } else {
            match self.config.mode {
                Mode::Redundant => self.ranked,
                Mode::Latency | Mode::Aggregate => match self.pinned(now, &flow.key) {
                    Some(id) => Paths::one(id),
                    None => {
                        self.stats.dropped += 1;
                        return Decision::Drop;
                    }
                },
            }
        };
        let bytes = u64::try_from(len).unwrap_or(u64::MAX);
        for id in paths.iter() {
            if let Some(n) = self.stats.packets.get_mut(id.index()) {
                *n += 1;
            }
            if let Some(n) = self.stats.bytes.get_mut(id.index()) {
                *n = n.saturating_add(bytes);
            }
        }
        Decision::Send(paths)
    }

    /// Whether `flow` is real-time traffic that goes on every path: marked
    /// Expedited Forwarding, or from or to a configured port.
    fn real_time(&self, flow: &Flow) -> bool {
        (flow.ef && self.config.redundant_ef)
            || flow.key.ports().is_some_and(|(src, dst)| {
                let ports = &self.config.redundant_ports;
                ports.contains(src) || ports.contains(dst)
            })
    }

    /// The first two paths of the tier.
    fn best_two(&self) -> Paths {
        let mut paths = Paths::EMPTY;
        for id in self.ranked.iter().take(2) {
            paths.push(id);
        }
        paths
    }

    fn now_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Forgets a few flows idle past the timeout, oldest first.
    fn expire(&mut self, now: Instant) {
        let now_ms = self.now_ms(now);
        let timeout = u64::try_from(self.config.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        for _ in 0..EXPIRE_PER_CALL {
            let expired = |last: u64| now_ms.saturating_sub(last) >= timeout;
            let Some(path) = self.table.pop_oldest_if(expired) else {
                break;
            };
            self.unpin(path);
            self.stats.expired += 1;
        }
    }

    fn unpin(&mut self, id: PathId) {
        if let Some(path) = self.paths.get_mut(id.index()) {
            path.flows = path.flows.saturating_sub(1);
        }
    }

    fn pin(&mut self, id: PathId) {
        if let Some(path) = self.paths.get_mut(id.index()) {
            path.flows = path.flows.saturating_add(1);
        }
    }

    /// The path of a pinned flow (latency or aggregate), pinning it first
    /// if it is new or its path's flows leave.
    fn pinned(&mut self, now: Instant, key: &FlowKey) -> Option<PathId> {
        let now_ms = self.now_ms(now);
        let hash = self.hash(key);
        if let Some((at, _)) = self.table.find(key, hash) {
            let entry = *self.table.entry(at)?;
            let current = entry.path;
            let id = if self.stays(current) {
                match self.rebalance {
                    Some((from, to)) if from == current && entry.settled <= ticks(now_ms) => {
                        self.move_for_load(now, at, from, to);
                        to
                    }
                    _ => current,
                }
            } else {
                let id = self.new_flow_path(now)?;
                if id != current {
                    self.unpin(current);
                    self.pin(id);
                    self.stats.moved += 1;
                    if let Some(entry) = self.table.entry_mut(at) {
                        entry.path = id;
                    }
                }
                id
            };
            self.table.touch(at, now_ms);
            return Some(id);
        }
        let id = self.new_flow_path(now)?;
        if self.table.len >= self.table.max {
            if let Some(path) = self.table.pop_oldest_if(|_| true) {
                self.unpin(path);
                self.stats.evicted += 1;
            }
        }
        if self.table.insert(*key, hash, id, now_ms).is_some() {
            self.pin(id);
        }
        Some(id)
    }

    fn hash(&self, key: &FlowKey) -> u32 {
        let hash = self.hasher.hash_one(key);
        // Folded: both halves count.
        (hash ^ (hash >> 32)) as u32
    }

    /// Whether the flows pinned to `id` stay there.
    fn stays(&self, id: PathId) -> bool {
        self.routes.get(id.index()) == Some(&Route::Stay)
            && self.paths.get(id.index()).is_some_and(|p| p.carries())
    }

    /// Moves the flow at `at` from full path `from` to `to`.
    fn move_for_load(&mut self, now: Instant, at: u32, from: PathId, to: PathId) {
        let now_ms = self.now_ms(now);
        self.unpin(from);
        self.pin(to);
        if let Some(entry) = self.table.entry_mut(at) {
            entry.path = to;
            entry.settled = ticks(now_ms.saturating_add(REBALANCED_STAYS_MS));
        }
        self.stats.moved += 1;
        self.stats.rebalanced += 1;
        self.moved = Some((from, to));
        self.rebalance = None;
        self.next_rebalance = now + REBALANCE_EVERY;
        self.next_refresh = Some(
            self.next_refresh
                .map_or(self.next_rebalance, |at| at.min(self.next_rebalance)),
        );
    }

    /// A packet of flow `key` (keyed as this end sends it) arrived on path
    /// `arrived` at `now`. The far end sends a flow's packets on the path
    /// this end last sent it on, so a flow that only receives (a download)
    /// would never move for load, nor come back from where a lost message
    /// left it: the answer is the path to steer it to (the driver tells
    /// the far end with a steer sent on that path), if any.
    pub fn on_received(&mut self, now: Instant, key: &FlowKey, arrived: PathId) -> Option<PathId> {
        if self.next_refresh.is_some_and(|at| now >= at) {
            self.refresh(now);
        }
        let now_ms = self.now_ms(now);
        let hash = self.hash(key);
        let (at, _) = self.table.find(key, hash)?;
        let entry = *self.table.entry(at)?;
        self.table.touch(at, now_ms);
        let current = entry.path;
        // A path that stops carrying: the far end leaves it by itself,
        // and the flow's next packet from here moves it.
        if !self.stays(current) {
            return None;
        }
        let to = match self.rebalance {
            Some((from, to)) if from == current && entry.settled <= ticks(now_ms) => {
                self.move_for_load(now, at, from, to);
                to
            }
            _ if arrived != current
                && ticks(now_ms) >= entry.steered.saturating_add(STEER_AGAIN) =>
            {
                current
            }
            _ => return None,
        };
        if let Some(entry) = self.table.entry_mut(at) {
            entry.steered = ticks(now_ms);
        }
        self.stats.steered += 1;
        Some(to)
    }

    /// Where a new (or moving) flow goes.
    fn new_flow_path(&self, now: Instant) -> Option<PathId> {
        match self.config.mode {
            Mode::Aggregate => self.least_loaded(now),
            Mode::Latency | Mode::Redundant => self.best,
        }
    }

    /// Aggregate mode: the path of the tier's best verdict class whose
    /// pinned flows per unit of capacity would be fewest with one more.
    fn least_loaded(&self, now: Instant) -> Option<PathId> {
        let best_class = self
            .ranked
            .iter()
            .filter_map(|id| self.paths.get(id.index()))
            .map(PathState::class)
            .min()?;
        let candidates = || {
            self.ranked.iter().filter(move |id| {
                self.paths
                    .get(id.index())
                    .is_some_and(|p| p.class() == best_class)
            })
        };
        // A path's weight is its capacity when known; a path never full
        // lately may carry more than it did, so it counts as at least the
        // best of the others (an idle line is not a slow one).
        let seen = |p: &PathState| p.capacity(now).unwrap_or_else(|| p.peak(now).max(p.rate));
        let best = candidates()
            .filter_map(|id| self.paths.get(id.index()))
            .map(seen)
            .max()
            .unwrap_or(0);
        let weight =
            |p: &PathState| u128::from(p.capacity(now).unwrap_or_else(|| seen(p).max(best)).max(1));
        // Lowest (flows + 1) / weight, compared without division; ties go
        // to the better-ranked path.
        candidates().min_by(|a, b| {
            let (Some(pa), Some(pb)) = (self.paths.get(a.index()), self.paths.get(b.index()))
            else {
                return std::cmp::Ordering::Equal;
            };
            let load_a = (u128::from(pa.flows) + 1) * weight(pb);
            let load_b = (u128::from(pb.flows) + 1) * weight(pa);
            load_a.cmp(&load_b)
        })
    }

    /// Works out the tier, the ranking, the best path and the routes of
    /// pinned flows from what is known at `now`.
    fn refresh(&mut self, now: Instant) {
        let paths = self.paths;
        self.backup_tier = !paths.iter().any(|p| p.carries() && !p.backup);
        let in_tier = |p: &PathState| p.carries() && p.backup == self.backup_tier;

        let mut ranked: [Option<PathId>; MAX_PATHS] = [None; MAX_PATHS];
        for (i, p) in paths.iter().enumerate() {
            if in_tier(p) {
                ranked[i] = u8::try_from(i).ok().map(PathId);
            }
        }
        let key = |id: &PathId| {
            let p = &paths[id.index()];
            (p.class(), p.rtt(), *id)
        };
        let mut ids: [PathId; MAX_PATHS] = [PathId(0); MAX_PATHS];
        let mut n = 0;
        for id in ranked.iter().flatten() {
            ids[n] = *id;
            n += 1;
        }
        ids[..n].sort_unstable_by_key(key);
        self.ranked = Paths::EMPTY;
        for id in &ids[..n] {
            self.ranked.push(*id);
        }

        // Pairwise "clearly better", and since when.
        let hold = self.config.switch_hold;
        let mut next_refresh: Option<Instant> = None;
        let mut soonest = |at: Instant| {
            if at > now {
                next_refresh = Some(next_refresh.map_or(at, |n: Instant| n.min(at)));
            }
        };
        for (q, pq) in paths.iter().enumerate() {
            for (p, pp) in paths.iter().enumerate() {
                let better = q != p
                    && in_tier(pq)
                    && pq.class() < 2
                    && pq.srtt.is_some()
                    && ((pp.backup && !pq.backup) || clearly_faster(pq.rtt(), pp.rtt()));
                let since = &mut self.better_since[q][p];
                *since = if better {
                    Some(since.unwrap_or(now))
                } else {
                    None
                };
                if let Some(since) = *since {
                    soonest(since + hold);
                }
            }
        }
        let matured = |q: PathId, p: PathId, table: &[[Option<Instant>; MAX_PATHS]; MAX_PATHS]| {
            table[q.index()][p.index()]
                .is_some_and(|since| now.saturating_duration_since(since) >= hold)
        };

        // New flows take the best path as it is now (each is pinned, so
        // this reorders nothing); moving pinned flows is what waits.
        self.best = self.ranked.first();

        // Where pinned flows go.
        let best = self.best;
        let best_settled = best.is_some_and(|b| paths[b.index()].class() < 2);
        for (i, p) in paths.iter().enumerate() {
            let id = PathId(u8::try_from(i).unwrap_or(0));
            let suspect_too_long = p.suspect_since.is_some_and(|since| {
                soonest(since + self.config.suspect_grace);
                now.saturating_duration_since(since) >= self.config.suspect_grace
            });
            let leaving = if !p.carries() {
                true
            } else if p.backup && !self.backup_tier {
                // A backup keeps its flows until a non-backup path has
                // carried for the hold: a line that just came back may flap.
                self.ranked
                    .iter()
                    .any(|q| matured(q, id, &self.better_since))
            } else if suspect_too_long && best_settled && best != Some(id) {
                true
            } else {
                // A path slow because it is full keeps its flows: they
                // would fill the faster one in turn and come back; they
                // move one at a time for load instead.
                self.config.mode == Mode::Latency
                    && best != Some(id)
                    && !p.is_full()
                    && self
                        .ranked
                        .iter()
                        .any(|q| matured(q, id, &self.better_since))
            };
            self.routes[i] = if leaving { Route::Leave } else { Route::Stay };
        }

        // A flow moves for load: off a path full for a while, to one of
        // the tier that is not full and, if its capacity is known, has
        // room for the flow's share of the full one. A path's only flow
        // needs room for all of it (a flow that fills any line must not
        // bounce between them); one of several needs room for half its
        // share (the others still fill the path it leaves, so what the
        // other path takes is all gain).
        self.rebalance = None;
        if self.config.mode != Mode::Redundant {
            if now < self.next_rebalance {
                soonest(self.next_rebalance);
            } else {
                for from in self.ranked.iter() {
                    let pf = &paths[from.index()];
                    let Some(since) = pf.full_since.filter(|_| pf.flows > 0) else {
                        continue;
                    };
                    if now.saturating_duration_since(since) < FULL_FOR {
                        soonest(since + FULL_FOR);
                        continue;
                    }
                    let share = pf.rate.max(pf.tx) / u64::from(pf.flows.max(1));
                    let need = if pf.flows > 1 { share / 2 } else { share };
                    let to = self.ranked.iter().find(|&to| {
                        let pt = &paths[to.index()];
                        to != from
                            && !pt.is_full()
                            && pt.srtt.is_some()
                            && pt.class() <= pf.class()
                            && pt
                                .capacity(now)
                                .is_none_or(|cap| cap.saturating_sub(pt.rate) > need)
                    });
                    if let Some(to) = to {
                        self.rebalance = Some((from, to));
                        break;
                    }
                }
            }
        }
        self.next_refresh = next_refresh;
    }
}

#[cfg(test)]
mod tests;
