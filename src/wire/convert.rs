//! The connect header, modelled on RFC 8803 (0-RTT TCP Convert).
//!
//! The client opens one MPTCP connection per LAN TCP flow and sends a
//! [`ConnectRequest`] as its first bytes (in the SYN with TCP Fast Open where
//! the kernel allows); the LAN host's own bytes follow on the same stream.
//! The concentrator answers with a [`Response`]. This module only encodes and
//! decodes; it computes no MAC (see `crate::auth`) and opens no socket.
//!
//! Decoding is panic-free on any input: every read goes through a checked
//! accessor, and a decoder consumes exactly the header's total length, so the
//! bytes after it stay untouched for the relay.
//!
//! # Byte layout
//!
//! All integers are big-endian. Offsets marked `+` are relative to the start
//! of their TLV. Every TLV length counts its type and length bytes and is in
//! 32-bit words; a TLV is zero-padded to a multiple of 4 bytes.
//!
//! ```text
//! Fixed header (starts every message)
//!   0       version = 1
//!   1       total length in 32-bit words, fixed header and all TLVs included
//!   2..4    magic = 0x2263
//!
//! Request, client → concentrator, as ConnectRequest::encode writes it
//! (n = client id length, 1..=64; A = ceil((68 + n) / 4)):
//!   0..4    fixed header, total length = 1 + 5 + A words
//!   4..24   Connect TLV
//!     +0        type = 10
//!     +1        length = 5
//!     +2..4     destination port
//!     +4..20    destination address: IPv6, or IPv4 as ::ffff:a.b.c.d
//!     (+20..    TCP options: never written; on read only EOL/NOP bytes pass)
//!   24..    Auth TLV, private-use type, always the last TLV
//!     +0        type = 200
//!     +1        length = A
//!     +2        n
//!     +3        reserved = 0
//!     +4..12    timestamp, unix milliseconds
//!     +12..28   nonce
//!     +28..60   MAC, HMAC-SHA256 (bytes 52..84 of the request)
//!     +60..68   concentrator epoch the client signed for (0: not known yet)
//!     +68..68+n client id, printable ASCII without spaces
//!     then zero padding to 4 * A bytes
//!
//! Response, concentrator → client
//!   success: the fixed header alone          01 01 22 63
//!   failure: fixed header + Error TLV        01 02 22 63 | 1e 01 CC VV
//!     +0        type = 30
//!     +1        length = 1
//!     +2        error code (ErrorCode)
//!     +3        value, 0 when unused
//!   stale epoch: fixed header + Error TLV (not authorized) + Epoch TLV
//!                                          01 0d 22 63 | 1e 01 20 00 | c9 0b 00 00 ...
//!     +0        type = 201 (private use)
//!     +1        length = 11
//!     +2..4     reserved = 0
//!     +4..12    the concentrator's current epoch
//!     +12..44   MAC over the epoch and the refused request (`crate::auth`)
//!   stale clock: fixed header + Error TLV (not authorized) + Clock TLV
//!                                          01 0f 22 63 | 1e 01 20 00 | ca 0d 00 00 ...
//!     +0        type = 202 (private use)
//!     +1        length = 13
//!     +2..4     reserved = 0
//!     +4..12    the concentrator's clock when it answered, unix milliseconds
//!     +12..20   the concentrator's current epoch
//!     +20..52   MAC over clock, epoch and the refused request (`crate::auth`)
//! ```
//!
//! The epoch is what makes a header captured before a concentrator restart
//! useless after it: see [`crate::auth::ConnectGuard`]. The clock answer
//! is what keeps a client whose clock stepped working: see
//! [`crate::clock`].
//!
//! On read, Info TLVs and private-use TLVs other than Auth (and, in a
//! response, Epoch and Clock) are skipped (they must still come before Auth in a
//! request); Cookie, Extended TCP Header,
//! Supported TCP Extensions and unassigned types are refused as unsupported.
//!
//! The MAC covers [`ConnectRequest::mac_input`]: the request as
//! [`ConnectRequest::encode`] writes it with the MAC field zeroed. A verifier
//! re-encodes the decoded request, so skipped TLVs are not covered; they
//! carry nothing the concentrator acts on.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ops::Range;
use std::str::FromStr;

/// Protocol version this module speaks.
pub const VERSION: u8 = 1;
/// Magic number in every fixed header.
pub const MAGIC: u16 = 0x2263;
/// Length of the fixed header in bytes.
pub const FIXED_HEADER_LEN: usize = 4;
/// Longest possible message in bytes (the total length is one byte of words).
pub const MAX_MESSAGE_LEN: usize = 255 * 4;

/// Length of the Connect TLV that [`ConnectRequest::encode`] writes.
const CONNECT_LEN: usize = 20;
/// Minimum Auth TLV length in words: every field but the client id.
const AUTH_FIXED_WORDS: usize = field::AUTH_CLIENT_ID / 4;
const TCP_OPTION_EOL: u8 = 0;
const TCP_OPTION_NOP: u8 = 1;

/// TLV type numbers (IANA "Convert TLVs" registry, plus mpbond's private one).
pub mod tlv_type {
    /// Info TLV: asks the converter what it supports; skipped on read.
    pub const INFO: u8 = 1;
    /// Connect TLV: the destination.
    pub const CONNECT: u8 = 10;
    /// Extended TCP Header TLV: unsupported.
    pub const EXTENDED_TCP_HEADER: u8 = 20;
    /// Supported TCP Extensions TLV: unsupported.
    pub const SUPPORTED_TCP_EXTENSIONS: u8 = 21;
    /// Cookie TLV: unsupported.
    pub const COOKIE: u8 = 22;
    /// Error TLV: the concentrator refused the request.
    pub const ERROR: u8 = 30;
    /// First type of the private-use range (192..=255).
    pub const PRIVATE_USE_START: u8 = 192;
    /// mpbond's client authentication TLV (private use).
    pub const AUTH: u8 = 200;
    /// mpbond's stale-epoch answer: the concentrator's current epoch
    /// (private use; responses only).
    pub const EPOCH: u8 = 201;
    /// mpbond's stale-clock answer: the concentrator's clock and current
    /// epoch (private use; responses only).
    pub const CLOCK: u8 = 202;
}

/// Field offsets: message-relative for the fixed header, TLV-relative below.
mod field {
    use std::ops::Range;

    pub(super) const VERSION: usize = 0;
    pub(super) const TOTAL_LEN: usize = 1;
    pub(super) const MAGIC: Range<usize> = 2..4;

    pub(super) const TLV_TYPE: usize = 0;
    pub(super) const TLV_LEN: usize = 1;

    pub(super) const CONNECT_PORT: Range<usize> = 2..4;
    pub(super) const CONNECT_ADDR: Range<usize> = 4..20;
    pub(super) const CONNECT_OPTIONS: usize = 20;

    pub(super) const AUTH_ID_LEN: usize = 2;
    pub(super) const AUTH_RESERVED: usize = 3;
    pub(super) const AUTH_TIMESTAMP: Range<usize> = 4..12;
    pub(super) const AUTH_NONCE: Range<usize> = 12..28;
    pub(super) const AUTH_MAC: Range<usize> = 28..60;
    pub(super) const AUTH_EPOCH: Range<usize> = 60..68;
    pub(super) const AUTH_CLIENT_ID: usize = 68;

    pub(super) const ERROR_CODE: usize = 2;
    pub(super) const ERROR_VALUE: usize = 3;

    pub(super) const EPOCH_RESERVED: Range<usize> = 2..4;
    pub(super) const EPOCH_VALUE: Range<usize> = 4..12;
    pub(super) const EPOCH_MAC: Range<usize> = 12..44;
    pub(super) const EPOCH_LEN: usize = 44;

    pub(super) const CLOCK_RESERVED: Range<usize> = 2..4;
    pub(super) const CLOCK_NOW: Range<usize> = 4..12;
    pub(super) const CLOCK_EPOCH: Range<usize> = 12..20;
    pub(super) const CLOCK_MAC: Range<usize> = 20..52;
    pub(super) const CLOCK_LEN: usize = 52;
}

