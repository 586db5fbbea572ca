//! The application of the plan: [`Plumbing`] installs what
//! [`super::plan`] describes over netlink, follows address and gateway
//! changes, and removes it all again; [`cleanup_leftovers`] removes what a
//! crashed run left behind.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tracing::{debug, info, warn};

use super::error::UplinkError;
use super::plan::{
    capture_routes, capture_rules, default_dst, family_name, pick_address, raised_limits, relink,
    uplink_endpoint, uplink_route, uplink_rule, uplink_table, AddressChange, LinkChange, Relink,
    Uplink, ENDPOINT_IDS, NO_INTERFACE,
};
use crate::chain::Chain;
use crate::config::client::UplinkConfig;
use crate::sys::{
    read_sysctl, AddressFamily, MptcpEndpoint, MptcpLimits, MptcpPm, NetlinkError, NftTable, Route,
    Rtnl, Rule, SysctlGuard, MPBOND_RTPROT,
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
    /// A config reload removed the uplink: nothing is installed for it,
    /// and it never joins again (its index waits for an uplink added by a
    /// later reload).
    retired: bool,
}

/// Everything installed for the uplinks. Dropping it removes it all (in
/// reverse order, logging what it cannot remove) and restores the sysctls;
/// drop it in the network namespace it was installed in (the process's, in
/// normal use), since the sysctls are restored through `/proc/sys` of the
/// dropping thread. The owner's thread installs, changes and drops it, and
/// nothing else touches it.
pub(super) struct Plumbing {
    rtnl: Rtnl,
    pm: MptcpPm,
    /// The uplinks, by index (config order at start).
    slots: Vec<Slot>,
    /// The concentrator's family: the uplinks' addresses, routes and
    /// endpoints are of it.
    family: AddressFamily,
    /// In the order added; undone from the back.
    installed: Vec<Installed>,
    /// Dropped after `installed` is undone (field order).
    sysctls: Vec<SysctlGuard>,
    /// The datagram tunnel's NAT, if it runs.
    nat: Option<NftTable>,
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
    /// device name (already created and up); `pm` is the one handle on the
    /// path manager, kept for the endpoints' changes and removal. On error,
    /// whatever was installed is removed again before returning.
    pub(super) fn install(
        uplinks: &[UplinkConfig],
        tun: &str,
        concentrator: IpAddr,
        pm: MptcpPm,
        nat: Option<(Ipv4Addr, Option<Ipv6Addr>)>,
    ) -> Result<Plumbing, UplinkError> {
        let rtnl = Rtnl::open().map_err(|source| UplinkError::Netlink { source })?;
        let removed = remove_leftovers(&rtnl, &pm)?;
        if removed > 0 {
            info!(removed, "removed what an earlier run left behind");
        }
        if uplinks.len() > ENDPOINT_IDS.len() {
            return Err(UplinkError::TooManyUplinks {
                count: uplinks.len(),
            });
        }
        let family = AddressFamily::of(concentrator);
        let mut plumbing = Plumbing {
            rtnl,
            pm,
            family,
            slots: Vec::new(),
            installed: Vec::new(),
            sysctls: Vec::new(),
            nat: None,
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
        // Checked above: every uplink has an id.
        for ((i, config), id) in uplinks.iter().enumerate().zip(ENDPOINT_IDS) {
            plumbing.install_uplink(i, id, config, family)?;
        }
        // An uplink whose interface is missing may bring an address when it
        // appears; uplinks that are all there without one cannot.
        if plumbing
            .slots
            .iter()
            .all(|slot| slot.uplink.present() && slot.current.is_none())
        {
            return Err(UplinkError::NoAddress {
                family: family_name(family),
                concentrator,
            });
        }
        plumbing.raise_limits()?;
        plumbing.install_capture(tun, tun_index, concentrator, nat.is_some())?;
        if let Some((v4, v6)) = nat {
            let body = super::nat::ruleset(tun, Some(v4), v6);
            plumbing.nat = Some(
                NftTable::install("inet", super::nat::NFT_TABLE, &body)
                    .map_err(|source| UplinkError::Nat { source })?,
            );
        }
        info!(
            uplinks = plumbing.slots.len(),
            waiting = plumbing.slots.iter().filter(|s| !s.uplink.present()).count(),
            %concentrator,
            tun,
            "uplinks set up; the site's traffic goes into the TUN"
        );
        Ok(plumbing)
    }

    /// The uplinks, in config order; one without an address yet has the
    /// unspecified address.
    pub(super) fn uplinks(&self) -> Vec<Uplink> {
        self.slots.iter().map(|slot| slot.uplink.clone()).collect()
    }

    /// Removes everything now (same as drop, but returns the first error;
    /// it still tries to remove the rest).
    pub(super) fn remove(&mut self) -> Result<(), UplinkError> {
        self.undo()
    }

    /// Reads again the addresses of uplink `slot` (its position in
    /// [`uplinks`](Self::uplinks)) after its interface had an address
    /// event. When the address its subflows should use changed (a DHCP
    /// renumbering, an address removed), its source rule moves to the new
    /// one, and its route is put back (the kernel drops a route with the
    /// last address of its gateway's subnet).
    pub(super) fn readdress(&mut self, slot: usize) -> Result<AddressChange, UplinkError> {
        let Some(Slot {
            uplink,
            current: had,
            route,
            ..
        }) = self.live(slot)
        else {
            return Ok(AddressChange::Same);
        };
        // Index 0 would list every interface's addresses.
        if !uplink.present() {
            return Ok(AddressChange::Same);
        }
        let (had, route) = (*had, route.clone());
        let (name, interface, i) = (uplink.name.clone(), uplink.interface.clone(), uplink.index);
        let addresses = match self.rtnl.addresses(uplink.ifindex) {
            Ok(addresses) => addresses,
            // The interface is being removed: relink takes the uplink away.
            Err(err) if err.is_not_found() => return Ok(AddressChange::Same),
            Err(source) => {
                return Err(UplinkError::Addresses {
                    uplink: name,
                    interface,
                    source,
                })
            }
        };
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
                    return Err(UplinkError::RemoveUplinkRule {
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

    /// Adds (`on`) or removes uplink `slot`'s MPTCP endpoint, as it is now
    /// (after [`readdress`](Self::readdress)), and remembers it for the
    /// removal at the end. Idempotent: an endpoint already there (or
    /// already gone) is not an error. Nothing to do for an uplink without
    /// an address (it has no endpoint) or past the last one.
    pub(super) fn set_endpoint(&mut self, slot: usize, on: bool) -> Result<(), UplinkError> {
        let Some(Slot {
            uplink, current, ..
        }) = self.live(slot)
        else {
            return Ok(());
        };
        let endpoint = &uplink.endpoint;
        let id = endpoint.id;
        if on {
            if current.is_none() {
                return Ok(());
            }
            match self.pm.add_endpoint(endpoint) {
                Ok(()) => debug!(id, addr = %endpoint.addr, "MPTCP endpoint added"),
                // The kernel refuses an endpoint that is already there with
                // EEXIST or (its id taken) EBUSY: look whether it is ours.
                Err(_) if self.has_endpoint(endpoint) => debug!(id, "endpoint already there"),
                Err(source) => {
                    return Err(UplinkError::Endpoint {
                        uplink: uplink.name.clone(),
                        addr: endpoint.addr,
                        id,
                        source,
                    })
                }
            }
            if !self
                .installed
                .iter()
                .any(|item| matches!(item, Installed::Endpoint(i) if *i == id))
            {
                self.installed.push(Installed::Endpoint(id));
            }
        } else {
            match self.pm.del_endpoint(id) {
                Ok(()) => debug!(id, "MPTCP endpoint removed"),
                Err(err) if err.is_not_found() => debug!(id, "endpoint already gone"),
                Err(source) => {
                    return Err(UplinkError::RemoveEndpoint {
                        uplink: uplink.name.clone(),
                        id,
                        source,
                    })
                }
            }
            self.installed
                .retain(|item| !matches!(item, Installed::Endpoint(i) if *i == id));
        }
        Ok(())
    }

    /// The kernel has `endpoint` (its id at its address); a failure to
    /// list the endpoints counts as no.
    fn has_endpoint(&self, endpoint: &MptcpEndpoint) -> bool {
        self.pm.endpoints().is_ok_and(|endpoints| {
            endpoints
                .iter()
                .any(|ep| ep.id == endpoint.id && ep.addr == endpoint.addr)
        })
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
    /// an uplink without an address of `family`, and one whose interface
    /// does not exist yet (it joins when the interface appears, see
    /// [`relink`](Self::relink)).
    fn install_uplink(
        &mut self,
        i: usize,
        id: u8,
        config: &UplinkConfig,
        family: AddressFamily,
    ) -> Result<(), UplinkError> {
        let ifindex = self.lookup(&config.name, &config.interface)?;
        let slot = self.slots.len();
        self.slots.push(new_slot(i, id, config, family));
        let Some(ifindex) = ifindex else {
            warn_waiting(config);
            return Ok(());
        };
        self.attach(slot, ifindex);
        self.readdress(slot)?;
        let Slot {
            uplink, current, ..
        } = &self.slots[slot];
        let (addr, endpoint) = (*current, uplink.endpoint.clone());
        if addr.is_some() {
            self.add_endpoint(&endpoint, &config.name)?;
        } else {
            warn!(
                uplink = %config.name,
                interface = %config.interface,
                "uplink has no {} address yet; it is used once it gets one",
                family_name(family)
            );
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
        Ok(())
    }

    /// Slot `slot` if it holds an uplink (not one a reload removed).
    fn live(&self, slot: usize) -> Option<&Slot> {
        self.slots.get(slot).filter(|s| !s.retired)
    }

    /// A config reload removed uplink `slot`: it leaves as an unplugged
    /// one does (its endpoint, source rule and route go; the kernel closes
    /// its subflows and tells the concentrator), and it stays out, whatever
    /// its interface does. Tries all three; returns the first failure (the
    /// uplink is out all the same). Nothing to do for a slot already
    /// vacant or past the last.
    pub(super) fn retire(&mut self, slot: usize) -> Result<(), UplinkError> {
        let Some(Slot { uplink, .. }) = self.live(slot) else {
            return Ok(());
        };
        info!(
            uplink = %uplink.name,
            interface = %uplink.interface,
            "uplink removed from the config: its route, rule and MPTCP endpoint are removed"
        );
        let left = self.leave(slot);
        self.slots[slot].retired = true;
        left
    }

    /// A config reload added uplink `config` at `slot` (vacant, or one
    /// past the last): it is set up as a hot-plugged one is (route and
    /// source rule once its interface is there with an address; its
    /// endpoint with the next [`set_endpoint`](Self::set_endpoint), when
    /// health says the line works), and the MPTCP limits are raised for
    /// it. Returns the uplink as it is now.
    pub(super) fn join(
        &mut self,
        slot: usize,
        config: &UplinkConfig,
    ) -> Result<Uplink, UplinkError> {
        let no_index = || UplinkError::NoIndex {
            uplink: config.name.clone(),
        };
        let id = ENDPOINT_IDS.clone().nth(slot).ok_or_else(no_index)?;
        let fresh = new_slot(slot, id, config, self.family);
        let len = self.slots.len();
        match self.slots.get_mut(slot) {
            Some(vacant) if vacant.retired => *vacant = fresh,
            None if slot == len => self.slots.push(fresh),
            // Taken, or a gap: the caller's numbering is not ours.
            _ => return Err(no_index()),
        }
        let ready = self
            .raise_limits()
            .and_then(|()| self.lookup(&config.name, &config.interface));
        let ifindex = match ready {
            Ok(ifindex) => ifindex,
            Err(e) => {
                // Nothing was installed for it yet: the index is vacant again.
                self.slots[slot].retired = true;
                return Err(e);
            }
        };
        info!(
            uplink = %config.name,
            interface = %config.interface,
            table = uplink_table(slot),
            endpoint = id,
            "uplink added to the config"
        );
        if ifindex.is_none() {
            warn_waiting(config);
        }
        if let Some(ifindex) = ifindex {
            self.attach(slot, ifindex);
            if let Err(e) = self.readdress(slot) {
                // As for a hot-plugged one: its next address or carrier
                // change tries again.
                warn!(
                    uplink = %config.name,
                    interface = %config.interface,
                    error = %Chain(&e),
                    "the uplink's route or rule cannot be installed yet"
                );
            }
        }
        Ok(self.slots[slot].uplink.clone())
    }

    /// A config reload changed uplink `slot`'s `backup`: its endpoint, if
    /// installed, is marked at once (the kernel tells the concentrator of
    /// running connections, MP_PRIO), and as it is added back later.
    pub(super) fn set_backup(&mut self, slot: usize, backup: bool) -> Result<(), UplinkError> {
        let Some(Slot { uplink, .. }) = self.live(slot) else {
            return Ok(());
        };
        let (name, id) = (uplink.name.clone(), uplink.endpoint.id);
        let installed = self
            .installed
            .iter()
            .any(|item| matches!(item, Installed::Endpoint(i) if *i == id));
        if installed {
            self.pm.set_endpoint_backup(id, backup).map_err(|source| {
                UplinkError::EndpointBackup {
                    uplink: name,
                    id,
                    backup,
                    source,
                }
            })?;
        }
        let uplink = &mut self.slots[slot].uplink;
        uplink.backup = backup;
        uplink.endpoint.flags.backup = backup;
        Ok(())
    }

    /// The index of uplink `uplink`'s `interface`; `None` if there is none
    /// of that name.
    fn lookup(&self, uplink: &str, interface: &str) -> Result<Option<u32>, UplinkError> {
        self.rtnl
            .link_index(interface)
            .map_err(|source| UplinkError::LookupInterface {
                uplink: uplink.to_owned(),
                interface: interface.to_owned(),
                source,
            })
    }

    /// Uplink `slot`, which has no interface, takes interface `ifindex`:
    /// its route and endpoint point there (and its route, without a
    /// gateway in the config, follows the system's default route out of
    /// it). Its address, route and rule come with
    /// [`readdress`](Self::readdress).
    fn attach(&mut self, slot: usize, ifindex: u32) {
        let Slot {
            uplink,
            pinned,
            route,
            ..
        } = &self.slots[slot];
        let gateway = match pinned {
            true => route.gateway,
            false => self.system_gateway(AddressFamily::of(uplink.addr), ifindex, &uplink.name),
        };
        let Slot { uplink, route, .. } = &mut self.slots[slot];
        uplink.ifindex = ifindex;
        uplink.endpoint.ifindex = Some(ifindex);
        route.ifindex = Some(ifindex);
        route.gateway = gateway;
    }

    /// Uplink `slot`'s interface went away: removes its endpoint, source
    /// rule and route (each already gone is fine: the kernel removes a
    /// deleted device's routes itself, and health may have removed the
    /// endpoint when the carrier went), and forgets the interface. Tries
    /// all three; returns the first failure.
    fn leave(&mut self, slot: usize) -> Result<(), UplinkError> {
        let Slot {
            uplink,
            current,
            route,
            ..
        } = &self.slots[slot];
        let (name, interface, i, id) = (
            uplink.name.clone(),
            uplink.interface.clone(),
            uplink.index,
            uplink.endpoint.id,
        );
        let family = AddressFamily::of(uplink.addr);
        let (current, route) = (*current, route.clone());
        let mut first = None;
        match self.pm.del_endpoint(id) {
            Ok(()) => debug!(id, "MPTCP endpoint removed"),
            Err(err) if err.is_not_found() => debug!(id, "endpoint already gone"),
            Err(source) => {
                first.get_or_insert(UplinkError::RemoveEndpoint {
                    uplink: name.clone(),
                    id,
                    source,
                });
            }
        }
        self.installed
            .retain(|item| !matches!(item, Installed::Endpoint(e) if *e == id));
        if let Some(addr) = current {
            let rule = uplink_rule(i, addr);
            match self.rtnl.del_rule(&rule) {
                Ok(()) => debug!(%rule, "rule removed"),
                Err(err) if err.is_not_found() => {}
                Err(source) => {
                    first.get_or_insert(UplinkError::RemoveUplinkRule {
                        uplink: name.clone(),
                        addr,
                        table: uplink_table(i),
                        source,
                    });
                }
            }
            self.installed
                .retain(|item| !matches!(item, Installed::Rule(r) if *r == rule));
        }
        let table = uplink_table(i);
        let installed = self
            .installed
            .iter()
            .any(|item| matches!(item, Installed::Route(r) if r.table == table));
        if installed {
            // With its device gone the kernel has removed it (ESRCH), or
            // refuses to resolve its output interface (ENODEV).
            match self.rtnl.del_route(&route) {
                Ok(()) => debug!(%route, "route removed"),
                Err(err) if err.is_not_found() || err.errno() == Some(libc::ENODEV) => {
                    debug!(%route, "route already gone with its interface")
                }
                Err(source) => {
                    first.get_or_insert(UplinkError::RemoveUplinkRoute {
                        uplink: name.clone(),
                        interface: interface.clone(),
                        table,
                        source,
                    });
                }
            }
            self.installed
                .retain(|item| !matches!(item, Installed::Route(r) if r.table == table));
        }
        let unspecified = default_dst(family).0;
        let Slot {
            uplink,
            current,
            route,
            ..
        } = &mut self.slots[slot];
        *current = None;
        uplink.ifindex = NO_INTERFACE;
        uplink.addr = unspecified;
        uplink.endpoint.addr = unspecified;
        uplink.endpoint.ifindex = Some(NO_INTERFACE);
        route.ifindex = Some(NO_INTERFACE);
        first.map_or(Ok(()), Err)
    }

    /// Looks uplink `slot`'s interface up by name again after a link event
    /// (it may have appeared, gone, or come back with a new index) and
    /// follows: installs for a new interface, removes what was installed
    /// for one that went. Logs each join and leave once. Fails only when
    /// the name cannot be looked up (then nothing changed).
    pub(super) fn relink(&mut self, slot: usize) -> Result<LinkChange, UplinkError> {
        let Some(Slot { uplink, .. }) = self.live(slot) else {
            return Ok(LinkChange::Same);
        };
        let (name, interface) = (uplink.name.clone(), uplink.interface.clone());
        let known = uplink.present().then_some(uplink.ifindex);
        let found = self.lookup(&name, &interface)?;
        let Relink { leave, join } = relink(known, found);
        if leave {
            info!(
                uplink = %name,
                %interface,
                "uplink leaves: its interface is gone (unplugged?); its route, rule and MPTCP \
                 endpoint are removed, and it rejoins when the interface appears again"
            );
            // The uplink is gone all the same; the next start removes what
            // stayed.
            if let Err(e) = self.leave(slot) {
                warn!(uplink = %name, error = %Chain(&e), "cannot remove all that was installed for the uplink");
            }
        }
        let Some(ifindex) = join else {
            return Ok(if leave {
                LinkChange::Gone
            } else {
                LinkChange::Same
            });
        };
        self.attach(slot, ifindex);
        if let Err(e) = self.readdress(slot) {
            // Not for long: its next address or carrier change tries again.
            warn!(
                uplink = %name,
                %interface,
                error = %Chain(&e),
                "the uplink's interface appeared, but its route or rule cannot be installed yet"
            );
        }
        let joined = self.slots[slot].uplink.clone();
        info!(
            uplink = %name,
            %interface,
            ifindex,
            addr = ?self.slots[slot].current,
            "uplink joins: its interface appeared; its MPTCP endpoint follows once the line works"
        );
        Ok(LinkChange::Joined(joined))
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
    pub(super) fn regateway(
        &mut self,
        slot: usize,
    ) -> Result<Option<(Option<IpAddr>, IpAddr)>, UplinkError> {
        let Some(Slot {
            uplink,
            current,
            pinned: false,
            route,
            retired: false,
        }) = self.slots.get(slot).filter(|s| s.uplink.present())
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

    /// Raises the MPTCP limits for the uplinks there are; the limits from
    /// before the first raise come back at the end.
    fn raise_limits(&mut self) -> Result<(), UplinkError> {
        let limits = |source| UplinkError::Limits { source };
        let current = self.pm.limits().map_err(limits)?;
        let uplinks = self.slots.iter().filter(|s| !s.retired).count();
        let wanted = raised_limits(current, uplinks);
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
        if !self
            .installed
            .iter()
            .any(|item| matches!(item, Installed::Limits(_)))
        {
            self.installed.push(Installed::Limits(current));
        }
        Ok(())
    }

    /// The capture: routes first, the rule that diverts everything last, so
    /// that traffic never meets a half-built setup.
    fn install_capture(
        &mut self,
        tun: &str,
        tun_index: u32,
        concentrator: IpAddr,
        all: bool,
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
        for rule in capture_rules(concentrator, all) {
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

/// Uplink `i`'s slot for `config`, with endpoint `id`, of the
/// concentrator's `family`: nothing installed yet, no interface attached.
fn new_slot(i: usize, id: u8, config: &UplinkConfig, family: AddressFamily) -> Slot {
    let pinned = match family {
        AddressFamily::V4 => config.gateway.map(IpAddr::V4),
        AddressFamily::V6 => config.gateway6.map(IpAddr::V6),
    };
    let endpoint = uplink_endpoint(id, None, family, NO_INTERFACE, config.backup);
    Slot {
        uplink: Uplink {
            index: i,
            name: config.name.clone(),
            interface: config.interface.clone(),
            ifindex: NO_INTERFACE,
            addr: endpoint.addr,
            backup: config.backup,
            endpoint,
        },
        current: None,
        pinned: pinned.is_some(),
        route: uplink_route(i, family, pinned, NO_INTERFACE),
        retired: false,
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
///
/// It opens netlink handles of its own (in the calling thread's network
/// namespace); [`start`](super::start) cleans through the owner's.
pub fn cleanup_leftovers() -> Result<usize, UplinkError> {
    let rtnl = Rtnl::open().map_err(|source| UplinkError::Netlink { source })?;
    let pm = MptcpPm::open().map_err(|source| UplinkError::Netlink { source })?;
    remove_leftovers(&rtnl, &pm)
}

/// [`cleanup_leftovers`] through the given handles.
fn remove_leftovers(rtnl: &Rtnl, pm: &MptcpPm) -> Result<usize, UplinkError> {
    let leftovers = |source| UplinkError::Leftovers { source };
    let report = rtnl.flush_owned(MPBOND_RTPROT).map_err(leftovers)?;
    // Without nft installed there can be no leftover table either.
    let nat = match NftTable::remove_leftover("inet", super::nat::NFT_TABLE) {
        Ok(removed) => usize::from(removed),
        Err(e) => {
            debug!(error = %e, "cannot look for a leftover NAT table");
            0
        }
    };
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
    Ok(report.routes + report.rules + endpoints + nat)
}

/// Says that uplink `config` waits for its interface to appear.
fn warn_waiting(config: &UplinkConfig) {
    warn!(
        uplink = %config.name,
        interface = %config.interface,
        "uplink waits for its interface, which does not exist yet; it joins when \
         the interface appears (check `interface` in its [[uplink]] section if it \
         never does)"
    );
}
