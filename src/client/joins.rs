//! Lines whose MPTCP subflows never join: the driver of
//! [`crate::path::joins`], one tally per uplink.
//!
//! Some mobile operators strip MPTCP options. On such a line the kernel's
//! MP_JOIN subflows are reset as soon as the SYN-ACK comes back without
//! MP_JOIN, and a tunnel whose initial subflow starts on it falls back to
//! plain TCP, while its (UDP) probes are fine: it carries nothing for the
//! tunnels, in silence. What the kernel shows (6.18, measured in the lab):
//!
//! - the path manager's events (`mptcp_pm_events`, `ip mptcp monitor`):
//!   `SF_CLOSED` from the line's address, with no `SF_ESTABLISHED` before
//!   it and no error; a fallen-back tunnel has no event at all;
//! - `MPTCP_INFO` on a fallen-back tunnel socket: `EOPNOTSUPP`;
//! - the MIB (namespace-wide, not per line): `MPJoinSynTx` and `MPRstTx`
//!   grow, `MPJoinSynAckRx` does not.
//!
//! So a thread reads the events and attributes each subflow to an uplink
//! by its local address: established, or closed without having been
//! established (a failed join); a connection created with MPTCP from a
//! line counts as MPTCP working there. Each opened tunnel is asked whether
//! it fell back. Uplink health says which lines carry traffic (failures on
//! a dead line are the outage's). One warning per episode names the
//! uplink, its interface and address and what to do; its end is said too.
//! New tunnels avoid starting on a stripped line while another works
//! ([`JoinWatch::rank`]): a tunnel that falls back there is not bonded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::system::Uplink;
use crate::path::joins::{Config, JoinCounts, JoinEvent, JoinVerdict, Joins};
use crate::sys::{self, MptcpEvent, MptcpEventKind, MptcpEvents};

/// How long the event thread blocks before looking at its timers.
pub(super) const EVENT_POLL: Duration = Duration::from_millis(500);

/// A line's warning is repeated at most this often: a line whose joins
/// fail and succeed by turns (or events an attacker provokes) must not
/// flood the log.
const WARN_EVERY: Duration = Duration::from_secs(600);

/// Connections whose subflows are remembered; past that, a subflow closed
/// without a known establishment cannot be told from a failed join and is
/// not counted.
const MAX_CONNECTIONS: usize = 1 << 16;

/// A connection remembered this long is forgotten when room is needed.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// After events were lost (socket overrun), closures of unknown subflows
/// are not counted for this long.
const UNSURE_AFTER_LOSS: Duration = Duration::from_secs(30);

/// How much a stripped line's rank is worse, for new tunnels: behind any
/// line that works, even one on probation, but still used alone.
const STRIPPED_RANK_PENALTY: u8 = 2;

/// One uplink's MPTCP join state, for a status view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct UplinkJoins {
    /// The uplink's name.
    pub(super) name: String,
    /// Its interface.
    pub(super) interface: String,
    /// Its address now.
    pub(super) addr: IpAddr,
    /// What was seen since start.
    pub(super) counts: JoinCounts,
    /// Whether its subflows join.
    pub(super) verdict: JoinVerdict,
}

/// The join tallies of every uplink, shared by the event thread, uplink
/// health (which says which lines work) and the flows (which say which
/// tunnels fell back).
#[derive(Debug)]
pub(super) struct JoinWatch {
    book: Mutex<Book>,
}

#[derive(Debug)]
struct Book {
    lines: Vec<Line>,
    /// Established subflows (and initial subflows) by connection token,
    /// with when the connection was first seen.
    subflows: HashMap<u32, (Instant, Vec<(IpAddr, u16)>)>,
    /// Until then, a closed subflow not known as established is not
    /// counted as a failed join.
    unsure_until: Option<Instant>,
}

#[derive(Debug)]
struct Line {
    uplink: Uplink,
    joins: Joins,
    last_warned: Option<Instant>,
    /// The current episode was warned about (its end is then said too).
    warned: bool,
}

