//! Uplink health, first step: the kernel's link events. When an uplink
//! loses its carrier (or is set down, or deleted), its MPTCP endpoint is
//! removed: the kernel closes the subflows on it and tells the
//! concentrator (RM_ADDR), which re-sends what was in flight there over the
//! other uplinks at once instead of waiting for retransmission timeouts.
//! When it comes back the endpoint is added again, so running connections
//! get a fresh subflow on it (the kernel never re-creates a subflow a link
//! flap closed). New tunnels start on a usable uplink: there is no master.
//!
//! Not yet: active probes (a blackholed line keeps its carrier), address
//! changes, gateways.

use std::net::IpAddr;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::uplinks::Uplink;
use super::{ClientError, Shared};
use crate::sys::{LinkEvent, LinkEvents, MptcpPm};

/// How long the event thread blocks before checking whether it should end.
const POLL: Duration = Duration::from_millis(500);

/// An uplink and whether it can carry traffic now.
#[derive(Debug)]
struct State {
    uplink: Uplink,
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
    let (tx, mut rx) = mpsc::channel::<Vec<LinkEvent>>(64);
    let reader = thread::Builder::new()
        .name("mpbond-links".into())
        .spawn(move || read_events(tx));
    if let Err(e) = reader {
        warn!(error = %e, "cannot start the link watcher; uplink outages go unnoticed");
        return std::future::pending().await;
    }
    let pm = match MptcpPm::open() {
        Ok(pm) => pm,
        Err(e) => {
            warn!(error = %e, "cannot open the MPTCP path manager; uplink outages go unnoticed");
            return std::future::pending().await;
        }
    };
    let mut states: Vec<State> = uplinks
        .into_iter()
        .map(|uplink| State {
            uplink,
            usable: true,
        })
        .collect();
    while let Some(events) = rx.recv().await {
        let mut changed = false;
        for event in events {
            for state in states
                .iter_mut()
                .filter(|s| s.uplink.ifindex == event.ifindex)
            {
                if state.usable == event.usable {
                    continue;
                }
                state.usable = event.usable;
                changed = true;
                apply(&pm, state);
            }
        }
        if changed {
            let source = pick_source(states.iter().map(|s| (&s.uplink, s.usable)));
            shared.tunnels.set_source(source);
            info!(source = ?source, "new tunnels start from this address");
        }
    }
    // The reader only ends if it cannot read events at all.
    std::future::pending().await
}

fn apply(pm: &MptcpPm, state: &State) {
    let uplink = &state.uplink;
    let id = uplink.endpoint.id;
    if state.usable {
        info!(
            uplink = %uplink.name,
            interface = %uplink.interface,
            "uplink back (link up with carrier): adding its MPTCP endpoint again so running \
             connections get a subflow on it"
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
            "uplink down (no carrier, down or gone): removing its MPTCP endpoint so both ends \
             move its traffic to the other uplinks"
        );
        match pm.del_endpoint(id) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => debug!(id, "endpoint already gone"),
            Err(e) => warn!(uplink = %uplink.name, error = %e, "cannot remove the endpoint"),
        }
    }
}

/// Reads link events and passes them on until the receiver is gone.
fn read_events(tx: mpsc::Sender<Vec<LinkEvent>>) {
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
                if tx.blocking_send(batch).is_err() {
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
