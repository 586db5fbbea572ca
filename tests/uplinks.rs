//! The client's owner of system state against the real kernel: routes,
//! rules, MPTCP endpoints, limits and sysctls installed through
//! [`mpbond::client::system`], followed and removed again. Each test runs
//! in a network namespace of its own (`mpbt-up-TAG-PID-N`), with veth
//! pairs as uplinks and a TUN device, checked with the `ip` tool.
//!
//! They need root and never skip: without it they fail and say so.

mod netns;

use std::future::Future;
use std::net::IpAddr;

use mpbond::client::system::{
    self, cleanup_leftovers, AddressChange, Handle, LinkChange, Uplink, UplinkError,
};
use mpbond::config::client::UplinkConfig;
use mpbond::sys::{EndpointFlags, MptcpEndpoint, MptcpPm};
use netns::TestNs;

fn ip_addr(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// Runs `future` to completion on a runtime of the calling thread (inside
/// the test's namespace, from [`TestNs::run`]).
fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(future)
}

/// Starts the owner in the calling thread's namespace, with a path manager
/// handle of its own.
async fn install(
    uplinks: &[UplinkConfig],
    tun: &str,
    concentrator: IpAddr,
) -> Result<Handle, UplinkError> {
    let pm = MptcpPm::open().expect("open the MPTCP path manager");
    system::start(uplinks, tun, concentrator, pm, None).await
}

/// A namespace `mpbt-up-TAG-PID-N` with the TUN device `mpbt0`, up.
fn tun_ns(tag: &str) -> TestNs {
    let ns = TestNs::new(&format!("up-{tag}"));
    ns.tun("mpbt0");
    ns
}

/// Everything of mpbond's an operator would find.
fn leftovers(ns: &TestNs) -> Vec<String> {
    let mut all = Vec::new();
    for family in ["-4", "-6"] {
        all.extend(ns.ip_lines(&[family, "rule", "show"], "proto 109"));
        all.extend(ns.ip_lines(&[family, "route", "show", "table", "all"], "proto 109"));
    }
    all.extend(ns.ip_lines(&["mptcp", "endpoint", "show"], " id "));
    all
}

fn uplink(name: &str, interface: &str) -> UplinkConfig {
    UplinkConfig {
        name: name.to_owned(),
        interface: interface.to_owned(),
        gateway: None,
        gateway6: None,
        backup: false,
    }
}

/// Two uplinks: `dsl` on d0 with a gateway, `lte` on d1 on-link and
/// backup.
fn two_uplinks() -> Vec<UplinkConfig> {
    vec![
        UplinkConfig {
            gateway: Some("10.77.1.1".parse().expect("address")),
            gateway6: Some("fe80::1".parse().expect("address")),
            ..uplink("dsl", "d0")
        },
        UplinkConfig {
            backup: true,
            ..uplink("lte", "d1")
        },
    ]
}

fn two_uplink_ns(tag: &str) -> TestNs {
    let ns = tun_ns(tag);
    ns.veth("d0", &["10.77.1.2/24", "fd77:1::2/64"]);
    ns.veth("d1", &["10.77.2.2/24", "fd77:2::2/64"]);
    ns
}

const CONCENTRATOR: &str = "203.0.113.7";

