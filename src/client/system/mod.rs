//! The client's Linux plumbing for its uplinks: per-uplink source routing,
//! one MPTCP endpoint per uplink, the path manager's limits, and the rules
//! that send the site's (and the client's own) traffic into the TUN while
//! the tunnel's subflows leave through the uplinks.
//!
//! Everything lives in the network namespace of the calling thread.
//! [`Plumbing::install`] owns what it adds and [`Plumbing`]'s drop removes
//! it; routes and rules carry protocol [`MPBOND_RTPROT`] and endpoints take
//! ids from [`ENDPOINT_IDS`], so that [`cleanup_leftovers`] finds what a
//! crashed run left behind. What an operator sees, for uplink `i` (config
//! order) and a concentrator at `C`:
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

mod apply;
mod error;
mod plan;

pub use apply::{cleanup_leftovers, Plumbing};
pub use error::UplinkError;
pub use plan::{AddressChange, Uplink, ENDPOINT_IDS, TUNNEL_FWMARK};