/// A client's name: 1 to 64 bytes of printable ASCII without spaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(String);

impl ClientId {
    /// Longest client id in bytes.
    pub const MAX_LEN: usize = 64;

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, ClientIdError> {
        if bytes.is_empty() {
            return Err(ClientIdError::Empty);
        }
        if bytes.len() > Self::MAX_LEN {
            return Err(ClientIdError::TooLong { len: bytes.len() });
        }
        if let Some(position) = bytes.iter().position(|b| !b.is_ascii_graphic()) {
            let byte = bytes.get(position).copied().unwrap_or_default();
            return Err(ClientIdError::BadByte { byte, position });
        }
        Ok(Self(bytes.iter().copied().map(char::from).collect()))
    }
}

impl TryFrom<&str> for ClientId {
    type Error = ClientIdError;

    fn try_from(id: &str) -> Result<Self, Self::Error> {
        Self::from_bytes(id.as_bytes())
    }
}

impl FromStr for ClientId {
    type Err = ClientIdError;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        Self::try_from(id)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a client id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientIdError {
    /// The id has no bytes.
    #[error("client id is empty: give 1 to 64 printable ASCII characters")]
    Empty,
    /// The id is longer than [`ClientId::MAX_LEN`].
    #[error("client id is {len} bytes long: at most 64 are allowed")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The id holds a space, a control character or non-ASCII.
    #[error(
        "client id has byte {byte:#04x} at position {position}: \
         only printable ASCII without spaces is allowed"
    )]
    BadByte {
        /// The offending byte.
        byte: u8,
        /// Its index in the id.
        position: usize,
    },
}

/// The authenticator a client attaches to its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// Who is asking.
    pub client_id: ClientId,
    /// When the request was made, unix milliseconds on the client's clock.
    pub timestamp_ms: u64,
    /// Random per request; with the timestamp, what the replay guard keys on.
    pub nonce: [u8; 16],
    /// The concentrator epoch the client signed for: the one its
    /// concentrator last announced, [`crate::auth::Epoch::UNKNOWN`] (0)
    /// before it heard one.
    pub epoch: u64,
    /// HMAC-SHA256 over [`ConnectRequest::mac_input`], see `crate::auth`.
    pub mac: [u8; 32],
}

/// The first bytes a client sends: where to connect, and who asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The LAN flow's real destination. An IPv6 flow label and scope id are
    /// not carried (decoded as 0).
    pub destination: SocketAddr,
    /// The client's credentials.
    pub auth: Auth,
}

impl ConnectRequest {
    /// Where the MAC sits in the bytes [`ConnectRequest::encode`] returns.
    pub const MAC_RANGE: Range<usize> = (FIXED_HEADER_LEN + CONNECT_LEN + field::AUTH_MAC.start)
        ..(FIXED_HEADER_LEN + CONNECT_LEN + field::AUTH_MAC.end);

    /// Encodes the request: fixed header, Connect TLV, Auth TLV.
    pub fn encode(&self) -> Vec<u8> {
        self.emit(&self.auth.mac)
    }

    /// The bytes the MAC covers: [`ConnectRequest::encode`]'s output with
    /// the MAC field ([`ConnectRequest::MAC_RANGE`]) zeroed.
    pub fn mac_input(&self) -> Vec<u8> {
        self.emit(&[0; 32])
    }

    fn emit(&self, mac: &[u8; 32]) -> Vec<u8> {
        let id = self.auth.client_id.as_str().as_bytes();
        let auth_len = (field::AUTH_CLIENT_ID + id.len()).next_multiple_of(4);
        let total = FIXED_HEADER_LEN + CONNECT_LEN + auth_len;
        let address = match self.destination.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };

        let mut out = Vec::with_capacity(total);
        push_fixed_header(&mut out, total);
        out.extend_from_slice(&[tlv_type::CONNECT, words(CONNECT_LEN)]);
        out.extend_from_slice(&self.destination.port().to_be_bytes());
        out.extend_from_slice(&address.octets());
        // ClientId guarantees id.len() <= 64, so the cast is lossless.
        out.extend_from_slice(&[tlv_type::AUTH, words(auth_len), id.len() as u8, 0]);
        out.extend_from_slice(&self.auth.timestamp_ms.to_be_bytes());
        out.extend_from_slice(&self.auth.nonce);
        out.extend_from_slice(mac);
        out.extend_from_slice(&self.auth.epoch.to_be_bytes());
        out.extend_from_slice(id);
        out.resize(total, 0);
        out
    }

    /// Decodes a request from the start of `buf` and returns it with the
    /// number of bytes it took; the bytes after those are payload.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), DecodeError> {
        let msg = message(buf)?;
        let mut destination = None;
        let mut auth = None;
        for tlv in Tlvs::new(msg) {
            let tlv = tlv?;
            if let Some((_, offset)) = auth {
                return Err(DecodeError::AuthNotLast { offset });
            }
            match tlv.kind {
                tlv_type::CONNECT if destination.is_some() => {
                    return Err(DecodeError::DuplicateConnect { offset: tlv.offset });
                }
                tlv_type::CONNECT => destination = Some(parse_connect(&tlv)?),
                tlv_type::AUTH => auth = Some((parse_auth(&tlv)?, tlv.offset)),
                tlv_type::INFO => {}
                kind if kind >= tlv_type::PRIVATE_USE_START => {}
                kind => return Err(tlv.unsupported(kind)),
            }
        }
        let destination = destination.ok_or(DecodeError::MissingConnect)?;
        let (auth, _) = auth.ok_or(DecodeError::MissingAuth)?;
        Ok((Self { destination, auth }, msg.len()))
    }
}

/// The concentrator's answer to a [`ConnectRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// The destination accepted the connection; relaying starts.
    Connected,
    /// The request was refused; the concentrator closes the connection.
    Error {
        /// Why.
        code: ErrorCode,
        /// Code-specific detail, 0 when unused.
        value: u8,
    },
    /// The request authenticated but was signed for another concentrator
    /// epoch (before its restart, or before the client heard of one): it was
    /// refused, nothing was forwarded, and the client may sign again for
    /// `epoch`. Encoded as "not authorized" plus an Epoch TLV, so a peer
    /// that does not know the TLV still reads a refusal.
    StaleEpoch {
        /// The concentrator's current epoch.
        epoch: u64,
        /// Its MAC, bound to the refused request (`crate::auth::sign_epoch`).
        mac: [u8; 32],
    },
    /// The request authenticated but its timestamp lies outside the window
    /// around the concentrator's clock (the client's clock is off, or
    /// stepped): it was refused, nothing was forwarded, and the client may
    /// sign again on the concentrator's clock, for `epoch`. Encoded as "not
    /// authorized" plus a Clock TLV.
    StaleClock {
        /// The concentrator's clock when it answered, unix milliseconds.
        now_ms: u64,
        /// The concentrator's current epoch.
        epoch: u64,
        /// Its MAC, bound to the refused request (`crate::auth::sign_clock`).
        mac: [u8; 32],
    },
}

impl Response {
    /// Encodes the response: the fixed header alone for
    /// [`Response::Connected`], plus an Error TLV for [`Response::Error`].
    pub fn encode(&self) -> Vec<u8> {
        let mut extra = Vec::new();
        let (code, value) = match *self {
            Self::Connected => {
                let mut out = Vec::with_capacity(FIXED_HEADER_LEN);
                push_fixed_header(&mut out, FIXED_HEADER_LEN);
                return out;
            }
            Self::Error { code, value } => (code, value),
            Self::StaleEpoch { epoch, mac } => {
                extra.extend_from_slice(&[tlv_type::EPOCH, words(field::EPOCH_LEN), 0, 0]);
                extra.extend_from_slice(&epoch.to_be_bytes());
                extra.extend_from_slice(&mac);
                (ErrorCode::NotAuthorized, 0)
            }
            Self::StaleClock { now_ms, epoch, mac } => {
                extra.extend_from_slice(&[tlv_type::CLOCK, words(field::CLOCK_LEN), 0, 0]);
                extra.extend_from_slice(&now_ms.to_be_bytes());
                extra.extend_from_slice(&epoch.to_be_bytes());
                extra.extend_from_slice(&mac);
                (ErrorCode::NotAuthorized, 0)
            }
        };
        let total = FIXED_HEADER_LEN + 4 + extra.len();
        let mut out = Vec::with_capacity(total);
        push_fixed_header(&mut out, total);
        out.extend_from_slice(&[tlv_type::ERROR, 1, code.into(), value]);
        out.extend_from_slice(&extra);
        out
    }

