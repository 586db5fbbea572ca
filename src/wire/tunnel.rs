//! The datagram tunnel's messages: everything on the concentrator's one UDP
//! port. Layouts follow WireGuard's (paper § 5.4), with the sender index of
//! an initiation inside its encrypted payload and a path id in the data
//! header. All integers are big-endian.
//!
//! ```text
//! every message   type (u8) | reserved, zero (3 bytes) | ...
//! 1 initiation    noise IK message 1 (113) | mac1 (16) | mac2 (16)          = 149
//! 2 response      receiver index (u32) | noise IK message 2 (53)
//!                 | mac1 (16) | mac2 (16)                                  = 93
//! 3 cookie reply  nonce (24) | cookie sealed with XChaCha20-Poly1305 (32)   = 60
//! 4 data          receiver index (u32) | counter (u64) | path id (u8)
//!                 | ciphertext | tag (16)                                  ≥ 33
//! ```
//!
//! The data header (the first [`DATA_HEADER_LEN`] bytes) is the AEAD's
//! associated data, so the path id and counter cannot be changed on the
//! way. A packet sent on several paths at once (redundant scheduling) is
//! sealed once, with path id [`ANY_PATH`], and the same bytes go on each:
//! the copies share a counter, so the receiver's replay window keeps the
//! first and drops the others, and the receiver knows each copy's path by
//! where it arrived. (Sealing each copy under its own path id would need a
//! counter per copy, and the duplicates would all get through.)
//!
//! The decrypted payload is an [`Inner`]: nothing (a keepalive), an IP
//! packet, or a control message: a [`PathProbe`], a steer (the client
//! asks for a flow's packets towards it on the path the steer came on:
//! its scheduler moved a flow that only receives), or the client's MTU.
//!
//! ```text
//! steer   kind 3 | protocol | family (4, 6) | demux (0 hosts, 1 ports,
//!         2 echo, 3 fragment) | src | dst (4 or 16 bytes each)
//!         | port or echo id (u16) | port (u16)         = 16 (IPv4), 40 (IPv6)
//! mtu     kind 4 | largest inner IP packet (u16)       = 3
//! ```
//!
//! The flow is keyed as the client sends it (source: its tunnel address).
//!
//! The views are panic-free: `new_checked` checks the length once, after
//! which no accessor can panic; nothing allocates. Encoders write into a
//! buffer the caller owns.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::bytes;
use super::flow::{Demux, FlowKey};

/// Message type of a handshake initiation.
pub const TYPE_INITIATION: u8 = 1;
/// Message type of a handshake response.
pub const TYPE_RESPONSE: u8 = 2;
/// Message type of a cookie reply.
pub const TYPE_COOKIE_REPLY: u8 = 3;
/// Message type of a data message.
pub const TYPE_DATA: u8 = 4;

/// The path id of a packet sent on several paths at once.
pub const ANY_PATH: u8 = 0xff;

/// Type byte and reserved bytes, at the start of every message.
pub const HEADER_LEN: usize = 4;
/// Length of mac1, mac2 and a cookie.
pub const MAC_LEN: usize = 16;
/// Length of an AEAD tag.
pub const TAG_LEN: usize = 16;
/// Length of the Noise part of an initiation: ephemeral key (32), sealed
/// static key (32 + 16), sealed payload (16 + 16).
pub const INITIATION_NOISE_LEN: usize = 32 + 48 + INITIATION_PAYLOAD_LEN + TAG_LEN;
/// Length of an initiation's payload before sealing: sender index (u32),
/// TAI64N timestamp (12) and the data ciphers the initiator offers (one
/// byte of flags, `crate::crypto::session::Ciphers`).
pub const INITIATION_PAYLOAD_LEN: usize = 4 + 12 + 1;
/// Length of a whole initiation.
pub const INITIATION_LEN: usize = HEADER_LEN + INITIATION_NOISE_LEN + 2 * MAC_LEN;
/// Length of the Noise part of a response: ephemeral key (32), sealed
/// payload (5 + 16).
pub const RESPONSE_NOISE_LEN: usize = 32 + RESPONSE_PAYLOAD_LEN + TAG_LEN;
/// Length of a response's payload before sealing: the responder's index
/// and the data cipher it chose (one byte,
/// `crate::crypto::session::Cipher`).
pub const RESPONSE_PAYLOAD_LEN: usize = 4 + 1;
/// Length of a whole response.
pub const RESPONSE_LEN: usize = HEADER_LEN + 4 + RESPONSE_NOISE_LEN + 2 * MAC_LEN;
/// Length of a cookie reply's nonce (XChaCha20).
pub const COOKIE_NONCE_LEN: usize = 24;
/// Length of a whole cookie reply.
pub const COOKIE_REPLY_LEN: usize = HEADER_LEN + COOKIE_NONCE_LEN + MAC_LEN + TAG_LEN;
/// Length of a data message's header, the AEAD's associated data.
pub const DATA_HEADER_LEN: usize = HEADER_LEN + 4 + 8 + 1;
/// Length of the shortest data message (a keepalive).
pub const DATA_MIN_LEN: usize = DATA_HEADER_LEN + TAG_LEN;
/// Bytes a data message adds to its inner payload.
pub const DATA_OVERHEAD: usize = DATA_MIN_LEN;

