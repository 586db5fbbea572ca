//! The concentrator's config file.
//!
//! ```toml
//! listen = "0.0.0.0:7300"     # MPTCP listener; plain TCP clients are accepted too.
//!                             # "[::]:7300" serves IPv6 and IPv4.
//! handshake_timeout = "10s"   # optional: a peer must send its whole connect
//!                             # header within this, or is dropped
//! connect_timeout = "5s"      # optional: connecting to a destination
//! send_buffer = "auto"        # optional: "auto" (default), 0 (kernel autotuning) or bytes
//!                             # (SO_SNDBUF; 0: the kernel's autotuning). Less
//!                             # is queued on a surviving line ahead of what a
//!                             # dead one must re-send, so failover is faster;
//!                             # raise it for paths over ~50 Mbit/s x 100 ms
//!
//! [[client]]                  # one table per client, at least one
//! id = "lab"                  # 1-64 printable ASCII characters, no spaces
//! key = "base64..."           # from `mpbond keygen`; or instead:
//! # key_file = "lab.key"      # relative to this file's directory, mode 0600
//! max_connections = 1024      # optional: concurrent connections of this client
//! tunnel_v4 = "10.77.0.2"     # optional: its addresses in the datagram tunnel,
//! tunnel_v6 = "fd77::2"       # from the [datagram] pools (v6 needs v4 too);
//!                             # without them it has TCP only
//!
//! [datagram]                  # optional: the datagram tunnel's exit; without
//!                             # it the concentrator carries TCP only
//! tun = "mpbc0"               # optional: its TUN device
//! ipv4 = "10.77.0.1/24"       # the TUN's address and the pool the clients'
//! ipv6 = "fd77::1/64"         # tunnel addresses come from (v6 optional)
//! port = 7300                 # optional: UDP port for handshakes, data and
//!                             # probes (default: the port of `listen`)
//!
//! [policy]                    # optional: which destinations clients may reach
//! allow = ["198.51.100.0/24"] # exceptions to every deny rule, checked first
//! deny = ["203.0.113.0/24"]   # denied on top of the default list
//! ```
//!
//! The default deny list (private, loopback, link-local, multicast...) is
//! `crate::concentrator::policy::DEFAULT_DENY`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;
use toml::Spanned;

use super::client::is_interface_name;
use super::control::{ControlConfig, RawControl};
use super::{
    parse_nonzero_duration, parse_port, parse_prefix, parse_send_buffer, parse_socket_addr,
    ConfigError, ConfigFile, KeyNames, Parsed, PoolAddress, RawSendBuffer, SendBuffer, ValueError,
};
use crate::auth::Key;
use crate::crypto::{connect_key, PublicKey, StaticSecret};
use crate::wire::convert::ClientId;

/// The concentrator's validated configuration.
#[derive(Debug, Clone)]
pub struct ConcentratorConfig {
    /// Where to accept clients' MPTCP (or plain TCP) connections.
    pub listen: SocketAddr,
    /// How long a peer has to deliver its whole connect header.
    pub handshake_timeout: Duration,
    /// How long connecting to a destination may take.
    pub connect_timeout: Duration,
    /// `SO_SNDBUF` of each tunnel socket; 0: the kernel's autotuning.
    pub send_buffer: SendBuffer,
    /// The clients allowed in; ids are unique.
    pub clients: Vec<ClientConfig>,
    /// Which destinations clients may reach.
    pub policy: PolicyConfig,
    /// The datagram tunnel's exit; `None`: TCP only.
    pub datagram: Option<DatagramExitConfig>,
    /// This concentrator's X25519 secret (`private_key` or
    /// `private_key_file`): the datagram tunnel's identity, and with a
    /// client's public key the source of its connect-header key.
    pub private_key: Option<StaticSecret>,
    /// The control socket and metrics (`[control]`).
    pub control: ControlConfig,
}

/// The datagram tunnel's exit (`[datagram]`): the concentrator's TUN,
/// whose subnets are the pools of the clients' tunnel addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatagramExitConfig {
    /// The TUN device.
    pub tun: String,
    /// The TUN's IPv4 address; its subnet is the pool of `tunnel_v4`.
    pub ipv4: Ipv4Net,
    /// The TUN's IPv6 address; its subnet is the pool of `tunnel_v6`.
    pub ipv6: Option<Ipv6Net>,
    /// The UDP port for handshakes, data and probes.
    pub port: u16,
}

impl DatagramExitConfig {
    /// Default for `tun`.
    pub const DEFAULT_TUN: &'static str = "mpbc0";
}

/// A client's addresses inside the datagram tunnel: what its packets
/// come from, and where the TUN routes its replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelAddresses {
    /// IPv4, from the `datagram.ipv4` pool.
    pub v4: Ipv4Addr,
    /// IPv6, from the `datagram.ipv6` pool.
    pub v6: Option<Ipv6Addr>,
}

/// One client allowed to use the concentrator.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Its name, sent in every connect header.
    pub id: ClientId,
    /// Its connect-header key: `key` as given, or derived from its
    /// `public_key` and the concentrator's private key.
    pub key: Key,
    /// Its X25519 public key; `None`: it has a shared `key` and no
    /// datagram tunnel.
    pub public_key: Option<PublicKey>,
    /// How many connections it may have open at once.
    pub max_connections: usize,
    /// Its datagram tunnel addresses; `None`: TCP only. Unique across
    /// clients, inside the pools, not the TUN's own.
    pub tunnel: Option<TunnelAddresses>,
}