    /// Decodes a response from the start of `buf` and returns it with the
    /// number of bytes it took; the bytes after those are payload.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), DecodeError> {
        let msg = message(buf)?;
        let mut response = Self::Connected;
        let mut seen_error = false;
        let mut epoch = None;
        let mut clock = None;
        for tlv in Tlvs::new(msg) {
            let tlv = tlv?;
            match tlv.kind {
                tlv_type::ERROR if seen_error => {
                    return Err(DecodeError::DuplicateError { offset: tlv.offset });
                }
                tlv_type::ERROR => {
                    response = parse_error(&tlv)?;
                    seen_error = true;
                }
                tlv_type::EPOCH if epoch.is_some() => {
                    return Err(DecodeError::DuplicateEpoch { offset: tlv.offset });
                }
                tlv_type::EPOCH => epoch = Some((parse_epoch(&tlv)?, tlv.offset)),
                tlv_type::CLOCK if clock.is_some() => {
                    return Err(DecodeError::DuplicateClock { offset: tlv.offset });
                }
                tlv_type::CLOCK => clock = Some((parse_clock(&tlv)?, tlv.offset)),
                tlv_type::INFO => {}
                tlv_type::AUTH => return Err(tlv.unsupported(tlv_type::AUTH)),
                kind if kind >= tlv_type::PRIVATE_USE_START => {}
                kind => return Err(tlv.unsupported(kind)),
            }
        }
        let refused = matches!(
            response,
            Self::Error {
                code: ErrorCode::NotAuthorized,
                ..
            }
        );
        match (epoch, clock) {
            (Some((_, epoch_at)), Some((_, clock_at))) => {
                return Err(DecodeError::EpochAndClock {
                    offset: epoch_at.max(clock_at),
                });
            }
            (Some((_, offset)), None) if !refused => {
                return Err(DecodeError::EpochWithoutRefusal { offset });
            }
            (None, Some((_, offset))) if !refused => {
                return Err(DecodeError::ClockWithoutRefusal { offset });
            }
            (Some(((epoch, mac), _)), None) => response = Self::StaleEpoch { epoch, mac },
            (None, Some(((now_ms, epoch, mac), _))) => {
                response = Self::StaleClock { now_ms, epoch, mac };
            }
            (None, None) => {}
        }
        Ok((response, msg.len()))
    }
}

/// RFC 8803 error codes, carried in an Error TLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 0: the fixed header's version is not 1.
    UnsupportedVersion,
    /// 1: the message does not parse.
    MalformedMessage,
    /// 2: the message holds a TLV this end does not support.
    UnsupportedMessage,
    /// 3: a required Cookie TLV is missing.
    MissingCookie,
    /// 32: the client is not allowed (bad credentials, replay, policy).
    NotAuthorized,
    /// 33: the request asks for a TCP option that cannot be used.
    UnsupportedTcpOption,
    /// 64: the concentrator is out of some resource (connections, memory).
    ResourceExceeded,
    /// 65: the concentrator could not reach the network.
    NetworkFailure,
    /// 96: the destination reset the connection.
    ConnectionReset,
    /// 97: the destination could not be reached.
    DestinationUnreachable,
    /// Any code without a name above (only such codes belong here).
    Other(u8),
}

impl From<u8> for ErrorCode {
    fn from(code: u8) -> Self {
        match code {
            0 => Self::UnsupportedVersion,
            1 => Self::MalformedMessage,
            2 => Self::UnsupportedMessage,
            3 => Self::MissingCookie,
            32 => Self::NotAuthorized,
            33 => Self::UnsupportedTcpOption,
            64 => Self::ResourceExceeded,
            65 => Self::NetworkFailure,
            96 => Self::ConnectionReset,
            97 => Self::DestinationUnreachable,
            other => Self::Other(other),
        }
    }
}

impl From<ErrorCode> for u8 {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::UnsupportedVersion => 0,
            ErrorCode::MalformedMessage => 1,
            ErrorCode::UnsupportedMessage => 2,
            ErrorCode::MissingCookie => 3,
            ErrorCode::NotAuthorized => 32,
            ErrorCode::UnsupportedTcpOption => 33,
            ErrorCode::ResourceExceeded => 64,
            ErrorCode::NetworkFailure => 65,
            ErrorCode::ConnectionReset => 96,
            ErrorCode::DestinationUnreachable => 97,
            ErrorCode::Other(other) => other,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phrase = match self {
            Self::UnsupportedVersion => "unsupported version",
            Self::MalformedMessage => "malformed message",
            Self::UnsupportedMessage => "unsupported message",
            Self::MissingCookie => "missing cookie",
            Self::NotAuthorized => "not authorized",
            Self::UnsupportedTcpOption => "unsupported TCP option",
            Self::ResourceExceeded => "resource exceeded",
            Self::NetworkFailure => "network failure",
            Self::ConnectionReset => "connection reset",
            Self::DestinationUnreachable => "destination unreachable",
            Self::Other(code) => return write!(f, "error code {code}"),
        };
        f.write_str(phrase)
    }
}

