//! Uplink health: the kernel's link events, and a probe to the
//! concentrator over each uplink every 30 ms while the site has flows (every
//! second when idle; an authenticated UDP echo, [`crate::wire::probe`]). When an uplink loses its carrier (or is set
//! down, or deleted), or its probes go unanswered for 300 ms (a blackholed
//! line keeps its carrier), its MPTCP endpoint is removed: the kernel closes the subflows on it and tells the
//! concentrator (RM_ADDR), which re-sends what was in flight there over the
//! other uplinks at once instead of waiting for retransmission timeouts.
//! When it comes back the endpoint is added again, so running connections
//! get a fresh subflow on it (the kernel never re-creates a subflow a link
//! flap closed). New tunnels start on a usable uplink: there is no master.
//!
//! Not yet: address changes, gateways, data-driven detection from the
//! subflows' own progress. An uplink whose probes were never answered (a
//! concentrator without the echo, or a line dead from the start) is judged
//! by its carrier alone.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::uplinks::Uplink;
use super::{ClientError, Shared};
use crate::auth;
use crate::sys::{LinkEvent, LinkEvents, MptcpPm};
use crate::wire::probe::{Kind, Probe, MAX_LEN};

/// How long the event thread blocks before checking whether it should end.
const POLL: Duration = Duration::from_millis(500);

/// Time between probes on each uplink while the site has flows.
const PROBE_EVERY: Duration = Duration::from_millis(30);

/// An uplink whose probes went unanswered this long (counted from the
/// first unanswered one) is not used, while the site has flows. Ten probes:
/// 0.5 % random loss never loses ten in a row in practice, a full 100 ms
/// queue delays them by a third of it.
const DEAD_AFTER: Duration = Duration::from_millis(300);

/// Time between probes, and the silence that makes an uplink dead, while
/// the site is idle: a 4G line is often metered, and 30 ms probes would
/// cost about 8 GB a month each way.
const IDLE_PROBE_EVERY: Duration = Duration::from_secs(1);
const IDLE_DEAD_AFTER: Duration = Duration::from_millis(3500);

/// What the watcher hears.
#[derive(Debug)]
enum Report {
    /// The kernel's link events.
    Links(Vec<LinkEvent>),
    /// Uplink `index`'s probes started or stopped being answered.
    Probes { index: usize, answered: bool },
}

/// An uplink and what is known of it.
#[derive(Debug)]
struct State {
    uplink: Uplink,
    /// Link up with carrier.
    carrier: bool,
    /// Probes answered (or never answered at all: no verdict).
    answered: bool,
    /// What the endpoint reflects: `carrier && answered`.
    usable: bool,
}

/// The source address new tunnels bind to: the first usable non-backup
/// uplink, else the first usable backup, else none (the kernel picks).
pub(super) fn pick_source<'a>(
    uplinks: impl Iterator<Item = (&'a Uplink, bool)> + Clone,
) -> Option<IpAddr> {
    let usable = uplinks.filter(|(_, usable)| *usable).map(|(u, _)| u);
    usable
        .clone()
        .find(|u| !u.backup)
        .or_else(|| usable.clone().next())
        .map(|u| u.addr)
}

/// Watches the uplinks' links until the client stops; never returns
/// otherwise (a failure to watch is logged and leaves the uplinks as they
/// are).
pub(super) async fn watch(shared: Arc<Shared>, uplinks: Vec<Uplink>) -> Result<(), ClientError> {
    let (tx, mut rx) = mpsc::channel::<Report>(64);
    let link_tx = tx.clone();
    let reader = thread::Builder::new()
        .name("mpbond-links".into())
        .spawn(move || read_events(link_tx));
    if let Err(e) = reader {
        warn!(error = %e, "cannot start the link watcher; carrier loss goes unnoticed");
    }
    let pm = match MptcpPm::open() {
        Ok(pm) => pm,
        Err(e) => {
            warn!(error = %e, "cannot open the MPTCP path manager; uplink outages go unnoticed");
            return std::future::pending().await;
        }
    };
    // Dropped (and so stopped) with this task.
    let mut probes = JoinSet::new();
    for (index, uplink) in uplinks.iter().enumerate() {
        probes.spawn(probe(shared.clone(), index, uplink.addr, tx.clone()));
    }
    drop(tx);
    let mut states: Vec<State> = uplinks
        .into_iter()
        .map(|uplink| State {
            uplink,
            carrier: true,
            answered: true,
            usable: true,
        })
        .collect();
    while let Some(report) = rx.recv().await {
        let mut changed = false;
        match report {
            Report::Links(events) => {
                for event in events {
                    for state in states
                        .iter_mut()
                        .filter(|s| s.uplink.ifindex == event.ifindex)
                    {
                        state.carrier = event.usable;
                        changed |= update(&pm, state, "link");
                    }
                }
            }
            Report::Probes { index, answered } => {
                if let Some(state) = states.get_mut(index) {
                    state.answered = answered;
                    changed |= update(&pm, state, "probes");
                }
            }
        }
        if changed {
            let source = pick_source(states.iter().map(|s| (&s.uplink, s.usable)));
            if shared.tunnels.set_source(source) {
                info!(source = ?source, "new tunnels start from this address");
            }
        }
    }
    std::future::pending().await
}

