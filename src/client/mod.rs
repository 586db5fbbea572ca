//! The client role: captures the site's traffic on a TUN device and carries
//! each TCP flow to the concentrator as one kernel MPTCP connection.
//!
//! [`redirect`] is the pure NAT that hands captured TCP flows to the
//! kernel's own TCP stack; [`uplinks`] installs the routing, rules and
//! MPTCP endpoints that make every uplink carry the tunnel.

pub mod redirect;
pub mod uplinks;
