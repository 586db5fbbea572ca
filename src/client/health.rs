//! Uplink health: the kernel's link events, and a probe to the
//! concentrator over each uplink every 30 ms while the site has flows (every
//! second when idle; an authenticated UDP echo, [`crate::wire::probe`]).
//! When an uplink loses its carrier (or is set down, or deleted), or its
//! probes go unanswered (a blackholed line keeps its carrier: 120 ms when
//! its interface received nothing else meanwhile, 300 ms otherwise), its
//! MPTCP endpoint is removed: the kernel closes the subflows on it and tells the
//! concentrator (RM_ADDR), which re-sends what was in flight there over the
//! other uplinks at once instead of waiting for retransmission timeouts.
//! When it comes back the endpoint is added again, so running connections
//! get a fresh subflow on it (the kernel never re-creates a subflow a link
//! flap closed). New tunnels start on a usable uplink, the one with the
//! shortest probe round trip (non-backup first): there is no master.
//!
//! When an uplink's interface gets a new address (a 4G line renumbered by
//! DHCP), its source rule, endpoint and probes move to it; the kernel then
//! opens a subflow from the new address on running connections.
//!
//! An uplink without a gateway in the config follows the system's default
//! route out of its interface (DHCP): its own route moves to a new gateway.
//!
//! An uplink whose interface had no address at start joins when it gets
//! one.
//!
//! Not yet: data-driven detection from the subflows' own progress (the
//! interface's received packets stand in for it); an interface missing at
//! start is an error. An uplink whose probes were never answered
//! (a concentrator without the echo, or a line dead from the start) is
//! judged by its carrier alone.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, info, warn};

use super::system::{AddressChange, Handle, Uplink};
use super::{ClientError, Shared};
use crate::auth;
use crate::chain::Chain;
use crate::sys::{LinkEvent, LinkEvents};
use crate::wire::probe::{Kind, Probe, MAX_LEN};

/// How long the event thread blocks before checking whether it should end.
pub(super) const POLL: Duration = Duration::from_millis(500);

/// Time between probes on each uplink while the site has flows.
const PROBE_EVERY: Duration = Duration::from_millis(30);

/// How often the watcher looks whether another uplink has become clearly
/// faster for new tunnels.
const SOURCE_EVERY: Duration = Duration::from_secs(1);

/// How often each uplink's probe task looks at what it heard.
const CHECK_EVERY: Duration = Duration::from_millis(10);

/// An uplink whose probes went unanswered this long (counted from the
/// first unanswered one) is not used, while the site has flows. Ten probes:
/// 0.5 % random loss never loses ten in a row in practice, a full 100 ms
/// queue delays them by a third of it.
const DEAD_AFTER: Duration = Duration::from_millis(300);

/// An uplink whose probes went unanswered this long and whose interface
/// received nothing at all meanwhile is not used, while the site has
/// flows. Four probes: losing three in a row at 0.5 % loss each way is a
/// one in a million event; a line that carries anything else keeps
/// receiving it.
const QUIET_DEAD_AFTER: Duration = Duration::from_millis(120);

/// Time between probes, and the silence that makes an uplink dead, while
/// the site is idle: a 4G line is often metered, and 30 ms probes would
/// cost about 8 GB a month each way.
const IDLE_PROBE_EVERY: Duration = Duration::from_secs(1);
const IDLE_DEAD_AFTER: Duration = Duration::from_millis(3500);

/// What the watcher hears.
#[derive(Debug)]
enum Report {
    /// The kernel's link and address events.
    Links(Vec<LinkEvent>),
    /// Uplink `index`'s probes started or stopped being answered; from the
    /// probe task of that `generation` (an uplink's probes restart on a new
    /// address, and the old task's last word no longer counts).
    Probes {
        index: usize,
        generation: u64,
        answered: bool,
    },
}

