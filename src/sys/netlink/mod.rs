//! Netlink: the kernel's MPTCP path manager ([`MptcpPm`]) and policy
//! routing ([`Rtnl`]: links, addresses, routes, rules).
//!
//! Everything is synchronous: the operations are rare and the kernel
//! answers at once, so async callers run them directly or from
//! `spawn_blocking`. A handle belongs to the network namespace of the
//! thread that opened it, for its whole life.
//!
//! Messages are encoded by the rust-netlink crates (`netlink-packet-route`,
//! `netlink-packet-generic`, `netlink-packet-core`) and sent over a
//! `netlink-sys` socket; only the MPTCP path manager's attributes are
//! written here, because no crate covers its write commands.

mod events;
mod mptcp;
mod mptcp_events;
mod route;
mod socket;

use std::ffi::CStr;
use std::io;
use std::net::IpAddr;

pub use events::{LinkEvent, LinkEvents};
pub use mptcp::{EndpointFlags, MptcpEndpoint, MptcpLimits, MptcpPm};
pub use mptcp_events::{MptcpEvent, MptcpEventKind, MptcpEvents};
pub use route::{
    AddressFamily, FlushReport, LinkStats, Route, Rtnl, Rule, MAIN_TABLE, MPBOND_RTPROT,
};

/// A netlink operation that failed: which one, on what, and the kernel's
/// errno as the source.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// [`MptcpPm::open`].
    #[error(
        "cannot open the kernel's MPTCP path manager (generic netlink family mptcp_pm); \
         is MPTCP built into this kernel?"
    )]
    OpenMptcpPm {
        /// The socket or family lookup error.
        #[source]
        source: io::Error,
    },
    /// [`MptcpPm::limits`].
    #[error("cannot read the MPTCP limits")]
    MptcpLimits {
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// [`MptcpPm::set_limits`].
    #[error(
        "cannot set the MPTCP limits to subflows {} add_addr_accepted {}",
        limits.subflows,
        limits.add_addr_accepted
    )]
    SetMptcpLimits {
        /// What was asked for.
        limits: MptcpLimits,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// [`MptcpPm::endpoints`].
    #[error("cannot list the MPTCP endpoints")]
    MptcpEndpoints {
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// [`MptcpPm::add_endpoint`].
    #[error("cannot add MPTCP endpoint {addr}{}", dev.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    AddEndpoint {
        /// The endpoint's address.
        addr: IpAddr,
        /// Its interface, if it had one.
        dev: Option<String>,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// [`MptcpPm::del_endpoint`].
    #[error("cannot delete MPTCP endpoint id {id}")]
    DelEndpoint {
        /// The endpoint id.
        id: u8,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// [`MptcpPm::set_endpoint_backup`].
    #[error(
        "cannot {} MPTCP endpoint id {id}",
        if *backup { "make a backup of" } else { "take backup off" }
    )]
    SetEndpointBackup {
        /// The endpoint id.
        id: u8,
        /// What was asked for.
        backup: bool,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// [`Rtnl::open`].
    #[error("cannot open a route netlink socket")]
    OpenRtnl {
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// [`Rtnl::link_index`].
    #[error("cannot look up interface {name:?}")]
    LinkIndex {
        /// The interface name asked for.
        name: String,
        /// The kernel's error, or why the name cannot be one.
        #[source]
        source: io::Error,
    },
    /// [`Rtnl::link_stats`].
    #[error("cannot read the counters of interface {dev}")]
    LinkStats {
        /// The interface (name when known, else `#INDEX`).
        dev: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// [`Rtnl::addresses`].
    #[error("cannot list the addresses of interface {dev}")]
    Addresses {
        /// The interface (name when known, else `#INDEX`).
        dev: String,
        /// The kernel's error; `ENODEV` if there is no such interface.
        #[source]
        source: io::Error,
    },
    /// [`Rtnl::default_gateway`].
    #[error("cannot list the routes to find the default gateway of interface {dev}")]
    Routes {
        /// The interface (name when known, else `#INDEX`).
        dev: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// [`Rtnl::add_route`].
    #[error("cannot add route {route}")]
    AddRoute {
        /// The route, in `ip route` syntax.
        route: String,
        /// The kernel's error, or why the route is malformed.
        #[source]
        source: io::Error,
    },
    /// [`Rtnl::del_route`].
    #[error("cannot delete route {route}")]
    DelRoute {
        /// The route, in `ip route` syntax.
        route: String,
        /// The kernel's error; `ESRCH` if there is no such route.
        #[source]
        source: io::Error,
    },
    /// [`Rtnl::add_rule`].
    #[error("cannot add rule {rule}")]
    AddRule {
        /// The rule, in `ip rule` syntax.
        rule: String,
        /// The kernel's error, or why the rule is malformed.
        #[source]
        source: io::Error,
    },
    /// [`Rtnl::del_rule`].
    #[error("cannot delete rule {rule}")]
    DelRule {
        /// The rule, in `ip rule` syntax.
        rule: String,
        /// The kernel's error; `ENOENT` if there is no such rule.
        #[source]
        source: io::Error,
    },
    /// [`Rtnl::flush_owned`].
    #[error("cannot remove leftover routes and rules of protocol {protocol}: {step}")]
    FlushOwned {
        /// The route protocol being flushed.
        protocol: u8,
        /// What it was doing: listing, or deleting which route or rule.
        step: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}

impl NetlinkError {
    /// The kernel's errno (or the OS error) behind this failure, if any.
    pub fn errno(&self) -> Option<i32> {
        self.io().raw_os_error()
    }

    /// A delete or change of something that is not there: an MPTCP
    /// endpoint id, a route, a rule, or the interface whose addresses were
    /// asked for. Lets callers make removal idempotent.
    pub fn is_not_found(&self) -> bool {
        let errno = self.errno();
        match self {
            Self::DelEndpoint { .. } | Self::SetEndpointBackup { .. } | Self::DelRule { .. } => {
                errno == Some(libc::ENOENT)
            }
            // The FIB answers ESRCH for a route it does not have.
            Self::DelRoute { .. } => matches!(errno, Some(libc::ESRCH | libc::ENOENT)),
            Self::Addresses { .. } => errno == Some(libc::ENODEV),
            _ => false,
        }
    }

    /// An add of something that is already there, identical: an MPTCP
    /// endpoint for the same address, the same rule, or (despite
    /// `NLM_F_REPLACE`) the same route. Lets callers make adding idempotent.
    ///
    /// An MPTCP endpoint id held by another address is `EBUSY` and not
    /// counted here: that is a conflict, not a repeat.
    pub fn is_already_exists(&self) -> bool {
        matches!(
            self,
            Self::AddEndpoint { .. } | Self::AddRoute { .. } | Self::AddRule { .. }
        ) && self.errno() == Some(libc::EEXIST)
    }

    fn io(&self) -> &io::Error {
        match self {
            Self::OpenMptcpPm { source }
            | Self::MptcpLimits { source }
            | Self::SetMptcpLimits { source, .. }
            | Self::MptcpEndpoints { source }
            | Self::AddEndpoint { source, .. }
            | Self::DelEndpoint { source, .. }
            | Self::SetEndpointBackup { source, .. }
            | Self::OpenRtnl { source }
            | Self::LinkIndex { source, .. }
            | Self::LinkStats { source, .. }
            | Self::Addresses { source, .. }
            | Self::Routes { source, .. }
            | Self::AddRoute { source, .. }
            | Self::DelRoute { source, .. }
            | Self::AddRule { source, .. }
            | Self::DelRule { source, .. }
            | Self::FlushOwned { source, .. } => source,
        }
    }
}

/// The name of interface `index` in the calling thread's namespace, for
/// messages; `#INDEX` when it has none (any more).
fn interface_name(index: u32) -> String {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buf` is IF_NAMESIZE bytes, as if_indextoname(3) requires; it
    // writes a NUL-terminated name into it or returns NULL.
    let name = unsafe { libc::if_indextoname(index, buf.as_mut_ptr().cast()) };
    if name.is_null() {
        return format!("#{index}");
    }
    match CStr::from_bytes_until_nul(&buf) {
        Ok(name) => name.to_string_lossy().into_owned(),
        Err(_) => format!("#{index}"),
    }
}
