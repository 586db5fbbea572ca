//! The lab itself (LAB.md): topology, the link emulator's effect on real
//! traffic, live link commands, bad input, and a clean `down`.
//!
//! Needs root; run through scripts/test.sh. One lab at a time (file lock).

mod harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use harness::{in_ns, lab_sh, ns_ok, ping, scenario, Lab, LabLock};

const NAMESPACES: [&str; 7] = [
    "mpb-lan", "mpb-cli", "mpb-dsl", "mpb-lte", "mpb-wan", "mpb-conc", "mpb-srv",
];

fn namespaces_present() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("mpb-"))
        .map(str::to_owned)
        .collect()
}

fn carrier(ns: &str, dev: &str) -> String {
    ns_ok(ns, &["cat", &format!("/sys/class/net/{dev}/carrier")])
        .trim()
        .to_owned()
}

fn stat(stats: &[(String, String)], key: &str) -> u64 {
    stats
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no counter {key} in {stats:?}"))
}

/// One lab on the default profiles (dsl, lte), without mpbond: its
/// topology, what each line's emulator does to real traffic, then the live
/// link commands, one scenario after the other. A scenario that changes a
/// line puts it back as `up` made it and checks that it works again, so
/// none depends on another's leftovers; unplug re-creates lte0 and its
/// emulator, so it goes last.
#[test]
fn default_lines_match_lab_md_and_follow_link_commands() {
    let lab = Lab::up(&[]);
    scenario("topology matches LAB.md", topology_matches_lab_md);
    scenario(
        "ping RTT reflects each profile",
        ping_rtt_reflects_each_profile,
    );
    scenario(
        "TCP crosses each line intact both ways",
        tcp_crosses_each_line_intact_both_ways,
    );
    scenario("blackhole and down cut one line only", || {
        blackhole_and_down_cut_one_line_only(&lab)
    });
    scenario("set changes shaping live", || {
        set_changes_shaping_live(&lab)
    });
    scenario("unplug and plug lte (emulated)", || {
        unplug_and_plug_take_the_interface_away_and_bring_it_back(&lab, "lte")
    });
}

fn topology_matches_lab_md() {
    for ns in NAMESPACES {
        assert!(
            std::path::Path::new("/run/netns").join(ns).exists(),
            "namespace {ns} missing"
        );
        let cc = ns_ok(ns, &["sysctl", "-n", "net.ipv4.tcp_congestion_control"]);
        assert_eq!(cc.trim(), "bbr", "congestion control not pinned in {ns}");
    }
    let addresses = [
        ("mpb-lan", "eth0", "192.168.77.2/24", "fd77:77::2/64"),
        ("mpb-cli", "lan0", "192.168.77.1/24", "fd77:77::1/64"),
        ("mpb-cli", "dsl0", "10.77.1.2/24", "fd77:1::2/64"),
        ("mpb-cli", "lte0", "10.77.2.2/24", "fd77:2::2/64"),
        ("mpb-wan", "dsl0", "10.77.1.1/24", "fd77:1::1/64"),
        ("mpb-wan", "lte0", "10.77.2.1/24", "fd77:2::1/64"),
        ("mpb-wan", "conc0", "10.77.9.1/24", "fd77:9::1/64"),
        ("mpb-wan", "srv0", "198.51.100.1/24", "2001:db8:100::1/64"),
        ("mpb-conc", "eth0", "10.77.9.2/24", "fd77:9::2/64"),
        ("mpb-srv", "eth0", "198.51.100.10/24", "2001:db8:100::10/64"),
    ];
    for (ns, dev, v4, v6) in addresses {
        let shown = ns_ok(ns, &["ip", "-o", "addr", "show", "dev", dev]);
        assert!(
            shown.contains(&format!("inet {v4} ")),
            "{ns} {dev} lacks {v4}:\n{shown}"
        );
        assert!(
            shown.contains(&format!("inet6 {v6} ")),
            "{ns} {dev} lacks {v6}:\n{shown}"
        );
    }
    let routes = [
        ("mpb-lan", "-4", "default via 192.168.77.1"),
        ("mpb-lan", "-6", "default via fd77:77::1"),
        ("mpb-cli", "-4", "default via 10.77.1.1 dev dsl0 metric 100"),
        ("mpb-cli", "-4", "default via 10.77.2.1 dev lte0 metric 200"),
        ("mpb-cli", "-6", "default via fd77:1::1 dev dsl0 metric 100"),
        ("mpb-cli", "-6", "default via fd77:2::1 dev lte0 metric 200"),
        ("mpb-conc", "-4", "default via 10.77.9.1"),
        ("mpb-conc", "-6", "default via fd77:9::1"),
        ("mpb-srv", "-4", "default via 198.51.100.1"),
        ("mpb-srv", "-6", "default via 2001:db8:100::1"),
        ("mpb-wan", "-4", "192.168.77.0/24 via 10.77.1.2"),
    ];
    for (ns, family, route) in routes {
        let shown = ns_ok(ns, &["ip", family, "route", "show"]);
        assert!(
            shown.contains(route),
            "{ns} lacks route {route:?}:\n{shown}"
        );
    }
    // End to end by plain routing, both families: the LAN host reaches the
    // server through the router and the dsl line; the concentrator reaches
    // the server directly.
    for (ns, dst) in [
        ("mpb-lan", "198.51.100.10"),
        ("mpb-lan", "2001:db8:100::10"),
        ("mpb-cli", "10.77.9.2"),
        ("mpb-cli", "fd77:9::2"),
        ("mpb-conc", "198.51.100.10"),
        ("mpb-conc", "2001:db8:100::10"),
    ] {
        let p = ping(ns, dst, 3, Duration::from_millis(100));
        assert!(p.received >= 2, "{ns} cannot reach {dst}: {p:?}");
    }
}

