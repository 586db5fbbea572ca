//! Links, addresses, routes and rules over rtnetlink (`NETLINK_ROUTE`):
//! the per-uplink policy routing mpbond owns, and its crash cleanup.

use std::fmt::{self, Write as _};
use std::io;
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily as NlFamily, IpProtocol, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;

use super::socket::{invalid_data, NlSocket};
use super::{interface_name, NetlinkError};

/// The route protocol (`rtm_protocol`, and `FRA_PROTOCOL` on rules) that
/// tags everything mpbond installs, so that a restart after a crash finds
/// its leftovers ([`Rtnl::flush_owned`]) and `ip route show proto 109`
/// shows them.
///
/// 0x6d ('m') = 109 is free: the kernel's `RTPROT_*` (`linux/rtnetlink.h`)
/// use 0-4, 8-18, 42, 99 and 186-192, and iproute2's `rt_protos` names
/// nothing else; routing daemons (FRR, BIRD, systemd-networkd,
/// NetworkManager) use those names or 0-4. Values up to `RTPROT_STATIC`
/// (4) are the kernel's and the administrator's and must never be used.
pub const MPBOND_RTPROT: u8 = 0x6d;

/// `RTPROT_STATIC`: protocols up to this one are not a daemon's own.
const RTPROT_STATIC: u8 = 4;

/// `RT_TABLE_COMPAT`: the header's table byte for a table id above 255,
/// whose real id travels in `RTA_TABLE` / `FRA_TABLE`.
const RT_TABLE_COMPAT: u8 = 252;
/// `RT_TABLE_MAIN`: the table `ip route` shows.
pub const MAIN_TABLE: u32 = 254;

/// IP version of a rule (routes take it from their destination).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressFamily {
    /// IPv4 (`ip -4 rule`).
    V4,
    /// IPv6 (`ip -6 rule`).
    V6,
}

impl AddressFamily {
    /// The family of `addr`.
    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    fn netlink(self) -> NlFamily {
        match self {
            Self::V4 => NlFamily::Inet,
            Self::V6 => NlFamily::Inet6,
        }
    }
}

/// A unicast route, as `ip route add DST [via GW] [dev IF] [src SRC]
/// [metric M] table T proto P` writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Routing table id (254 is `main`).
    pub table: u32,
    /// Destination prefix; `(0.0.0.0, 0)` or `(::, 0)` is the default route.
    /// Host bits must be zero.
    pub dst: (IpAddr, u8),
    /// Next hop; none for a route straight onto the link.
    pub gateway: Option<IpAddr>,
    /// Output interface.
    pub ifindex: Option<u32>,
    /// Preferred source address (`src`, `RTA_PREFSRC`).
    pub src: Option<IpAddr>,
    /// Priority (`metric`); the kernel's default when `None` (0 for IPv4,
    /// 1024 for IPv6).
    pub metric: Option<u32>,
    /// Route protocol; [`MPBOND_RTPROT`] for everything mpbond installs.
    pub protocol: u8,
}

/// A routing policy rule, as `ip rule add pref P [from SRC] [to DST]
/// [fwmark M/MASK] [ipproto N] lookup T [suppress_prefixlength N] proto P`
/// writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Priority (`pref`); lower is consulted first.
    pub priority: u32,
    /// Which rule list (`ip -4 rule` or `ip -6 rule`).
    pub family: AddressFamily,
    /// Source prefix to match; `None` is `from all`.
    pub from: Option<(IpAddr, u8)>,
    /// Destination prefix to match; `None` is any destination.
    pub to: Option<(IpAddr, u8)>,
    /// Firewall mark and mask to match.
    pub fwmark: Option<(u32, u32)>,
    /// IP protocol to match (`ipproto tcp` is 6).
    pub ip_proto: Option<u8>,
    /// Table to look up.
    pub table: u32,
    /// Ignore lookup results with a prefix this short or shorter
    /// (`suppress_prefixlength 0`: "anything but a default route").
    pub suppress_prefixlen: Option<u32>,
    /// Route protocol (`FRA_PROTOCOL`); [`MPBOND_RTPROT`] for mpbond's rules.
    pub protocol: u8,
}