/// An uplink and what is known of it.
#[derive(Debug)]
struct State {
    uplink: Uplink,
    /// Link up with carrier.
    carrier: bool,
    /// Its interface has an address of the concentrator's family.
    addressed: bool,
    /// Probes answered (or never answered at all: no verdict).
    answered: bool,
    /// What the endpoint reflects: `carrier && addressed && answered`.
    usable: bool,
    /// Its probe task, restarted when the address changes.
    probe: AbortHandle,
    generation: u64,
    /// Smoothed probe round trip in microseconds, kept by the probe task;
    /// 0: none yet.
    rtt: Arc<AtomicU64>,
}

impl State {
    fn rtt(&self) -> Option<Duration> {
        match self.rtt.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    /// Why the uplink is (not) usable, for the logs.
    fn why(&self) -> &'static str {
        match (self.carrier, self.addressed, self.answered) {
            (false, _, _) => "no carrier, down or gone",
            (true, false, _) => "its interface has no address of the concentrator's family",
            (true, true, false) => "probes unanswered: blackholed?",
            (true, true, true) => "link up with carrier and address, probes answered",
        }
    }
}

/// An uplink as [`pick_source`] sees it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Candidate<'a> {
    pub(super) uplink: &'a Uplink,
    pub(super) usable: bool,
    /// Smoothed probe round trip; `None` before the first answer.
    pub(super) rtt: Option<Duration>,
}

/// How much faster another uplink must be before new tunnels move to it:
/// each move throws the warm tunnels away, so small differences and
/// jitter must not cause one.
fn clearly_faster(other: Duration, current: Duration) -> bool {
    other + other / 4 + Duration::from_millis(10) < current
}

