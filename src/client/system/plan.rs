//! The plan: which routes, rules, MPTCP endpoints and limits a config and
//! the uplinks' current addresses need, with their numbering (tables, rule
//! priorities, endpoint ids). Pure functions and data; [`super::apply`]
//! puts them into the kernel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;

use crate::sys::{
    AddressFamily, EndpointFlags, MptcpEndpoint, MptcpLimits, Route, Rule, MAIN_TABLE,
    MPBOND_RTPROT,
};

/// The MPTCP endpoint ids mpbond uses: uplink `i` (config order) gets
/// `96 + i`. Any endpoint with one of these ids is mpbond's and removed by
/// [`cleanup_leftovers`](super::cleanup_leftovers).
pub const ENDPOINT_IDS: RangeInclusive<u8> = 96..=103;

/// The socket mark (`SO_MARK`) that lets a socket bypass the TUN: rule
/// 7780 sends marked traffic to the main table.
pub const TUNNEL_FWMARK: u32 = 0x6d70;

/// Priority of uplink 0's source rule; uplink `i` has `+ i`.
const UPLINK_RULE_PREF: u32 = 7700;
/// Table of uplink 0's default route; uplink `i` has `+ i`.
const UPLINK_TABLE: u32 = 7701;
/// `fwmark TUNNEL_FWMARK lookup main`.
const BYPASS_MARK_PREF: u32 = 7780;
/// `to CONCENTRATOR lookup main`.
const CONCENTRATOR_PREF: u32 = 7785;
/// `lookup main suppress_prefixlength 0`.
const NOT_DEFAULT_PREF: u32 = 7790;
/// `lookup CAPTURE_TABLE`.
const CAPTURE_PREF: u32 = 7791;
/// Holds the default routes into the TUN.
const CAPTURE_TABLE: u32 = 7799;
/// The protocol the capture rules match.
const IPPROTO_TCP: u8 = 6;
/// Linux caps both MPTCP limits at 8 (`MPTCP_PM_ADDR_MAX`).
const MAX_MPTCP_LIMIT: u32 = 8;

/// An uplink in use: it has an address of the concentrator's family, a
/// source route and an MPTCP endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    /// Its position among the configured uplinks: its table, rule priority
    /// and endpoint id follow from it.
    pub index: usize,
    /// Its name from the config, for logs.
    pub name: String,
    /// Its network interface, by name (the config's).
    pub interface: String,
    /// The interface's index now, looked up by name: it changes when the
    /// interface is removed and created again (a USB modem plugged back
    /// in). [`NO_INTERFACE`] while the interface does not exist.
    pub ifindex: u32,
    /// The address its subflows use.
    pub addr: IpAddr,
    /// Its endpoint is a backup one.
    pub backup: bool,
    /// Its MPTCP endpoint as installed (to put it back after an outage).
    pub endpoint: MptcpEndpoint,
}

/// [`Uplink::ifindex`] of an uplink whose interface does not exist (the
/// kernel never gives an interface index 0).
pub const NO_INTERFACE: u32 = 0;

impl Uplink {
    /// Its interface exists (it may still lack carrier or an address).
    pub fn present(&self) -> bool {
        self.ifindex != NO_INTERFACE
    }
}

/// What [`Handle::relink`](super::Handle::relink) found when it looked an
/// uplink's interface up by name again after a link event.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkChange {
    /// The same interface as before (or still none).
    Same,
    /// The interface is gone (unplugged, deleted or renamed): what was
    /// installed for the uplink (endpoint, source rule, route) is removed,
    /// and it rejoins when an interface of that name appears.
    Gone,
    /// An interface of the configured name appeared (at its first
    /// appearance, or with a new index after it was gone): the uplink as it
    /// is now, with its route and source rule installed if the interface
    /// already has an address. Its MPTCP endpoint is added when the caller
    /// says so with [`Handle::set_endpoint`](super::Handle::set_endpoint),
    /// as after [`AddressChange::New`].
    Joined(Uplink),
}

/// What to do with an uplink whose interface had index `known` (`None`:
/// it had none) and is now `found` by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Relink {
    /// Remove what was installed for the old interface.
    pub(super) leave: bool,
    /// Install for this interface index.
    pub(super) join: Option<u32>,
}