fn ping_rtt_reflects_each_profile() {
    // (address across the line, one-way delay, jitter) of the default profiles.
    for (dst, delay, jitter) in [
        ("10.77.1.1", 10.0, 0.0),
        ("fd77:1::1", 10.0, 0.0),
        ("10.77.2.1", 30.0, 5.0),
        ("fd77:2::1", 30.0, 5.0),
    ] {
        let p = ping("mpb-cli", dst, 20, Duration::from_millis(50));
        // lte loses 0.5 % each way: allow a couple of losses.
        assert!(p.received >= 17, "ping {dst}: {p:?}");
        assert!(
            p.min_ms >= 2.0 * (delay - jitter),
            "ping {dst}: min RTT {} ms below twice the one-way delay {delay} ms (jitter {jitter})",
            p.min_ms
        );
        assert!(
            p.avg_ms >= 2.0 * delay - 3.0 && p.avg_ms <= 2.0 * (delay + jitter) + 10.0,
            "ping {dst}: average RTT {} ms is not about twice the one-way delay {delay} ms",
            p.avg_ms
        );
    }
    // The LAN host's path to the server crosses the dsl line.
    let p = ping("mpb-lan", "198.51.100.10", 5, Duration::from_millis(50));
    assert!(p.received >= 4 && p.min_ms >= 20.0, "lan to srv: {p:?}");
}

fn blackhole_and_down_cut_one_line_only(lab: &Lab) {
    let fast = Duration::from_millis(100);
    let dsl = ping("mpb-cli", "10.77.1.1", 3, fast);
    assert!(
        dsl.received >= 2,
        "dsl answers before the blackhole: {dsl:?}"
    );

    lab.link(&["dsl", "blackhole"]);
    let before = stat(&lab.link_stats("dsl"), "up.drop_down");
    let dsl = ping("mpb-cli", "10.77.1.1", 5, fast);
    assert_eq!(dsl.received, 0, "a blackholed dsl still answers: {dsl:?}");
    assert!(
        stat(&lab.link_stats("dsl"), "up.drop_down") >= before + 5,
        "the blackholed dsl's emulator counts the dropped pings"
    );
    assert_eq!(
        carrier("mpb-cli", "dsl0"),
        "1",
        "a blackhole must keep the carrier up"
    );
    let lte = ping("mpb-cli", "10.77.2.1", 5, fast);
    assert!(
        lte.received >= 4,
        "lte must keep working while dsl is blackholed: {lte:?}"
    );

    lab.link(&["dsl", "up"]);
    let dsl = ping("mpb-cli", "10.77.1.1", 5, fast);
    assert!(dsl.received >= 4, "dsl did not come back after up: {dsl:?}");

    lab.link(&["lte", "down"]);
    assert_eq!(
        carrier("mpb-cli", "lte0"),
        "0",
        "down must take the carrier away"
    );
    let lte = ping("mpb-cli", "10.77.2.1", 3, fast);
    assert_eq!(lte.received, 0, "lte answers while down: {lte:?}");
    let dsl = ping("mpb-cli", "fd77:1::1", 5, fast);
    assert!(
        dsl.received >= 4,
        "dsl must keep working while lte is down: {dsl:?}"
    );

    lab.link(&["lte", "up"]);
    assert_eq!(
        carrier("mpb-cli", "lte0"),
        "1",
        "up must bring the carrier back"
    );
    let lte = ping("mpb-cli", "10.77.2.1", 5, fast);
    assert!(lte.received >= 4, "lte did not come back after up: {lte:?}");
}

