//! `mpbond status` for people: one block per daemon, then one per uplink
//! or client, as `wg show` does.

use std::fmt::Write as _;

use super::snapshot::{ClientEntry, ClientStatus, ConcentratorStatus, Status, UplinkStatus};

/// The human-readable status of one daemon.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let uptime = ago(status.now_unix - status.started_unix);
    if let Some(client) = &status.client {
        let _ = writeln!(
            out,
            "client {}: {} (pid {}, up {uptime})",
            client.id, status.config, status.pid
        );
        render_client(&mut out, status, client);
    } else if let Some(conc) = &status.concentrator {
        let _ = writeln!(
            out,
            "concentrator: {} (pid {}, up {uptime})",
            status.config, status.pid
        );
        render_concentrator(&mut out, status, conc);
    } else {
        let _ = writeln!(
            out,
            "{}: {} (pid {}, up {uptime})",
            status.role, status.config, status.pid
        );
    }
    out
}

fn render_client(out: &mut String, status: &Status, client: &ClientStatus) {
    let _ = writeln!(out, "  concentrator: {}", client.concentrator);
    let source = client
        .source
        .as_deref()
        .unwrap_or("none (no working uplink)");
    let _ = writeln!(
        out,
        "  flows: {} from the LAN, {} relayed; new tunnels from {source}",
        client.flows, client.relayed
    );
    if let Some(dg) = &client.datagram {
        let handshake = handshake(dg.last_handshake_unix, status.now_unix);
        let session = session_text(dg.session, dg.cipher.as_deref());
        let _ = writeln!(
            out,
            "  datagram tunnel: session {session}, {handshake}, mtu {}",
            dg.mtu
        );
    }
    for uplink in &client.uplinks {
        out.push('\n');
        render_uplink(out, status, uplink);
    }
}

fn render_uplink(out: &mut String, status: &Status, u: &UplinkStatus) {
    let backup = if u.backup { " (backup)" } else { "" };
    let _ = writeln!(out, "uplink {}{backup}", u.name);
    let address = u.address.as_deref().unwrap_or("no address");
    let _ = writeln!(out, "  interface: {} ({address})", u.interface);
    let endpoint = if u.endpoint {
        "subflows on"
    } else {
        "no subflows"
    };
    let _ = writeln!(
        out,
        "  state: {} for {} ({}); {} changes, {endpoint}",
        u.state,
        ago(status.now_unix - u.changed_unix),
        u.reason,
        u.state_changes
    );
    let rtt = match (u.rtt_ms, u.min_rtt_ms) {
        (Some(rtt), Some(min)) => format!("{rtt:.1} ms (min {min:.1} ms)"),
        (Some(rtt), None) => format!("{rtt:.1} ms"),
        _ => "not measured yet".to_owned(),
    };
    let _ = writeln!(out, "  rtt: {rtt}, probe loss {:.1} %", u.loss * 100.0);
    if let (Some(rx), Some(tx)) = (u.rx_bytes, u.tx_bytes) {
        let _ = writeln!(
            out,
            "  transfer: {} received, {} sent",
            bytes(rx),
            bytes(tx)
        );
    }
    let _ = writeln!(
        out,
        "  rate: {} down, {} up",
        rate(u.rx_bytes_per_sec),
        rate(u.tx_bytes_per_sec)
    );
    if let Some(dg) = &u.datagram {
        let _ = writeln!(
            out,
            "  datagrams: {} packets ({}) sent, {} ({}) received",
            dg.tx_packets,
            bytes(dg.tx_bytes),
            dg.rx_packets,
            bytes(dg.rx_bytes)
        );
    }
}

fn render_concentrator(out: &mut String, status: &Status, conc: &ConcentratorStatus) {
    let kind = if conc.multipath {
        "MPTCP"
    } else {
        "plain TCP: the kernel refused MPTCP"
    };
    let _ = writeln!(out, "  listening: {} ({kind})", conc.listen);
    let _ = writeln!(
        out,
        "  connections: {} (the open-file limit carries {}), {} handshakes pending",
        conc.connections, conc.connection_limit, conc.handshakes
    );
    let rejected: Vec<String> = conc
        .rejected
        .iter()
        .filter(|(_, &n)| n > 0)
        .map(|(why, n)| format!("{why} {n}"))
        .collect();
    let rejected = if rejected.is_empty() {
        "none".to_owned()
    } else {
        rejected.join(", ")
    };
    let _ = writeln!(out, "  rejected peers: {rejected}");
    for client in &conc.clients {
        out.push('\n');
        render_client_entry(out, status, client);
    }
}

fn render_client_entry(out: &mut String, status: &Status, c: &ClientEntry) {
    let _ = writeln!(out, "client {}", c.id);
    if !c.tunnel_addresses.is_empty() {
        let _ = writeln!(out, "  tunnel addresses: {}", c.tunnel_addresses.join(", "));
    }
    let _ = writeln!(
        out,
        "  connections: {} open (limit {}), {} since start, {} refused",
        c.connections, c.max_connections, c.connections_total, c.refused
    );
    let _ = writeln!(
        out,
        "  transfer: {} down, {} up",
        bytes(c.down_bytes),
        bytes(c.up_bytes)
    );
    if let Some(dg) = &c.datagram {
        let handshake = handshake(dg.last_handshake_unix, status.now_unix);
        let session = session_text(dg.session, dg.cipher.as_deref());
        let _ = writeln!(
            out,
            "  datagram tunnel: session {session}, {handshake}, {} paths; {} packets sent, {} received",
            dg.paths, dg.counters.tx_packets, dg.counters.rx_packets
        );
    }
}

/// A datagram session's state: `up (cipher)`, `up` or `down`.
fn session_text(up: bool, cipher: Option<&str>) -> String {
    match (up, cipher) {
        (true, Some(cipher)) => format!("up ({cipher})"),
        (true, None) => "up".to_owned(),
        (false, _) => "down".to_owned(),
    }
}

/// When the datagram session's last handshake completed, as of `now`
/// (seconds since 1970).
fn handshake(last_unix: Option<f64>, now: f64) -> String {
    last_unix.map_or_else(
        || "no handshake yet".to_owned(),
        |at| format!("last handshake {} ago", ago(now - at)),
    )
}

/// A byte count with a binary unit: `1.5 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

/// A rate in bytes per second as bits per second: `19.8 Mbit/s`.
pub fn rate(bytes_per_sec: u64) -> String {
    let bits = bytes_per_sec as f64 * 8.0;
    if bits >= 1e9 {
        format!("{:.2} Gbit/s", bits / 1e9)
    } else if bits >= 1e6 {
        format!("{:.1} Mbit/s", bits / 1e6)
    } else if bits >= 1e3 {
        format!("{:.1} kbit/s", bits / 1e3)
    } else {
        format!("{bits:.0} bit/s")
    }
}

/// A span of seconds, short: `42 s`, `3 min 5 s`, `2 h 3 min`, `4 d 1 h`.
pub fn ago(secs: f64) -> String {
    let s = if secs.is_finite() && secs > 0.0 {
        secs as u64
    } else {
        0
    };
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}
