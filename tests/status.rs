//! `mpbond status` and the metrics in the lab (LAB.md): with a download
//! running, both ends report what a user would check — both uplinks usable
//! and carrying traffic, the client present at the concentrator with its
//! connection; lte blackholed, the client's status calls it dead and its
//! metrics (scraped from the LAN host, as Prometheus would) say
//! `mpbond_uplink_up{uplink="lte"} 0`; both scrapes pass `promtool check
//! metrics`. Stopped, the daemons leave no socket and `mpbond status` says
//! none runs.
//!
//! The status page, as a user on the LAN sees it: headless Chromium in
//! `mpb-lan` (driven by `tests/browser/cdp.py`) opens
//! http://192.168.77.1:9310/ as the download starts; the page shows both
//! uplinks up and carrying it, then lte down within a few seconds of the
//! blackhole, with the change and its reason listed. The page exposes what
//! it shows in data-* attributes, which is what is checked; screenshots
//! (desktop while both lines carry, phone-sized once lte is down) are kept
//! in `target/status-page/` for people to look at.
//!
//! Needs root, promtool and chromium (Debian packages prometheus and
//! chromium, installed by scripts/deps.sh); one lab at a time.

mod harness;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use harness::download::{check_download, start_download, wait_for};
use harness::{mpbond_bin, ns_run, root, run_in, Behavior, Lab, NsServer};
use mpbond::control::history::HistoryDocument;
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
    let (code, _, body) = request_full(ns, addr, request);
    (code, body)
}

/// Sends `request` to ADDR from namespace `ns`: the status code, head and
/// body.
fn request_full(ns: &str, addr: &str, request: &str) -> (u16, String, String) {
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
        (code, head.to_owned(), body.to_owned())
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

/// Headless Chromium in a namespace, driven by `tests/browser/cdp.py` (one
/// JSON command a line, one JSON answer a line); on drop it is stopped
/// (end of input; killed if it lingers, Chromium with it) and its profile
/// directory removed.
struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    answers: mpsc::Receiver<String>,
    profile: PathBuf,
}

const CHROMIUM: &str = "chromium";