/// Byte offsets of the fields.
pub mod field {
    /// The message type.
    pub const TYPE: usize = 0;
    /// Reserved bytes, zero.
    pub const RESERVED: std::ops::Range<usize> = 1..4;
    /// Initiation: the Noise message.
    pub const INITIATION_NOISE: std::ops::Range<usize> = 4..117;
    /// Initiation: mac1.
    pub const INITIATION_MAC1: std::ops::Range<usize> = 117..133;
    /// Initiation: mac2.
    pub const INITIATION_MAC2: std::ops::Range<usize> = 133..149;
    /// Response and data: the receiver's index.
    pub const RECEIVER: usize = 4;
    /// Response: the Noise message.
    pub const RESPONSE_NOISE: std::ops::Range<usize> = 8..61;
    /// Response: mac1.
    pub const RESPONSE_MAC1: std::ops::Range<usize> = 61..77;
    /// Response: mac2.
    pub const RESPONSE_MAC2: std::ops::Range<usize> = 77..93;
    /// Cookie reply: the nonce.
    pub const COOKIE_NONCE: std::ops::Range<usize> = 4..28;
    /// Cookie reply: the sealed cookie.
    pub const COOKIE_SEALED: std::ops::Range<usize> = 28..60;
    /// Data: the counter.
    pub const COUNTER: usize = 8;
    /// Data: the path id.
    pub const PATH: usize = 16;
}

/// Why bytes are not a tunnel message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Shorter than the type and reserved bytes.
    #[error("tunnel message of {len} bytes is shorter than its 4-byte header")]
    Truncated {
        /// Bytes in the buffer.
        len: usize,
    },
    /// A type byte that is no tunnel message.
    #[error("unknown tunnel message type {0}")]
    UnknownType(u8),
    /// The reserved bytes are not zero.
    #[error("tunnel message with non-zero reserved bytes")]
    Reserved,
    /// The length does not fit the message type.
    #[error("tunnel message of type {kind} is {len} bytes, expected {expected}")]
    Length {
        /// The message type.
        kind: u8,
        /// Bytes in the buffer.
        len: usize,
        /// The length (or, for data, the least length) of that type.
        expected: usize,
    },
    /// A steer that is not one (length, family or demux kind).
    #[error("malformed steer of {len} bytes")]
    Steer {
        /// Bytes in the message.
        len: usize,
    },
    /// An MTU announcement of the wrong length.
    #[error("MTU announcement of {len} bytes, expected {MTU_LEN}")]
    MtuLength {
        /// Bytes in the message.
        len: usize,
    },
    /// A buffer to encode into is too small.
    #[error("buffer of {len} bytes too small for a {need}-byte tunnel message")]
    BufferTooSmall {
        /// Bytes in the buffer.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
}

/// Checks the common header and that the length suits `kind`.
fn check(
    buf: &[u8],
    kind: u8,
    len_ok: impl Fn(usize) -> bool,
    expected: usize,
) -> Result<(), Error> {
    let len = buf.len();
    if len < HEADER_LEN {
        return Err(Error::Truncated { len });
    }
    let found = buf[field::TYPE];
    if found != kind {
        return Err(Error::UnknownType(found));
    }
    if buf[field::RESERVED] != [0, 0, 0] {
        return Err(Error::Reserved);
    }
    if !len_ok(len) {
        return Err(Error::Length {
            kind,
            len,
            expected,
        });
    }
    Ok(())
}

fn be16(buf: &[u8], at: usize) -> u16 {
    bytes(buf, at).map_or(0, u16::from_be_bytes)
}

fn be32(buf: &[u8], at: usize) -> u32 {
    bytes(buf, at).map_or(0, u32::from_be_bytes)
}

