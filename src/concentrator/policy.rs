//! Which destinations clients may reach: pure prefix lists.
//!
//! A client holding a valid key could otherwise use the concentrator to
//! reach the concentrator host's own services, its private networks or the
//! cloud provider's metadata service. So destinations in [`DEFAULT_DENY`]
//! are refused unless the config allows them, and the config can deny more.
//!
//! Order: port 0 is always refused; then a destination inside an `allow`
//! prefix is accepted; then one inside a deny prefix (default or configured)
//! is refused; everything else is accepted. An IPv4-mapped IPv6 address
//! (`::ffff:a.b.c.d`) is checked as the IPv4 address it maps, since
//! connecting to it reaches that IPv4 host.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> IpNet {
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len))
}

const fn v6(segments: [u16; 8], len: u8) -> IpNet {
    let [a, b, c, d, e, f, g, h] = segments;
    IpNet::V6(Ipv6Net::new_assert(
        Ipv6Addr::new(a, b, c, d, e, f, g, h),
        len,
    ))
}

/// Prefixes denied unless allowed, with what each one is.
pub const DEFAULT_DENY: &[(IpNet, &str)] = &[
    (v4(0, 0, 0, 0, 8), "\"this network\", not a destination"),
    (v4(10, 0, 0, 0, 8), "private network"),
    (v4(100, 64, 0, 0, 10), "carrier-grade NAT shared space"),
    (
        v4(127, 0, 0, 0, 8),
        "loopback: the concentrator host itself",
    ),
    (
        v4(169, 254, 0, 0, 16),
        "link-local, including cloud metadata at 169.254.169.254",
    ),
    (v4(172, 16, 0, 0, 12), "private network"),
    (v4(192, 168, 0, 0, 16), "private network"),
    (v4(224, 0, 0, 0, 4), "multicast"),
    (v4(240, 0, 0, 0, 4), "reserved, including broadcast"),
    (v6([0; 8], 128), "unspecified address"),
    (
        v6([0, 0, 0, 0, 0, 0, 0, 1], 128),
        "loopback: the concentrator host itself",
    ),
    (
        v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        "unique local, including cloud metadata at fd00:ec2::254",
    ),
    (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link-local"),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

/// The destination policy: built-in and configured deny lists, and the
/// allow list that overrides them.
#[derive(Debug, Clone)]
pub struct Policy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

/// Why a destination is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// Port 0 is never a service.
    PortZero,
    /// Inside a [`DEFAULT_DENY`] prefix.
    Default {
        /// The prefix.
        prefix: IpNet,
        /// What it is.
        what: &'static str,
    },
    /// Inside a prefix of the config's `deny` list.
    Configured {
        /// The prefix.
        prefix: IpNet,
    },
}

/// A destination the policy refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{destination}: {reason}")]
pub struct Denied {
    /// The destination asked for.
    pub destination: SocketAddr,
    /// Why it is refused.
    pub reason: DenyReason,
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PortZero => f.write_str("port 0 is not a service"),
            Self::Default { prefix, what } => write!(
                f,
                "inside {prefix} ({what}), denied by default; add it to [policy] allow \
                 if clients should reach it"
            ),
            Self::Configured { prefix } => write!(f, "inside {prefix}, denied by [policy] deny"),
        }
    }
}

impl Policy {
    /// A policy denying [`DEFAULT_DENY`] and `deny`, except `allow`.
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        Self { allow, deny }
    }

    /// Whether clients may connect to `destination`.
    pub fn check(&self, destination: SocketAddr) -> Result<(), Denied> {
        let denied = |reason| {
            Err(Denied {
                destination,
                reason,
            })
        };
        if destination.port() == 0 {
            return denied(DenyReason::PortZero);
        }
        self.check_host(destination)
    }

    /// Whether datagrams may go to `destination`'s address (its port is
    /// not looked at: ICMP and other protocols have none).
    pub fn check_host(&self, destination: SocketAddr) -> Result<(), Denied> {
        let denied = |reason| {
            Err(Denied {
                destination,
                reason,
            })
        };
        let ip = canonical(destination.ip());
        if self.allow.iter().any(|prefix| prefix.contains(&ip)) {
            return Ok(());
        }
        if let Some(&(prefix, what)) = DEFAULT_DENY.iter().find(|(p, _)| p.contains(&ip)) {
            return denied(DenyReason::Default { prefix, what });
        }
        if let Some(&prefix) = self.deny.iter().find(|p| p.contains(&ip)) {
            return denied(DenyReason::Configured { prefix });
        }
        Ok(())
    }
}

impl Default for Policy {
    /// [`DEFAULT_DENY`] alone.
    fn default() -> Self {
        Self::new(Vec::new(), Vec::new())
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it reaches.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("socket address")
    }

    fn prefix(text: &str) -> IpNet {
        text.parse().expect("prefix")
    }

    fn default_prefix(destination: &str) -> Option<IpNet> {
        match Policy::default().check(addr(destination)) {
            Err(Denied {
                reason: DenyReason::Default { prefix, .. },
                ..
            }) => Some(prefix),
            _ => None,
        }
    }