/// `ip route` syntax, interface names resolved in the calling thread's
/// namespace.
impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&describe_route(self))
    }
}

/// `ip rule` syntax, the family in parentheses.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&describe_rule(self))
    }
}

/// What [`Rtnl::flush_owned`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Routes removed, IPv4 and IPv6, all tables.
    pub routes: usize,
    /// Rules removed, IPv4 and IPv6.
    pub rules: usize,
}

/// An interface's traffic counters since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// A route netlink socket in the network namespace of the thread that
/// opened it.
pub struct Rtnl {
    socket: NlSocket,
}

impl Rtnl {
    /// Opens the socket, with strict checking so dumps are filtered by the
    /// kernel and malformed requests refused.
    pub fn open() -> Result<Self, NetlinkError> {
        NlSocket::open(NETLINK_ROUTE, true)
            .map(|socket| Self { socket })
            .map_err(|source| NetlinkError::OpenRtnl { source })
    }

    /// The index of interface `name`, or `None` if there is none. A string
    /// that cannot be an interface name is an error.
    pub fn link_index(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        let lookup = || -> io::Result<Option<u32>> {
            check_ifname(name)?;
            let mut link = LinkMessage::default();
            link.attributes.push(LinkAttribute::IfName(name.to_owned()));
            let replies = match self.socket.request(&RouteNetlinkMessage::GetLink(link), 0) {
                Err(err) if err.raw_os_error() == Some(libc::ENODEV) => return Ok(None),
                other => other?,
            };
            replies
                .into_iter()
                .find_map(|msg| match msg {
                    RouteNetlinkMessage::NewLink(link) => Some(Some(link.header.index)),
                    _ => None,
                })
                .ok_or_else(|| invalid_data("RTM_GETLINK answered without a link"))
        };
        lookup().map_err(|source| NetlinkError::LinkIndex {
            name: name.to_owned(),
            source,
        })
    }

    /// The kernel's 64-bit counters of interface `ifindex` (`IFLA_STATS64`),
    /// or `None` if there is no such interface.
    pub fn link_stats(&self, ifindex: u32) -> Result<Option<LinkStats>, NetlinkError> {
        let lookup = || -> io::Result<Option<LinkStats>> {
            let mut link = LinkMessage::default();
            link.header.index = ifindex;
            let replies = match self.socket.request(&RouteNetlinkMessage::GetLink(link), 0) {
                Err(err) if err.raw_os_error() == Some(libc::ENODEV) => return Ok(None),
                other => other?,
            };
            let link = replies
                .into_iter()
                .find_map(|msg| match msg {
                    RouteNetlinkMessage::NewLink(link) => Some(link),
                    _ => None,
                })
                .ok_or_else(|| invalid_data("RTM_GETLINK answered without a link"))?;
            let stats = link
                .attributes
                .iter()
                .find_map(|attr| match attr {
                    LinkAttribute::Stats64(s) => Some(LinkStats {
                        rx_packets: s.rx_packets,
                        rx_bytes: s.rx_bytes,
                        tx_packets: s.tx_packets,
                        tx_bytes: s.tx_bytes,
                    }),
                    _ => None,
                })
                .ok_or_else(|| invalid_data("RTM_GETLINK answered without IFLA_STATS64"))?;
            Ok(Some(stats))
        };
        lookup().map_err(|source| NetlinkError::LinkStats {
            dev: interface_name(ifindex),
            source,
        })
    }

