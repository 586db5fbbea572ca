//! Configuration files: TOML → raw structs → validated config.
//!
//! Each role has one file and one module ([`concentrator`]). A role's file
//! is deserialized into serde `Raw*` structs that refuse unknown keys and
//! wrap values in [`toml::Spanned`], so that their position in the file is
//! known; `TryFrom<Parsed<..>>` then checks every value and builds the
//! validated config, which holds no `Option` nor unparsed text.
//!
//! Every error names the file, the line and the key, then says what is wrong
//! and what to write instead:
//!
//! ```text
//! /etc/mpbond/concentrator.toml:7: client[0].key: not a key: key is not valid
//! base64: a key is 32 bytes in base64, as `mpbond keygen` prints
//! ```
//!
//! The helpers here ([`parse_duration`], [`parse_socket_addr`],
//! [`parse_prefix`], [`ConfigFile::key`]) are shared by the roles.

pub mod client;
pub mod concentrator;
pub mod control;

pub use client::ClientConfig;
pub use concentrator::ConcentratorConfig;
pub use control::ControlConfig;

use std::fmt;
use std::fs::File;
use std::io::{self, Read as _};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use toml::Spanned;

use crate::auth::{AuthError, Key};
use crate::wire::convert::ClientIdError;

/// Longest key file read; a key file holds one line of 44 characters.
const MAX_KEY_FILE_LEN: u64 = 4096;

/// Where in a config file something is: the file, and the line if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The config file.
    pub path: PathBuf,
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.path.display()),
            None => write!(f, "{}", self.path.display()),
        }
    }
}

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the config file", .path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// The file is not valid TOML, has an unknown key, misses a required key
    /// or has a value of the wrong type.
    #[error("{at}: {}{message}", key_prefix(.key))]
    Parse {
        /// Where.
        at: Location,
        /// The key concerned, as a path (`client[1].foo`), when known.
        key: Option<String>,
        /// What the TOML reader said, on one line.
        message: String,
    },
    /// A value has the right type but is not acceptable.
    #[error("{at}: {key}")]
    Invalid {
        /// Where.
        at: Location,
        /// The key concerned, as a path (`client[0].key`).
        key: String,
        /// What is wrong with it and what to write instead (boxed: errors
        /// travel in every `Result` of parsing, so they stay small).
        #[source]
        problem: Box<ValueError>,
    },
}

fn key_prefix(key: &Option<String>) -> String {
    key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default()
}

impl ConfigError {
    /// Where the problem is.
    pub fn location(&self) -> Location {
        match self {
            Self::Read { path, .. } => Location {
                path: path.clone(),
                line: None,
            },
            Self::Parse { at, .. } | Self::Invalid { at, .. } => at.clone(),
        }
    }

    /// The key concerned, when known.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Read { .. } => None,
            Self::Parse { key, .. } => key.as_deref(),
            Self::Invalid { key, .. } => Some(key),
        }
    }
}

