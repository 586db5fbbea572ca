//! The netlink code of `mpbond::sys` against the real kernel, each test in
//! a network namespace of its own (`mpbt-nl-PID-N`, apart from the lab's
//! `mpb-*`), checked with the `ip` tool. They need root and fail without
//! it.

mod netns;

use std::net::IpAddr;

use mpbond::sys::{
    AddressFamily, EndpointFlags, FlushReport, MptcpEndpoint, MptcpLimits, MptcpPm, Route, Rtnl,
    Rule, MPBOND_RTPROT,
};
use netns::{lines, TestNs};

/// A namespace with one uplink-like interface `d0` with carrier,
/// 10.77.1.2/24 and fd77:1::2/64.
fn with_uplink() -> TestNs {
    let ns = TestNs::new("nl");
    ns.veth("d0", &["10.77.1.2/24", "fd77:1::2/64"]);
    ns
}

fn addr(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// `d0`'s index, from `ip` rather than the code under test.
fn d0(ns: &TestNs) -> u32 {
    ns.link_index("d0")
}

fn endpoint(id: u8, a: &str, ifindex: Option<u32>, flags: EndpointFlags) -> MptcpEndpoint {
    MptcpEndpoint {
        id,
        addr: addr(a),
        port: 0,
        ifindex,
        flags,
    }
}

const SUBFLOW: EndpointFlags = EndpointFlags {
    signal: false,
    subflow: true,
    backup: false,
    fullmesh: false,
    implicit: false,
};

#[test]
fn handles_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<MptcpPm>();
    shareable::<Rtnl>();
}

#[test]
fn mptcp_limits_roundtrip() {
    let ns = with_uplink();
    ns.run(|| {
        let pm = MptcpPm::open().expect("open mptcp_pm");
        let limits = MptcpLimits {
            subflows: 3,
            add_addr_accepted: 2,
        };
        pm.set_limits(limits).expect("set limits");
        assert_eq!(pm.limits().expect("get limits"), limits);
        assert_eq!(
            lines(&ns.ip(&["mptcp", "limits", "show"])),
            ["add_addr_accepted 2 subflows 3"]
        );

        let too_many = MptcpLimits {
            subflows: 200,
            add_addr_accepted: 0,
        };
        let err = pm.set_limits(too_many).expect_err("over the kernel's cap");
        assert_eq!(err.errno(), Some(libc::EINVAL));
        assert_eq!(
            err.to_string(),
            "cannot set the MPTCP limits to subflows 200 add_addr_accepted 0"
        );
        assert_eq!(pm.limits().expect("get limits"), limits);
    });
}