    /// The usable global addresses of interface `ifindex`, IPv4 and IPv6,
    /// with their prefix lengths. Link-local and host-scope addresses are
    /// left out, and so are IPv6 addresses still in (or failed) duplicate
    /// address detection, which cannot be bound yet. A missing interface is
    /// [`NetlinkError::is_not_found`].
    pub fn addresses(&self, ifindex: u32) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
        let list = || -> io::Result<Vec<(IpAddr, u8)>> {
            let mut request = AddressMessage::default();
            // With strict checking the kernel filters by index, and answers
            // ENODEV for an index that has no interface.
            request.header.index = ifindex;
            let replies = self
                .socket
                .dump(&RouteNetlinkMessage::GetAddress(request))?;
            Ok(replies
                .iter()
                .filter_map(|msg| match msg {
                    RouteNetlinkMessage::NewAddress(addr) => usable_address(addr, ifindex),
                    _ => None,
                })
                .collect())
        };
        list().map_err(|source| NetlinkError::Addresses {
            dev: interface_name(ifindex),
            source,
        })
    }

    /// The gateway of the main table's default `family` route out of
    /// `ifindex` (of the lowest metric), as DHCP or the administrator set
    /// it; routes with protocol `except` (mpbond's own) are skipped. `None`
    /// when there is no such route or it has no gateway (on-link).
    pub fn default_gateway(
        &self,
        family: AddressFamily,
        ifindex: u32,
        except: u8,
    ) -> Result<Option<IpAddr>, NetlinkError> {
        let list = || -> io::Result<Option<IpAddr>> {
            let mut request = RouteMessage::default();
            request.header.address_family = family.netlink();
            let replies = self.socket.dump(&RouteNetlinkMessage::GetRoute(request))?;
            let routes: Vec<Route> = replies
                .iter()
                .filter_map(|msg| match msg {
                    RouteNetlinkMessage::NewRoute(route) => Some(route_from_message(route)),
                    _ => None,
                })
                .collect();
            Ok(pick_default_gateway(&routes, ifindex, except))
        };
        list().map_err(|source| NetlinkError::Routes {
            dev: interface_name(ifindex),
            source,
        })
    }

    /// Adds `r` with `NLM_F_CREATE | NLM_F_REPLACE`: a route with the same
    /// table, destination and metric is replaced (whatever its gateway or
    /// protocol), so adding is idempotent and a new gateway after a DHCP
    /// renewal updates the route in place. Keep mpbond's routes in mpbond's
    /// tables so that this never replaces someone else's.
    pub fn add_route(&self, r: &Route) -> Result<(), NetlinkError> {
        let add = || -> io::Result<()> {
            check_route(r)?;
            let msg = RouteNetlinkMessage::NewRoute(route_message(r, true));
            self.socket
                .request(&msg, NLM_F_CREATE | NLM_F_REPLACE)
                .map(drop)
        };
        add().map_err(|source| NetlinkError::AddRoute {
            route: describe_route(r),
            source,
        })
    }

    /// Deletes the route matching `r` (table, destination, metric if given,
    /// gateway and interface if given, and protocol). A missing route is
    /// [`NetlinkError::is_not_found`].
    pub fn del_route(&self, r: &Route) -> Result<(), NetlinkError> {
        let del = || -> io::Result<()> {
            check_route(r)?;
            let msg = RouteNetlinkMessage::DelRoute(route_message(r, false));
            self.socket.request(&msg, 0).map(drop)
        };
        del().map_err(|source| NetlinkError::DelRoute {
            route: describe_route(r),
            source,
        })
    }

    /// Adds `r` with `NLM_F_CREATE | NLM_F_EXCL`. The kernel would happily
    /// keep two identical rules; with `EXCL` a repeat is refused instead
    /// ([`NetlinkError::is_already_exists`]), so adding is idempotent.
    pub fn add_rule(&self, r: &Rule) -> Result<(), NetlinkError> {
        let add = || -> io::Result<()> {
            check_rule(r)?;
            let msg = RouteNetlinkMessage::NewRule(rule_message(r));
            self.socket
                .request(&msg, NLM_F_CREATE | NLM_F_EXCL)
                .map(drop)
        };
        add().map_err(|source| NetlinkError::AddRule {
            rule: describe_rule(r),
            source,
        })
    }

    /// Deletes the rule matching every field of `r`. A missing rule is
    /// [`NetlinkError::is_not_found`].
    pub fn del_rule(&self, r: &Rule) -> Result<(), NetlinkError> {
        let del = || -> io::Result<()> {
            check_rule(r)?;
            let msg = RouteNetlinkMessage::DelRule(rule_message(r));
            self.socket.request(&msg, 0).map(drop)
        };
        del().map_err(|source| NetlinkError::DelRule {
            rule: describe_rule(r),
            source,
        })
    }

    /// Deletes every route (all tables, IPv4 and IPv6) and every rule (IPv4
    /// and IPv6) tagged with `protocol`: the cleanup after a crash. Each
    /// deletion is logged. Protocols up to `RTPROT_STATIC` (4) are refused:
    /// they belong to the kernel and the administrator.
    pub fn flush_owned(&self, protocol: u8) -> Result<FlushReport, NetlinkError> {
        if protocol <= RTPROT_STATIC {
            return Err(flush_error(protocol, "checking the protocol")(
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "protocols 0-4 are the kernel's and the administrator's",
                ),
            ));
        }
        let mut report = FlushReport::default();
        for family in [AddressFamily::V4, AddressFamily::V6] {
            report.routes += self.flush_routes(family, protocol)?;
            report.rules += self.flush_rules(family, protocol)?;
        }
        Ok(report)
    }

    fn flush_routes(&self, family: AddressFamily, protocol: u8) -> Result<usize, NetlinkError> {
        let mut request = RouteMessage::default();
        request.header.address_family = family.netlink();
        let routes = self
            .socket
            .dump(&RouteNetlinkMessage::GetRoute(request))
            .map_err(flush_error(
                protocol,
                &format!("listing the {family:?} routes"),
            ))?;
        let mut removed = 0;
        for route in routes {
            let RouteNetlinkMessage::NewRoute(route) = route else {
                continue;
            };
            if u8::from(route.header.protocol) != protocol {
                continue;
            }
            let what = describe_route(&route_from_message(&route));
            let msg = RouteNetlinkMessage::DelRoute(delete_for(route));
            match self.socket.request(&msg, 0) {
                Ok(_) => {
                    tracing::info!(route = %what, "removed a leftover route");
                    removed += 1;
                }
                // Gone with its interface, or with an earlier deletion.
                Err(err) if matches!(err.raw_os_error(), Some(libc::ESRCH | libc::ENOENT)) => {}
                Err(err) => {
                    return Err(flush_error(protocol, &format!("deleting route {what}"))(
                        err,
                    ))
                }
            }
        }
        Ok(removed)
    }

    fn flush_rules(&self, family: AddressFamily, protocol: u8) -> Result<usize, NetlinkError> {
        let mut request = RuleMessage::default();
        request.header.family = family.netlink();
        let rules = self
            .socket
            .dump(&RouteNetlinkMessage::GetRule(request))
            .map_err(flush_error(
                protocol,
                &format!("listing the {family:?} rules"),
            ))?;
        let mut removed = 0;
        for rule in rules {
            let RouteNetlinkMessage::NewRule(rule) = rule else {
                continue;
            };
            let owned = rule
                .attributes
                .iter()
                .any(|attr| matches!(attr, RuleAttribute::Protocol(p) if u8::from(*p) == protocol));
            if !owned {
                continue;
            }
            let what = describe_rule(&rule_from_message(&rule, family));
            // Sent back whole, as `ip rule flush` does: the kernel deletes
            // the rule matching every attribute given.
            match self.socket.request(&RouteNetlinkMessage::DelRule(rule), 0) {
                Ok(_) => {
                    tracing::info!(rule = %what, "removed a leftover rule");
                    removed += 1;
                }
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {}
                Err(err) => {
                    return Err(flush_error(protocol, &format!("deleting rule {what}"))(err))
                }
            }
        }
        Ok(removed)
    }
}

