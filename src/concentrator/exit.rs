//! The datagram tunnel's exit: the concentrator's TUN device, the kernel's
//! forwarding and an nftables table of mpbond's own that masquerades the
//! clients' tunnel addresses behind this host's.
//!
//! Clients' packets, once opened and checked, are written into the TUN
//! (`mpbc0` in the lab); the kernel routes them out like any forwarded
//! packet, masquerading their source (a client's tunnel address, from the
//! pools) to the outgoing interface's address. Replies are de-masqueraded
//! by conntrack and routed to the pool's prefix, which is the TUN's: the
//! concentrator reads them there and seals them to the client that owns
//! the destination address.
//!
//! The table (`inet mpbond_conc`):
//!
//! ```text
//! chain postrouting  nat, srcnat:  saddr in a pool, leaving by another interface: masquerade
//! chain forward      filter:       TUN to TUN: drop (clients never reach each other)
//! chain input        filter:       from the TUN: only replies (ct established,related)
//! ```
//!
//! The destination policy (private ranges, the host itself, ...) is checked
//! on every packet before it is written to the TUN, with the same
//! [`Policy`](super::policy::Policy) as TCP; the table is a second fence.
//! Another table whose forward chain drops (a host firewall) still drops
//! these packets: nftables accepts a packet only when every base chain does.

use std::fmt::Write as _;

use std::os::fd::AsFd;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tracing::{debug, info, warn};
use tun_rs::{AsyncDevice, DeviceBuilder};

use crate::chain::Chain;
use crate::sys::{NftError, NftTable, SysctlGuard};

/// The TUN's MTU: the same as the client's, so no packet that entered
/// the client's TUN is too big for this one. What is larger than a
/// client's tunnel MTU is cut or refused on the way
/// ([`crate::wire::fragment`]).
pub const TUN_MTU: u16 = 1500;

/// The nftables table the concentrator owns (family `inet`).
pub const NFT_TABLE: &str = "mpbond_conc";

/// IPv4 forwarding; set while the exit runs, restored after.
const FORWARD_V4: &str = "net.ipv4.ip_forward";
/// IPv6 forwarding, set only when an IPv6 pool is configured (it changes
/// how the host treats router advertisements; see the README).
const FORWARD_V6: &str = "net.ipv6.conf.all.forwarding";

/// What the exit needs from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitConfig {
    /// The TUN device's name.
    pub tun: String,
    /// The TUN's IPv4 address; its prefix is the pool client addresses come
    /// from.
    pub ipv4: Option<Ipv4Net>,
    /// The same for IPv6.
    pub ipv6: Option<Ipv6Net>,
    /// The TUN's MTU.
    pub mtu: u16,
}

impl ExitConfig {
    /// The pools: the prefixes of the TUN's addresses.
    pub fn pools(&self) -> Vec<IpNet> {
        let v4 = self.ipv4.map(|n| IpNet::V4(n.trunc()));
        let v6 = self.ipv6.map(|n| IpNet::V6(n.trunc()));
        v4.into_iter().chain(v6).collect()
    }
}