/// The source address new tunnels bind to: a usable non-backup uplink,
/// else a usable backup one, else none (the kernel picks). Among those,
/// the one with the shortest probe round trip (unknown counts as slowest;
/// then config order), but `current` stays while it qualifies and is not
/// clearly slower.
pub(super) fn pick_source(candidates: &[Candidate<'_>], current: Option<IpAddr>) -> Option<IpAddr> {
    let usable = || candidates.iter().filter(|c| c.usable);
    let backup = !usable().any(|c| !c.uplink.backup);
    let class = || usable().filter(|c| c.uplink.backup == backup);
    let rtt = |c: &Candidate<'_>| c.rtt.unwrap_or(Duration::MAX);
    let best = class().min_by_key(|c| rtt(c))?;
    match class().find(|c| Some(c.uplink.addr) == current) {
        Some(kept) if !(best.rtt.is_some() && clearly_faster(rtt(best), rtt(kept))) => {
            Some(kept.uplink.addr)
        }
        _ => Some(best.uplink.addr),
    }
}

/// Watches the uplinks until the client stops; never returns otherwise (a
/// failure to watch is logged and leaves the uplinks as they are).
/// `system`, the owner of system state, changes the endpoints and moves an
/// uplink's rule when its address changes. `link_events` is opened by the
/// caller before the client is ready, so that failing to open it is a
/// start-up error.
pub(super) async fn watch(
    shared: Arc<Shared>,
    system: Handle,
    uplinks: Vec<Uplink>,
    link_events: LinkEvents,
) -> Result<(), ClientError> {
    let (tx, mut rx) = mpsc::channel::<Report>(64);
    let link_tx = tx.clone();
    let reader = thread::Builder::new()
        .name("mpbond-links".into())
        .spawn(move || read_events(link_events, link_tx));
    if let Err(e) = reader {
        warn!(error = %e, "cannot start the link watcher; carrier loss goes unnoticed");
    }
    // Dropped (and so stopped) with this task.
    let mut probes = JoinSet::new();
    let mut states: Vec<State> = uplinks
        .into_iter()
        .enumerate()
        .map(|(index, uplink)| {
            let rtt = Arc::new(AtomicU64::new(0));
            // An uplink without an address yet waits for one, unprobed.
            let addressed = !uplink.addr.is_unspecified();
            let probe = if addressed {
                let prober = Prober {
                    index,
                    generation: 0,
                    uplink: uplink.clone(),
                    rtt: rtt.clone(),
                    tx: tx.clone(),
                };
                probes.spawn(probe(shared.clone(), prober))
            } else {
                probes.spawn(std::future::pending())
            };
            State {
                probe,
                uplink,
                carrier: true,
                addressed,
                answered: true,
                usable: addressed,
                generation: 0,
                rtt,
            }
        })
        .collect();
    let mut repick = tokio::time::interval(SOURCE_EVERY);
    repick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let report = tokio::select! {
            report = rx.recv() => match report {
                Some(report) => Some(report),
                // Cannot happen while this task holds a sender.
                None => return std::future::pending().await,
            },
            _ = repick.tick() => None,
        };
        // Without a report: the periodic look at the round trips.
        let mut changed = report.is_none();
        match report.unwrap_or(Report::Links(Vec::new())) {
            Report::Links(events) => {
                for event in events {
                    let (LinkEvent::Link { ifindex, .. }
                    | LinkEvent::Address { ifindex }
                    | LinkEvent::Route { ifindex }) = event;
                    for (index, state) in states
                        .iter_mut()
                        .enumerate()
                        .filter(|(_, s)| s.uplink.ifindex == ifindex)
                    {
                        match event {
                            LinkEvent::Link { usable, .. } => {
                                state.carrier = usable;
                                changed |= update(&system, state).await;
                            }
                            LinkEvent::Route { .. } => {
                                let regatewayed = system.regateway(index).await;
                                match regatewayed {
                                    Ok(Some((old, new))) => info!(
                                        uplink = %state.uplink.name,
                                        interface = %state.uplink.interface,
                                        old = ?old,
                                        %new,
                                        "the system's default gateway out of the uplink changed: \
                                         its route follows"
                                    ),
                                    Ok(None) => {}
                                    Err(e) => warn!(
                                        uplink = %state.uplink.name,
                                        error = %Chain(&e),
                                        "cannot follow the uplink's new gateway"
                                    ),
                                }
                            }
                            LinkEvent::Address { .. } => {
                                let readdressed = system.readdress(index).await;
                                changed |= match readdressed {
                                    Ok(change) => {
                                        readdress(&system, state, change, |state: &State| {
                                            let prober = Prober {
                                                index,
                                                generation: state.generation,
                                                uplink: state.uplink.clone(),
                                                rtt: state.rtt.clone(),
                                                tx: tx.clone(),
                                            };
                                            probes.spawn(probe(shared.clone(), prober))
                                        })
                                        .await
                                    }
                                    Err(e) => {
                                        warn!(
                                            uplink = %state.uplink.name,
                                            error = %Chain(&e),
                                            "cannot follow the uplink's address change"
                                        );
                                        false
                                    }
                                };
                            }
                        }
                    }
                }
            }
            Report::Probes {
                index,
                generation,
                answered,
            } => {
                if let Some(state) = states.get_mut(index) {
                    if state.generation == generation {
                        state.answered = answered;
                        changed |= update(&system, state).await;
                    }
                }
            }
        }
        if changed {
            let candidates: Vec<Candidate<'_>> = states
                .iter()
                .map(|s| Candidate {
                    uplink: &s.uplink,
                    usable: s.usable,
                    rtt: s.rtt(),
                })
                .collect();
            let current = shared.tunnels.source();
            let source = pick_source(&candidates, current);
            if shared.tunnels.set_source(source) {
                let rtts: Vec<String> = candidates
                    .iter()
                    .map(|c| format!("{}={:?}", c.uplink.name, c.rtt))
                    .collect();
                info!(source = ?source, rtts = ?rtts, "new tunnels start from this address");
            }
        }
    }
}

/// Brings the endpoint in line with what is known; `true` if it changed.
async fn update(system: &Handle, state: &mut State) -> bool {
    let usable = state.carrier && state.addressed && state.answered;
    if usable == state.usable {
        return false;
    }
    state.usable = usable;
    apply(system, state, state.why()).await;
    true
}