/// Wraps an error of [`Rtnl::flush_owned`] at `step`.
fn flush_error(protocol: u8, step: &str) -> impl FnOnce(io::Error) -> NetlinkError {
    let step = step.to_owned();
    move |source| NetlinkError::FlushOwned {
        protocol,
        step,
        source,
    }
}

/// `IFNAMSIZ` less the NUL.
const MAX_IFNAME: usize = 15;

fn check_ifname(name: &str) -> io::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if valid {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not an interface name (1 to {MAX_IFNAME} bytes, no '/', ':' or spaces)"),
        ))
    }
}

/// `(addr, prefix)` from an address dump entry, if it is a usable global
/// address of `ifindex`.
fn usable_address(msg: &AddressMessage, ifindex: u32) -> Option<(IpAddr, u8)> {
    if msg.header.index != ifindex || msg.header.scope != AddressScope::Universe {
        return None;
    }
    let mut local = None;
    let mut address = None;
    let mut flags = AddressFlags::from_bits_retain(u32::from(msg.header.flags.bits()));
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            // The 32-bit attribute supersedes the header's 8 bits.
            AddressAttribute::Flags(f) => flags = *f,
            _ => {}
        }
    }
    if flags.intersects(AddressFlags::Tentative | AddressFlags::Dadfailed) {
        return None;
    }
    // On a point-to-point link IFA_ADDRESS is the peer; IFA_LOCAL is ours.
    local.or(address).map(|a| (a, msg.header.prefix_len))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// A prefix must fit its family and have no host bits set (the kernel
