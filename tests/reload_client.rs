//! Reloading the client's config (SIGHUP, `systemctl reload`) in the lab
//! (LAB.md), while a download from mpb-srv to the LAN host runs through
//! the tunnel:
//!
//! - a broken file is refused with its path, line and key, and nothing
//!   changes: the client runs on and so does the download;
//! - lte removed from the file leaves as an unplugged modem does: its
//!   subflow, MPTCP endpoint, source rule and route go, `mpbond status` no
//!   longer shows it, and lte0 carries nothing more of the download;
//! - lte added back joins as a plugged-in modem does: the running download
//!   gets a subflow on it and lte0 carries again;
//! - every byte arrives (sha256), and after `lab.sh stop` nothing of
//!   mpbond's is left.
//!
//! Needs root; one lab at a time.

mod harness;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use harness::download::{check_download, start_download, wait_for};
use harness::state::installed;
use harness::within;
use harness::{if_bytes, mpbond_bin, ns_ok, subflows, Behavior, Lab, NsServer, RUN};

const SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
const CONCENTRATOR: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 9, 2));
const LTE: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 2, 2));
const CLI: &str = "mpb-cli";
const MIB: u64 = 1 << 20;
const LEN: u64 = 120 * MIB;
const SEED: u64 = 0x4e10;

/// lte's section of the lab client config.
const LTE_SECTION: &str = "[[uplink]]\nname = \"lte\"\ninterface = \"lte0\"\n\
                           gateway = \"10.77.2.1\"\ngateway6 = \"fd77:2::1\"\n";