/// Compares an uplink's known interface index with the one its name has
/// now: a new index is a different interface (the old one went away, even
/// if its deletion has not been heard of yet).
pub(super) fn relink(known: Option<u32>, found: Option<u32>) -> Relink {
    let found = found.filter(|&i| i != NO_INTERFACE);
    let known = known.filter(|&i| i != NO_INTERFACE);
    if known == found {
        return Relink {
            leave: false,
            join: None,
        };
    }
    Relink {
        leave: known.is_some(),
        join: found,
    }
}

/// What [`Handle::readdress`](super::Handle::readdress) found on an uplink's interface.
#[derive(Debug, PartialEq, Eq)]
pub enum AddressChange {
    /// The uplink keeps the address it had (or still has none).
    Same,
    /// Its interface has no address of the concentrator's family any more;
    /// its source rule is gone.
    Gone,
    /// Its subflows now use a new address: the uplink as it is now, its
    /// source rule moved to the new address. Its MPTCP endpoint moves when
    /// the caller says so with
    /// [`Handle::set_endpoint`](super::Handle::set_endpoint) (the caller
    /// decides when the uplink is usable).
    New(Uplink),
}

pub(super) fn family_name(family: AddressFamily) -> &'static str {
    match family {
        AddressFamily::V4 => "IPv4",
        AddressFamily::V6 => "IPv6",
    }
}

/// Uplink `i`'s table.
pub(super) fn uplink_table(i: usize) -> u32 {
    UPLINK_TABLE.saturating_add(index(i))
}

/// Uplink `i`'s rule priority.
pub(super) fn uplink_rule_pref(i: usize) -> u32 {
    UPLINK_RULE_PREF.saturating_add(index(i))
}