/// Destination policy as configured, on top of the built-in deny list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Prefixes always allowed, even if a deny rule covers them.
    pub allow: Vec<IpNet>,
    /// Prefixes denied in addition to the default list.
    pub deny: Vec<IpNet>,
}

impl ConcentratorConfig {
    /// Default for `handshake_timeout`.
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default for `connect_timeout`.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default for `send_buffer`: sized from what the kernel measures of
    /// each tunnel's subflows ([`crate::sendbuf`]); see the README for what
    /// fixed sizes and autotuning cost.
    pub const DEFAULT_SEND_BUFFER: SendBuffer = SendBuffer::Auto;
    /// Default for a client's `max_connections`.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
    /// Largest `max_connections` accepted.
    pub const MAX_MAX_CONNECTIONS: usize = 1_000_000;

    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = ConfigFile::read(path)?;
        Self::try_from(file.deserialize::<RawConcentratorConfig>()?)
    }
}

/// The config file as written; see [`ConcentratorConfig`] for meanings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConcentratorConfig {
    listen: Spanned<String>,
    handshake_timeout: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    send_buffer: Option<Spanned<RawSendBuffer>>,
    #[serde(default)]
    client: Vec<Spanned<RawClient>>,
    #[serde(default)]
    policy: RawPolicy,
    datagram: Option<Spanned<RawDatagram>>,
    private_key: Option<Spanned<String>>,
    private_key_file: Option<Spanned<String>>,
    control: Option<RawControl>,
}

/// The `[datagram]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatagram {
    tun: Option<Spanned<String>>,
    ipv4: Spanned<String>,
    ipv6: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
}

/// One `[[client]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    id: Spanned<String>,
    key: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    public_key: Option<Spanned<String>>,
    public_key_file: Option<Spanned<String>>,
    max_connections: Option<Spanned<i64>>,
    tunnel_v4: Option<Spanned<String>>,
    tunnel_v6: Option<Spanned<String>>,
}

/// The `[policy]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
}

