//! Rendering a snapshot as text, JSON and metrics; parsing HTTP requests.

use std::collections::BTreeMap;

use super::http::{parse_head, route, BadRequest, Head, Response, Route, MAX_HEAD};
use super::snapshot::{
    ClientEntry, ClientStatus, ConcentratorStatus, PathCounters, PeerTunnel, Status, TunnelStatus,
    UplinkStatus, VERSION,
};
use super::{metrics, text};

const NOW: f64 = 1_800_000_000.0;

fn uplink(name: &str, state: &str) -> UplinkStatus {
    UplinkStatus {
        name: name.into(),
        interface: format!("{name}0"),
        address: Some(format!("10.77.{}.2", name.len())),
        backup: false,
        state: state.into(),
        reason: "probes answered again after 1.2s".into(),
        changed_unix: NOW - 125.0,
        state_changes: 3,
        endpoint: state != "dead",
        rtt_ms: Some(21.5),
        min_rtt_ms: Some(20.25),
        loss: 0.005,
        rx_bytes: Some(3 << 30),
        tx_bytes: Some(5 << 20),
        rx_bytes_per_sec: 2_500_000,
        tx_bytes_per_sec: 60_000,
        datagram: Some(PathCounters {
            tx_packets: 10,
            tx_bytes: 1000,
            rx_packets: 20,
            rx_bytes: 30_000,
        }),
    }
}

fn client_status() -> Status {
    Status {
        version: VERSION,
        role: "client".into(),
        config: "/etc/mpbond/client.toml".into(),
        socket: "/run/mpbond/client-client.sock".into(),
        pid: 42,
        mpbond_version: "0.1.0".into(),
        started_unix: NOW - 3700.0,
        now_unix: NOW,
        client: Some(ClientStatus {
            id: "home".into(),
            concentrator: "203.0.113.7:7300".into(),
            uplinks: vec![uplink("dsl", "usable"), uplink("lte", "dead")],
            flows: 4,
            relayed: 3,
            source: Some("10.77.3.2".into()),
            datagram: Some(TunnelStatus {
                session: true,
                last_handshake_unix: Some(NOW - 42.0),
                mtu: 1438,
                cipher: Some("aes-256-gcm".into()),
            }),
        }),
        concentrator: None,
    }
}

fn concentrator_status() -> Status {
    let mut rejected = BTreeMap::new();
    rejected.insert("bad_mac".to_owned(), 2);
    rejected.insert("timeout".to_owned(), 0);
    Status {
        version: VERSION,
        role: "concentrator".into(),
        config: "/etc/mpbond/concentrator.toml".into(),
        socket: String::new(),
        pid: 7,
        mpbond_version: "0.1.0".into(),
        started_unix: NOW - 59.0,
        now_unix: NOW,
        client: None,
        concentrator: Some(ConcentratorStatus {
            listen: "0.0.0.0:7300".into(),
            multipath: true,
            connections: 5,
            connection_limit: 9360,
            handshakes: 1,
            clients: vec![ClientEntry {
                id: "lab".into(),
                tunnel_addresses: vec!["100.64.77.2".into(), "fd00:6d70:62:77::2".into()],
                connections: 5,
                max_connections: 1024,
                connections_total: 17,
                refused: 1,
                up_bytes: 1000,
                down_bytes: 1 << 20,
                datagram: Some(PeerTunnel {
                    session: true,
                    last_handshake_unix: Some(NOW - 10.0),
                    paths: 2,
                    cipher: Some("chacha20-poly1305".into()),
                    counters: PathCounters {
                        tx_packets: 5,
                        tx_bytes: 500,
                        rx_packets: 6,
                        rx_bytes: 600,
                    },
                }),
            }],
            rejected,
        }),
    }
}