fn be64(buf: &[u8], at: usize) -> u64 {
    bytes(buf, at).map_or(0, u64::from_be_bytes)
}

fn range(buf: &[u8], at: std::ops::Range<usize>) -> &[u8] {
    buf.get(at).unwrap_or(&[])
}

fn mac(buf: &[u8], at: std::ops::Range<usize>) -> [u8; MAC_LEN] {
    bytes(buf, at.start).unwrap_or([0; MAC_LEN])
}

/// Writes the type and reserved bytes; `out` must have [`HEADER_LEN`].
fn put_header(out: &mut [u8], kind: u8) {
    if let Some(header) = out.get_mut(..HEADER_LEN) {
        header.copy_from_slice(&[kind, 0, 0, 0]);
    }
}

fn put(out: &mut [u8], at: std::ops::Range<usize>, value: &[u8]) {
    if let Some(slot) = out.get_mut(at) {
        if slot.len() == value.len() {
            slot.copy_from_slice(value);
        }
    }
}

/// Which message a datagram is, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// A handshake initiation.
    Initiation,
    /// A handshake response.
    Response,
    /// A cookie reply.
    CookieReply,
    /// A data message.
    Data,
}

impl MessageType {
    /// The type of `buf` (its header only is checked).
    pub fn of(buf: &[u8]) -> Result<Self, Error> {
        let Some(&kind) = buf.first() else {
            return Err(Error::Truncated { len: 0 });
        };
        match kind {
            TYPE_INITIATION => Ok(Self::Initiation),
            TYPE_RESPONSE => Ok(Self::Response),
            TYPE_COOKIE_REPLY => Ok(Self::CookieReply),
            TYPE_DATA => Ok(Self::Data),
            other => Err(Error::UnknownType(other)),
        }
    }
}

/// A checked handshake initiation.
#[derive(Debug, Clone)]
pub struct Initiation<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Initiation<T> {
    /// Checks that `buffer` is exactly one initiation.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        check(
            buffer.as_ref(),
            TYPE_INITIATION,
            |len| len == INITIATION_LEN,
            INITIATION_LEN,
        )?;
        Ok(Self { buffer })
    }

    /// The Noise IK first message.
    pub fn noise(&self) -> &[u8] {
        range(self.buffer.as_ref(), field::INITIATION_NOISE)
    }

    /// mac1.
    pub fn mac1(&self) -> [u8; MAC_LEN] {
        mac(self.buffer.as_ref(), field::INITIATION_MAC1)
    }

    /// mac2.
    pub fn mac2(&self) -> [u8; MAC_LEN] {
        mac(self.buffer.as_ref(), field::INITIATION_MAC2)
    }

    /// The bytes mac1 covers: everything before it.
    pub fn mac1_input(&self) -> &[u8] {
        range(self.buffer.as_ref(), 0..field::INITIATION_MAC1.start)
    }

    /// The bytes mac2 covers: everything before it.
    pub fn mac2_input(&self) -> &[u8] {
        range(self.buffer.as_ref(), 0..field::INITIATION_MAC2.start)
    }

    /// The whole message.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Initiation<T> {
    /// Sets mac1.
    pub fn set_mac1(&mut self, value: &[u8; MAC_LEN]) {
        put(self.buffer.as_mut(), field::INITIATION_MAC1, value);
    }

    /// Sets mac2.
    pub fn set_mac2(&mut self, value: &[u8; MAC_LEN]) {
        put(self.buffer.as_mut(), field::INITIATION_MAC2, value);
    }
}

/// Writes an initiation with `noise` and zero MACs into `out`.
pub fn encode_initiation<'a>(
    out: &'a mut [u8; INITIATION_LEN],
    noise: &[u8; INITIATION_NOISE_LEN],
) -> Initiation<&'a mut [u8; INITIATION_LEN]> {
    out.fill(0);
    put_header(out, TYPE_INITIATION);
    put(out, field::INITIATION_NOISE, noise);
    Initiation { buffer: out }
}

