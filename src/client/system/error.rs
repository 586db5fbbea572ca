//! Why the uplinks' system state could not be set up, changed or removed.

use std::io;
use std::net::IpAddr;

use crate::sys::NetlinkError;

/// Why the uplinks could not be set up or removed. Each message names the
/// uplink, interface or address concerned; the kernel's error is the
/// source.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// [`cleanup_leftovers`](super::cleanup_leftovers) failed.
    #[error(
        "cannot remove what an earlier run of mpbond left behind; look with \
         `ip rule`, `ip route show table all proto 109` and `ip mptcp endpoint`"
    )]
    Leftovers {
        /// The netlink failure.
        #[source]
        source: NetlinkError,
    },
    /// Opening the route or MPTCP netlink socket failed.
    #[error("cannot talk to the kernel's routing or MPTCP over netlink; mpbond needs root (CAP_NET_ADMIN)")]
    Netlink {
        /// The netlink failure.
        #[source]
        source: NetlinkError,
    },
    /// The datagram tunnel's NAT table could not be installed.
    #[error("cannot install the datagram tunnel's NAT (nftables)")]
    Nat {
        /// What nft said.
        #[source]
        source: crate::sys::NftError,
    },
    /// A sysctl could not be read or set.
    #[error("cannot set sysctl {key}; mpbond needs root and a kernel with MPTCP")]
    Sysctl {
        /// The sysctl.
        key: &'static str,
        /// The I/O error on `/proc/sys`.
        #[source]
        source: io::Error,
    },
    /// The TUN device is not there.
    #[error(
        "TUN device {tun} does not exist; it must be created and up before the uplinks are set up"
    )]
    NoTun {
        /// Its name.
        tun: String,
    },
    /// An uplink's endpoint could not be marked backup or not (a config
    /// reload changed its `backup`).
    #[error(
        "cannot mark uplink {uplink}'s MPTCP endpoint id {id} as {}; it stays as it was",
        if *backup { "backup" } else { "not backup" }
    )]
    EndpointBackup {
        /// The uplink.
        uplink: String,
        /// The endpoint id.
        id: u8,
        /// What it should have become.
        backup: bool,
        /// The netlink failure.
        #[source]
        source: NetlinkError,
    },
    /// A config reload added an uplink past the last endpoint id.
    #[error(
        "cannot add uplink {uplink}: every one of the {} MPTCP endpoint ids is taken",
        super::ENDPOINT_IDS.len()
    )]
    NoIndex {
        /// The uplink.
        uplink: String,
    },
    /// Looking up the TUN device failed.
    #[error("cannot look up TUN device {tun}")]
    LookupTun {
        /// Its name.
        tun: String,
        /// The netlink failure.
        #[source]
        source: NetlinkError,
    },
    /// More uplinks than [`ENDPOINT_IDS`](super::ENDPOINT_IDS).
    #[error(
        "{count} uplinks are configured; mpbond handles at most 8, remove some [[uplink]] sections"
    )]
    TooManyUplinks {
        /// How many were configured.
        count: usize,
    },
    /// Looking up an uplink's interface failed.
    #[error("uplink {uplink}: cannot look up interface {interface}")]
    LookupInterface {
        /// The uplink's name.
        uplink: String,
        /// The interface configured.
        interface: String,
        /// The netlink failure.
        #[source]
        source: NetlinkError,
    },
    /// Listing an uplink's addresses failed.
    #[error("uplink {uplink}: cannot list the addresses of interface {interface}")]
    Addresses {
        /// The uplink's name.
        uplink: String,
        /// Its interface.
        interface: String,
        /// The netlink failure.
        #[source]
        source: NetlinkError,
    },
    /// No uplink has an address to reach the concentrator with.
    #[error(
        "no uplink has an {family} address to reach the concentrator {concentrator}; give at \
         least one uplink's interface an {family} address, or use a concentrator address of \
         the family the uplinks have"
    )]
    NoAddress {
        /// "IPv4" or "IPv6".
        family: &'static str,
        /// The concentrator's address.
        concentrator: IpAddr,
    },
    /// An uplink's default route could not be added.
    #[error(
        "uplink {uplink}: cannot add its default route in table {table} via interface \
         {interface}; check that the interface is up and that its gateway is on the \
         interface's subnet"
    )]
    UplinkRoute {
        /// The uplink's name.
        uplink: String,
        /// Its interface.
        interface: String,
        /// The table.
        table: u32,
        /// The netlink failure.
        #[source]
        source: NetlinkError,
    },
    /// An uplink's source rule could not be added.
    #[error("uplink {uplink}: cannot add the rule sending traffic from {addr} to table {table}")]
    UplinkRule {
        /// The uplink's name.
        uplink: String,
        /// Its address.
        addr: IpAddr,
        /// The table.
        table: u32,
        /// The netlink failure.
        #[source]
        source: NetlinkError,
    },
    /// An uplink's source rule could not be removed (its address changed,
    /// or its interface went away).
    #[error(
        "uplink {uplink}: cannot remove the rule sending traffic from {addr} to table {table}, \
         so that address's traffic keeps using the table; remove it by hand \
         (`ip rule del from {addr} lookup {table}`)"
    )]
    RemoveUplinkRule {
        /// The uplink's name.
        uplink: String,
        /// The address the rule matches.
        addr: IpAddr,
        /// The table.
        table: u32,
        /// The netlink failure.
        #[source]
        source: NetlinkError,
    },
    /// An uplink's default route could not be removed after its interface
    /// went away.
    #[error(
        "uplink {uplink}: cannot remove its default route in table {table} (interface \
         {interface} is gone); remove it by hand (`ip route flush table {table}`)"
    )]
    RemoveUplinkRoute {
        /// The uplink's name.
        uplink: String,
        /// Its interface.
        interface: String,
        /// The table.
        table: u32,
        /// The netlink failure.
        #[source]
        source: NetlinkError,
    },
    /// An uplink's MPTCP endpoint could not be added.
    #[error("uplink {uplink}: cannot add MPTCP endpoint id {id} for address {addr}")]
    Endpoint {
        /// The uplink's name.
        uplink: String,
        /// Its address.
        addr: IpAddr,
        /// The endpoint id.
        id: u8,
        /// The netlink failure.
        #[source]
        source: NetlinkError,
    },
    /// An uplink's MPTCP endpoint could not be removed (the uplink went
    /// down, or its address changed).
    #[error(
        "uplink {uplink}: cannot remove MPTCP endpoint id {id}, so its connections keep \
         using it; remove it by hand (`ip mptcp endpoint delete id {id}`)"
    )]
    RemoveEndpoint {
        /// The uplink's name.
        uplink: String,
        /// The endpoint id.
        id: u8,
        /// The netlink failure.
        #[source]
        source: NetlinkError,
    },
    /// An uplink's address already is someone else's MPTCP endpoint.
    #[error(
        "uplink {uplink}: address {addr} already is MPTCP endpoint id {id}, which is not \
         mpbond's; remove it (`ip mptcp endpoint delete id {id}`) and start mpbond again"
    )]
    EndpointTaken {
        /// The uplink's name.
        uplink: String,
        /// Its address.
        addr: IpAddr,
        /// The other endpoint's id.
        id: u8,
    },
    /// The MPTCP limits could not be read or raised.
    #[error("cannot raise the MPTCP limits (`ip mptcp limits`) to use every uplink")]
    Limits {
        /// The netlink failure.
        #[source]
        source: NetlinkError,
    },
    /// A route into the TUN could not be added.
    #[error("cannot add the route sending the site's traffic into TUN device {tun}")]
    CaptureRoute {
        /// The TUN device.
        tun: String,
        /// The netlink failure.
        #[source]
        source: NetlinkError,
    },
    /// A rule capturing traffic into the TUN could not be added.
    #[error("cannot add the routing rules that send the site's traffic into the TUN")]
    CaptureRule {
        /// The netlink failure.
        #[source]
        source: NetlinkError,
    },
    /// The thread that owns the system state could not be started.
    #[error(
        "cannot start the thread that owns the uplinks' routes, rules and MPTCP endpoints; \
         check the process's thread limit (`ulimit -u`)"
    )]
    Spawn {
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// The owner of the system state is no longer there to ask: it was shut
    /// down, or it panicked (a bug; removing what it installed on the way).
    #[error(
        "the owner of the uplinks' routes, rules and MPTCP endpoints has stopped; \
         restart mpbond (if it was not shutting down, this is a bug: see the log)"
    )]
    OwnerGone,
    /// Something installed could not be removed.
    #[error(
        "cannot remove what mpbond installed for its uplinks; the next start of mpbond \
         removes the leftovers"
    )]
    Remove {
        /// The first netlink failure.
        #[source]
        source: NetlinkError,
    },
}
