//! What `mpbond status` and the metrics show of the concentrator: the
//! counters it keeps for that (atomics, bumped once per connection and,
//! for bytes, once per relay write), and
//! the snapshot built on request from them, the clients' connection slots
//! and the datagram tunnel.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use super::accept::Rejected;
use super::Shared;
use crate::config::ConcentratorConfig;
use crate::control::snapshot::{self, ClientEntry, ConcentratorStatus, Status};
use crate::control::Provider;
use crate::wire::convert::ClientId;

/// Why peers were rejected, as the status names them (one counter each).
pub(super) const REASONS: [&str; 10] = [
    "timeout",
    "closed",
    "evicted",
    "read_error",
    "malformed",
    "unknown_client",
    "bad_mac",
    "replay",
    "stale_epoch",
    "stale_clock",
];

/// The index in [`REASONS`] of why `rejected` was.
fn reason(rejected: &Rejected) -> usize {
    match rejected {
        Rejected::Timeout(_) => 0,
        Rejected::Closed { .. } => 1,
        Rejected::Evicted => 2,
        Rejected::Read(_) => 3,
        Rejected::Malformed(_) => 4,
        Rejected::UnknownClient(_) => 5,
        Rejected::BadMac(_) => 6,
        Rejected::Replay { .. } => 7,
        Rejected::StaleEpoch { .. } => 8,
        Rejected::StaleClock { .. } => 9,
    }
}

/// One client's counters.
#[derive(Debug, Default)]
pub(super) struct ClientCounters {
    admitted: AtomicU64,
    refused: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
}

impl ClientCounters {
    /// A request was admitted.
    pub(super) fn admitted(&self) {
        self.admitted.fetch_add(1, Ordering::Relaxed);
    }

    /// A request was refused (policy, limits, the destination).
    pub(super) fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// The byte counters the relay adds to as it writes: (up, down).
    pub(super) fn meters(&self) -> (&AtomicU64, &AtomicU64) {
        (&self.up, &self.down)
    }
}

/// The concentrator's counters for the status.
#[derive(Debug)]
pub(super) struct Stats {
    rejected: [AtomicU64; REASONS.len()],
    clients: RwLock<HashMap<ClientId, Arc<ClientCounters>>>,
}

impl Stats {
    /// Counters for the clients of `config`.
    pub(super) fn new(config: &ConcentratorConfig) -> Self {
        let stats = Self {
            rejected: Default::default(),
            clients: RwLock::default(),
        };
        stats.reload(config);
        stats
    }

    /// A reload: counters for the clients of `config`; those of clients
    /// still there go on, those of clients removed go.
    pub(super) fn reload(&self, config: &ConcentratorConfig) {
        let mut clients = self.clients.write().unwrap_or_else(PoisonError::into_inner);
        let mut old = std::mem::take(&mut *clients);
        for c in &config.clients {
            let counters = old.remove(&c.id).unwrap_or_default();
            clients.insert(c.id.clone(), counters);
        }
    }

    /// A peer was rejected.
    pub(super) fn rejected(&self, rejected: &Rejected) {
        if let Some(counter) = self.rejected.get(reason(rejected)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Client `id`'s counters.
    pub(super) fn client(&self, id: &ClientId) -> Option<Arc<ClientCounters>> {
        self.clients
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }
}

/// The concentrator's snapshot builder.
pub(super) fn provider(shared: &Arc<Shared>, path: &Path, multipath: bool) -> Provider {
    let shared = Arc::clone(shared);
    let started = snapshot::unix_now();
    let config_path = path.display().to_string();
    Arc::new(move || {
        let config = shared.config();
        let listen = config.listen.to_string();
        // The clients in config order, with their tunnel addresses.
        let clients: Vec<(ClientId, Vec<String>)> = config
            .clients
            .iter()
            .map(|c| {
                let addresses = c.tunnel.map_or_else(Vec::new, |t| {
                    std::iter::once(t.v4.to_string())
                        .chain(t.v6.map(|v6| v6.to_string()))
                        .collect()
                });
                (c.id.clone(), addresses)
            })
            .collect();
        let tunnels = shared
            .datagrams
            .as_ref()
            .map(|d| d.status())
            .unwrap_or_default();
        let mut total = 0;
        let entries = clients
            .iter()
            .map(|(id, addresses)| {
                let client = shared.clients.client(id);
                let open = client.as_ref().map_or(0, |c| c.open_connections() as u64);
                total += open;
                let counters = shared.stats.client(id);
                let get = |f: fn(&ClientCounters) -> &AtomicU64| {
                    counters
                        .as_deref()
                        .map_or(0, |c| f(c).load(Ordering::Relaxed))
                };
                ClientEntry {
                    id: id.to_string(),
                    tunnel_addresses: addresses.clone(),
                    connections: open,
                    max_connections: client.as_ref().map_or(0, |c| c.max_connections() as u64),
                    connections_total: get(|c| &c.admitted),
                    refused: get(|c| &c.refused),
                    up_bytes: get(|c| &c.up),
                    down_bytes: get(|c| &c.down),
                    datagram: tunnels.get(id).cloned(),
                }
            })
            .collect();
        let rejected: BTreeMap<String, u64> = REASONS
            .iter()
            .zip(shared.stats.rejected.iter())
            .map(|(why, n)| ((*why).to_owned(), n.load(Ordering::Relaxed)))
            .collect();
        Status {
            concentrator: Some(ConcentratorStatus {
                listen,
                multipath,
                connections: total,
                connection_limit: shared.slots.limit() as u64,
                handshakes: shared.handshakes.len() as u64,
                clients: entries,
                rejected,
            }),
            ..Status::of_this_process("concentrator", &config_path, started)
        }
    })
}