/// A checked handshake response.
#[derive(Debug, Clone)]
pub struct Response<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Response<T> {
    /// Checks that `buffer` is exactly one response.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        check(
            buffer.as_ref(),
            TYPE_RESPONSE,
            |len| len == RESPONSE_LEN,
            RESPONSE_LEN,
        )?;
        Ok(Self { buffer })
    }

    /// The index the initiator chose (its sender index).
    pub fn receiver_index(&self) -> u32 {
        be32(self.buffer.as_ref(), field::RECEIVER)
    }

    /// The Noise IK second message.
    pub fn noise(&self) -> &[u8] {
        range(self.buffer.as_ref(), field::RESPONSE_NOISE)
    }

    /// mac1.
    pub fn mac1(&self) -> [u8; MAC_LEN] {
        mac(self.buffer.as_ref(), field::RESPONSE_MAC1)
    }

    /// mac2.
    pub fn mac2(&self) -> [u8; MAC_LEN] {
        mac(self.buffer.as_ref(), field::RESPONSE_MAC2)
    }

    /// The bytes mac1 covers: everything before it.
    pub fn mac1_input(&self) -> &[u8] {
        range(self.buffer.as_ref(), 0..field::RESPONSE_MAC1.start)
    }

    /// The whole message.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Response<T> {
    /// Sets mac1.
    pub fn set_mac1(&mut self, value: &[u8; MAC_LEN]) {
        put(self.buffer.as_mut(), field::RESPONSE_MAC1, value);
    }
}

/// Writes a response to `receiver` with `noise` and zero MACs into `out`.
pub fn encode_response<'a>(
    out: &'a mut [u8; RESPONSE_LEN],
    receiver: u32,
    noise: &[u8; RESPONSE_NOISE_LEN],
) -> Response<&'a mut [u8; RESPONSE_LEN]> {
    out.fill(0);
    put_header(out, TYPE_RESPONSE);
    put(
        out,
        field::RECEIVER..field::RECEIVER + 4,
        &receiver.to_be_bytes(),
    );
    put(out, field::RESPONSE_NOISE, noise);
    Response { buffer: out }
}

/// A checked cookie reply.
#[derive(Debug, Clone)]
pub struct CookieReply<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> CookieReply<T> {
    /// Checks that `buffer` is exactly one cookie reply.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        check(
            buffer.as_ref(),
            TYPE_COOKIE_REPLY,
            |len| len == COOKIE_REPLY_LEN,
            COOKIE_REPLY_LEN,
        )?;
        Ok(Self { buffer })
    }

    /// The XChaCha20 nonce.
    pub fn nonce(&self) -> [u8; COOKIE_NONCE_LEN] {
        bytes(self.buffer.as_ref(), field::COOKIE_NONCE.start).unwrap_or([0; COOKIE_NONCE_LEN])
    }

    /// The sealed cookie and its tag.
    pub fn sealed_cookie(&self) -> &[u8] {
        range(self.buffer.as_ref(), field::COOKIE_SEALED)
    }
}

/// Writes a cookie reply into `out`.
pub fn encode_cookie_reply(
    out: &mut [u8; COOKIE_REPLY_LEN],
    nonce: &[u8; COOKIE_NONCE_LEN],
    sealed_cookie: &[u8; MAC_LEN + TAG_LEN],
) {
    put_header(out, TYPE_COOKIE_REPLY);
    put(out, field::COOKIE_NONCE, nonce);
    put(out, field::COOKIE_SEALED, sealed_cookie);
}

