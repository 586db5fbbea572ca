//! Uplink health: the driver of the path core ([`crate::path`]). One task
//! owns a [`Path`] per uplink and feeds it what the system shows — the
//! kernel's link and address events, the interface's counters
//! (`IFLA_STATS64`, every 10 ms while the site has flows), and the answers
//! to its probes (an authenticated UDP echo from the concentrator, sealed
//! in the datagram tunnel's session while it is fresh, else
//! [`crate::wire::probe`]; read by one small task per uplink) — then acts
//! on its verdicts:
//!
//! - **dead** (no carrier, no address, or silent past the line's own
//!   limit): the uplink's MPTCP endpoint is removed, so the kernel closes
//!   the subflows on it and tells the concentrator (RM_ADDR), which re-sends
//!   what was in flight there over the other uplinks at once instead of
//!   waiting for retransmission timeouts;
//! - **back**: the endpoint is added again, so running connections get a
//!   fresh subflow on it (the kernel never re-creates a subflow a link flap
//!   closed);
//! - **suspect** costs nothing: it is only reported.
//!
//! New tunnels start on the best line: settled before back, non-backup
//! before backup, then the shortest probe round trip. There is
//! no master.
//!
//! When an uplink's interface gets a new address (a 4G line renumbered by
//! DHCP), its source rule, endpoint and probes move to it; the kernel then
//! opens a subflow from the new address on running connections. An uplink
//! without a gateway in the config follows the system's default route out
//! of its interface (DHCP). An uplink whose interface had no address at
//! start joins when it gets one.
//!
//! An uplink's interface is followed by name: on every link event that may
//! concern it, the owner looks the name up again. One missing at start,
//! or unplugged (its route, rule and endpoint then go), joins when an
//! interface of that name appears, whatever its new index; until then it
//! is dead for want of carrier.
//!
//! A config reload ([`super::reload`]) sends uplink orders: a removed
//! uplink leaves as an unplugged one does and is forgotten (its index
//! stays vacant), an added one joins as a hot-plugged one does, and a
//! changed `backup` flag applies to the endpoint, new tunnels and the
//! datagram scheduler at once.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::udp::{self, Socket as UdpSocket};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, info, warn};

use super::reload::UplinkOrder;
use super::system::{AddressChange, Handle, LinkChange, Uplink, NO_INTERFACE};
use super::tunnel::Paths;
use super::{ClientError, Shared};
use crate::auth;
use crate::chain::Chain;
use crate::path::{self, Counters, Event, Path, Verdict};
use crate::sys::{LinkEvent, LinkEvents, Rtnl};
use crate::wire::probe::{Kind, Probe, MAGIC, MAX_LEN};

/// Receive and send buffer of each uplink's socket (probes and the
/// datagram tunnel).
const UPLINK_SOCKET_BUFFER: usize = 2 << 20;

/// How long the event thread blocks before checking whether it should end.
pub(super) const EVENT_POLL: Duration = Duration::from_millis(500);

/// How often the watcher looks whether the site has flows (the probes go
/// faster and counters are read while it has).
const ACTIVITY_EVERY: Duration = Duration::from_millis(10);

/// How often the watcher looks whether another uplink has become clearly
/// faster for new tunnels.
const SOURCE_EVERY: Duration = Duration::from_secs(1);

/// What the watcher hears.
#[derive(Debug)]
enum Report {
    /// The kernel's link and address events.
    Links(Vec<LinkEvent>),
    /// A verified answer to probe `seq` of uplink `index`, received `at`;
    /// from the reader of that `generation` (an uplink's probe socket
    /// moves with its address, and the old reader's word no longer counts).
    Answer {
        index: usize,
        generation: u64,
        seq: u64,
        at: Instant,
    },
}

/// An uplink and what is known of it.
struct Line {
    uplink: Uplink,
    path: Path,
    carrier: bool,
    addressed: bool,
    /// Whether its MPTCP endpoint is installed (what was last applied).
    endpoint: bool,
    /// Its probe socket, bound to its address; `None` without one.
    socket: Option<Arc<UdpSocket>>,
    /// The task reading answers from `socket`.
    reader: Option<AbortHandle>,
    generation: u64,
    /// Why its verdict last changed, for the endpoint's log line.
    last_reason: String,
    /// When its verdict last changed, for the status.
    last_change: Instant,
    /// A config reload removed it: it is no longer watched, shown or
    /// used, and its index waits for an uplink a later reload adds.
    retired: bool,
}

