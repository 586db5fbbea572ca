//! The client's owner of system state: per-uplink source routing, one
//! MPTCP endpoint per uplink, the path manager's limits, the sysctls, and
//! the rules that send the site's (and the client's own) traffic into the
//! TUN while the tunnel's subflows leave through the uplinks.
//!
//! - `plan`: what a config and the uplinks' current addresses need
//!   (tables, rule priorities, endpoint ids, routes, rules, limits); pure.
//! - `apply`: `Plumbing`, which puts the plan into the kernel over
//!   netlink, follows address and gateway changes, and takes it all away;
//!   [`cleanup_leftovers`].
//! - `owner`: the one owner of all that, reached through a [`Handle`].
//! - `error`: [`UplinkError`], one variant per operation that failed.
//!
//! # Why an actor
//!
//! Several parts of the client change the same kernel state: start-up
//! installs it, uplink health removes and adds endpoints as lines die and
//! come back and moves rules when addresses change, shutdown removes it.
//! If each held its own netlink handles (or shared a lock and a second path
//! manager handle beside it), they could disagree about what is installed:
//! an endpoint health added back would be unknown to the removal at exit
//! and stay behind. So one thread, started by [`start`], exclusively holds
//! the `Plumbing` and the one path manager handle, and everyone else sends
//! it commands through a cloneable [`Handle`] (mullvad's `talpid-routing`
//! route manager is the model). It serves them one at a time, so its record
//! of what is installed is always the kernel's, and it removes everything
//! on every exit path: [`Handle::shutdown`], the last handle dropped (the
//! client stopping on an error, or a task panicking), or the owner's own
//! panic (the `Plumbing` is dropped while unwinding).
//!
//! Everything lives in the network namespace of the thread that calls
//! [`start`] (the owner's thread inherits it). Routes and rules carry
//! protocol [`MPBOND_RTPROT`](crate::sys::MPBOND_RTPROT) and endpoints take
//! ids from [`ENDPOINT_IDS`], so that [`cleanup_leftovers`] (run by every
//! start) finds what a crashed run left behind. What an operator sees, for
//! uplink `i` (config order) and a concentrator at `C`:
//!
//! ```text
//! ip rule       7700+i  from ADDR_i lookup 7701+i          proto 109
//!               7780    from all fwmark 0x6d70 lookup main proto 109
//!               7785    from all to C lookup main          proto 109
//!               7790    from all lookup main suppress_prefixlength 0 proto 109
//!               7791    from all lookup 7799               proto 109
//! ip route      default [via GW] dev IF_i table 7701+i     proto 109
//!               default dev TUN table 7799                 proto 109
//! ip mptcp endpoint     ADDR_i id 96+i subflow [backup] dev IF_i
//! ```
//!
//! Rules 7780-7791 exist for IPv4 and IPv6 (7785 only for C's family): the
//! default route of either family leads into the TUN, while connected and
//! local routes still win. The per-uplink rules and endpoints exist only
//! for C's family.
//!
//! An uplink's interface is known by its name: one that does not exist at
//! start waits for it (its index is [`NO_INTERFACE`]), and one that goes
//! away (a USB modem unplugged) loses its route, rule and endpoint; when
//! an interface of that name appears, with whatever index, the uplink
//! joins with its config numbering ([`Handle::relink`]).

mod apply;
mod error;
pub mod nat;
mod owner;
mod plan;

pub use apply::cleanup_leftovers;
pub use error::UplinkError;
pub use owner::{start, Handle};
pub use plan::{AddressChange, LinkChange, Uplink, ENDPOINT_IDS, NO_INTERFACE, TUNNEL_FWMARK};