/// refuses those routes with a less helpful EINVAL).
fn check_prefix(what: &str, (addr, len): (IpAddr, u8)) -> io::Result<()> {
    let host_bits = match addr {
        IpAddr::V4(a) if len <= 32 => {
            u128::from(u32::from(a) & u32::MAX.checked_shr(len.into()).unwrap_or(0))
        }
        IpAddr::V6(a) if len <= 128 => {
            u128::from(a) & u128::MAX.checked_shr(len.into()).unwrap_or(0)
        }
        _ => return Err(invalid(format!("{what} {addr}/{len}: prefix too long"))),
    };
    if host_bits != 0 {
        return Err(invalid(format!("{what} {addr}/{len} has host bits set")));
    }
    Ok(())
}

fn check_same_family(what: &str, addr: Option<IpAddr>, family: AddressFamily) -> io::Result<()> {
    match addr {
        Some(a) if AddressFamily::of(a) != family => Err(invalid(format!(
            "{what} {a} is not {family:?} like the rest"
        ))),
        _ => Ok(()),
    }
}

fn check_route(r: &Route) -> io::Result<()> {
    check_prefix("destination", r.dst)?;
    let family = AddressFamily::of(r.dst.0);
    check_same_family("gateway", r.gateway, family)?;
    check_same_family("source", r.src, family)
}

fn check_rule(r: &Rule) -> io::Result<()> {
    if let Some(from) = r.from {
        check_prefix("source", from)?;
        check_same_family("source", Some(from.0), r.family)?;
    }
    if let Some(to) = r.to {
        check_prefix("destination", to)?;
        check_same_family("destination", Some(to.0), r.family)?;
    }
    Ok(())
}

fn table_byte(table: u32) -> u8 {
    u8::try_from(table).unwrap_or(RT_TABLE_COMPAT)
}

