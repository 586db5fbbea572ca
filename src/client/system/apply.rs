//! The application of the plan: [`Plumbing`] installs what
//! [`super::plan`] describes over netlink, follows address and gateway
//! changes, and removes it all again; [`cleanup_leftovers`] removes what a
//! crashed run left behind.

use std::fmt;
use std::io;
use std::net::IpAddr;

use tracing::{debug, info, warn};

use super::error::UplinkError;
use super::plan::{
    capture_routes, capture_rules, family_name, pick_address, raised_limits, uplink_endpoint,
    uplink_route, uplink_rule, uplink_table, AddressChange, Uplink, ENDPOINT_IDS,
};
use crate::chain::Chain;
use crate::config::client::UplinkConfig;
use crate::sys::{
    read_sysctl, AddressFamily, MptcpEndpoint, MptcpLimits, MptcpPm, NetlinkError, Route, Rtnl,
    Rule, SysctlGuard, MPBOND_RTPROT,
};

/// One thing added to the system, to be undone.
#[derive(Debug)]
enum Installed {
    Route(Route),
    Rule(Rule),
    Endpoint(u8),
    /// The limits were raised from these.
    Limits(MptcpLimits),
}

impl fmt::Display for Installed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Route(route) => write!(f, "route {route}"),
            Self::Rule(rule) => write!(f, "rule {rule}"),
            Self::Endpoint(id) => write!(f, "MPTCP endpoint id {id}"),
            Self::Limits(previous) => write!(
                f,
                "MPTCP limits (back to subflows {} add_addr_accepted {})",
                previous.subflows, previous.add_addr_accepted
            ),
        }
    }
}

/// An uplink and what its plumbing follows.
#[derive(Debug)]
struct Slot {
    uplink: Uplink,
    /// Its address now (`None`: none yet, or it lost it).
    current: Option<IpAddr>,
    /// Its gateway comes from the config (else it follows the system's
    /// default route out of its interface).
    pinned: bool,
    /// Its route as it should be (installed while it has an address).
    route: Route,
}

/// Everything installed for the uplinks. Dropping it removes it all (in
/// reverse order, logging what it cannot remove) and restores the sysctls;
/// drop it in the network namespace it was installed in (the process's, in
/// normal use), since the sysctls are restored through `/proc/sys` of the
/// dropping thread.
pub struct Plumbing {
    rtnl: Rtnl,
    pm: MptcpPm,
    /// The uplinks, in config order.
    slots: Vec<Slot>,
    /// In the order added; undone from the back.
    installed: Vec<Installed>,
    /// Dropped after `installed` is undone (field order).
    sysctls: Vec<SysctlGuard>,
}

impl fmt::Debug for Plumbing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plumbing")
            .field("slots", &self.slots)
            .field("installed", &self.installed)
            .field("sysctls", &self.sysctls)
            .finish_non_exhaustive()
    }
}

impl Plumbing {
    /// Cleans leftovers of a crashed run, then installs. `tun` is the TUN
    /// device name (already created and up). On error, whatever was
    /// installed is removed again before returning.
    pub fn install(
        uplinks: &[UplinkConfig],
        tun: &str,
        concentrator: IpAddr,
    ) -> Result<Plumbing, UplinkError> {
        let removed = cleanup_leftovers()?;
        if removed > 0 {
            info!(removed, "removed what an earlier run left behind");
        }
        if uplinks.len() > ENDPOINT_IDS.len() {
            return Err(UplinkError::TooManyUplinks {
                count: uplinks.len(),
            });
        }
        let mut plumbing = Plumbing {
            rtnl: Rtnl::open().map_err(|source| UplinkError::Netlink { source })?,
            pm: MptcpPm::open().map_err(|source| UplinkError::Netlink { source })?,
            slots: Vec::new(),
            installed: Vec::new(),
            sysctls: Vec::new(),
        };
        plumbing.set_sysctls()?;
        let tun_index = match plumbing.rtnl.link_index(tun) {
            Ok(Some(index)) => index,
            Ok(None) => {
                return Err(UplinkError::NoTun {
                    tun: tun.to_owned(),
                })
            }
            Err(source) => {
                return Err(UplinkError::LookupTun {
                    tun: tun.to_owned(),
                    source,
                })
            }
        };
        let family = AddressFamily::of(concentrator);
        // Checked above: every uplink has an id.
        for ((i, config), id) in uplinks.iter().enumerate().zip(ENDPOINT_IDS) {
            plumbing.install_uplink(i, id, config, family)?;
        }
        if plumbing.slots.iter().all(|slot| slot.current.is_none()) {
            return Err(UplinkError::NoAddress {
                family: family_name(family),
                concentrator,
            });
        }
        plumbing.raise_limits()?;
        plumbing.install_capture(tun, tun_index, concentrator)?;
        info!(
            uplinks = plumbing.slots.len(),
            skipped = uplinks.len() - plumbing.slots.len(),
            %concentrator,
            tun,
            "uplinks set up; the site's traffic goes into the TUN"
        );
        Ok(plumbing)
    }