/// Brings the endpoint in line with what is known; `true` if it changed.
fn update(pm: &MptcpPm, state: &mut State, heard_from: &str) -> bool {
    let usable = state.carrier && state.answered;
    if usable == state.usable {
        return false;
    }
    state.usable = usable;
    let why = match (state.carrier, state.answered) {
        (true, true) => "link up with carrier and probes answered",
        (false, _) => "no carrier, down or gone",
        (true, false) => "probes unanswered for 300 ms: blackholed?",
    };
    debug!(uplink = %state.uplink.name, heard_from, "uplink state changed");
    apply(pm, state, why);
    true
}

/// Probes the concentrator from `addr` (uplink `index`) every
/// [`PROBE_EVERY`] and reports when answers stop or start again.
async fn probe(shared: Arc<Shared>, index: usize, addr: IpAddr, tx: mpsc::Sender<Report>) {
    let tunnels = &shared.tunnels;
    let concentrator: SocketAddr = tunnels.concentrator;
    let socket = match UdpSocket::bind(SocketAddr::new(addr, 0)).await {
        Ok(socket) => socket,
        Err(e) => {
            warn!(%addr, error = %e, "cannot open a probe socket; this uplink is judged by its carrier alone");
            return;
        }
    };
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut buf = vec![0; MAX_LEN + 1];
    let mut seq = 0u64;
    // No verdict before the first answer; silence counts from the first
    // probe sent after the last answer.
    let (mut ever_answered, mut answered) = (false, true);
    let (mut last_sent, mut waiting_since) = (None::<Instant>, None::<Instant>);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let active = !shared.table().is_empty() || tunnels.warm.active();
                let (every, dead_after) = if active {
                    (PROBE_EVERY, DEAD_AFTER)
                } else {
                    (IDLE_PROBE_EVERY, IDLE_DEAD_AFTER)
                };
                // Ticks come a little early or late; half a tick of slack
                // keeps the active rate at one probe per tick.
                if last_sent.is_none_or(|at| at.elapsed() + PROBE_EVERY / 2 >= every) {
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
                    let now = Instant::now();
                    last_sent = Some(now);
                    waiting_since.get_or_insert(now);
                }
                let silent = waiting_since.is_some_and(|at| at.elapsed() >= dead_after);
                if ever_answered && answered && silent {
                    answered = false;
                    if tx.send(Report::Probes { index, answered }).await.is_err() {
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
                ever_answered = true;
                waiting_since = None;
                if !answered {
                    answered = true;
                    if tx.send(Report::Probes { index, answered }).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

fn apply(pm: &MptcpPm, state: &State, why: &str) {
    let uplink = &state.uplink;
    let id = uplink.endpoint.id;
    if state.usable {
        info!(
            uplink = %uplink.name,
            interface = %uplink.interface,
            why,
            "uplink back: adding its MPTCP endpoint again so running connections get a \
             subflow on it"
        );
        match pm.add_endpoint(&uplink.endpoint) {
            Ok(()) => {}
            Err(e) if e.is_already_exists() => debug!(id, "endpoint already there"),
            Err(e) => warn!(uplink = %uplink.name, error = %e, "cannot add the endpoint back"),
        }
    } else {
        info!(
            uplink = %uplink.name,
            interface = %uplink.interface,
            why,
            "uplink down: removing its MPTCP endpoint so both ends move its traffic to the \
             other uplinks"
        );
        match pm.del_endpoint(id) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => debug!(id, "endpoint already gone"),
            Err(e) => warn!(uplink = %uplink.name, error = %e, "cannot remove the endpoint"),
        }
    }
}

/// Reads link events and passes them on until the receiver is gone.
fn read_events(tx: mpsc::Sender<Report>) {
    let mut events = match LinkEvents::open(POLL) {
        Ok(events) => events,
        Err(e) => {
            warn!(error = %e, "cannot subscribe to link events; uplink outages go unnoticed");
            return;
        }
    };
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
    fn new_tunnels_start_on_a_usable_uplink_preferring_non_backup() {
        let dsl = uplink("dsl", "10.77.1.2", false);
        let lte = uplink("lte", "10.77.2.2", false);
        let sat = uplink("sat", "10.77.3.2", true);
        let pick = |states: &[(&Uplink, bool)]| pick_source(states.iter().copied());
        assert_eq!(pick(&[(&dsl, true), (&lte, true)]), Some(dsl.addr));
        assert_eq!(pick(&[(&dsl, false), (&lte, true)]), Some(lte.addr));
        assert_eq!(
            pick(&[(&sat, true), (&dsl, false), (&lte, true)]),
            Some(lte.addr)
        );
        assert_eq!(pick(&[(&sat, true), (&dsl, false)]), Some(sat.addr));
        assert_eq!(pick(&[(&sat, false), (&dsl, false)]), None);
    }
}