/// The `RTM_NEWROUTE` / `RTM_DELROUTE` body for `r`.
fn route_message(r: &Route, add: bool) -> RouteMessage {
    let (dst, dst_len) = r.dst;
    let mut msg = RouteMessage::default();
    let h = &mut msg.header;
    h.address_family = AddressFamily::of(dst).netlink();
    h.destination_prefix_length = dst_len;
    h.table = table_byte(r.table);
    h.protocol = RouteProtocol::from(r.protocol);
    if add {
        h.kind = RouteType::Unicast;
        // Without a gateway the destination is on the link, as `ip route`
        // decides too.
        h.scope = if r.gateway.is_none() && r.ifindex.is_some() {
            RouteScope::Link
        } else {
            RouteScope::Universe
        };
    } else {
        // Matches a route of any scope and type, as `ip route del` does.
        h.scope = RouteScope::NoWhere;
        h.kind = RouteType::Unspec;
    }
    let a = &mut msg.attributes;
    a.push(RouteAttribute::Table(r.table));
    if dst_len > 0 {
        a.push(RouteAttribute::Destination(RouteAddress::from(dst)));
    }
    if let Some(gw) = r.gateway {
        a.push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    if let Some(ifindex) = r.ifindex {
        a.push(RouteAttribute::Oif(ifindex));
    }
    if let Some(src) = r.src {
        a.push(RouteAttribute::PrefSource(RouteAddress::from(src)));
    }
    if let Some(metric) = r.metric {
        a.push(RouteAttribute::Priority(metric));
    }
    msg
}

/// The `RTM_DELROUTE` for a dumped route: its header and the attributes
/// the kernel matches a deletion on.
fn delete_for(mut route: RouteMessage) -> RouteMessage {
    route.attributes.retain(|attr| {
        matches!(
            attr,
            RouteAttribute::Table(_)
                | RouteAttribute::Destination(_)
                | RouteAttribute::Source(_)
                | RouteAttribute::Gateway(_)
                | RouteAttribute::Via(_)
                | RouteAttribute::Oif(_)
                | RouteAttribute::Priority(_)
                | RouteAttribute::MultiPath(_)
                | RouteAttribute::NhId(_)
        )
    });
    route
}

fn route_address(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// A dumped route as a [`Route`], for messages (multipath next hops and
/// other details are left out).
/// The gateway of the main table's lowest-metric default route out of
/// `ifindex`, not of protocol `except`; see [`Rtnl::default_gateway`].
fn pick_default_gateway(routes: &[Route], ifindex: u32, except: u8) -> Option<IpAddr> {
    routes
        .iter()
        .filter(|r| {
            r.table == MAIN_TABLE
                && r.dst.1 == 0
                && r.ifindex == Some(ifindex)
                && r.protocol != except
        })
        .min_by_key(|r| r.metric.unwrap_or(0))
        .and_then(|r| r.gateway)
}

fn route_from_message(msg: &RouteMessage) -> Route {
    let unspecified = match msg.header.address_family {
        NlFamily::Inet6 => IpAddr::from([0u16; 8]),
        _ => IpAddr::from([0u8; 4]),
    };
    let mut r = Route {
        table: msg.header.table.into(),
        dst: (unspecified, msg.header.destination_prefix_length),
        gateway: None,
        ifindex: None,
        src: None,
        metric: None,
        protocol: msg.header.protocol.into(),
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => r.table = *t,
            RouteAttribute::Destination(a) => {
                r.dst.0 = route_address(a).unwrap_or(unspecified);
            }
            RouteAttribute::Gateway(a) => r.gateway = route_address(a),
            RouteAttribute::Oif(i) => r.ifindex = Some(*i),
            RouteAttribute::PrefSource(a) => r.src = route_address(a),
            RouteAttribute::Priority(m) => r.metric = Some(*m),
            _ => {}
        }
    }
    r
}

/// The `RTM_NEWRULE` / `RTM_DELRULE` body for `r`.
fn rule_message(r: &Rule) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = r.family.netlink();
    msg.header.table = table_byte(r.table);
    msg.header.action = RuleAction::ToTable;
    let a = &mut msg.attributes;
    a.push(RuleAttribute::Priority(r.priority));
    if let Some((from, len)) = r.from {
        msg.header.src_len = len;
        a.push(RuleAttribute::Source(from));
    }
    if let Some((to, len)) = r.to {
        msg.header.dst_len = len;
        a.push(RuleAttribute::Destination(to));
    }
    if let Some((mark, mask)) = r.fwmark {
        a.push(RuleAttribute::FwMark(mark));
        a.push(RuleAttribute::FwMask(mask));
    }
    if let Some(proto) = r.ip_proto {
        a.push(RuleAttribute::IpProtocol(IpProtocol::from(proto)));
    }
    a.push(RuleAttribute::Table(r.table));
    if let Some(len) = r.suppress_prefixlen {
        a.push(RuleAttribute::SuppressPrefixLen(len));
    }
    a.push(RuleAttribute::Protocol(RouteProtocol::from(r.protocol)));
    msg
}