#[test]
fn install_sets_up_everything_and_remove_takes_it_away() {
    let ns = two_uplink_ns("all");
    // Someone else's things, which must survive.
    ns.veth("d9", &["10.77.9.2/24"]);
    ns.ip(&["mptcp", "endpoint", "add", "10.77.9.2", "id", "5", "signal"]);
    ns.ip(&["route", "add", "default", "via", "10.77.9.1", "table", "50"]);
    // The system's own default route, in main.
    ns.ip(&["route", "add", "default", "via", "10.77.1.1"]);
    ns.ip(&[
        "mptcp",
        "limits",
        "set",
        "subflows",
        "1",
        "add_addr_accepted",
        "0",
    ]);
    ns.set_sysctl("net.mptcp.enabled", "0");
    ns.set_sysctl("net.ipv4.tcp_fastopen", "0");
    let others = |ns: &TestNs| {
        (
            ns.ip(&["mptcp", "endpoint", "show"]),
            ns.ip(&["route", "show", "table", "50"]),
            ns.ip(&["route", "show", "table", "main"]),
        )
    };
    let before = others(&ns);

    ns.run(|| {
        block_on(async {
            let system = install(&two_uplinks(), "mpbt0", ip_addr(CONCENTRATOR))
                .await
                .expect("install");
            let d0 = mpbond::sys::interface_index("d0").expect("d0");
            let d1 = mpbond::sys::interface_index("d1").expect("d1");
            assert_eq!(
                system.uplinks().await,
                [
                    Uplink {
                        index: 0,
                        name: "dsl".into(),
                        interface: "d0".into(),
                        ifindex: d0,
                        addr: ip_addr("10.77.1.2"),
                        backup: false,
                        endpoint: MptcpEndpoint {
                            id: 96,
                            addr: ip_addr("10.77.1.2"),
                            port: 0,
                            ifindex: Some(d0),
                            flags: EndpointFlags {
                                subflow: true,
                                ..EndpointFlags::default()
                            },
                        },
                    },
                    Uplink {
                        index: 1,
                        name: "lte".into(),
                        interface: "d1".into(),
                        ifindex: d1,
                        addr: ip_addr("10.77.2.2"),
                        backup: true,
                        endpoint: MptcpEndpoint {
                            id: 97,
                            addr: ip_addr("10.77.2.2"),
                            port: 0,
                            ifindex: Some(d1),
                            flags: EndpointFlags {
                                subflow: true,
                                backup: true,
                                ..EndpointFlags::default()
                            },
                        },
                    },
                ]
            );

            assert_eq!(
                ns.ip_lines(&["-4", "rule", "show"], ""),
                [
                    "0: from all lookup 255",
                    "7700: from 10.77.1.2 lookup 7701 proto 109",
                    "7701: from 10.77.2.2 lookup 7702 proto 109",
                    "7780: from all fwmark 0x6d70 lookup 254 proto 109",
                    "7785: from all to 203.0.113.7 lookup 254 proto 109",
                    "7790: from all lookup 254 suppress_prefixlength 0 proto 109",
                    "7791: from all ipproto tcp lookup 7799 proto 109",
                    "32766: from all lookup 254",
                    "32767: from all lookup 253",
                ]
            );
            assert_eq!(
                ns.ip_lines(&["-6", "rule", "show"], ""),
                [
                    "0: from all lookup 255",
                    "7780: from all fwmark 0x6d70 lookup 254 proto 109",
                    "7790: from all lookup 254 suppress_prefixlength 0 proto 109",
                    "7791: from all ipproto tcp lookup 7799 proto 109",
                    "32766: from all lookup 254",
                ]
            );
            assert_eq!(
                ns.ip_lines(&["-4", "route", "show", "table", "all"], "proto 109"),
                [
                    "default via 10.77.1.1 dev d0 table 7701 proto 109",
                    "default dev d1 table 7702 proto 109 scope 253",
                    // No process holds the test's TUN open: no carrier.
                    "default dev mpbt0 table 7799 proto 109 scope 253 linkdown",
                ]
            );
            assert_eq!(
                ns.ip_lines(&["-6", "route", "show", "table", "all"], "proto 109"),
                ["default dev mpbt0 table 7799 proto 109 metric 1024 linkdown pref medium"]
            );
            assert_eq!(
                ns.ip_lines(&["mptcp", "endpoint", "show"], ""),
                [
                    "10.77.9.2 id 5 signal",
                    "10.77.1.2 id 96 subflow dev d0",
                    "10.77.2.2 id 97 subflow backup dev d1",
                ]
            );
            assert_eq!(
                ns.ip_lines(&["mptcp", "limits", "show"], ""),
                ["add_addr_accepted 2 subflows 2"]
            );
            assert_eq!(ns.sysctl("net.mptcp.enabled"), "1");
            assert_eq!(ns.sysctl("net.ipv4.tcp_fastopen"), "1");

            // Where packets go: the world into the TUN; the tunnel's
            // subflows, the concentrator, marked sockets and the connected
            // subnets through the uplinks.
            let routes = [
                (
                    vec!["198.51.100.1", "ipproto", "6"],
                    "198.51.100.1 dev mpbt0 table 7799",
                ),
                // Not TCP: no datagram tunnel yet, so the main table's
                // default route, unbonded.
                (
                    vec!["198.51.100.1", "ipproto", "17"],
                    "198.51.100.1 via 10.77.1.1 dev d0 src 10.77.1.2",
                ),
                (
                    vec!["198.51.100.1", "from", "10.77.1.2"],
                    "198.51.100.1 from 10.77.1.2 via 10.77.1.1 dev d0 table 7701",
                ),
                (
                    vec!["198.51.100.1", "from", "10.77.2.2"],
                    "198.51.100.1 from 10.77.2.2 dev d1 table 7702",
                ),
                (
                    vec![CONCENTRATOR],
                    "203.0.113.7 via 10.77.1.1 dev d0 src 10.77.1.2",
                ),
                (
                    vec!["198.51.100.1", "mark", "0x6d70"],
                    "198.51.100.1 via 10.77.1.1 dev d0 src 10.77.1.2",
                ),
                (vec!["10.77.2.9"], "10.77.2.9 dev d1 src 10.77.2.2"),
                (
                    vec!["2001:db8::1", "ipproto", "6"],
                    "2001:db8::1 from :: dev mpbt0 table 7799",
                ),
            ];
            for (args, want) in routes {
                let got = ns.route_get(&args);
                assert!(got.starts_with(want), "ip route get {args:?}: {got}");
            }

            system.shutdown().await.expect("remove");
        })
    });

    assert_eq!(leftovers(&ns), ["10.77.9.2 id 5 signal"]);
    assert_eq!(others(&ns), before);
    assert_eq!(
        ns.ip_lines(&["mptcp", "limits", "show"], ""),
        ["add_addr_accepted 0 subflows 1"]
    );
    assert_eq!(ns.sysctl("net.mptcp.enabled"), "0");
    assert_eq!(ns.sysctl("net.ipv4.tcp_fastopen"), "0");
}

