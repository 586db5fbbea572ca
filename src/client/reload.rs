//! What a reload of the client's config changes: the difference between
//! the running config and the one just read, split into what applies live
//! and what needs a restart. Pure; the client's reload task
//! ([`super::run`]) carries the [`Plan`] out.
//!
//! Uplinks are matched by name. Each running uplink keeps the index it
//! started with (its table, rule priority, MPTCP endpoint id, datagram
//! path and probes follow from it), so a removed uplink leaves a vacant
//! index that a later added one takes; an added uplink takes the first
//! vacant index, else the next one. A config holds at most
//! [`ClientConfig::MAX_UPLINKS`] uplinks, so one always fits.

use std::fmt;

use crate::config::client::{DatagramConfig, UplinkConfig};
use crate::config::ClientConfig;

/// The running uplinks by index; `None`: vacant (its uplink was removed by
/// a reload).
pub(super) type Slots = Vec<Option<UplinkConfig>>;

/// What uplink health does for a reload, in this order: leaves, then
/// backup changes, then joins (so that an interface moving from one
/// uplink to another is free before it is taken).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum UplinkOrder {
    /// The uplink at this index leaves, as an unplugged one does, and what
    /// was installed for it goes; its index becomes vacant.
    Leave {
        /// Its index.
        index: usize,
    },
    /// The uplink joins at this index (vacant, or one past the last), as a
    /// hot-plugged one does.
    Join {
        /// Its index.
        index: usize,
        /// Its config.
        config: UplinkConfig,
    },
    /// The uplink at this index becomes a backup one, or stops being one.
    Backup {
        /// Its index.
        index: usize,
        /// Whether it is a backup uplink now.
        backup: bool,
    },
}

/// What a reload changes.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    /// The config that runs from now on: the new one, except that each
    /// key that needs a restart keeps its running value.
    pub(super) config: ClientConfig,
    /// The uplinks by index once the orders are carried out.
    pub(super) slots: Slots,
    /// What uplink health must do, in order.
    pub(super) orders: Vec<UplinkOrder>,
    /// Names of the uplinks added.
    pub(super) added: Vec<String>,
    /// Names of the uplinks removed.
    pub(super) removed: Vec<String>,
    /// Names of the uplinks whose interface or gateway changed: they leave
    /// and join again with the new settings.
    pub(super) rejoined: Vec<String>,
    /// Names of the uplinks whose `backup` flag changed.
    pub(super) backup: Vec<String>,
    /// Keys whose new value applies now.
    pub(super) live: Vec<&'static str>,
    /// Keys whose new value waits for a restart (the running one stays).
    pub(super) restart: Vec<&'static str>,
}

impl Plan {
    /// Nothing changed (nothing to apply, nothing waiting for a restart).
    pub(super) fn is_empty(&self) -> bool {
        self.orders.is_empty() && self.live.is_empty() && self.restart.is_empty()
    }

    /// Settings that apply now changed: the tunnels' settings or the
    /// datagram tunnel's policy.
    pub(super) fn settings_changed(&self) -> bool {
        !self.live.is_empty()
    }
}

/// What changed, for the log line: `uplinks added: [..], removed: [..],
/// ..., settings applied: [..]`, or `nothing changed`.
impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (what, names) in [
            ("uplinks added", &self.added),
            ("uplinks removed", &self.removed),
            ("uplinks rejoining with new settings", &self.rejoined),
            ("uplinks with a new backup flag", &self.backup),
        ] {
            if !names.is_empty() {
                parts.push(format!("{what}: {names:?}"));
            }
        }
        if !self.live.is_empty() {
            parts.push(format!("settings applied: {:?}", self.live));
        }
        if !self.restart.is_empty() {
            parts.push(format!("kept until a restart: {:?}", self.restart));
        }
        if parts.is_empty() {
            return f.write_str("nothing changed");
        }
        f.write_str(&parts.join("; "))
    }
}

/// The keys that only a restart changes, with whether each differs.
fn restart_keys(running: &ClientConfig, new: &ClientConfig) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |key, differs: bool| {
        if differs {
            keys.push(key);
        }
    };
    check("concentrator", running.concentrator != new.concentrator);
    check("id", running.id != new.id);
    check("key", running.key != new.key);
    let identity = |c: &ClientConfig| {
        c.identity
            .as_ref()
            .map(|(secret, peer)| (secret.public_key(), *peer))
    };
    check(
        "private_key / concentrator_public_key",
        identity(running) != identity(new),
    );
    check("connect_mode", running.connect_mode != new.connect_mode);
    let (tun, new_tun) = (&running.tun, &new.tun);
    check("tun.name", tun.name != new_tun.name);
    check("tun.ipv4", tun.ipv4 != new_tun.ipv4);
    check("tun.ipv6", tun.ipv6 != new_tun.ipv6);
    check("tun.mtu", tun.mtu != new_tun.mtu);
    check("tun.offload", tun.offload != new_tun.offload);
    check(
        "control.socket",
        running.control.socket != new.control.socket,
    );
    check(
        "control.metrics",
        running.control.metrics != new.control.metrics,
    );
    match (&running.datagram, &new.datagram) {
        (Some(dg), Some(new_dg)) => {
            check("datagram.port", dg.port != new_dg.port);
            check("datagram.address_v4", dg.address_v4 != new_dg.address_v4);
            check("datagram.address_v6", dg.address_v6 != new_dg.address_v6);
            check("datagram.mtu", dg.mtu != new_dg.mtu);
        }
        (None, None) => {}
        _ => check("datagram (on or off)", true),
    }
    keys
}