impl Line {
    /// A line for `uplink` as the owner set it up at `now`: it carries
    /// once it has an address (`endpoint`: whether its MPTCP endpoint is
    /// installed already).
    fn new(uplink: Uplink, now: Instant, endpoint: bool, why: &str) -> Self {
        let addressed = !uplink.addr.is_unspecified();
        let carrier = uplink.present();
        let mut path = Path::new(path::Config::default(), now);
        // An uplink without an address (or an interface) yet waits for
        // one, unprobed.
        path.set_link(now, carrier, addressed);
        Line {
            uplink,
            path,
            carrier,
            addressed,
            endpoint: endpoint && addressed,
            socket: None,
            reader: None,
            generation: 0,
            last_reason: why.to_owned(),
            last_change: now,
            retired: false,
        }
    }
}

/// An uplink as [`pick_source`] sees it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Candidate<'a> {
    pub(super) uplink: &'a Uplink,
    /// [`Verdict::rank`]: `None` for a dead line, lower is better.
    pub(super) rank: Option<u8>,
    /// Smoothed probe round trip; `None` before the first answer.
    pub(super) rtt: Option<Duration>,
}

/// How much faster another uplink must be before new tunnels move to it:
/// each move throws the warm tunnels away, so small differences and
/// jitter must not cause one.
fn clearly_faster(other: Duration, current: Duration) -> bool {
    other + other / 4 + Duration::from_millis(10) < current
}