    /// The uplinks, in config order; one without an address yet has the
    /// unspecified address.
    pub fn uplinks(&self) -> Vec<Uplink> {
        self.slots.iter().map(|slot| slot.uplink.clone()).collect()
    }

    /// Removes everything now (same as drop, but returns the first error;
    /// it still tries to remove the rest).
    pub fn remove(&mut self) -> Result<(), UplinkError> {
        self.undo()
    }

    /// Reads again the addresses of uplink `slot` (its position in
    /// [`uplinks`](Self::uplinks)) after its interface had an address
    /// event. When the address its subflows should use changed (a DHCP
    /// renumbering, an address removed), its source rule moves to the new
    /// one, and its route is put back (the kernel drops a route with the
    /// last address of its gateway's subnet).
    pub fn readdress(&mut self, slot: usize) -> Result<AddressChange, UplinkError> {
        let Some(Slot {
            uplink,
            current: had,
            route,
            ..
        }) = self.slots.get(slot)
        else {
            return Ok(AddressChange::Same);
        };
        let (had, route) = (*had, route.clone());
        let (name, interface, i) = (uplink.name.clone(), uplink.interface.clone(), uplink.index);
        let addresses =
            self.rtnl
                .addresses(uplink.ifindex)
                .map_err(|source| UplinkError::Addresses {
                    uplink: name.clone(),
                    interface: interface.clone(),
                    source,
                })?;
        let now = pick_address(&addresses, AddressFamily::of(uplink.addr));
        if now == had {
            return Ok(AddressChange::Same);
        }
        if let Some(old) = had {
            let rule = uplink_rule(i, old);
            match self.rtnl.del_rule(&rule) {
                Ok(()) => debug!(%rule, "rule removed"),
                Err(err) if err.is_not_found() => {}
                Err(source) => {
                    return Err(UplinkError::UplinkRule {
                        uplink: name,
                        addr: old,
                        table: uplink_table(i),
                        source,
                    })
                }
            }
            self.installed
                .retain(|item| !matches!(item, Installed::Rule(r) if *r == rule));
            self.slots[slot].current = None;
        }
        let Some(addr) = now else {
            return Ok(AddressChange::Gone);
        };
        let table = uplink_table(i);
        self.install_route(&route, &name, &interface)?;
        self.add_rule(uplink_rule(i, addr))
            .map_err(|source| UplinkError::UplinkRule {
                uplink: name,
                addr,
                table,
                source,
            })?;
        let Slot {
            uplink, current, ..
        } = &mut self.slots[slot];
        *current = Some(addr);
        uplink.addr = addr;
        uplink.endpoint.addr = addr;
        Ok(AddressChange::New(uplink.clone()))
    }