/// The datagram tunnel's policy, which the scheduler reads per packet.
fn datagram_policy_keys(dg: &DatagramConfig, new: &DatagramConfig) -> Vec<&'static str> {
    [
        ("datagram.mode", dg.mode != new.mode),
        (
            "datagram.dns_redundant",
            dg.dns_redundant != new.dns_redundant,
        ),
        ("datagram.redundant_ef", dg.redundant_ef != new.redundant_ef),
        (
            "datagram.redundant_ports",
            dg.redundant_ports != new.redundant_ports,
        ),
        ("datagram.quic", dg.quic != new.quic),
    ]
    .into_iter()
    .filter_map(|(key, differs)| differs.then_some(key))
    .collect()
}

/// An uplink's settings that only leaving and joining again change.
fn same_attachment(a: &UplinkConfig, b: &UplinkConfig) -> bool {
    a.interface == b.interface && a.gateway == b.gateway && a.gateway6 == b.gateway6
}

/// Compares the running config (its uplinks by index in `slots`) with
/// `new`, read from the file by a reload.
pub(super) fn plan(running: &ClientConfig, slots: &Slots, new: &ClientConfig) -> Plan {
    let restart = restart_keys(running, new);
    let mut config = running.clone();
    let mut live = Vec::new();
    for (key, differs) in [
        (
            "connect_timeout",
            running.connect_timeout != new.connect_timeout,
        ),
        (
            "warm_connections",
            running.warm_connections != new.warm_connections,
        ),
        ("warm_max_age", running.warm_max_age != new.warm_max_age),
        ("send_buffer", running.send_buffer != new.send_buffer),
    ] {
        if differs {
            live.push(key);
        }
    }
    config.connect_timeout = new.connect_timeout;
    config.warm_connections = new.warm_connections;
    config.warm_max_age = new.warm_max_age;
    config.send_buffer = new.send_buffer;
    if let (Some(dg), Some(new_dg)) = (&mut config.datagram, &new.datagram) {
        live.extend(datagram_policy_keys(dg, new_dg));
        dg.mode = new_dg.mode;
        dg.dns_redundant = new_dg.dns_redundant;
        dg.redundant_ef = new_dg.redundant_ef;
        dg.redundant_ports = new_dg.redundant_ports;
        dg.quic = new_dg.quic;
    }
    config.uplinks = new.uplinks.clone();

    let mut next = slots.clone();
    let (mut leaves, mut backups, mut joins) = (Vec::new(), Vec::new(), Vec::new());
    let (mut added, mut removed, mut rejoined, mut backup) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (index, slot) in slots.iter().enumerate() {
        let Some(old) = slot else { continue };
        match new.uplinks.iter().find(|u| u.name == old.name) {
            None => {
                leaves.push(UplinkOrder::Leave { index });
                removed.push(old.name.clone());
                next[index] = None;
            }
            Some(now) if !same_attachment(old, now) => {
                leaves.push(UplinkOrder::Leave { index });
                joins.push(UplinkOrder::Join {
                    index,
                    config: now.clone(),
                });
                rejoined.push(old.name.clone());
                next[index] = Some(now.clone());
            }
            Some(now) if old.backup != now.backup => {
                backups.push(UplinkOrder::Backup {
                    index,
                    backup: now.backup,
                });
                backup.push(old.name.clone());
                next[index] = Some(now.clone());
            }
            Some(_) => {}
        }
    }
    for uplink in &new.uplinks {
        let known = slots
            .iter()
            .flatten()
            .any(|running| running.name == uplink.name);
        if known {
            continue;
        }
        let index = match next.iter().position(Option::is_none) {
            Some(vacant) => vacant,
            None => {
                next.push(None);
                next.len() - 1
            }
        };
        next[index] = Some(uplink.clone());
        joins.push(UplinkOrder::Join {
            index,
            config: uplink.clone(),
        });
        added.push(uplink.name.clone());
    }
    let orders = leaves.into_iter().chain(backups).chain(joins).collect();
    Plan {
        config,
        slots: next,
        orders,
        added,
        removed,
        rejoined,
        backup,
        live,
        restart,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::client::RawClientConfig;
    use crate::config::ConfigFile;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const OTHER_KEY: &str = "HwECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn config(top: &str, uplinks: &[(&str, &str, bool)], tail: &str) -> ClientConfig {
        let mut text = format!("concentrator = \"10.77.9.2:7300\"\nid = \"lab\"\n{top}\n");
        if !top.contains("key =") {
            text.push_str(&format!("key = \"{KEY}\"\n"));
        }
        for (name, interface, backup) in uplinks {
            text.push_str(&format!(
                "[[uplink]]\nname = \"{name}\"\ninterface = \"{interface}\"\nbackup = {backup}\n"
            ));
        }
        text.push_str(tail);
        let file = ConfigFile::from_text("/etc/mpbond/client.toml", text);
        ClientConfig::try_from(file.deserialize::<RawClientConfig>().expect("parses"))
            .expect("valid")
    }

    fn slots(config: &ClientConfig) -> Slots {
        config.uplinks.iter().cloned().map(Some).collect()
    }

    fn names(slots: &Slots) -> Vec<Option<&str>> {
        slots
            .iter()
            .map(|s| s.as_ref().map(|u| u.name.as_str()))
            .collect()
    }

    const TWO: &[(&str, &str, bool)] = &[("dsl", "dsl0", false), ("lte", "lte0", false)];

    #[test]
    fn the_same_config_changes_nothing() {
        let running = config("", TWO, "");
        let plan = plan(&running, &slots(&running), &config("", TWO, ""));
        assert!(plan.is_empty(), "{plan}");
        assert_eq!(plan.to_string(), "nothing changed");
    }

    #[test]
    fn a_removed_uplink_leaves_and_its_index_stays_vacant() {
        let running = config("", TWO, "");
        let plan = plan(
            &running,
            &slots(&running),
            &config("", &[("lte", "lte0", false)], ""),
        );
        assert_eq!(plan.orders, [UplinkOrder::Leave { index: 0 }]);
        assert_eq!(names(&plan.slots), [None, Some("lte")]);
        assert_eq!(plan.removed, ["dsl"]);
        assert!(plan.live.is_empty() && plan.restart.is_empty());
        assert_eq!(plan.to_string(), "uplinks removed: [\"dsl\"]");
    }

    #[test]
    fn an_added_uplink_takes_the_first_vacant_index_else_the_next() {
        let running = config("", TWO, "");
        let mut slots = slots(&running);
        slots[0] = None;
        let three = [
            ("lte", "lte0", false),
            ("sat", "sat0", true),
            ("wifi", "wlan0", false),
        ];
        let plan = plan(&running, &slots, &config("", &three, ""));
        let join = |index, name: &str, interface: &str, backup| UplinkOrder::Join {
            index,
            config: UplinkConfig {
                name: name.into(),
                interface: interface.into(),
                gateway: None,
                gateway6: None,
                backup,
            },
        };
        assert_eq!(
            plan.orders,
            [
                join(0, "sat", "sat0", true),
                join(2, "wifi", "wlan0", false)
            ]
        );
        assert_eq!(names(&plan.slots), [Some("sat"), Some("lte"), Some("wifi")]);
        assert_eq!(plan.added, ["sat", "wifi"]);
    }

    #[test]
    fn removed_then_added_back_rejoins_at_a_vacant_index() {
        let running = config("", TWO, "");
        let without = config("", &[("dsl", "dsl0", false)], "");
        let first = plan(&running, &slots(&running), &without);
        assert_eq!(first.orders, [UplinkOrder::Leave { index: 1 }]);
        let second = plan(&first.config, &first.slots, &running);
        assert!(matches!(
            second.orders.as_slice(),
            [UplinkOrder::Join { index: 1, config }] if config.name == "lte"
        ));
        assert_eq!(names(&second.slots), [Some("dsl"), Some("lte")]);
        assert_eq!(second.added, ["lte"]);
    }

    #[test]
    fn a_new_interface_leaves_and_joins_again_before_other_joins() {
        let running = config("", TWO, "");
        let swapped = [("dsl", "lte0", false), ("lte", "dsl0", false)];
        let plan = plan(&running, &slots(&running), &config("", &swapped, ""));
        let kinds: Vec<_> = plan
            .orders
            .iter()
            .map(|o| match o {
                UplinkOrder::Leave { index } => format!("leave {index}"),
                UplinkOrder::Join { index, config } => {
                    format!("join {index} {}", config.interface)
                }
                UplinkOrder::Backup { index, .. } => format!("backup {index}"),
            })
            .collect();
        // Both interfaces are free before either is taken again.
        assert_eq!(kinds, ["leave 0", "leave 1", "join 0 lte0", "join 1 dsl0"]);
        assert_eq!(plan.rejoined, ["dsl", "lte"]);
    }

    #[test]
    fn a_backup_flag_changes_in_place() {
        let running = config("", TWO, "");
        let plan = plan(
            &running,
            &slots(&running),
            &config("", &[("dsl", "dsl0", false), ("lte", "lte0", true)], ""),
        );
        assert_eq!(
            plan.orders,
            [UplinkOrder::Backup {
                index: 1,
                backup: true
            }]
        );
        assert_eq!(plan.backup, ["lte"]);
        assert_eq!(plan.slots[1].as_ref().map(|u| u.backup), Some(true));
    }

    /// The top of a config with the key pair the datagram tunnel needs.
    fn keyed(extra: &str) -> String {
        let peer = crate::crypto::StaticSecret::from_bytes([7; 32]).public_key();
        format!("private_key = \"{KEY}\"\nconcentrator_public_key = \"{peer}\"\n{extra}")
    }

    const DATAGRAM: &str = "[datagram]\naddress_v4 = \"10.77.0.2\"\n";

    #[test]
    fn tunnel_settings_and_datagram_policy_apply_live() {
        let running = config(&keyed(""), TWO, DATAGRAM);
        let new = config(
            &keyed(
                "connect_timeout = \"5s\"\nwarm_connections = 0\nwarm_max_age = \"2s\"\n\
                 send_buffer = 0",
            ),
            TWO,
            &format!(
                "{DATAGRAM}mode = \"redundant\"\nquic = \"tunnel\"\nredundant_ports = [5060]\n"
            ),
        );
        let plan = plan(&running, &slots(&running), &new);
        assert_eq!(
            plan.live,
            [
                "connect_timeout",
                "warm_connections",
                "warm_max_age",
                "send_buffer",
                "datagram.mode",
                "datagram.redundant_ports",
                "datagram.quic",
            ]
        );
        assert!(plan.restart.is_empty(), "{plan}");
        assert!(plan.orders.is_empty());
        assert_eq!(plan.config.warm_connections, 0);
        assert_eq!(plan.config.connect_timeout.as_secs(), 5);
        assert_eq!(plan.config.datagram, new.datagram);
    }

    #[test]
    fn the_datagram_tunnel_turned_on_or_readdressed_waits_for_a_restart() {
        let off = config(&keyed(""), TWO, "");
        let on = config(&keyed(""), TWO, DATAGRAM);
        let plan1 = plan(&off, &slots(&off), &on);
        assert_eq!(plan1.restart, ["datagram (on or off)"]);
        assert_eq!(plan1.config.datagram, None);
        let moved = config(
            &keyed(""),
            TWO,
            "[datagram]\naddress_v4 = \"10.77.0.3\"\nport = 7400\nmode = \"aggregate\"\n",
        );
        let plan2 = plan(&on, &slots(&on), &moved);
        assert_eq!(plan2.restart, ["datagram.port", "datagram.address_v4"]);
        assert_eq!(plan2.live, ["datagram.mode"]);
        let kept = plan2.config.datagram.expect("still on");
        assert_eq!(
            (kept.port, kept.address_v4),
            (7300, "10.77.0.2".parse().expect("addr"))
        );
        assert_eq!(kept.mode, crate::datagram::Mode::Aggregate);
    }

    #[test]
    fn keys_that_need_a_restart_keep_their_running_value() {
        let running = config("", TWO, "");
        let new = config(
            &format!(
                "key = \"{OTHER_KEY}\"\nconnect_mode = \"strict\"\nwarm_connections = 4\n\
                 [control]\nmetrics = \"127.0.0.1:9310\"\n[tun]\nname = \"bond0\"\nmtu = 1400\n\
                 offload = false"
            ),
            TWO,
            "",
        );
        let plan = plan(&running, &slots(&running), &new);
        assert_eq!(
            plan.restart,
            [
                "key",
                "connect_mode",
                "tun.name",
                "tun.mtu",
                "tun.offload",
                "control.metrics"
            ]
        );
        assert_eq!(plan.live, ["warm_connections"]);
        // Not half-applied: the running values stay, the live one moves.
        assert_eq!(plan.config.key.as_bytes(), running.key.as_bytes());
        assert_eq!(plan.config.connect_mode, running.connect_mode);
        assert_eq!(plan.config.tun, running.tun);
        assert_eq!(plan.config.control, running.control);
        assert_eq!(plan.config.warm_connections, 4);
        assert!(plan
            .to_string()
            .contains("kept until a restart: [\"key\", \"connect_mode\""));
        // Asked again with the same file, the same keys still wait.
        let again = super::plan(&plan.config, &plan.slots, &new);
        assert_eq!(again.restart, plan.restart);
        assert!(again.live.is_empty() && again.orders.is_empty());
    }
}