#[test]
fn ipv6_concentrator_uses_ipv6_uplinks_and_drop_removes_it() {
    let ns = two_uplink_ns("v6");
    let before = ns.ip(&["mptcp", "limits", "show"]);
    ns.run(|| {
        block_on(async {
            let system = install(&two_uplinks(), "mpbt0", ip_addr("2001:db8::7"))
                .await
                .expect("install");
            let addrs: Vec<_> = system.uplinks().await.iter().map(|u| u.addr).collect();
            assert_eq!(addrs, [ip_addr("fd77:1::2"), ip_addr("fd77:2::2")]);
            assert_eq!(
                ns.ip_lines(&["-6", "rule", "show"], "proto 109"),
                [
                    "7700: from fd77:1::2 lookup 7701 proto 109",
                    "7701: from fd77:2::2 lookup 7702 proto 109",
                    "7780: from all fwmark 0x6d70 lookup 254 proto 109",
                    "7785: from all to 2001:db8::7 lookup 254 proto 109",
                    "7790: from all lookup 254 suppress_prefixlength 0 proto 109",
                    "7791: from all ipproto tcp lookup 7799 proto 109",
                ]
            );
            assert_eq!(
                ns.ip_lines(&["-4", "rule", "show"], "proto 109"),
                [
                    "7780: from all fwmark 0x6d70 lookup 254 proto 109",
                    "7790: from all lookup 254 suppress_prefixlength 0 proto 109",
                    "7791: from all ipproto tcp lookup 7799 proto 109",
                ]
            );
            assert_eq!(
                ns.ip_lines(&["-6", "route", "show", "table", "all"], "proto 109"),
                [
                    "default via fe80::1 dev d0 table 7701 proto 109 metric 1024 pref medium",
                    "default dev d1 table 7702 proto 109 metric 1024 pref medium",
                    "default dev mpbt0 table 7799 proto 109 metric 1024 linkdown pref medium",
                ]
            );
            assert_eq!(
                ns.ip_lines(&["mptcp", "endpoint", "show"], ""),
                [
                    "fd77:1::2 id 96 subflow dev d0",
                    "fd77:2::2 id 97 subflow backup dev d1",
                ]
            );
            drop(system);
        })
    });
    assert_eq!(leftovers(&ns), Vec::<String>::new());
    assert_eq!(ns.ip(&["mptcp", "limits", "show"]), before);
}