/// Why bytes are not (yet) a valid connect header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header is not complete: read at least `needed` more bytes.
    #[error("connect header: incomplete, {needed} more bytes needed")]
    Incomplete {
        /// How many more bytes the header needs at least.
        needed: usize,
    },
    /// The fixed header's version is not [`VERSION`].
    #[error("connect header: version {version} is not supported (this host speaks version 1)")]
    UnsupportedVersion {
        /// The version received.
        version: u8,
    },
    /// The fixed header's magic is not [`MAGIC`]: not a connect header.
    #[error(
        "connect header: magic {magic:#06x} is not 0x2263: \
         the peer does not speak the mpbond connect header"
    )]
    BadMagic {
        /// The magic received.
        magic: u16,
    },
    /// The fixed header claims a total length of 0 words.
    #[error("connect header: total length is 0 words, less than the fixed header")]
    ZeroTotalLength,
    /// A TLV claims a length of 0 words.
    #[error("connect header: TLV type {tlv_type} at byte {offset} has length 0")]
    ZeroTlvLength {
        /// Its type.
        tlv_type: u8,
        /// Its offset in the message.
        offset: usize,
    },
    /// A TLV runs past the total length.
    #[error(
        "connect header: TLV type {tlv_type} at byte {offset} claims {claimed} words \
         but only {remaining} remain"
    )]
    TlvOverrun {
        /// Its type.
        tlv_type: u8,
        /// Its offset in the message.
        offset: usize,
        /// Its length field, in words.
        claimed: usize,
        /// Words left in the message from its offset.
        remaining: usize,
    },
    /// A TLV is too short for its fixed fields.
    #[error(
        "connect header: TLV type {tlv_type} at byte {offset} is {words} words \
         but needs at least {min_words}"
    )]
    TlvTooShort {
        /// Its type.
        tlv_type: u8,
        /// Its offset in the message.
        offset: usize,
        /// Its length, in words.
        words: usize,
        /// The least its fields need, in words.
        min_words: usize,
    },
    /// The Auth TLV's length does not match its client id length.
    #[error(
        "connect header: Auth TLV at byte {offset} is {words} words \
         but a {id_len}-byte client id needs {expected}"
    )]
    AuthLength {
        /// Its offset in the message.
        offset: usize,
        /// Its length, in words.
        words: usize,
        /// Its client id length field.
        id_len: u8,
        /// The length that id needs, in words.
        expected: usize,
    },
    /// The Auth TLV's reserved byte is not 0.
    #[error("connect header: Auth TLV at byte {offset} has a nonzero reserved byte")]
    NonZeroReserved {
        /// Its offset in the message.
        offset: usize,
    },
    /// A TLV's padding is not all zero.
    #[error("connect header: TLV type {tlv_type} at byte {offset} has nonzero padding")]
    NonZeroPadding {
        /// Its type.
        tlv_type: u8,
        /// Its offset in the message.
        offset: usize,
    },
    /// The Auth TLV's client id is not a valid [`ClientId`].
    #[error("connect header: Auth TLV at byte {offset} carries an invalid client id")]
    BadClientId {
        /// Its offset in the message.
        offset: usize,
        /// What is wrong with the id.
        #[source]
        source: ClientIdError,
    },
    /// A request holds a second Connect TLV.
    #[error("connect header: second Connect TLV at byte {offset}")]
    DuplicateConnect {
        /// Its offset in the message.
        offset: usize,
    },
    /// A response holds a second Error TLV.
    #[error("connect header: second Error TLV at byte {offset}")]
    DuplicateError {
        /// Its offset in the message.
        offset: usize,
    },
    /// A response holds a second Epoch TLV.
    #[error("connect answer: second Epoch TLV at byte {offset}")]
    DuplicateEpoch {
        /// Its offset in the message.
        offset: usize,
    },
    /// A response holds an Epoch TLV but is no "not authorized" refusal.
    #[error("connect answer: Epoch TLV at byte {offset} without a \"not authorized\" Error TLV")]
    EpochWithoutRefusal {
        /// The Epoch TLV's offset in the message.
        offset: usize,
    },
    /// A response holds a second Clock TLV.
    #[error("connect answer: second Clock TLV at byte {offset}")]
    DuplicateClock {
        /// Its offset in the message.
        offset: usize,
    },
    /// A response holds a Clock TLV but is no "not authorized" refusal.
    #[error("connect answer: Clock TLV at byte {offset} without a \"not authorized\" Error TLV")]
    ClockWithoutRefusal {
        /// The Clock TLV's offset in the message.
        offset: usize,
    },
    /// A response holds both an Epoch and a Clock TLV (a clock answer
    /// carries the epoch itself).
    #[error("connect answer: both an Epoch and a Clock TLV (the later at byte {offset})")]
    EpochAndClock {
        /// The offset of the later of the two.
        offset: usize,
    },
    /// A Clock TLV is not 13 words long.
    #[error("connect answer: Clock TLV at byte {offset} is {words} words, not 13")]
    ClockLength {
        /// Its offset in the message.
        offset: usize,
        /// Its length, in words.
        words: usize,
    },
    /// An Epoch TLV is not 11 words long.
    #[error("connect answer: Epoch TLV at byte {offset} is {words} words, not 11")]
    EpochLength {
        /// Its offset in the message.
        offset: usize,
        /// Its length, in words.
        words: usize,
    },
    /// A TLV follows the Auth TLV, which must be the last.
    #[error("connect header: Auth TLV at byte {offset} is not the last TLV")]
    AuthNotLast {
        /// The Auth TLV's offset in the message.
        offset: usize,
    },
    /// A request has no Connect TLV.
    #[error("connect header: no Connect TLV, so no destination")]
    MissingConnect,
    /// A request has no Auth TLV.
    #[error("connect header: no Auth TLV (type 200): the client sent no credentials")]
    MissingAuth,
    /// A TLV of a type this end does not support, or not in this message.
    #[error("connect header: TLV type {tlv_type} at byte {offset} is not supported here")]
    UnsupportedTlv {
        /// Its type.
        tlv_type: u8,
        /// Its offset in the message.
        offset: usize,
    },
    /// The Connect TLV asks for TCP options the concentrator cannot honour.
    #[error(
        "connect header: Connect TLV at byte {offset} asks for TCP option kind {kind}, \
         which this concentrator does not forward"
    )]
    UnsupportedTcpOption {
        /// The Connect TLV's offset in the message.
        offset: usize,
        /// The first option kind that is not EOL or NOP.
        kind: u8,
    },
}

impl DecodeError {
    /// The RFC 8803 error code to answer this error with.
    ///
    /// [`DecodeError::Incomplete`] maps to [`ErrorCode::MalformedMessage`]:
    /// a peer that stops sending before the end has sent a truncated message.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            Self::UnsupportedTlv { .. } => ErrorCode::UnsupportedMessage,
            Self::UnsupportedTcpOption { .. } => ErrorCode::UnsupportedTcpOption,
            _ => ErrorCode::MalformedMessage,
        }
    }
}

/// Reads the fixed header at the start of `buf`, the bytes read so far.
///
/// Returns `Ok(None)` while fewer than 4 bytes have arrived, else the whole
/// header's length in bytes: read that many before decoding, and no more
/// (what follows is payload).
pub fn header_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    let (Some(&version), Some(&words), Some(magic)) = (
        buf.get(field::VERSION),
        buf.get(field::TOTAL_LEN),
        array(buf, field::MAGIC),
    ) else {
        return Ok(None);
    };
    // Magic first: bytes that are not a connect header at all (plain TCP,
    // a port scan) should not be blamed on a version mismatch.
    let magic = u16::from_be_bytes(magic);
    if magic != MAGIC {
        return Err(DecodeError::BadMagic { magic });
    }
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion { version });
    }
    if words == 0 {
        return Err(DecodeError::ZeroTotalLength);
    }
    Ok(Some(usize::from(words) * 4))
}

/// The whole message at the start of `buf`, as long as its fixed header says.
fn message(buf: &[u8]) -> Result<&[u8], DecodeError> {
    let Some(total) = header_len(buf)? else {
        let needed = FIXED_HEADER_LEN.saturating_sub(buf.len());
        return Err(DecodeError::Incomplete { needed });
    };
    let needed = total.saturating_sub(buf.len());
    buf.get(..total).ok_or(DecodeError::Incomplete { needed })
}

fn push_fixed_header(out: &mut Vec<u8>, total: usize) {
    out.extend_from_slice(&[VERSION, words(total)]);
    out.extend_from_slice(&MAGIC.to_be_bytes());
}

/// A length in words for a length field; callers stay within
/// [`MAX_MESSAGE_LEN`], so the cast is lossless.
fn words(len: usize) -> u8 {
    debug_assert!(len <= MAX_MESSAGE_LEN && len.is_multiple_of(4));
    (len / 4) as u8
}

/// `N` bytes of `buf` at `range`, or `None` if `buf` is too short.
fn array<const N: usize>(buf: &[u8], range: Range<usize>) -> Option<[u8; N]> {
    buf.get(range)?.try_into().ok()
}

/// One TLV inside a message; `bytes` spans it whole, padding included.
struct Tlv<'a> {
    kind: u8,
    offset: usize,
    bytes: &'a [u8],
}

impl Tlv<'_> {
    fn words(&self) -> usize {
        self.bytes.len() / 4
    }

    fn too_short(&self, min_words: usize) -> DecodeError {
        DecodeError::TlvTooShort {
            tlv_type: self.kind,
            offset: self.offset,
            words: self.words(),
            min_words,
        }
    }

    fn unsupported(&self, tlv_type: u8) -> DecodeError {
        DecodeError::UnsupportedTlv {
            tlv_type,
            offset: self.offset,
        }
    }
}

/// The TLVs after a message's fixed header; stops after the first error.
struct Tlvs<'a> {
    msg: &'a [u8],
    offset: usize,
}

impl<'a> Tlvs<'a> {
    fn new(msg: &'a [u8]) -> Self {
        Self {
            msg,
            offset: FIXED_HEADER_LEN,
        }
    }