impl JoinWatch {
    /// Tallies for `uplinks`, nothing seen yet.
    pub(super) fn new(uplinks: &[Uplink]) -> Arc<Self> {
        let lines = uplinks
            .iter()
            .map(|uplink| Line {
                uplink: uplink.clone(),
                joins: Joins::new(Config::default()),
                last_warned: None,
                warned: false,
            })
            .collect();
        Arc::new(Self {
            book: Mutex::new(Book {
                lines,
                subflows: HashMap::new(),
                unsure_until: None,
            }),
        })
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        // Every method leaves the book consistent before it could panic.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Uplink health's word on `uplink` (as it is now: its address may
    /// have changed): whether it carries traffic.
    pub(super) fn observe(&self, uplink: &Uplink, works: bool) {
        let mut book = self.book();
        if let Some(line) = book.lines.get_mut(uplink.index) {
            if line.uplink.addr != uplink.addr {
                line.uplink = uplink.clone();
            }
            line.joins.set_line_works(works);
        }
    }

    /// Uplink `uplink` is new at its index (a config reload added it):
    /// its tallies start afresh.
    pub(super) fn set_uplink(&self, uplink: &Uplink) {
        let line = Line {
            uplink: uplink.clone(),
            joins: Joins::new(Config::default()),
            last_warned: None,
            warned: false,
        };
        let mut book = self.book();
        let len = book.lines.len();
        match book.lines.get_mut(uplink.index) {
            Some(slot) => *slot = line,
            None if uplink.index == len => book.lines.push(line),
            None => {}
        }
    }

    /// A tunnel was opened on `stream`: if it fell back to plain TCP, that
    /// counts against the uplink its initial subflow used.
    pub(super) fn tunnel_opened(&self, stream: &TcpStream) {
        let Ok(local) = stream.local_addr().map(|a| a.ip()) else {
            return;
        };
        match sys::mptcp_fell_back(stream) {
            Ok(Some(true)) => {
                let now = Instant::now();
                let mut book = self.book();
                if let Some(line) = book.line_of(local) {
                    line.joins.on_tunnel(now, true);
                }
                book.report(now);
            }
            Ok(Some(false) | None) => {}
            Err(e) => debug!(error = %e, "cannot tell whether the tunnel fell back to TCP"),
        }
    }

    /// `rank` ([`crate::path::Verdict::rank`]) of uplink `index` for new
    /// tunnels, made worse while its subflows do not join.
    pub(super) fn rank(&self, index: usize, rank: Option<u8>) -> Option<u8> {
        let stripped = self
            .book()
            .lines
            .get(index)
            .is_some_and(|l| matches!(l.joins.verdict(), JoinVerdict::Stripped { .. }));
        rank.map(|r| {
            if stripped {
                r.saturating_add(STRIPPED_RANK_PENALTY)
            } else {
                r
            }
        })
    }

    /// Every uplink's join state now.
    #[allow(dead_code)] // For the status view (issue 8), which is not built yet.
    pub(super) fn snapshot(&self) -> Vec<UplinkJoins> {
        self.book()
            .lines
            .iter()
            .map(|l| UplinkJoins {
                name: l.uplink.name.clone(),
                interface: l.uplink.interface.clone(),
                addr: l.uplink.addr,
                counts: l.joins.counts(),
                verdict: l.joins.verdict(),
            })
            .collect()
    }

    /// Follows the kernel's events, gives verdicts that are due and logs
    /// their changes.
    fn on_events(&self, now: Instant, events: &[MptcpEvent]) {
        let mut book = self.book();
        for event in events {
            book.on_event(now, event);
        }
        book.report(now);
    }

    /// Events were lost: for a while, subflows closed without a known
    /// establishment are not counted.
    fn events_lost(&self, now: Instant) {
        self.book().unsure_until = Some(now + UNSURE_AFTER_LOSS);
    }
}

impl Book {
    fn line_of(&mut self, addr: IpAddr) -> Option<&mut Line> {
        self.lines.iter_mut().find(|l| l.uplink.addr == addr)
    }

    fn on_event(&mut self, now: Instant, event: &MptcpEvent) {
        tracing::trace!(?event, "MPTCP path manager event");
        if event.server_side {
            return;
        }
        let token = event.token;
        match event.kind {
            MptcpEventKind::Closed => {
                self.subflows.remove(&token);
            }
            MptcpEventKind::Established => {}
            MptcpEventKind::Created => {
                let Some(local) = event.local else { return };
                self.remember(now, token, local);
                if let Some(line) = self.line_of(local.0) {
                    line.joins.on_tunnel(now, false);
                }
            }
            MptcpEventKind::SubflowEstablished => {
                let Some(local) = event.local else { return };
                self.remember(now, token, local);
                if let Some(line) = self.line_of(local.0) {
                    line.joins.on_join_established(now);
                }
            }
            MptcpEventKind::SubflowClosed => {
                let Some(local) = event.local else { return };
                if self.forget(token, local) {
                    return;
                }
                let unsure = self.unsure_until.is_some_and(|until| now < until)
                    || self.subflows.len() >= MAX_CONNECTIONS;
                if unsure {
                    return;
                }
                if let Some(line) = self.line_of(local.0) {
                    debug!(
                        uplink = %line.uplink.name,
                        addr = %local.0,
                        port = local.1,
                        error = event.error,
                        reset_reason = ?event.reset_reason,
                        "MPTCP subflow closed without having joined"
                    );
                    line.joins.on_join_failed(now);
                }
            }
        }
    }

