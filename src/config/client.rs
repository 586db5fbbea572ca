//! The client's config file.
//!
//! ```toml
//! concentrator = "203.0.113.7:7300" # the concentrator's MPTCP listener
//! id = "home"                       # this client's id at the concentrator
//! key = "base64..."                 # from `mpbond keygen`; or instead:
//! # key_file = "home.key"           # relative to this file's directory, mode 0600
//! connect_mode = "fast"             # optional: "fast" answers a LAN host's SYN at
//!                                   # once and sends the connect header in the
//!                                   # tunnel's SYN (TCP Fast Open); "strict" holds
//!                                   # the SYN until the server answered
//! connect_timeout = "30s"           # optional: reaching the concentrator and,
//!                                   # through it, the server
//! warm_connections = 2              # optional: tunnels kept connected ahead of
//!                                   # use while the site is active (0: none), so a
//!                                   # new flow's request leaves at once
//! warm_max_age = "3s"               # optional: a warm tunnel unused this long is
//!                                   # replaced; keep it below the concentrator's
//!                                   # handshake_timeout (default 5s)
//! send_buffer = "auto"              # optional: "auto" (default), 0 (kernel autotuning) or bytes
//!                                   # (SO_SNDBUF; 0: the kernel's autotuning); less
//!                                   # queued on a surviving line means faster
//!                                   # failover of uploads
//!
//! [tun]                             # optional
//! name = "mpb0"                     # TUN device
//! ipv4 = "172.29.77.1/30"           # its addresses; the next address on each
//! ipv6 = "fd00:6d70:62::1/126"      # subnet is used internally by the redirect
//! mtu = 1500
//!
//! [[uplink]]                        # one per line, at most 8
//! name = "dsl"                      # for logs
//! interface = "dsl0"
//! gateway = "10.77.1.1"             # optional: IPv4 next hop (else the gateway of
//!                                   # the system's default route out of the
//!                                   # interface, followed as DHCP changes it;
//!                                   # else on-link)
//! gateway6 = "fe80::1"              # optional: IPv6 next hop (likewise)
//! backup = false                    # optional: carry traffic only when no
//!                                   # other uplink works
//!
//! [datagram]                        # optional: the datagram tunnel, for all
//!                                   # that is not TCP; without this table
//!                                   # it stays off and non-TCP traffic keeps
//!                                   # the normal default route, unbonded
//! address_v4 = "10.77.0.2"          # this client's tunnel addresses, as the
//! address_v6 = "fd77::2"            # concentrator's tunnel_v4 / tunnel_v6 give
//!                                   # them (v6 optional)
//! enabled = true                    # optional: false turns it off, table kept
//! port = 7300                       # optional: the concentrator's UDP port
//!                                   # (default: the port of `concentrator`)
//! mode = "latency"                  # optional: "latency", "redundant" or "aggregate"
//! dns_redundant = true              # optional: DNS on the best two lines in any mode
//! redundant_ef = true               # optional: packets marked DSCP EF (voice)
//!                                   # on every line in any mode
//! redundant_ports = [3478, 5060]    # optional: flows from or to these ports
//!                                   # (at most 16) on every line in any mode
//! quic = "block"                    # optional: "block" (QUIC refused at once:
//!                                   # browsers fall back to TCP, bonded by
//!                                   # MPTCP) or "tunnel" (carried, one line)
//! mtu = 1400                        # optional: cap on the largest packet the
//!                                   # tunnel carries whole (576-9000; default:
//!                                   # each uplink's path MTU less the outer
//!                                   # headers, the smallest of them)
//!
//! [control]                         # optional: status and metrics, see
//!                                   # crate::config::control
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;
use toml::Spanned;

use super::control::{ControlConfig, RawControl};
use super::{
    is_unicast_host, parse_nonzero_duration, parse_port, parse_send_buffer, parse_socket_addr,
    ConfigError, ConfigFile, KeyNames, Parsed, RawSendBuffer, SendBuffer, ValueError,
};
use crate::auth::Key;
use crate::client::redirect::ConnectMode;
use crate::crypto::{connect_key, PublicKey, StaticSecret};
use crate::datagram::{Mode, PortSet, QuicPolicy, SchedulerConfig, MAX_REDUNDANT_PORTS};
use crate::wire::convert::ClientId;

/// The client's validated configuration.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The concentrator's MPTCP listener.
    pub concentrator: SocketAddr,
    /// This client's id.
    pub id: ClientId,
    /// Its secret.
    pub key: Key,
    /// How new flows start.
    pub connect_mode: ConnectMode,
    /// How long reaching the server through the tunnel may take.
    pub connect_timeout: Duration,
    /// Tunnels kept connected ahead of use while the site is active.
    pub warm_connections: usize,
    /// `SO_SNDBUF` of each tunnel socket; 0: the kernel's autotuning.
    pub send_buffer: SendBuffer,
    /// How long a warm tunnel may wait for a flow.
    pub warm_max_age: Duration,
    /// The TUN device.
    pub tun: TunConfig,
    /// The uplinks, in the order written; names and interfaces are unique.
    pub uplinks: Vec<UplinkConfig>,
    /// The datagram tunnel; `None`: off (no `[datagram]` table, or
    /// `enabled = false`).
    pub datagram: Option<DatagramConfig>,
    /// This client's X25519 secret and the concentrator's public key
    /// (`private_key[_file]`, `concentrator_public_key[_file]`): the
    /// datagram tunnel's identities, and the source of the connect key.
    pub identity: Option<(StaticSecret, PublicKey)>,
    /// The control socket and metrics (`[control]`).
    pub control: ControlConfig,
}