#[test]
fn a_crashed_run_is_cleaned_up() {
    let ns = two_uplink_ns("crash");
    ns.run(|| {
        block_on(async {
            let concentrator = ip_addr(CONCENTRATOR);
            let system = install(&two_uplinks(), "mpbt0", concentrator)
                .await
                .expect("install");
            // A forgotten handle leaves its owner waiting for commands
            // forever, everything still installed: a crash, as far as the
            // kernel can tell.
            std::mem::forget(system);
            assert_eq!(leftovers(&ns).len(), 15, "{:?}", leftovers(&ns));

            // A restart cleans first, so installing again just works.
            let system = install(&two_uplinks(), "mpbt0", concentrator)
                .await
                .expect("install over leftovers");
            std::mem::forget(system);

            // Uplink routes 2 + TUN routes 2, uplink rules 2 + capture
            // rules 4 (IPv4) + 3 (IPv6), endpoints 2.
            assert_eq!(cleanup_leftovers().expect("cleanup"), 4 + 9 + 2);
            assert_eq!(leftovers(&ns), Vec::<String>::new());
            assert_eq!(cleanup_leftovers().expect("cleanup again"), 0);
        })
    });
}

/// An uplink whose interface is missing at start waits for it; when it
/// appears it joins with its config numbering; unplugged, it leaves
/// nothing behind; plugged in again (a new index), it joins again.
#[test]
fn a_missing_interface_joins_when_it_appears_and_leaves_when_unplugged() {
    let ns = two_uplink_ns("hotplug");
    ns.run(|| {
        block_on(async {
            let mut uplinks = two_uplinks();
            uplinks.push(uplink("sat", "s0"));
            let system = install(&uplinks, "mpbt0", ip_addr(CONCENTRATOR))
                .await
                .expect("a missing interface does not stop the start");
            let sat = |all: Vec<Uplink>| all.into_iter().nth(2).expect("sat");
            let waiting = sat(system.uplinks().await);
            assert_eq!(waiting.ifindex, system::NO_INTERFACE);
            assert!(waiting.addr.is_unspecified());
            // Room for its subflow when it comes.
            assert_eq!(
                ns.ip_lines(&["mptcp", "limits", "show"], ""),
                ["add_addr_accepted 3 subflows 3"]
            );
            assert_eq!(system.relink(2).await.expect("relink"), LinkChange::Same);
            assert_eq!(
                system.readdress(2).await.expect("readdress"),
                AddressChange::Same
            );
            let installed = leftovers(&ns);

            // Plugged in: its route and rule come; its endpoint when the
            // health watcher says so.
            ns.veth("s0", &["10.77.3.2/24"]);
            let LinkChange::Joined(joined) = system.relink(2).await.expect("relink") else {
                panic!("s0 was not joined");
            };
            assert_eq!(joined.addr, ip_addr("10.77.3.2"));
            assert_ne!(joined.ifindex, system::NO_INTERFACE);
            assert_eq!(joined.endpoint.ifindex, Some(joined.ifindex));
            assert_eq!(system.relink(2).await.expect("relink"), LinkChange::Same);
            system.set_endpoint(2, true).await.expect("sat's endpoint");
            assert_eq!(
                ns.ip_lines(&["-4", "rule", "show"], "from 10.77.3"),
                ["7702: from 10.77.3.2 lookup 7703 proto 109"]
            );
            assert_eq!(
                ns.ip_lines(&["-4", "route", "show", "table", "7703"], ""),
                ["default dev s0 proto 109 scope 253"]
            );
            assert_eq!(
                ns.ip_lines(&["mptcp", "endpoint", "show"], "10.77.3"),
                ["10.77.3.2 id 98 subflow dev s0"]
            );

            // Unplugged: everything of sat's goes, the rest stays.
            ns.ip(&["link", "del", "s0"]);
            assert_eq!(system.relink(2).await.expect("relink"), LinkChange::Gone);
            assert_eq!(leftovers(&ns), installed);
            assert_eq!(system.relink(2).await.expect("relink"), LinkChange::Same);

            // Plugged in again, and out and in again before anyone looked:
            // each time a new index, followed.
            ns.veth("s0", &["10.77.3.2/24"]);
            let LinkChange::Joined(again) = system.relink(2).await.expect("relink") else {
                panic!("s0 was not joined again");
            };
            assert_ne!(again.ifindex, joined.ifindex);
            system.set_endpoint(2, true).await.expect("sat's endpoint");
            ns.ip(&["link", "del", "s0"]);
            ns.veth("s0", &["10.77.3.5/24"]);
            let LinkChange::Joined(third) = system.relink(2).await.expect("relink") else {
                panic!("s0 was not joined a third time");
            };
            assert_ne!(third.ifindex, again.ifindex);
            assert_eq!(third.addr, ip_addr("10.77.3.5"));
            assert_eq!(
                ns.ip_lines(&["-4", "rule", "show"], "from 10.77.3"),
                ["7702: from 10.77.3.5 lookup 7703 proto 109"]
            );
            // The old endpoint went with the old interface; the new one is
            // the watcher's to add.
            assert_eq!(
                ns.ip_lines(&["mptcp", "endpoint", "show"], "10.77.3"),
                Vec::<String>::new()
            );
            system.set_endpoint(2, true).await.expect("sat's endpoint");
            system.shutdown().await.expect("remove");
            assert_eq!(leftovers(&ns), Vec::<String>::new());

            // No uplink's interface there at all: a router whose only
            // modem is not plugged in yet starts and waits.
            ns.ip(&["link", "del", "s0"]);
            let system = install(&[uplink("sat", "s0")], "mpbt0", ip_addr(CONCENTRATOR))
                .await
                .expect("start with no interface at all");
            assert_eq!(leftovers(&ns).len(), 9, "{:?}", leftovers(&ns));
            system.shutdown().await.expect("remove");
        })
    });
    assert_eq!(leftovers(&ns), Vec::<String>::new());
    assert_eq!(
        ns.ip_lines(&["mptcp", "limits", "show"], ""),
        ["add_addr_accepted 0 subflows 2"]
    );
}