/// `i` (below 8 after `install`'s check) as an offset or count.
fn index(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// The address an uplink's subflows use: the first IPv4 address, or the
/// first IPv6 address that is not link-local.
pub(super) fn pick_address(addresses: &[(IpAddr, u8)], family: AddressFamily) -> Option<IpAddr> {
    addresses
        .iter()
        .map(|(addr, _)| *addr)
        .find(|addr| match (family, addr) {
            (AddressFamily::V4, IpAddr::V4(_)) => true,
            (AddressFamily::V6, IpAddr::V6(a)) => (a.segments()[0] & 0xffc0) != 0xfe80,
            _ => false,
        })
}

/// `addr` as a host prefix.
fn host(addr: IpAddr) -> (IpAddr, u8) {
    match addr {
        IpAddr::V4(_) => (addr, 32),
        IpAddr::V6(_) => (addr, 128),
    }
}

pub(super) fn default_dst(family: AddressFamily) -> (IpAddr, u8) {
    match family {
        AddressFamily::V4 => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        AddressFamily::V6 => (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

/// The limits to run with: both at least `uplinks`, at most the kernel's
/// cap, never lowered.
pub(super) fn raised_limits(current: MptcpLimits, uplinks: usize) -> MptcpLimits {
    let wanted = index(uplinks).min(MAX_MPTCP_LIMIT);
    MptcpLimits {
        subflows: current.subflows.max(wanted),
        add_addr_accepted: current.add_addr_accepted.max(wanted),
    }
}

/// Uplink `i`'s default route: via its gateway, or on-link without one.
pub(super) fn uplink_route(
    i: usize,
    family: AddressFamily,
    gateway: Option<IpAddr>,
    ifindex: u32,
) -> Route {
    Route {
        table: uplink_table(i),
        dst: default_dst(family),
        gateway,
        ifindex: Some(ifindex),
        src: None,
        metric: None,
        protocol: MPBOND_RTPROT,
    }
}

/// A rule with mpbond's protocol and nothing to match yet.
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

/// Uplink `i`'s source rule: traffic from its address uses its table.
pub(super) fn uplink_rule(i: usize, addr: IpAddr) -> Rule {
    Rule {
        from: Some(host(addr)),
        ..our_rule(
            uplink_rule_pref(i),
            AddressFamily::of(addr),
            uplink_table(i),
        )
    }
}

/// Uplink `i`'s MPTCP endpoint `id`: a subflow endpoint on its interface
/// (`backup` for a backup uplink). Without an address yet the unspecified
/// address of `family` stands in.
pub(super) fn uplink_endpoint(
    id: u8,
    addr: Option<IpAddr>,
    family: AddressFamily,
    ifindex: u32,
    backup: bool,
) -> MptcpEndpoint {
    MptcpEndpoint {
        id,
        addr: addr.unwrap_or(default_dst(family).0),
        port: 0,
        ifindex: Some(ifindex),
        flags: EndpointFlags {
            subflow: true,
            backup,
            ..EndpointFlags::default()
        },
    }
}

/// The default routes into the TUN, IPv4 and IPv6.
pub(super) fn capture_routes(tun_index: u32) -> Vec<Route> {
    [AddressFamily::V4, AddressFamily::V6]
        .into_iter()
        .map(|family| Route {
            table: CAPTURE_TABLE,
            dst: default_dst(family),
            gateway: None,
            ifindex: Some(tun_index),
            src: None,
            metric: None,
            protocol: MPBOND_RTPROT,
        })
        .collect()
}

/// The capture rules of both families, in the order they must be added:
/// the one diverting everything into the TUN last. `all`: every protocol
/// (the datagram tunnel carries what is not TCP); else TCP alone.
pub(super) fn capture_rules(concentrator: IpAddr, all: bool) -> Vec<Rule> {
    let mut rules = Vec::new();
    for family in [AddressFamily::V4, AddressFamily::V6] {
        rules.push(Rule {
            fwmark: Some((TUNNEL_FWMARK, u32::MAX)),
            ..our_rule(BYPASS_MARK_PREF, family, MAIN_TABLE)
        });
        if AddressFamily::of(concentrator) == family {
            rules.push(Rule {
                to: Some(host(concentrator)),
                ..our_rule(CONCENTRATOR_PREF, family, MAIN_TABLE)
            });
        }
        rules.push(Rule {
            suppress_prefixlen: Some(0),
            ..our_rule(NOT_DEFAULT_PREF, family, MAIN_TABLE)
        });
    }
    for family in [AddressFamily::V4, AddressFamily::V6] {
        // Without the datagram tunnel only TCP is captured: other traffic
        // (DNS, ICMP, QUIC) keeps using the main table's default route
        // unbonded rather than vanishing into the TUN.
        rules.push(Rule {
            ip_proto: (!all).then_some(IPPROTO_TCP),
            ..our_rule(CAPTURE_PREF, family, CAPTURE_TABLE)
        });
    }
    rules
}

#[cfg(test)]
mod tests {
    //! The numbering and choices, without root.

    use super::*;

    fn ip_addr(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn tables_priorities_and_ids_follow_config_order() {
        assert_eq!((uplink_table(0), uplink_rule_pref(0)), (7701, 7700));
        assert_eq!((uplink_table(7), uplink_rule_pref(7)), (7708, 7707));
        assert_eq!(ENDPOINT_IDS.len(), 8, "one id per uplink, at most 8");
        // Every uplink's table and rule stay below the capture rules.
        assert!(uplink_rule_pref(ENDPOINT_IDS.len() - 1) < BYPASS_MARK_PREF);
        assert!(uplink_table(ENDPOINT_IDS.len() - 1) < CAPTURE_TABLE);
    }

    #[test]
    fn an_interface_is_followed_by_its_index() {
        let r = |leave, join| Relink { leave, join };
        // Missing at start, and still.
        assert_eq!(relink(None, None), r(false, None));
        // It appears: a late uplink joins.
        assert_eq!(relink(None, Some(7)), r(false, Some(7)));
        // The same interface: nothing to do.
        assert_eq!(relink(Some(7), Some(7)), r(false, None));
        // Unplugged.
        assert_eq!(relink(Some(7), None), r(true, None));
        // Plugged in again before the deletion was heard of: a new index
        // is a new interface.
        assert_eq!(relink(Some(7), Some(9)), r(true, Some(9)));
        // Index 0 is no interface.
        assert_eq!(relink(Some(NO_INTERFACE), Some(0)), r(false, None));
        assert_eq!(relink(Some(NO_INTERFACE), Some(3)), r(false, Some(3)));
    }

    #[test]
    fn a_late_uplink_keeps_its_config_numbering_and_follows_its_index() {
        // Uplink 1 joins late on interface 12: the numbering comes from its
        // config position, the interface from the index found.
        let route = uplink_route(1, AddressFamily::V4, None, 12);
        assert_eq!((route.table, route.ifindex), (7702, Some(12)));
        let endpoint = uplink_endpoint(97, None, AddressFamily::V4, 12, false);
        assert_eq!(endpoint.ifindex, Some(12));
        assert!(endpoint.addr.is_unspecified());
        let rule = uplink_rule(1, ip_addr("10.77.2.2"));
        assert_eq!((rule.priority, rule.table), (7701, 7702));
        let uplink = Uplink {
            index: 1,
            name: "lte".into(),
            interface: "lte0".into(),
            ifindex: NO_INTERFACE,
            addr: endpoint.addr,
            backup: false,
            endpoint,
        };
        assert!(!uplink.present());
        assert!(Uplink {
            ifindex: 12,
            ..uplink
        }
        .present());
    }

    #[test]
    fn address_choice() {
        let addrs = [
            (ip_addr("fe80::1"), 64),
            (ip_addr("10.77.1.2"), 24),
            (ip_addr("fd77:1::2"), 64),
            (ip_addr("10.77.1.3"), 24),
            (ip_addr("2001:db8::2"), 64),
        ];
        assert_eq!(
            pick_address(&addrs, AddressFamily::V4),
            Some(ip_addr("10.77.1.2"))
        );
        assert_eq!(
            pick_address(&addrs, AddressFamily::V6),
            Some(ip_addr("fd77:1::2"))
        );
        assert_eq!(
            pick_address(&addrs[..2], AddressFamily::V6),
            None,
            "link-local only"
        );
        assert_eq!(pick_address(&addrs[2..3], AddressFamily::V4), None);
        assert_eq!(pick_address(&[], AddressFamily::V4), None);
        // fe80::/10 reaches up to febf::.
        assert_eq!(
            pick_address(&[(ip_addr("febf::1"), 64)], AddressFamily::V6),
            None
        );
        assert_eq!(
            pick_address(&[(ip_addr("fec0::1"), 64)], AddressFamily::V6),
            Some(ip_addr("fec0::1"))
        );
    }

    #[test]
    fn limits_are_raised_never_lowered_and_capped() {
        let limits = |subflows, add_addr_accepted| MptcpLimits {
            subflows,
            add_addr_accepted,
        };
        assert_eq!(raised_limits(limits(2, 0), 2), limits(2, 2));
        assert_eq!(raised_limits(limits(0, 0), 3), limits(3, 3));
        assert_eq!(raised_limits(limits(8, 5), 1), limits(8, 5));
        assert_eq!(raised_limits(limits(0, 0), 12), limits(8, 8));
    }

    #[test]
    fn capture_rules_divert_everything_last() {
        let rules = capture_rules(ip_addr("203.0.113.7"), false);
        assert!(rules[5..].iter().all(|r| r.ip_proto == Some(IPPROTO_TCP)));
        let all = capture_rules(ip_addr("203.0.113.7"), true);
        assert!(all[5..].iter().all(|r| r.ip_proto.is_none()));
        let summary: Vec<_> = rules
            .iter()
            .map(|r| (r.priority, r.family, r.table))
            .collect();
        assert_eq!(
            summary,
            [
                (7780, AddressFamily::V4, 254),
                (7785, AddressFamily::V4, 254),
                (7790, AddressFamily::V4, 254),
                (7780, AddressFamily::V6, 254),
                (7790, AddressFamily::V6, 254),
                (7791, AddressFamily::V4, 7799),
                (7791, AddressFamily::V6, 7799),
            ]
        );
        assert_eq!(rules[1].to, Some((ip_addr("203.0.113.7"), 32)));
        let v6 = capture_rules(ip_addr("2001:db8::7"), false);
        assert!(v6
            .iter()
            .any(|r| r.to == Some((ip_addr("2001:db8::7"), 128)) && r.family == AddressFamily::V6));
        assert!(v6
            .iter()
            .all(|r| r.to.is_none() || r.family == AddressFamily::V6));
        assert!(rules.iter().chain(&v6).all(|r| r.protocol == MPBOND_RTPROT));
    }
}
