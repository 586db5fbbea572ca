//! The client's NAT for the datagram tunnel: every packet that is not TCP
//! and enters the TUN takes the client's tunnel address as its source, so
//! the concentrator knows nothing of the site's LAN (private ranges that
//! may clash between sites) and replies come back to one address per
//! client. The kernel's conntrack maps the replies back to the LAN host or
//! the local program.
//!
//! TCP is left alone: the redirect terminates it on a local listener and
//! needs the LAN host's own address and port.
//!
//! The table (`inet mpbond_client`):
//!
//! ```text
//! chain postrouting  nat, srcnat:  into the TUN, not TCP, not already from
//!                                  the tunnel address: snat to it
//! ```

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The nftables table the client owns (family `inet`).
pub const NFT_TABLE: &str = "mpbond_client";

/// The body of table `inet mpbond_client` for TUN `tun` and the client's
/// tunnel addresses.
pub fn ruleset(tun: &str, v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> String {
    let mut body = String::from(
        "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n",
    );
    if let Some(v4) = v4 {
        let _ = writeln!(
            body,
            "    oifname \"{tun}\" meta l4proto != tcp ip saddr != {v4} snat ip to {v4}"
        );
    }
    if let Some(v6) = v6 {
        let _ = writeln!(
            body,
            "    oifname \"{tun}\" meta l4proto != tcp ip6 saddr != {v6} snat ip6 to {v6}"
        );
    }
    body.push_str("  }\n");
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_non_tcp_into_the_tun_is_translated() {
        let text = ruleset(
            "mpb0",
            Some(Ipv4Addr::new(100, 64, 77, 2)),
            Some("fd00:6d70:62:77::2".parse().expect("address")),
        );
        assert!(text.contains(
            "oifname \"mpb0\" meta l4proto != tcp ip saddr != 100.64.77.2 snat ip to 100.64.77.2"
        ));
        assert!(text.contains("snat ip6 to fd00:6d70:62:77::2"));
        assert!(!ruleset("mpb0", Some(Ipv4Addr::LOCALHOST), None).contains("ip6"));
    }
}