    fn set_sysctls(&mut self) -> Result<(), UplinkError> {
        let sysctl =
            |key: &'static str| move |source: io::Error| UplinkError::Sysctl { key, source };
        const MPTCP: &str = "net.mptcp.enabled";
        self.sysctls
            .extend(SysctlGuard::set(MPTCP, "1").map_err(sysctl(MPTCP))?);
        const FASTOPEN: &str = "net.ipv4.tcp_fastopen";
        // Bit 0x1: TCP Fast Open on the client side of connections.
        self.sysctls
            .extend(SysctlGuard::set_bits(FASTOPEN, 0x1).map_err(sysctl(FASTOPEN))?);
        const FORWARD: &str = "net.ipv4.ip_forward";
        match read_sysctl(FORWARD) {
            Ok(value) if value == "0" => warn!(
                "net.ipv4.ip_forward is 0: LAN hosts' traffic cannot be bonded until forwarding \
                 is on (sysctl -w net.ipv4.ip_forward=1); only this machine's own is"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot read net.ipv4.ip_forward"),
        }
        Ok(())
    }

    /// Route, rule and endpoint `id` of uplink `i`; skips (with a warning)
    /// an uplink without an address of `family`.
    fn install_uplink(
        &mut self,
        i: usize,
        id: u8,
        config: &UplinkConfig,
        family: AddressFamily,
    ) -> Result<(), UplinkError> {
        let ifindex = match self.rtnl.link_index(&config.interface) {
            Ok(Some(index)) => index,
            Ok(None) => {
                return Err(UplinkError::NoInterface {
                    uplink: config.name.clone(),
                    interface: config.interface.clone(),
                })
            }
            Err(source) => {
                return Err(UplinkError::LookupInterface {
                    uplink: config.name.clone(),
                    interface: config.interface.clone(),
                    source,
                })
            }
        };
        let addresses = self
            .rtnl
            .addresses(ifindex)
            .map_err(|source| UplinkError::Addresses {
                uplink: config.name.clone(),
                interface: config.interface.clone(),
                source,
            })?;
        let addr = pick_address(&addresses, family);
        if addr.is_none() {
            warn!(
                uplink = %config.name,
                interface = %config.interface,
                "uplink has no {} address yet; it is used once it gets one",
                family_name(family)
            );
        }
        let pinned = match family {
            AddressFamily::V4 => config.gateway.map(IpAddr::V4),
            AddressFamily::V6 => config.gateway6.map(IpAddr::V6),
        };
        let gateway = match pinned {
            Some(gateway) => Some(gateway),
            None => self.system_gateway(family, ifindex, &config.name),
        };
        let route = uplink_route(i, family, gateway, ifindex);
        let endpoint = uplink_endpoint(id, addr, family, ifindex, config.backup);
        if let Some(addr) = addr {
            self.install_route(&route, &config.name, &config.interface)?;
            let rule = uplink_rule(i, addr);
            self.add_rule(rule)
                .map_err(|source| UplinkError::UplinkRule {
                    uplink: config.name.clone(),
                    addr,
                    table: uplink_table(i),
                    source,
                })?;
            self.add_endpoint(&endpoint, &config.name)?;
        }

        info!(
            uplink = %config.name,
            interface = %config.interface,
            addr = ?addr,
            backup = config.backup,
            table = uplink_table(i),
            endpoint = endpoint.id,
            "uplink installed"
        );
        self.slots.push(Slot {
            uplink: Uplink {
                index: i,
                name: config.name.clone(),
                interface: config.interface.clone(),
                ifindex,
                addr: endpoint.addr,
                backup: config.backup,
                endpoint,
            },
            current: addr,
            pinned: pinned.is_some(),
            route,
        });
        Ok(())
    }

    /// Adds (or replaces) an uplink's route, remembering it once.
    fn install_route(
        &mut self,
        route: &Route,
        uplink: &str,
        interface: &str,
    ) -> Result<(), UplinkError> {
        self.rtnl
            .add_route(route)
            .map_err(|source| UplinkError::UplinkRoute {
                uplink: uplink.to_owned(),
                interface: interface.to_owned(),
                table: route.table,
                source,
            })?;
        debug!(uplink, %route, "route added");
        let table = route.table;
        match self.installed.iter_mut().find_map(|item| match item {
            Installed::Route(r) if r.table == table => Some(r),
            _ => None,
        }) {
            Some(installed) => *installed = route.clone(),
            None => self.installed.push(Installed::Route(route.clone())),
        }
        Ok(())
    }

    /// The gateway of the system's default route out of `ifindex` (set by
    /// DHCP or the administrator), if any; a failure to read it is logged
    /// and counts as none.
    fn system_gateway(&self, family: AddressFamily, ifindex: u32, uplink: &str) -> Option<IpAddr> {
        match self.rtnl.default_gateway(family, ifindex, MPBOND_RTPROT) {
            Ok(gateway) => gateway,
            Err(e) => {
                warn!(uplink, error = %Chain(&e), "cannot read the system's default gateway; the uplink's route stays as it is");
                None
            }
        }
    }

    /// Uplink `slot` (its position in [`uplinks`](Self::uplinks)) without a
    /// gateway in the config follows the system's default route out of its
    /// interface: when that route has a new gateway (a DHCP renewal), the
    /// uplink's route moves to it. Returns the old and new gateway when it
    /// moved. A system route that disappears leaves the last gateway in
    /// place (DHCP removes and adds it again on renewal).
    pub fn regateway(
        &mut self,
        slot: usize,
    ) -> Result<Option<(Option<IpAddr>, IpAddr)>, UplinkError> {
        let Some(Slot {
            uplink,
            current,
            pinned: false,
            route,
        }) = self.slots.get(slot)
        else {
            return Ok(None);
        };
        let Some(wanted) =
            self.system_gateway(AddressFamily::of(uplink.addr), uplink.ifindex, &uplink.name)
        else {
            return Ok(None);
        };
        let old = route.gateway;
        if old == Some(wanted) {
            return Ok(None);
        }
        let moved = Route {
            gateway: Some(wanted),
            ..route.clone()
        };
        let (name, interface) = (uplink.name.clone(), uplink.interface.clone());
        // Without an address the route waits for one (readdress adds it).
        if current.is_some() {
            self.install_route(&moved, &name, &interface)?;
        }
        self.slots[slot].route = moved;
        Ok(Some((old, wanted)))
    }

    /// Adds `rule`, treating an identical rule already there as an error:
    /// leftovers were cleaned, so it would be someone else's, and removing
    /// it later would break theirs.
    fn add_rule(&mut self, rule: Rule) -> Result<(), NetlinkError> {
        self.rtnl.add_rule(&rule)?;
        debug!(%rule, "rule added");
        self.installed.push(Installed::Rule(rule));
        Ok(())
    }

    /// Adds `endpoint`; an implicit endpoint the kernel made for the same
    /// address is replaced, anyone else's is an error.
    fn add_endpoint(&mut self, endpoint: &MptcpEndpoint, uplink: &str) -> Result<(), UplinkError> {
        let failed = |source| UplinkError::Endpoint {
            uplink: uplink.to_owned(),
            addr: endpoint.addr,
            id: endpoint.id,
            source,
        };
        match self.pm.add_endpoint(endpoint) {
            Ok(()) => {}
            Err(err) if err.is_already_exists() => {
                let existing = self.pm.endpoints().map_err(failed)?;
                let Some(other) = existing.iter().find(|ep| ep.addr == endpoint.addr) else {
                    return Err(failed(err));
                };
                if !other.flags.implicit {
                    return Err(UplinkError::EndpointTaken {
                        uplink: uplink.to_owned(),
                        addr: endpoint.addr,
                        id: other.id,
                    });
                }
                debug!(id = other.id, addr = %other.addr, "replacing the kernel's implicit endpoint");
                self.pm.del_endpoint(other.id).map_err(failed)?;
                self.pm.add_endpoint(endpoint).map_err(failed)?;
            }
            Err(err) => return Err(failed(err)),
        }
        debug!(id = endpoint.id, addr = %endpoint.addr, backup = endpoint.flags.backup, "MPTCP endpoint added");
        self.installed.push(Installed::Endpoint(endpoint.id));
        Ok(())
    }

    fn raise_limits(&mut self) -> Result<(), UplinkError> {
        let limits = |source| UplinkError::Limits { source };
        let current = self.pm.limits().map_err(limits)?;
        let wanted = raised_limits(current, self.slots.len());
        if wanted == current {
            debug!(?current, "MPTCP limits already high enough");
            return Ok(());
        }
        self.pm.set_limits(wanted).map_err(limits)?;
        info!(
            subflows = wanted.subflows,
            add_addr_accepted = wanted.add_addr_accepted,
            previous_subflows = current.subflows,
            previous_add_addr_accepted = current.add_addr_accepted,
            "MPTCP limits raised"
        );
        self.installed.push(Installed::Limits(current));
        Ok(())
    }

    /// The capture: routes first, the rule that diverts everything last, so
    /// that traffic never meets a half-built setup.
    fn install_capture(
        &mut self,
        tun: &str,
        tun_index: u32,
        concentrator: IpAddr,
    ) -> Result<(), UplinkError> {
        for route in capture_routes(tun_index) {
            self.rtnl
                .add_route(&route)
                .map_err(|source| UplinkError::CaptureRoute {
                    tun: tun.to_owned(),
                    source,
                })?;
            debug!(%route, "route added");
            self.installed.push(Installed::Route(route));
        }
        for rule in capture_rules(concentrator) {
            self.add_rule(rule)
                .map_err(|source| UplinkError::CaptureRule { source })?;
        }
        Ok(())
    }

    /// Undoes everything, newest first; logs each failure and returns the
    /// first. Things already gone (a route that left with its interface)
    /// are not failures.
    fn undo(&mut self) -> Result<(), UplinkError> {
        let mut first = None;
        while let Some(item) = self.installed.pop() {
            let result = match &item {
                Installed::Route(route) => self.rtnl.del_route(route),
                Installed::Rule(rule) => self.rtnl.del_rule(rule),
                Installed::Endpoint(id) => self.pm.del_endpoint(*id),
                Installed::Limits(previous) => self.pm.set_limits(*previous),
            };
            match result {
                Ok(()) => debug!(%item, "removed"),
                Err(err) if err.is_not_found() => debug!(%item, "already gone"),
                Err(err) => {
                    warn!(error = %Chain(&err), "cannot remove what mpbond installed");
                    first.get_or_insert(err);
                }
            }
        }
        match first {
            None => Ok(()),
            Some(source) => Err(UplinkError::Remove { source }),
        }
    }
}

impl Drop for Plumbing {
    fn drop(&mut self) {
        if self.installed.is_empty() {
            return;
        }
        // Failures were logged one by one.
        if self.undo().is_ok() {
            info!("uplink routes, rules and MPTCP endpoints removed");
        }
    }
}

/// Removes whatever a previous run left behind: routes and rules with
/// protocol [`MPBOND_RTPROT`] (all tables, IPv4 and IPv6) and MPTCP
/// endpoints with ids in [`ENDPOINT_IDS`]. Returns how many things it
/// removed, for logging. MPTCP limits raised by a crashed run stay raised.
pub fn cleanup_leftovers() -> Result<usize, UplinkError> {
    let leftovers = |source| UplinkError::Leftovers { source };
    let rtnl = Rtnl::open().map_err(|source| UplinkError::Netlink { source })?;
    let report = rtnl.flush_owned(MPBOND_RTPROT).map_err(leftovers)?;
    let pm = MptcpPm::open().map_err(|source| UplinkError::Netlink { source })?;
    let mut endpoints = 0;
    for endpoint in pm.endpoints().map_err(leftovers)? {
        if !ENDPOINT_IDS.contains(&endpoint.id) {
            continue;
        }
        match pm.del_endpoint(endpoint.id) {
            Ok(()) => {
                info!(id = endpoint.id, addr = %endpoint.addr, "removed a leftover MPTCP endpoint");
                endpoints += 1;
            }
            Err(err) if err.is_not_found() => {}
            Err(err) => return Err(leftovers(err)),
        }
    }
    Ok(report.routes + report.rules + endpoints)
}

#[cfg(test)]
mod tests {
    //! The real kernel: each test in a network namespace of its own
    //! (`mpbt-up-NAME-PID-0`), with veth pairs as uplinks and a TUN device,
    //! checked with the `ip` tool. They need root and fail without it.