/// A checked data message.
#[derive(Debug, Clone)]
pub struct Data<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Data<T> {
    /// Checks that `buffer` holds a data header and at least a tag.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        check(
            buffer.as_ref(),
            TYPE_DATA,
            |len| len >= DATA_MIN_LEN,
            DATA_MIN_LEN,
        )?;
        Ok(Self { buffer })
    }

    /// The index the receiver chose for this session.
    pub fn receiver_index(&self) -> u32 {
        be32(self.buffer.as_ref(), field::RECEIVER)
    }

    /// The session's counter, the AEAD nonce.
    pub fn counter(&self) -> u64 {
        be64(self.buffer.as_ref(), field::COUNTER)
    }

    /// The uplink the sender sent it on.
    pub fn path(&self) -> u8 {
        self.buffer.as_ref().get(field::PATH).copied().unwrap_or(0)
    }

    /// The header, the AEAD's associated data.
    pub fn header(&self) -> &[u8] {
        range(self.buffer.as_ref(), 0..DATA_HEADER_LEN)
    }

    /// Ciphertext and tag.
    pub fn sealed(&self) -> &[u8] {
        self.buffer.as_ref().get(DATA_HEADER_LEN..).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Data<T> {
    /// The header, and the ciphertext and tag to open in place.
    pub fn split_mut(&mut self) -> (&[u8], &mut [u8]) {
        let buf = self.buffer.as_mut();
        let at = DATA_HEADER_LEN.min(buf.len());
        let (header, sealed) = buf.split_at_mut(at);
        (header, sealed)
    }
}

/// Writes a data header into the first [`DATA_HEADER_LEN`] bytes of `out`.
pub fn encode_data_header(
    out: &mut [u8],
    receiver: u32,
    counter: u64,
    path: u8,
) -> Result<(), Error> {
    let Some(header) = out.get_mut(..DATA_HEADER_LEN) else {
        return Err(Error::BufferTooSmall {
            len: out.len(),
            need: DATA_HEADER_LEN,
        });
    };
    put_header(header, TYPE_DATA);
    put(
        header,
        field::RECEIVER..field::COUNTER,
        &receiver.to_be_bytes(),
    );
    put(header, field::COUNTER..field::PATH, &counter.to_be_bytes());
    header[field::PATH] = path;
    Ok(())
}

/// Inner kind byte of an IP packet.
pub const INNER_IP: u8 = 1;
/// Inner kind byte of a path probe.
pub const INNER_PROBE: u8 = 2;
/// Length of an encoded [`PathProbe`], kind byte included.
pub const PROBE_LEN: usize = 1 + 1 + 6 * 8;
/// Inner kind byte of a steer.
pub const INNER_STEER: u8 = 3;
/// Length of an encoded steer of an IPv4 flow, kind byte included.
pub const STEER_V4_LEN: usize = 4 + 2 * 4 + 4;
/// Length of an encoded steer of an IPv6 flow, kind byte included.
pub const STEER_V6_LEN: usize = 4 + 2 * 16 + 4;
/// Inner kind byte of an MTU announcement.
pub const INNER_MTU: u8 = 4;
/// Length of an encoded MTU announcement, kind byte included.
pub const MTU_LEN: usize = 3;

/// Why a decrypted payload is not an inner message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InnerError {
    /// A kind byte that is neither IP nor control.
    #[error("unknown inner message kind {0}")]
    UnknownKind(u8),
    /// An IP message without a packet.
    #[error("inner IP message without a packet")]
    EmptyPacket,
    /// A probe of the wrong length.
    #[error("path probe of {len} bytes, expected {PROBE_LEN}")]
    ProbeLength {
        /// Bytes in the message.
        len: usize,
    },
    /// A steer that is not one (length, family or demux kind).
    #[error("malformed steer of {len} bytes")]
    Steer {
        /// Bytes in the message.
        len: usize,
    },
    /// An MTU announcement of the wrong length.
    #[error("MTU announcement of {len} bytes, expected {MTU_LEN}")]
    MtuLength {
        /// Bytes in the message.
        len: usize,
    },
    /// A buffer to encode into is too small.
    #[error("buffer of {len} bytes too small for a {need}-byte inner message")]
    BufferTooSmall {
        /// Bytes in the buffer.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
}

/// A decrypted data payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inner<'a> {
    /// Nothing: a keepalive (and, from the initiator, the confirmation
    /// that it has the new session).
    Keepalive,
    /// An IP packet for the TUN device.
    Ip(&'a [u8]),
    /// A path probe.
    Probe(PathProbe),
    /// A steer: send this flow's packets (keyed as the client sends them)
    /// on the path this message came on.
    Steer(FlowKey),
    /// The largest IP packet the sender's paths carry whole, sealed: the
    /// receiver refuses or fragments larger ones towards it. The client
    /// announces it on each path every few seconds (it is also that
    /// path's keepalive).
    Mtu(u16),
}

impl<'a> Inner<'a> {
    /// Reads a decrypted payload.
    pub fn parse(buf: &'a [u8]) -> Result<Self, InnerError> {
        let Some((&kind, rest)) = buf.split_first() else {
            return Ok(Self::Keepalive);
        };
        match kind {
            INNER_IP if rest.is_empty() => Err(InnerError::EmptyPacket),
            INNER_IP => Ok(Self::Ip(rest)),
            INNER_PROBE => PathProbe::parse(buf).map(Self::Probe),
            INNER_STEER => parse_steer(buf).map(Self::Steer),
            INNER_MTU => match rest {
                &[hi, lo] => Ok(Self::Mtu(u16::from_be_bytes([hi, lo]))),
                _ => Err(InnerError::MtuLength { len: buf.len() }),
            },
            other => Err(InnerError::UnknownKind(other)),
        }
    }

    /// Bytes [`Inner::encode`] writes.
    pub fn len(&self) -> usize {
        match self {
            Self::Keepalive => 0,
            Self::Ip(packet) => 1 + packet.len(),
            Self::Probe(_) => PROBE_LEN,
            Self::Steer(key) => match key.src {
                IpAddr::V4(_) => STEER_V4_LEN,
                IpAddr::V6(_) => STEER_V6_LEN,
            },
            Self::Mtu(_) => MTU_LEN,
        }
    }

    /// Whether it encodes to nothing (a keepalive).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the message at the start of `out`; returns its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, InnerError> {
        let need = self.len();
        let Some(slot) = out.get_mut(..need) else {
            return Err(InnerError::BufferTooSmall {
                len: out.len(),
                need,
            });
        };
        match self {
            Self::Keepalive => {}
            Self::Ip(packet) => {
                slot[0] = INNER_IP;
                slot[1..].copy_from_slice(packet);
            }
            Self::Probe(probe) => probe.write(slot),
            Self::Steer(key) => write_steer(key, slot),
            Self::Mtu(mtu) => {
                slot[0] = INNER_MTU;
                slot[1..].copy_from_slice(&mtu.to_be_bytes());
            }
        }
        Ok(need)
    }
}

