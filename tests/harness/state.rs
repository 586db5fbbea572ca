//! What the client installs in mpb-cli (rules, routes, MPTCP endpoints,
//! its TUN, nftables, sysctls), to check that it is all gone after a stop,
//! a crash or a fault, or all back as it was.

use std::collections::BTreeSet;

use super::{ns_ok, ns_run};

const CLI: &str = "mpb-cli";

/// What the client may install in mpb-cli.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientState {
    pub rules4: String,
    pub rules6: String,
    pub routes4: String,
    pub routes6: String,
    pub endpoints: String,
    pub mpb0: bool,
    pub nft: Option<String>,
    /// The sysctls the client may change.
    pub sysctls: String,
}

/// The output of `cmd` in mpb-cli, its lines sorted (dump order is not
/// part of the state).
fn sorted(cmd: &[&str]) -> String {
    let out = ns_ok(CLI, cmd);
    let mut lines: Vec<&str> = out.lines().map(str::trim_end).collect();
    lines.sort_unstable();
    lines.iter().map(|l| format!("{l}\n")).collect()
}

pub fn client_state() -> ClientState {
    let nft_exists = ns_run(CLI, &["sh", "-c", "command -v nft"])
        .status
        .success();
    ClientState {
        rules4: sorted(&["ip", "-4", "rule", "show"]),
        rules6: sorted(&["ip", "-6", "rule", "show"]),
        routes4: sorted(&["ip", "-4", "route", "show", "table", "all"]),
        routes6: sorted(&["ip", "-6", "route", "show", "table", "all"]),
        endpoints: sorted(&["ip", "mptcp", "endpoint", "show"]),
        mpb0: ns_run(CLI, &["ip", "link", "show", "mpb0"])
            .status
            .success(),
        nft: nft_exists.then(|| ns_ok(CLI, &["nft", "list", "ruleset"])),
        sysctls: ns_ok(
            CLI,
            &["sysctl", "net.mptcp.enabled", "net.ipv4.tcp_fastopen"],
        ),
    }
}

impl ClientState {
    /// The state without the TUN's IPv6 link-local address, which the
    /// kernel draws anew each time the device is made: what a running
    /// client installs, to compare across its restarts.
    pub fn installed(&self) -> Self {
        let mut state = self.clone();
        state.routes6 = state
            .routes6
            .lines()
            .filter(|l| !(l.starts_with("local fe80::") && l.contains(" dev mpb0 ")))
            .map(|l| format!("{l}\n"))
            .collect();
        state
    }
}

/// What of mpbond's is installed in mpb-cli: rules and routes with its
/// protocol (tables 7701+ and 7799), and MPTCP endpoints.
pub fn installed() -> Vec<String> {
    let mut all = Vec::new();
    for family in ["-4", "-6"] {
        all.extend(
            ns_ok(CLI, &["ip", family, "rule", "show"])
                .lines()
                .filter(|l| l.contains("proto 109"))
                .map(str::to_owned),
        );
        all.extend(
            ns_ok(
                CLI,
                &[
                    "ip", family, "route", "show", "table", "all", "proto", "109",
                ],
            )
            .lines()
            .map(str::to_owned),
        );
    }
    all.extend(
        ns_ok(CLI, &["ip", "mptcp", "endpoint", "show"])
            .lines()
            .map(str::to_owned),
    );
    all
}

/// `ip mptcp limits` in mpb-cli: shown, not required to come back (a
/// setting, not something installed).
pub fn mptcp_limits() -> String {
    ns_ok(CLI, &["ip", "mptcp", "limits", "show"])
        .trim()
        .to_owned()
}

/// Lines of `now` that `before` lacks.
pub fn added(before: &str, now: &str) -> Vec<String> {
    let before: BTreeSet<&str> = before.lines().collect();
    now.lines()
        .filter(|l| !before.contains(l))
        .map(str::to_owned)
        .collect()
}

pub fn describe(before: &ClientState, now: &ClientState) -> String {
    let mut out = Vec::new();
    for (what, b, n) in [
        ("ip -4 rule", &before.rules4, &now.rules4),
        ("ip -6 rule", &before.rules6, &now.rules6),
        ("ip -4 route (all tables)", &before.routes4, &now.routes4),
        ("ip -6 route (all tables)", &before.routes6, &now.routes6),
        ("ip mptcp endpoint", &before.endpoints, &now.endpoints),
        ("sysctl", &before.sysctls, &now.sysctls),
    ] {
        for line in added(b, n) {
            out.push(format!("  {what}: + {line}"));
        }
        for line in added(n, b) {
            out.push(format!("  {what}: - {line}"));
        }
    }
    if now.mpb0 && !before.mpb0 {
        out.push("  device mpb0 exists".to_owned());
    }
    if now.nft != before.nft {
        if let Some(nft) = now.nft.as_deref().filter(|r| !r.trim().is_empty()) {
            out.push(format!("  nft ruleset:\n{nft}"));
        }
    }
    out.join("\n")
}

pub fn assert_clean(baseline: &ClientState, when: &str) {
    let now = client_state();
    let all_routes = format!("{}{}", now.routes4, now.routes6);
    let proto109: Vec<&str> = all_routes
        .lines()
        .filter(|l| l.contains("proto 109"))
        .collect();
    assert!(
        proto109.is_empty(),
        "{when}: routes with proto 109 left in mpb-cli:\n{}",
        proto109.join("\n")
    );
    assert_eq!(
        now.rules4.lines().count(),
        3,
        "{when}: mpb-cli must have only the 3 default IPv4 rules:\n{}",
        now.rules4
    );
    assert!(
        now.endpoints.trim().is_empty(),
        "{when}: MPTCP endpoints left:\n{}",
        now.endpoints
    );
    assert!(!now.mpb0, "{when}: mpb0 left in mpb-cli");
    if let Some(nft) = &now.nft {
        assert!(nft.trim().is_empty(), "{when}: nftables rules left:\n{nft}");
    }
    assert!(
        &now == baseline,
        "{when}: mpb-cli differs from before the client started:\n{}",
        describe(baseline, &now)
    );
}