/// The datagram tunnel's settings (`[datagram]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatagramConfig {
    /// The concentrator's UDP port (handshakes, data and probes).
    pub port: u16,
    /// How flows use the uplinks.
    pub mode: Mode,
    /// DNS on the best two uplinks whatever the mode.
    pub dns_redundant: bool,
    /// Packets marked Expedited Forwarding on every uplink.
    pub redundant_ef: bool,
    /// Flows from or to these ports on every uplink.
    pub redundant_ports: PortSet,
    /// What happens to QUIC (UDP to port 443).
    pub quic: QuicPolicy,
    /// This client's IPv4 address inside the tunnel, as the concentrator
    /// assigned it: LAN hosts are presented under it.
    pub address_v4: Ipv4Addr,
    /// Its IPv6 address inside the tunnel, if the concentrator gives one.
    pub address_v6: Option<Ipv6Addr>,
    /// A cap on the tunnel's MTU (`mtu`), for a path whose MTU is smaller
    /// somewhere past the uplink's interface (a cellular carrier's).
    pub mtu: Option<u16>,
}

impl DatagramConfig {
    /// The range `mtu` may take: IPv4's 576 every host accepts, up to
    /// jumbo frames.
    pub const MTU_RANGE: std::ops::RangeInclusive<u16> = 576..=9000;
    /// Default for `mode`.
    pub const DEFAULT_MODE: Mode = Mode::Latency;
    /// Default for `dns_redundant`.
    pub const DEFAULT_DNS_REDUNDANT: bool = true;
    /// Default for `redundant_ef`.
    pub const DEFAULT_REDUNDANT_EF: bool = true;
    /// Default for `quic`: refused, so browsers fall back to TCP, which
    /// MPTCP bonds over every line (`bench.sh quic`: downloads 3.3 x the
    /// goodput of QUIC, confined to one line, and a new connection no
    /// slower).
    pub const DEFAULT_QUIC: QuicPolicy = QuicPolicy::Block;

    /// The scheduler's settings for this config; the rest keep their
    /// defaults.
    pub fn scheduler(&self) -> SchedulerConfig {
        SchedulerConfig {
            mode: self.mode,
            dns_redundant: self.dns_redundant,
            redundant_ef: self.redundant_ef,
            redundant_ports: self.redundant_ports,
            quic: self.quic,
            ..SchedulerConfig::default()
        }
    }
}

/// The TUN device that captures the site's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunConfig {
    /// Device name.
    pub name: String,
    /// Its IPv4 address and prefix.
    pub ipv4: Ipv4Net,
    /// Its IPv6 address and prefix.
    pub ipv6: Ipv6Net,
    /// Its MTU.
    pub mtu: u16,
    /// Whether to ask the kernel for TCP offloads (super-packets, partial
    /// checksums); without them, or when the kernel refuses, one packet per
    /// read and write.
    pub offload: bool,
}

impl TunConfig {
    /// The address after the TUN's own on its IPv4 subnet: the redirect's
    /// fake peer.
    pub fn fake_v4(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.ipv4.addr()).wrapping_add(1))
    }

    /// The address after the TUN's own on its IPv6 subnet.
    pub fn fake_v6(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.ipv6.addr()).wrapping_add(1))
    }
}

impl Default for TunConfig {
    fn default() -> Self {
        Self {
            name: "mpb0".to_owned(),
            ipv4: Ipv4Net::new(Ipv4Addr::new(172, 29, 77, 1), 30).expect("valid prefix length"),
            ipv6: Ipv6Net::new(Ipv6Addr::new(0xfd00, 0x6d70, 0x62, 0, 0, 0, 0, 1), 126)
                .expect("valid prefix length"),
            mtu: 1500,
            offload: true,
        }
    }
}

/// One uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkConfig {
    /// Name for logs.
    pub name: String,
    /// Network interface.
    pub interface: String,
    /// IPv4 next hop; `None`: the system's default route's, else on-link.
    pub gateway: Option<Ipv4Addr>,
    /// IPv6 next hop; `None`: the system's default route's, else on-link.
    pub gateway6: Option<Ipv6Addr>,
    /// Carries traffic only when no other uplink works.
    pub backup: bool,
}