    #[test]
    fn defaults_deny_each_listed_range() {
        let cases = [
            ("0.1.2.3:80", "0.0.0.0/8"),
            ("10.20.30.40:80", "10.0.0.0/8"),
            ("100.64.0.1:80", "100.64.0.0/10"),
            ("100.127.255.254:80", "100.64.0.0/10"),
            ("127.0.0.1:22", "127.0.0.0/8"),
            ("127.255.0.9:22", "127.0.0.0/8"),
            ("169.254.169.254:80", "169.254.0.0/16"),
            ("172.16.0.1:80", "172.16.0.0/12"),
            ("172.31.255.255:80", "172.16.0.0/12"),
            ("192.168.1.1:80", "192.168.0.0/16"),
            ("224.0.0.251:5353", "224.0.0.0/4"),
            ("239.255.255.250:1900", "224.0.0.0/4"),
            ("240.0.0.1:80", "240.0.0.0/4"),
            ("255.255.255.255:80", "240.0.0.0/4"),
            ("[::]:80", "::/128"),
            ("[::1]:22", "::1/128"),
            ("[fd00:ec2::254]:80", "fc00::/7"),
            ("[fc00::1]:80", "fc00::/7"),
            ("[fe80::1]:80", "fe80::/10"),
            ("[febf::1]:80", "fe80::/10"),
            ("[ff02::1]:80", "ff00::/8"),
        ];
        for (destination, expected) in cases {
            assert_eq!(
                default_prefix(destination),
                Some(prefix(expected)),
                "{destination}"
            );
        }
        assert_eq!(
            DEFAULT_DENY.len(),
            14,
            "every default prefix has a case above"
        );
    }

    #[test]
    fn defaults_accept_public_addresses_next_to_the_ranges() {
        let policy = Policy::default();
        for destination in [
            "1.1.1.1:443",
            "11.0.0.1:80",
            "100.63.255.255:80",
            "100.128.0.0:80",
            "126.255.255.255:80",
            "128.0.0.1:80",
            "169.253.255.255:80",
            "172.15.255.255:80",
            "172.32.0.0:80",
            "192.167.255.255:80",
            "192.169.0.0:80",
            "223.255.255.255:80",
            "198.51.100.7:443",
            "[2001:db8::1]:443",
            "[2606:4700::1111]:443",
            "[::2]:80",
            "[fe00::1]:80",
            "[fec0::1]:80",
        ] {
            assert_eq!(policy.check(addr(destination)), Ok(()), "{destination}");
        }
    }

    #[test]
    fn port_zero_is_always_denied() {
        let policy = Policy::new(vec![prefix("0.0.0.0/0"), prefix("::/0")], Vec::new());
        for destination in ["198.51.100.7:0", "[2001:db8::1]:0"] {
            assert_eq!(
                policy.check(addr(destination)).map_err(|d| d.reason),
                Err(DenyReason::PortZero)
            );
        }
    }

    #[test]
    fn allow_overrides_default_and_configured_denies() {
        let policy = Policy::new(
            vec![prefix("127.0.0.0/8"), prefix("203.0.113.128/25")],
            vec![prefix("203.0.113.0/24")],
        );
        assert_eq!(policy.check(addr("127.0.0.1:8080")), Ok(()));
        assert_eq!(policy.check(addr("203.0.113.200:80")), Ok(()));
        assert_eq!(
            policy.check(addr("203.0.113.5:80")).map_err(|d| d.reason),
            Err(DenyReason::Configured {
                prefix: prefix("203.0.113.0/24")
            })
        );
        assert!(policy.check(addr("10.0.0.1:80")).is_err());
        assert!(policy.check(addr("[::1]:80")).is_err());
    }

    #[test]
    fn configured_deny_adds_to_the_defaults() {
        let policy = Policy::new(Vec::new(), vec![prefix("2001:db8::/32")]);
        assert!(policy.check(addr("[2001:db8::1]:443")).is_err());
        assert!(policy.check(addr("127.0.0.1:443")).is_err());
        assert_eq!(policy.check(addr("[2001:db9::1]:443")), Ok(()));
    }

    #[test]
    fn v4_mapped_addresses_are_checked_as_ipv4() {
        let policy = Policy::default();
        for mapped in [
            "[::ffff:127.0.0.1]:22",
            "[::ffff:169.254.169.254]:80",
            "[::ffff:10.1.2.3]:80",
        ] {
            assert!(policy.check(addr(mapped)).is_err(), "{mapped}");
        }
        assert_eq!(policy.check(addr("[::ffff:198.51.100.7]:443")), Ok(()));

        let allowing = Policy::new(vec![prefix("127.0.0.0/8")], vec![prefix("198.51.100.0/24")]);
        assert_eq!(allowing.check(addr("[::ffff:127.0.0.1]:22")), Ok(()));
        assert!(allowing.check(addr("[::ffff:198.51.100.7]:443")).is_err());
    }

    #[test]
    fn denials_say_what_to_do() {
        let denied = Policy::default()
            .check(addr("169.254.169.254:80"))
            .expect_err("metadata");
        assert_eq!(
            denied.to_string(),
            "169.254.169.254:80: inside 169.254.0.0/16 (link-local, including cloud metadata \
             at 169.254.169.254), denied by default; add it to [policy] allow if clients \
             should reach it"
        );
    }
}
