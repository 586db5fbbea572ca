//! `mpbond status` and the metrics in the lab (LAB.md): with a download
//! running, both ends report what a user would check — both uplinks usable
//! and carrying traffic, the client present at the concentrator with its
//! connection; lte blackholed, the client's status calls it dead and its
//! metrics (scraped from the LAN host, as Prometheus would) say
//! `mpbond_uplink_up{uplink="lte"} 0`; both scrapes pass `promtool check
//! metrics`. Stopped, the daemons leave no socket and `mpbond status` says
//! none runs.
//!
//! Needs root and promtool (Debian package prometheus, installed by
//! scripts/deps.sh); one lab at a time.

mod harness;

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use harness::download::{check_download, start_download, wait_for};
use harness::{mpbond_bin, ns_run, root, run_in, Behavior, Lab, NsServer};
use mpbond::control::snapshot::{ClientEntry, Status, UplinkStatus};

const SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
const MIB: u64 = 1 << 20;
const LEN: u64 = 32 * MIB;
const SEED: u64 = 0x57a7;
const CLIENT_METRICS: &str = "192.168.77.1:9310";
const CONCENTRATOR_METRICS: &str = "127.0.0.1:9311";

fn config(name: &str) -> PathBuf {
    root().join("deploy/lab").join(name)
}

/// `mpbond status ARGS` run in namespace `ns`: (success, stdout, stderr).
fn mpbond_status(ns: &str, args: &[&str]) -> (bool, String, String) {
    let bin = mpbond_bin().to_string_lossy().into_owned();
    let mut cmd = vec![bin.as_str(), "status"];
    cmd.extend_from_slice(args);
    let out = ns_run(ns, &cmd);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The status of the daemon running with lab config `name`, asked in `ns`.
fn status_of(ns: &str, name: &str) -> Status {
    let path = config(name).to_string_lossy().into_owned();
    let (ok, out, err) = mpbond_status(ns, &["--config", &path, "--json"]);
    assert!(ok, "mpbond status --config {path} --json failed: {err}");
    let mut list: Vec<Status> =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not a status list ({e}): {out}"));
    assert_eq!(list.len(), 1, "one daemon per config: {out}");
    list.remove(0)
}

fn uplinks(status: &Status) -> Vec<UplinkStatus> {
    status
        .client
        .as_ref()
        .unwrap_or_else(|| panic!("a client's status has a client section: {status:?}"))
        .uplinks
        .clone()
}

fn uplink(status: &Status, name: &str) -> UplinkStatus {
    uplinks(status)
        .into_iter()
        .find(|u| u.name == name)
        .unwrap_or_else(|| panic!("no uplink {name} in {status:?}"))
}

fn lab_client(status: &Status) -> ClientEntry {
    status
        .concentrator
        .as_ref()
        .and_then(|c| c.clients.iter().find(|c| c.id == "lab").cloned())
        .unwrap_or_else(|| panic!("client lab missing from the concentrator's status: {status:?}"))
}

/// GET http://ADDR/metrics from namespace `ns`: the status code and body.
fn scrape(ns: &str, addr: &str) -> (u16, String) {
    request(ns, addr, "GET /metrics HTTP/1.1\r\nHost: mpbond\r\n\r\n")
}

/// Sends `request` to ADDR from namespace `ns`: the status code and body.
fn request(ns: &str, addr: &str, request: &str) -> (u16, String) {
    let addr: SocketAddr = addr.parse().expect("address");
    let request = request.to_owned();
    run_in(ns, "HTTP request", Duration::from_secs(5), move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connect to the metrics at {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        s.write_all(request.as_bytes()).expect("send request");
        let mut response = String::new();
        s.read_to_string(&mut response).expect("read response");
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP head: {response}"));
        let code = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status code: {head}"));
        (code, body.to_owned())
    })
}

/// The value of series `series` (`name{labels}`) in `metrics`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn must(metrics: &str, series: &str) -> f64 {
    sample(metrics, series).unwrap_or_else(|| panic!("no {series} in the scrape:\n{metrics}"))
}