/// The control message each end sends on each path: so both learn the
/// path's round trip (timestamp and echo), loss (sequence) and delivery
/// rate (what the other end received on it).
///
/// ```text
/// kind 2 | path id | seq | sent µs | echo µs | echo delay µs
///        | bytes received | packets received          (u64s, big-endian)
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathProbe {
    /// The path it was sent on (also in the data header; kept here so a
    /// probe means the same wherever it is logged).
    pub path: u8,
    /// The sender's sequence number on this path.
    pub seq: u64,
    /// The sender's clock when it sent this, in µs; opaque to the receiver.
    pub sent_us: u64,
    /// The `sent_us` of the last probe the sender received on this path
    /// (0 if none).
    pub echo_us: u64,
    /// How long the sender held that probe before this one echoed it, µs,
    /// so the round trip excludes the wait.
    pub echo_delay_us: u64,
    /// Bytes the sender has received on this path.
    pub rx_bytes: u64,
    /// Packets the sender has received on this path.
    pub rx_packets: u64,
}

/// Reads a steer, kind byte included.
fn parse_steer(buf: &[u8]) -> Result<FlowKey, InnerError> {
    let bad = InnerError::Steer { len: buf.len() };
    let (&[_, protocol, family, demux], rest) = buf.split_first_chunk::<4>().ok_or(bad)?;
    let (src, dst, rest): (IpAddr, IpAddr, &[u8]) = match (family, rest.len()) {
        (4, 12) => {
            let (src, rest) = rest.split_first_chunk::<4>().ok_or(bad)?;
            let (dst, rest) = rest.split_first_chunk::<4>().ok_or(bad)?;
            (
                Ipv4Addr::from(*src).into(),
                Ipv4Addr::from(*dst).into(),
                rest,
            )
        }
        (6, 36) => {
            let (src, rest) = rest.split_first_chunk::<16>().ok_or(bad)?;
            let (dst, rest) = rest.split_first_chunk::<16>().ok_or(bad)?;
            (
                Ipv6Addr::from(*src).into(),
                Ipv6Addr::from(*dst).into(),
                rest,
            )
        }
        _ => return Err(bad),
    };
    let a = be16(rest, 0);
    let b = be16(rest, 2);
    let demux = match demux {
        0 => Demux::Hosts,
        1 => Demux::Ports { src: a, dst: b },
        2 => Demux::Echo { id: a },
        3 => Demux::Fragment,
        _ => return Err(bad),
    };
    Ok(FlowKey {
        protocol,
        src,
        dst,
        demux,
    })
}

/// Writes a steer; `out` is exactly as long as [`Inner::len`] says. A key
/// whose two addresses are of different families (none is ever made)
/// writes the source's family and zeros for the destination.
fn write_steer(key: &FlowKey, out: &mut [u8]) {
    let (demux, a, b) = match key.demux {
        Demux::Hosts => (0, 0, 0),
        Demux::Ports { src, dst } => (1, src, dst),
        Demux::Echo { id } => (2, id, 0),
        Demux::Fragment => (3, 0, 0),
    };
    let (family, width) = match key.src {
        IpAddr::V4(_) => (4, 4),
        IpAddr::V6(_) => (6, 16),
    };
    put(out, 0..4, &[INNER_STEER, key.protocol, family, demux]);
    for (at, addr) in [(4, key.src), (4 + width, key.dst)] {
        match addr {
            IpAddr::V4(a) if width == 4 => put(out, at..at + 4, &a.octets()),
            IpAddr::V6(a) if width == 16 => put(out, at..at + 16, &a.octets()),
            _ => {}
        }
    }
    let at = 4 + 2 * width;
    put(out, at..at + 2, &a.to_be_bytes());
    put(out, at + 2..at + 4, &b.to_be_bytes());
}