impl ClientConfig {
    /// Default for `connect_timeout`.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default for `warm_connections`.
    pub const DEFAULT_WARM_CONNECTIONS: usize = 2;
    /// Largest `warm_connections`.
    pub const MAX_WARM_CONNECTIONS: usize = 16;
    /// Default for `send_buffer`: sized from what the kernel measures of
    /// each tunnel's subflows ([`crate::sendbuf`]); see the README for what
    /// fixed sizes and autotuning cost.
    pub const DEFAULT_SEND_BUFFER: SendBuffer = SendBuffer::Auto;
    /// Default for `warm_max_age`.
    pub const DEFAULT_WARM_MAX_AGE: Duration = Duration::from_secs(3);
    /// Most uplinks (the kernel path manager's subflow limit is 8).
    pub const MAX_UPLINKS: usize = 8;

    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = ConfigFile::read(path)?;
        Self::try_from(file.deserialize::<RawClientConfig>()?)
    }
}

/// The config file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientConfig {
    concentrator: Spanned<String>,
    id: Spanned<String>,
    key: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    private_key: Option<Spanned<String>>,
    private_key_file: Option<Spanned<String>>,
    concentrator_public_key: Option<Spanned<String>>,
    concentrator_public_key_file: Option<Spanned<String>>,
    connect_mode: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    warm_connections: Option<Spanned<i64>>,
    warm_max_age: Option<Spanned<String>>,
    send_buffer: Option<Spanned<RawSendBuffer>>,
    tun: Option<RawTun>,
    #[serde(default)]
    uplink: Vec<Spanned<RawUplink>>,
    datagram: Option<Spanned<RawDatagram>>,
    control: Option<RawControl>,
}

/// The `[datagram]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatagram {
    enabled: Option<bool>,
    port: Option<Spanned<i64>>,
    mode: Option<Spanned<String>>,
    dns_redundant: Option<bool>,
    redundant_ef: Option<bool>,
    redundant_ports: Option<Spanned<Vec<Spanned<i64>>>>,
    quic: Option<Spanned<String>>,
    address_v4: Option<Spanned<String>>,
    address_v6: Option<Spanned<String>>,
    mtu: Option<Spanned<i64>>,
}

/// The `[tun]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTun {
    name: Option<Spanned<String>>,
    ipv4: Option<Spanned<String>>,
    ipv6: Option<Spanned<String>>,
    mtu: Option<Spanned<i64>>,
    offload: Option<bool>,
}

/// One `[[uplink]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUplink {
    name: Spanned<String>,
    interface: Spanned<String>,
    gateway: Option<Spanned<String>>,
    gateway6: Option<Spanned<String>>,
    #[serde(default)]
    backup: bool,
}