    fn read(&self) -> Result<Tlv<'a>, DecodeError> {
        let offset = self.offset;
        let rest = self.msg.get(offset..).unwrap_or_default();
        let remaining = rest.len() / 4;
        let (Some(&kind), Some(&claimed)) = (rest.get(field::TLV_TYPE), rest.get(field::TLV_LEN))
        else {
            let tlv_type = rest.first().copied().unwrap_or_default();
            return Err(DecodeError::TlvOverrun {
                tlv_type,
                offset,
                claimed: 1,
                remaining,
            });
        };
        let claimed = usize::from(claimed);
        if claimed == 0 {
            return Err(DecodeError::ZeroTlvLength {
                tlv_type: kind,
                offset,
            });
        }
        let Some(bytes) = rest.get(..claimed * 4).filter(|_| claimed <= remaining) else {
            return Err(DecodeError::TlvOverrun {
                tlv_type: kind,
                offset,
                claimed,
                remaining,
            });
        };
        Ok(Tlv {
            kind,
            offset,
            bytes,
        })
    }
}

impl<'a> Iterator for Tlvs<'a> {
    type Item = Result<Tlv<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.offset >= self.msg.len() {
            return None;
        }
        let tlv = self.read();
        self.offset = match &tlv {
            Ok(tlv) => self.offset + tlv.bytes.len(),
            Err(_) => self.msg.len(),
        };
        Some(tlv)
    }
}

fn parse_connect(tlv: &Tlv<'_>) -> Result<SocketAddr, DecodeError> {
    let (Some(port), Some(address)) = (
        array(tlv.bytes, field::CONNECT_PORT),
        array(tlv.bytes, field::CONNECT_ADDR),
    ) else {
        return Err(tlv.too_short(CONNECT_LEN / 4));
    };
    let options = tlv.bytes.get(field::CONNECT_OPTIONS..).unwrap_or_default();
    if let Some(&kind) = options
        .iter()
        .find(|&&kind| kind != TCP_OPTION_EOL && kind != TCP_OPTION_NOP)
    {
        return Err(DecodeError::UnsupportedTcpOption {
            offset: tlv.offset,
            kind,
        });
    }
    let port = u16::from_be_bytes(port);
    let address = Ipv6Addr::from(address);
    Ok(match address.to_ipv4_mapped() {
        Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
        None => SocketAddr::V6(SocketAddrV6::new(address, port, 0, 0)),
    })
}

fn parse_auth(tlv: &Tlv<'_>) -> Result<Auth, DecodeError> {
    let b = tlv.bytes;
    let (Some(&id_len), Some(&reserved), Some(timestamp), Some(nonce), Some(mac), Some(epoch)) = (
        b.get(field::AUTH_ID_LEN),
        b.get(field::AUTH_RESERVED),
        array(b, field::AUTH_TIMESTAMP),
        array(b, field::AUTH_NONCE),
        array(b, field::AUTH_MAC),
        array(b, field::AUTH_EPOCH),
    ) else {
        return Err(tlv.too_short(AUTH_FIXED_WORDS));
    };
    if reserved != 0 {
        return Err(DecodeError::NonZeroReserved { offset: tlv.offset });
    }
    let id_end = field::AUTH_CLIENT_ID + usize::from(id_len);
    let expected = id_end.div_ceil(4);
    let (Some(id), Some(padding)) = (
        b.get(field::AUTH_CLIENT_ID..id_end),
        b.get(id_end..).filter(|_| tlv.words() == expected),
    ) else {
        return Err(DecodeError::AuthLength {
            offset: tlv.offset,
            words: tlv.words(),
            id_len,
            expected,
        });
    };
    if padding.iter().any(|&byte| byte != 0) {
        return Err(DecodeError::NonZeroPadding {
            tlv_type: tlv.kind,
            offset: tlv.offset,
        });
    }
    let client_id = ClientId::from_bytes(id).map_err(|source| DecodeError::BadClientId {
        offset: tlv.offset,
        source,
    })?;
    Ok(Auth {
        client_id,
        timestamp_ms: u64::from_be_bytes(timestamp),
        nonce,
        epoch: u64::from_be_bytes(epoch),
        mac,
    })
}

/// Reads an Epoch TLV: the epoch and its MAC.
fn parse_epoch(tlv: &Tlv<'_>) -> Result<(u64, [u8; 32]), DecodeError> {
    let b = tlv.bytes;
    let (true, Some(reserved), Some(epoch), Some(mac)) = (
        b.len() == field::EPOCH_LEN,
        b.get(field::EPOCH_RESERVED),
        array(b, field::EPOCH_VALUE),
        array(b, field::EPOCH_MAC),
    ) else {
        return Err(DecodeError::EpochLength {
            offset: tlv.offset,
            words: tlv.words(),
        });
    };
    if reserved.iter().any(|&byte| byte != 0) {
        return Err(DecodeError::NonZeroReserved { offset: tlv.offset });
    }
    Ok((u64::from_be_bytes(epoch), mac))
}

/// Reads a Clock TLV: the concentrator's clock, its epoch and their MAC.
fn parse_clock(tlv: &Tlv<'_>) -> Result<(u64, u64, [u8; 32]), DecodeError> {
    let b = tlv.bytes;
    let (true, Some(reserved), Some(now_ms), Some(epoch), Some(mac)) = (
        b.len() == field::CLOCK_LEN,
        b.get(field::CLOCK_RESERVED),
        array(b, field::CLOCK_NOW),
        array(b, field::CLOCK_EPOCH),
        array(b, field::CLOCK_MAC),
    ) else {
        return Err(DecodeError::ClockLength {
            offset: tlv.offset,
            words: tlv.words(),
        });
    };
    if reserved.iter().any(|&byte| byte != 0) {
        return Err(DecodeError::NonZeroReserved { offset: tlv.offset });
    }
    Ok((u64::from_be_bytes(now_ms), u64::from_be_bytes(epoch), mac))
}

