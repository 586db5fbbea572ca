//! Prometheus metrics from a [`Status`] snapshot, in the Prometheus text
//! format (0.0.4) that `promtool check metrics` checks, written with the
//! `prometheus-client` crate.
//!
//! A fresh registry is filled from the snapshot at each scrape: the
//! daemons keep their counters where they always did, and nothing on
//! their data paths knows about metrics. Counters are the daemon's own
//! totals since it started (they reset when it restarts, which Prometheus'
//! `rate()` handles).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::snapshot::{ClientStatus, ConcentratorStatus, Status};

/// The `Content-Type` of what [`render`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

type Labels = Vec<(&'static str, String)>;
type Gauges = Family<Labels, Gauge<f64, AtomicU64>>;
type Counters = Family<Labels, Counter>;

/// A registry being filled: metric families by name.
struct Sink {
    registry: Registry,
}

impl Sink {
    fn gauge(&mut self, name: &str, help: &str) -> Gauges {
        let family = Gauges::default();
        self.registry.register(name, help, family.clone());
        family
    }

    fn counter(&mut self, name: &str, help: &str) -> Counters {
        let family = Counters::default();
        self.registry.register(name, help, family.clone());
        family
    }
}

fn set(family: &Gauges, labels: Labels, value: f64) {
    family.get_or_create(&labels).set(value);
}

fn add(family: &Counters, labels: Labels, value: u64) {
    family.get_or_create(&labels).inc_by(value);
}

fn label(key: &'static str, value: &str) -> Labels {
    vec![(key, value.to_owned())]
}

/// The metrics of one daemon's snapshot, in the Prometheus text format.
pub fn render(status: &Status) -> String {
    let mut sink = Sink {
        registry: Registry::with_prefix("mpbond"),
    };
    let info = sink.gauge(
        "info",
        "The running mpbond: its role and version (always 1)",
    );
    set(
        &info,
        vec![
            ("role", status.role.clone()),
            ("version", status.mpbond_version.clone()),
        ],
        1.0,
    );
    let start = sink.gauge(
        "start_time_seconds",
        "When the daemon started, in seconds since 1970",
    );
    set(&start, Labels::new(), status.started_unix);
    if let Some(client) = &status.client {
        client_metrics(&mut sink, client);
    }
    if let Some(conc) = &status.concentrator {
        concentrator_metrics(&mut sink, conc);
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut out, &sink.registry);
    out
}

fn client_metrics(sink: &mut Sink, client: &ClientStatus) {
    let up = sink.gauge(
        "uplink_up",
        "Whether the uplink carries traffic (1: usable, suspect or back; 0: dead)",
    );
    let state = sink.gauge(
        "uplink_state",
        "The uplink's verdict: 1 for the current state, 0 for the others",
    );
    let changes = sink.counter(
        "uplink_state_changes",
        "Verdict changes of the uplink since start",
    );
    let rtt = sink.gauge(
        "uplink_rtt_seconds",
        "Smoothed round trip of the uplink's probes",
    );
    let min_rtt = sink.gauge(
        "uplink_min_rtt_seconds",
        "Smallest recent round trip of the uplink's probes",
    );
    let loss = sink.gauge(
        "uplink_probe_loss_ratio",
        "Fraction of recent probes on the uplink that went unanswered",
    );
    let rx = sink.counter(
        "uplink_rx_bytes",
        "Bytes the uplink's interface received (all its traffic)",
    );
    let tx = sink.counter(
        "uplink_tx_bytes",
        "Bytes the uplink's interface sent (all its traffic)",
    );
    let dg = client
        .uplinks
        .iter()
        .any(|u| u.datagram.is_some())
        .then(|| {
            (
                sink.counter(
                    "uplink_datagram_tx_packets",
                    "Datagram tunnel packets sent on the uplink",
                ),
                sink.counter(
                    "uplink_datagram_rx_packets",
                    "Datagram tunnel packets received on the uplink",
                ),
                sink.counter(
                    "uplink_datagram_tx_bytes",
                    "Bytes of IP packets the datagram tunnel sent on the uplink",
                ),
                sink.counter(
                    "uplink_datagram_rx_bytes",
                    "Bytes of IP packets the datagram tunnel received on the uplink",
                ),
            )
        });
    for u in &client.uplinks {
        let name = || label("uplink", &u.name);
        set(&up, name(), f64::from(u8::from(u.state != "dead")));
        for s in ["usable", "suspect", "dead", "back"] {
            let labels = vec![("uplink", u.name.clone()), ("state", s.to_owned())];
            set(&state, labels, f64::from(u8::from(u.state == s)));
        }
        add(&changes, name(), u.state_changes);
        if let Some(ms) = u.rtt_ms {
            set(&rtt, name(), ms / 1000.0);
        }
        if let Some(ms) = u.min_rtt_ms {
            set(&min_rtt, name(), ms / 1000.0);
        }
        set(&loss, name(), u.loss);
        if let Some(bytes) = u.rx_bytes {
            add(&rx, name(), bytes);
        }
        if let Some(bytes) = u.tx_bytes {
            add(&tx, name(), bytes);
        }
        if let (Some((txp, rxp, txb, rxb)), Some(c)) = (&dg, &u.datagram) {
            add(txp, name(), c.tx_packets);
            add(rxp, name(), c.rx_packets);
            add(txb, name(), c.tx_bytes);
            add(rxb, name(), c.rx_bytes);
        }
    }
    let flows = sink.gauge("lan_flows", "TCP flows from the LAN in the flow table");
    set(&flows, Labels::new(), client.flows as f64);
    let relayed = sink.gauge(
        "relayed_connections",
        "Connections relayed to the concentrator (one MPTCP connection each)",
    );
    set(&relayed, Labels::new(), client.relayed as f64);
    if let Some(dg) = &client.datagram {
        let session = sink.gauge(
            "datagram_session_up",
            "Whether the datagram tunnel has a session to send with",
        );
        set(&session, Labels::new(), f64::from(u8::from(dg.session)));
        if let Some(at) = dg.last_handshake_unix {
            let handshake = sink.gauge(
                "datagram_last_handshake_timestamp_seconds",
                "When the datagram tunnel's current session was made, in seconds since 1970",
            );
            set(&handshake, Labels::new(), at);
        }
    }
}

fn concentrator_metrics(sink: &mut Sink, conc: &ConcentratorStatus) {
    let connections = sink.gauge("connections", "Connections open, all clients together");
    set(&connections, Labels::new(), conc.connections as f64);
    let limit = sink.gauge(
        "connection_limit",
        "Connections the open-file limit carries, all clients together",
    );
    set(&limit, Labels::new(), conc.connection_limit as f64);
    let handshakes = sink.gauge(
        "handshakes_pending",
        "Connections accepted and not yet authenticated",
    );
    set(&handshakes, Labels::new(), conc.handshakes as f64);
    let rejected = sink.counter(
        "rejected_peers",
        "Peers rejected before or at authentication, by reason",
    );
    for (reason, &n) in &conc.rejected {
        add(&rejected, label("reason", reason), n);
    }
    let open = sink.gauge("client_connections", "Connections the client has open");
    let max = sink.gauge(
        "client_max_connections",
        "The client's limit of open connections",
    );
    let admitted = sink.counter(
        "client_connections_admitted",
        "Connections of the client admitted since start",
    );
    let refused = sink.counter(
        "client_requests_refused",
        "Requests of the client refused (destination denied, limits)",
    );
    let up = sink.counter(
        "client_up_bytes",
        "Bytes relayed from the client to its destinations",
    );
    let down = sink.counter(
        "client_down_bytes",
        "Bytes relayed from the destinations to the client",
    );
    let dg = conc.clients.iter().any(|c| c.datagram.is_some()).then(|| {
        (
            sink.gauge(
                "client_datagram_session_up",
                "Whether the client's datagram tunnel has a session",
            ),
            sink.gauge(
                "client_datagram_paths",
                "The client's datagram paths heard from lately",
            ),
            sink.counter(
                "client_datagram_tx_packets",
                "Datagram tunnel packets sent to the client",
            ),
            sink.counter(
                "client_datagram_rx_packets",
                "Datagram tunnel packets received from the client",
            ),
            sink.counter(
                "client_datagram_tx_bytes",
                "Bytes of IP packets sent to the client through the datagram tunnel",
            ),
            sink.counter(
                "client_datagram_rx_bytes",
                "Bytes of IP packets received from the client through the datagram tunnel",
            ),
        )
    });
    for c in &conc.clients {
        let id = || label("client", &c.id);
        set(&open, id(), c.connections as f64);
        set(&max, id(), c.max_connections as f64);
        add(&admitted, id(), c.connections_total);
        add(&refused, id(), c.refused);
        add(&up, id(), c.up_bytes);
        add(&down, id(), c.down_bytes);
        if let (Some((session, paths, txp, rxp, txb, rxb)), Some(t)) = (&dg, &c.datagram) {
            set(session, id(), f64::from(u8::from(t.session)));
            set(paths, id(), t.paths as f64);
            add(txp, id(), t.counters.tx_packets);
            add(rxp, id(), t.counters.rx_packets);
            add(txb, id(), t.counters.tx_bytes);
            add(rxb, id(), t.counters.rx_bytes);
        }
    }
}