#[test]
fn mptcp_endpoints_add_list_change_delete() {
    let ns = with_uplink();
    ns.run(|| {
        let pm = MptcpPm::open().expect("open mptcp_pm");
        let d0 = d0(&ns);
        let backup = EndpointFlags {
            backup: true,
            ..SUBFLOW
        };
        pm.add_endpoint(&endpoint(0, "10.77.1.2", Some(d0), SUBFLOW))
            .expect("add v4 endpoint, kernel picks the id");
        pm.add_endpoint(&endpoint(5, "fd77:1::2", Some(d0), backup))
            .expect("add v6 backup endpoint with id 5");
        let fullmesh = EndpointFlags {
            fullmesh: true,
            ..SUBFLOW
        };
        pm.add_endpoint(&endpoint(9, "10.77.2.2", None, fullmesh))
            .expect("add endpoint without dev");

        let mut list = pm.endpoints().expect("list endpoints");
        list.sort_by_key(|ep| ep.id);
        assert_eq!(
            list,
            [
                endpoint(1, "10.77.1.2", Some(d0), SUBFLOW),
                endpoint(5, "fd77:1::2", Some(d0), backup),
                endpoint(9, "10.77.2.2", None, fullmesh),
            ]
        );
        assert_eq!(
            lines(&ns.ip(&["mptcp", "endpoint", "show"])),
            [
                "10.77.1.2 id 1 subflow dev d0",
                "fd77:1::2 id 5 subflow backup dev d0",
                "10.77.2.2 id 9 subflow fullmesh",
            ]
        );

        pm.set_endpoint_backup(1, true).expect("backup on");
        pm.set_endpoint_backup(5, false).expect("backup off");
        // Unlike `ip mptcp endpoint change id 9 backup`, this keeps fullmesh.
        pm.set_endpoint_backup(9, true)
            .expect("backup on, fullmesh kept");
        assert_eq!(
            lines(&ns.ip(&["mptcp", "endpoint", "show"])),
            [
                "10.77.1.2 id 1 subflow backup dev d0",
                "fd77:1::2 id 5 subflow dev d0",
                "10.77.2.2 id 9 subflow backup fullmesh",
            ]
        );
        pm.set_endpoint_backup(1, false).expect("backup off again");
        assert_eq!(
            lines(&ns.ip(&["mptcp", "endpoint", "show", "id", "1"])),
            ["10.77.1.2 id 1 subflow dev d0"]
        );

        let err = pm
            .add_endpoint(&endpoint(0, "10.77.1.2", Some(d0), SUBFLOW))
            .expect_err("same address again");
        assert!(err.is_already_exists(), "{err:?}");
        assert_eq!(err.to_string(), "cannot add MPTCP endpoint 10.77.1.2 (d0)");
        let err = pm
            .add_endpoint(&endpoint(5, "10.77.3.2", None, SUBFLOW))
            .expect_err("id 5 is taken");
        assert_eq!(err.errno(), Some(libc::EBUSY));
        assert!(!err.is_already_exists());

        for id in [1, 5, 9] {
            pm.del_endpoint(id).expect("delete endpoint");
        }
        assert_eq!(pm.endpoints().expect("list endpoints"), []);
        assert_eq!(ns.ip(&["mptcp", "endpoint", "show"]), "");

        let err = pm.del_endpoint(77).expect_err("no endpoint 77");
        assert!(err.is_not_found(), "{err:?}");
        assert_eq!(err.to_string(), "cannot delete MPTCP endpoint id 77");
        let err = pm
            .set_endpoint_backup(77, true)
            .expect_err("no endpoint 77");
        assert!(err.is_not_found(), "{err:?}");
        let err = pm.del_endpoint(0).expect_err("id 0 is not an endpoint");
        assert!(!err.is_not_found());
    });
}

fn our_route(table: u32, dst: (&str, u8), gw: Option<&str>, ifindex: Option<u32>) -> Route {
    Route {
        table,
        dst: (addr(dst.0), dst.1),
        gateway: gw.map(addr),
        ifindex,
        src: None,
        metric: None,
        protocol: MPBOND_RTPROT,
    }
}

#[test]
fn routes_v4_and_v6_in_a_table() {
    let ns = with_uplink();
    ns.run(|| {
        let rtnl = Rtnl::open().expect("open rtnl");
        let d0 = Some(d0(&ns));
        let v4 = our_route(101, ("0.0.0.0", 0), Some("10.77.1.1"), d0);
        let v6 = our_route(101, ("::", 0), Some("fd77:1::1"), d0);
        let onlink = Route {
            src: Some(addr("10.77.1.2")),
            metric: Some(7),
            ..our_route(1000, ("10.77.5.0", 24), None, d0)
        };
        for route in [&v4, &v6, &onlink] {
            rtnl.add_route(route).expect("add route");
        }
        // NLM_F_REPLACE: adding again is fine, and a new gateway replaces.
        rtnl.add_route(&v4).expect("add the same route again");
        let moved = Route {
            gateway: Some(addr("10.77.1.3")),
            ..v4.clone()
        };
        rtnl.add_route(&moved).expect("replace the gateway");
        assert_eq!(
            lines(&ns.ip(&["route", "show", "table", "101"])),
            ["default via 10.77.1.3 dev d0 proto 109"]
        );
        rtnl.add_route(&v4).expect("and back");
        assert_eq!(
            lines(&ns.ip(&["route", "show", "table", "101"])),
            ["default via 10.77.1.1 dev d0 proto 109"]
        );
        assert_eq!(
            lines(&ns.ip(&["-6", "route", "show", "table", "101"])),
            ["default via fd77:1::1 dev d0 proto 109 metric 1024 pref medium"]
        );
        assert_eq!(
            lines(&ns.ip(&["route", "show", "table", "1000"])),
            ["10.77.5.0/24 dev d0 proto 109 scope 253 src 10.77.1.2 metric 7"]
        );

        for route in [&v4, &v6, &onlink] {
            rtnl.del_route(route).expect("delete route");
        }
        assert_eq!(ns.ip(&["route", "show", "table", "101"]), "");
        assert_eq!(ns.ip(&["-6", "route", "show", "table", "101"]), "");
        assert_eq!(ns.ip(&["route", "show", "table", "1000"]), "");
        let err = rtnl.del_route(&v4).expect_err("already gone");
        assert!(err.is_not_found(), "{err:?}");
        assert_eq!(
            err.to_string(),
            "cannot delete route 0.0.0.0/0 via 10.77.1.1 dev d0 table 101 proto 109"
        );
    });
}