#[test]
fn someone_elses_endpoint_on_an_uplink_address_is_named() {
    let ns = two_uplink_ns("taken");
    ns.ip(&[
        "mptcp",
        "endpoint",
        "add",
        "10.77.2.2",
        "id",
        "5",
        "subflow",
    ]);
    ns.run(|| {
        block_on(async {
            let err = install(&two_uplinks(), "mpbt0", ip_addr(CONCENTRATOR))
                .await
                .expect_err("10.77.2.2 is endpoint 5");
            assert!(
                err.to_string().starts_with(
                    "uplink lte: address 10.77.2.2 already is MPTCP endpoint id 5, which is \
                 not mpbond's; remove it (`ip mptcp endpoint delete id 5`)"
                ),
                "{err}"
            );
        })
    });
    // Theirs stays; dsl's endpoint, lte's route and rule are gone.
    assert_eq!(leftovers(&ns), ["10.77.2.2 id 5 subflow"]);
}

#[test]
fn a_missing_tun_is_named() {
    let ns = two_uplink_ns("notun");
    ns.run(|| {
        block_on(async {
            let err = install(&two_uplinks(), "mpbt9", ip_addr(CONCENTRATOR))
                .await
                .expect_err("no such TUN");
            assert!(
                err.to_string().contains("TUN device mpbt9 does not exist"),
                "{err}"
            );

            let nine: Vec<_> = (0..9).map(|i| uplink(&format!("u{i}"), "d0")).collect();
            let err = install(&nine, "mpbt0", ip_addr(CONCENTRATOR))
                .await
                .expect_err("more uplinks than endpoint ids");
            assert!(
                matches!(err, UplinkError::TooManyUplinks { count: 9 }),
                "{err:?}"
            );
        })
    });
    assert_eq!(leftovers(&ns), Vec::<String>::new());
}

#[test]
fn an_interface_that_is_down_is_named_and_nothing_stays() {
    let ns = two_uplink_ns("down");
    ns.ip(&["link", "set", "d1", "down"]);
    ns.run(|| {
        block_on(async {
            // d1's IPv4 address stays, but without a connected route the
            // kernel refuses a default route over it.
            let err = install(&two_uplinks(), "mpbt0", ip_addr(CONCENTRATOR))
                .await
                .expect_err("d1 is down");
            let UplinkError::UplinkRoute { uplink, source, .. } = &err else {
                panic!("{err:?}");
            };
            assert_eq!(uplink, "lte");
            assert_eq!(source.errno(), Some(libc::ENETDOWN), "{err:?}");
            assert!(
                err.to_string().starts_with(
                    "uplink lte: cannot add its default route in table 7702 via interface d1; \
                 check that the interface is up"
                ),
                "{err}"
            );
        })
    });
    assert_eq!(leftovers(&ns), Vec::<String>::new());
}