/// The source address new tunnels bind to: a live non-backup uplink, else
/// a live backup one, else none (the kernel picks). Among those, the best
/// verdict, then the shortest probe round trip (unknown counts as slowest;
/// then config order), but `current` stays while it has the best verdict
/// and is not clearly slower.
pub(super) fn pick_source(candidates: &[Candidate<'_>], current: Option<IpAddr>) -> Option<IpAddr> {
    let live = || candidates.iter().filter(|c| c.rank.is_some());
    let backup = !live().any(|c| !c.uplink.backup);
    let class = || live().filter(|c| c.uplink.backup == backup);
    let best_rank = class().filter_map(|c| c.rank).min()?;
    let best_class = || class().filter(|c| c.rank == Some(best_rank));
    let rtt = |c: &Candidate<'_>| c.rtt.unwrap_or(Duration::MAX);
    let best = best_class().min_by_key(|c| rtt(c))?;
    match best_class().find(|c| Some(c.uplink.addr) == current) {
        Some(kept) if !(best.rtt.is_some() && clearly_faster(rtt(best), rtt(kept))) => {
            Some(kept.uplink.addr)
        }
        _ => Some(best.uplink.addr),
    }
}

/// Watches the uplinks until the client stops; never returns otherwise.
/// `system` is the owner of what is installed: endpoints follow the
/// verdicts through it, and it moves an uplink's rule, route and endpoint
/// when its address or gateway changes; `events` are the kernel's link and
/// address events; `orders` come from config reloads.
pub(super) async fn watch(
    shared: Arc<Shared>,
    system: Handle,
    uplinks: Vec<Uplink>,
    events: LinkEvents,
    mut orders: mpsc::UnboundedReceiver<UplinkOrder>,
) -> Result<(), ClientError> {
    let (tx, mut rx) = mpsc::channel::<Report>(256);
    let link_tx = tx.clone();
    thread::Builder::new()
        .name("mpbond-links".into())
        .spawn(move || read_events(events, link_tx))
        .map_err(|source| ClientError::Health { source })?;
    // Counters come from here; without it, lines are judged by probes alone.
    let rtnl = match Rtnl::open() {
        Ok(rtnl) => Some(rtnl),
        Err(e) => {
            warn!(error = %Chain(&e), "cannot read interface counters; uplinks are judged by their probes alone");
            None
        }
    };
    // Dropped (and so stopped) with this task.
    let mut readers = JoinSet::new();
    let start = Instant::now();
    // Start-up installed the endpoint of each uplink with an address.
    let mut lines: Vec<Line> = uplinks
        .into_iter()
        .map(|uplink| Line::new(uplink, start, true, "start"))
        .collect();
    for (index, line) in lines.iter_mut().enumerate() {
        if line.addressed {
            open_probes(&shared, &mut readers, &tx, index, line).await;
        }
        // The initial "no address" verdict: its endpoint was never installed.
        while line.path.poll_event().is_some() {}
    }
    let mut published = start;
    let mut repick = tokio::time::interval(SOURCE_EVERY);
    repick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let wake = lines
            .iter()
            .filter(|l| !l.retired)
            .map(|l| l.path.poll_timeout())
            .min()
            .unwrap_or_else(|| Instant::now() + SOURCE_EVERY)
            // Whether the site is active is looked at every ACTIVITY_EVERY:
            // an idle core would otherwise sleep for a second and probe at
            // the idle rate while flows start. A core that is due at once
            // is served once per millisecond at most.
            .min(Instant::now() + ACTIVITY_EVERY)
            .max(Instant::now() + Duration::from_millis(1));
        let mut changed = false;
        tokio::select! {
            report = rx.recv() => match report {
                Some(Report::Links(events)) => {
                    for event in events {
                        changed |= on_link_event(&shared, &system, &mut lines, &mut readers, &tx, event).await;
                    }
                }
                Some(Report::Answer { index, generation, seq, at }) => {
                    if let Some(line) = lines.get_mut(index).filter(|l| l.generation == generation) {
                        line.path.on_answer(at, seq);
                    }
                }
                // Cannot happen while this task holds a sender.
                None => return std::future::pending().await,
            },
            Some(order) = orders.recv() => {
                on_order(&shared, &system, &mut lines, &mut readers, &tx, order).await;
                changed = true;
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = repick.tick() => changed = true,
        }
        let now = Instant::now();
        let active = !shared.table().is_empty()
            || shared.tunnels.warm.active()
            || shared.datagrams.as_ref().is_some_and(|d| d.active(now));
        for line in lines.iter_mut().filter(|l| !l.retired) {
            line.path.set_active(now, active);
            if active && line.carrier && line.addressed {
                match rtnl.as_ref().map(|r| r.link_stats(line.uplink.ifindex)) {
                    Some(Ok(Some(stats))) => line.path.on_counters(
                        now,
                        Counters {
                            rx_packets: stats.rx_packets,
                            rx_bytes: stats.rx_bytes,
                            tx_bytes: stats.tx_bytes,
                        },
                    ),
                    _ => line.path.counters_unavailable(),
                }
            }
        }
        let starved = others_starved(&lines, now);
        let answered = others_answered(&lines);
        for (index, line) in lines.iter_mut().enumerate() {
            if line.retired {
                continue;
            }
            line.path.set_others_starved(starved[index]);
            line.path.set_others_answered(answered[index]);
            line.path.handle_timeout(now);
            while let Some(seq) = line.path.poll_transmit(now) {
                send_probe(&shared, index, line, seq);
            }
            while let Some(event) = line.path.poll_event() {
                changed = true;
                log_event(line, &event);
                shared.status.changed(&line.uplink.name, &event);
            }
            if let Some(datagrams) = &shared.datagrams {
                datagrams.update(index, now, &line.path.estimates(now));
            }
            let carries = line.path.verdict().carries();
            shared
                .joins
                .observe(&line.uplink, carries && line.addressed);
            if carries != line.endpoint {
                let why = line.last_reason.clone();
                set_endpoint(&system, line, carries, &why).await;
            }
        }
        if changed {
            repick_source(&shared, &lines);
        }
        if changed || now.saturating_duration_since(published) >= super::status::PUBLISH_EVERY {
            publish(&shared, &lines, now, active);
            published = now;
        }
    }
}

/// For each line, whether the lines that work besides it (usable or
/// back: answering their probes) carry far less than they did lately.
fn others_starved(lines: &[Line], now: Instant) -> Vec<bool> {
    (0..lines.len())
        .map(|index| {
            let others = lines.iter().enumerate().filter(|&(other, line)| {
                other != index
                    && !line.retired
                    && matches!(line.path.verdict(), Verdict::Usable | Verdict::Back)
            });
            path::starved(others.map(|(_, line)| &line.path), now)
        })
        .collect()
}

/// For each line, when the newest probe answered on any other line left.
fn others_answered(lines: &[Line]) -> Vec<Option<Instant>> {
    (0..lines.len())
        .map(|index| {
            lines
                .iter()
                .enumerate()
                .filter(|&(other, line)| other != index && !line.retired)
                .filter_map(|(_, line)| line.path.answered_sent())
                .max()
        })
        .collect()
}

/// Publishes each uplink's state for `mpbond status`; `active`: whether
/// the site is busy (the counters, and so the rates, are read only then).
fn publish(shared: &Shared, lines: &[Line], now: Instant, active: bool) {
    shared
        .status
        .publish(
            lines
                .iter()
                .filter(|line| !line.retired)
                .map(|line| super::status::Seen {
                    uplink: &line.uplink,
                    addressed: line.addressed,
                    estimates: line.path.estimates(now),
                    reason: &line.last_reason,
                    changed: line.last_change,
                    endpoint: line.endpoint,
                    active,
                }),
        );
}

/// Whether a kernel event about interface `ifindex` concerns an uplink
/// whose interface has index `uplink_ifindex`: its own interface's events,
/// and for an uplink waiting for its interface every link event (one may
/// be its interface appearing; only the name tells, looked up by the
/// owner).
fn concerns(uplink_ifindex: u32, event: &LinkEvent) -> bool {
    match *event {
        LinkEvent::Link { ifindex, .. } => {
            ifindex == uplink_ifindex || uplink_ifindex == NO_INTERFACE
        }
        LinkEvent::Address { ifindex } | LinkEvent::Route { ifindex } => {
            ifindex == uplink_ifindex && ifindex != NO_INTERFACE
        }
    }
}

/// Follows one kernel event; `true` if an uplink changed.
async fn on_link_event(
    shared: &Arc<Shared>,
    system: &Handle,
    lines: &mut [Line],
    readers: &mut JoinSet<()>,
    tx: &mpsc::Sender<Report>,
    event: LinkEvent,
) -> bool {
    let mut changed = false;
    for (index, line) in lines
        .iter_mut()
        .enumerate()
        .filter(|(_, l)| !l.retired && concerns(l.uplink.ifindex, &event))
    {
        let now = Instant::now();
        match event {
            LinkEvent::Link { ifindex, usable } => {
                // The interface may have gone, appeared, or come back under
                // a new index: the owner looks its name up.
                let relinked = system.relink(index).await;
                match relinked {
                    Ok(LinkChange::Same) => {}
                    Ok(LinkChange::Gone) => {
                        close_probes(shared, index, line);
                        // The owner removed its endpoint with the rest.
                        line.endpoint = false;
                        line.uplink.ifindex = NO_INTERFACE;
                        line.carrier = false;
                        line.addressed = false;
                        line.path.set_link(now, false, false);
                        changed = true;
                        continue;
                    }
                    Ok(LinkChange::Joined(uplink)) => {
                        close_probes(shared, index, line);
                        line.endpoint = false;
                        line.addressed = !uplink.addr.is_unspecified();
                        line.uplink = uplink;
                        // An event about the old interface says nothing of
                        // the new one's carrier; its own events follow.
                        line.carrier = usable && ifindex == line.uplink.ifindex;
                        line.path.set_link(now, line.carrier, line.addressed);
                        if line.addressed {
                            line.path.readdressed(now);
                            open_probes(shared, readers, tx, index, line).await;
                        }
                        changed = true;
                        continue;
                    }
                    Err(e) => warn!(
                        uplink = %line.uplink.name,
                        interface = %line.uplink.interface,
                        error = %Chain(&e),
                        "cannot look up the uplink's interface again"
                    ),
                }
                if ifindex != line.uplink.ifindex {
                    continue;
                }
                line.carrier = usable;
                line.path.set_link(now, line.carrier, line.addressed);
                // An address that could not be routed while the interface
                // was down (a replugged modem) is taken up now.
                if usable && !line.addressed {
                    changed |= follow_address(shared, system, readers, tx, index, line).await;
                }
            }
            LinkEvent::Route { .. } => {
                let regatewayed = system.regateway(index).await;
                match regatewayed {
                    Ok(Some((old, new))) => info!(
                        uplink = %line.uplink.name,
                        interface = %line.uplink.interface,
                        old = ?old,
                        %new,
                        "the system's default gateway out of the uplink changed: its route follows"
                    ),
                    Ok(None) => {}
                    Err(e) => warn!(
                        uplink = %line.uplink.name,
                        error = %Chain(&e),
                        "cannot follow the uplink's new gateway"
                    ),
                }
            }
            LinkEvent::Address { .. } => {
                changed |= follow_address(shared, system, readers, tx, index, line).await;
            }
        }
    }
    changed
}

/// Carries out a config reload's order: through the owner for what is
/// installed, here for the probes and the verdicts, and in the datagram
/// scheduler and the join watch.
async fn on_order(
    shared: &Arc<Shared>,
    system: &Handle,
    lines: &mut Vec<Line>,
    readers: &mut JoinSet<()>,
    tx: &mpsc::Sender<Report>,
    order: UplinkOrder,
) {
    match order {
        UplinkOrder::Leave { index } => {
            let Some(line) = lines.get_mut(index).filter(|l| !l.retired) else {
                return;
            };
            close_probes(shared, index, line);
            if let Some(datagrams) = &shared.datagrams {
                datagrams.set_path(index, None);
            }
            shared.joins.observe(&line.uplink, false);
            // The owner removes the endpoint with the rest: the kernel
            // closes the uplink's subflows and tells the concentrator, so
            // running connections go on over the other uplinks.
            if let Err(e) = system.retire(index).await {
                warn!(uplink = %line.uplink.name, error = %Chain(&e), "cannot remove all that was installed for the removed uplink; the next start removes what stayed");
            }
            line.retired = true;
            line.endpoint = false;
            line.carrier = false;
            line.addressed = false;
            info!(
                uplink = %line.uplink.name,
                interface = %line.uplink.interface,
                "uplink left: removed from the config by a reload"
            );
        }
        UplinkOrder::Join { index, config } => {
            let name = config.name.clone();
            if index > lines.len() || lines.get(index).is_some_and(|l| !l.retired) {
                warn!(uplink = %name, index, "cannot add the uplink: its index is taken");
                return;
            }
            let backup = config.backup;
            let uplink = match system.join(index, config).await {
                Ok(uplink) => uplink,
                Err(e) => {
                    warn!(uplink = %name, error = %Chain(&e), "cannot add the uplink; it is not used until the client restarts");
                    return;
                }
            };
            shared.joins.set_uplink(&uplink);
            if let Some(datagrams) = &shared.datagrams {
                let settings = crate::datagram::schedule::PathSettings { backup };
                datagrams.set_path(index, Some(settings));
            }
            let mut line = Line::new(uplink, Instant::now(), false, "added by a config reload");
            while line.path.poll_event().is_some() {}
            if line.addressed {
                open_probes(shared, readers, tx, index, &mut line).await;
            }
            info!(
                uplink = %line.uplink.name,
                interface = %line.uplink.interface,
                addr = ?(line.addressed.then_some(line.uplink.addr)),
                "uplink joins: added to the config by a reload; its MPTCP endpoint follows \
                 once the line works"
            );
            match lines.get_mut(index) {
                Some(slot) => *slot = line,
                None => lines.push(line),
            }
        }
        UplinkOrder::Backup { index, backup } => {
            let Some(line) = lines.get_mut(index).filter(|l| !l.retired) else {
                return;
            };
            if let Err(e) = system.set_backup(index, backup).await {
                warn!(uplink = %line.uplink.name, error = %Chain(&e), "cannot change the uplink's backup flag");
                return;
            }
            line.uplink.backup = backup;
            line.uplink.endpoint.flags.backup = backup;
            if let Some(datagrams) = &shared.datagrams {
                let settings = crate::datagram::schedule::PathSettings { backup };
                datagrams.set_path(index, Some(settings));
            }
            info!(
                uplink = %line.uplink.name,
                backup,
                "uplink's backup flag changed by a config reload"
            );
        }
    }
}

/// Has the owner read the uplink's addresses again and follows what it
/// found; `true` if the uplink has a new address.
async fn follow_address(
    shared: &Arc<Shared>,
    system: &Handle,
    readers: &mut JoinSet<()>,
    tx: &mpsc::Sender<Report>,
    index: usize,
    line: &mut Line,
) -> bool {
    let now = Instant::now();
    let readdressed = system.readdress(index).await;
    match readdressed {
        Ok(AddressChange::Same) => false,
        Ok(AddressChange::Gone) => {
            line.addressed = false;
            line.path.set_link(now, line.carrier, false);
            false
        }
        Ok(AddressChange::New(uplink)) => {
            info!(
                uplink = %uplink.name,
                interface = %uplink.interface,
                old = %line.uplink.addr,
                new = %uplink.addr,
                "uplink has a new address: moving its MPTCP endpoint and probes to it"
            );
            if line.endpoint {
                // The old address's endpoint: its subflows go with it.
                set_endpoint(system, line, false, "its address changed").await;
            }
            line.uplink = uplink;
            line.addressed = true;
            line.path.set_link(now, line.carrier, true);
            line.path.readdressed(now);
            open_probes(shared, readers, tx, index, line).await;
            true
        }
        Err(e) => {
            warn!(
                uplink = %line.uplink.name,
                error = %Chain(&e),
                "cannot follow the uplink's address change"
            );
            false
        }
    }
}

/// Stops the uplink's probes: its interface (and so its address) is gone
/// or replaced.
fn close_probes(shared: &Shared, index: usize, line: &mut Line) {
    if let Some(datagrams) = &shared.datagrams {
        datagrams.set_socket(index, None);
    }
    if let Some(reader) = line.reader.take() {
        reader.abort();
    }
    line.generation += 1;
    line.socket = None;
}

/// Logs a verdict change: suspicion at debug level (it costs nothing and
/// happens on every hiccup), the rest at info.
fn log_event(line: &mut Line, event: &Event) {
    let uplink = &line.uplink;
    line.last_reason = event.reason.to_string();
    line.last_change = event.at;
    let limits = line.path.limits(event.at);
    if event.to == Verdict::Suspect || event.from == Verdict::Suspect {
        debug!(
            uplink = %uplink.name,
            from = %event.from,
            to = %event.to,
            why = %event.reason,
            "uplink verdict"
        );
        return;
    }
    info!(
        uplink = %uplink.name,
        interface = %uplink.interface,
        from = %event.from,
        to = %event.to,
        why = %event.reason,
        quiet_limit_ms = limits.quiet.as_millis() as u64,
        busy_limit_ms = limits.busy.as_millis() as u64,
        hold_limit_ms = limits.hold.as_millis() as u64,
        "uplink verdict"
    );
}

/// Installs or removes the uplink's MPTCP endpoint, through the owner of
/// system state.
async fn set_endpoint(system: &Handle, line: &mut Line, on: bool, why: &str) {
    let uplink = &line.uplink;
    line.endpoint = on;
    if on {
        info!(
            uplink = %uplink.name,
            interface = %uplink.interface,
            why,
            "uplink back: adding its MPTCP endpoint again so running connections get a \
             subflow on it"
        );
    } else {
        info!(
            uplink = %uplink.name,
            interface = %uplink.interface,
            why,
            "uplink down: removing its MPTCP endpoint so both ends move its traffic to the \
             other uplinks"
        );
    }
    if let Err(e) = system.set_endpoint(uplink.index, on).await {
        warn!(uplink = %uplink.name, error = %Chain(&e), "cannot change the uplink's MPTCP endpoint");
    }
}

/// Opens the uplink's probe socket on its current address and starts the
/// task that reads its answers (the old one, if any, stops).
async fn open_probes(
    shared: &Arc<Shared>,
    readers: &mut JoinSet<()>,
    tx: &mpsc::Sender<Report>,
    index: usize,
    line: &mut Line,
) {
    close_probes(shared, index, line);
    let addr = line.uplink.addr;
    let bound = tokio::net::UdpSocket::bind(SocketAddr::new(addr, 0)).await;
    let socket = match bound.and_then(UdpSocket::new) {
        Ok(socket) => Arc::new(socket),
        Err(e) => {
            warn!(uplink = %line.uplink.name, %addr, error = %e, "cannot open a probe socket; this uplink is judged by its carrier alone");
            return;
        }
    };
    line.socket = Some(socket.clone());
    if let Some(datagrams) = &shared.datagrams {
        if let Err(e) = crate::sys::allow_fragments(&*socket, addr.is_ipv6()) {
            debug!(uplink = %line.uplink.name, error = %e, "cannot allow fragments on the uplink's socket; large datagrams may be refused");
        }
        if let Err(e) = crate::sys::set_datagram_buffers(&*socket, UPLINK_SOCKET_BUFFER) {
            debug!(uplink = %line.uplink.name, error = %e, "cannot enlarge the uplink socket's buffers; bursts may be dropped");
        }
        datagrams.set_socket(index, Some(socket.clone()));
    }
    let reader = Reader {
        shared: shared.clone(),
        index,
        generation: line.generation,
        socket,
        tx: tx.clone(),
    };
    line.reader = Some(readers.spawn(reader.run()));
}

/// Sends probe `seq` over uplink `index`: sealed in the datagram tunnel's
/// session while it is fresh, else as a plain authenticated probe. A
/// failure (the line is down, the socket buffer full) shows as silence.
fn send_probe(shared: &Shared, index: usize, line: &Line, seq: u64) {
    let Some(socket) = &line.socket else { return };
    if let Some(datagrams) = &shared.datagrams {
        if let Some(sealed) = datagrams.seal_probe(index, seq) {
            if let Err(e) = socket.try_send_to(&sealed, datagrams.concentrator) {
                debug!(uplink = %line.uplink.name, error = %e, "probe not sent");
            }
            return;
        }
    }
    let tunnels = &shared.tunnels;
    let request = Probe {
        kind: Kind::Request,
        client_id: tunnels.id.clone(),
        seq,
        sent_ms: tunnels.clock.stamp_probe(index, seq),
    };
    let bytes = request.encode(&auth::sign_probe(&tunnels.key, &request.body()));
    if let Err(e) = socket.try_send_to(&bytes, tunnels.concentrator) {
        debug!(uplink = %line.uplink.name, error = %e, "probe not sent");
    }
}

/// One uplink's answer reader.
struct Reader {
    shared: Arc<Shared>,
    index: usize,
    generation: u64,
    socket: Arc<UdpSocket>,
    tx: mpsc::Sender<Report>,
}

impl Reader {
    /// Passes each answer on, stamped with its arrival time, if it comes
    /// from the concentrator and verifies with this client's key; anything
    /// else is dropped. Datagrams of the tunnel are handled a receive at a
    /// time (at most [`udp::RECV_MESSAGES`] messages), under one lock:
    /// answers are reported first, then what to send goes out, then the
    /// packets go to the TUN.
    async fn run(self) {
        let tunnels = &self.shared.tunnels;
        let datagram_port = self.shared.datagrams.as_ref().map(|d| d.concentrator);
        let mut batch = udp::RecvBatch::new();
        let mut tunnelled = Vec::new();
        let mut packets = Vec::new();
        let mut answers = Vec::new();
        let mut sends = Vec::new();
        loop {
            if self.socket.recv(&mut batch).await.is_err() {
                continue;
            }
            let at = Instant::now();
            tunnelled.clear();
            for (from, range) in batch.datagrams() {
                if from != tunnels.concentrator && Some(from) != datagram_port {
                    continue;
                }
                let Some(datagram) = batch.bytes().get(range.clone()) else {
                    continue;
                };
                if !datagram.starts_with(&MAGIC) {
                    tunnelled.push(range);
                    continue;
                }
                let Ok((reply, body, mac)) =
                    Probe::decode(&datagram[..datagram.len().min(MAX_LEN + 1)])
                else {
                    continue;
                };
                if reply.kind == Kind::Request
                    || reply.client_id != tunnels.id
                    || !auth::verify_probe(&tunnels.key, body, &mac)
                {
                    continue;
                }
                // Refused for its timestamp, but answered: the line works,
                // and the concentrator's clock corrects ours.
                if let Kind::Clock { concentrator_ms } = reply.kind {
                    tunnels.clock.probe_answer(
                        self.index,
                        reply.seq,
                        reply.sent_ms,
                        concentrator_ms,
                        at,
                    );
                }
                answers.push(reply.seq);
            }
            let datagrams = self.shared.datagrams.as_ref();
            if let Some(datagrams) = datagrams.filter(|_| !tunnelled.is_empty()) {
                datagrams.on_datagrams(
                    self.index,
                    batch.bytes_mut(),
                    &tunnelled,
                    &mut packets,
                    &mut answers,
                    &mut sends,
                );
            }
            for seq in answers.drain(..) {
                let report = Report::Answer {
                    index: self.index,
                    generation: self.generation,
                    seq,
                    at,
                };
                if self.tx.send(report).await.is_err() {
                    return;
                }
            }
            let Some(datagrams) = datagrams else { continue };
            super::datagram::send(datagrams.concentrator, std::mem::take(&mut sends));
            // A flow's run of datagrams as one super-packet.
            let (failed, error) = self.shared.tun.write_batch(batch.bytes(), &packets);
            if let Some(e) = error {
                debug!(error = %e, failed, "writing datagrams to the TUN failed");
            }
            packets.clear();
        }
    }
}

/// Points new tunnels at the best uplink now.
fn repick_source(shared: &Shared, lines: &[Line]) {
    let lines = || lines.iter().filter(|l| !l.retired);
    let candidates: Vec<Candidate<'_>> = lines()
        .map(|l| Candidate {
            uplink: &l.uplink,
            rank: shared.joins.rank(
                l.uplink.index,
                l.path.verdict().rank().filter(|_| l.addressed),
            ),
            rtt: l.path.srtt(),
        })
        .collect();
    let current = shared.tunnels.source();
    let source = pick_source(&candidates, current);
    let live = lines()
        .filter(|l| l.addressed && l.path.verdict().rank().is_some())
        .map(|l| l.uplink.addr)
        .collect();
    if shared.tunnels.set_paths(Paths { source, live }) {
        let rtts: Vec<String> = candidates
            .iter()
            .map(|c| format!("{}={:?}", c.uplink.name, c.rtt))
            .collect();
        info!(source = ?source, rtts = ?rtts, "new tunnels start from this address");
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
                thread::sleep(EVENT_POLL);
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

    #[test]
    fn an_uplink_hears_its_interfaces_events_and_a_waiting_one_every_link_event() {
        let link = |ifindex| LinkEvent::Link {
            ifindex,
            usable: true,
        };
        // Present on interface 4: its own events only.
        assert!(concerns(4, &link(4)));
        assert!(!concerns(4, &link(5)));
        assert!(concerns(4, &LinkEvent::Address { ifindex: 4 }));
        assert!(!concerns(4, &LinkEvent::Route { ifindex: 5 }));
        // Waiting for its interface: any new link may be it (the owner
        // looks the name up); addresses and routes wait until it is there.
        assert!(concerns(NO_INTERFACE, &link(9)));
        assert!(!concerns(NO_INTERFACE, &LinkEvent::Address { ifindex: 9 }));
        assert!(!concerns(NO_INTERFACE, &LinkEvent::Route { ifindex: 0 }));
        // After a replug the old index's late events are no longer its.
        assert!(!concerns(12, &LinkEvent::Address { ifindex: 4 }));
    }

    #[test]
    fn new_tunnels_start_on_a_usable_uplink_preferring_non_backup() {
        let dsl = uplink("dsl", "10.77.1.2", false);
        let lte = uplink("lte", "10.77.2.2", false);
        let sat = uplink("sat", "10.77.3.2", true);
        let c = |uplink, usable: bool| Candidate {
            uplink,
            rank: usable.then_some(0),
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
            rank: Some(0),
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
    fn new_tunnels_prefer_a_settled_line_over_one_on_probation() {
        let dsl = uplink("dsl", "10.77.1.2", false);
        let lte = uplink("lte", "10.77.2.2", false);
        let ms = |n| Some(Duration::from_millis(n));
        let c = |uplink, verdict: Verdict, rtt| Candidate {
            uplink,
            rank: verdict.rank(),
            rtt,
        };
        // A faster line that just came back waits; a suspect one counts
        // as usable.
        let pick = |lte_verdict| {
            pick_source(
                &[
                    c(&dsl, Verdict::Usable, ms(80)),
                    c(&lte, lte_verdict, ms(20)),
                ],
                Some(dsl.addr),
            )
        };
        assert_eq!(pick(Verdict::Back), Some(dsl.addr));
        assert_eq!(pick(Verdict::Suspect), Some(lte.addr));
        assert_eq!(pick(Verdict::Dead), Some(dsl.addr));
        assert_eq!(
            pick_source(
                &[
                    c(&dsl, Verdict::Dead, ms(20)),
                    c(&lte, Verdict::Back, ms(80))
                ],
                None
            ),
            Some(lte.addr)
        );
    }
}