fn our_rule(priority: u32, family: AddressFamily, table: u32) -> Rule {
    Rule {
        priority,
        family,
        from: None,
        to: None,
        fwmark: None,
        ip_proto: None,
        table,
        suppress_prefixlen: None,
        protocol: MPBOND_RTPROT,
    }
}

/// The rules a client installs: source routing per uplink, the fwmark that
/// keeps tunnel traffic out of the TUN, and "main unless it is a default".
fn client_rules() -> Vec<Rule> {
    vec![
        Rule {
            from: Some((addr("10.77.1.2"), 32)),
            ..our_rule(100, AddressFamily::V4, 101)
        },
        Rule {
            fwmark: Some((0x6d, 0xff)),
            ..our_rule(101, AddressFamily::V4, 101)
        },
        Rule {
            suppress_prefixlen: Some(0),
            ..our_rule(99, AddressFamily::V4, 254)
        },
        Rule {
            to: Some((addr("203.0.113.0"), 24)),
            ..our_rule(102, AddressFamily::V4, 254)
        },
        Rule {
            from: Some((addr("fd77:1::2"), 128)),
            ..our_rule(100, AddressFamily::V6, 101)
        },
    ]
}

#[test]
fn rules_v4_and_v6() {
    let ns = with_uplink();
    ns.run(|| {
        let rtnl = Rtnl::open().expect("open rtnl");
        let rules = client_rules();
        for rule in &rules {
            rtnl.add_rule(rule).expect("add rule");
        }
        assert_eq!(
            lines(&ns.ip(&["rule", "show"])),
            [
                "0:\tfrom all lookup 255",
                "99:\tfrom all lookup 254 suppress_prefixlength 0 proto 109",
                "100:\tfrom 10.77.1.2 lookup 101 proto 109",
                "101:\tfrom all fwmark 0x6d/0xff lookup 101 proto 109",
                "102:\tfrom all to 203.0.113.0/24 lookup 254 proto 109",
                "32766:\tfrom all lookup 254",
                "32767:\tfrom all lookup 253",
            ]
        );
        assert!(lines(&ns.ip(&["-6", "rule", "show"]))
            .contains(&"100:\tfrom fd77:1::2 lookup 101 proto 109".to_owned()));

        let err = rtnl.add_rule(&rules[0]).expect_err("the same rule again");
        assert!(err.is_already_exists(), "{err:?}");
        for rule in &rules {
            rtnl.del_rule(rule).expect("delete rule");
        }
        assert!(!ns.ip(&["rule", "show"]).contains("proto 109"));
        assert!(!ns.ip(&["-6", "rule", "show"]).contains("proto 109"));
        let err = rtnl.del_rule(&rules[0]).expect_err("already gone");
        assert!(err.is_not_found(), "{err:?}");
    });
}