impl TryFrom<Parsed<'_, RawClientConfig>> for ClientConfig {
    type Error = ConfigError;

    fn try_from(parsed: Parsed<'_, RawClientConfig>) -> Result<Self, ConfigError> {
        let Parsed { file, value: raw } = parsed;
        let concentrator = parse_socket_addr(raw.concentrator.get_ref())
            .and_then(|addr| match addr.port() {
                0 => Err(ValueError::PortZero),
                _ => Ok(addr),
            })
            .map_err(|e| file.invalid("concentrator", raw.concentrator.span(), e))?;
        let id = ClientId::try_from(raw.id.get_ref().as_str())
            .map_err(|e| file.invalid("id", raw.id.span(), ValueError::ClientId(e)))?;
        let secret = file.optional_key(
            "",
            KeyNames {
                inline: ("private_key", raw.private_key.as_ref()),
                file: ("private_key_file", raw.private_key_file.as_ref()),
                secret: true,
            },
        )?;
        let public = file.optional_key(
            "",
            KeyNames {
                inline: (
                    "concentrator_public_key",
                    raw.concentrator_public_key.as_ref(),
                ),
                file: (
                    "concentrator_public_key_file",
                    raw.concentrator_public_key_file.as_ref(),
                ),
                secret: false,
            },
        )?;
        let identity = match (secret, public) {
            (None, None) => None,
            (Some(secret), Some(public)) => Some((
                StaticSecret::from_bytes(*secret.as_bytes()),
                PublicKey::from_bytes(*public.as_bytes()),
            )),
            (Some(_), None) => {
                return Err(file.missing(
                    "concentrator_public_key",
                    ValueError::HalfKeyPair {
                        given: "private_key",
                        missing: "concentrator_public_key or concentrator_public_key_file",
                    },
                ))
            }
            (None, Some(_)) => {
                return Err(file.missing(
                    "private_key",
                    ValueError::HalfKeyPair {
                        given: "concentrator_public_key",
                        missing: "private_key or private_key_file",
                    },
                ))
            }
        };
        let key = match &identity {
            None => file.key("", 0..0, raw.key.as_ref(), raw.key_file.as_ref())?,
            Some(_) if raw.key.is_some() || raw.key_file.is_some() => {
                return Err(file.missing("key", ValueError::KeyAndPublicKeys))
            }
            Some((secret, public)) => connect_key(secret, public)
                .map_err(|_| file.missing("concentrator_public_key", ValueError::LowOrderKey))?,
        };
        let connect_mode = match &raw.connect_mode {
            None => ConnectMode::Fast,
            Some(text) => match text.get_ref().as_str() {
                "fast" => ConnectMode::Fast,
                "strict" => ConnectMode::Strict,
                other => {
                    return Err(file.invalid(
                        "connect_mode",
                        text.span(),
                        ValueError::ConnectMode {
                            text: other.to_owned(),
                        },
                    ))
                }
            },
        };
        let connect_timeout = match &raw.connect_timeout {
            None => Self::DEFAULT_CONNECT_TIMEOUT,
            Some(text) => parse_nonzero_duration(text.get_ref())
                .map_err(|e| file.invalid("connect_timeout", text.span(), e))?,
        };
        let warm_connections = match &raw.warm_connections {
            None => Self::DEFAULT_WARM_CONNECTIONS,
            Some(value) => usize::try_from(*value.get_ref())
                .ok()
                .filter(|n| *n <= Self::MAX_WARM_CONNECTIONS)
                .ok_or_else(|| {
                    file.invalid(
                        "warm_connections",
                        value.span(),
                        ValueError::OutOfRange {
                            value: *value.get_ref(),
                            min: 0,
                            max: Self::MAX_WARM_CONNECTIONS as i64,
                        },
                    )
                })?,
        };
        let warm_max_age = match &raw.warm_max_age {
            None => Self::DEFAULT_WARM_MAX_AGE,
            Some(text) => parse_nonzero_duration(text.get_ref())
                .map_err(|e| file.invalid("warm_max_age", text.span(), e))?,
        };
        let send_buffer = match &raw.send_buffer {
            None => Self::DEFAULT_SEND_BUFFER,
            Some(value) => parse_send_buffer(value.get_ref())
                .map_err(|e| file.invalid("send_buffer", value.span(), e))?,
        };
        let tun = tun(file, raw.tun.as_ref())?;

        if raw.uplink.is_empty() {
            return Err(file.missing("uplink", ValueError::NoUplink));
        }
        if raw.uplink.len() > Self::MAX_UPLINKS {
            return Err(file.invalid(
                format!("uplink[{}]", Self::MAX_UPLINKS),
                raw.uplink[Self::MAX_UPLINKS].span(),
                ValueError::TooManyUplinks {
                    count: raw.uplink.len(),
                    max: Self::MAX_UPLINKS,
                },
            ));
        }
        let mut uplinks = Vec::with_capacity(raw.uplink.len());
        let mut seen: HashMap<String, String> = HashMap::new();
        for (i, table) in raw.uplink.iter().enumerate() {
            let prefix = format!("uplink[{i}]");
            let uplink = table.get_ref();
            for (key, value) in [("name", &uplink.name), ("interface", &uplink.interface)] {
                let path = format!("{prefix}.{key}");
                let tag = format!("{key}:{}", value.get_ref());
                if let Some(first) = seen.get(&tag) {
                    return Err(file.invalid(
                        path,
                        value.span(),
                        ValueError::DuplicateUplink {
                            value: value.get_ref().clone(),
                            first: first.clone(),
                        },
                    ));
                }
                seen.insert(tag, path);
            }
            uplinks.push(parse_uplink(file, &prefix, uplink)?);
        }
        if uplinks.iter().all(|u| u.backup) {
            return Err(file.invalid(
                "uplink[0].backup",
                raw.uplink[0].span(),
                ValueError::OnlyBackups,
            ));
        }

        let datagram = match &raw.datagram {
            None => None,
            Some(table) => datagram(file, table, concentrator.port(), &tun)?,
        };
        if datagram.is_some() && identity.is_none() {
            return Err(file.missing(
                "private_key",
                ValueError::HalfKeyPair {
                    given: "[datagram]",
                    missing: "private_key and concentrator_public_key",
                },
            ));
        }

        let control = ControlConfig::from_raw(file, "client", raw.control.as_ref())?;

        Ok(Self {
            concentrator,
            id,
            key,
            connect_mode,
            connect_timeout,
            warm_connections,
            warm_max_age,
            send_buffer,
            tun,
            uplinks,
            datagram,
            identity,
            control,
        })
    }
}