fn set_changes_shaping_live(lab: &Lab) {
    lab.link(&["dsl", "set", "-", "40ms", "-"]);
    let p = ping("mpb-cli", "10.77.1.1", 5, Duration::from_millis(100));
    assert!(
        p.min_ms >= 80.0,
        "delay 40 ms each way should give RTT >= 80 ms: {p:?}"
    );
    lab.link(&["dsl", "set", "-", "5ms", "-", "up"]);
    let p = ping("mpb-cli", "10.77.1.1", 5, Duration::from_millis(100));
    assert!(
        p.min_ms >= 45.0 && p.max_ms < 60.0,
        "up 5 ms + down 40 ms should give RTT about 45 ms: {p:?}"
    );

    let bad = lab_sh(&["link", "dsl", "set", "5mbitz", "10ms", "0%"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("5mbitz"),
        "error must quote the bad rate: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
    // The refused command changed nothing.
    let p = ping("mpb-cli", "10.77.1.1", 3, Duration::from_millis(100));
    assert!(
        p.received >= 2 && p.min_ms >= 45.0,
        "a refused set must change nothing: {p:?}"
    );

    // Back to the profile's 10 ms each way, for the scenarios after this.
    lab.link(&["dsl", "set", "-", "10ms", "-"]);
    let p = ping("mpb-cli", "10.77.1.1", 5, Duration::from_millis(100));
    assert!(
        p.received >= 4 && p.min_ms >= 20.0 && p.max_ms < 30.0,
        "delay 10 ms each way again should give RTT about 20 ms: {p:?}"
    );
}

/// Sends `len` pseudo-random bytes from `from_ns` to `to_addr` (listening
/// in `to_ns`) over TCP and checks they arrive intact.
fn tcp_transfer(from_ns: &str, to_ns: &str, to_addr: SocketAddr, len: usize, seed: u8) {
    let payload: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = in_ns(to_ns, move || {
        let listener = TcpListener::bind(to_addr).expect("bind the test listener");
        ready_tx.send(()).expect("signal ready");
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("set timeout");
        let mut got = Vec::new();
        conn.read_to_end(&mut got).expect("read the transfer");
        got
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("listener ready");
    let sent = payload.clone();
    let client = in_ns(from_ns, move || {
        let mut conn =
            TcpStream::connect_timeout(&to_addr, Duration::from_secs(5)).expect("connect");
        conn.write_all(&sent).expect("send the transfer");
    });
    client.join().expect("sender thread");
    let got = server.join().expect("receiver thread");
    assert_eq!(
        got.len(),
        payload.len(),
        "{from_ns} -> {to_addr}: length differs"
    );
    assert!(got == payload, "{from_ns} -> {to_addr}: bytes differ");
}

fn tcp_csum_errors(ns: &str) -> u64 {
    let snmp = ns_ok(ns, &["cat", "/proc/net/snmp"]);
    let tcp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let (names, values) = (tcp[0], tcp[1]);
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "InCsumErrors")
        .and_then(|(_, v)| v.parse().ok())
        .expect("Tcp InCsumErrors in /proc/net/snmp")
}

fn tcp_crosses_each_line_intact_both_ways() {
    let lines = [("10.77.1.1", "10.77.1.2"), ("10.77.2.1", "10.77.2.2")];
    for (i, (wan_addr, cli_addr)) in lines.into_iter().enumerate() {
        let seed = i as u8;
        let down: SocketAddr = format!("{cli_addr}:5201").parse().expect("addr");
        let up: SocketAddr = format!("{wan_addr}:5202").parse().expect("addr");
        tcp_transfer("mpb-wan", "mpb-cli", down, 2 << 20, seed);
        tcp_transfer("mpb-cli", "mpb-wan", up, 1 << 20, seed + 7);
    }
    let v6: SocketAddr = "[fd77:2::2]:5203".parse().expect("addr");
    tcp_transfer("mpb-wan", "mpb-cli", v6, 1 << 20, 42);
    // Partial checksums leaking through the emulator make the receiver drop
    // every segment; the transfers above would stall, and this counts them
    // (since the lab came up).
    for ns in ["mpb-cli", "mpb-wan"] {
        assert_eq!(tcp_csum_errors(ns), 0, "TCP checksum errors in {ns}");
    }
}

#[test]
fn plain_veth_profile_and_trace_profile() {
    let dir = std::env::temp_dir().join(format!("mpbond-lab-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // 1 delivery opportunity per ms = 12 Mbit/s each way.
    let trace: String = (1..=100).map(|ms| format!("{ms}\n")).collect();
    std::fs::write(dir.join("flat.trace"), trace).expect("write trace");
    let profile = dir.join("trace.toml");
    std::fs::write(
        &profile,
        "[down]\ntrace = \"flat.trace\"\ndelay = \"15ms\"\n\
         [up]\ntrace = \"flat.trace\"\ndelay = \"15ms\"\n",
    )
    .expect("write profile");
    let profile = profile.to_string_lossy().into_owned();
    {
        let lab = Lab::up(&["--dsl", "none", "--lte", &profile]);
        let dsl = ping("mpb-cli", "10.77.1.1", 5, Duration::from_millis(50));
        assert!(
            dsl.received >= 4 && dsl.max_ms < 10.0,
            "plain veth: {dsl:?}"
        );
        let lte = ping("mpb-cli", "10.77.2.1", 5, Duration::from_millis(50));
        assert!(
            lte.received >= 4 && lte.min_ms >= 30.0,
            "trace line: {lte:?}"
        );
        tcp_transfer(
            "mpb-wan",
            "mpb-cli",
            "10.77.2.2:5204".parse().expect("addr"),
            1 << 20,
            3,
        );

        lab.link(&["dsl", "blackhole"]);
        let dsl = ping("mpb-cli", "10.77.1.1", 3, Duration::from_millis(100));
        assert_eq!(dsl.received, 0, "blackholed veth answers: {dsl:?}");
        // Forwarded traffic too: mpb-cli's default route is the dsl line.
        let fwd = ping("mpb-cli", "198.51.100.10", 3, Duration::from_millis(100));
        assert_eq!(
            fwd.received, 0,
            "traffic crosses a blackholed veth: {fwd:?}"
        );
        lab.link(&["dsl", "up"]);
        let dsl = ping("mpb-cli", "10.77.1.1", 3, Duration::from_millis(100));
        assert!(dsl.received >= 2, "veth did not come back: {dsl:?}");
        lab.link(&["dsl", "down"]);
        assert_eq!(carrier("mpb-cli", "dsl0"), "0");
        lab.link(&["dsl", "up"]);
        assert_eq!(carrier("mpb-cli", "dsl0"), "1");
        let set = lab_sh(&["link", "dsl", "set", "10mbit", "5ms", "0%"]);
        assert!(!set.status.success(), "set on a plain veth must be refused");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bursty_cellular_profile_carries_tcp_intact() {
    let _lab = Lab::up(&["--dsl", "dsl", "--lte", "lte-bursty"]);
    // 30 ms each way, plus whatever the trace's next opportunity adds.
    let lte = ping("mpb-cli", "10.77.2.1", 5, Duration::from_millis(200));
    assert!(
        lte.received >= 3 && lte.min_ms >= 60.0,
        "lte-bursty line: {lte:?}"
    );
    tcp_transfer(
        "mpb-wan",
        "mpb-cli",
        "10.77.2.2:5205".parse().expect("addr"),
        4 << 20,
        5,
    );
    tcp_transfer(
        "mpb-cli",
        "mpb-wan",
        "10.77.2.1:5206".parse().expect("addr"),
        1 << 20,
        6,
    );
}

#[test]
fn bad_input_gives_one_clear_line_and_no_lab() {
    let _lock = LabLock::acquire();
    let dir = std::env::temp_dir().join(format!("mpbond-lab-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("bad.trace"), "1\n2\n12a\n").expect("write trace");
    std::fs::write(
        dir.join("badtrace.toml"),
        "[down]\ntrace = \"bad.trace\"\ndelay = \"1ms\"\n[up]\nrate = \"5mbit\"\ndelay = \"1ms\"\n",
    )
    .expect("write profile");
    std::fs::write(
        dir.join("fast.toml"),
        "[down]\nrate = \"1000gbit\"\ndelay = \"1ms\"\n[up]\nrate = \"5mbit\"\ndelay = \"1ms\"\n",
    )
    .expect("write profile");
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let (bad_trace, too_fast) = (path("badtrace.toml"), path("fast.toml"));
    let cases = [
        (
            vec!["--dsl", "nosuch"],
            vec!["nosuch", "dsl", "lte", "none"],
        ),
        (
            vec!["--lte", bad_trace.as_str()],
            vec!["bad.trace:3", "12a"],
        ),
        (
            vec!["--dsl", too_fast.as_str()],
            vec!["1000gbit", "down.rate"],
        ),
        (vec!["--dsl"], vec!["--dsl needs a profile"]),
    ];
    for (args, needles) in cases {
        let mut full = vec!["up"];
        full.extend(args.iter().copied());
        let out = lab_sh(&full);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "up {args:?} must fail");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "up {args:?}: one clear line, got:\n{err}"
        );
        for needle in needles {
            assert!(
                err.contains(needle),
                "up {args:?}: error lacks {needle:?}: {err}"
            );
        }
        assert!(
            namespaces_present().is_empty(),
            "up {args:?} left namespaces behind"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn down_leaves_nothing_behind_even_after_a_crash() {
    let lock = LabLock::acquire();
    harness::lab_ok(&["up"]);
    // A crash: the emulators die, the state directory stays. Only this
    // lab's emulators (by pid, from their namespaces): another checkout's
    // processes on the machine are none of this test's business.
    let emulators: Vec<String> = ["mpb-dsl", "mpb-lte"]
        .iter()
        .flat_map(|ns| {
            let out = std::process::Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .expect("ip netns pids");
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(emulators.len(), 2, "one emulator per line: {emulators:?}");
    let _ = std::process::Command::new("kill")
        .arg("-9")
        .args(&emulators)
        .status();
    harness::lab_ok(&["down"]);
    harness::lab_ok(&["down"]); // idempotent

    // A half-built lab: two namespaces, one with a process in it.
    for ns in ["mpb-cli", "mpb-dsl"] {
        assert!(std::process::Command::new("ip")
            .args(["netns", "add", ns])
            .status()
            .expect("ip netns add")
            .success());
    }
    let mut sleeper = std::process::Command::new("ip")
        .args(["netns", "exec", "mpb-dsl", "sleep", "60"])
        .spawn()
        .expect("start a process in mpb-dsl");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !netns_has_pids("mpb-dsl") {
        assert!(
            std::time::Instant::now() < deadline,
            "the process started in mpb-dsl is not there after 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    harness::lab_ok(&["down"]);
    let _ = sleeper.wait();

    assert!(
        namespaces_present().is_empty(),
        "namespaces left: {:?}",
        namespaces_present()
    );
    let left: Vec<&String> = emulators
        .iter()
        .filter(|pid| std::path::Path::new("/proc").join(pid).exists())
        .collect();
    assert!(left.is_empty(), "emulator processes left behind: {left:?}");
    let links = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    let links = String::from_utf8_lossy(&links.stdout);
    for name in ["dsl0", "lte0", "lan0", "conc0", "srv0"] {
        assert!(
            !links.contains(&format!(": {name}@")),
            "{name} left in the root namespace"
        );
    }
    assert!(
        !std::path::Path::new("/run/mpbond-lab").exists(),
        "state directory left"
    );
    drop(lock);
}

/// Whether a process runs in namespace `ns`.
fn netns_has_pids(ns: &str) -> bool {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .expect("ip netns pids");
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

/// The pid in `$RUN/NAME.pid` (written by `lab.sh start`).
fn started_pid(name: &str) -> u32 {
    let text = std::fs::read_to_string(format!("{}/{name}.pid", harness::RUN))
        .unwrap_or_else(|e| panic!("no pid file for {name}: {e}"));
    text.split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("bad pid file for {name}: {text:?}"))
}

#[test]
fn start_stop_and_down_leave_no_process_behind() {
    {
        let _lock = LabLock::acquire();
        let out = lab_sh(&["start", "--no-client"]);
        assert!(!out.status.success(), "start without a lab must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("lab.sh up"), "start must say to run up: {err}");
    }

    let lab = Lab::up_and_start(&[], &["--no-client"]);
    // The probe server answers with the address it sees: directly, the
    // client's dsl address.
    let seen = harness::lab_ok(&["probe", "mpb-cli"]);
    assert_eq!(seen.trim(), "10.77.1.2");
    let seen = harness::lab_ok(&["probe", "mpb-lan", "2001:db8:100::10"]);
    assert_eq!(seen.trim(), "fd77:77::2");
    let again = lab_sh(&["start", "--no-client"]);
    assert!(!again.status.success(), "a second start must fail");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already running"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // Gone, or a zombie init has not reaped yet (it holds nothing).
    let alive = harness::running;

    let pids = [started_pid("concentrator"), started_pid("probe")];
    lab.stop();
    assert!(!pids.into_iter().any(alive), "stop left {pids:?} running");
    lab.stop(); // nothing to stop: fine

    lab.start(&["--no-client"]);
    let pids = [started_pid("concentrator"), started_pid("probe")];
    harness::lab_ok(&["down"]);
    assert!(!pids.into_iter().any(alive), "down left {pids:?} running");
    assert!(namespaces_present().is_empty());
}

/// The index of `dev` in namespace `ns`, if it exists.
fn ifindex(ns: &str, dev: &str) -> Option<String> {
    let out = harness::ns_run(ns, &["cat", &format!("/sys/class/net/{dev}/ifindex")]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `link lte unplug` deletes lte0 (a modem pulled out); `plug` brings it
/// back under the same name and addresses with a new index, working, on
/// an emulated line (the emulator restarted: its commands work again; in
/// the default lab's test above) and on a plain veth (the wan's end
/// re-created too).
#[test]
fn unplug_and_plug_take_a_plain_veth_away_and_bring_it_back() {
    let lab = Lab::up(&["--lte", "none"]);
    unplug_and_plug_take_the_interface_away_and_bring_it_back(&lab, "none");
}

/// On a lab whose lte line has `profile`; leaves lte up.
fn unplug_and_plug_take_the_interface_away_and_bring_it_back(lab: &Lab, profile: &str) {
    let fast = Duration::from_millis(100);
    let before = ifindex("mpb-cli", "lte0").expect("lte0 is there after up");
    lab.link(&["lte", "unplug"]);
    assert_eq!(ifindex("mpb-cli", "lte0"), None, "{profile}: lte0 stayed");
    let refused = lab_sh(&["link", "lte", "down"]);
    assert!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("unplugged"),
        "{profile}: link lte down while unplugged must say it is unplugged"
    );
    assert!(
        ping("mpb-cli", "10.77.1.1", 3, fast).received >= 2,
        "{profile}: dsl must keep working while lte is unplugged"
    );

    lab.link(&["lte", "plug"]);
    let after = ifindex("mpb-cli", "lte0").expect("lte0 is back after plug");
    assert_ne!(
        before, after,
        "{profile}: a plugged-in lte0 is a new interface"
    );
    let lte = ping("mpb-cli", "10.77.2.1", 5, fast);
    assert!(
        lte.received >= 4,
        "{profile}: lte does not work after plug: {lte:?}"
    );
    let routes = ns_ok("mpb-cli", &["ip", "route", "show", "default"]);
    assert!(
        routes.contains("via 10.77.2.1 dev lte0 metric 200"),
        "{profile}: lte0's default route is not back:\n{routes}"
    );
    lab.link(&["lte", "down"]);
    let lte = ping("mpb-cli", "10.77.2.1", 2, fast);
    assert_eq!(
        lte.received, 0,
        "{profile}: lte answers while down: {lte:?}"
    );
    lab.link(&["lte", "up"]);
    let lte = ping("mpb-cli", "10.77.2.1", 5, fast);
    assert!(
        lte.received >= 4,
        "{profile}: lte does not work after down and up: {lte:?}"
    );
}