#[test]
fn a_renumbered_uplink_gets_its_rule_and_route_back() {
    let ns = two_uplink_ns("renum");
    ns.run(|| {
        block_on(async {
            let system = install(&two_uplinks(), "mpbt0", ip_addr(CONCENTRATOR))
                .await
                .expect("install");
            assert_eq!(
                system.readdress(0).await.expect("readdress"),
                AddressChange::Same
            );

            // A DHCP renumbering: the old address goes (and with it the
            // kernel drops the route via the gateway), a new one comes.
            ns.ip(&["addr", "del", "10.77.1.2/24", "dev", "d0"]);
            assert_eq!(
                system.readdress(0).await.expect("readdress"),
                AddressChange::Gone
            );
            assert_eq!(
                ns.ip_lines(&["-4", "rule", "show"], "from 10.77.1"),
                Vec::<String>::new()
            );
            ns.ip(&["addr", "add", "10.77.1.5/24", "dev", "d0"]);
            let AddressChange::New(uplink) = system.readdress(0).await.expect("readdress") else {
                panic!("the new address was not seen");
            };
            assert_eq!(
                (uplink.addr, uplink.endpoint.addr),
                (ip_addr("10.77.1.5"), ip_addr("10.77.1.5"))
            );
            assert_eq!(system.uplinks().await[0], uplink);
            assert_eq!(
                ns.ip_lines(&["-4", "rule", "show"], "from 10.77"),
                [
                    "7700: from 10.77.1.5 lookup 7701 proto 109",
                    "7701: from 10.77.2.2 lookup 7702 proto 109",
                ]
            );
            assert_eq!(
                ns.ip_lines(&["-4", "route", "show", "table", "7701"], ""),
                ["default via 10.77.1.1 dev d0 proto 109"]
            );
            assert_eq!(
                system.readdress(0).await.expect("readdress"),
                AddressChange::Same
            );
            assert_eq!(
                system.readdress(1).await.expect("readdress"),
                AddressChange::Same
            );
            // Out of range: nothing to do.
            assert_eq!(
                system.readdress(9).await.expect("readdress"),
                AddressChange::Same
            );
            system.shutdown().await.expect("remove");
        })
    });
    assert_eq!(leftovers(&ns), Vec::<String>::new());
}

#[test]
fn an_uplink_without_a_configured_gateway_follows_the_systems() {
    let ns = two_uplink_ns("gw");
    // DHCP on lte (d1, no gateway in the config) set a default route.
    ns.ip(&["route", "add", "default", "via", "10.77.2.1", "dev", "d1"]);
    ns.run(|| {
        block_on(async {
            let system = install(&two_uplinks(), "mpbt0", ip_addr(CONCENTRATOR))
                .await
                .expect("install");
            let table = |t: &str| ns.ip_lines(&["-4", "route", "show", "table", t], "");
            assert_eq!(table("7702"), ["default via 10.77.2.1 dev d1 proto 109"]);
            assert_eq!(system.regateway(1).await.expect("regateway"), None);

            // A renewal with a new gateway; dsl's gateway is configured.
            ns.ip(&[
                "route",
                "replace",
                "default",
                "via",
                "10.77.2.254",
                "dev",
                "d1",
            ]);
            assert_eq!(
                system.regateway(1).await.expect("regateway"),
                Some((Some(ip_addr("10.77.2.1")), ip_addr("10.77.2.254")))
            );
            assert_eq!(table("7702"), ["default via 10.77.2.254 dev d1 proto 109"]);
            assert_eq!(system.regateway(0).await.expect("regateway"), None);

            // The system's route goes: the last gateway stays.
            ns.ip(&["route", "del", "default", "dev", "d1"]);
            assert_eq!(system.regateway(1).await.expect("regateway"), None);
            assert_eq!(table("7702"), ["default via 10.77.2.254 dev d1 proto 109"]);
            system.shutdown().await.expect("remove");
        })
    });
    assert_eq!(leftovers(&ns), Vec::<String>::new());
}