/// The `[datagram]` table: `None` when `enabled = false`. The values are
/// checked even then, so that turning it on later finds no surprise.
fn datagram(
    file: &ConfigFile,
    table: &Spanned<RawDatagram>,
    concentrator_port: u16,
    tun: &TunConfig,
) -> Result<Option<DatagramConfig>, ConfigError> {
    let raw = table.get_ref();
    let port = match &raw.port {
        None => concentrator_port,
        Some(value) => parse_port(*value.get_ref())
            .map_err(|e| file.invalid("datagram.port", value.span(), e))?,
    };
    let mode = match &raw.mode {
        None => DatagramConfig::DEFAULT_MODE,
        Some(text) => match text.get_ref().as_str() {
            "latency" => Mode::Latency,
            "redundant" => Mode::Redundant,
            "aggregate" => Mode::Aggregate,
            other => {
                return Err(file.invalid(
                    "datagram.mode",
                    text.span(),
                    ValueError::DatagramMode {
                        text: other.to_owned(),
                    },
                ))
            }
        },
    };
    let quic = match &raw.quic {
        None => DatagramConfig::DEFAULT_QUIC,
        Some(text) => match text.get_ref().as_str() {
            "tunnel" => QuicPolicy::Tunnel,
            "block" => QuicPolicy::Block,
            other => {
                return Err(file.invalid(
                    "datagram.quic",
                    text.span(),
                    ValueError::QuicPolicy {
                        text: other.to_owned(),
                    },
                ))
            }
        },
    };
    let redundant_ports = match &raw.redundant_ports {
        None => PortSet::EMPTY,
        Some(list) => {
            let mut ports = Vec::with_capacity(list.get_ref().len());
            for value in list.get_ref() {
                let port = parse_port(*value.get_ref())
                    .map_err(|e| file.invalid("datagram.redundant_ports", value.span(), e))?;
                if !ports.contains(&port) {
                    ports.push(port);
                }
            }
            PortSet::new(&ports).ok_or_else(|| {
                file.invalid(
                    "datagram.redundant_ports",
                    list.span(),
                    ValueError::TooManyPorts {
                        count: ports.len(),
                        max: MAX_REDUNDANT_PORTS,
                    },
                )
            })?
        }
    };
    let Some(v4_text) = &raw.address_v4 else {
        return Err(file.invalid("datagram", table.span(), ValueError::NoTunnelAddress));
    };
    let address_v4 = match tunnel_address(v4_text.get_ref(), tun) {
        Ok(IpAddr::V4(addr)) => addr,
        Ok(IpAddr::V6(_)) => {
            return Err(file.invalid(
                "datagram.address_v4",
                v4_text.span(),
                ValueError::IpAddr {
                    text: v4_text.get_ref().clone(),
                    example: "10.77.0.2",
                },
            ))
        }
        Err(e) => return Err(file.invalid("datagram.address_v4", v4_text.span(), e)),
    };
    let address_v6 = match &raw.address_v6 {
        None => None,
        Some(text) => match tunnel_address(text.get_ref(), tun) {
            Ok(IpAddr::V6(addr)) => Some(addr),
            Ok(IpAddr::V4(_)) => {
                return Err(file.invalid(
                    "datagram.address_v6",
                    text.span(),
                    ValueError::IpAddr {
                        text: text.get_ref().clone(),
                        example: "fd77::2",
                    },
                ))
            }
            Err(e) => return Err(file.invalid("datagram.address_v6", text.span(), e)),
        },
    };
    let mtu = match &raw.mtu {
        None => None,
        Some(value) => {
            let range = DatagramConfig::MTU_RANGE;
            let mtu = u16::try_from(*value.get_ref())
                .ok()
                .filter(|m| range.contains(m))
                .ok_or_else(|| {
                    file.invalid(
                        "datagram.mtu",
                        value.span(),
                        ValueError::OutOfRange {
                            value: *value.get_ref(),
                            min: i64::from(*range.start()),
                            max: i64::from(*range.end()),
                        },
                    )
                })?;
            Some(mtu)
        }
    };
    let config = DatagramConfig {
        port,
        mode,
        dns_redundant: raw
            .dns_redundant
            .unwrap_or(DatagramConfig::DEFAULT_DNS_REDUNDANT),
        redundant_ef: raw
            .redundant_ef
            .unwrap_or(DatagramConfig::DEFAULT_REDUNDANT_EF),
        redundant_ports,
        quic,
        address_v4,
        address_v6,
        mtu,
    };
    Ok(raw.enabled.unwrap_or(true).then_some(config))
}

/// A tunnel address: one unicast host, outside the client's TUN subnet.
fn tunnel_address(text: &str, tun: &TunConfig) -> Result<IpAddr, ValueError> {
    let example = if text.contains(':') {
        "fd77::2"
    } else {
        "10.77.0.2"
    };
    let addr: IpAddr = text.parse().map_err(|_| ValueError::IpAddr {
        text: text.to_owned(),
        example,
    })?;
    if !is_unicast_host(addr) {
        return Err(ValueError::NotUnicast { addr });
    }
    let tun_net: ipnet::IpNet = match addr {
        IpAddr::V4(_) => tun.ipv4.trunc().into(),
        IpAddr::V6(_) => tun.ipv6.trunc().into(),
    };
    if tun_net.contains(&addr) {
        return Err(ValueError::TunnelAddressInTun { addr, tun: tun_net });
    }
    Ok(addr)
}