    fn remember(&mut self, now: Instant, token: u32, local: (IpAddr, u16)) {
        if self.subflows.len() >= MAX_CONNECTIONS && !self.subflows.contains_key(&token) {
            // The path manager's events for one connection can come out
            // of order (ESTABLISHED after CLOSED), leaving entries behind:
            // old ones go.
            self.subflows
                .retain(|_, (since, _)| now.saturating_duration_since(*since) < FORGET_AFTER);
            if self.subflows.len() >= MAX_CONNECTIONS {
                return;
            }
        }
        let (_, known) = self.subflows.entry(token).or_insert((now, Vec::new()));
        // The in-kernel path manager opens at most 8 subflows per
        // connection; a runaway list would be the kernel's bug.
        if known.len() < 16 {
            known.push(local);
        }
    }

    /// Forgets an established subflow; `false` if it was not known.
    fn forget(&mut self, token: u32, local: (IpAddr, u16)) -> bool {
        let Some((_, known)) = self.subflows.get_mut(&token) else {
            return false;
        };
        let Some(at) = known.iter().position(|k| *k == local) else {
            return false;
        };
        known.swap_remove(at);
        true
    }

    /// Gives due verdicts and logs every change.
    fn report(&mut self, now: Instant) {
        let others = self.lines.len() > 1;
        for line in &mut self.lines {
            line.joins.handle_timeout(now);
            while let Some(event) = line.joins.poll_event() {
                line.log(now, event, others);
            }
        }
    }
}

impl Line {
    fn log(&mut self, now: Instant, event: JoinEvent, others: bool) {
        let Uplink {
            name,
            interface,
            addr,
            ..
        } = &self.uplink;
        match event {
            JoinEvent::Stripped {
                since,
                failed,
                fallbacks,
            } => {
                let for_s = now.saturating_duration_since(since).as_secs();
                if self
                    .last_warned
                    .is_some_and(|at| now.saturating_duration_since(at) < WARN_EVERY)
                {
                    self.warned = false;
                    debug!(uplink = %name, failed, fallbacks, "MPTCP subflows do not join again on this uplink");
                    return;
                }
                self.warned = true;
                self.last_warned = Some(now);
                let effect = if others {
                    "traffic uses the other uplinks"
                } else {
                    "tunnels over it run as plain TCP, without bonding"
                };
                warn!(
                    uplink = %name,
                    interface = %interface,
                    %addr,
                    failed_joins = failed,
                    fallbacks,
                    for_s,
                    "uplink {name} ({interface}, {addr}): MPTCP subflows do not join — something \
                     on this line strips MPTCP options (some mobile operators do); {effect}. Ask \
                     the operator, or carry this line over the datagram tunnel when it exists"
                );
            }
            JoinEvent::Recovered { after } => {
                let after_s = after.as_secs();
                if !std::mem::take(&mut self.warned) {
                    debug!(uplink = %name, after_s, "MPTCP subflows join again on this uplink");
                    return;
                }
                info!(
                    uplink = %name,
                    interface = %interface,
                    %addr,
                    after_s,
                    "uplink {name} ({interface}, {addr}): MPTCP subflows join again; it carries \
                     tunnel traffic again"
                );
            }
        }
    }
}

/// Starts the thread that reads the path manager's events into `watch`
/// until the watch is dropped.
pub(super) fn spawn(watch: &Arc<JoinWatch>, events: MptcpEvents) -> std::io::Result<()> {
    let watch = Arc::downgrade(watch);
    thread::Builder::new()
        .name("mpbond-joins".into())
        .spawn(move || read_events(watch, events))
        .map(drop)
}

fn read_events(watch: Weak<JoinWatch>, mut events: MptcpEvents) {
    let mut last_error: Option<Instant> = None;
    loop {
        let received = events.receive();
        let Some(watch) = watch.upgrade() else { return };
        let now = Instant::now();
        match received {
            Ok(batch) => watch.on_events(now, &batch),
            Err(e) => {
                // ENOBUFS: events were lost; the next ones still come.
                watch.events_lost(now);
                if last_error.is_none_or(|at| now.saturating_duration_since(at) > WARN_EVERY) {
                    warn!(error = %e, "reading the MPTCP path manager's events failed; join failures may go unnoticed for a while");
                    last_error = Some(now);
                }
                drop(watch);
                thread::sleep(EVENT_POLL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{EndpointFlags, MptcpEndpoint};

    fn uplink(index: usize, name: &str, addr: &str) -> Uplink {
        let addr: IpAddr = addr.parse().expect("address");
        Uplink {
            index,
            name: name.into(),
            interface: format!("{name}0"),
            ifindex: 1 + index as u32,
            addr,
            backup: false,
            endpoint: MptcpEndpoint {
                id: 96 + index as u8,
                addr,
                port: 0,
                ifindex: Some(1),
                flags: EndpointFlags::default(),
            },
        }
    }

    fn event(kind: MptcpEventKind, token: u32, local: (&str, u16)) -> MptcpEvent {
        MptcpEvent {
            kind,
            token,
            local: Some((local.0.parse().expect("ip"), local.1)),
            remote: Some(("10.77.9.2".parse().expect("ip"), 7300)),
            error: 0,
            reset_reason: None,
            server_side: false,
        }
    }

    fn verdicts(watch: &JoinWatch) -> Vec<(String, JoinVerdict)> {
        watch
            .snapshot()
            .into_iter()
            .map(|u| (u.name, u.verdict))
            .collect()
    }

    /// What the lab showed with lte's MPTCP options stripped: connections
    /// created on dsl, their joins from lte closed without establishing.
    #[test]
    fn joins_closed_unestablished_from_one_address_strip_that_uplink_only() {
        use MptcpEventKind::*;
        let dsl = uplink(0, "dsl", "10.77.1.2");
        let lte = uplink(1, "lte", "10.77.2.2");
        let watch = JoinWatch::new(&[dsl.clone(), lte.clone()]);
        let t0 = Instant::now();
        for i in 0..3u32 {
            let at = t0 + Duration::from_secs(2 * u64::from(i));
            let port = 40000 + i as u16;
            watch.on_events(
                at,
                &[
                    event(Created, i, ("10.77.1.2", port)),
                    event(Established, i, ("10.77.1.2", port)),
                    event(SubflowClosed, i, ("10.77.2.2", port + 100)),
                ],
            );
        }
        let got = verdicts(&watch);
        assert_eq!(got[0].1, JoinVerdict::Fine);
        assert_eq!(got[1].1, JoinVerdict::Stripped { since: t0 });
        let lte_counts = watch.snapshot()[1].counts;
        assert_eq!((lte_counts.attempts, lte_counts.failed), (3, 3));
        // New tunnels avoid lte while dsl works.
        assert_eq!(watch.rank(1, Some(0)), Some(2));
        assert_eq!(watch.rank(0, Some(0)), Some(0));
        assert_eq!(watch.rank(1, None), None);
        // A join established from lte ends it.
        watch.on_events(
            t0 + Duration::from_secs(60),
            &[event(SubflowEstablished, 9, ("10.77.2.2", 41000))],
        );
        assert_eq!(verdicts(&watch)[1].1, JoinVerdict::Fine);
    }

    #[test]
    fn new_tunnels_avoid_a_stripped_line_while_another_works() {
        use super::super::health::{pick_source, Candidate};
        use MptcpEventKind::*;
        let dsl = uplink(0, "dsl", "10.77.1.2");
        let lte = uplink(1, "lte", "10.77.2.2");
        let watch = JoinWatch::new(&[dsl.clone(), lte.clone()]);
        let t0 = Instant::now();
        for i in 0..3u32 {
            watch.on_events(
                t0 + Duration::from_secs(2 * u64::from(i)),
                &[event(SubflowClosed, i, ("10.77.2.2", 5000))],
            );
        }
        let ms = |n| Some(Duration::from_millis(n));
        let pick = |dsl_rank: Option<u8>, current| {
            let candidates = [
                Candidate {
                    uplink: &dsl,
                    rank: watch.rank(0, dsl_rank),
                    rtt: ms(80),
                },
                Candidate {
                    uplink: &lte,
                    rank: watch.rank(1, Some(0)),
                    rtt: ms(20),
                },
            ];
            pick_source(&candidates, current)
        };
        // lte is faster, but its tunnels would fall back to plain TCP.
        assert_eq!(pick(Some(0), Some(lte.addr)), Some(dsl.addr));
        assert_eq!(
            pick(Some(1), None),
            Some(dsl.addr),
            "even a line on probation"
        );
        // Alone, it is still used.
        assert_eq!(pick(None, Some(dsl.addr)), Some(lte.addr));
    }

    #[test]
    fn closing_established_subflows_is_no_failure() {
        use MptcpEventKind::*;
        let lte = uplink(0, "lte", "10.77.2.2");
        let watch = JoinWatch::new(&[lte, uplink(1, "dsl", "10.77.1.2")]);
        let t0 = Instant::now();
        for i in 0..5u32 {
            let at = t0 + Duration::from_secs(u64::from(i));
            watch.on_events(
                at,
                &[
                    event(SubflowEstablished, i, ("10.77.2.2", 5000)),
                    event(SubflowClosed, i, ("10.77.2.2", 5000)),
                ],
            );
        }
        // A connection's initial subflow closing is none either.
        watch.on_events(
            t0 + Duration::from_secs(6),
            &[
                event(Created, 77, ("10.77.2.2", 6000)),
                event(SubflowClosed, 77, ("10.77.2.2", 6000)),
                event(Closed, 77, ("0.0.0.0", 0)),
            ],
        );
        // Server-side events (a concentrator on the same host) are ignored.
        let mut server = event(SubflowClosed, 78, ("10.77.2.2", 6001));
        server.server_side = true;
        watch.on_events(t0 + Duration::from_secs(7), &[server]);
        let lte = &watch.snapshot()[0];
        assert_eq!(lte.verdict, JoinVerdict::Fine);
        assert_eq!(lte.counts.failed, 0);
        assert_eq!(lte.counts.established, 5);
        assert!(watch.book().subflows.values().all(|(_, v)| v.is_empty()));
    }

    #[test]
    fn connections_left_behind_are_forgotten_when_room_is_needed() {
        use MptcpEventKind::*;
        let watch = JoinWatch::new(&[uplink(0, "lte", "10.77.2.2")]);
        let t0 = Instant::now();
        let created: Vec<_> = (0..MAX_CONNECTIONS as u32)
            .map(|i| event(Created, i, ("10.77.1.2", 1)))
            .collect();
        watch.on_events(t0, &created);
        assert_eq!(watch.book().subflows.len(), MAX_CONNECTIONS);
        let later = t0 + FORGET_AFTER + Duration::from_secs(1);
        watch.on_events(later, &[event(Created, u32::MAX, ("10.77.2.2", 2))]);
        assert_eq!(watch.book().subflows.len(), 1);
    }

    #[test]
    fn after_lost_events_unknown_closures_are_not_counted() {
        use MptcpEventKind::*;
        let watch = JoinWatch::new(&[uplink(0, "lte", "10.77.2.2")]);
        let t0 = Instant::now();
        watch.events_lost(t0);
        for i in 0..5u32 {
            watch.on_events(
                t0 + Duration::from_secs(u64::from(i) * 2),
                &[event(SubflowClosed, i, ("10.77.2.2", 5000))],
            );
        }
        assert_eq!(watch.snapshot()[0].counts.failed, 0);
    }

    #[test]
    fn failures_on_a_line_health_calls_dead_do_not_count_and_addresses_follow() {
        use MptcpEventKind::*;
        let mut lte = uplink(0, "lte", "10.77.2.2");
        let watch = JoinWatch::new(std::slice::from_ref(&lte));
        watch.observe(&lte, false);
        let t0 = Instant::now();
        for i in 0..5u32 {
            watch.on_events(
                t0 + Duration::from_secs(u64::from(i)),
                &[event(SubflowClosed, i, ("10.77.2.2", 5000))],
            );
        }
        assert_eq!(watch.snapshot()[0].verdict, JoinVerdict::Fine);
        // Renumbered: events from the new address are the uplink's.
        lte.addr = "10.77.2.9".parse().expect("ip");
        watch.observe(&lte, true);
        for i in 0..3u32 {
            watch.on_events(
                t0 + Duration::from_secs(10 + 2 * u64::from(i)),
                &[event(SubflowClosed, 10 + i, ("10.77.2.9", 5000))],
            );
        }
        let snapshot = &watch.snapshot()[0];
        assert_eq!(snapshot.addr, lte.addr);
        assert!(matches!(snapshot.verdict, JoinVerdict::Stripped { .. }));
    }
}