#[test]
fn an_uplink_without_an_address_joins_when_it_gets_one() {
    let ns = tun_ns("noaddr");
    ns.veth("d0", &[]);
    ns.veth("d1", &["10.77.2.2/24"]);
    ns.run(|| {
        block_on(async {
            let system = install(&two_uplinks(), "mpbt0", ip_addr(CONCENTRATOR))
                .await
                .expect("install");
            let addrs: Vec<_> = system.uplinks().await.iter().map(|u| u.addr).collect();
            assert_eq!(addrs, [ip_addr("0.0.0.0"), ip_addr("10.77.2.2")]);
            // lte keeps its config index: table 7702, rule 7701, id 97;
            // dsl has nothing yet.
            assert_eq!(
                ns.ip_lines(&["-4", "rule", "show"], "from 10.77"),
                ["7701: from 10.77.2.2 lookup 7702 proto 109"]
            );
            assert_eq!(
                ns.ip_lines(&["mptcp", "endpoint", "show"], ""),
                ["10.77.2.2 id 97 subflow backup dev d1"]
            );
            assert_eq!(
                ns.ip_lines(&["-4", "route", "show", "table", "all"], "table 7701"),
                Vec::<String>::new()
            );
            assert_eq!(
                ns.ip_lines(&["mptcp", "limits", "show"], ""),
                ["add_addr_accepted 2 subflows 2"]
            );

            // dsl gets its address: its route and rule come (the endpoint
            // is the health watcher's to add).
            ns.ip(&["addr", "add", "10.77.1.2/24", "dev", "d0"]);
            let AddressChange::New(dsl) = system.readdress(0).await.expect("readdress") else {
                panic!("dsl's address was not seen");
            };
            assert_eq!(dsl.endpoint.addr, ip_addr("10.77.1.2"));
            assert_eq!(
                ns.ip_lines(&["-4", "rule", "show"], "from 10.77"),
                [
                    "7700: from 10.77.1.2 lookup 7701 proto 109",
                    "7701: from 10.77.2.2 lookup 7702 proto 109",
                ]
            );
            assert_eq!(
                ns.ip_lines(&["-4", "route", "show", "table", "7701"], ""),
                ["default via 10.77.1.1 dev d0 proto 109"]
            );
            // The health watcher adds its endpoint once it is usable; the
            // owner removes it at the end with the rest.
            system
                .set_endpoint(0, true)
                .await
                .expect("add dsl's endpoint");
            assert_eq!(
                ns.ip_lines(&["mptcp", "endpoint", "show"], ""),
                [
                    "10.77.1.2 id 96 subflow dev d0",
                    "10.77.2.2 id 97 subflow backup dev d1",
                ]
            );
            system.shutdown().await.expect("remove");
            assert_eq!(leftovers(&ns), Vec::<String>::new());

            // No uplink with an IPv6 address: nothing to reach an IPv6
            // concentrator with.
            let err = install(&two_uplinks(), "mpbt0", ip_addr("2001:db8::7"))
                .await
                .expect_err("no IPv6 uplink");
            assert!(
                err.to_string().starts_with(
                    "no uplink has an IPv6 address to reach the concentrator 2001:db8::7"
                ),
                "{err}"
            );
        })
    });
    assert_eq!(leftovers(&ns), Vec::<String>::new());
}

#[test]
fn endpoints_go_and_come_back_through_the_owner() {
    let ns = two_uplink_ns("ep");
    ns.run(|| {
        block_on(async {
            let system = install(&two_uplinks(), "mpbt0", ip_addr(CONCENTRATOR))
                .await
                .expect("install");
            let endpoints = || ns.ip_lines(&["mptcp", "endpoint", "show"], "");

            // lte dies: its endpoint goes; saying so twice is no error.
            system.set_endpoint(1, false).await.expect("remove lte's");
            system
                .set_endpoint(1, false)
                .await
                .expect("remove it again");
            assert_eq!(endpoints(), ["10.77.1.2 id 96 subflow dev d0"]);
            // It comes back, at the address the owner knows.
            system.set_endpoint(1, true).await.expect("add lte's back");
            system.set_endpoint(1, true).await.expect("add it again");
            assert_eq!(
                endpoints(),
                [
                    "10.77.1.2 id 96 subflow dev d0",
                    "10.77.2.2 id 97 subflow backup dev d1",
                ]
            );
            // No such uplink: nothing to do.
            system.set_endpoint(9, true).await.expect("uplink 9");
            assert_eq!(endpoints().len(), 2);

            // A clone is the same owner; after a shutdown nobody can ask
            // it anything.
            let other = system.clone();
            system.shutdown().await.expect("remove");
            assert_eq!(leftovers(&ns), Vec::<String>::new());
            assert!(
                matches!(
                    other.set_endpoint(0, true).await,
                    Err(UplinkError::OwnerGone)
                ),
                "the owner answered after its shutdown"
            );
            assert!(matches!(
                other.readdress(0).await,
                Err(UplinkError::OwnerGone)
            ));
            assert_eq!(other.uplinks().await, Vec::<Uplink>::new());
            assert!(matches!(
                system.shutdown().await,
                Err(UplinkError::OwnerGone)
            ));
            assert_eq!(leftovers(&ns), Vec::<String>::new());
        })
    });
}