/// A dumped rule as a [`Rule`], for messages.
fn rule_from_message(msg: &RuleMessage, family: AddressFamily) -> Rule {
    let mut r = Rule {
        priority: 0,
        family,
        from: None,
        to: None,
        fwmark: None,
        ip_proto: None,
        table: msg.header.table.into(),
        suppress_prefixlen: None,
        protocol: 0,
    };
    let mut mark = None;
    let mut mask = u32::MAX;
    for attr in &msg.attributes {
        match attr {
            RuleAttribute::Priority(p) => r.priority = *p,
            RuleAttribute::Source(a) => r.from = Some((*a, msg.header.src_len)),
            RuleAttribute::Destination(a) => r.to = Some((*a, msg.header.dst_len)),
            RuleAttribute::FwMark(m) => mark = Some(*m),
            RuleAttribute::FwMask(m) => mask = *m,
            RuleAttribute::Table(t) => r.table = *t,
            RuleAttribute::SuppressPrefixLen(n) => r.suppress_prefixlen = Some(*n),
            RuleAttribute::Protocol(p) => r.protocol = (*p).into(),
            RuleAttribute::IpProtocol(p) => r.ip_proto = Some(u8::from(*p)),
            _ => {}
        }
    }
    r.fwmark = mark.map(|m| (m, mask));
    r
}

/// `r` in `ip route` syntax, with interface names resolved.
fn describe_route(r: &Route) -> String {
    let (dst, len) = r.dst;
    let mut s = format!("{dst}/{len}");
    if let Some(gw) = r.gateway {
        let _ = write!(s, " via {gw}");
    }
    if let Some(ifindex) = r.ifindex {
        let _ = write!(s, " dev {}", interface_name(ifindex));
    }
    if let Some(src) = r.src {
        let _ = write!(s, " src {src}");
    }
    if let Some(metric) = r.metric {
        let _ = write!(s, " metric {metric}");
    }
    let _ = write!(s, " table {} proto {}", r.table, r.protocol);
    s
}