/// What is wrong with one value of a config file.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// A `send_buffer` that is neither a number of bytes nor "auto".
    #[error(
        "{text:?} is not a send buffer: write \"auto\" (sized from what the kernel \
         measures), 0 (the kernel's autotuning) or a number of bytes"
    )]
    SendBuffer {
        /// The value as written.
        text: String,
    },
    /// Not a duration.
    #[error(
        "{text:?} is not a duration: write a whole number and a unit, \
         ms, s, m or h (\"300ms\", \"5s\")"
    )]
    Duration {
        /// The value as written.
        text: String,
    },
    /// A duration of zero where time must pass.
    #[error("a duration of 0 leaves no time: give at least 1ms")]
    ZeroDuration,
    /// Not an address and port.
    #[error(
        "{text:?} is not an address and port: write \"0.0.0.0:7300\", \
         \"[::]:7300\" or a specific address of this host"
    )]
    SocketAddr {
        /// The value as written.
        text: String,
    },
    /// A port list longer than the tunnel handles.
    #[error("{count} ports: at most {max} can be sent on every line; keep the real-time ones")]
    TooManyPorts {
        /// Distinct ports given.
        count: usize,
        /// The most allowed.
        max: usize,
    },
    /// Port 0 where a fixed port is needed.
    #[error("port 0 would pick a random port: give the port clients connect to, e.g. 7300")]
    PortZero,
    /// Not an IP prefix.
    #[error(
        "{text:?} is not an IP prefix: write an address and a length \
         (\"203.0.113.0/24\", \"2001:db8::/32\") or a single address"
    )]
    Prefix {
        /// The value as written.
        text: String,
    },
    /// A prefix with bits set past its length.
    #[error("{text:?} has address bits set past the prefix length: did you mean \"{network}\"?")]
    PrefixHostBits {
        /// The value as written.
        text: String,
        /// The prefix it probably means.
        network: IpNet,
    },
    /// A number out of its range.
    #[error("{value} is out of range: give a number from {min} to {max}")]
    OutOfRange {
        /// The value as written.
        value: i64,
        /// Smallest allowed.
        min: i64,
        /// Largest allowed.
        max: i64,
    },
    /// No `[[client]]` table at all.
    #[error(
        "no [[client]] table: add one with an id and a key for each client \
         (`mpbond keygen` makes a key)"
    )]
    NoClient,
    /// Not a client id.
    #[error("not a client id")]
    ClientId(#[source] ClientIdError),
    /// A client id used twice.
    #[error(
        "client id {id:?} is already used by {first} (line {line}): give each client its own id"
    )]
    DuplicateClientId {
        /// The id.
        id: String,
        /// The key path of the first use.
        first: String,
        /// Line of the first use.
        line: usize,
    },
    /// An inline key that does not decode.
    #[error("not a key")]
    Key(#[source] AuthError),
    /// Both `key` and `key_file`.
    #[error("both key and key_file are given: keep one")]
    KeyAndKeyFile,
    /// Both forms of another key.
    #[error("both {inline} and {file} are given: keep one")]
    BothKeys {
        /// The inline key's name.
        inline: &'static str,
        /// The key file's name.
        file: &'static str,
    },
    /// A shared `key` beside the public keys it is derived from.
    #[error(
        "both a shared key and public keys are given: with public keys the connect \
         key is derived from them; remove key / key_file"
    )]
    KeyAndPublicKeys,
    /// One half of a key pair without the other.
    #[error("{given} is given without {missing}: the tunnel needs both (see `mpbond keygen`)")]
    HalfKeyPair {
        /// The key given.
        given: &'static str,
        /// The key missing.
        missing: &'static str,
    },
    /// A key pair that makes no shared secret.
    #[error("this key pair makes no shared secret (a low-order public key): copy the keys again")]
    LowOrderKey,
    /// Neither `key` nor `key_file`.
    #[error(
        "no key: add key = \"...\" or key_file = \"...\" (make one with \
         `mpbond keygen --out FILE`)"
    )]
    NoKey,
    /// A key file that cannot be opened or read.
    #[error("cannot read key file {}", .path.display())]
    KeyFileRead {
        /// The key file, resolved against the config file's directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A key file that group or others may access.
    #[error(
        "key file {} has mode {mode:04o}, so group or others can access it: \
         keys are secrets; run `chmod 600 {}`",
        .path.display(), .path.display()
    )]
    KeyFileMode {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file that holds no valid key.
    #[error("key file {} holds no valid key", .path.display())]
    KeyFileContent {
        /// The key file.
        path: PathBuf,
        /// What is wrong with its content.
        #[source]
        source: AuthError,
    },
    /// Not a connect mode.
    #[error("{text:?} is not a connect mode: write \"fast\" (answer the LAN host at once) or \"strict\" (wait until the server answered)")]
    ConnectMode {
        /// The value as written.
        text: String,
    },
    /// Not an IP address.
    #[error("{text:?} is not an IP address of the right family: write e.g. \"{example}\"")]
    IpAddr {
        /// The value as written.
        text: String,
        /// An example of what is expected.
        example: &'static str,
    },
    /// Not a TUN address with room for the redirect's fake peer.
    #[error(
        "{text:?} is not a usable TUN address: write the TUN's own address and a prefix \
         with room for one more host (\"{example}\"); the next address is used internally"
    )]
    TunAddress {
        /// The value as written.
        text: String,
        /// An example of what is expected.
        example: &'static str,
    },
    /// No `[[uplink]]` table.
    #[error("no [[uplink]] table: add one per line with a name and an interface")]
    NoUplink,
    /// More uplinks than the kernel path manager can use.
    #[error("{count} uplinks: the kernel's MPTCP path manager handles at most {max}")]
    TooManyUplinks {
        /// How many were given.
        count: usize,
        /// The most allowed.
        max: usize,
    },
    /// An uplink name or interface used twice.
    #[error("{value:?} is already used by {first}: give each uplink its own name and interface")]
    DuplicateUplink {
        /// The value used twice.
        value: String,
        /// The key path of the first use.
        first: String,
    },
    /// Not an uplink name.
    #[error("{text:?} is not an uplink name: use 1-15 letters, digits, '-' or '_'")]
    UplinkName {
        /// The value as written.
        text: String,
    },
    /// Not a Linux interface name.
    #[error("{text:?} is not an interface name: Linux names have 1-15 characters, no '/', ':' or spaces")]
    InterfaceName {
        /// The value as written.
        text: String,
    },
    /// Every uplink is a backup.
    #[error("every uplink is a backup: at least one must carry traffic while it works")]
    OnlyBackups,
    /// Not a datagram scheduling mode.
    #[error(
        "{text:?} is not a datagram mode: write \"latency\" (each flow on the fastest \
         working line), \"redundant\" (every packet on every line) or \"aggregate\" \
         (flows spread over the lines by their rate)"
    )]
    DatagramMode {
        /// The value as written.
        text: String,
    },
    /// Not a QUIC policy.
    #[error(
        "{text:?} is not a QUIC policy: write \"tunnel\" (carry QUIC like any UDP) or \
         \"block\" (refuse it, so that browsers fall back to TCP)"
    )]
    QuicPolicy {
        /// The value as written.
        text: String,
    },
    /// An address that is not one unicast host.
    #[error(
        "{addr} is not a host address: give a unicast address (not unspecified, loopback, \
         multicast or broadcast)"
    )]
    NotUnicast {
        /// The address.
        addr: IpAddr,
    },
    /// A tunnel address inside the client's own TUN subnet.
    #[error(
        "{addr} lies in the TUN's subnet {tun}: the tunnel address comes from the \
         concentrator's pool (its tunnel_v4 / tunnel_v6 for this client)"
    )]
    TunnelAddressInTun {
        /// The address.
        addr: IpAddr,
        /// The TUN's subnet.
        tun: IpNet,
    },
    /// A `[datagram]` table without the client's tunnel address.
    #[error(
        "no address_v4: add address_v4 = \"...\", the address the concentrator's \
         tunnel_v4 gives this client (or enabled = false to keep the tunnel off)"
    )]
    NoTunnelAddress,
    /// Not an address and prefix for the concentrator's datagram TUN.
    #[error(
        "{text:?} is not a TUN address: write the TUN's own address and the prefix the \
         clients' tunnel addresses come from (\"{example}\")"
    )]
    DatagramTun {
        /// The value as written.
        text: String,
        /// An example of what is expected.
        example: &'static str,
    },
    /// A client's tunnel address given without the pool it comes from.
    #[error(
        "there is no pool for this address: add {pool} = \"ADDRESS/PREFIX\" to the \
         [datagram] table (the concentrator's TUN address and the clients' pool)"
    )]
    NoPool {
        /// The key that gives the pool (`datagram.ipv4`).
        pool: &'static str,
    },
    /// A client's `tunnel_v6` without `tunnel_v4`.
    #[error(
        "tunnel_v6 without tunnel_v4: add tunnel_v4 = \"...\" from the datagram.ipv4 pool \
         (the client's tunnel needs an IPv4 address)"
    )]
    TunnelV6WithoutV4,
    /// A client's tunnel address outside the pool.
    #[error("{addr} is outside the pool {pool}: give an address in {pool}")]
    OutsidePool {
        /// The address.
        addr: IpAddr,
        /// The pool.
        pool: IpNet,
    },
    /// A client's tunnel address that the pool cannot give to a host.
    #[error("{addr} is {what} of the pool {pool}: give each client another address of the pool")]
    ReservedPoolAddress {
        /// The address.
        addr: IpAddr,
        /// The pool.
        pool: IpNet,
        /// Which address of the pool it is.
        what: PoolAddress,
    },
    /// A tunnel address given to two clients.
    #[error(
        "{addr} is already the tunnel address of {first} (line {line}): give each client \
         its own"
    )]
    DuplicateTunnelAddress {
        /// The address.
        addr: IpAddr,
        /// The key path of the first use.
        first: String,
        /// Line of the first use.
        line: usize,
    },
    /// A control socket path that cannot be a Unix socket's.
    #[error(
        "{text:?} cannot be a control socket: give a file path of at most {max} bytes \
         (e.g. \"/run/mpbond/client-home.sock\")"
    )]
    ControlSocket {
        /// The value as written.
        text: String,
        /// The longest path allowed.
        max: usize,
    },
    /// Port 0 for the metrics.
    #[error(
        "port 0 would pick a random port: give the port Prometheus scrapes, \
         e.g. \"127.0.0.1:9311\""
    )]
    MetricsPortZero,
    /// A file that is neither a client's nor a concentrator's config.
    #[error(
        "not an mpbond config: a client's has `concentrator = ...`, a concentrator's \
         `listen = ...`"
    )]
    UnknownRole,
}

