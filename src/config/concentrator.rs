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
//!
//! [policy]                    # optional: which destinations clients may reach
//! allow = ["198.51.100.0/24"] # exceptions to every deny rule, checked first
//! deny = ["203.0.113.0/24"]   # denied on top of the default list
//! ```
//!
//! The default deny list (private, loopback, link-local, multicast...) is
//! `crate::concentrator::policy::DEFAULT_DENY`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::{
    parse_nonzero_duration, parse_prefix, parse_send_buffer, parse_socket_addr, ConfigError,
    ConfigFile, Parsed, RawSendBuffer, SendBuffer, ValueError,
};
use crate::auth::Key;
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
}

/// One client allowed to use the concentrator.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Its name, sent in every connect header.
    pub id: ClientId,
    /// Its secret.
    pub key: Key,
    /// How many connections it may have open at once.
    pub max_connections: usize,
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
}

/// One `[[client]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    id: Spanned<String>,
    key: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    max_connections: Option<Spanned<i64>>,
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

        if raw.client.is_empty() {
            return Err(file.missing("client", ValueError::NoClient));
        }
        let mut clients = Vec::with_capacity(raw.client.len());
        let mut first_use: HashMap<String, (String, usize)> = HashMap::new();
        for (i, table) in raw.client.iter().enumerate() {
            let prefix = format!("client[{i}]");
            let client = client(file, &prefix, table)?;
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

        Ok(Self {
            listen,
            handshake_timeout,
            connect_timeout,
            send_buffer,
            clients,
            policy,
        })
    }
}

fn client(
    file: &ConfigFile,
    prefix: &str,
    table: &Spanned<RawClient>,
) -> Result<ClientConfig, ConfigError> {
    let raw = table.get_ref();
    let id = ClientId::try_from(raw.id.get_ref().as_str()).map_err(|e| {
        file.invalid(
            format!("{prefix}.id"),
            raw.id.span(),
            ValueError::ClientId(e),
        )
    })?;
    let key = file.key(
        prefix,
        table.span(),
        raw.key.as_ref(),
        raw.key_file.as_ref(),
    )?;
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
    Ok(ClientConfig {
        id,
        key,
        max_connections,
    })
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
             `max_conections`, expected one of `id`, `key`, `key_file`, `max_connections`"
        );
        assert_eq!(
            error("listen = \"0.0.0.0:7300\"\nlisten_port = 1\n"),
            "/etc/mpbond/concentrator.toml:2: listen_port: unknown field `listen_port`, \
             expected one of `listen`, `handshake_timeout`, `connect_timeout`, `send_buffer`, \
             `client`, `policy`"
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