#[test]
fn flush_owned_removes_ours_and_nothing_else() {
    let ns = with_uplink();
    ns.run(|| {
        let rtnl = Rtnl::open().expect("open rtnl");
        let d0 = Some(d0(&ns));
        let routes = [
            our_route(101, ("0.0.0.0", 0), Some("10.77.1.1"), d0),
            our_route(101, ("::", 0), Some("fd77:1::1"), d0),
            our_route(1000, ("10.77.5.0", 24), None, d0),
            our_route(254, ("10.77.6.0", 24), Some("10.77.1.1"), d0),
        ];
        for route in &routes {
            rtnl.add_route(route).expect("add route");
        }
        for rule in client_rules() {
            rtnl.add_rule(&rule).expect("add rule");
        }
        // Someone else's, in the same tables.
        ns.ip(&[
            "route",
            "add",
            "10.99.0.0/16",
            "via",
            "10.77.1.1",
            "table",
            "101",
        ]);
        ns.ip(&[
            "route",
            "add",
            "10.98.0.0/16",
            "via",
            "10.77.1.1",
            "table",
            "101",
            "proto",
            "110",
        ]);
        ns.ip(&[
            "-6",
            "route",
            "add",
            "fd99::/64",
            "via",
            "fd77:1::1",
            "table",
            "101",
            "proto",
            "static",
        ]);
        ns.ip(&[
            "rule",
            "add",
            "from",
            "10.77.1.9",
            "lookup",
            "101",
            "pref",
            "200",
        ]);
        ns.ip(&[
            "-6",
            "rule",
            "add",
            "from",
            "fd77:1::9",
            "lookup",
            "101",
            "pref",
            "200",
            "proto",
            "110",
        ]);
        let before_v4 = ns.ip(&["route", "show", "table", "all"]);

        let report = rtnl.flush_owned(MPBOND_RTPROT).expect("flush");
        assert_eq!(
            report,
            FlushReport {
                routes: 4,
                rules: client_rules().len()
            }
        );

        for family in ["-4", "-6"] {
            let all = ns.ip(&[family, "route", "show", "table", "all"]);
            assert!(!all.contains("proto 109"), "{all}");
            let rules = ns.ip(&[family, "rule", "show"]);
            assert!(!rules.contains("proto 109"), "{rules}");
        }
        assert_eq!(
            lines(&ns.ip(&["route", "show", "table", "101"])),
            [
                "10.98.0.0/16 via 10.77.1.1 dev d0 proto 110",
                "10.99.0.0/16 via 10.77.1.1 dev d0",
            ]
        );
        assert_eq!(
            lines(&ns.ip(&["-6", "route", "show", "table", "101"])),
            ["fd99::/64 via fd77:1::1 dev d0 proto 4 metric 1024 pref medium"]
        );
        assert!(lines(&ns.ip(&["rule", "show"]))
            .contains(&"200:\tfrom 10.77.1.9 lookup 101".to_owned()));
        assert!(lines(&ns.ip(&["-6", "rule", "show"]))
            .contains(&"200:\tfrom fd77:1::9 lookup 101 proto 110".to_owned()));
        // The kernel's own routes (main and local tables) are untouched.
        let after_v4 = ns.ip(&["route", "show", "table", "all"]);
        let kept: Vec<_> = before_v4
            .lines()
            .filter(|l| !l.contains("proto 109"))
            .collect();
        assert_eq!(after_v4.lines().collect::<Vec<_>>(), kept);

        assert_eq!(
            rtnl.flush_owned(MPBOND_RTPROT).expect("flush again"),
            FlushReport::default()
        );
        let err = rtnl.flush_owned(2).expect_err("the kernel's protocol");
        assert_eq!(err.errno(), None);
    });
}