/// An address of a pool that no client can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolAddress {
    /// The concentrator's TUN has it.
    Tun,
    /// The IPv4 network address (all host bits zero).
    Network,
    /// The IPv4 broadcast address (all host bits one).
    Broadcast,
}

impl fmt::Display for PoolAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tun => "the concentrator TUN's own address",
            Self::Network => "the network address",
            Self::Broadcast => "the broadcast address",
        })
    }
}

/// A config file's text and where it came from.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    path: PathBuf,
    text: String,
}

/// A raw (deserialized, unchecked) value together with the file it came
/// from: what the validated configs are converted from with `TryFrom`.
#[derive(Debug)]
pub struct Parsed<'a, T> {
    /// The file, for error locations and relative paths.
    pub file: &'a ConfigFile,
    /// The value as deserialized.
    pub value: T,
}

impl ConfigFile {
    /// Reads the file at `path`.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::from_text(path, text))
    }

    /// A config file with the given text, as if read from `path` (which
    /// locates errors and relative key files).
    pub fn from_text(path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            text: text.into(),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deserializes the file into a raw struct, locating any error.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<Parsed<'_, T>, ConfigError> {
        match toml::from_str(&self.text) {
            Ok(value) => Ok(Parsed { file: self, value }),
            Err(e) => {
                // toml reports a problem with the whole document (a missing
                // top-level key) at 0..0, which is no place in the file.
                let offset = e
                    .span()
                    .filter(|span| *span != (0..0))
                    .map(|span| span.start);
                Err(ConfigError::Parse {
                    at: self.location(offset),
                    key: offset.and_then(|offset| key_at(&self.text, offset)),
                    message: e.message().trim().replace('\n', "; "),
                })
            }
        }
    }

    /// The location of byte `offset` of the text.
    pub fn location(&self, offset: Option<usize>) -> Location {
        Location {
            path: self.path.clone(),
            line: offset.map(|offset| self.line(offset)),
        }
    }

    /// The 1-based line holding byte `offset` of the text.
    pub fn line(&self, offset: usize) -> usize {
        let before = self.text.get(..offset).unwrap_or(&self.text);
        before.bytes().filter(|&b| b == b'\n').count() + 1
    }

    /// An error about the value of `key` found at `span`.
    pub fn invalid(
        &self,
        key: impl Into<String>,
        span: Range<usize>,
        problem: ValueError,
    ) -> ConfigError {
        ConfigError::Invalid {
            at: self.location(Some(span.start)),
            key: key.into(),
            problem: Box::new(problem),
        }
    }

    /// An error about `key`, which is missing and so has no place in the
    /// file.
    pub fn missing(&self, key: impl Into<String>, problem: ValueError) -> ConfigError {
        ConfigError::Invalid {
            at: self.location(None),
            key: key.into(),
            problem: Box::new(problem),
        }
    }

    /// `path` as written in the file: relative paths are relative to the
    /// config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        match self.path.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_owned(),
        }
    }

    /// The key given either inline (`key`) or in a file (`key_file`) for the
    /// table at `table` (its span) named `prefix` (`client[0]`).
    ///
    /// A key file is read relative to the config file's directory; it must
    /// not be accessible by group or others (the check is on the opened
    /// file, so it cannot change between check and read).
    pub fn key(
        &self,
        prefix: &str,
        table: Range<usize>,
        key: Option<&Spanned<String>>,
        key_file: Option<&Spanned<String>>,
    ) -> Result<Key, ConfigError> {
        match (key, key_file) {
            (Some(_), Some(file)) => Err(self.invalid(
                child(prefix, "key_file"),
                file.span(),
                ValueError::KeyAndKeyFile,
            )),
            (None, None) if prefix.is_empty() => Err(self.missing("key", ValueError::NoKey)),
            (None, None) => Err(self.invalid(prefix, table, ValueError::NoKey)),
            (Some(key), None) => Key::from_base64(key.get_ref())
                .map_err(|e| self.invalid(child(prefix, "key"), key.span(), ValueError::Key(e))),
            (None, Some(file)) => read_key_file(&self.resolve(Path::new(file.get_ref())))
                .map_err(|e| self.invalid(child(prefix, "key_file"), file.span(), e)),
        }
    }
}