/// What a config reload asks of the owner: a removed uplink is retired
/// (everything of its goes and stays gone, whatever its interface does), an
/// added one joins at a vacant index or the next one (route and rule at
/// once, endpoint when asked), and a changed `backup` flag is set on the
/// installed endpoint in place.
#[test]
fn a_reload_retires_joins_and_reflags_uplinks_through_the_owner() {
    let ns = two_uplink_ns("reload");
    ns.veth("w0", &["10.77.3.2/24"]);
    ns.run(|| {
        block_on(async {
            let system = install(&two_uplinks(), "mpbt0", ip_addr(CONCENTRATOR))
                .await
                .expect("install");
            let endpoints = || ns.ip_lines(&["mptcp", "endpoint", "show"], "");

            // Backup flags change in place.
            system.set_backup(1, false).await.expect("lte not backup");
            system.set_backup(0, true).await.expect("dsl backup");
            assert_eq!(
                endpoints(),
                [
                    "10.77.1.2 id 96 subflow backup dev d0",
                    "10.77.2.2 id 97 subflow dev d1",
                ]
            );
            assert!(system.uplinks().await[0].backup);
            system.set_backup(0, false).await.expect("dsl not backup");

            // lte removed: all of its goes, and nothing brings it back.
            system.retire(1).await.expect("retire lte");
            let of_lte = || {
                leftovers(&ns)
                    .into_iter()
                    .filter(|l| l.contains("10.77.2.2") || l.contains("7702"))
                    .collect::<Vec<_>>()
            };
            assert_eq!(of_lte(), Vec::<String>::new());
            assert_eq!(system.relink(1).await.expect("relink"), LinkChange::Same);
            assert_eq!(
                system.readdress(1).await.expect("readdress"),
                AddressChange::Same
            );
            system.set_endpoint(1, true).await.expect("set_endpoint");
            assert_eq!(of_lte(), Vec::<String>::new());
            system.retire(1).await.expect("retired twice is no error");
            assert_eq!(endpoints(), ["10.77.1.2 id 96 subflow dev d0"]);

            // wifi added: it takes lte's vacant index and numbering.
            assert!(matches!(
                system.join(0, uplink("taken", "w0")).await,
                Err(UplinkError::NoIndex { .. })
            ));
            assert!(matches!(
                system.join(3, uplink("gap", "w0")).await,
                Err(UplinkError::NoIndex { .. })
            ));
            let wifi = system.join(1, uplink("wifi", "w0")).await.expect("join");
            assert_eq!((wifi.index, wifi.addr), (1, ip_addr("10.77.3.2")));
            assert_eq!(
                ns.ip_lines(&["-4", "rule", "show"], "from 10.77.3"),
                ["7701: from 10.77.3.2 lookup 7702 proto 109"]
            );
            assert_eq!(
                ns.ip_lines(&["-4", "route", "show", "table", "7702"], ""),
                ["default dev w0 proto 109 scope 253"]
            );
            system.set_endpoint(1, true).await.expect("wifi's endpoint");
            assert!(endpoints().contains(&"10.77.3.2 id 97 subflow dev w0".to_owned()));

            // sat added, its interface missing: the next index, waiting;
            // the limits make room for it.
            let sat = system.join(2, uplink("sat", "s0")).await.expect("join");
            assert_eq!(sat.ifindex, system::NO_INTERFACE);
            assert_eq!(
                ns.ip_lines(&["mptcp", "limits", "show"], ""),
                ["add_addr_accepted 3 subflows 3"]
            );
            ns.veth("s0", &["10.77.4.2/24"]);
            let LinkChange::Joined(joined) = system.relink(2).await.expect("relink") else {
                panic!("s0 was not joined");
            };
            assert_eq!(joined.addr, ip_addr("10.77.4.2"));
            system.set_endpoint(2, true).await.expect("sat's endpoint");
            assert!(endpoints().contains(&"10.77.4.2 id 98 subflow dev s0".to_owned()));

            system.shutdown().await.expect("remove");
            assert_eq!(leftovers(&ns), Vec::<String>::new());
        })
    });
}