/// `r` in `ip rule` syntax.
fn describe_rule(r: &Rule) -> String {
    let mut s = format!("pref {} from ", r.priority);
    match r.from {
        Some((addr, len)) => {
            let _ = write!(s, "{addr}/{len}");
        }
        None => s.push_str("all"),
    }
    if let Some((addr, len)) = r.to {
        let _ = write!(s, " to {addr}/{len}");
    }
    if let Some((mark, mask)) = r.fwmark {
        let _ = write!(s, " fwmark {mark:#x}/{mask:#x}");
    }
    if let Some(proto) = r.ip_proto {
        let _ = write!(s, " ipproto {proto}");
    }
    let _ = write!(s, " lookup {}", r.table);
    if let Some(len) = r.suppress_prefixlen {
        let _ = write!(s, " suppress_prefixlength {len}");
    }
    let _ = write!(s, " proto {} ({:?})", r.protocol, r.family);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn the_default_gateway_is_the_main_tables_best_route_out_of_the_interface() {
        let route =
            |table, dst: (&str, u8), gateway: Option<&str>, ifindex, metric, protocol| Route {
                table,
                dst: (v4(dst.0), dst.1),
                gateway: gateway.map(v4),
                ifindex: Some(ifindex),
                src: None,
                metric,
                protocol,
            };
        let any = ("0.0.0.0", 0);
        let routes = [
            // Another interface, a subnet, another table, mpbond's own.
            route(MAIN_TABLE, any, Some("10.0.1.1"), 3, Some(100), 16),
            route(MAIN_TABLE, ("10.0.2.0", 24), Some("10.0.2.9"), 4, None, 2),
            route(7702, any, Some("10.0.2.8"), 4, None, 16),
            route(
                MAIN_TABLE,
                any,
                Some("10.0.2.7"),
                4,
                Some(10),
                MPBOND_RTPROT,
            ),
            // The interface's two default routes: the lower metric wins.
            route(MAIN_TABLE, any, Some("10.0.2.2"), 4, Some(300), 16),
            route(MAIN_TABLE, any, Some("10.0.2.1"), 4, Some(200), 16),
        ];
        assert_eq!(
            pick_default_gateway(&routes, 4, MPBOND_RTPROT),
            Some(v4("10.0.2.1"))
        );
        assert_eq!(pick_default_gateway(&routes, 5, MPBOND_RTPROT), None);
        // On-link: no gateway.
        let onlink = [route(MAIN_TABLE, any, None, 4, None, 3)];
        assert_eq!(pick_default_gateway(&onlink, 4, MPBOND_RTPROT), None);
    }

    #[test]
    fn prefixes_with_host_bits_or_too_long_are_refused() {
        assert!(check_prefix("d", (v4("10.0.0.0"), 8)).is_ok());
        assert!(check_prefix("d", (v4("10.0.0.1"), 32)).is_ok());
        assert!(check_prefix("d", (v4("0.0.0.0"), 0)).is_ok());
        assert!(check_prefix("d", (v4("10.0.0.1"), 8)).is_err());
        assert!(check_prefix("d", (v4("10.0.0.0"), 33)).is_err());
        assert!(check_prefix("d", (v4("fd00::"), 8)).is_ok());
        assert!(check_prefix("d", (v4("fd00::1"), 128)).is_ok());
        assert!(check_prefix("d", (v4("fd00::1"), 64)).is_err());
        assert!(check_prefix("d", (v4("::"), 129)).is_err());
    }

    #[test]
    fn mixed_families_are_refused() {
        let route = Route {
            table: 101,
            dst: (v4("0.0.0.0"), 0),
            gateway: Some(v4("fd00::1")),
            ifindex: None,
            src: None,
            metric: None,
            protocol: MPBOND_RTPROT,
        };
        assert!(check_route(&route).is_err());
        let rule = Rule {
            priority: 100,
            family: AddressFamily::V6,
            from: Some((v4("10.0.0.2"), 32)),
            to: None,
            fwmark: None,
            ip_proto: None,
            table: 101,
            suppress_prefixlen: None,
            protocol: MPBOND_RTPROT,
        };
        assert!(check_rule(&rule).is_err());
    }

    #[test]
    fn interface_names_are_checked() {
        for bad in ["", "a/b", "sixteen-chars-xx", "a b", "eth0:1", "."] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
        assert!(check_ifname("dsl0").is_ok());
        assert!(check_ifname("fifteen-chars-x").is_ok());
    }

    #[test]
    fn large_tables_go_in_the_attribute() {
        let route = Route {
            table: 1000,
            dst: (v4("10.1.0.0"), 16),
            gateway: None,
            ifindex: Some(3),
            src: None,
            metric: Some(5),
            protocol: MPBOND_RTPROT,
        };
        let msg = route_message(&route, true);
        assert_eq!(msg.header.table, RT_TABLE_COMPAT);
        assert_eq!(msg.header.scope, RouteScope::Link);
        assert!(msg.attributes.contains(&RouteAttribute::Table(1000)));
        assert_eq!(route_from_message(&msg), route);
    }

    #[test]
    fn rules_survive_a_roundtrip() {
        let rule = Rule {
            priority: 100,
            family: AddressFamily::V4,
            from: Some((v4("10.0.0.2"), 32)),
            to: Some((v4("203.0.113.7"), 32)),
            fwmark: Some((0x6d, 0xff)),
            ip_proto: Some(6),
            table: 101,
            suppress_prefixlen: Some(0),
            protocol: MPBOND_RTPROT,
        };
        assert_eq!(
            rule_from_message(&rule_message(&rule), AddressFamily::V4),
            rule
        );
        assert_eq!(
            describe_rule(&rule),
            "pref 100 from 10.0.0.2/32 to 203.0.113.7/32 fwmark 0x6d/0xff ipproto 6 \
             lookup 101 suppress_prefixlength 0 proto 109 (V4)"
        );
    }
}