    use std::panic;
    use std::process::Command;

    use super::*;
    use crate::sys::{enter_netns, EndpointFlags};

    fn ip_addr(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    /// A named network namespace, deleted on drop (also when a test fails).
    struct TestNs {
        name: String,
    }

    impl TestNs {
        /// An empty namespace `mpbt-up-TAG-PID-0` with the TUN device
        /// `mpbt0`, up.
        fn new(tag: &str) -> Self {
            let name = format!("mpbt-up-{tag}-{}-0", std::process::id());
            // A namespace left by a killed run of the same test.
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
            run_ip(&["netns", "add", &name]);
            let ns = Self { name };
            ns.ip(&["tuntap", "add", "mode", "tun", "name", "mpbt0"]);
            ns.ip(&["link", "set", "mpbt0", "up"]);
            ns
        }

        /// An uplink-like interface `dev`: the end of a veth pair with
        /// carrier (this kernel has no `dummy` driver), with `addrs`.
        fn uplink(&self, dev: &str, addrs: &[&str]) {
            let peer = format!("{dev}p");
            self.ip(&["link", "add", dev, "type", "veth", "peer", "name", &peer]);
            self.ip(&["link", "set", &peer, "up"]);
            self.ip(&["link", "set", dev, "up"]);
            for addr in addrs {
                self.ip(&["addr", "add", addr, "dev", dev, "nodad"]);
            }
        }

        /// `ip -N -n NAME ARGS`, which must succeed; its output.
        fn ip(&self, args: &[&str]) -> String {
            let mut all = vec!["-N", "-n", &self.name];
            all.extend_from_slice(args);
            run_ip(&all)
        }

        /// The output's trimmed lines that mention `needle`.
        fn ip_lines(&self, args: &[&str], needle: &str) -> Vec<String> {
            self.ip(args)
                .lines()
                .filter(|l| l.contains(needle))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                // Without /etc/protocols, ip names TCP "ipproto-6".
                .map(|l| l.replace("ipproto ipproto-6", "ipproto tcp"))
                .collect()
        }

        /// The first line of `ip route get ARGS`: where a packet goes.
        fn route_get(&self, args: &[&str]) -> String {
            let mut all = vec!["route", "get"];
            all.extend_from_slice(args);
            let out = self.ip(&all);
            let first = out.lines().next().unwrap_or_default();
            first.split_whitespace().collect::<Vec<_>>().join(" ")
        }

        /// Everything of mpbond's an operator would find.
        fn leftovers(&self) -> Vec<String> {
            let mut all = Vec::new();
            for family in ["-4", "-6"] {
                all.extend(self.ip_lines(&[family, "rule", "show"], "proto 109"));
                all.extend(self.ip_lines(&[family, "route", "show", "table", "all"], "proto 109"));
            }
            all.extend(self.ip_lines(&["mptcp", "endpoint", "show"], " id "));
            all
        }

        fn sysctl(&self, key: &str) -> String {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.name, "sysctl", "-n", key])
                .output()
                .expect("run sysctl");
            assert!(out.status.success(), "sysctl -n {key}");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        }