/// Follows an address change found on the uplink's interface: the
/// endpoint moves to the new address (the kernel then opens subflows from
/// it on running connections) and the probes restart from it, through
/// `respawn`. `true` if the uplink changed.
async fn readdress(
    system: &Handle,
    state: &mut State,
    change: AddressChange,
    respawn: impl FnOnce(&State) -> AbortHandle,
) -> bool {
    match change {
        AddressChange::Same => false,
        AddressChange::Gone => {
            state.addressed = false;
            update(system, state).await
        }
        AddressChange::New(uplink) => {
            info!(
                uplink = %uplink.name,
                interface = %uplink.interface,
                old = %state.uplink.addr,
                new = %uplink.addr,
                "uplink has a new address: moving its MPTCP endpoint and probes to it"
            );
            if state.usable {
                // The old address's endpoint: its subflows go with it.
                state.usable = false;
                apply(system, state, "its address changed").await;
            }
            state.uplink = uplink;
            state.addressed = true;
            // No verdict on the new address before its first answer.
            state.answered = true;
            state.rtt.store(0, Ordering::Relaxed);
            state.probe.abort();
            state.generation += 1;
            state.probe = respawn(state);
            update(system, state).await;
            true
        }
    }
}

/// One uplink's probe task's parts.
struct Prober {
    index: usize,
    generation: u64,
    uplink: Uplink,
    /// Where it keeps the smoothed round trip (microseconds).
    rtt: Arc<AtomicU64>,
    tx: mpsc::Sender<Report>,
}