impl PathProbe {
    fn parse(buf: &[u8]) -> Result<Self, InnerError> {
        if buf.len() != PROBE_LEN {
            return Err(InnerError::ProbeLength { len: buf.len() });
        }
        Ok(Self {
            path: buf.get(1).copied().unwrap_or(0),
            seq: be64(buf, 2),
            sent_us: be64(buf, 10),
            echo_us: be64(buf, 18),
            echo_delay_us: be64(buf, 26),
            rx_bytes: be64(buf, 34),
            rx_packets: be64(buf, 42),
        })
    }

    /// `out` is exactly [`PROBE_LEN`] bytes.
    fn write(&self, out: &mut [u8]) {
        put(out, 0..1, &[INNER_PROBE]);
        put(out, 1..2, &[self.path]);
        for (at, value) in [
            (2, self.seq),
            (10, self.sent_us),
            (18, self.echo_us),
            (26, self.echo_delay_us),
            (34, self.rx_bytes),
            (42, self.rx_packets),
        ] {
            put(out, at..at + 8, &value.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_add_up() {
        assert_eq!(INITIATION_NOISE_LEN, 113);
        assert_eq!(INITIATION_LEN, 149);
        assert_eq!(field::INITIATION_MAC2.end, INITIATION_LEN);
        assert_eq!(RESPONSE_NOISE_LEN, 53);
        assert_eq!(RESPONSE_LEN, 93);
        assert_eq!(field::RESPONSE_MAC2.end, RESPONSE_LEN);
        assert_eq!(COOKIE_REPLY_LEN, 60);
        assert_eq!(field::COOKIE_SEALED.end, COOKIE_REPLY_LEN);
        assert_eq!(DATA_HEADER_LEN, 17);
        assert_eq!(field::PATH + 1, DATA_HEADER_LEN);
    }

    #[test]
    fn data_header_round_trip() {
        let mut buf = [0xaa; DATA_MIN_LEN + 3];
        encode_data_header(&mut buf, 0xdead_beef, u64::MAX - 1, 7).expect("fits");
        let data = Data::new_checked(&buf[..]).expect("parses");
        assert_eq!(data.receiver_index(), 0xdead_beef);
        assert_eq!(data.counter(), u64::MAX - 1);
        assert_eq!(data.path(), 7);
        assert_eq!(data.header(), &buf[..DATA_HEADER_LEN]);
        assert_eq!(data.sealed().len(), TAG_LEN + 3);
        assert_eq!(MessageType::of(&buf), Ok(MessageType::Data));
        assert_eq!(
            encode_data_header(&mut [0; 16], 1, 1, 1),
            Err(Error::BufferTooSmall { len: 16, need: 17 })
        );
    }

    #[test]
    fn handshake_messages_round_trip() {
        let mut out = [0xff; INITIATION_LEN];
        let mut init = encode_initiation(&mut out, &[3; INITIATION_NOISE_LEN]);
        init.set_mac1(&[1; MAC_LEN]);
        init.set_mac2(&[2; MAC_LEN]);
        let init = Initiation::new_checked(&out[..]).expect("parses");
        assert_eq!(init.noise(), &[3; INITIATION_NOISE_LEN][..]);
        assert_eq!((init.mac1(), init.mac2()), ([1; MAC_LEN], [2; MAC_LEN]));
        assert_eq!(init.mac1_input().len(), 117);
        assert_eq!(init.mac2_input().len(), 133);

        let mut out = [0xff; RESPONSE_LEN];
        encode_response(&mut out, 42, &[5; RESPONSE_NOISE_LEN]).set_mac1(&[6; MAC_LEN]);
        let resp = Response::new_checked(&out[..]).expect("parses");
        assert_eq!(resp.receiver_index(), 42);
        assert_eq!(resp.noise(), &[5; RESPONSE_NOISE_LEN][..]);
        assert_eq!((resp.mac1(), resp.mac2()), ([6; MAC_LEN], [0; MAC_LEN]));

        let mut out = [0; COOKIE_REPLY_LEN];
        encode_cookie_reply(&mut out, &[8; 24], &[9; 32]);
        let reply = CookieReply::new_checked(&out[..]).expect("parses");
        assert_eq!(reply.nonce(), [8; 24]);
        assert_eq!(reply.sealed_cookie(), &[9; 32][..]);
    }

    #[test]
    fn wrong_lengths_types_and_reserved_bytes_are_refused() {
        let mut init = [0; INITIATION_LEN];
        encode_initiation(&mut init, &[0; INITIATION_NOISE_LEN]);
        for len in 0..INITIATION_LEN {
            assert!(Initiation::new_checked(&init[..len]).is_err());
        }
        let mut long = init.to_vec();
        long.push(0);
        assert!(matches!(
            Initiation::new_checked(&long[..]),
            Err(Error::Length { kind: 1, .. })
        ));
        init[2] = 1;
        assert_eq!(
            Initiation::new_checked(&init[..]).err(),
            Some(Error::Reserved)
        );
        init[2] = 0;
        assert_eq!(
            Response::new_checked(&init[..]).err(),
            Some(Error::UnknownType(1))
        );
        assert_eq!(MessageType::of(&[9]), Err(Error::UnknownType(9)));
        assert_eq!(MessageType::of(&[]), Err(Error::Truncated { len: 0 }));
        let mut data = [0; DATA_MIN_LEN];
        encode_data_header(&mut data, 1, 2, 3).expect("fits");
        assert!(Data::new_checked(&data[..DATA_MIN_LEN - 1]).is_err());
        assert!(Data::new_checked(&data[..]).is_ok());
    }

    #[test]
    fn inner_messages_round_trip() {
        let probe = PathProbe {
            path: 2,
            seq: 3,
            sent_us: 4,
            echo_us: 5,
            echo_delay_us: 6,
            rx_bytes: 7,
            rx_packets: u64::MAX,
        };
        let packet = [0x45, 0, 0, 20];
        let v4 = FlowKey {
            protocol: 17,
            src: "10.77.0.2".parse().expect("addr"),
            dst: "198.51.100.10".parse().expect("addr"),
            demux: Demux::Ports {
                src: 40000,
                dst: 5210,
            },
        };
        let v6 = FlowKey {
            protocol: 58,
            src: "fd77::2".parse().expect("addr"),
            dst: "2001:db8:100::10".parse().expect("addr"),
            demux: Demux::Echo { id: 7 },
        };
        let frag = FlowKey {
            demux: Demux::Fragment,
            ..v4
        };
        let hosts = FlowKey {
            protocol: 47,
            demux: Demux::Hosts,
            ..v6
        };
        for inner in [
            Inner::Keepalive,
            Inner::Ip(&packet),
            Inner::Probe(probe),
            Inner::Steer(v4),
            Inner::Steer(v6),
            Inner::Steer(frag),
            Inner::Steer(hosts),
            Inner::Mtu(1438),
        ] {
            let mut buf = [0; 64];
            let len = inner.encode(&mut buf).expect("fits");
            assert_eq!(len, inner.len());
            assert_eq!(Inner::parse(&buf[..len]), Ok(inner));
        }
        assert_eq!(
            Inner::Probe(probe).encode(&mut [0; 10]),
            Err(InnerError::BufferTooSmall { len: 10, need: 50 })
        );
        assert_eq!(Inner::parse(&[1]), Err(InnerError::EmptyPacket));
        assert_eq!(Inner::parse(&[4, 5]), Err(InnerError::MtuLength { len: 2 }));
        assert_eq!(
            Inner::parse(&[4, 5, 6, 7]),
            Err(InnerError::MtuLength { len: 4 })
        );
        assert_eq!(Inner::parse(&[7, 1]), Err(InnerError::UnknownKind(7)));
        assert_eq!(
            Inner::parse(&[2, 1, 2]),
            Err(InnerError::ProbeLength { len: 3 })
        );
        let mut steer = [0; STEER_V4_LEN];
        Inner::Steer(v4).encode(&mut steer).expect("fits");
        for bad in [&steer[..STEER_V4_LEN - 1], &[3, 17, 4], &[3]] {
            assert_eq!(Inner::parse(bad), Err(InnerError::Steer { len: bad.len() }));
        }
        let mut family = steer;
        family[2] = 5;
        assert!(Inner::parse(&family).is_err(), "unknown family");
        let mut demux = steer;
        demux[3] = 4;
        assert!(Inner::parse(&demux).is_err(), "unknown demux kind");
        let mut v6_length = steer;
        v6_length[2] = 6;
        assert!(Inner::parse(&v6_length).is_err(), "IPv6 needs 40 bytes");
    }
}