#[test]
fn text_shows_each_uplink_with_its_state_rtt_and_traffic() {
    let out = text::render(&client_status());
    assert!(out.starts_with("client home: /etc/mpbond/client.toml (pid 42, up 1 h 1 min)\n"));
    assert!(out.contains("  concentrator: 203.0.113.7:7300\n"), "{out}");
    assert!(out.contains("  flows: 4 from the LAN, 3 relayed; new tunnels from 10.77.3.2\n"));
    assert!(out.contains(
        "  datagram tunnel: session up (aes-256-gcm), last handshake 42 s ago, mtu 1438\n"
    ));
    assert!(
        out.contains("\nuplink dsl\n  interface: dsl0 (10.77.3.2)\n"),
        "{out}"
    );
    assert!(out.contains(
        "  state: dead for 2 min 5 s (probes answered again after 1.2s); 3 changes, no subflows\n"
    ));
    assert!(
        out.contains("  rtt: 21.5 ms (min 20.2 ms), probe loss 0.5 %\n"),
        "{out}"
    );
    assert!(out.contains("  transfer: 3.00 GiB received, 5.00 MiB sent\n"));
    assert!(
        out.contains("  rate: 20.0 Mbit/s down, 480.0 kbit/s up\n"),
        "{out}"
    );
    assert!(out.contains("  datagrams: 10 packets (1000 B) sent, 20 (29.30 KiB) received\n"));
}

#[test]
fn text_shows_each_client_of_the_concentrator() {
    let out = text::render(&concentrator_status());
    assert!(out.starts_with("concentrator: /etc/mpbond/concentrator.toml (pid 7, up 59 s)\n"));
    assert!(out.contains("  listening: 0.0.0.0:7300 (MPTCP)\n"));
    assert!(
        out.contains("  connections: 5 (the open-file limit carries 9360), 1 handshakes pending\n")
    );
    // Reasons that never happened are left out.
    assert!(out.contains("  rejected peers: bad_mac 2\n"), "{out}");
    assert!(out.contains("\nclient lab\n  tunnel addresses: 100.64.77.2, fd00:6d70:62:77::2\n"));
    assert!(out.contains("  connections: 5 open (limit 1024), 17 since start, 1 refused\n"));
    assert!(out.contains(
        "  datagram tunnel: session up (chacha20-poly1305), last handshake 10 s ago, 2 paths; 5 packets sent, 6 received\n"
    ));
}

#[test]
fn json_round_trips_and_names_its_fields() {
    for status in [client_status(), concentrator_status()] {
        let json = serde_json::to_string(&status).expect("serializes");
        let back: Status = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, status);
    }
    let value = serde_json::to_value(client_status()).expect("serializes");
    assert_eq!(value["version"], 1);
    assert_eq!(value["role"], "client");
    assert!(
        value.get("concentrator").is_none(),
        "no section of the other role"
    );
    let dsl = &value["client"]["uplinks"][0];
    assert_eq!(dsl["name"], "dsl");
    assert_eq!(dsl["state"], "usable");
    assert_eq!(dsl["rtt_ms"], 21.5);
    assert_eq!(dsl["rx_bytes"], 3u64 << 30);
    assert_eq!(dsl["datagram"]["rx_packets"], 20);
    let value = serde_json::to_value(concentrator_status()).expect("serializes");
    assert_eq!(value["concentrator"]["clients"][0]["connections"], 5);
    assert_eq!(value["concentrator"]["rejected"]["bad_mac"], 2);
}

#[test]
fn json_from_a_newer_daemon_with_more_fields_still_reads() {
    let mut value = serde_json::to_value(client_status()).expect("serializes");
    value["future"] = serde_json::json!(1);
    value["client"]["uplinks"][0]["future"] = serde_json::json!("x");
    let back: Status = serde_json::from_value(value).expect("unknown fields are ignored");
    assert_eq!(back, client_status());
}

/// The value of the sample `name{labels}` in `metrics`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.parse().ok()
    })
}