/// One of a pair of keys named `inline` / `file` (`private_key` /
/// `private_key_file`), for the table `prefix`: `None` when neither is
/// given. A secret's file must not be accessible by group or others; a
/// public key's may be.
pub(crate) struct KeyNames<'a> {
    pub(crate) inline: (&'static str, Option<&'a Spanned<String>>),
    pub(crate) file: (&'static str, Option<&'a Spanned<String>>),
    pub(crate) secret: bool,
}

impl ConfigFile {
    /// The 32-byte key given as `names.inline` or in the file
    /// `names.file`, if either is.
    pub(crate) fn optional_key(
        &self,
        prefix: &str,
        names: KeyNames<'_>,
    ) -> Result<Option<Key>, ConfigError> {
        let (inline_name, inline) = names.inline;
        let (file_name, file) = names.file;
        match (inline, file) {
            (Some(_), Some(file)) => Err(self.invalid(
                child(prefix, file_name),
                file.span(),
                ValueError::BothKeys {
                    inline: inline_name,
                    file: file_name,
                },
            )),
            (None, None) => Ok(None),
            (Some(key), None) => Key::from_base64(key.get_ref()).map(Some).map_err(|e| {
                self.invalid(child(prefix, inline_name), key.span(), ValueError::Key(e))
            }),
            (None, Some(path)) => {
                let resolved = self.resolve(Path::new(path.get_ref()));
                let read = if names.secret {
                    read_key_file(&resolved)
                } else {
                    read_public_key_file(&resolved)
                };
                read.map(Some)
                    .map_err(|e| self.invalid(child(prefix, file_name), path.span(), e))
            }
        }
    }
}