impl Browser {
    /// Starts Chromium in `ns` opening `url`; [`Browser::ready`] waits for
    /// it.
    fn launch(ns: &str, url: &str) -> Self {
        let profile = std::env::temp_dir().join(format!("mpbond-chromium-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("create the browser's profile directory");
        let script = root().join("tests/browser/cdp.py");
        let spawned = Command::new("ip")
            .args(["netns", "exec", ns, "python3"])
            .arg(&script)
            .arg(CHROMIUM)
            .arg(&profile)
            .arg(url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn();
        let mut child = spawned.unwrap_or_else(|e| {
            let _ = std::fs::remove_dir_all(&profile);
            panic!("start {}: {e}", script.display())
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, answers) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            stdin: child.stdin.take(),
            child,
            answers,
            profile,
        }
    }

    /// The next answer, within `limit`: its value; panics with the error.
    fn answer(&self, what: &str, limit: Duration) -> serde_json::Value {
        let line = self.answers.recv_timeout(limit).unwrap_or_else(|e| {
            panic!(
                "the browser gave no answer to {what} within {limit:?} ({e}); chromium said:\n{}",
                self.log_tail()
            )
        });
        let mut answer: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not an answer from cdp.py ({e}): {line}"));
        if let Some(error) = answer.get("error") {
            panic!(
                "the browser failed at {what}: {error}; chromium said:\n{}",
                self.log_tail()
            );
        }
        answer["ok"].take()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.profile.join("chromium.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Waits for Chromium to have started and opened the page.
    fn ready(&self) {
        self.answer("starting Chromium", Duration::from_secs(30));
    }

    fn command(&mut self, what: &str, command: serde_json::Value) -> serde_json::Value {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{command}").expect("send a command to cdp.py");
        self.answer(what, Duration::from_secs(20))
    }

    /// The value of the JavaScript expression `expr` in the page.
    fn eval(&mut self, expr: &str) -> serde_json::Value {
        self.command(expr, serde_json::json!({"cmd": "eval", "expr": expr}))
    }

    fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        self.command(
            "setting the viewport",
            serde_json::json!({"cmd": "viewport", "width": width, "height": height, "mobile": mobile}),
        );
    }

    /// A full-page screenshot saved as `path`.
    fn screenshot(&mut self, path: &Path) {
        let size = self.command(
            "a screenshot",
            serde_json::json!({"cmd": "shot", "path": path}),
        );
        eprintln!("page: screenshot {} ({size})", path.display());
    }

    /// What the page shows of each uplink (its data-* attributes).
    fn uplinks(&mut self) -> Vec<PageUplink> {
        let value = self.eval(
            "[...document.querySelectorAll('article.uplink')].map(e => ({ \
               name: e.dataset.uplink, state: e.dataset.state, up: e.dataset.up === 'true', \
               peak_rx: Number(e.dataset.peakRxBps), samples: Number(e.dataset.samples), \
               rtt_ms: e.dataset.rttMs, svg_paths: e.querySelectorAll('svg path.rx').length }))",
        );
        serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("the page's uplinks ({e}): {value}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Err(e) = std::fs::remove_dir_all(&self.profile) {
            eprintln!("cannot remove {}: {e}", self.profile.display());
        }
    }
}

/// One uplink card as the page shows it.
#[derive(Debug, serde::Deserialize)]
struct PageUplink {
    name: String,
    state: String,
    up: bool,
    /// The highest receive rate in its graph's last 10 s, bytes/s.
    peak_rx: f64,
    samples: u64,
    rtt_ms: String,
    svg_paths: u64,
}

fn page_uplink<'a>(uplinks: &'a [PageUplink], name: &str) -> &'a PageUplink {
    uplinks
        .iter()
        .find(|u| u.name == name)
        .unwrap_or_else(|| panic!("no uplink {name} on the page: {uplinks:?}"))
}

/// Where the screenshots go: `target/status-page/`.
fn screenshots() -> PathBuf {
    let dir = root().join("target/status-page");
    std::fs::create_dir_all(&dir).expect("create target/status-page");
    dir
}

#[test]
fn status_and_metrics_show_both_ends_and_a_blackholed_line() {
    // Fail early, not after the lab is up, if promtool or chromium is
    // missing.
    let promtool = Command::new("promtool").arg("--version").output();
    assert!(
        promtool.is_ok_and(|o| o.status.success()),
        "promtool is missing: source scripts/deps.sh (Debian package prometheus)"
    );
    let chromium = Command::new(CHROMIUM).arg("--version").output();
    assert!(
        chromium.is_ok_and(|o| o.status.success()),
        "chromium is missing: source scripts/deps.sh (Debian package chromium)"
    );
    let lab = Lab::up_and_start(&[], &[]);
    // The page opens as the download starts (Chromium takes a moment).
    let mut browser = Browser::launch("mpb-lan", &format!("http://{CLIENT_METRICS}/"));
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

    // The page shows both uplinks up and carrying the download.
    browser.ready();
    let shown = poll(Duration::from_secs(5), || {
        let page = browser.uplinks();
        let both = ["dsl", "lte"].iter().all(|name| {
            page.iter()
                .any(|u| u.name == *name && u.up && u.state == "usable" && u.peak_rx > 100e3)
        });
        both.then_some(page)
    });
    let (page, took) = shown.unwrap_or_else(|| {
        panic!(
            "the page never showed both uplinks usable and carrying the download: {:?}",
            browser.uplinks()
        )
    });
    eprintln!("page: both uplinks up and carrying after {took:?} more");
    for u in &page {
        eprintln!(
            "  {}: {} peak {:.1} Mbit/s, rtt {} ms, {} samples",
            u.name,
            u.state,
            u.peak_rx * 8.0 / 1e6,
            u.rtt_ms,
            u.samples
        );
        assert!(u.svg_paths >= 1, "{} has a graph: {u:?}", u.name);
        assert!(!u.rtt_ms.is_empty(), "{} shows its RTT: {u:?}", u.name);
    }
    let facts = browser.eval(
        "({ live: document.body.dataset.live, \
            connections: Number(document.getElementById('connections').dataset.connections) })",
    );
    assert_eq!(facts["live"], "ok", "{facts}");
    assert!(facts["connections"].as_u64() >= Some(1), "{facts}");
    browser.screenshot(&screenshots().join("desktop-both-uplinks.png"));

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
    // Both ends name the same data cipher: AES-256-GCM where the CPU has
    // AES instructions (both ends run on this one), ChaCha20-Poly1305
    // otherwise.
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    let expected = if cfg!(target_arch = "x86_64") && has("aes") && has("pclmulqdq") {
        "aes-256-gcm"
    } else if cfg!(target_arch = "x86_64") {
        "chacha20-poly1305"
    } else {
        // Elsewhere the flags are named differently: agreement alone.
        ""
    };
    let conc_cipher = lab_entry.datagram.as_ref().and_then(|d| d.cipher.clone());
    let client_status = status_of("mpb-cli", "client.toml");
    let client_cipher = client_status
        .client
        .as_ref()
        .and_then(|c| c.datagram.as_ref())
        .and_then(|d| d.cipher.clone());
    eprintln!("datagram cipher: client {client_cipher:?}, concentrator {conc_cipher:?}");
    assert!(conc_cipher.is_some(), "{lab_entry:?}");
    assert_eq!(client_cipher, conc_cipher, "both ends use one cipher");
    if !expected.is_empty() {
        assert_eq!(conc_cipher.as_deref(), Some(expected));
    }

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
    let (code, head, page) = request_full("mpb-lan", CLIENT_METRICS, "GET / HTTP/1.1\r\n\r\n");
    assert_eq!(code, 200, "{head}");
    assert!(
        head.contains("Content-Type: text/html; charset=utf-8\r\n"),
        "{head}"
    );
    assert!(page.contains("<title>mpbond status</title>"), "{page}");
    let (code, head, json) = request_full(
        "mpb-lan",
        CLIENT_METRICS,
        "GET /status.json HTTP/1.1\r\n\r\n",
    );
    assert_eq!(code, 200, "{head}");
    assert!(
        head.contains("Content-Type: application/json\r\n"),
        "{head}"
    );
    assert!(head.contains("Cache-Control: no-store\r\n"), "{head}");
    let from_page: Status = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("status.json is the status document ({e}): {json}"));
    assert_eq!(from_page.role, "client");
    let (code, _) = request("mpb-lan", CLIENT_METRICS, "GET /nothing HTTP/1.1\r\n\r\n");
    assert_eq!(code, 404);
    let (code, head, _) = request_full("mpb-conc", CONCENTRATOR_METRICS, "HEAD / HTTP/1.1\r\n\r\n");
    assert_eq!(code, 200, "the concentrator serves the page too: {head}");
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

    // The page, open all along, shows lte down within a few seconds, the
    // change and its reason listed.
    let down = poll(Duration::from_secs(5), || {
        let page = browser.uplinks();
        let lte = page_uplink(&page, "lte");
        (!lte.up && lte.state == "dead").then_some(())
    });
    let shown_after = cut.elapsed();
    assert!(
        down.is_some(),
        "the page did not show lte down within 5 s of the status saying dead: {:?}",
        browser.uplinks()
    );
    eprintln!(
        "page: lte shown down {:.2} s after the blackhole",
        shown_after.as_secs_f64()
    );
    assert!(
        shown_after < Duration::from_secs(8),
        "lte shown down {shown_after:?} after the blackhole"
    );
    let page = browser.uplinks();
    assert!(page_uplink(&page, "dsl").up, "{page:?}");
    let listed = poll(Duration::from_secs(3), || {
        let event = browser.eval(
            "(e => e && e.textContent)(document.querySelector('#events li[data-uplink=\"lte\"][data-to=\"dead\"]'))",
        );
        event.as_str().map(str::to_owned)
    });
    let (event, _) = listed.unwrap_or_else(|| {
        panic!(
            "the page lists no change of lte to dead: {}",
            browser.eval("document.getElementById('events').textContent")
        )
    });
    eprintln!("page: listed \"{event}\"");
    // What a page opened now starts from: the last minutes of both lines
    // and the change.
    let (code, history) = request(
        "mpb-lan",
        CLIENT_METRICS,
        "GET /history.json HTTP/1.1\r\n\r\n",
    );
    assert_eq!(code, 200, "{history}");
    let history: HistoryDocument =
        serde_json::from_str(&history).unwrap_or_else(|e| panic!("history.json ({e}): {history}"));
    for name in ["dsl", "lte"] {
        let line = history.uplinks.iter().find(|u| u.name == name);
        assert!(
            line.is_some_and(|u| u.samples.iter().any(|s| s.rx_bytes_per_sec > 100_000)),
            "{name} carried traffic in history.json: {history:?}"
        );
    }
    assert!(
        history
            .events
            .iter()
            .any(|e| e.uplink == "lte" && e.to == "dead"),
        "{:?}",
        history.events
    );
    assert!(
        event.contains(&lte.reason),
        "{event:?} gives the reason {:?}",
        lte.reason
    );
    browser.viewport(390, 844, true);
    let narrow = browser.eval("document.documentElement.scrollWidth");
    assert!(
        narrow.as_u64().is_some_and(|w| w <= 390),
        "the page fits a phone's width: {narrow}"
    );
    browser.screenshot(&screenshots().join("phone-lte-down.png"));
    drop(browser);

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

    // SIGHUP (`systemctl reload`, a habit, or logrotate) with the config
    // unchanged: the daemons reload it, change nothing and keep answering
    // (tests/reload.rs changes it).
    for (name, ns, config_file, said) in [
        (
            "client",
            "mpb-cli",
            "client.toml",
            "config reloaded: nothing changed",
        ),
        (
            "concentrator",
            "mpb-conc",
            "concentrator.toml",
            "config reloaded: nothing changed",
        ),
    ] {
        let pid = lab.signal(name, "-HUP");
        let said = poll(Duration::from_secs(5), || {
            lab.log_tail(name, 20).contains(said).then_some(())
        });
        assert!(
            said.is_some(),
            "{name} did not log the SIGHUP:\n{}",
            lab.log_tail(name, 20)
        );
        assert_eq!(lab.pid(name), Some(pid), "{name} did not survive SIGHUP");
        let after = status_of(ns, config_file);
        assert_eq!(after.role, name, "{name} answers its status after SIGHUP");
    }

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