/// Why the exit could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ExitError {
    /// The TUN device could not be created.
    #[error("cannot create the datagram TUN device {name}: {source} (mpbond needs root or CAP_NET_ADMIN, and /dev/net/tun)")]
    Tun {
        /// Its name.
        name: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The nftables table could not be installed.
    #[error("cannot install the masquerade for the datagram tunnel")]
    Nft(#[source] NftError),
    /// Forwarding could not be turned on.
    #[error("cannot set sysctl {key}=1 (mpbond needs root)")]
    Sysctl {
        /// The sysctl.
        key: &'static str,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}

/// The body of table `inet mpbond_conc` for the TUN `tun` and the pools.
pub fn ruleset(tun: &str, pools: &[IpNet]) -> String {
    let mut body = String::new();
    body.push_str(
        "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n",
    );
    for pool in pools {
        let family = match pool {
            IpNet::V4(_) => "ip",
            IpNet::V6(_) => "ip6",
        };
        let _ = writeln!(
            body,
            "    {family} saddr {pool} oifname != \"{tun}\" masquerade"
        );
    }
    body.push_str("  }\n");
    let _ = write!(
        body,
        "  chain forward {{\n    type filter hook forward priority filter; policy accept;\n    \
         iifname \"{tun}\" oifname \"{tun}\" drop\n  }}\n  \
         chain input {{\n    type filter hook input priority filter; policy accept;\n    \
         iifname \"{tun}\" ct state established,related accept\n    \
         iifname \"{tun}\" drop\n  }}\n"
    );
    body
}

/// The exit while it runs: dropping it removes the table, restores the
/// sysctls and deletes the TUN (the device goes with its last descriptor).
pub struct Exit {
    /// The TUN device.
    pub tun: AsyncDevice,
    /// Whether its packets carry a virtio-net header (`IFF_VNET_HDR`, with
    /// UDP segmentation asked of the kernel where it has it: a UDP
    /// super-packet may come whole, and the tunnel writes them).
    pub vnet: bool,
    _table: NftTable,
    _sysctls: Vec<SysctlGuard>,
}

impl std::fmt::Debug for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exit")
            .field("table", &self._table)
            .field("sysctls", &self._sysctls)
            .finish_non_exhaustive()
    }
}

/// Removes what a crashed run left: the table (a TUN goes away with the
/// process that held it).
pub fn cleanup_leftovers() {
    match NftTable::remove_leftover("inet", NFT_TABLE) {
        Ok(_) => {}
        Err(e) => warn!(error = %Chain(&e), "cannot check for a leftover nftables table"),
    }
}

/// What stays in place while the exit runs, apart from the TUN.
#[derive(Debug)]
pub struct ExitGuards {
    _table: NftTable,
    _sysctls: Vec<SysctlGuard>,
}

impl Exit {
    /// The TUN and the rest, apart.
    pub fn into_parts(self) -> (AsyncDevice, bool, ExitGuards) {
        (
            self.tun,
            self.vnet,
            ExitGuards {
                _table: self._table,
                _sysctls: self._sysctls,
            },
        )
    }

    /// Creates the TUN with its addresses, turns forwarding on and
    /// installs the masquerade.
    pub fn open(config: &ExitConfig) -> Result<Self, ExitError> {
        // UDP segmentation (Linux 6.2 on, with partial checksums): a UDP
        // super-packet for a client (a QUIC server segments its sends)
        // reaches the TUN whole and is cut up here, one read instead of
        // dozens. Without it, none.
        let uso = libc::TUN_F_CSUM | crate::sys::TUN_UDP_OFFLOADS;
        let (tun, vnet) = match Self::build(config, true) {
            Ok(tun) => match crate::sys::set_tun_offloads(tun.as_fd(), uso)
                .or_else(|_| crate::sys::set_tun_offloads(tun.as_fd(), 0))
            {
                Ok(()) => (tun, true),
                Err(e) => {
                    debug!(error = %e, "the TUN takes no offload settings; plain packets");
                    drop(tun);
                    (Self::build(config, false)?, false)
                }
            },
            Err(e) => {
                debug!(error = %e, "no virtio-net headers on the TUN; plain packets");
                (Self::build(config, false)?, false)
            }
        };
        let mut sysctls = Vec::new();
        let mut forward = |key: &'static str| -> Result<(), ExitError> {
            sysctls.extend(
                SysctlGuard::set(key, "1").map_err(|source| ExitError::Sysctl { key, source })?,
            );
            Ok(())
        };
        if config.ipv4.is_some() {
            forward(FORWARD_V4)?;
        }
        if config.ipv6.is_some() {
            forward(FORWARD_V6)?;
        }
        let table = NftTable::install("inet", NFT_TABLE, &ruleset(&config.tun, &config.pools()))
            .map_err(ExitError::Nft)?;
        info!(tun = %config.tun, pools = ?config.pools(), "datagram exit open");
        Ok(Self {
            tun,
            vnet,
            _table: table,
            _sysctls: sysctls,
        })
    }
}

impl Exit {
    /// The TUN of `config`; with `IFF_VNET_HDR` if `vnet`.
    fn build(config: &ExitConfig, vnet: bool) -> Result<AsyncDevice, ExitError> {
        let mut builder = DeviceBuilder::new()
            .name(config.tun.clone())
            .mtu(config.mtu)
            .offload(vnet);
        if let Some(v4) = config.ipv4 {
            builder = builder.ipv4(v4.addr(), v4.prefix_len(), None);
        }
        if let Some(v6) = config.ipv6 {
            builder = builder.ipv6(v6.addr(), v6.prefix_len());
        }
        builder.build_async().map_err(|source| ExitError::Tun {
            name: config.tun.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_masquerades_each_pool_and_fences_the_tun() {
        let config = ExitConfig {
            tun: "mpbc0".into(),
            ipv4: Some("100.64.77.1/24".parse().expect("prefix")),
            ipv6: Some("fd00:6d70:62:77::1/64".parse().expect("prefix")),
            mtu: 1420,
        };
        let text = ruleset(&config.tun, &config.pools());
        assert!(text.contains("ip saddr 100.64.77.0/24 oifname != \"mpbc0\" masquerade"));
        assert!(text.contains("ip6 saddr fd00:6d70:62:77::/64 oifname != \"mpbc0\" masquerade"));
        assert!(text.contains("iifname \"mpbc0\" oifname \"mpbc0\" drop"));
        assert!(text.contains("iifname \"mpbc0\" drop"));
        let v4_only = ExitConfig {
            ipv6: None,
            ..config
        };
        assert_eq!(v4_only.pools().len(), 1);
        assert!(!ruleset("mpbc0", &v4_only.pools()).contains("ip6 saddr"));
    }
}