/// Reads a base64 public key from `path` (any permissions).
fn read_public_key_file(path: &Path) -> Result<Key, ValueError> {
    read_key(path, false)
}

/// Reads a base64 key from `path`, refusing a file group or others may
/// access.
pub fn read_key_file(path: &Path) -> Result<Key, ValueError> {
    read_key(path, true)
}

/// Reads a base64 key from `path`; a `secret` one must not be accessible
/// by group or others (checked on the opened file, so it cannot change
/// between check and read).
fn read_key(path: &Path, secret: bool) -> Result<Key, ValueError> {
    let read_error = |source| ValueError::KeyFileRead {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    if secret {
        let mode = file.metadata().map_err(read_error)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(ValueError::KeyFileMode {
                path: path.to_owned(),
                mode: mode & 0o7777,
            });
        }
    }
    let mut text = String::new();
    file.take(MAX_KEY_FILE_LEN)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    Key::from_base64(&text).map_err(|source| ValueError::KeyFileContent {
        path: path.to_owned(),
        source,
    })
}

/// Largest `send_buffer` accepted, in bytes.
pub const MAX_SEND_BUFFER: u32 = 64 << 20;

/// How a tunnel's send buffer is sized (`send_buffer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendBuffer {
    /// `"auto"`: from what the kernel measures of the connection's
    /// subflows, re-evaluated while data flows ([`crate::sendbuf`]).
    Auto,
    /// `0`: the kernel's autotuning.
    Kernel,
    /// A fixed size in bytes (the kernel doubles it for bookkeeping).
    Fixed(u32),
}

/// `send_buffer` as written: a number or a word.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(untagged)]
pub(crate) enum RawSendBuffer {
    /// A number of bytes.
    Bytes(i64),
    /// A word ("auto").
    Word(String),
}