fn tun(file: &ConfigFile, raw: Option<&RawTun>) -> Result<TunConfig, ConfigError> {
    let mut tun = TunConfig::default();
    let Some(raw) = raw else {
        return Ok(tun);
    };
    if let Some(name) = &raw.name {
        if !is_interface_name(name.get_ref()) {
            return Err(file.invalid(
                "tun.name",
                name.span(),
                ValueError::InterfaceName {
                    text: name.get_ref().clone(),
                },
            ));
        }
        tun.name = name.get_ref().clone();
    }
    if let Some(text) = &raw.ipv4 {
        let bad = || {
            file.invalid(
                "tun.ipv4",
                text.span(),
                ValueError::TunAddress {
                    text: text.get_ref().clone(),
                    example: "172.29.77.1/30",
                },
            )
        };
        let net: Ipv4Net = text.get_ref().parse().map_err(|_| bad())?;
        let next = u32::from(net.addr()).checked_add(1).map(Ipv4Addr::from);
        // The fake peer must be a host address on the same subnet.
        match next {
            Some(next)
                if net.prefix_len() <= 30 && net.contains(&next) && next != net.broadcast() => {}
            _ => return Err(bad()),
        }
        tun.ipv4 = net;
    }
    if let Some(text) = &raw.ipv6 {
        let bad = || {
            file.invalid(
                "tun.ipv6",
                text.span(),
                ValueError::TunAddress {
                    text: text.get_ref().clone(),
                    example: "fd00:6d70:62::1/126",
                },
            )
        };
        let net: Ipv6Net = text.get_ref().parse().map_err(|_| bad())?;
        let next = u128::from(net.addr()).checked_add(1).map(Ipv6Addr::from);
        match next {
            Some(next) if net.prefix_len() <= 126 && net.contains(&next) => {}
            _ => return Err(bad()),
        }
        tun.ipv6 = net;
    }
    if let Some(mtu) = &raw.mtu {
        let value = *mtu.get_ref();
        tun.mtu = u16::try_from(value)
            .ok()
            .filter(|m| (1280..=9000).contains(m))
            .ok_or_else(|| {
                file.invalid(
                    "tun.mtu",
                    mtu.span(),
                    ValueError::OutOfRange {
                        value,
                        min: 1280,
                        max: 9000,
                    },
                )
            })?;
    }
    if let Some(offload) = raw.offload {
        tun.offload = offload;
    }
    Ok(tun)
}

fn parse_uplink(
    file: &ConfigFile,
    prefix: &str,
    raw: &RawUplink,
) -> Result<UplinkConfig, ConfigError> {
    let name = raw.name.get_ref();
    let name_ok = (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !name_ok {
        return Err(file.invalid(
            format!("{prefix}.name"),
            raw.name.span(),
            ValueError::UplinkName { text: name.clone() },
        ));
    }
    if !is_interface_name(raw.interface.get_ref()) {
        return Err(file.invalid(
            format!("{prefix}.interface"),
            raw.interface.span(),
            ValueError::InterfaceName {
                text: raw.interface.get_ref().clone(),
            },
        ));
    }
    let gateway = match &raw.gateway {
        None => None,
        Some(text) => match text.get_ref().parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => Some(ip),
            _ => {
                return Err(file.invalid(
                    format!("{prefix}.gateway"),
                    text.span(),
                    ValueError::IpAddr {
                        text: text.get_ref().clone(),
                        example: "192.168.1.1",
                    },
                ))
            }
        },
    };
    let gateway6 = match &raw.gateway6 {
        None => None,
        Some(text) => match text.get_ref().parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => Some(ip),
            _ => {
                return Err(file.invalid(
                    format!("{prefix}.gateway6"),
                    text.span(),
                    ValueError::IpAddr {
                        text: text.get_ref().clone(),
                        example: "fe80::1",
                    },
                ))
            }
        },
    };
    Ok(UplinkConfig {
        name: name.clone(),
        interface: raw.interface.get_ref().clone(),
        gateway,
        gateway6,
        backup: raw.backup,
    })
}