/// Reads an Error TLV; an RFC 8803 value may be longer than one byte, and
/// only its first byte is kept.
fn parse_error(tlv: &Tlv<'_>) -> Result<Response, DecodeError> {
    let (Some(&code), Some(&value)) = (
        tlv.bytes.get(field::ERROR_CODE),
        tlv.bytes.get(field::ERROR_VALUE),
    ) else {
        return Err(tlv.too_short(1));
    };
    Ok(Response::Error {
        code: code.into(),
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV6};

    fn request(destination: SocketAddr, id: &str) -> ConnectRequest {
        ConnectRequest {
            destination,
            auth: Auth {
                client_id: id.parse().expect("valid id"),
                timestamp_ms: 1_700_000_000_123,
                nonce: [0xa5; 16],
                epoch: 0x0102_0304_0506_0708,
                mac: [0x3c; 32],
            },
        }
    }

    fn v4_request() -> ConnectRequest {
        request(
            SocketAddr::from((Ipv4Addr::new(192, 0, 2, 7), 443)),
            "home-router",
        )
    }

    /// Seeds of `fuzz/fuzz_targets/convert.rs` (see `crate::fuzz_seeds`):
    /// requests signed with the target's key, as a client sends them (alone
    /// and with first bytes after them), and the concentrator's answers.
    #[test]
    fn write_fuzz_corpus() {
        let key = crate::auth::Key::from_bytes([7; 32]);
        let signed = |destination: &str, id: &str| {
            crate::auth::sign_request(
                &key,
                id.parse().expect("id"),
                destination.parse().expect("destination"),
                crate::auth::Epoch::from_u64(0x6d70_626f_6e64_0001),
                [0x5a; 16],
                1_795_000_000_000,
            )
            .encode()
        };
        let v4 = signed("198.51.100.10:80", "lab");
        let mut with_early = v4.clone();
        with_early.extend_from_slice(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n");
        let mut with_info = v4[..FIXED_HEADER_LEN].to_vec();
        with_info.extend(tlv(tlv_type::INFO, &[]));
        with_info.extend_from_slice(&v4[FIXED_HEADER_LEN..]);
        with_info[field::TOTAL_LEN] = (with_info.len() / 4) as u8;
        let mut connected_then_data = Response::Connected.encode();
        connected_then_data.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let refused = Response::Error {
            code: ErrorCode::UnsupportedMessage,
            value: tlv_type::AUTH,
        };
        crate::fuzz_seeds::write(
            "convert",
            &[
                ("request-v4", v4),
                ("request-v6", signed("[2001:db8:100::10]:443", "lab2")),
                ("request-long-id", signed("192.0.2.1:22", &"x".repeat(64))),
                ("request-early-data", with_early),
                ("request-info-tlv", with_info),
                ("connected", Response::Connected.encode()),
                ("connected-then-data", connected_then_data),
                ("refused", refused.encode()),
                (
                    "stale-epoch",
                    Response::StaleEpoch {
                        epoch: 0x6d70_626f_6e64_0002,
                        mac: [0x42; 32],
                    }
                    .encode(),
                ),
                (
                    "stale-clock",
                    Response::StaleClock {
                        now_ms: 1_795_000_300_000,
                        epoch: 0x6d70_626f_6e64_0002,
                        mac: [0x43; 32],
                    }
                    .encode(),
                ),
            ],
        );
    }

    /// A TLV with `body` after its type and length bytes, zero-padded.
    fn tlv(kind: u8, body: &[u8]) -> Vec<u8> {
        let len = (2 + body.len()).next_multiple_of(4);
        let mut out = vec![kind, (len / 4) as u8];
        out.extend_from_slice(body);
        out.resize(len, 0);
        out
    }

    /// A message made of `tlvs` after a fixed header with the right length.
    fn message_of(tlvs: &[&[u8]]) -> Vec<u8> {
        let body: Vec<u8> = tlvs.concat();
        let mut out = vec![VERSION, ((4 + body.len()) / 4) as u8, 0x22, 0x63];
        out.extend_from_slice(&body);
        out
    }

    /// The Connect and Auth TLVs of an encoded request.
    fn split(encoded: &[u8]) -> (Vec<u8>, Vec<u8>) {
        (
            encoded[4..4 + CONNECT_LEN].to_vec(),
            encoded[4 + CONNECT_LEN..].to_vec(),
        )
    }

    #[test]
    fn request_layout_is_as_documented() {
        let encoded = v4_request().encode();
        let expected_total = 4 + 20 + (68 + 11usize).next_multiple_of(4);
        assert_eq!(encoded.len(), expected_total);
        assert_eq!(&encoded[..4], &[1, (expected_total / 4) as u8, 0x22, 0x63]);
        assert_eq!(&encoded[4..8], &[10, 5, 0x01, 0xbb]);
        assert_eq!(
            &encoded[8..24],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 7]
        );
        assert_eq!(&encoded[24..28], &[200, 20, 11, 0]);
        assert_eq!(&encoded[28..36], &1_700_000_000_123u64.to_be_bytes());
        assert_eq!(&encoded[36..52], &[0xa5; 16]);
        assert_eq!(&encoded[ConnectRequest::MAC_RANGE], &[0x3c; 32]);
        assert_eq!(&encoded[84..92], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&encoded[92..103], b"home-router");
        assert_eq!(encoded[103], 0);
    }

    #[test]
    fn mac_input_zeroes_only_the_mac() {
        let req = v4_request();
        let mut expected = req.encode();
        expected[ConnectRequest::MAC_RANGE].fill(0);
        assert_eq!(req.mac_input(), expected);
    }

    #[test]
    fn request_roundtrips_v4_and_v6() {
        let v6 = SocketAddr::V6(SocketAddrV6::new(
            "2001:db8::1".parse().expect("addr"),
            8080,
            0,
            0,
        ));
        let long_id = "x".repeat(ClientId::MAX_LEN);
        for req in [
            v4_request(),
            request(v6, "a"),
            request(v6, "ab"),
            request(v6, "abc"),
            request(v6, "abcd"),
            request(v6, &long_id),
        ] {
            let encoded = req.encode();
            assert_eq!(header_len(&encoded), Ok(Some(encoded.len())));
            assert_eq!(ConnectRequest::decode(&encoded), Ok((req, encoded.len())));
        }
    }

    #[test]
    fn decode_consumes_only_the_header() {
        let req = v4_request();
        let mut bytes = req.encode();
        let len = bytes.len();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(ConnectRequest::decode(&bytes), Ok((req, len)));

        let mut bytes = Response::Connected.encode();
        bytes.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(Response::decode(&bytes), Ok((Response::Connected, 4)));
    }

    #[test]
    fn connected_is_the_fixed_header_alone() {
        assert_eq!(Response::Connected.encode(), [1, 1, 0x22, 0x63]);
        assert_eq!(
            Response::decode(&[1, 1, 0x22, 0x63]),
            Ok((Response::Connected, 4))
        );
    }

    #[test]
    fn every_error_code_roundtrips() {
        for raw in 0..=u8::MAX {
            let code = ErrorCode::from(raw);
            assert_eq!(u8::from(code), raw);
            let response = Response::Error { code, value: raw };
            let encoded = response.encode();
            assert_eq!(encoded, [1, 2, 0x22, 0x63, 30, 1, raw, raw]);
            assert_eq!(Response::decode(&encoded), Ok((response, 8)));
        }
    }

    #[test]
    fn error_codes_have_names_and_phrases() {
        let named = [
            (0, ErrorCode::UnsupportedVersion, "unsupported version"),
            (1, ErrorCode::MalformedMessage, "malformed message"),
            (2, ErrorCode::UnsupportedMessage, "unsupported message"),
            (3, ErrorCode::MissingCookie, "missing cookie"),
            (32, ErrorCode::NotAuthorized, "not authorized"),
            (
                33,
                ErrorCode::UnsupportedTcpOption,
                "unsupported TCP option",
            ),
            (64, ErrorCode::ResourceExceeded, "resource exceeded"),
            (65, ErrorCode::NetworkFailure, "network failure"),
            (96, ErrorCode::ConnectionReset, "connection reset"),
            (
                97,
                ErrorCode::DestinationUnreachable,
                "destination unreachable",
            ),
        ];
        for (raw, code, phrase) in named {
            assert_eq!(ErrorCode::from(raw), code);
            assert_eq!(code.to_string(), phrase);
        }
        assert_eq!(ErrorCode::from(200), ErrorCode::Other(200));
        assert_eq!(ErrorCode::Other(200).to_string(), "error code 200");
    }

    #[test]
    fn header_len_waits_for_four_bytes() {
        let encoded = v4_request().encode();
        for len in 0..FIXED_HEADER_LEN {
            assert_eq!(header_len(&encoded[..len]), Ok(None));
        }
        assert_eq!(header_len(&encoded[..4]), Ok(Some(encoded.len())));
    }

    #[test]
    fn every_truncation_is_incomplete() {
        let requests = [v4_request().encode()];
        let responses = [
            Response::Connected.encode(),
            Response::Error {
                code: ErrorCode::NotAuthorized,
                value: 0,
            }
            .encode(),
        ];
        for encoded in &requests {
            for len in 0..encoded.len() {
                let needed = if len < 4 {
                    4 - len
                } else {
                    encoded.len() - len
                };
                assert_eq!(
                    ConnectRequest::decode(&encoded[..len]),
                    Err(DecodeError::Incomplete { needed })
                );
            }
        }
        for encoded in &responses {
            for len in 0..encoded.len() {
                let needed = if len < 4 {
                    4 - len
                } else {
                    encoded.len() - len
                };
                assert_eq!(
                    Response::decode(&encoded[..len]),
                    Err(DecodeError::Incomplete { needed })
                );
            }
        }
    }

    fn assert_request_error(bytes: &[u8], expected: DecodeError, code: ErrorCode) {
        let err = ConnectRequest::decode(bytes).expect_err("must not decode");
        assert_eq!(err, expected);
        assert_eq!(err.code(), code);
    }

    #[test]
    fn bad_fixed_headers() {
        let mut bytes = v4_request().encode();
        bytes[0] = 2;
        assert_request_error(
            &bytes,
            DecodeError::UnsupportedVersion { version: 2 },
            ErrorCode::UnsupportedVersion,
        );

        let mut bytes = v4_request().encode();
        bytes[3] = 0x64;
        assert_request_error(
            &bytes,
            DecodeError::BadMagic { magic: 0x2264 },
            ErrorCode::MalformedMessage,
        );

        assert_request_error(
            &[1, 0, 0x22, 0x63],
            DecodeError::ZeroTotalLength,
            ErrorCode::MalformedMessage,
        );
        assert_eq!(
            Response::decode(b"GET / HTTP/1.1"),
            Err(DecodeError::BadMagic { magic: 0x5420 })
        );
    }

    #[test]
    fn bad_tlv_lengths() {
        let (connect, auth) = split(&v4_request().encode());

        let mut zero = connect.clone();
        zero[1] = 0;
        assert_request_error(
            &message_of(&[&zero, &auth]),
            DecodeError::ZeroTlvLength {
                tlv_type: 10,
                offset: 4,
            },
            ErrorCode::MalformedMessage,
        );

        let overrun = [10, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let err = ConnectRequest::decode(&message_of(&[&overrun])).expect_err("overrun");
        assert_eq!(
            err.to_string(),
            "connect header: TLV type 10 at byte 4 claims 7 words but only 3 remain"
        );
        assert_eq!(err.code(), ErrorCode::MalformedMessage);

        let mut short_total = message_of(&[&connect, &auth]);
        short_total[1] -= 1;
        short_total.truncate(short_total.len() - 4);
        assert_request_error(
            &short_total,
            DecodeError::TlvOverrun {
                tlv_type: 200,
                offset: 24,
                claimed: 20,
                remaining: 19,
            },
            ErrorCode::MalformedMessage,
        );

        let short_connect = tlv(10, &[0; 14]);
        assert_request_error(
            &message_of(&[&short_connect, &auth]),
            DecodeError::TlvTooShort {
                tlv_type: 10,
                offset: 4,
                words: 4,
                min_words: 5,
            },
            ErrorCode::MalformedMessage,
        );

        let short_auth = tlv(200, &[0; 62]);
        assert_request_error(
            &message_of(&[&connect, &short_auth]),
            DecodeError::TlvTooShort {
                tlv_type: 200,
                offset: 24,
                words: 16,
                min_words: 17,
            },
            ErrorCode::MalformedMessage,
        );

        let mut long_auth = auth.clone();
        long_auth[1] += 1;
        long_auth.extend_from_slice(&[0; 4]);
        assert_request_error(
            &message_of(&[&connect, &long_auth]),
            DecodeError::AuthLength {
                offset: 24,
                words: 21,
                id_len: 11,
                expected: 20,
            },
            ErrorCode::MalformedMessage,
        );
    }

    #[test]
    fn bad_auth_fields() {
        let (connect, auth) = split(&v4_request().encode());

        let mut padded = auth.clone();
        *padded.last_mut().expect("padding") = 1;
        assert_request_error(
            &message_of(&[&connect, &padded]),
            DecodeError::NonZeroPadding {
                tlv_type: 200,
                offset: 24,
            },
            ErrorCode::MalformedMessage,
        );

        let mut reserved = auth.clone();
        reserved[3] = 1;
        assert_request_error(
            &message_of(&[&connect, &reserved]),
            DecodeError::NonZeroReserved { offset: 24 },
            ErrorCode::MalformedMessage,
        );

        let mut spaced = auth.clone();
        spaced[68 + 4] = b' ';
        assert_request_error(
            &message_of(&[&connect, &spaced]),
            DecodeError::BadClientId {
                offset: 24,
                source: ClientIdError::BadByte {
                    byte: b' ',
                    position: 4,
                },
            },
            ErrorCode::MalformedMessage,
        );

        let mut empty = auth[..68].to_vec();
        empty[1] = 17;
        empty[2] = 0;
        assert_request_error(
            &message_of(&[&connect, &empty]),
            DecodeError::BadClientId {
                offset: 24,
                source: ClientIdError::Empty,
            },
            ErrorCode::MalformedMessage,
        );
    }

    #[test]
    fn bad_tlv_sequences() {
        let (connect, auth) = split(&v4_request().encode());
        let info = tlv(1, &[0, 0]);

        assert_request_error(
            &message_of(&[&connect, &connect, &auth]),
            DecodeError::DuplicateConnect { offset: 24 },
            ErrorCode::MalformedMessage,
        );
        assert_request_error(
            &message_of(&[&connect, &auth, &info]),
            DecodeError::AuthNotLast { offset: 24 },
            ErrorCode::MalformedMessage,
        );
        assert_request_error(
            &message_of(&[&connect, &auth, &auth]),
            DecodeError::AuthNotLast { offset: 24 },
            ErrorCode::MalformedMessage,
        );
        assert_request_error(
            &message_of(&[&auth]),
            DecodeError::MissingConnect,
            ErrorCode::MalformedMessage,
        );
        assert_request_error(
            &message_of(&[&connect]),
            DecodeError::MissingAuth,
            ErrorCode::MalformedMessage,
        );
        assert_request_error(
            &message_of(&[]),
            DecodeError::MissingConnect,
            ErrorCode::MalformedMessage,
        );
    }

    #[test]
    fn unsupported_tlvs() {
        let (connect, auth) = split(&v4_request().encode());
        for kind in [
            tlv_type::EXTENDED_TCP_HEADER,
            tlv_type::SUPPORTED_TCP_EXTENSIONS,
            tlv_type::COOKIE,
            tlv_type::ERROR,
            0,
            50,
            191,
        ] {
            let other = tlv(kind, &[0; 6]);
            assert_request_error(
                &message_of(&[&connect, &other, &auth]),
                DecodeError::UnsupportedTlv {
                    tlv_type: kind,
                    offset: 24,
                },
                ErrorCode::UnsupportedMessage,
            );
        }

        let err = Response::decode(&message_of(&[&connect])).expect_err("connect in a response");
        assert_eq!(
            err,
            DecodeError::UnsupportedTlv {
                tlv_type: 10,
                offset: 4
            }
        );
        assert_eq!(err.code(), ErrorCode::UnsupportedMessage);
        assert_eq!(
            Response::decode(&message_of(&[&auth])),
            Err(DecodeError::UnsupportedTlv {
                tlv_type: 200,
                offset: 4
            })
        );
    }

    #[test]
    fn info_and_private_tlvs_are_skipped() {
        let req = v4_request();
        let (connect, auth) = split(&req.encode());
        let info = tlv(1, &[0, 0]);
        let private = tlv(230, b"later");
        let bytes = message_of(&[&info, &connect, &private, &auth]);
        assert_eq!(ConnectRequest::decode(&bytes), Ok((req, bytes.len())));

        let error = tlv(30, &[97, 3]);
        let bytes = message_of(&[&info, &error, &private]);
        let expected = Response::Error {
            code: ErrorCode::DestinationUnreachable,
            value: 3,
        };
        assert_eq!(Response::decode(&bytes), Ok((expected, bytes.len())));
    }

    #[test]
    fn a_stale_epoch_answer_is_a_refusal_with_the_epoch() {
        let answer = Response::StaleEpoch {
            epoch: 0x1122_3344_5566_7788,
            mac: [0xee; 32],
        };
        let encoded = answer.encode();
        assert_eq!(encoded.len(), 52);
        assert_eq!(
            &encoded[..12],
            &[1, 13, 0x22, 0x63, 30, 1, 32, 0, 201, 11, 0, 0]
        );
        assert_eq!(&encoded[12..20], &0x1122_3344_5566_7788u64.to_be_bytes());
        assert_eq!(&encoded[20..], &[0xee; 32]);
        assert_eq!(Response::decode(&encoded), Ok((answer, 52)));
        for len in 0..encoded.len() {
            assert!(matches!(
                Response::decode(&encoded[..len]),
                Err(DecodeError::Incomplete { .. })
            ));
        }

        let (error, epoch) = (&encoded[4..8], &encoded[8..]);
        // Either order; anything else is refused.
        let swapped = message_of(&[epoch, error]);
        assert_eq!(Response::decode(&swapped), Ok((answer, 52)));
        assert_eq!(
            Response::decode(&message_of(&[epoch])),
            Err(DecodeError::EpochWithoutRefusal { offset: 4 })
        );
        let other = tlv(30, &[97, 0]);
        assert_eq!(
            Response::decode(&message_of(&[&other, epoch])),
            Err(DecodeError::EpochWithoutRefusal { offset: 8 })
        );
        assert_eq!(
            Response::decode(&message_of(&[error, epoch, epoch])),
            Err(DecodeError::DuplicateEpoch { offset: 52 })
        );
        let mut reserved = epoch.to_vec();
        reserved[3] = 1;
        assert_eq!(
            Response::decode(&message_of(&[error, &reserved])),
            Err(DecodeError::NonZeroReserved { offset: 8 })
        );
        let short = tlv(201, &[0; 30]);
        assert_eq!(
            Response::decode(&message_of(&[error, &short])),
            Err(DecodeError::EpochLength {
                offset: 8,
                words: 8
            })
        );
        let mut long = epoch.to_vec();
        long[1] = 12;
        long.extend_from_slice(&[0; 4]);
        assert_eq!(
            Response::decode(&message_of(&[error, &long])),
            Err(DecodeError::EpochLength {
                offset: 8,
                words: 12
            })
        );
    }

    #[test]
    fn a_stale_clock_answer_is_a_refusal_with_the_clock_and_epoch() {
        let answer = Response::StaleClock {
            now_ms: 0x0102_0304_0506_0708,
            epoch: 0x1122_3344_5566_7788,
            mac: [0xee; 32],
        };
        let encoded = answer.encode();
        assert_eq!(encoded.len(), 60);
        assert_eq!(
            &encoded[..12],
            &[1, 15, 0x22, 0x63, 30, 1, 32, 0, 202, 13, 0, 0]
        );
        assert_eq!(&encoded[12..20], &0x0102_0304_0506_0708u64.to_be_bytes());
        assert_eq!(&encoded[20..28], &0x1122_3344_5566_7788u64.to_be_bytes());
        assert_eq!(&encoded[28..], &[0xee; 32]);
        assert_eq!(Response::decode(&encoded), Ok((answer, 60)));
        for len in 0..encoded.len() {
            assert!(matches!(
                Response::decode(&encoded[..len]),
                Err(DecodeError::Incomplete { .. })
            ));
        }

        let (error, clock) = (&encoded[4..8], &encoded[8..]);
        assert_eq!(
            Response::decode(&message_of(&[clock, error])),
            Ok((answer, 60))
        );
        assert_eq!(
            Response::decode(&message_of(&[clock])),
            Err(DecodeError::ClockWithoutRefusal { offset: 4 })
        );
        let other = tlv(30, &[97, 0]);
        assert_eq!(
            Response::decode(&message_of(&[&other, clock])),
            Err(DecodeError::ClockWithoutRefusal { offset: 8 })
        );
        assert_eq!(
            Response::decode(&message_of(&[error, clock, clock])),
            Err(DecodeError::DuplicateClock { offset: 60 })
        );
        let epoch = Response::StaleEpoch {
            epoch: 1,
            mac: [0; 32],
        }
        .encode();
        assert_eq!(
            Response::decode(&message_of(&[error, clock, &epoch[8..]])),
            Err(DecodeError::EpochAndClock { offset: 60 })
        );
        let mut reserved = clock.to_vec();
        reserved[2] = 1;
        assert_eq!(
            Response::decode(&message_of(&[error, &reserved])),
            Err(DecodeError::NonZeroReserved { offset: 8 })
        );
        let short = tlv(202, &[0; 42]);
        assert_eq!(
            Response::decode(&message_of(&[error, &short])),
            Err(DecodeError::ClockLength {
                offset: 8,
                words: 11
            })
        );
    }

    #[test]
    fn response_errors() {
        let error = tlv(30, &[32, 0]);
        assert_eq!(
            Response::decode(&message_of(&[&error, &error])),
            Err(DecodeError::DuplicateError { offset: 8 })
        );
        let long_value = tlv(30, &[33, 2, 4, 0, 0, 0]);
        assert_eq!(
            Response::decode(&message_of(&[&long_value])),
            Ok((
                Response::Error {
                    code: ErrorCode::UnsupportedTcpOption,
                    value: 2
                },
                12
            ))
        );
    }

    #[test]
    fn connect_tcp_options() {
        let req = v4_request();
        let (connect, auth) = split(&req.encode());

        let mut nops = connect.clone();
        nops[1] = 6;
        nops.extend_from_slice(&[1, 1, 0, 0]);
        let bytes = message_of(&[&nops, &auth]);
        assert_eq!(ConnectRequest::decode(&bytes), Ok((req, bytes.len())));

        let mut mss = connect.clone();
        mss[1] = 6;
        mss.extend_from_slice(&[2, 4, 5, 0xb4]);
        assert_request_error(
            &message_of(&[&mss, &auth]),
            DecodeError::UnsupportedTcpOption { offset: 4, kind: 2 },
            ErrorCode::UnsupportedTcpOption,
        );
    }

    #[test]
    fn client_ids_are_validated() {
        assert_eq!(
            ClientId::try_from("site-1.example").map(|id| id.to_string()),
            Ok("site-1.example".to_owned())
        );
        assert_eq!(ClientId::try_from(""), Err(ClientIdError::Empty));
        assert_eq!(
            "x".repeat(65).parse::<ClientId>(),
            Err(ClientIdError::TooLong { len: 65 })
        );
        assert_eq!(
            ClientId::try_from("my router"),
            Err(ClientIdError::BadByte {
                byte: b' ',
                position: 2
            })
        );
        assert_eq!(
            ClientId::try_from("café"),
            Err(ClientIdError::BadByte {
                byte: 0xc3,
                position: 3
            })
        );
        assert!(ClientId::try_from("tab\there").is_err());
    }

    /// Seeded xorshift64: deterministic pseudo-random bytes.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> usize {
            (self.next() % n) as usize
        }
    }

    fn check_never_panics(bytes: &[u8]) {
        if let Ok(Some(len)) = header_len(bytes) {
            assert!((FIXED_HEADER_LEN..=MAX_MESSAGE_LEN).contains(&len));
        }
        if let Ok((req, used)) = ConnectRequest::decode(bytes) {
            assert!(used <= bytes.len());
            let again = req.encode();
            assert_eq!(ConnectRequest::decode(&again), Ok((req, again.len())));
        }
        if let Ok((response, used)) = Response::decode(bytes) {
            assert!(used <= bytes.len());
            let again = response.encode();
            assert_eq!(Response::decode(&again), Ok((response, again.len())));
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let seeds = [
            v4_request().encode(),
            Response::Error {
                code: ErrorCode::NotAuthorized,
                value: 0,
            }
            .encode(),
            Response::StaleEpoch {
                epoch: 7,
                mac: [9; 32],
            }
            .encode(),
            Response::StaleClock {
                now_ms: 1_795_000_000_000,
                epoch: 7,
                mac: [9; 32],
            }
            .encode(),
        ];
        let mut bytes = Vec::with_capacity(300);
        for round in 0..200_000 {
            bytes.clear();
            match round % 4 {
                // Pure noise.
                0 => bytes.extend((0..rng.below(300)).map(|_| rng.next() as u8)),
                // A valid fixed header, then noise.
                1 | 2 => {
                    let len = rng.below(300);
                    bytes.extend_from_slice(&[1, rng.next() as u8, 0x22, 0x63]);
                    if rng.below(2) == 0 {
                        bytes[1] = (len / 4) as u8;
                    }
                    bytes.extend((0..len).map(|_| rng.next() as u8));
                    bytes.truncate(len);
                }
                // A valid message with a few bytes changed, maybe truncated.
                _ => {
                    bytes.extend_from_slice(&seeds[rng.below(seeds.len() as u64)]);
                    for _ in 0..1 + rng.below(3) {
                        let at = rng.below(bytes.len() as u64);
                        bytes[at] = rng.next() as u8;
                    }
                    let keep = bytes.len() - rng.below(bytes.len() as u64 / 2);
                    bytes.truncate(keep);
                }
            }
            check_never_panics(&bytes);
        }
    }
}