/// Probes the concentrator from the uplink's address every [`PROBE_EVERY`]
/// (while active), keeps its round trip, and reports when answers stop or
/// start again.
async fn probe(shared: Arc<Shared>, prober: Prober) {
    let Prober {
        index,
        generation,
        uplink,
        rtt,
        tx,
    } = prober;
    let tunnels = &shared.tunnels;
    let concentrator: SocketAddr = tunnels.concentrator;
    let addr = uplink.addr;
    let socket = match UdpSocket::bind(SocketAddr::new(addr, 0)).await {
        Ok(socket) => socket,
        Err(e) => {
            warn!(uplink = %uplink.name, %addr, error = %e, "cannot open a probe socket; this uplink is judged by its carrier alone");
            return;
        }
    };
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut buf = vec![0; MAX_LEN + 1];
    let mut seq = 0u64;
    // When recent probes left, by sequence number, for round trips.
    let mut sent_at = [(0u64, None::<Instant>); SENT_KEPT];
    let mut liveness = Liveness::default();
    let mut answered = true;
    let mut last_sent = None::<Instant>;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let active = !shared.table().is_empty() || tunnels.warm.active();
                let every = if active { PROBE_EVERY } else { IDLE_PROBE_EVERY };
                let now = Instant::now();
                // Ticks come a little early or late; half a tick of slack
                // keeps the rate at one probe per period.
                if last_sent.is_none_or(|at| now - at + CHECK_EVERY / 2 >= every) {
                    seq += 1;
                    let request = Probe {
                        kind: Kind::Request,
                        client_id: tunnels.id.clone(),
                        seq,
                        sent_ms: auth::unix_ms(),
                    };
                    let bytes = request.encode(&auth::sign_probe(&tunnels.key, &request.body()));
                    // Fails while the line is down; that shows as silence.
                    let _ = socket.send_to(&bytes, concentrator).await;
                    last_sent = Some(now);
                    liveness.sent(now);
                    sent_at[slot(seq)] = (seq, Some(now));
                }
                if active {
                    liveness.received(rx_packets(&uplink.interface), now);
                }
                if answered && liveness.dead(now, active) {
                    answered = false;
                    debug!(uplink = %uplink.name, ?liveness, "probes unanswered");
                    if tx
                        .send(Report::Probes { index, generation, answered })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            received = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = received else { continue };
                if from != concentrator {
                    continue;
                }
                let Ok((reply, body, mac)) = Probe::decode(&buf[..n]) else { continue };
                if reply.kind != Kind::Reply
                    || reply.client_id != tunnels.id
                    || reply.seq > seq
                    || !auth::verify_probe(&tunnels.key, body, &mac)
                {
                    continue;
                }
                liveness.answered();
                if let (sent, Some(at)) = sent_at[slot(reply.seq)] {
                    if sent == reply.seq {
                        let sample = at.elapsed().as_micros().try_into().unwrap_or(u64::MAX);
                        let old = rtt.load(Ordering::Relaxed);
                        rtt.store(smooth(old, sample), Ordering::Relaxed);
                    }
                }
                if !answered {
                    answered = true;
                    if tx
                        .send(Report::Probes { index, generation, answered })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    }
}

/// How many probes' send times are kept to match answers: two seconds'
/// worth while active.
const SENT_KEPT: usize = 64;

fn slot(seq: u64) -> usize {
    // The remainder is below SENT_KEPT.
    (seq % SENT_KEPT as u64) as usize
}

/// The smoothed round trip (microseconds, 0: none yet) after `sample`: an
/// average that gives the new sample an eighth, as TCP's SRTT does.
fn smooth(old: u64, sample: u64) -> u64 {
    match old {
        0 => sample.max(1),
        _ => (old - old / 8).saturating_add(sample / 8).max(1),
    }
}

/// What one uplink's probes heard, and the verdict: dead when probes go
/// unanswered for [`DEAD_AFTER`], or sooner, after [`QUIET_DEAD_AFTER`],
/// when its interface has received nothing at all meanwhile either (a
/// blackholed line goes quiet at once, while a busy line whose probes wait
/// in a full queue keeps receiving the data and acknowledgements ahead of
/// them). No verdict before the first answer.
#[derive(Debug, Default)]
struct Liveness {
    ever_answered: bool,
    /// When the first probe after the last answer was sent.
    waiting_since: Option<Instant>,
    /// The interface's received packet count, and since when it has not
    /// changed; `None` when it cannot be read.
    rx: Option<(u64, Instant)>,
}

impl Liveness {
    fn sent(&mut self, now: Instant) {
        self.waiting_since.get_or_insert(now);
    }

    fn answered(&mut self) {
        self.ever_answered = true;
        self.waiting_since = None;
    }

    /// The interface's received packet count now, if it could be read.
    fn received(&mut self, packets: Option<u64>, now: Instant) {
        self.rx = match (packets, self.rx) {
            (None, _) => None,
            (Some(count), Some((last, since))) if count == last => Some((last, since)),
            (Some(count), _) => Some((count, now)),
        };
    }

    fn dead(&self, now: Instant, active: bool) -> bool {
        let Some(waiting) = self.waiting_since.filter(|_| self.ever_answered) else {
            return false;
        };
        let silent = now.saturating_duration_since(waiting);
        if !active {
            return silent >= IDLE_DEAD_AFTER;
        }
        let quiet = self.rx.map_or(Duration::ZERO, |(_, since)| {
            now.saturating_duration_since(since)
        });
        silent >= DEAD_AFTER || (silent >= QUIET_DEAD_AFTER && quiet >= QUIET_DEAD_AFTER)
    }
}

/// The packets `interface` has received, from `/proc/thread-self/net/dev`
/// (the calling thread's network namespace); `None` if it cannot be read.
fn rx_packets(interface: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev").ok()?;
    parse_rx_packets(&text, interface)
}

/// `interface`'s received packets in the text of `/proc/net/dev`: after
/// the name and a colon come bytes, packets, ...
fn parse_rx_packets(text: &str, interface: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, counters) = line.split_once(':')?;
        if name.trim() != interface {
            return None;
        }
        counters.split_whitespace().nth(1)?.parse().ok()
    })
}