/// Whether `name` is a valid Linux interface name.
pub(super) fn is_interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn load(text: &str) -> Result<ClientConfig, ConfigError> {
        let file = ConfigFile::from_text("/etc/mpbond/client.toml", text);
        ClientConfig::try_from(file.deserialize::<RawClientConfig>()?)
    }

    fn base(extra: &str) -> String {
        format!(
            "concentrator = \"10.77.9.2:7300\"\nid = \"lab\"\nkey = \"{KEY}\"\n{extra}\n\
             [[uplink]]\nname = \"dsl\"\ninterface = \"dsl0\"\ngateway = \"10.77.1.1\"\n\
             [[uplink]]\nname = \"lte\"\ninterface = \"lte0\"\nbackup = true\n"
        )
    }

    #[test]
    fn a_full_config_loads_with_defaults() {
        let config = load(&base("")).expect("valid");
        assert_eq!(config.concentrator, "10.77.9.2:7300".parse().expect("addr"));
        assert_eq!(config.id.as_str(), "lab");
        assert_eq!(config.connect_mode, ConnectMode::Fast);
        assert_eq!(config.send_buffer, ClientConfig::DEFAULT_SEND_BUFFER);
        assert_eq!(
            config.connect_timeout,
            ClientConfig::DEFAULT_CONNECT_TIMEOUT
        );
        assert_eq!(config.tun, TunConfig::default());
        assert_eq!(config.warm_connections, 2);
        assert_eq!(config.warm_max_age, Duration::from_secs(3));
        assert_eq!(config.tun.fake_v4(), Ipv4Addr::new(172, 29, 77, 2));
        assert_eq!(config.uplinks.len(), 2);
        assert_eq!(config.uplinks[0].gateway, Some(Ipv4Addr::new(10, 77, 1, 1)));
        assert!(!config.uplinks[0].backup);
        assert!(config.uplinks[1].backup);
    }

    #[test]
    fn strict_mode_and_tun_settings() {
        let config = load(&base(
            "connect_mode = \"strict\"\n[tun]\nname = \"bond0\"\nipv4 = \"10.200.0.1/29\"\nmtu = 1400\n",
        ))
        .expect("valid");
        assert_eq!(config.connect_mode, ConnectMode::Strict);
        assert_eq!(config.tun.name, "bond0");
        assert_eq!(config.tun.fake_v4(), Ipv4Addr::new(10, 200, 0, 2));
        assert_eq!(config.tun.mtu, 1400);
    }

    fn problem(text: &str) -> (String, Option<usize>, String) {
        let err = load(text).expect_err("invalid");
        let message = format!(
            "{err}: {}",
            std::error::Error::source(&err)
                .map(|s| s.to_string())
                .unwrap_or_default()
        );
        (
            err.key().unwrap_or_default().to_owned(),
            err.location().line,
            message,
        )
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let (key, line, message) = problem(&base("connect_mode = \"lazy\""));
        assert_eq!(key, "connect_mode");
        assert_eq!(line, Some(4));
        assert!(message.contains("lazy"), "{message}");

        let (key, _, _) = problem(&base("[tun]\nipv4 = \"172.29.77.1/32\""));
        assert_eq!(key, "tun.ipv4");
        let (key, _, _) = problem(&base("warm_connections = 17"));
        assert_eq!(key, "warm_connections");
        let (key, _, _) = problem(&base("warm_max_age = \"0s\""));
        assert_eq!(key, "warm_max_age");
        let (key, _, message) = problem(&base("send_buffer = -1"));
        assert_eq!(key, "send_buffer");
        assert!(message.contains("from 0 to 67108864"), "{message}");
        assert_eq!(
            load(&base("send_buffer = 0")).expect("valid").send_buffer,
            SendBuffer::Kernel
        );
        assert_eq!(
            load(&base("send_buffer = 262144"))
                .expect("valid")
                .send_buffer,
            SendBuffer::Fixed(262_144)
        );
        assert_eq!(
            load(&base("send_buffer = \"auto\""))
                .expect("valid")
                .send_buffer,
            SendBuffer::Auto
        );
        let (key, _, message) = problem(&base("send_buffer = \"big\""));
        assert_eq!(key, "send_buffer");
        assert!(
            message.contains("\"big\" is not a send buffer"),
            "{message}"
        );
        let (key, _, _) = problem(&base("[tun]\nmtu = 70000"));
        assert_eq!(key, "tun.mtu");
        let (key, _, _) = problem(&base("[tun]\nname = \"a/b\""));
        assert_eq!(key, "tun.name");

        let text = base("").replace("gateway = \"10.77.1.1\"", "gateway = \"fd77::1\"");
        let (key, line, _) = problem(&text);
        assert_eq!(key, "uplink[0].gateway");
        assert_eq!(line, Some(8));
    }

    #[test]
    fn uplinks_must_be_unique_present_and_not_all_backup() {
        let text = base("").replace("interface = \"lte0\"", "interface = \"dsl0\"");
        let (key, _, message) = problem(&text);
        assert_eq!(key, "uplink[1].interface");
        assert!(message.contains("uplink[0].interface"), "{message}");

        let text = format!("concentrator = \"10.77.9.2:7300\"\nid = \"lab\"\nkey = \"{KEY}\"\n");
        let (key, _, _) = problem(&text);
        assert_eq!(key, "uplink");

        let text = base("").replace("gateway = \"10.77.1.1\"", "backup = true");
        let (key, _, message) = problem(&text);
        assert_eq!(key, "uplink[0].backup");
        assert!(message.contains("backup"), "{message}");
    }

    /// `base(extra)` with a key pair instead of the shared key, as the
    /// datagram tunnel needs.
    fn keyed(extra: &str) -> String {
        let peer = crate::crypto::StaticSecret::from_bytes([7; 32]).public_key();
        base(extra).replace(
            &format!("key = \"{KEY}\"\n"),
            &format!("private_key = \"{KEY}\"\nconcentrator_public_key = \"{peer}\"\n"),
        )
    }

    #[test]
    fn the_datagram_tunnel_needs_a_key_pair_and_derives_the_connect_key() {
        let (key, _, message) = problem(&base("[datagram]\naddress_v4 = \"10.77.0.2\""));
        assert_eq!(key, "private_key");
        assert!(message.contains("private_key"), "{message}");
        let config = load(&keyed("")).expect("valid");
        let (secret, public) = config.identity.expect("a key pair");
        let derived = crate::crypto::connect_key(&secret, &public).expect("derive");
        assert_eq!(config.key.to_base64(), derived.to_base64());
        let both = keyed("").replace("private_key", &format!("key = \"{KEY}\"\nprivate_key"));
        let (_, _, message) = problem(&both);
        assert!(message.contains("remove key"), "{message}");
    }

    #[test]
    fn the_datagram_tunnel_is_off_without_its_table() {
        assert_eq!(load(&base("")).expect("valid").datagram, None);
        let config = load(&keyed("[datagram]\naddress_v4 = \"10.77.0.2\"")).expect("valid");
        assert_eq!(
            config.datagram,
            Some(DatagramConfig {
                port: 7300,
                mode: Mode::Latency,
                dns_redundant: true,
                redundant_ef: true,
                redundant_ports: PortSet::EMPTY,
                quic: QuicPolicy::Block,
                address_v4: Ipv4Addr::new(10, 77, 0, 2),
                address_v6: None,
                mtu: None,
            })
        );
        let off = "[datagram]\nenabled = false\naddress_v4 = \"10.77.0.2\"";
        assert_eq!(load(&keyed(off)).expect("valid").datagram, None);
    }

    #[test]
    fn every_datagram_key_reads_back() {
        let config = load(&keyed(
            "[datagram]\nenabled = true\nport = 7400\nmode = \"aggregate\"\n\
             dns_redundant = false\nquic = \"block\"\naddress_v4 = \"10.77.0.2\"\n\
             address_v6 = \"fd77::2\"\nredundant_ef = false\nredundant_ports = [3478, 5060, 3478]\n\
             mtu = 1400",
        ))
        .expect("valid");
        let datagram = config.datagram.expect("on");
        let scheduler = datagram.scheduler();
        assert_eq!(
            (scheduler.mode, scheduler.dns_redundant, scheduler.quic),
            (Mode::Aggregate, false, QuicPolicy::Block)
        );
        assert!(!scheduler.redundant_ef);
        assert_eq!(
            scheduler.redundant_ports.as_slice(),
            [3478, 5060],
            "once each"
        );
        assert_eq!(datagram.port, 7400);
        assert_eq!(datagram.mtu, Some(1400));
        assert_eq!(datagram.mode, Mode::Aggregate);
        assert!(!datagram.dns_redundant);
        assert_eq!(datagram.quic, QuicPolicy::Block);
        assert_eq!(
            datagram.address_v6,
            Some("fd77::2".parse().expect("address"))
        );
        let redundant = keyed("[datagram]\nmode = \"redundant\"\naddress_v4 = \"10.77.0.2\"");
        assert_eq!(
            load(&redundant).expect("valid").datagram.map(|d| d.mode),
            Some(Mode::Redundant)
        );
    }

    #[test]
    fn bad_datagram_values_name_their_key() {
        let table = |body: &str| base(&format!("[datagram]\naddress_v4 = \"10.77.0.2\"\n{body}"));
        for (body, key, says) in [
            (
                "mode = \"fastest\"",
                "datagram.mode",
                "is not a datagram mode",
            ),
            ("quic = \"drop\"", "datagram.quic", "is not a QUIC policy"),
            ("port = 0", "datagram.port", "port 0"),
            ("port = 70000", "datagram.port", "from 1 to 65535"),
            ("mtu = 500", "datagram.mtu", "from 576 to 9000"),
            (
                "redundant_ports = [5060, 0]",
                "datagram.redundant_ports",
                "port 0",
            ),
            (
                "redundant_ports = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]",
                "datagram.redundant_ports",
                "at most 16",
            ),
            (
                "address_v6 = \"10.77.0.3\"",
                "datagram.address_v6",
                "not an IP address",
            ),
            (
                "address_v6 = \"ff02::1\"",
                "datagram.address_v6",
                "not a host address",
            ),
            (
                "address_v6 = \"fd00:6d70:62::2\"",
                "datagram.address_v6",
                "lies in the TUN's subnet fd00:6d70:62::/126",
            ),
            ("colour = 1", "datagram.colour", "unknown field"),
        ] {
            let (k, line, message) = problem(&table(body));
            assert_eq!(k, key, "{body}");
            assert_eq!(line, Some(6), "{body}");
            assert!(message.contains(says), "{body}: {message}");
        }
        for (v4, says) in [
            ("fd77::2", "not an IP address"),
            ("224.0.0.1", "not a host address"),
            ("172.29.77.2", "lies in the TUN's subnet 172.29.77.0/30"),
            ("banana", "not an IP address"),
        ] {
            let (k, line, message) = problem(&base(&format!("[datagram]\naddress_v4 = \"{v4}\"")));
            assert_eq!(k, "datagram.address_v4", "{v4}");
            assert_eq!(line, Some(5), "{v4}");
            assert!(message.contains(says), "{v4}: {message}");
        }
        let (k, line, message) = problem(&base("[datagram]\nmode = \"latency\""));
        assert_eq!(k, "datagram");
        assert_eq!(line, Some(4));
        assert!(message.contains("no address_v4"), "{message}");
    }

    #[test]
    fn unknown_keys_and_bad_concentrators_are_refused() {
        let (key, _, _) = problem(&base("colour = \"blue\""));
        assert_eq!(key, "colour");
        let text = base("").replace("10.77.9.2:7300", "10.77.9.2:0");
        let (key, _, _) = problem(&text);
        assert_eq!(key, "concentrator");
    }
}