impl TryFrom<Parsed<'_, RawConcentratorConfig>> for ConcentratorConfig {
    type Error = ConfigError;

    fn try_from(parsed: Parsed<'_, RawConcentratorConfig>) -> Result<Self, ConfigError> {
        let Parsed { file, value: raw } = parsed;
        let listen = parse_socket_addr(raw.listen.get_ref())
            .and_then(|addr| match addr.port() {
                0 => Err(ValueError::PortZero),
                _ => Ok(addr),
            })
            .map_err(|e| file.invalid("listen", raw.listen.span(), e))?;
        let timeout = |key: &str, value: &Option<Spanned<String>>, default| match value {
            None => Ok(default),
            Some(text) => parse_nonzero_duration(text.get_ref())
                .map_err(|e| file.invalid(key, text.span(), e)),
        };
        let handshake_timeout = timeout(
            "handshake_timeout",
            &raw.handshake_timeout,
            Self::DEFAULT_HANDSHAKE_TIMEOUT,
        )?;
        let connect_timeout = timeout(
            "connect_timeout",
            &raw.connect_timeout,
            Self::DEFAULT_CONNECT_TIMEOUT,
        )?;
        let send_buffer = match &raw.send_buffer {
            None => Self::DEFAULT_SEND_BUFFER,
            Some(value) => parse_send_buffer(value.get_ref())
                .map_err(|e| file.invalid("send_buffer", value.span(), e))?,
        };

        let datagram = match &raw.datagram {
            None => None,
            Some(table) => Some(datagram(file, table.get_ref(), listen.port())?),
        };

        let private_key = file
            .optional_key(
                "",
                KeyNames {
                    inline: ("private_key", raw.private_key.as_ref()),
                    file: ("private_key_file", raw.private_key_file.as_ref()),
                    secret: true,
                },
            )?
            .map(|key| StaticSecret::from_bytes(*key.as_bytes()));
        if let (Some(_), None) = (&datagram, &private_key) {
            return Err(file.missing(
                "private_key",
                ValueError::HalfKeyPair {
                    given: "[datagram]",
                    missing: "private_key or private_key_file",
                },
            ));
        }

        if raw.client.is_empty() {
            return Err(file.missing("client", ValueError::NoClient));
        }
        let mut clients = Vec::with_capacity(raw.client.len());
        let mut first_use: HashMap<String, (String, usize)> = HashMap::new();
        let mut tunnel_use: HashMap<IpAddr, (String, usize)> = HashMap::new();
        for (i, table) in raw.client.iter().enumerate() {
            let prefix = format!("client[{i}]");
            let client = client(
                file,
                &prefix,
                table,
                datagram.as_ref(),
                private_key.as_ref(),
            )?;
            let raw_client = table.get_ref();
            let addresses = [
                (
                    &raw_client.tunnel_v4,
                    client.tunnel.map(|t| IpAddr::V4(t.v4)),
                ),
                (
                    &raw_client.tunnel_v6,
                    client.tunnel.and_then(|t| t.v6).map(IpAddr::V6),
                ),
            ];
            for (text, addr) in addresses {
                let (Some(text), Some(addr)) = (text, addr) else {
                    continue;
                };
                let key = format!("{prefix}.tunnel_v{}", if addr.is_ipv4() { 4 } else { 6 });
                if let Some((first, line)) = tunnel_use.get(&addr) {
                    return Err(file.invalid(
                        key,
                        text.span(),
                        ValueError::DuplicateTunnelAddress {
                            addr,
                            first: first.clone(),
                            line: *line,
                        },
                    ));
                }
                tunnel_use.insert(addr, (key, file.line(text.span().start)));
            }
            let id = table.get_ref().id.clone();
            let line = file.line(id.span().start);
            if let Some((first, line)) = first_use.get(id.get_ref()) {
                return Err(file.invalid(
                    format!("{prefix}.id"),
                    id.span(),
                    ValueError::DuplicateClientId {
                        id: id.into_inner(),
                        first: first.clone(),
                        line: *line,
                    },
                ));
            }
            first_use.insert(id.into_inner(), (format!("{prefix}.id"), line));
            clients.push(client);
        }

        let prefixes = |key: &str, values: &[Spanned<String>]| {
            values
                .iter()
                .enumerate()
                .map(|(i, text)| {
                    parse_prefix(text.get_ref())
                        .map_err(|e| file.invalid(format!("policy.{key}[{i}]"), text.span(), e))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let policy = PolicyConfig {
            allow: prefixes("allow", &raw.policy.allow)?,
            deny: prefixes("deny", &raw.policy.deny)?,
        };

        let control = ControlConfig::from_raw(file, "concentrator", raw.control.as_ref())?;

        Ok(Self {
            listen,
            handshake_timeout,
            connect_timeout,
            send_buffer,
            clients,
            policy,
            datagram,
            private_key,
            control,
        })
    }
}

fn datagram(
    file: &ConfigFile,
    raw: &RawDatagram,
    listen_port: u16,
) -> Result<DatagramExitConfig, ConfigError> {
    let tun = match &raw.tun {
        None => DatagramExitConfig::DEFAULT_TUN.to_owned(),
        Some(name) if is_interface_name(name.get_ref()) => name.get_ref().clone(),
        Some(name) => {
            return Err(file.invalid(
                "datagram.tun",
                name.span(),
                ValueError::InterfaceName {
                    text: name.get_ref().clone(),
                },
            ))
        }
    };
    let bad_v4 = || {
        file.invalid(
            "datagram.ipv4",
            raw.ipv4.span(),
            ValueError::DatagramTun {
                text: raw.ipv4.get_ref().clone(),
                example: "10.77.0.1/24",
            },
        )
    };
    let ipv4: Ipv4Net = raw.ipv4.get_ref().parse().map_err(|_| bad_v4())?;
    // Room for the TUN and at least one client, the TUN on a host address.
    let addr = ipv4.addr();
    if ipv4.prefix_len() > 30
        || addr == ipv4.network()
        || addr == ipv4.broadcast()
        || !super::is_unicast_host(addr.into())
    {
        return Err(bad_v4());
    }
    let ipv6 = match &raw.ipv6 {
        None => None,
        Some(text) => {
            let bad = || {
                file.invalid(
                    "datagram.ipv6",
                    text.span(),
                    ValueError::DatagramTun {
                        text: text.get_ref().clone(),
                        example: "fd77::1/64",
                    },
                )
            };
            let net: Ipv6Net = text.get_ref().parse().map_err(|_| bad())?;
            if net.prefix_len() > 126
                || net.addr() == net.network()
                || !super::is_unicast_host(net.addr().into())
            {
                return Err(bad());
            }
            Some(net)
        }
    };
    let port = match &raw.port {
        None => listen_port,
        Some(value) => parse_port(*value.get_ref())
            .map_err(|e| file.invalid("datagram.port", value.span(), e))?,
    };
    Ok(DatagramExitConfig {
        tun,
        ipv4,
        ipv6,
        port,
    })
}

/// A client's tunnel address: of the pool's family, inside it, and not
/// the TUN's, network or broadcast address.
fn tunnel_address(text: &str, pool: IpNet, tun: IpAddr) -> Result<IpAddr, ValueError> {
    let example = if pool.addr().is_ipv4() {
        "10.77.0.2"
    } else {
        "fd77::2"
    };
    let addr: IpAddr = text
        .parse()
        .ok()
        .filter(|a: &IpAddr| a.is_ipv4() == pool.addr().is_ipv4())
        .ok_or_else(|| ValueError::IpAddr {
            text: text.to_owned(),
            example,
        })?;
    if !pool.contains(&addr) {
        return Err(ValueError::OutsidePool {
            addr,
            pool: pool.trunc(),
        });
    }
    let what = if addr == tun {
        Some(PoolAddress::Tun)
    } else if addr == pool.network() {
        Some(PoolAddress::Network)
    } else if pool.addr().is_ipv4() && addr == pool.broadcast() {
        Some(PoolAddress::Broadcast)
    } else {
        None
    };
    match what {
        Some(what) => Err(ValueError::ReservedPoolAddress {
            addr,
            pool: pool.trunc(),
            what,
        }),
        None => Ok(addr),
    }
}

fn client(
    file: &ConfigFile,
    prefix: &str,
    table: &Spanned<RawClient>,
    datagram: Option<&DatagramExitConfig>,
    private_key: Option<&StaticSecret>,
) -> Result<ClientConfig, ConfigError> {
    let raw = table.get_ref();
    let id = ClientId::try_from(raw.id.get_ref().as_str()).map_err(|e| {
        file.invalid(
            format!("{prefix}.id"),
            raw.id.span(),
            ValueError::ClientId(e),
        )
    })?;
    let public_key = file
        .optional_key(
            prefix,
            KeyNames {
                inline: ("public_key", raw.public_key.as_ref()),
                file: ("public_key_file", raw.public_key_file.as_ref()),
                secret: false,
            },
        )?
        .map(|key| PublicKey::from_bytes(*key.as_bytes()));
    let key = match (&public_key, private_key) {
        (None, _) => file.key(
            prefix,
            table.span(),
            raw.key.as_ref(),
            raw.key_file.as_ref(),
        )?,
        (Some(_), _) if raw.key.is_some() || raw.key_file.is_some() => {
            return Err(file.invalid(prefix, table.span(), ValueError::KeyAndPublicKeys))
        }
        (Some(_), None) => {
            return Err(file.invalid(
                prefix,
                table.span(),
                ValueError::HalfKeyPair {
                    given: "a client's public_key",
                    missing: "the concentrator's private_key or private_key_file",
                },
            ))
        }
        (Some(public), Some(secret)) => connect_key(secret, public)
            .map_err(|_| file.invalid(prefix, table.span(), ValueError::LowOrderKey))?,
    };
    let max_connections = match &raw.max_connections {
        None => ConcentratorConfig::DEFAULT_MAX_CONNECTIONS,
        Some(value) => usize::try_from(*value.get_ref())
            .ok()
            .filter(|n| (1..=ConcentratorConfig::MAX_MAX_CONNECTIONS).contains(n))
            .ok_or_else(|| {
                file.invalid(
                    format!("{prefix}.max_connections"),
                    value.span(),
                    ValueError::OutOfRange {
                        value: *value.get_ref(),
                        min: 1,
                        max: ConcentratorConfig::MAX_MAX_CONNECTIONS as i64,
                    },
                )
            })?,
    };
    let tunnel = tunnel(file, prefix, table, datagram)?;
    if tunnel.is_some() && public_key.is_none() {
        return Err(file.invalid(
            prefix,
            table.span(),
            ValueError::HalfKeyPair {
                given: "tunnel_v4",
                missing: "public_key (the datagram tunnel authenticates clients by it)",
            },
        ));
    }
    Ok(ClientConfig {
        id,
        key,
        public_key,
        max_connections,
        tunnel,
    })
}

/// `tunnel_address` checks the family already; this keeps a mismatch an
/// error rather than a panic.
fn wrong_family(file: &ConfigFile, key: &str, text: &Spanned<String>) -> ConfigError {
    file.invalid(
        key,
        text.span(),
        ValueError::IpAddr {
            text: text.get_ref().clone(),
            example: if key.ends_with("v4") {
                "10.77.0.2"
            } else {
                "fd77::2"
            },
        },
    )
}

/// A client's `tunnel_v4` and `tunnel_v6`, checked against the pools.
fn tunnel(
    file: &ConfigFile,
    prefix: &str,
    table: &Spanned<RawClient>,
    datagram: Option<&DatagramExitConfig>,
) -> Result<Option<TunnelAddresses>, ConfigError> {
    let raw = table.get_ref();
    let (v4_text, v6_text) = (&raw.tunnel_v4, &raw.tunnel_v6);
    let Some(v4_text) = v4_text else {
        return match v6_text {
            None => Ok(None),
            Some(_) => Err(file.invalid(prefix, table.span(), ValueError::TunnelV6WithoutV4)),
        };
    };
    let Some(datagram) = datagram else {
        return Err(file.invalid(
            format!("{prefix}.tunnel_v4"),
            v4_text.span(),
            ValueError::NoPool { pool: "ipv4" },
        ));
    };
    let v4 = match tunnel_address(
        v4_text.get_ref(),
        datagram.ipv4.into(),
        datagram.ipv4.addr().into(),
    ) {
        Ok(IpAddr::V4(v4)) => v4,
        Ok(IpAddr::V6(_)) => {
            return Err(wrong_family(file, &format!("{prefix}.tunnel_v4"), v4_text))
        }
        Err(e) => return Err(file.invalid(format!("{prefix}.tunnel_v4"), v4_text.span(), e)),
    };
    let v6 = match v6_text {
        None => None,
        Some(text) => {
            let key = format!("{prefix}.tunnel_v6");
            let Some(pool) = datagram.ipv6 else {
                return Err(file.invalid(key, text.span(), ValueError::NoPool { pool: "ipv6" }));
            };
            match tunnel_address(text.get_ref(), pool.into(), pool.addr().into()) {
                Ok(IpAddr::V6(v6)) => Some(v6),
                Ok(IpAddr::V4(_)) => return Err(wrong_family(file, &key, text)),
                Err(e) => return Err(file.invalid(key, text.span(), e)),
            }
        }
    };
    Ok(Some(TunnelAddresses { v4, v6 }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;
    use std::fs;
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::PathBuf;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    /// A directory under the system's temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("mpbond-config-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("temp dir");
            Self(dir)
        }

        fn write(&self, name: &str, text: &str, mode: u32) -> PathBuf {
            let path = self.0.join(name);
            fs::write(&path, text).expect("write");
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn parse(text: &str) -> Result<ConcentratorConfig, ConfigError> {
        parse_at("/etc/mpbond/concentrator.toml", text)
    }

    fn parse_at(path: impl Into<PathBuf>, text: &str) -> Result<ConcentratorConfig, ConfigError> {
        let file = ConfigFile::from_text(path, text);
        ConcentratorConfig::try_from(file.deserialize::<RawConcentratorConfig>()?)
    }

    /// The error and its causes, as `mpbond` prints them.
    fn message(err: &ConfigError) -> String {
        let mut text = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        text
    }

    fn error(text: &str) -> String {
        message(&parse(text).expect_err("config must be refused"))
    }

    #[test]
    fn a_full_config_reads_back() {
        let dir = TempDir::new("full");
        dir.write("site.key", &format!("{KEY}\n"), 0o600);
        let path = dir.write(
            "concentrator.toml",
            &format!(
                "listen = \"[::]:7300\"\n\
                 handshake_timeout = \"300ms\"\n\
                 connect_timeout = \"2s\"\n\
                 send_buffer = 0\n\
                 [[client]]\nid = \"lab\"\nkey = \"{KEY}\"\nmax_connections = 10\n\
                 [[client]]\nid = \"site\"\nkey_file = \"site.key\"\n\
                 [policy]\nallow = [\"198.51.100.0/24\"]\ndeny = [\"203.0.113.0/24\", \"2001:db8::/32\"]\n"
            ),
            0o644,
        );
        let config = ConcentratorConfig::load(&path).expect("valid config");
        assert_eq!(config.listen, "[::]:7300".parse().expect("addr"));
        assert_eq!(config.handshake_timeout, Duration::from_millis(300));
        assert_eq!(config.connect_timeout, Duration::from_secs(2));
        assert_eq!(config.send_buffer, SendBuffer::Kernel);
        assert_eq!(config.clients.len(), 2);
        assert_eq!(config.clients[0].id.as_str(), "lab");
        assert_eq!(config.clients[0].key.to_base64(), KEY);
        assert_eq!(config.clients[0].max_connections, 10);
        assert_eq!(config.clients[1].id.as_str(), "site");
        assert_eq!(config.clients[1].key.to_base64(), KEY);
        assert_eq!(
            config.clients[1].max_connections,
            ConcentratorConfig::DEFAULT_MAX_CONNECTIONS
        );
        let prefix = |s: &str| s.parse::<IpNet>().expect("prefix");
        assert_eq!(
            config.policy,
            PolicyConfig {
                allow: vec![prefix("198.51.100.0/24")],
                deny: vec![prefix("203.0.113.0/24"), prefix("2001:db8::/32")],
            }
        );
    }

    #[test]
    fn optional_keys_take_defaults() {
        let config = parse(&format!(
            "listen = \"0.0.0.0:7300\"\n[[client]]\nid = \"lab\"\nkey = \"{KEY}\"\n"
        ))
        .expect("valid");
        assert_eq!(
            config.handshake_timeout,
            ConcentratorConfig::DEFAULT_HANDSHAKE_TIMEOUT
        );
        assert_eq!(
            config.connect_timeout,
            ConcentratorConfig::DEFAULT_CONNECT_TIMEOUT
        );
        assert_eq!(config.policy, PolicyConfig::default());
        assert_eq!(config.send_buffer, ConcentratorConfig::DEFAULT_SEND_BUFFER);
    }

    #[test]
    fn a_huge_send_buffer_is_refused() {
        assert_eq!(
            error(&format!(
                "listen = \"0.0.0.0:7300\"\nsend_buffer = 100000000\n\
                 [[client]]\nid = \"lab\"\nkey = \"{KEY}\"\n"
            )),
            "/etc/mpbond/concentrator.toml:2: send_buffer: 100000000 is out of range: give a \
             number from 0 to 67108864"
        );
    }

    #[test]
    fn an_unknown_key_names_file_line_and_key() {
        let err = parse(&format!(
            "listen = \"0.0.0.0:7300\"\n\
             [[client]]\nid = \"a\"\nkey = \"{KEY}\"\n\
             [[client]]\nid = \"b\"\nkey = \"{KEY}\"\nmax_conections = 5\n"
        ))
        .expect_err("typo");
        assert_eq!(err.location().line, Some(8));
        assert_eq!(err.key(), Some("client[1].max_conections"));
        assert_eq!(
            message(&err),
            "/etc/mpbond/concentrator.toml:8: client[1].max_conections: unknown field \
             `max_conections`, expected one of `id`, `key`, `key_file`, `public_key`, \
             `public_key_file`, `max_connections`, `tunnel_v4`, `tunnel_v6`"
        );
        assert_eq!(
            error("listen = \"0.0.0.0:7300\"\nlisten_port = 1\n"),
            "/etc/mpbond/concentrator.toml:2: listen_port: unknown field `listen_port`, \
             expected one of `listen`, `handshake_timeout`, `connect_timeout`, `send_buffer`, \
             `client`, `policy`, `datagram`, `private_key`, `private_key_file`, `control`"
        );
    }

    #[test]
    fn wrong_types_and_missing_keys_are_located() {
        assert_eq!(
            error(&format!(
                "listen = \"0.0.0.0:7300\"\n[[client]]\nid = \"a\"\nkey = \"{KEY}\"\nmax_connections = \"many\"\n"
            )),
            "/etc/mpbond/concentrator.toml:5: client[0].max_connections: invalid type: \
             string \"many\", expected i64"
        );
        assert_eq!(
            error("listen = \"0.0.0.0:7300\"\n[[client]]\nkey = \"x\"\n"),
            "/etc/mpbond/concentrator.toml:2: client[0]: missing field `id`"
        );
        assert_eq!(
            error("[[client]]\nid = \"a\"\n"),
            "/etc/mpbond/concentrator.toml: missing field `listen`"
        );
        assert!(error("listen = \"0.0.0.0:7300\"\n[policy\n")
            .starts_with("/etc/mpbond/concentrator.toml:2: invalid table header"));
    }

    #[test]
    fn a_bad_key_says_what_a_key_is() {
        assert_eq!(
            error("listen = \"0.0.0.0:7300\"\n\n[[client]]\nid = \"lab\"\n# the key\nkey = \"c2VjcmV0\"\n"),
            "/etc/mpbond/concentrator.toml:6: client[0].key: not a key: key decodes to 6 \
             bytes: a key is 32 bytes in base64, as `mpbond keygen` prints"
        );
        let text =
            error("listen = \"0.0.0.0:7300\"\n[[client]]\nid = \"lab\"\nkey = \"not base64!\"\n");
        assert!(
            text.starts_with("/etc/mpbond/concentrator.toml:4: client[0].key: not a key: key is not valid base64"),
            "{text}"
        );
        assert!(
            !text.contains("not base64!"),
            "the key's text must not be echoed: {text}"
        );
    }

    #[test]
    fn key_and_key_file_are_exclusive_and_one_is_needed() {
        assert_eq!(
            error(&format!(
                "listen = \"0.0.0.0:7300\"\n[[client]]\nid = \"lab\"\nkey = \"{KEY}\"\nkey_file = \"lab.key\"\n"
            )),
            "/etc/mpbond/concentrator.toml:5: client[0].key_file: both key and key_file \
             are given: keep one"
        );
        assert_eq!(
            error("listen = \"0.0.0.0:7300\"\n[[client]]\nid = \"lab\"\n"),
            "/etc/mpbond/concentrator.toml:2: client[0]: no key: add key = \"...\" or \
             key_file = \"...\" (make one with `mpbond keygen --out FILE`)"
        );
    }

    #[test]
    fn a_duplicate_client_id_is_refused() {
        assert_eq!(
            error(&format!(
                "listen = \"0.0.0.0:7300\"\n\
                 [[client]]\nid = \"lab\"\nkey = \"{KEY}\"\n\
                 [[client]]\nid = \"lab\"\nkey = \"{KEY}\"\n"
            )),
            "/etc/mpbond/concentrator.toml:6: client[1].id: client id \"lab\" is already \
             used by client[0].id (line 3): give each client its own id"
        );
    }

    #[test]
    fn a_bad_client_id_is_refused() {
        assert_eq!(
            error(&format!(
                "listen = \"0.0.0.0:7300\"\n[[client]]\nid = \"my router\"\nkey = \"{KEY}\"\n"
            )),
            "/etc/mpbond/concentrator.toml:3: client[0].id: not a client id: client id has \
             byte 0x20 at position 2: only printable ASCII without spaces is allowed"
        );
    }

    #[test]
    fn a_bad_prefix_is_located() {
        let head = format!("listen = \"0.0.0.0:7300\"\n[[client]]\nid = \"a\"\nkey = \"{KEY}\"\n");
        assert_eq!(
            error(&format!(
                "{head}[policy]\ndeny = [\"10.0.0.0/8\",\n  \"203.0.113.0/33\"]\n"
            )),
            "/etc/mpbond/concentrator.toml:7: policy.deny[1]: \"203.0.113.0/33\" is not an IP \
             prefix: write an address and a length (\"203.0.113.0/24\", \"2001:db8::/32\") or \
             a single address"
        );
        assert_eq!(
            error(&format!("{head}[policy]\nallow = [\"198.51.100.1/24\"]\n")),
            "/etc/mpbond/concentrator.toml:6: policy.allow[0]: \"198.51.100.1/24\" has address \
             bits set past the prefix length: did you mean \"198.51.100.0/24\"?"
        );
    }

    #[test]
    fn other_bad_values_are_located() {
        let client = format!("[[client]]\nid = \"a\"\nkey = \"{KEY}\"\n");
        assert_eq!(
            error(&format!("listen = \"0.0.0.0\"\n{client}")),
            "/etc/mpbond/concentrator.toml:1: listen: \"0.0.0.0\" is not an address and port: \
             write \"0.0.0.0:7300\", \"[::]:7300\" or a specific address of this host"
        );
        assert!(
            error(&format!("listen = \"0.0.0.0:0\"\n{client}")).starts_with(
                "/etc/mpbond/concentrator.toml:1: listen: port 0 would pick a random port"
            )
        );
        assert_eq!(
            error(&format!(
                "listen = \"0.0.0.0:7300\"\nhandshake_timeout = \"5\"\n{client}"
            )),
            "/etc/mpbond/concentrator.toml:2: handshake_timeout: \"5\" is not a duration: \
             write a whole number and a unit, ms, s, m or h (\"300ms\", \"5s\")"
        );
        assert_eq!(
            error(&format!(
                "listen = \"0.0.0.0:7300\"\nconnect_timeout = \"0s\"\n{client}"
            )),
            "/etc/mpbond/concentrator.toml:2: connect_timeout: a duration of 0 leaves no time: \
             give at least 1ms"
        );
        for bad in ["0", "-1", "1000001"] {
            assert_eq!(
                error(&format!(
                    "listen = \"0.0.0.0:7300\"\n{client}max_connections = {bad}\n"
                )),
                format!(
                    "/etc/mpbond/concentrator.toml:5: client[0].max_connections: {bad} is out \
                     of range: give a number from 1 to 1000000"
                )
            );
        }
        assert!(error("listen = \"0.0.0.0:7300\"\n")
            .starts_with("/etc/mpbond/concentrator.toml: client: no [[client]] table"));
    }

    #[test]
    fn key_files_are_relative_to_the_config_and_private() {
        let dir = TempDir::new("keyfile");
        let config = dir.0.join("concentrator.toml");
        let text = "listen = \"0.0.0.0:7300\"\n[[client]]\nid = \"lab\"\nkey_file = \"lab.key\"\n";

        let missing = message(&parse_at(&config, text).expect_err("no key file"));
        let key_path = dir.0.join("lab.key");
        assert_eq!(
            missing,
            format!(
                "{}:4: client[0].key_file: cannot read key file {}: No such file or directory (os error 2)",
                config.display(),
                key_path.display()
            )
        );

        for mode in [0o644, 0o640, 0o604, 0o660] {
            dir.write("lab.key", KEY, mode);
            assert_eq!(
                message(&parse_at(&config, text).expect_err("readable key file")),
                format!(
                    "{}:4: client[0].key_file: key file {} has mode {mode:04o}, so group or \
                     others can access it: keys are secrets; run `chmod 600 {}`",
                    config.display(),
                    key_path.display(),
                    key_path.display()
                )
            );
        }

        dir.write("lab.key", "hello\n", 0o600);
        let garbage = message(&parse_at(&config, text).expect_err("not a key"));
        assert!(
            garbage.contains("client[0].key_file: key file")
                && garbage.contains("holds no valid key"),
            "{garbage}"
        );

        dir.write("lab.key", &format!("{KEY}\n"), 0o400);
        let config = parse_at(&config, text).expect("private key file");
        assert_eq!(config.clients[0].key.to_base64(), KEY);
    }

    const HEAD: &str = "listen = \"0.0.0.0:7300\"\n\
                        private_key = \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"\n\
                        [datagram]\nipv4 = \"10.77.0.1/24\"\nipv6 = \"fd77::1/64\"\n";

    fn with_clients(clients: &[&str]) -> String {
        let mut text = HEAD.to_owned();
        for (i, extra) in clients.iter().enumerate() {
            let byte = u8::try_from(i + 1).expect("few clients");
            let public = crate::crypto::StaticSecret::from_bytes([byte; 32]).public_key();
            text.push_str(&format!(
                "[[client]]\nid = \"c{i}\"\npublic_key = \"{public}\"\n{extra}\n"
            ));
        }
        text
    }

    #[test]
    fn tunnel_clients_need_public_keys_and_the_exit_a_private_key() {
        let no_secret = with_clients(&["tunnel_v4 = \"10.77.0.2\""]).replace("private_key", "# ");
        let err = parse(&no_secret).expect_err("no private key");
        assert!(message(&err).contains("private_key"), "{}", message(&err));
        let shared =
            format!("{HEAD}[[client]]\nid = \"c\"\nkey = \"{KEY}\"\ntunnel_v4 = \"10.77.0.2\"\n");
        let err = parse(&shared).expect_err("no public key");
        assert!(message(&err).contains("public_key"), "{}", message(&err));
        let config = parse(&with_clients(&["tunnel_v4 = \"10.77.0.2\""])).expect("valid");
        let secret = config.private_key.as_ref().expect("private key");
        let public = config.clients[0].public_key.expect("public key");
        let derived = crate::crypto::connect_key(secret, &public).expect("derive");
        assert_eq!(config.clients[0].key.to_base64(), derived.to_base64());
    }

    #[test]
    fn the_datagram_exit_and_tunnel_addresses_read_back() {
        let config = parse(&with_clients(&[
            "tunnel_v4 = \"10.77.0.2\"\ntunnel_v6 = \"fd77::2\"",
            "tunnel_v4 = \"10.77.0.3\"",
            "",
        ]))
        .expect("valid");
        assert_eq!(
            config.datagram,
            Some(DatagramExitConfig {
                tun: "mpbc0".to_owned(),
                ipv4: "10.77.0.1/24".parse().expect("net"),
                ipv6: Some("fd77::1/64".parse().expect("net")),
                port: 7300,
            })
        );
        assert_eq!(
            config.clients[0].tunnel,
            Some(TunnelAddresses {
                v4: Ipv4Addr::new(10, 77, 0, 2),
                v6: Some("fd77::2".parse().expect("v6")),
            })
        );
        assert_eq!(
            config.clients[1].tunnel,
            Some(TunnelAddresses {
                v4: Ipv4Addr::new(10, 77, 0, 3),
                v6: None,
            })
        );
        assert_eq!(config.clients[2].tunnel, None, "a TCP-only client");

        let config = parse(&format!(
            "listen = \"0.0.0.0:7300\"\nprivate_key = \"{KEY}\"\n[datagram]\ntun = \"exit0\"\n\
             ipv4 = \"100.64.77.1/24\"\nport = 7400\n[[client]]\nid = \"a\"\nkey = \"{KEY}\"\n"
        ))
        .expect("valid");
        let datagram = config.datagram.expect("configured");
        assert_eq!((datagram.tun.as_str(), datagram.port), ("exit0", 7400));
        assert_eq!(datagram.ipv6, None);
        assert_eq!(
            parse(&format!(
                "listen = \"0.0.0.0:7300\"\n[[client]]\nid = \"a\"\nkey = \"{KEY}\"\n"
            ))
            .expect("valid")
            .datagram,
            None
        );
    }

    #[test]
    fn tunnel_addresses_must_come_from_the_pools_once() {
        for (extra, says) in [
            (
                "tunnel_v4 = \"10.77.1.2\"",
                "client[0].tunnel_v4: 10.77.1.2 is outside the pool 10.77.0.0/24: give an \
                 address in 10.77.0.0/24",
            ),
            (
                "tunnel_v4 = \"10.77.0.1\"",
                "client[0].tunnel_v4: 10.77.0.1 is the concentrator TUN's own address of the \
                 pool 10.77.0.0/24: give each client another address of the pool",
            ),
            (
                "tunnel_v4 = \"10.77.0.0\"",
                "client[0].tunnel_v4: 10.77.0.0 is the network address of the pool",
            ),
            (
                "tunnel_v4 = \"10.77.0.255\"",
                "client[0].tunnel_v4: 10.77.0.255 is the broadcast address of the pool",
            ),
            (
                "tunnel_v4 = \"fd77::2\"",
                "client[0].tunnel_v4: \"fd77::2\" is not an IP address of the right family",
            ),
            (
                "tunnel_v4 = \"10.77.0.2\"\ntunnel_v6 = \"fd78::2\"",
                "client[0].tunnel_v6: fd78::2 is outside the pool fd77::/64",
            ),
            (
                "tunnel_v4 = \"10.77.0.2\"\ntunnel_v6 = \"fd77::1\"",
                "client[0].tunnel_v6: fd77::1 is the concentrator TUN's own address",
            ),
            (
                "tunnel_v6 = \"fd77::2\"",
                "client[0]: tunnel_v6 without tunnel_v4",
            ),
        ] {
            let text = error(&with_clients(&[extra]));
            assert!(text.contains(says), "{extra}: {text}");
            assert!(text.starts_with("/etc/mpbond/concentrator.toml:"), "{text}");
        }

        assert_eq!(
            error(&with_clients(&[
                "tunnel_v4 = \"10.77.0.2\"\ntunnel_v6 = \"fd77::2\"",
                "tunnel_v4 = \"10.77.0.3\"\ntunnel_v6 = \"fd77:0::2\"",
            ])),
            "/etc/mpbond/concentrator.toml:15: client[1].tunnel_v6: fd77::2 is already the \
             tunnel address of client[0].tunnel_v6 (line 10): give each client its own"
        );
        assert!(error(&with_clients(&[
            "tunnel_v4 = \"10.77.0.2\"",
            "tunnel_v4 = \"10.77.0.2\""
        ]))
        .starts_with(
            "/etc/mpbond/concentrator.toml:13: client[1].tunnel_v4: 10.77.0.2 is already"
        ));

        // Tunnel addresses without the pools they come from.
        let no_table = format!(
            "listen = \"0.0.0.0:7300\"\n[[client]]\nid = \"a\"\nkey = \"{KEY}\"\ntunnel_v4 = \"10.77.0.2\"\n"
        );
        assert!(error(&no_table).starts_with(
            "/etc/mpbond/concentrator.toml:5: client[0].tunnel_v4: there is no pool for this \
             address: add ipv4 = "
        ));
        let no_v6 = format!(
            "listen = \"0.0.0.0:7300\"\nprivate_key = \"{KEY}\"\n[datagram]\nipv4 = \"10.77.0.1/24\"\n\
             [[client]]\nid = \"a\"\nkey = \"{KEY}\"\ntunnel_v4 = \"10.77.0.2\"\ntunnel_v6 = \"fd77::2\"\n"
        );
        assert!(error(&no_v6)
            .contains("client[0].tunnel_v6: there is no pool for this address: add ipv6"));
    }

    #[test]
    fn a_bad_datagram_table_is_located() {
        let client = format!("[[client]]\nid = \"a\"\nkey = \"{KEY}\"\n");
        for (table, key) in [
            ("ipv4 = \"10.77.0.0/24\"", "datagram.ipv4"),
            ("ipv4 = \"10.77.0.255/24\"", "datagram.ipv4"),
            ("ipv4 = \"10.77.0.1/31\"", "datagram.ipv4"),
            ("ipv4 = \"10.77.0.1\"", "datagram.ipv4"),
            ("ipv4 = \"fd77::1/64\"", "datagram.ipv4"),
            (
                "ipv4 = \"10.77.0.1/24\"\nipv6 = \"fd77::/64\"",
                "datagram.ipv6",
            ),
            (
                "ipv4 = \"10.77.0.1/24\"\nipv6 = \"fd77::1/127\"",
                "datagram.ipv6",
            ),
            ("ipv4 = \"10.77.0.1/24\"\ntun = \"a/b\"", "datagram.tun"),
            ("ipv4 = \"10.77.0.1/24\"\nport = 0", "datagram.port"),
            ("ipv4 = \"10.77.0.1/24\"\nport = 65536", "datagram.port"),
        ] {
            let err = parse(&format!(
                "listen = \"0.0.0.0:7300\"\n[datagram]\n{table}\n{client}"
            ))
            .expect_err("refused");
            assert_eq!(err.key(), Some(key), "{table}");
            assert!(err.location().line.is_some(), "{table}");
        }
        assert_eq!(
            error(&format!(
                "listen = \"0.0.0.0:7300\"\n[datagram]\nipv4 = \"10.77.0.0/24\"\n{client}"
            )),
            "/etc/mpbond/concentrator.toml:3: datagram.ipv4: \"10.77.0.0/24\" is not a TUN \
             address: write the TUN's own address and the prefix the clients' tunnel addresses \
             come from (\"10.77.0.1/24\")"
        );
        assert!(error(&format!(
            "listen = \"0.0.0.0:7300\"\n[datagram]\ntun = \"x\"\n{client}"
        ))
        .contains("missing field `ipv4`"));
    }

    #[test]
    fn an_unreadable_config_file_is_named() {
        let err = ConcentratorConfig::load(Path::new("/nonexistent/mpbond.toml"))
            .expect_err("no such file");
        assert_eq!(
            message(&err),
            "/nonexistent/mpbond.toml: cannot read the config file: No such file or directory (os error 2)"
        );
    }
}