/// A `send_buffer` value: `"auto"`, or bytes from 0 (the kernel's
/// autotuning) to [`MAX_SEND_BUFFER`].
pub(crate) fn parse_send_buffer(value: &RawSendBuffer) -> Result<SendBuffer, ValueError> {
    match value {
        RawSendBuffer::Word(word) if word == "auto" => Ok(SendBuffer::Auto),
        RawSendBuffer::Word(word) => Err(ValueError::SendBuffer { text: word.clone() }),
        RawSendBuffer::Bytes(0) => Ok(SendBuffer::Kernel),
        RawSendBuffer::Bytes(value) => u32::try_from(*value)
            .ok()
            .filter(|n| *n <= MAX_SEND_BUFFER)
            .map(SendBuffer::Fixed)
            .ok_or(ValueError::OutOfRange {
                value: *value,
                min: 0,
                max: i64::from(MAX_SEND_BUFFER),
            }),
    }
}

/// Parses a duration: a whole number and a unit, `ms`, `s`, `m` or `h`
/// (`"300ms"`, `"5s"`, `"2m"`).
pub fn parse_duration(text: &str) -> Result<Duration, ValueError> {
    let bad = || ValueError::Duration {
        text: text.to_owned(),
    };
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(digits_end);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    let millis = number.checked_mul(millis_per_unit).ok_or_else(bad)?;
    Ok(Duration::from_millis(millis))
}

/// Parses a duration that must not be zero.
pub fn parse_nonzero_duration(text: &str) -> Result<Duration, ValueError> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err(ValueError::ZeroDuration);
    }
    Ok(duration)
}

/// A UDP or TCP port that must be fixed: 1 to 65535.
pub fn parse_port(value: i64) -> Result<u16, ValueError> {
    match u16::try_from(value) {
        Ok(0) => Err(ValueError::PortZero),
        Ok(port) => Ok(port),
        Err(_) => Err(ValueError::OutOfRange {
            value,
            min: 1,
            max: i64::from(u16::MAX),
        }),
    }
}

/// Whether `addr` can be one host's address: not unspecified, loopback,
/// multicast, the IPv4 broadcast address or class E.
pub fn is_unicast_host(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.octets()[0] >= 240)
        }
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_loopback() || v6.is_multicast()),
    }
}

/// Parses an address and port: `0.0.0.0:7300`, `[::]:7300`.
pub fn parse_socket_addr(text: &str) -> Result<SocketAddr, ValueError> {
    text.parse().map_err(|_| ValueError::SocketAddr {
        text: text.to_owned(),
    })
}

/// Parses an IP prefix (`203.0.113.0/24`, `2001:db8::/32`) or a single
/// address (a /32 or /128). Refuses a prefix with bits set past its length,
/// which is almost always a typo.
pub fn parse_prefix(text: &str) -> Result<IpNet, ValueError> {
    let prefix = match text.parse::<IpNet>() {
        Ok(prefix) => prefix,
        Err(_) => text
            .parse::<std::net::IpAddr>()
            .map(IpNet::from)
            .map_err(|_| ValueError::Prefix {
                text: text.to_owned(),
            })?,
    };
    if prefix.trunc() != prefix {
        return Err(ValueError::PrefixHostBits {
            text: text.to_owned(),
            network: prefix.trunc(),
        });
    }
    Ok(prefix)
}

/// The path of the key (`client[1].foo`) whose name or value holds byte
/// `offset` of `text`, or of the table whose header holds it.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut found = None;
    walk_table(doc.as_table(), "", offset, &mut found);
    found
}

fn holds(span: Option<Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|span| span.contains(&offset) || span.start == offset)
}

