//! What `mpbond status` and the metrics show of the client: uplink health
//! publishes each uplink's verdict and estimates here (a few times a
//! second, off the data path); a request adds the interfaces' counters,
//! the flow table's size and the datagram tunnel's state, read then.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::debug;

use super::system::Uplink;
use super::Shared;
use crate::chain::Chain;
use crate::config::ClientConfig;
use crate::control::history::{History, StateChange};
use crate::control::snapshot::{self, ClientStatus, Status, UplinkStatus};
use crate::control::Provider;
use crate::path::{Estimates, Event};
use crate::sys::Rtnl;

/// How often health publishes while nothing changes.
pub(super) const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// One uplink as health last published it.
#[derive(Debug, Clone)]
pub(super) struct Published {
    /// The uplink's index (its datagram path's).
    index: usize,
    /// Its interface's index (for the counters), if it has one.
    ifindex: Option<u32>,
    status: UplinkStatus,
}

/// The uplinks as health last published them, in config order.
#[derive(Debug, Default)]
pub(super) struct Board {
    uplinks: Mutex<Vec<Published>>,
    history: Arc<History>,
}

/// What health knows of one uplink, for [`Board::publish`].
pub(super) struct Seen<'a> {
    pub(super) uplink: &'a Uplink,
    pub(super) addressed: bool,
    pub(super) estimates: Estimates,
    pub(super) reason: &'a str,
    pub(super) changed: Instant,
    pub(super) endpoint: bool,
    /// Whether the site is busy: the path core measures rates only then,
    /// and keeps the last one while idle.
    pub(super) active: bool,
}

impl Board {
    fn lock(&self) -> MutexGuard<'_, Vec<Published>> {
        self.uplinks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The history the status page reads.
    pub(super) fn history(&self) -> Arc<History> {
        Arc::clone(&self.history)
    }

    /// Uplink `uplink`'s verdict changed.
    pub(super) fn changed(&self, uplink: &str, event: &Event) {
        self.history.changed(StateChange {
            unix: snapshot::unix_at(event.at),
            uplink: uplink.to_owned(),
            from: event.from.as_str().to_owned(),
            to: event.to.as_str().to_owned(),
            reason: event.reason.to_string(),
        });
    }

    /// Health's view of every uplink now.
    pub(super) fn publish<'a>(&self, seen: impl Iterator<Item = Seen<'a>>) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let published: Vec<Published> = seen
            .map(|s| Published {
                index: s.uplink.index,
                ifindex: (s.uplink.ifindex != super::system::NO_INTERFACE)
                    .then_some(s.uplink.ifindex),
                status: UplinkStatus {
                    name: s.uplink.name.clone(),
                    interface: s.uplink.interface.clone(),
                    address: s.addressed.then(|| s.uplink.addr.to_string()),
                    backup: s.uplink.backup,
                    state: s.estimates.verdict.as_str().to_owned(),
                    reason: s.reason.to_owned(),
                    changed_unix: snapshot::unix_at(s.changed),
                    state_changes: s.estimates.changes,
                    endpoint: s.endpoint,
                    rtt_ms: s.estimates.srtt.map(ms),
                    min_rtt_ms: s.estimates.min_rtt.map(ms),
                    loss: s.estimates.loss,
                    rx_bytes: None,
                    tx_bytes: None,
                    rx_bytes_per_sec: if s.active {
                        s.estimates.rx_bytes_per_sec
                    } else {
                        0
                    },
                    tx_bytes_per_sec: if s.active {
                        s.estimates.tx_bytes_per_sec
                    } else {
                        0
                    },
                    datagram: None,
                },
            })
            .collect();
        self.history
            .offer(snapshot::unix_now(), published.iter().map(|p| &p.status));
        *self.lock() = published;
    }
}

/// The client's snapshot builder: health's last word on the uplinks, plus
/// what is read on request.
pub(super) fn provider(shared: &Arc<Shared>, config: &ClientConfig, path: &Path) -> Provider {
    let shared = Arc::clone(shared);
    let started = snapshot::unix_now();
    let config_path = path.display().to_string();
    let id = config.id.to_string();
    let concentrator = config.concentrator.to_string();
    // Opened once; a request that finds it unusable goes without counters.
    let rtnl = Mutex::new(Rtnl::open().map_err(|e| {
        debug!(error = %Chain(&e), "cannot read interface counters for the status");
    }));
    Arc::new(move || {
        let mut uplinks: Vec<Published> = shared.status.lock().clone();
        if let Ok(rtnl) = &*rtnl.lock().unwrap_or_else(|e| e.into_inner()) {
            for u in uplinks.iter_mut() {
                let Some(ifindex) = u.ifindex else { continue };
                if let Ok(Some(stats)) = rtnl.link_stats(ifindex) {
                    u.status.rx_bytes = Some(stats.rx_bytes);
                    u.status.tx_bytes = Some(stats.tx_bytes);
                }
            }
        }
        let datagram = shared.datagrams.as_ref().map(|d| d.status());
        if let Some((_, paths)) = &datagram {
            // By index: a reload may have left vacant ones between them.
            for u in uplinks.iter_mut() {
                u.status.datagram = paths.get(u.index).copied();
            }
        }
        let uplinks: Vec<UplinkStatus> = uplinks.into_iter().map(|u| u.status).collect();
        let relayed = {
            let mut flows = shared.flows();
            while flows.try_join_next().is_some() {}
            flows.len() as u64
        };
        Status {
            client: Some(ClientStatus {
                id: id.clone(),
                concentrator: concentrator.clone(),
                uplinks,
                flows: shared.table().len() as u64,
                relayed,
                source: shared.tunnels.source().map(|a| a.to_string()),
                datagram: datagram.map(|(tunnel, _)| tunnel),
            }),
            ..Status::of_this_process("client", &config_path, started)
        }
    })
}