/// `promtool check metrics` on `metrics`: panics with what it said.
fn promtool_check(what: &str, metrics: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is missing: source scripts/deps.sh (Debian package prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(metrics.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics refused the {what}'s metrics:\n{}{}\n--- metrics:\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `probe` every 100 ms until it gives `Some` or `limit` passed;
/// the value and how long it took.
fn poll<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<(T, Duration)> {
    let started = Instant::now();
    loop {
        if let Some(value) = probe() {
            return Some((value, started.elapsed()));
        }
        if started.elapsed() > limit {
            return None;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn status_and_metrics_show_both_ends_and_a_blackholed_line() {
    // Fail early, not after the lab is up, if promtool is missing.
    let promtool = Command::new("promtool").arg("--version").output();
    assert!(
        promtool.is_ok_and(|o| o.status.success()),
        "promtool is missing: source scripts/deps.sh (Debian package prometheus)"
    );
    let lab = Lab::up_and_start(&[], &[]);
    let srv = NsServer::start(
        "mpb-srv",
        SocketAddr::new(SERVER, 5801),
        Behavior::Source {
            request: 4,
            len: LEN,
            seed: SEED,
        },
    );
    let (tx, rx) = mpsc::channel();
    let download = start_download(srv.addr(), tx);
    wait_for(&rx, 4 * MIB);

    // Both uplinks usable and receiving; the download relayed.
    let seen = poll(Duration::from_secs(5), || {
        let status = status_of("mpb-cli", "client.toml");
        let both = uplinks(&status).iter().all(|u| {
            u.state == "usable" && u.rx_bytes_per_sec > 0 && u.rtt_ms.is_some() && u.endpoint
        });
        (both && status.client.as_ref().is_some_and(|c| c.relayed >= 1)).then_some(status)
    });
    let (before, took) = seen.unwrap_or_else(|| {
        panic!(
            "the client's status never showed both uplinks usable and carrying the download: {:?}",
            status_of("mpb-cli", "client.toml")
        )
    });
    eprintln!("client status: both uplinks usable and receiving after {took:?}");
    for u in uplinks(&before) {
        eprintln!(
            "  {}: {} rtt {:?} ms, rx {:?} B at {} B/s",
            u.name, u.state, u.rtt_ms, u.rx_bytes, u.rx_bytes_per_sec
        );
        assert!(u.address.is_some(), "{} has its address: {u:?}", u.name);
    }
    assert_eq!(before.role, "client");
    assert!(before.pid > 0);

    // The concentrator has the client, with the download's connection.
    let conc = status_of("mpb-conc", "concentrator.toml");
    let lab_entry = lab_client(&conc);
    eprintln!(
        "concentrator status: client lab with {} connections, {} admitted",
        lab_entry.connections, lab_entry.connections_total
    );
    assert!(lab_entry.connections >= 1, "{lab_entry:?}");
    assert!(lab_entry.connections_total >= 1, "{lab_entry:?}");
    // Counted as they go: the running download's bytes are there.
    assert!(
        lab_entry.down_bytes >= 4 * MIB,
        "the concentrator relayed at least the 4 MiB the LAN host has: {lab_entry:?}"
    );
    assert!(
        lab_entry.datagram.as_ref().is_some_and(|d| d.session),
        "the lab client's datagram session is up: {lab_entry:?}"
    );
    assert_eq!(lab_entry.tunnel_addresses, ["10.77.0.2", "fd77::2"]);

    // The client's metrics from the LAN host, as Prometheus scrapes them.
    let (code, first) = scrape("mpb-lan", CLIENT_METRICS);
    assert_eq!(code, 200, "{first}");
    promtool_check("client", &first);
    assert_eq!(must(&first, r#"mpbond_uplink_up{uplink="lte"}"#), 1.0);
    assert_eq!(must(&first, r#"mpbond_uplink_up{uplink="dsl"}"#), 1.0);
    let dsl_rx = must(&first, r#"mpbond_uplink_rx_bytes_total{uplink="dsl"}"#);
    let rtt = must(&first, r#"mpbond_uplink_rtt_seconds{uplink="dsl"}"#);
    assert!(
        rtt > 0.015 && rtt < 1.0,
        "dsl's rtt {rtt} s (a 2 x 10 ms line)"
    );
    let (code, _) = request("mpb-lan", CLIENT_METRICS, "GET / HTTP/1.1\r\n\r\n");
    assert_eq!(code, 404, "only /metrics is served yet");
    let (code, _) = request("mpb-lan", CLIENT_METRICS, "\x16\x03\x01 garbage\r\n\r\n");
    assert_eq!(code, 400, "garbage is a bad request");

    // lte blackholed: the status calls it dead, the metrics say so.
    lab.link(&["lte", "blackhole"]);
    let cut = Instant::now();
    let dead = poll(Duration::from_secs(5), || {
        let status = status_of("mpb-cli", "client.toml");
        let lte = uplink(&status, "lte");
        (lte.state == "dead").then_some(status)
    });
    let (after, took) = dead.unwrap_or_else(|| {
        panic!(
            "lte not dead in the status 5 s after the blackhole: {:?}",
            uplink(&status_of("mpb-cli", "client.toml"), "lte")
        )
    });
    let lte = uplink(&after, "lte");
    eprintln!(
        "status: lte dead {took:?} after the blackhole ({})",
        lte.reason
    );
    assert!(!lte.endpoint, "a dead line's endpoint is removed: {lte:?}");
    assert!(
        lte.state_changes > uplink(&before, "lte").state_changes,
        "{lte:?}"
    );
    assert!(lte.changed_unix > before.now_unix, "{lte:?}");
    assert_eq!(uplink(&after, "dsl").state, "usable");

    let scraped = poll(Duration::from_secs(3), || {
        let (code, body) = scrape("mpb-lan", CLIENT_METRICS);
        (code == 200 && sample(&body, r#"mpbond_uplink_up{uplink="lte"}"#) == Some(0.0))
            .then_some(body)
    });
    let (second, _) = scraped.unwrap_or_else(|| {
        panic!(
            "mpbond_uplink_up{{uplink=\"lte\"}} not 0 within 3 s of the status saying dead:\n{}",
            scrape("mpb-lan", CLIENT_METRICS).1
        )
    });
    eprintln!(
        "metrics: lte down {:.2} s after the blackhole",
        cut.elapsed().as_secs_f64()
    );
    promtool_check("client", &second);
    assert_eq!(must(&second, r#"mpbond_uplink_up{uplink="dsl"}"#), 1.0);
    assert_eq!(
        must(&second, r#"mpbond_uplink_state{uplink="lte",state="dead"}"#),
        1.0
    );
    assert!(
        must(
            &second,
            r#"mpbond_uplink_state_changes_total{uplink="lte"}"#
        ) >= 1.0
    );
    // Counters move with the traffic: the download goes on over dsl.
    let moved = poll(Duration::from_secs(5), || {
        let (_, body) = scrape("mpb-lan", CLIENT_METRICS);
        let rx = sample(&body, r#"mpbond_uplink_rx_bytes_total{uplink="dsl"}"#)?;
        (rx - dsl_rx >= MIB as f64).then_some(rx)
    });
    let (dsl_rx_after, took) = moved.unwrap_or_else(|| {
        panic!("dsl's rx counter did not move by 1 MiB within 5 s while it carried the download")
    });
    eprintln!(
        "dsl's rx counter moved {:.1} MiB ({took:?} after the second scrape)",
        (dsl_rx_after - dsl_rx) / MIB as f64
    );

    // The concentrator's metrics, inside mpb-conc.
    let (code, conc_metrics) = scrape("mpb-conc", CONCENTRATOR_METRICS);
    assert_eq!(code, 200, "{conc_metrics}");
    promtool_check("concentrator", &conc_metrics);
    assert!(must(&conc_metrics, r#"mpbond_client_connections{client="lab"}"#) >= 1.0);
    let down = must(
        &conc_metrics,
        r#"mpbond_client_down_bytes_total{client="lab"}"#,
    );
    assert!(
        down > lab_entry.down_bytes as f64,
        "the lab client's down bytes grew with the download: {down} after {}",
        lab_entry.down_bytes
    );
    assert!(
        must(
            &conc_metrics,
            r#"mpbond_client_datagram_session_up{client="lab"}"#
        ) == 1.0
    );
    assert!(sample(
        &conc_metrics,
        r#"mpbond_rejected_peers_total{reason="bad_mac"}"#
    )
    .is_some());

    // The human view and the bounded watch, both daemons found without
    // --config.
    let (ok, text, err) = mpbond_status("mpb-cli", &[]);
    assert!(ok, "mpbond status failed: {err}");
    assert!(text.contains("\nuplink lte\n"), "{text}");
    assert!(text.contains("  state: dead for "), "{text}");
    assert!(
        text.contains("\nclient lab\n"),
        "the concentrator's block: {text}"
    );
    let (ok, watched, err) = mpbond_status(
        "mpb-cli",
        &["--json", "--watch", "--interval", "0.2", "--count", "2"],
    );
    assert!(ok, "mpbond status --watch failed: {err}");
    assert_eq!(watched.lines().count(), 2, "{watched}");
    for line in watched.lines() {
        let list: Vec<Status> = serde_json::from_str(line).expect("a status list per line");
        let roles: Vec<&str> = list.iter().map(|s| s.role.as_str()).collect();
        assert!(
            roles.contains(&"client") && roles.contains(&"concentrator"),
            "{roles:?}"
        );
    }

    lab.link(&["lte", "up"]);
    check_download(
        "32 MiB with lte blackholed",
        download.join().expect("download thread"),
        &srv,
        LEN,
        SEED,
    );

    // Stopped: the sockets are gone and status says what to do.
    let sockets = [
        before.socket.clone(),
        status_of("mpb-conc", "concentrator.toml").socket,
    ];
    lab.stop();
    for socket in &sockets {
        assert!(
            !std::path::Path::new(socket).exists(),
            "{socket} left behind after stop"
        );
    }
    let path = config("client.toml").to_string_lossy().into_owned();
    let (ok, _, err) = mpbond_status("mpb-cli", &["--config", &path]);
    assert!(!ok, "status succeeded with no daemon running");
    assert!(err.contains("no mpbond daemon answers on"), "{err}");
}