fn child(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Visits parents before children, so the deepest match is left in `found`.
fn walk_table(table: &toml_edit::Table, path: &str, offset: usize, found: &mut Option<String>) {
    if !path.is_empty() && holds(table.span(), offset) {
        *found = Some(path.to_owned());
    }
    for (name, _) in table.iter() {
        let Some((key, item)) = table.get_key_value(name) else {
            continue;
        };
        let path = child(path, name);
        if holds(key.span(), offset) {
            *found = Some(path.clone());
        }
        match item {
            toml_edit::Item::None => {}
            toml_edit::Item::Value(value) => walk_value(value, &path, offset, found),
            toml_edit::Item::Table(table) => walk_table(table, &path, offset, found),
            toml_edit::Item::ArrayOfTables(tables) => {
                for (i, table) in tables.iter().enumerate() {
                    walk_table(table, &format!("{path}[{i}]"), offset, found);
                }
            }
        }
    }
}

fn walk_value(value: &toml_edit::Value, path: &str, offset: usize, found: &mut Option<String>) {
    if holds(value.span(), offset) {
        *found = Some(path.to_owned());
    }
    match value {
        toml_edit::Value::Array(array) => {
            for (i, element) in array.iter().enumerate() {
                walk_value(element, &format!("{path}[{i}]"), offset, found);
            }
        }
        toml_edit::Value::InlineTable(table) => {
            for (name, _) in table.iter() {
                let Some((key, item)) = table.get_key_value(name) else {
                    continue;
                };
                let path = child(path, name);
                if holds(key.span(), offset) {
                    *found = Some(path.clone());
                }
                if let Some(value) = item.as_value() {
                    walk_value(value, &path, offset, found);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("300ms").ok(),
            Some(Duration::from_millis(300))
        );
        assert_eq!(parse_duration("5s").ok(), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m").ok(), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h").ok(), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s").ok(), Some(Duration::ZERO));
        for bad in [
            "",
            "5",
            "s",
            "5 s",
            "-5s",
            "1.5s",
            "5sec",
            "99999999999999999999ms",
        ] {
            assert!(
                matches!(parse_duration(bad), Err(ValueError::Duration { .. })),
                "{bad:?} parsed"
            );
        }
        assert!(matches!(
            parse_duration("18446744073709551615h"),
            Err(ValueError::Duration { .. })
        ));
        assert!(matches!(
            parse_nonzero_duration("0ms"),
            Err(ValueError::ZeroDuration)
        ));
    }

    #[test]
    fn socket_addrs() {
        assert_eq!(
            parse_socket_addr("0.0.0.0:7300").ok(),
            Some(SocketAddr::from(([0, 0, 0, 0], 7300)))
        );
        assert!(parse_socket_addr("[::]:7300").is_ok_and(|a| a.is_ipv6()));
        for bad in ["0.0.0.0", ":7300", "::7300", "localhost:7300"] {
            assert!(parse_socket_addr(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn prefixes() {
        assert_eq!(
            parse_prefix("203.0.113.0/24").map(|p| p.to_string()).ok(),
            Some("203.0.113.0/24".to_owned())
        );
        assert_eq!(
            parse_prefix("198.51.100.7").map(|p| p.to_string()).ok(),
            Some("198.51.100.7/32".to_owned())
        );
        assert_eq!(
            parse_prefix("2001:db8::/32").map(|p| p.to_string()).ok(),
            Some("2001:db8::/32".to_owned())
        );
        let err = parse_prefix("10.1.2.3/8").expect_err("host bits");
        assert_eq!(
            err.to_string(),
            "\"10.1.2.3/8\" has address bits set past the prefix length: did you mean \"10.0.0.0/8\"?"
        );
        for bad in ["10.0.0.0/33", "10.0.0/8", "banana", "", "::/129"] {
            assert!(
                matches!(parse_prefix(bad), Err(ValueError::Prefix { .. })),
                "{bad:?} parsed"
            );
        }
    }

    #[test]
    fn errors_stay_small() {
        // Results of config parsing carry a ConfigError; clippy's
        // result_large_err starts at 128 bytes.
        assert!(std::mem::size_of::<ConfigError>() < 128);
    }

    #[test]
    fn lines_count_from_one() {
        let file = ConfigFile::from_text("/x.toml", "a = 1\nb = 2\n\nc = 3\n");
        assert_eq!(file.line(0), 1);
        assert_eq!(file.line(6), 2);
        assert_eq!(file.line(13), 4);
        assert_eq!(file.line(1000), 5);
    }

    #[test]
    fn key_paths() {
        let text = "listen = \"x\"\n\
                    [[client]]\nid = \"a\"\n\
                    [[client]]\nid = \"b\"\nfoo = 1\n\
                    [policy]\nallow = [\"a\",\n  \"b\"]\n\
                    inline = { deep = 1 }\n";
        let at = |needle: &str| text.find(needle).expect("needle");
        assert_eq!(key_at(text, at("listen")), Some("listen".into()));
        assert_eq!(key_at(text, at("\"x\"")), Some("listen".into()));
        assert_eq!(key_at(text, at("\"b\"\nfoo")), Some("client[1].id".into()));
        assert_eq!(key_at(text, at("foo")), Some("client[1].foo".into()));
        assert_eq!(key_at(text, at("\"b\"]")), Some("policy.allow[1]".into()));
        assert_eq!(key_at(text, at("deep")), Some("policy.inline.deep".into()));
        assert_eq!(
            key_at(text, at("[[client]]\nid = \"b\"")),
            Some("client[1]".into())
        );
    }
}
