//! A daemon's state as `mpbond status`, `--json` and the metrics see it.
//!
//! The daemons fill these types when asked (the control socket's request,
//! a scrape), from the state they keep anyway: the path core's estimates,
//! the interfaces' counters, the flow table, the tunnel's session. This is
//! also the JSON document `mpbond status --json` prints (one [`Status`]
//! per daemon, in a list): fields are only ever added, and
//! [`Status::version`] changes if one ever changes meaning.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The version of the JSON document; bumped only when a field changes
/// meaning or goes (new fields do not bump it).
pub const VERSION: u32 = 1;

/// One daemon's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// [`VERSION`].
    pub version: u32,
    /// `"client"` or `"concentrator"`.
    pub role: String,
    /// The config file the daemon runs with.
    pub config: String,
    /// The control socket it answered on.
    #[serde(default)]
    pub socket: String,
    /// Its process id.
    pub pid: u32,
    /// The mpbond version it runs.
    pub mpbond_version: String,
    /// When it started, in seconds since 1970.
    pub started_unix: f64,
    /// When this snapshot was taken, in seconds since 1970.
    pub now_unix: f64,
    /// The client's state (`role` is `"client"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientStatus>,
    /// The concentrator's state (`role` is `"concentrator"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concentrator: Option<ConcentratorStatus>,
}

impl Status {
    /// This process's status as `role` (`"client"` or `"concentrator"`),
    /// running with the config at `config` since `started_unix`, taken now;
    /// neither end's state filled in yet.
    pub fn of_this_process(role: &str, config: &str, started_unix: f64) -> Self {
        Self {
            version: VERSION,
            role: role.to_owned(),
            config: config.to_owned(),
            socket: String::new(),
            pid: std::process::id(),
            mpbond_version: env!("CARGO_PKG_VERSION").to_owned(),
            started_unix,
            now_unix: unix_now(),
            client: None,
            concentrator: None,
        }
    }
}

/// A client's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientStatus {
    /// Its id at the concentrator.
    pub id: String,
    /// The concentrator's address and port.
    pub concentrator: String,
    /// The uplinks, in config order.
    pub uplinks: Vec<UplinkStatus>,
    /// TCP flows from the LAN in the flow table.
    pub flows: u64,
    /// Relayed connections (one MPTCP connection to the concentrator each).
    pub relayed: u64,
    /// The address new tunnels start from (the best uplink's), if any.
    pub source: Option<String>,
    /// The datagram tunnel; absent when it is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datagram: Option<TunnelStatus>,
}

/// One uplink as the client sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UplinkStatus {
    /// Its name in the config.
    pub name: String,
    /// Its interface.
    pub interface: String,
    /// Its address; absent while it has none (or no interface).
    pub address: Option<String>,
    /// Whether it is a backup line.
    pub backup: bool,
    /// The path core's verdict: `"usable"`, `"suspect"`, `"dead"` or
    /// `"back"`.
    pub state: String,
    /// Why the verdict last changed (`"start"` before any change).
    pub reason: String,
    /// When it last changed, in seconds since 1970 (the start before any
    /// change).
    pub changed_unix: f64,
    /// Verdict changes since start.
    pub state_changes: u64,
    /// Whether its MPTCP endpoint is installed (its subflows in use).
    pub endpoint: bool,
    /// Smoothed probe round trip, in milliseconds; absent before the first
    /// answer.
    pub rtt_ms: Option<f64>,
    /// The smallest recent round trip, in milliseconds.
    pub min_rtt_ms: Option<f64>,
    /// Fraction of recent probes unanswered (0 to 1).
    pub loss: f64,
    /// Bytes the interface received since it came up (all its traffic);
    /// absent when its counters cannot be read.
    pub rx_bytes: Option<u64>,
    /// Bytes the interface sent.
    pub tx_bytes: Option<u64>,
    /// Receive rate, bytes per second (measured while the site is busy;
    /// 0 while it is idle).
    pub rx_bytes_per_sec: u64,
    /// Send rate, bytes per second.
    pub tx_bytes_per_sec: u64,
    /// The datagram tunnel's packets on this uplink; absent when the
    /// tunnel is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datagram: Option<PathCounters>,
}

/// Datagram tunnel traffic on one path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathCounters {
    /// Sealed datagrams sent (data packets, not probes or keepalives).
    pub tx_packets: u64,
    /// Their inner (IP packet) bytes.
    pub tx_bytes: u64,
    /// Data datagrams received and opened.
    pub rx_packets: u64,
    /// Their inner bytes.
    pub rx_bytes: u64,
}

/// The datagram tunnel's session at the client.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TunnelStatus {
    /// Whether a session is up to send with.
    pub session: bool,
    /// When the current session's handshake completed, in seconds since
    /// 1970; absent without one.
    pub last_handshake_unix: Option<f64>,
    /// The tunnel's MTU (largest IP packet carried whole).
    pub mtu: u64,
    /// The session's data cipher (`aes-256-gcm`, `chacha20-poly1305`);
    /// absent without a session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher: Option<String>,
}

/// A concentrator's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConcentratorStatus {
    /// The MPTCP listener's address.
    pub listen: String,
    /// Whether the listener is MPTCP (else plain TCP: the kernel refused).
    pub multipath: bool,
    /// Connections open, all clients together.
    pub connections: u64,
    /// Connections the open-file limit carries, all clients together.
    pub connection_limit: u64,
    /// Connections accepted and not yet authenticated.
    pub handshakes: u64,
    /// The configured clients, by id.
    pub clients: Vec<ClientEntry>,
    /// Peers rejected before authentication (or failing it), by reason:
    /// `timeout`, `closed`, `evicted`, `read_error`, `malformed`,
    /// `unknown_client`, `bad_mac`, `replay`, `stale_epoch`, `stale_clock`.
    pub rejected: BTreeMap<String, u64>,
}

/// One configured client at the concentrator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientEntry {
    /// Its id.
    pub id: String,
    /// Its datagram tunnel addresses, as configured.
    pub tunnel_addresses: Vec<String>,
    /// Connections open now.
    pub connections: u64,
    /// Its `max_connections`.
    pub max_connections: u64,
    /// Connections admitted since start.
    pub connections_total: u64,
    /// Requests refused since start (destination denied, limits).
    pub refused: u64,
    /// Bytes relayed from the client to its destinations since start.
    pub up_bytes: u64,
    /// Bytes relayed from the destinations to the client since start.
    pub down_bytes: u64,
    /// Its datagram tunnel; absent when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datagram: Option<PeerTunnel>,
}

/// A client's datagram tunnel at the concentrator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerTunnel {
    /// Whether a session is up.
    pub session: bool,
    /// When its current session's handshake completed, in seconds since
    /// 1970.
    pub last_handshake_unix: Option<f64>,
    /// Its paths (uplinks) heard from lately.
    pub paths: u64,
    /// Its newest session's data cipher; absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher: Option<String>,
    /// Datagram traffic with it, all paths together (`tx`: towards it).
    pub counters: PathCounters,
}

/// Seconds since 1970 now.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Seconds since 1970 at the monotonic instant `at` (at most now).
pub fn unix_at(at: std::time::Instant) -> f64 {
    unix_now() - at.elapsed().as_secs_f64()
}