async fn apply(system: &Handle, state: &State, why: &str) {
    let uplink = &state.uplink;
    if state.usable {
        info!(
            uplink = %uplink.name,
            interface = %uplink.interface,
            why,
            "uplink back: adding its MPTCP endpoint again so running connections get a \
             subflow on it"
        );
        if let Err(e) = system.set_endpoint(uplink.index, true).await {
            warn!(uplink = %uplink.name, error = %Chain(&e), "cannot add the endpoint back");
        }
    } else {
        info!(
            uplink = %uplink.name,
            interface = %uplink.interface,
            why,
            "uplink down: removing its MPTCP endpoint so both ends move its traffic to the \
             other uplinks"
        );
        if let Err(e) = system.set_endpoint(uplink.index, false).await {
            warn!(uplink = %uplink.name, error = %Chain(&e), "cannot remove the endpoint");
        }
    }
}

/// Reads link events and passes them on until the receiver is gone.
fn read_events(mut events: LinkEvents, tx: mpsc::Sender<Report>) {
    while !tx.is_closed() {
        match events.receive() {
            Ok(batch) if batch.is_empty() => {}
            Ok(batch) => {
                if tx.blocking_send(Report::Links(batch)).is_err() {
                    return;
                }
            }
            Err(e) => {
                // ENOBUFS: events were lost; the next ones still come.
                warn!(error = %e, "reading link events failed");
                thread::sleep(POLL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{EndpointFlags, MptcpEndpoint};

    fn uplink(name: &str, addr: &str, backup: bool) -> Uplink {
        let addr: IpAddr = addr.parse().expect("address");
        Uplink {
            index: 0,
            name: name.into(),
            interface: format!("{name}0"),
            ifindex: 1,
            addr,
            backup,
            endpoint: MptcpEndpoint {
                id: 96,
                addr,
                port: 0,
                ifindex: Some(1),
                flags: EndpointFlags::default(),
            },
        }
    }

    /// A fake clock: `t(ms)` is that long after a fixed start.
    fn clock() -> impl Fn(u64) -> Instant {
        let start = Instant::now();
        move |ms| start + Duration::from_millis(ms)
    }

    #[test]
    fn no_verdict_before_the_first_answer() {
        let t = clock();
        let mut l = Liveness::default();
        l.sent(t(0));
        l.received(Some(5), t(0));
        assert!(!l.dead(t(10_000), true));
        assert!(!l.dead(t(10_000), false));
    }

    #[test]
    fn a_quiet_line_is_dead_sooner_than_a_busy_one() {
        let t = clock();
        let mut quiet = Liveness::default();
        let mut busy = Liveness::default();
        for l in [&mut quiet, &mut busy] {
            l.sent(t(0));
            l.received(Some(100), t(0));
            l.answered();
            // Unanswered from here on.
            l.sent(t(30));
        }
        for ms in (30..=400).step_by(10) {
            quiet.received(Some(100), t(ms));
            busy.received(Some(100 + ms), t(ms));
        }
        // Silence is counted from the first unanswered probe (30 ms).
        assert!(!quiet.dead(t(149), true));
        assert!(quiet.dead(t(150), true));
        // A line still receiving waits for the full silence.
        assert!(!busy.dead(t(150), true));
        assert!(!busy.dead(t(329), true));
        assert!(busy.dead(t(330), true));
        // An answer ends it.
        quiet.answered();
        assert!(!quiet.dead(t(400), true));
    }

    #[test]
    fn a_line_received_on_recently_is_not_quiet() {
        let t = clock();
        let mut l = Liveness::default();
        l.sent(t(0));
        l.answered();
        l.received(Some(1), t(0));
        l.sent(t(30));
        // Something arrived at 100 ms, then nothing.
        l.received(Some(2), t(100));
        assert!(!l.dead(t(200), true));
        assert!(l.dead(t(220), true));
        // Counters that cannot be read: the full silence only.
        l.received(None, t(220));
        assert!(!l.dead(t(320), true));
        assert!(l.dead(t(330), true));
    }

    #[test]
    fn an_idle_site_waits_longer() {
        let t = clock();
        let mut l = Liveness::default();
        l.sent(t(0));
        l.answered();
        l.sent(t(1000));
        l.received(Some(1), t(1000));
        assert!(!l.dead(t(1000 + 3499), false));
        assert!(l.dead(t(1000 + 3500), false));
    }

    #[test]
    fn proc_net_dev_is_read() {
        let text = "Inter-|   Receive                            |  Transmit\n \
                    face |bytes    packets errs drop fifo frame compressed multicast|bytes\n    \
                    lo:    1000      10    0    0    0     0          0         0     1000\n  \
                    dsl0: 9876543  54321    0    0    0     0          0         0   123\n";
        assert_eq!(parse_rx_packets(text, "dsl0"), Some(54321));
        assert_eq!(parse_rx_packets(text, "lo"), Some(10));
        assert_eq!(parse_rx_packets(text, "lte0"), None);
        assert_eq!(parse_rx_packets("dsl0: x y", "dsl0"), None);
        assert_eq!(parse_rx_packets("", "dsl0"), None);
    }

    #[test]
    fn new_tunnels_start_on_a_usable_uplink_preferring_non_backup() {
        let dsl = uplink("dsl", "10.77.1.2", false);
        let lte = uplink("lte", "10.77.2.2", false);
        let sat = uplink("sat", "10.77.3.2", true);
        let c = |uplink, usable| Candidate {
            uplink,
            usable,
            rtt: None,
        };
        let pick = |candidates: &[Candidate<'_>]| pick_source(candidates, None);
        assert_eq!(pick(&[c(&dsl, true), c(&lte, true)]), Some(dsl.addr));
        assert_eq!(pick(&[c(&dsl, false), c(&lte, true)]), Some(lte.addr));
        assert_eq!(
            pick(&[c(&sat, true), c(&dsl, false), c(&lte, true)]),
            Some(lte.addr)
        );
        assert_eq!(pick(&[c(&sat, true), c(&dsl, false)]), Some(sat.addr));
        assert_eq!(pick(&[c(&sat, false), c(&dsl, false)]), None);
    }

    #[test]
    fn new_tunnels_start_on_the_fastest_uplink_without_flapping() {
        let dsl = uplink("dsl", "10.77.1.2", false);
        let lte = uplink("lte", "10.77.2.2", false);
        let sat = uplink("sat", "10.77.3.2", true);
        let ms = |n| Some(Duration::from_millis(n));
        let c = |uplink, rtt| Candidate {
            uplink,
            usable: true,
            rtt,
        };
        // The fastest, whatever the config order.
        assert_eq!(
            pick_source(&[c(&dsl, ms(60)), c(&lte, ms(20))], None),
            Some(lte.addr)
        );
        // A measured uplink beats one not yet answered.
        assert_eq!(
            pick_source(&[c(&dsl, None), c(&lte, ms(80))], None),
            Some(lte.addr)
        );
        // The current one stays unless another is clearly faster:
        // 20 * 1.25 + 10 = 35 ms.
        let current = Some(dsl.addr);
        assert_eq!(
            pick_source(&[c(&dsl, ms(35)), c(&lte, ms(20))], current),
            Some(dsl.addr)
        );
        assert_eq!(
            pick_source(&[c(&dsl, ms(36)), c(&lte, ms(20))], current),
            Some(lte.addr)
        );
        // Nothing measured yet: the current one stays.
        assert_eq!(
            pick_source(&[c(&dsl, None), c(&lte, None)], Some(lte.addr)),
            Some(lte.addr)
        );
        // A fast backup never wins over a working non-backup uplink, and a
        // current backup gives way as soon as one works.
        assert_eq!(
            pick_source(&[c(&sat, ms(1)), c(&dsl, ms(200))], Some(sat.addr)),
            Some(dsl.addr)
        );
    }

    #[test]
    fn round_trips_are_smoothed() {
        assert_eq!(smooth(0, 0), 1);
        assert_eq!(smooth(0, 20_000), 20_000);
        assert_eq!(smooth(20_000, 100_000), 17_500 + 12_500);
        assert_eq!(smooth(u64::MAX, u64::MAX), u64::MAX);
        assert_eq!(slot(SENT_KEPT as u64 + 3), 3);
    }
}