        fn set_sysctl(&self, key: &str, value: &str) {
            let status = Command::new("ip")
                .args(["netns", "exec", &self.name, "sysctl", "-qw"])
                .arg(format!("{key}={value}"))
                .status()
                .expect("run sysctl");
            assert!(status.success(), "sysctl -w {key}={value}");
        }

        /// Runs `f` on a thread inside the namespace, its logs shown when
        /// the test fails; a panic there fails the test after the namespace
        /// is gone.
        fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
            std::thread::scope(|scope| {
                let thread = scope.spawn(|| {
                    let _logs = tracing::subscriber::set_default(
                        tracing_subscriber::fmt()
                            .with_test_writer()
                            .with_max_level(tracing::Level::DEBUG)
                            .finish(),
                    );
                    enter_netns(&self.name).expect("enter the test namespace");
                    f()
                });
                thread
                    .join()
                    .unwrap_or_else(|panic| panic::resume_unwind(panic))
            })
        }
    }

    impl Drop for TestNs {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }

    fn run_ip(args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(args)
            .output()
            .expect("run ip (iproute2)");
        assert!(
            out.status.success(),
            "ip {} failed (these tests need root): {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
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
        let ns = TestNs::new(tag);
        ns.uplink("d0", &["10.77.1.2/24", "fd77:1::2/64"]);
        ns.uplink("d1", &["10.77.2.2/24", "fd77:2::2/64"]);
        ns
    }

    const CONCENTRATOR: &str = "203.0.113.7";

    #[test]
    fn install_sets_up_everything_and_remove_takes_it_away() {
        let ns = two_uplink_ns("all");
        // Someone else's things, which must survive.
        ns.uplink("d9", &["10.77.9.2/24"]);
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
            let mut plumbing =
                Plumbing::install(&two_uplinks(), "mpbt0", ip_addr(CONCENTRATOR)).expect("install");
            let d0 = crate::sys::interface_index("d0").expect("d0");
            let d1 = crate::sys::interface_index("d1").expect("d1");
            assert_eq!(
                plumbing.uplinks(),
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

            plumbing.remove().expect("remove");
        });

        assert_eq!(ns.leftovers(), ["10.77.9.2 id 5 signal"]);
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
            let plumbing = Plumbing::install(&two_uplinks(), "mpbt0", ip_addr("2001:db8::7"))
                .expect("install");
            let addrs: Vec<_> = plumbing.uplinks().iter().map(|u| u.addr).collect();
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
            drop(plumbing);
        });
        assert_eq!(ns.leftovers(), Vec::<String>::new());
        assert_eq!(ns.ip(&["mptcp", "limits", "show"]), before);
    }

    #[test]
    fn a_crashed_run_is_cleaned_up() {
        let ns = two_uplink_ns("crash");
        ns.run(|| {
            let concentrator = ip_addr(CONCENTRATOR);
            let plumbing =
                Plumbing::install(&two_uplinks(), "mpbt0", concentrator).expect("install");
            std::mem::forget(plumbing);
            assert_eq!(ns.leftovers().len(), 15, "{:?}", ns.leftovers());

            // A restart cleans first, so installing again just works.
            let plumbing = Plumbing::install(&two_uplinks(), "mpbt0", concentrator)
                .expect("install over leftovers");
            std::mem::forget(plumbing);

            // Uplink routes 2 + TUN routes 2, uplink rules 2 + capture
            // rules 4 (IPv4) + 3 (IPv6), endpoints 2.
            assert_eq!(cleanup_leftovers().expect("cleanup"), 4 + 9 + 2);
            assert_eq!(ns.leftovers(), Vec::<String>::new());
            assert_eq!(cleanup_leftovers().expect("cleanup again"), 0);
        });
    }

    #[test]
    fn a_missing_interface_is_named_and_nothing_stays() {
        let ns = two_uplink_ns("noif");
        ns.run(|| {
            let mut uplinks = two_uplinks();
            uplinks.push(uplink("sat", "nosuch0"));
            let err = Plumbing::install(&uplinks, "mpbt0", ip_addr(CONCENTRATOR))
                .expect_err("no such interface");
            assert!(
                matches!(&err, UplinkError::NoInterface { uplink, interface }
                    if uplink == "sat" && interface == "nosuch0"),
                "{err:?}"
            );
            let message = err.to_string();
            assert!(
                message.starts_with("uplink sat: interface nosuch0 does not exist"),
                "{message}"
            );
        });
        // dsl and lte were installed before sat failed, and taken away.
        assert_eq!(ns.leftovers(), Vec::<String>::new());
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
            let err = Plumbing::install(&two_uplinks(), "mpbt0", ip_addr(CONCENTRATOR))
                .expect_err("10.77.2.2 is endpoint 5");
            assert!(
                err.to_string().starts_with(
                    "uplink lte: address 10.77.2.2 already is MPTCP endpoint id 5, which is \
                     not mpbond's; remove it (`ip mptcp endpoint delete id 5`)"
                ),
                "{err}"
            );
        });
        // Theirs stays; dsl's endpoint, lte's route and rule are gone.
        assert_eq!(ns.leftovers(), ["10.77.2.2 id 5 subflow"]);
    }

    #[test]
    fn a_missing_tun_is_named() {
        let ns = two_uplink_ns("notun");
        ns.run(|| {
            let err = Plumbing::install(&two_uplinks(), "mpbt9", ip_addr(CONCENTRATOR))
                .expect_err("no such TUN");
            assert!(
                err.to_string().contains("TUN device mpbt9 does not exist"),
                "{err}"
            );

            let nine: Vec<_> = (0..9).map(|i| uplink(&format!("u{i}"), "d0")).collect();
            let err = Plumbing::install(&nine, "mpbt0", ip_addr(CONCENTRATOR))
                .expect_err("more uplinks than endpoint ids");
            assert!(
                matches!(err, UplinkError::TooManyUplinks { count: 9 }),
                "{err:?}"
            );
        });
        assert_eq!(ns.leftovers(), Vec::<String>::new());
    }

    #[test]
    fn an_interface_that_is_down_is_named_and_nothing_stays() {
        let ns = two_uplink_ns("down");
        ns.ip(&["link", "set", "d1", "down"]);
        ns.run(|| {
            // d1's IPv4 address stays, but without a connected route the
            // kernel refuses a default route over it.
            let err = Plumbing::install(&two_uplinks(), "mpbt0", ip_addr(CONCENTRATOR))
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
        });
        assert_eq!(ns.leftovers(), Vec::<String>::new());
    }

    #[test]
    fn a_renumbered_uplink_gets_its_rule_and_route_back() {
        let ns = two_uplink_ns("renum");
        ns.run(|| {
            let mut plumbing =
                Plumbing::install(&two_uplinks(), "mpbt0", ip_addr(CONCENTRATOR)).expect("install");
            assert_eq!(
                plumbing.readdress(0).expect("readdress"),
                AddressChange::Same
            );

            // A DHCP renumbering: the old address goes (and with it the
            // kernel drops the route via the gateway), a new one comes.
            ns.ip(&["addr", "del", "10.77.1.2/24", "dev", "d0"]);
            assert_eq!(
                plumbing.readdress(0).expect("readdress"),
                AddressChange::Gone
            );
            assert_eq!(
                ns.ip_lines(&["-4", "rule", "show"], "from 10.77.1"),
                Vec::<String>::new()
            );
            ns.ip(&["addr", "add", "10.77.1.5/24", "dev", "d0"]);
            let AddressChange::New(uplink) = plumbing.readdress(0).expect("readdress") else {
                panic!("the new address was not seen");
            };
            assert_eq!(
                (uplink.addr, uplink.endpoint.addr),
                (ip_addr("10.77.1.5"), ip_addr("10.77.1.5"))
            );
            assert_eq!(plumbing.uplinks()[0], uplink);
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
                plumbing.readdress(0).expect("readdress"),
                AddressChange::Same
            );
            assert_eq!(
                plumbing.readdress(1).expect("readdress"),
                AddressChange::Same
            );
            // Out of range: nothing to do.
            assert_eq!(
                plumbing.readdress(9).expect("readdress"),
                AddressChange::Same
            );
            plumbing.remove().expect("remove");
        });
        assert_eq!(ns.leftovers(), Vec::<String>::new());
    }

    #[test]
    fn an_uplink_without_a_configured_gateway_follows_the_systems() {
        let ns = two_uplink_ns("gw");
        // DHCP on lte (d1, no gateway in the config) set a default route.
        ns.ip(&["route", "add", "default", "via", "10.77.2.1", "dev", "d1"]);
        ns.run(|| {
            let mut plumbing =
                Plumbing::install(&two_uplinks(), "mpbt0", ip_addr(CONCENTRATOR)).expect("install");
            let table = |t: &str| ns.ip_lines(&["-4", "route", "show", "table", t], "");
            assert_eq!(table("7702"), ["default via 10.77.2.1 dev d1 proto 109"]);
            assert_eq!(plumbing.regateway(1).expect("regateway"), None);

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
                plumbing.regateway(1).expect("regateway"),
                Some((Some(ip_addr("10.77.2.1")), ip_addr("10.77.2.254")))
            );
            assert_eq!(table("7702"), ["default via 10.77.2.254 dev d1 proto 109"]);
            assert_eq!(plumbing.regateway(0).expect("regateway"), None);

            // The system's route goes: the last gateway stays.
            ns.ip(&["route", "del", "default", "dev", "d1"]);
            assert_eq!(plumbing.regateway(1).expect("regateway"), None);
            assert_eq!(table("7702"), ["default via 10.77.2.254 dev d1 proto 109"]);
            plumbing.remove().expect("remove");
        });
        assert_eq!(ns.leftovers(), Vec::<String>::new());
    }

    #[test]
    fn plumbing_can_move_between_threads() {
        fn sendable<T: Send + Sync>() {}
        sendable::<Plumbing>();
    }

    #[test]
    fn an_uplink_without_an_address_joins_when_it_gets_one() {
        let ns = TestNs::new("noaddr");
        ns.uplink("d0", &[]);
        ns.uplink("d1", &["10.77.2.2/24"]);
        ns.run(|| {
            let mut plumbing =
                Plumbing::install(&two_uplinks(), "mpbt0", ip_addr(CONCENTRATOR)).expect("install");
            let addrs: Vec<_> = plumbing.uplinks().iter().map(|u| u.addr).collect();
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
            let AddressChange::New(dsl) = plumbing.readdress(0).expect("readdress") else {
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
            plumbing.remove().expect("remove");

            // No uplink with an IPv6 address: nothing to reach an IPv6
            // concentrator with.
            let err = Plumbing::install(&two_uplinks(), "mpbt0", ip_addr("2001:db8::7"))
                .expect_err("no IPv6 uplink");
            assert!(
                err.to_string().starts_with(
                    "no uplink has an IPv6 address to reach the concentrator 2001:db8::7"
                ),
                "{err}"
            );
        });
        assert_eq!(ns.leftovers(), Vec::<String>::new());
    }
}