#[test]
fn metrics_carry_each_uplink_by_label() {
    let out = metrics::render(&client_status());
    let s = |series| sample(&out, series).unwrap_or_else(|| panic!("no {series} in\n{out}"));
    assert_eq!(s(r#"mpbond_uplink_up{uplink="dsl"}"#), 1.0);
    assert_eq!(s(r#"mpbond_uplink_up{uplink="lte"}"#), 0.0);
    assert_eq!(s(r#"mpbond_uplink_state{uplink="lte",state="dead"}"#), 1.0);
    assert_eq!(
        s(r#"mpbond_uplink_state{uplink="lte",state="usable"}"#),
        0.0
    );
    assert_eq!(
        s(r#"mpbond_uplink_rx_bytes_total{uplink="dsl"}"#),
        (3u64 << 30) as f64
    );
    assert_eq!(
        s(r#"mpbond_uplink_tx_bytes_total{uplink="lte"}"#),
        (5u64 << 20) as f64
    );
    assert_eq!(s(r#"mpbond_uplink_rtt_seconds{uplink="dsl"}"#), 0.0215);
    assert_eq!(s(r#"mpbond_uplink_state_changes_total{uplink="dsl"}"#), 3.0);
    assert_eq!(
        s(r#"mpbond_uplink_datagram_rx_packets_total{uplink="lte"}"#),
        20.0
    );
    assert_eq!(s("mpbond_relayed_connections"), 3.0);
    assert_eq!(s("mpbond_datagram_session_up"), 1.0);
    assert!(
        out.contains("# TYPE mpbond_uplink_rx_bytes_total counter\n"),
        "{out}"
    );
    assert!(out.contains("# HELP mpbond_uplink_up "), "{out}");
}

#[test]
fn metrics_carry_each_client_and_rejection_reason() {
    let out = metrics::render(&concentrator_status());
    let s = |series| sample(&out, series).unwrap_or_else(|| panic!("no {series} in\n{out}"));
    assert_eq!(s(r#"mpbond_client_connections{client="lab"}"#), 5.0);
    assert_eq!(
        s(r#"mpbond_client_connections_admitted_total{client="lab"}"#),
        17.0
    );
    assert_eq!(
        s(r#"mpbond_client_down_bytes_total{client="lab"}"#),
        1048576.0
    );
    assert_eq!(
        s(r#"mpbond_client_datagram_rx_packets_total{client="lab"}"#),
        6.0
    );
    assert_eq!(s(r#"mpbond_rejected_peers_total{reason="bad_mac"}"#), 2.0);
    assert_eq!(s(r#"mpbond_rejected_peers_total{reason="timeout"}"#), 0.0);
    assert_eq!(s("mpbond_connections"), 5.0);
    assert!(!out.contains("uplink"), "no uplinks at a concentrator");
}

#[test]
fn label_values_are_escaped() {
    let mut status = client_status();
    if let Some(client) = status.client.as_mut() {
        client.uplinks[0].name = "a\"b\\c".into();
    }
    let out = metrics::render(&status);
    assert!(
        out.contains(r#"mpbond_uplink_up{uplink="a\"b\\c"} 1"#),
        "{out}"
    );
}

#[test]
fn a_complete_request_head_gives_method_and_path() {
    let head = parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").expect("valid");
    assert_eq!(
        head,
        Some(Head {
            method: "GET",
            path: "/metrics"
        })
    );
    assert_eq!(route("/metrics"), Route::Metrics);
    assert_eq!(route("/"), Route::Page);
    assert_eq!(route("/page.js"), Route::Script);
    assert_eq!(route("/status.json"), Route::Status);
    assert_eq!(route("/history.json"), Route::History);
    assert_eq!(route("/metrics/x"), Route::NotFound);
    assert_eq!(route("/../page.js"), Route::NotFound);
    // Bare newlines (netcat, curl's own are \r\n).
    assert!(matches!(parse_head(b"HEAD / HTTP/1.0\n\n"), Ok(Some(_))));
}

#[test]
fn an_incomplete_head_waits_and_an_oversized_one_is_refused() {
    assert_eq!(parse_head(b""), Ok(None));
    assert_eq!(
        parse_head(b"GET /metrics HTTP/1.1\r\nHost: a\r\n"),
        Ok(None)
    );
    let mut long = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    long.resize(MAX_HEAD, b'a');
    assert_eq!(parse_head(&long), Err(BadRequest::TooLarge));
    // The end comes, but past the limit.
    long.extend_from_slice(b"\r\n\r\n");
    assert_eq!(parse_head(&long), Err(BadRequest::TooLarge));
}

#[test]
fn garbage_is_a_bad_request_and_never_a_panic() {
    for bad in [
        &b"\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET /metrics\r\n\r\n",
        b"get /metrics HTTP/1.1\r\n\r\n",
        b"GET metrics HTTP/1.1\r\n\r\n",
        b"GET /metrics SPDY/3\r\n\r\n",
        b"GET /metrics HTTP/1.1 extra\r\n\r\n",
        b"GET  /metrics HTTP/1.1\r\n\r\n",
        b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n",
    ] {
        assert_eq!(parse_head(bad), Err(BadRequest::Malformed), "{bad:?}");
    }
    // Every prefix and byte value of a request parses without panicking.
    let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    for len in 0..=request.len() {
        let _ = parse_head(&request[..len]);
        for byte in [0u8, b'\n', b'\r', b' ', 0x80, 0xff] {
            let mut changed = request.to_vec();
            if let Some(b) = changed.get_mut(len) {
                *b = byte;
            }
            let _ = parse_head(&changed);
        }
    }
}

#[test]
fn responses_say_how_long_they_are_and_close() {
    let response = Response {
        status: 404,
        content_type: "text/plain; charset=utf-8",
        cache: "no-store",
        body: "not found\n".into(),
        head_only: false,
    };
    let bytes = String::from_utf8(response.to_bytes()).expect("text");
    assert!(bytes.starts_with("HTTP/1.1 404 Not Found\r\n"), "{bytes}");
    assert!(bytes.contains("Content-Length: 10\r\n"));
    assert!(bytes.contains("Connection: close\r\n"));
    assert!(bytes.contains("Cache-Control: no-store\r\n"));
    assert!(bytes.contains("X-Content-Type-Options: nosniff\r\n"));
    assert!(bytes.ends_with("\r\n\r\nnot found\n"));
    let head = Response {
        head_only: true,
        ..response
    };
    assert!(String::from_utf8(head.to_bytes())
        .expect("text")
        .ends_with("\r\n\r\n"));
}

/// A fresh directory for socket tests, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("mpbond-control-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn the_socket_is_root_only_answers_status_and_goes_on_drop() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new("serve");
    let path = dir.0.join("run/client-test.sock");
    let socket = super::socket::ControlSocket::bind(&path).expect("binds");
    let mode = std::fs::metadata(&path)
        .expect("exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let dir_mode = std::fs::metadata(path.parent().expect("dir"))
        .expect("dir")
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700, "directory mode {dir_mode:o}");
    let provider: super::Provider = std::sync::Arc::new(client_status);
    let server = tokio::spawn(socket.serve(provider));
    let asked = path.clone();
    let status = tokio::task::spawn_blocking(move || super::socket::query(&asked))
        .await
        .expect("query thread")
        .expect("answers");
    assert_eq!(status.client, client_status().client);
    assert_eq!(
        status.socket,
        path.display().to_string(),
        "the daemon names its socket"
    );
    // A second daemon on the same socket is refused while it answers.
    let second = super::socket::ControlSocket::bind(&path).expect_err("in use");
    assert!(
        matches!(second, super::socket::ControlError::InUse { .. }),
        "{second}"
    );
    server.abort();
    let _ = server.await;
    assert!(!path.exists(), "the socket is removed when the server goes");
    let error = super::socket::query(&path).expect_err("no daemon");
    assert!(
        error.to_string().starts_with("no mpbond daemon answers on"),
        "{error}"
    );
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_anything_else_kept() {
    let dir = TempDir::new("stale");
    std::fs::create_dir_all(&dir.0).expect("dir");
    let path = dir.0.join("concentrator-test.sock");
    // A crash leaves the file, with no one listening.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    assert!(path.exists());
    let socket = super::socket::ControlSocket::bind(&path).expect("replaces the stale socket");
    drop(socket);
    assert!(!path.exists());
    std::fs::write(&path, "not a socket").expect("write");
    let error = super::socket::ControlSocket::bind(&path).expect_err("not a socket");
    assert!(
        matches!(error, super::socket::ControlError::NotASocket { .. }),
        "{error}"
    );
    assert!(
        path.exists(),
        "a file that is not a socket is never removed"
    );
    let found = super::socket::discover(&dir.0).expect("lists");
    assert!(found.is_empty(), "only sockets count: {found:?}");
}

fn at(name: &str, state: &str, rx: u64) -> UplinkStatus {
    UplinkStatus {
        rx_bytes_per_sec: rx,
        ..uplink(name, state)
    }
}

#[test]
fn history_samples_once_a_second_and_keeps_the_last_minutes() {
    use super::history::{History, SAMPLES, SAMPLE_EVERY_S};
    let history = History::default();
    // Health publishes ten times a second; one sample a second is kept.
    for tenth in 0..=(SAMPLES as u64 + 20) * 10 {
        let now = NOW + tenth as f64 / 10.0;
        history.offer(now, &[at("dsl", "usable", tenth), at("lte", "dead", 0)]);
    }
    let doc = history.document();
    assert_eq!(doc.interval_s, SAMPLE_EVERY_S);
    let names: Vec<&str> = doc.uplinks.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["dsl", "lte"]);
    let dsl = &doc.uplinks[0].samples;
    assert_eq!(dsl.len(), SAMPLES, "bounded");
    let last = dsl.last().expect("samples");
    assert!(
        (last.unix - (NOW + (SAMPLES + 20) as f64)).abs() < 1e-6,
        "{last:?}"
    );
    assert_eq!(last.rx_bytes_per_sec, (SAMPLES as u64 + 20) * 10);
    assert!(dsl
        .windows(2)
        .all(|w| (w[1].unix - w[0].unix - 1.0).abs() < 1e-6));
    assert_eq!(doc.uplinks[1].samples[0].state, "dead");

    // An uplink removed (a reload) loses its samples; a new one starts.
    let later = NOW + 1000.0;
    history.offer(later, &[at("lte", "usable", 5), at("wifi", "usable", 7)]);
    let doc = history.document();
    let names: Vec<&str> = doc.uplinks.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["lte", "wifi"]);
    assert_eq!(doc.uplinks[0].samples.len(), SAMPLES);
    assert_eq!(doc.uplinks[1].samples.len(), 1);
    // The clock going back takes a sample rather than stalling.
    history.offer(NOW, &[at("lte", "usable", 9)]);
    assert_eq!(
        history.document().uplinks[0]
            .samples
            .last()
            .map(|s| s.rx_bytes_per_sec),
        Some(9)
    );
}

#[test]
fn history_keeps_the_latest_state_changes_with_bounded_reasons() {
    use super::history::{History, StateChange, EVENTS};
    let history = History::default();
    for i in 0..EVENTS + 5 {
        history.changed(StateChange {
            unix: NOW + i as f64,
            uplink: "lte".into(),
            from: "usable".into(),
            to: "dead".into(),
            reason: format!("change {i}"),
        });
    }
    history.changed(StateChange {
        reason: "é".repeat(500),
        ..StateChange::default()
    });
    let events = history.document().events;
    assert_eq!(events.len(), EVENTS);
    assert_eq!(events[0].reason, "change 6", "the oldest went first");
    let long = &events.last().expect("events").reason;
    assert!(
        long.len() <= 200 && long.chars().all(|c| c == 'é'),
        "{long}"
    );
    // The document the page reads round-trips.
    let json = serde_json::to_string(&history.document()).expect("serializes");
    let back: super::history::HistoryDocument = serde_json::from_str(&json).expect("parses");
    assert_eq!(back, history.document());
}

#[test]
fn the_page_and_its_files_are_compiled_in_and_refer_to_each_other() {
    let page = include_str!("page/index.html");
    let script = include_str!("page/page.js");
    assert!(page.contains(r#"src="page.js""#) && page.contains(r#"href="page.css""#));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "nothing from elsewhere"
    );
    for url in ["history.json", "status.json"] {
        assert!(script.contains(url), "{url}");
        assert!(route(&format!("/{url}")) != Route::NotFound, "{url}");
    }
    for path in ["/page.js", "/page.css"] {
        assert!(route(path) != Route::NotFound, "{path}");
    }
}

/// The `control` fuzz target's seeds of daemon answers (see
/// `fuzz_seeds`): both ends' status as the socket sends it.
#[test]
fn write_fuzz_corpus() {
    let answer = |status: Status| {
        let mut line = serde_json::to_vec(&status).expect("serializes");
        line.push(b'\n');
        line
    };
    crate::fuzz_seeds::write(
        "control",
        &[
            ("answer-client", answer(client_status())),
            ("answer-concentrator", answer(concentrator_status())),
        ],
    );
}