/// The client's log lines so far that contain `text`.
fn log_lines(text: &str) -> Vec<String> {
    std::fs::read_to_string(format!("{RUN}/client.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(text))
        .map(str::to_owned)
        .collect()
}

/// Waits up to 5 s for the client to log a `count`th line containing
/// `text`; returns that line.
fn logged(lab: &Lab, text: &str, count: usize) -> String {
    let mut lines = Vec::new();
    let seen = within(Duration::from_secs(5), || {
        lines = log_lines(text);
        lines.len() >= count
    });
    assert!(
        seen.is_some(),
        "the client did not log \"{text}\" (the {count}th time) within 5 s of the SIGHUP:\n{}",
        lab.log_tail("client", 30)
    );
    lines[count - 1].clone()
}

/// The uplink names `mpbond status --json` shows for the client running
/// with `config`.
fn status_uplinks(config: &Path) -> Vec<String> {
    let out = Command::new(mpbond_bin())
        .args(["status", "--json", "--config"])
        .arg(config)
        .output()
        .expect("run mpbond status");
    assert!(
        out.status.success(),
        "mpbond status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("mpbond status --json prints JSON");
    let uplinks = docs
        .as_array()
        .and_then(|docs| docs.first())
        .and_then(|doc| doc.pointer("/client/uplinks"))
        .and_then(|u| u.as_array())
        .unwrap_or_else(|| panic!("no client uplinks in the status: {docs}"));
    uplinks
        .iter()
        .filter_map(|u| u.get("name")?.as_str().map(str::to_owned))
        .collect()
}

/// What of mpbond's is installed in mpb-cli for lte: its MPTCP endpoint
/// (10.77.2.2), its source rule (from 10.77.2.2, table 7702) and its route
/// (table 7702).
fn installed_for_lte() -> Vec<String> {
    installed()
        .into_iter()
        .filter(|l| l.contains("10.77.2.2") || l.contains("7702") || l.contains("lte0"))
        .collect()
}

/// Subflows of the tunnels from lte's address now.
fn lte_subflows() -> bool {
    let ss = ns_ok(CLI, &["ss", "-tinH"]);
    subflows(&ss, SocketAddr::new(CONCENTRATOR, 7300)).contains(&LTE)
}

/// The client is still the process `pid`.
fn alive(lab: &Lab, pid: u32) -> bool {
    lab.pid("client") == Some(pid) && harness::running(pid)
}

/// The 1-based line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}"))
        + 1
}

/// Removes the config copy at the end, however the test ends.
struct TempConfig(PathBuf);

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_reload_refuses_a_broken_file_and_removes_and_adds_an_uplink_under_a_download() {
    let original = std::fs::read_to_string(harness::root().join("deploy/lab/client.toml"))
        .expect("the lab client config");
    assert!(
        original.contains(LTE_SECTION),
        "deploy/lab/client.toml has lte's section as this test writes it"
    );
    let config = TempConfig(
        std::env::temp_dir().join(format!("mpbond-reload-client-{}.toml", std::process::id())),
    );
    let path = config.0.clone();
    let path_text = path.to_string_lossy().into_owned();
    std::fs::write(&path, &original).expect("write config");
    let lab = Lab::up_and_start(&[], &["--client-config", &path_text]);
    let pid = lab.pid("client").expect("the client runs");
    assert_eq!(status_uplinks(&path), ["dsl", "lte"]);

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

    // (a) A broken file, twice: an unknown key, then a bad value on a
    // known line. Each is refused with the file, line and key; the client
    // and the download go on, the running config unchanged.
    let unknown = original.replacen(
        "connect_mode = \"fast\"\n",
        "connect_mode = \"fast\"\nwarm_connectoins = 4\n",
        1,
    );
    let bad_value = original.replacen(
        "connect_mode = \"fast\"\n",
        "connect_mode = \"fast\"\nwarm_connections = \"lots\"\n",
        1,
    );
    for (n, (text, key, prefix)) in [
        (&unknown, "warm_connectoins", "warm_connectoins"),
        (&bad_value, "warm_connections", "warm_connections"),
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(&path, text).expect("write the broken config");
        lab.signal("client", "-HUP");
        let line = logged(&lab, "reload refused", n + 1);
        let at = format!("{path_text}:{}", line_of(text, prefix));
        eprintln!("refused: {line}");
        assert!(
            line.contains(&at) && line.contains(key),
            "the refusal names the file and line ({at}) and the key ({key}): {line}"
        );
        assert!(alive(&lab, pid), "the client ended on a broken reload");
    }
    assert!(
        log_lines("config reloaded").is_empty(),
        "a broken file changed something"
    );
    let before = if_bytes(CLI, "dsl0").rx + if_bytes(CLI, "lte0").rx;
    wait_for(&rx, 12 * MIB);
    assert!(
        if_bytes(CLI, "dsl0").rx + if_bytes(CLI, "lte0").rx - before >= 4 * MIB,
        "the download did not go on over the uplinks after the refused reloads"
    );
    assert!(lte_subflows(), "lte lost its subflow on a refused reload");

    // (b) lte removed from the file: it leaves like an unplugged modem.
    let without_lte = original.replacen(LTE_SECTION, "", 1);
    std::fs::write(&path, &without_lte).expect("write the config without lte");
    let hup = Instant::now();
    lab.signal("client", "-HUP");
    let line = logged(&lab, "config reloaded", 1);
    assert!(
        line.contains("uplinks removed: [\"lte\"]"),
        "the reload says lte was removed: {line}"
    );
    let mut left = Vec::new();
    let gone = within(Duration::from_secs(5), || {
        left = installed_for_lte();
        left.is_empty() && !lte_subflows()
    });
    eprintln!(
        "lte's subflow, endpoint, rule and route gone {gone:?} after the reload ({:.1} s after \
         the SIGHUP)",
        hup.elapsed().as_secs_f64()
    );
    assert!(
        gone.is_some(),
        "5 s after the reload that removed lte, still there: {left:?}; lte subflows: {}",
        lte_subflows()
    );
    // Health publishes the status once the owner has removed it all.
    let mut shown = Vec::new();
    let hidden = within(Duration::from_secs(2), || {
        shown = status_uplinks(&path);
        shown == ["dsl"]
    });
    assert!(hidden.is_some(), "mpbond status still shows: {shown:?}");
    // What lte's emulator still held queued (up to 100 ms of it) arrives
    // first; then lte0 must be idle.
    wait_for(&rx, 16 * MIB);
    let lte_before = if_bytes(CLI, "lte0").rx;
    let dsl_before = if_bytes(CLI, "dsl0").rx;
    wait_for(&rx, 40 * MIB);
    let (lte, dsl) = (
        if_bytes(CLI, "lte0").rx - lte_before,
        if_bytes(CLI, "dsl0").rx - dsl_before,
    );
    eprintln!(
        "without lte: dsl0 received {:.1} MiB, lte0 {} bytes",
        dsl as f64 / MIB as f64,
        lte
    );
    assert!(
        lte < MIB / 4 && dsl >= 8 * MIB,
        "after lte's removal the download must go on over dsl alone: dsl0 received {dsl} \
         bytes, lte0 {lte}"
    );
    assert!(alive(&lab, pid), "the client restarted or ended");

    // lte added back: it joins like a plugged-in modem, on the running
    // download too.
    std::fs::write(&path, &original).expect("write the config with lte");
    let hup = Instant::now();
    lab.signal("client", "-HUP");
    let line = logged(&lab, "config reloaded", 2);
    assert!(
        line.contains("uplinks added: [\"lte\"]"),
        "the reload says lte was added: {line}"
    );
    let subflow = within(Duration::from_secs(5), lte_subflows);
    assert!(
        subflow.is_some(),
        "no subflow from lte's {LTE} within 5 s of the reload that added it back"
    );
    let before = if_bytes(CLI, "lte0").rx;
    let carried = within(Duration::from_secs(5), || {
        if_bytes(CLI, "lte0").rx - before >= MIB
    });
    eprintln!(
        "lte added back: a subflow after {subflow:?}, 1 MiB on lte0 {carried:?} later ({:.1} s \
         after the SIGHUP)",
        hup.elapsed().as_secs_f64()
    );
    assert!(
        carried.is_some(),
        "lte0 received less than 1 MiB in the 5 s after its subflow came back"
    );
    let shown = within(Duration::from_secs(2), || {
        status_uplinks(&path) == ["dsl", "lte"]
    });
    assert!(shown.is_some(), "mpbond status does not show lte again");
    let endpoints = ns_ok(CLI, &["ip", "mptcp", "endpoint", "show"]);
    assert!(
        endpoints.contains("10.77.2.2"),
        "lte's endpoint is back: {endpoints}"
    );

    // lte made a backup line: its endpoint is marked in place (MP_PRIO),
    // its subflow stays, and the download leaves it for dsl.
    let as_backup = original.replacen(LTE_SECTION, &format!("{LTE_SECTION}backup = true\n"), 1);
    std::fs::write(&path, &as_backup).expect("write the config with lte as backup");
    lab.signal("client", "-HUP");
    let line = logged(&lab, "config reloaded", 3);
    assert!(
        line.contains("uplinks with a new backup flag: [\"lte\"]"),
        "the reload says lte's backup flag changed: {line}"
    );
    let mut endpoints = String::new();
    let marked = within(Duration::from_secs(2), || {
        endpoints = ns_ok(CLI, &["ip", "mptcp", "endpoint", "show"]);
        endpoints
            .lines()
            .any(|l| l.contains("10.77.2.2") && l.contains("backup"))
    });
    assert!(
        marked.is_some(),
        "lte's endpoint is not marked backup: {endpoints}"
    );
    assert!(lte_subflows(), "marking lte backup dropped its subflow");
    let (lte_before, dsl_before) = (if_bytes(CLI, "lte0").rx, if_bytes(CLI, "dsl0").rx);
    wait_for(&rx, 80 * MIB);
    let (lte, dsl) = (
        if_bytes(CLI, "lte0").rx - lte_before,
        if_bytes(CLI, "dsl0").rx - dsl_before,
    );
    eprintln!(
        "lte as backup: dsl0 received {:.1} MiB, lte0 {:.1} MiB",
        dsl as f64 / MIB as f64,
        lte as f64 / MIB as f64
    );
    assert!(
        lte < dsl / 4,
        "with lte a backup line and dsl working, lte0 still carried {lte} bytes to dsl0's {dsl}"
    );
    check_download(
        "120 MiB, two refused reloads, lte removed at 12 MiB, added back at 40 MiB, \
         made a backup after",
        download.join().expect("download thread"),
        &srv,
        LEN,
        SEED,
    );
    assert!(alive(&lab, pid), "the client restarted or ended");

    lab.stop();
    assert_eq!(
        installed(),
        Vec::<String>::new(),
        "mpbond left things behind in mpb-cli"
    );
}