#[test]
fn link_index_and_global_addresses() {
    let ns = with_uplink();
    ns.ip(&["addr", "add", "10.77.2.2/24", "dev", "d0"]);
    ns.ip(&[
        "addr",
        "add",
        "169.254.7.7/16",
        "dev",
        "d0",
        "scope",
        "link",
    ]);
    ns.ip(&["addr", "add", "10.77.9.9/24", "dev", "d0p"]);
    ns.run(|| {
        let rtnl = Rtnl::open().expect("open rtnl");
        let index = rtnl.link_index("d0").expect("look up d0");
        assert_eq!(index, Some(d0(&ns)));
        assert_eq!(rtnl.link_index("nosuch0").expect("look up"), None);

        let mut addrs = rtnl.addresses(d0(&ns)).expect("addresses of d0");
        addrs.sort();
        // Not the link-local ones (fe80::/64, 169.254/16) nor d0p's.
        assert_eq!(
            addrs,
            [
                (addr("10.77.1.2"), 24),
                (addr("10.77.2.2"), 24),
                (addr("fd77:1::2"), 64),
            ]
        );
        assert!(ns
            .ip(&["addr", "show", "dev", "d0"])
            .contains("inet6 fe80::"));
    });
}

#[test]
fn bad_input_gives_clean_errors() {
    let ns = with_uplink();
    ns.run(|| {
        let rtnl = Rtnl::open().expect("open rtnl");
        let err = rtnl.link_index("bad/name").expect_err("not a name");
        assert_eq!(err.to_string(), "cannot look up interface \"bad/name\"");
        let err = rtnl
            .link_index("much-too-long-name")
            .expect_err("over 15 bytes");
        assert_eq!(err.errno(), None);

        let err = rtnl.addresses(9999).expect_err("no interface 9999");
        assert!(err.is_not_found(), "{err:?}");
        assert_eq!(
            err.to_string(),
            "cannot list the addresses of interface #9999"
        );

        let err = rtnl
            .add_route(&our_route(
                101,
                ("0.0.0.0", 0),
                Some("10.77.1.1"),
                Some(9999),
            ))
            .expect_err("no interface 9999");
        assert!(err.errno().is_some(), "{err:?}");
        assert_eq!(
            err.to_string(),
            "cannot add route 0.0.0.0/0 via 10.77.1.1 dev #9999 table 101 proto 109"
        );
        let err = rtnl
            .add_route(&our_route(101, ("10.1.2.3", 8), None, Some(d0(&ns))))
            .expect_err("host bits");
        assert_eq!(err.errno(), None);
        let err = rtnl
            .add_route(&our_route(
                101,
                ("0.0.0.0", 0),
                Some("10.200.0.1"),
                Some(d0(&ns)),
            ))
            .expect_err("unreachable gateway");
        assert!(err.errno().is_some(), "{err:?}");
        let err = rtnl
            .add_rule(&Rule {
                from: Some((addr("fd77:1::2"), 128)),
                ..our_rule(100, AddressFamily::V4, 101)
            })
            .expect_err("v6 source in a v4 rule");
        assert_eq!(err.errno(), None);

        let pm = MptcpPm::open().expect("open mptcp_pm");
        let err = pm
            .add_endpoint(&MptcpEndpoint {
                port: 4000,
                ..endpoint(0, "10.77.1.2", None, SUBFLOW)
            })
            .expect_err("a port needs signal");
        assert_eq!(err.errno(), Some(libc::EINVAL));
        assert_eq!(ns.ip(&["mptcp", "endpoint", "show"]), "");
    });
}

#[test]
fn test_namespaces_are_deleted_when_the_test_fails() {
    let listed = |name: &str| {
        netns::run_ip(&["netns", "list"])
            .lines()
            .any(|l| l.split_whitespace().next() == Some(name))
    };
    let mut name = String::new();
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ns = with_uplink();
        name = ns.name().to_owned();
        assert!(listed(&name), "{name} exists while in use");
        let pid = name.rsplit('-').nth(1).expect("a PID field");
        assert_eq!(
            pid,
            std::process::id().to_string(),
            "test.sh's leak check reads it"
        );
        ns.run(|| panic!("a failing test"));
    }));
    assert!(failed.is_err());
    assert!(!listed(&name), "{name} left behind by a failed test");
}
