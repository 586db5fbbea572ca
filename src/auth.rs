//! Client keys, connect-header authenticators and the replay guard.
//!
//! A client and the concentrator share a 32-byte [`Key`]. The client signs
//! each [`ConnectRequest`] with [`sign_request`]: HMAC-SHA256 keyed with the
//! client's key over [`MAC_DOMAIN`] followed by
//! [`ConnectRequest::mac_input`] (the encoded request with its MAC field
//! zeroed), which covers the destination, the client id, the timestamp,
//! the nonce and the concentrator [`Epoch`] it signs for. The concentrator
//! looks the key up by client id, checks the MAC with [`verify`], and only
//! then asks the client's [`ConnectGuard`] whether the request is fresh:
//! inside the time window, for this concentrator run's epoch, and never
//! seen before ([`ReplayGuard`]). A request for another epoch is answered
//! with [`sign_epoch`]'s authenticated announcement of the current one,
//! which the client checks with [`verify_epoch`] before signing again; one
//! outside the time window is answered (within an answer budget) with the
//! concentrator's clock and epoch, [`sign_clock`], which the client checks
//! with [`verify_clock`] before it corrects its clock offset
//! ([`crate::clock`]) and signs again.
//!
//! Everything here is pure except [`Key::generate`], [`Epoch::generate`]
//! and [`random_nonce`], which read the system's random number generator.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::wire::convert::{Auth, ClientId, ConnectRequest};

/// Length of a [`Key`] in bytes.
pub const KEY_LEN: usize = 32;

/// Domain-separation label the MAC covers before the request, so a MAC made
/// here can never be mistaken for one over another kind of message.
///
/// v2: the request carries the concentrator epoch (v1 headers no longer
/// decode, and their MACs would not verify either).
pub const MAC_DOMAIN: &[u8] = b"mpbond connect v2\0";

/// Domain-separation label of an epoch announcement's MAC.
const EPOCH_DOMAIN: &[u8] = b"mpbond epoch v1\0";

/// Domain-separation label of a clock answer's MAC.
const CLOCK_DOMAIN: &[u8] = b"mpbond clock v1\0";

/// Why a key or a nonce could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The system's random number generator failed.
    #[error("the system's random number generator failed")]
    Random,
    /// A key is not valid base64.
    #[error("key is not valid base64: a key is 32 bytes in base64, as `mpbond keygen` prints")]
    KeyEncoding(#[source] base64::DecodeError),
    /// A key decodes to the wrong number of bytes.
    #[error("key decodes to {len} bytes: a key is 32 bytes in base64, as `mpbond keygen` prints")]
    KeyLength {
        /// How many bytes it decoded to.
        len: usize,
    },
}

/// A client's secret, shared with the concentrator.
///
/// `Debug` prints `Key(..)`; there is no `Display`, so a key does not end up
/// in a log by accident. [`Key::to_base64`] is the one way to show it.
#[derive(Clone)]
pub struct Key([u8; KEY_LEN]);

/// In constant time: a reload compares configured keys, and nothing
/// should tell how much of one matched.
impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Eq for Key {}

impl Key {
    /// A fresh random key.
    pub fn generate() -> Result<Self, AuthError> {
        let mut key = [0; KEY_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| AuthError::Random)?;
        Ok(Self(key))
    }

    /// The key with these bytes (for instance derived by
    /// [`crate::crypto::connect_key`]).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Reads a key in standard base64 (with padding); surrounding whitespace
    /// is ignored.
    pub fn from_base64(text: &str) -> Result<Self, AuthError> {
        let bytes = BASE64.decode(text.trim()).map_err(AuthError::KeyEncoding)?;
        let key = <[u8; KEY_LEN]>::try_from(bytes.as_slice())
            .map_err(|_| AuthError::KeyLength { len: bytes.len() })?;
        Ok(Self(key))
    }

    /// The key's bytes, to derive others from (never to log).
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The key in standard base64, as `mpbond keygen` prints it.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }

    fn hmac_key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Now as unix milliseconds, the clock of connect headers and probes (0 if
/// the system clock is before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One run of a concentrator: a random 64-bit number drawn when it starts,
/// which every connect header must carry (see [`ConnectGuard`] for why).
///
/// [`Epoch::UNKNOWN`] (0) is what a client signs for before it has heard
/// an epoch; no concentrator ever runs with it, so such a header is never
/// accepted, only answered with the current epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch(u64);

impl Epoch {
    /// No epoch heard yet.
    pub const UNKNOWN: Self = Self(0);

    /// A fresh random epoch, never [`Epoch::UNKNOWN`].
    pub fn generate() -> Result<Self, AuthError> {
        let rng = SystemRandom::new();
        loop {
            let mut bytes = [0; 8];
            rng.fill(&mut bytes).map_err(|_| AuthError::Random)?;
            let epoch = u64::from_be_bytes(bytes);
            if epoch != 0 {
                return Ok(Self(epoch));
            }
        }
    }

    /// The epoch with this wire value.
    pub const fn from_u64(value: u64) -> Self {
        Self(value)
    }

    /// Its wire value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Whether this is a concentrator's epoch rather than
    /// [`Epoch::UNKNOWN`].
    pub fn is_known(self) -> bool {
        self.0 != 0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A fresh random nonce for [`sign_request`].
pub fn random_nonce() -> Result<[u8; 16], AuthError> {
    let mut nonce = [0; 16];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| AuthError::Random)?;
    Ok(nonce)
}

/// Builds the request a client sends for `destination`, signed with `key`
/// for concentrator `epoch` (the last one it announced, or
/// [`Epoch::UNKNOWN`]) at `now_ms` (unix milliseconds) with `nonce` (from
/// [`random_nonce`]).
pub fn sign_request(
    key: &Key,
    client_id: ClientId,
    destination: SocketAddr,
    epoch: Epoch,
    nonce: [u8; 16],
    now_ms: u64,
) -> ConnectRequest {
    let mut request = ConnectRequest {
        destination,
        auth: Auth {
            client_id,
            timestamp_ms: now_ms,
            nonce,
            epoch: epoch.0,
            mac: [0; 32],
        },
    };
    let tag = hmac::sign(&key.hmac_key(), &signed_bytes(&request));
    request.auth.mac.copy_from_slice(tag.as_ref());
    request
}

/// Domain separation for probe MACs (a probe is never a connect header).
const PROBE_DOMAIN: &[u8] = b"mpbond probe v1\0";

/// The MAC of a probe's `body` (see [`crate::wire::probe`]) with `key`.
pub fn sign_probe(key: &Key, body: &[u8]) -> [u8; 32] {
    let mut ctx = hmac::Context::with_key(&key.hmac_key());
    ctx.update(PROBE_DOMAIN);
    ctx.update(body);
    let mut mac = [0; 32];
    mac.copy_from_slice(ctx.sign().as_ref());
    mac
}

/// Whether `mac` is `body`'s probe MAC with `key`; constant time.
pub fn verify_probe(key: &Key, body: &[u8], mac: &[u8; 32]) -> bool {
    let mut input = Vec::with_capacity(PROBE_DOMAIN.len() + body.len());
    input.extend_from_slice(PROBE_DOMAIN);
    input.extend_from_slice(body);
    hmac::verify(&key.hmac_key(), &input, mac).is_ok()
}

/// Whether `request`'s MAC was made with `key`; the comparison takes
/// constant time.
///
/// This says nothing about freshness: pass the timestamp and nonce of a
/// request that verifies to [`ReplayGuard::check`].
pub fn verify(key: &Key, request: &ConnectRequest) -> bool {
    hmac::verify(&key.hmac_key(), &signed_bytes(request), &request.auth.mac).is_ok()
}

/// The MAC with which the concentrator announces `epoch` in answer to
/// `request` (which verified but was signed for another epoch).
///
/// It covers the request's own MAC, so the announcement is good for that
/// one request only: an old announcement replayed to a client matches none
/// of its later requests.
pub fn sign_epoch(key: &Key, epoch: Epoch, request: &ConnectRequest) -> [u8; 32] {
    let tag = hmac::sign(&key.hmac_key(), &epoch_bytes(epoch, request));
    let mut mac = [0; 32];
    mac.copy_from_slice(tag.as_ref());
    mac
}

/// Whether `mac` announces `epoch` in answer to `request` (see
/// [`sign_epoch`]); constant time. Only then may a client sign for it.
pub fn verify_epoch(key: &Key, epoch: Epoch, mac: &[u8; 32], request: &ConnectRequest) -> bool {
    epoch.is_known() && hmac::verify(&key.hmac_key(), &epoch_bytes(epoch, request), mac).is_ok()
}

/// The MAC with which the concentrator tells its clock `now_ms` and its
/// `epoch` in answer to `request`, which verified but whose timestamp lies
/// outside the window (see [`crate::clock`]).
///
/// Like [`sign_epoch`] it covers the request's own MAC, so it is good for
/// that one request only.
pub fn sign_clock(key: &Key, now_ms: u64, epoch: Epoch, request: &ConnectRequest) -> [u8; 32] {
    let tag = hmac::sign(&key.hmac_key(), &clock_bytes(now_ms, epoch, request));
    let mut mac = [0; 32];
    mac.copy_from_slice(tag.as_ref());
    mac
}

/// Whether `mac` tells clock `now_ms` and `epoch` in answer to `request`
/// (see [`sign_clock`]); constant time. Only then may a client set its
/// clock offset and sign for that epoch.
pub fn verify_clock(
    key: &Key,
    now_ms: u64,
    epoch: Epoch,
    mac: &[u8; 32],
    request: &ConnectRequest,
) -> bool {
    epoch.is_known()
        && hmac::verify(&key.hmac_key(), &clock_bytes(now_ms, epoch, request), mac).is_ok()
}

fn clock_bytes(now_ms: u64, epoch: Epoch, request: &ConnectRequest) -> Vec<u8> {
    let mut bytes = CLOCK_DOMAIN.to_vec();
    bytes.extend_from_slice(&now_ms.to_be_bytes());
    bytes.extend_from_slice(&epoch.0.to_be_bytes());
    bytes.extend_from_slice(&request.auth.mac);
    bytes
}

fn epoch_bytes(epoch: Epoch, request: &ConnectRequest) -> Vec<u8> {
    let mut bytes = EPOCH_DOMAIN.to_vec();
    bytes.extend_from_slice(&epoch.0.to_be_bytes());
    bytes.extend_from_slice(&request.auth.mac);
    bytes
}

fn signed_bytes(request: &ConnectRequest) -> Vec<u8> {
    let mut bytes = MAC_DOMAIN.to_vec();
    bytes.extend_from_slice(&request.mac_input());
    bytes
}

/// Why the replay guard refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The timestamp is further in the past than the window allows.
    #[error(
        "timestamp {} s behind this host's clock (window {} s): check the client's clock",
        .behind_ms.div_ceil(1000),
        .window_ms / 1000
    )]
    TooOld {
        /// How far behind `now`, in milliseconds.
        behind_ms: u64,
        /// The guard's window, in milliseconds.
        window_ms: u64,
    },
    /// The timestamp is further in the future than the window allows.
    #[error(
        "timestamp {} s ahead of this host's clock (window {} s): check the client's clock",
        .ahead_ms.div_ceil(1000),
        .window_ms / 1000
    )]
    FromFuture {
        /// How far ahead of `now`, in milliseconds.
        ahead_ms: u64,
        /// The guard's window, in milliseconds.
        window_ms: u64,
    },
    /// This timestamp and nonce were accepted before.
    #[error("nonce already used: the connect header was replayed")]
    Replayed,
    /// The timestamp is inside the window but not after the floor: the guard
    /// has forgotten requests that old, so it cannot tell a replay.
    #[error(
        "timestamp not after the replay floor (unix ms {floor_ms}): the replay cache \
         filled up inside its window and forgot older requests; the client may retry"
    )]
    BelowFloor {
        /// The newest timestamp the guard refuses, unix milliseconds.
        floor_ms: u64,
    },
    /// The request was signed for another concentrator run: before this
    /// one started (a replay of a captured header, or a client that has
    /// not heard of the restart yet), or before the client heard any epoch.
    #[error(
        "signed for concentrator epoch {signed_for}, not this run's {current}: \
         made before this concentrator started, or before the client heard of it; \
         answered with the current epoch, nothing forwarded"
    )]
    StaleEpoch {
        /// The epoch the request carries.
        signed_for: Epoch,
        /// This run's epoch.
        current: Epoch,
    },
}

/// Accepts each (timestamp, nonce) pair once, within a window around `now`.
///
/// Pure: the caller passes the clock. Memory is bounded by the capacity:
/// entries that fall out of the window are forgotten (a replay of them is
/// [`ReplayError::TooOld`]), and when the guard is full of entries still
/// inside the window it forgets the one with the oldest timestamp and raises
/// a floor so that no timestamp at or before it is accepted again
/// ([`ReplayError::BelowFloor`]). A forgotten nonce can therefore never be
/// replayed, even if the clock steps backwards.
///
/// Call [`ReplayGuard::check`] only for requests that passed [`verify`]:
/// otherwise anyone could fill the guard with made-up nonces, pushing the
/// floor up until genuine clients are refused.
///
/// Entries are ordered by timestamp (a `BTreeSet`), so expiry and eviction
/// always take the oldest timestamp; each check costs O(log capacity).
/// One guard per client keeps a busy client from raising the floor for
/// others.
#[derive(Debug, Clone)]
pub struct ReplayGuard {
    window_ms: u64,
    capacity: usize,
    floor_ms: Option<u64>,
    seen: BTreeSet<(u64, [u8; 16])>,
}

impl ReplayGuard {
    /// Default window: a timestamp may be this far behind or ahead of `now`.
    pub const DEFAULT_WINDOW_MS: u64 = 30_000;
    /// Default number of remembered requests.
    pub const DEFAULT_CAPACITY: usize = 65_536;

    /// A guard accepting timestamps within `window_ms` of `now` and
    /// remembering at most `capacity` requests.
    pub fn new(window_ms: u64, capacity: usize) -> Self {
        Self {
            window_ms,
            capacity,
            floor_ms: None,
            seen: BTreeSet::new(),
        }
    }

    /// Accepts a request made at `timestamp_ms` with `nonce` if it is inside
    /// the window around `now_ms` and was not accepted before; remembers it.
    pub fn check(
        &mut self,
        now_ms: u64,
        timestamp_ms: u64,
        nonce: &[u8; 16],
    ) -> Result<(), ReplayError> {
        self.check_window(now_ms, timestamp_ms)?;
        self.expire(now_ms);
        if let Some(floor_ms) = self.floor_ms.filter(|&floor| timestamp_ms <= floor) {
            return Err(ReplayError::BelowFloor { floor_ms });
        }
        if !self.seen.insert((timestamp_ms, *nonce)) {
            return Err(ReplayError::Replayed);
        }
        // The entry evicted may be the one just inserted; the floor still
        // covers it, so accepting it once is safe.
        if self.seen.len() > self.capacity {
            if let Some((oldest, _)) = self.seen.pop_first() {
                self.raise_floor(oldest);
            }
        }
        Ok(())
    }

    /// Whether `timestamp_ms` is inside the window around `now_ms`;
    /// remembers nothing.
    pub fn check_window(&self, now_ms: u64, timestamp_ms: u64) -> Result<(), ReplayError> {
        let window_ms = self.window_ms;
        let behind_ms = now_ms.saturating_sub(timestamp_ms);
        if behind_ms > window_ms {
            return Err(ReplayError::TooOld {
                behind_ms,
                window_ms,
            });
        }
        let ahead_ms = timestamp_ms.saturating_sub(now_ms);
        if ahead_ms > window_ms {
            return Err(ReplayError::FromFuture {
                ahead_ms,
                window_ms,
            });
        }
        Ok(())
    }

    /// How many requests the guard remembers.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether the guard remembers no request.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn expire(&mut self, now_ms: u64) {
        let oldest_allowed = now_ms.saturating_sub(self.window_ms);
        while let Some(&(timestamp_ms, _)) = self.seen.first() {
            if timestamp_ms >= oldest_allowed {
                return;
            }
            self.seen.pop_first();
            // Only matters if the clock steps back: the window alone would
            // then let this nonce in again.
            self.raise_floor(timestamp_ms);
        }
    }

    fn raise_floor(&mut self, timestamp_ms: u64) {
        self.floor_ms = Some(self.floor_ms.map_or(timestamp_ms, |f| f.max(timestamp_ms)));
    }
}

impl Default for ReplayGuard {
    /// ±30 s, 65 536 entries.
    fn default() -> Self {
        Self::new(Self::DEFAULT_WINDOW_MS, Self::DEFAULT_CAPACITY)
    }
}

/// Whether one client's connect headers are fresh: inside the time window,
/// signed for this concentrator run's [`Epoch`], and never accepted before.
///
/// # No replay across restarts
///
/// A [`ReplayGuard`] lives in memory and dies with the process, so on its
/// own a header captured on the wire could be replayed to a restarted
/// concentrator within its 30 s window and open a new connection. The
/// epoch closes that gap without any state on disk:
///
/// - The concentrator draws a random 64-bit epoch when it starts and
///   accepts only headers that carry it (under their MAC). Every header
///   signed before the restart carries an older epoch, so it is refused,
///   whatever its timestamp and for ever (two runs share an epoch with
///   probability 2^-64; nobody can predict the next one).
/// - A header that verifies but carries another epoch, with a timestamp
///   inside the window, is answered with the current epoch under a MAC
///   bound to that header ([`sign_epoch`]); nothing is forwarded. The
///   client checks it ([`verify_epoch`]), signs again and retries on a new
///   connection: one more round trip after each restart (and for the first
///   connection after the client starts), with no one acting. A replayed
///   header gets that announcement too, which gives its sender nothing it
///   did not see on the wire. One outside the window is refused as
///   [`ReplayError::TooOld`] or [`ReplayError::FromFuture`], whatever its
///   epoch; the concentrator answers that (within a per-client budget)
///   with its clock and epoch ([`sign_clock`]), so that a client whose
///   clock stepped carries on (see [`crate::clock`]). Neither answer makes
///   the guard accept anything it refused before.
///
/// Why not a persisted floor or high-water mark:
///
/// - **Clock skew.** A floor is a time: after a restart, fresh headers from
///   a client whose clock runs behind the concentrator's stay below it (up
///   to the whole window) and are refused until its clock passes it; a
///   floor high enough to cover clients ahead of the concentrator locks out
///   the rest for that long. The epoch compares no clocks; the window keeps
///   its role (±30 s of skew) within a run.
/// - **Warm tunnels.** The client signs a warm tunnel's header when a flow
///   takes it, not when it is connected, so a header is never older than
///   the flow; even a header signed ahead of use is valid for as long as
///   the window allows, in the epoch it was signed for. The epoch has no
///   age.
/// - **Multipath reordering.** Flows open concurrently over lines with
///   different delays, so headers arrive out of timestamp order; a per-client
///   high-water mark would refuse the slower line's. The guard remembers a
///   set of (timestamp, nonce), not a maximum, and the epoch does not order
///   anything.
/// - **Crashes and disks.** A state file must be written before acceptance
///   moves past it, can be corrupt, missing, on a read-only or full disk,
///   or rolled back with a VM snapshot (and then silently accept the
///   replays it was meant to stop). A random epoch needs no file: a crash
///   simply starts a new run.
/// - **Client restarts.** The client keeps no replay state (nonces are
///   random, not counters), and a concentrator that did not restart still
///   remembers every header it accepted inside the window: a replay of one
///   of the old client's headers is refused exactly as before, and a header
///   older than the window is refused as too old.
///
/// What remains, as with any 0-RTT scheme: a header that an attacker on
/// the path held back (so that it never arrived) can still be delivered
/// once, late, within the window and the same concentrator run. It was
/// never used, so this is a delay, not a replay.
#[derive(Debug, Clone)]
pub struct ConnectGuard {
    epoch: Epoch,
    replay: ReplayGuard,
}

impl ConnectGuard {
    /// A guard for concentrator run `epoch` with the default window and
    /// capacity.
    pub fn new(epoch: Epoch) -> Self {
        Self::with_replay_guard(epoch, ReplayGuard::default())
    }

    /// A guard for concentrator run `epoch` around `replay`.
    pub fn with_replay_guard(epoch: Epoch, replay: ReplayGuard) -> Self {
        Self { epoch, replay }
    }

    /// This run's epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Accepts `auth` (of a request that passed [`verify`]) at `now_ms` if
    /// its timestamp is inside the window, it carries this run's epoch and
    /// its nonce is new; remembers it. The window comes first, so that only
    /// a recent header is ever answered with [`ReplayError::StaleEpoch`].
    pub fn check(&mut self, now_ms: u64, auth: &Auth) -> Result<(), ReplayError> {
        self.replay.check_window(now_ms, auth.timestamp_ms)?;
        if auth.epoch != self.epoch.0 {
            return Err(ReplayError::StaleEpoch {
                signed_for: Epoch(auth.epoch),
                current: self.epoch,
            });
        }
        self.replay.check(now_ms, auth.timestamp_ms, &auth.nonce)
    }

    /// How many requests the guard remembers.
    pub fn len(&self) -> usize {
        self.replay.len()
    }

    /// Whether the guard remembers no request.
    pub fn is_empty(&self) -> bool {
        self.replay.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

    const NOW: u64 = 1_700_000_000_000;

    fn key(byte: u8) -> Key {
        Key([byte; KEY_LEN])
    }

    #[test]
    fn probe_macs_hold_only_for_their_key_and_body() {
        let body = b"MPBP\x01\x01\x03lab0123456789abcdef";
        let mac = sign_probe(&key(1), body);
        assert!(verify_probe(&key(1), body, &mac));
        assert!(!verify_probe(&key(2), body, &mac));
        let mut other = body.to_vec();
        other[10] ^= 1;
        assert!(!verify_probe(&key(1), &other, &mac));
    }

    fn id() -> ClientId {
        "home-router".parse().expect("valid id")
    }

    fn destinations() -> [SocketAddr; 2] {
        [
            SocketAddr::from((Ipv4Addr::new(198, 51, 100, 9), 443)),
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x42),
                22,
                0,
                0,
            )),
        ]
    }

    fn nonce(n: u64) -> [u8; 16] {
        let mut nonce = [0; 16];
        nonce[..8].copy_from_slice(&n.to_be_bytes());
        nonce
    }

    const EPOCH: Epoch = Epoch(0x6d70_626f_6e64_0001);

    fn signed(key: &Key, epoch: Epoch, nonce: [u8; 16], now_ms: u64) -> ConnectRequest {
        sign_request(key, id(), destinations()[0], epoch, nonce, now_ms)
    }

    #[test]
    fn sign_encode_decode_verify_roundtrip() {
        for destination in destinations() {
            let request = sign_request(&key(7), id(), destination, EPOCH, nonce(1), NOW);
            assert_eq!(request.auth.timestamp_ms, NOW);
            let encoded = request.encode();
            let (decoded, used) = ConnectRequest::decode(&encoded).expect("decodes");
            assert_eq!(used, encoded.len());
            assert_eq!(decoded, request);
            assert!(verify(&key(7), &decoded));
        }
    }

    #[test]
    fn wrong_key_fails() {
        for destination in destinations() {
            let request = sign_request(&key(7), id(), destination, EPOCH, nonce(1), NOW);
            assert!(!verify(&key(8), &request));
        }
    }

    #[test]
    fn every_flipped_bit_fails_decoding_or_verification() {
        for destination in destinations() {
            let encoded = sign_request(&key(7), id(), destination, EPOCH, nonce(1), NOW).encode();
            for bit in 0..encoded.len() * 8 {
                let mut flipped = encoded.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                if let Ok((request, _)) = ConnectRequest::decode(&flipped) {
                    assert!(!verify(&key(7), &request), "bit {bit} went unnoticed");
                }
            }
        }
    }

    #[test]
    fn mac_covers_the_domain_label() {
        let request = sign_request(&key(7), id(), destinations()[0], EPOCH, nonce(1), NOW);
        let bare = hmac::sign(&key(7).hmac_key(), &request.mac_input());
        assert_ne!(bare.as_ref(), request.auth.mac.as_slice());
    }

    #[test]
    fn keys_roundtrip_through_base64() {
        let key = Key::generate().expect("random");
        let text = key.to_base64();
        assert_eq!(text.len(), 44);
        let again = Key::from_base64(&format!("  {text}\n")).expect("parses");
        assert_eq!(again.0, key.0);
        assert_ne!(Key::generate().expect("random").0, key.0);
    }

    #[test]
    fn bad_keys_say_what_a_key_is() {
        let hint = "a key is 32 bytes in base64, as `mpbond keygen` prints";
        let not_base64 = Key::from_base64("not base64!").expect_err("invalid");
        assert!(matches!(not_base64, AuthError::KeyEncoding(_)));
        assert!(not_base64.to_string().contains(hint));

        let short = Key::from_base64(&BASE64.encode([1; 16])).expect_err("short");
        assert!(matches!(short, AuthError::KeyLength { len: 16 }));
        assert!(short.to_string().contains(hint));
    }

    #[test]
    fn debug_hides_the_key() {
        assert_eq!(format!("{:?}", key(0x41)), "Key(..)");
        assert_eq!(format!("{:#?}", key(0x41)), "Key(..)");
    }

    #[test]
    fn random_nonces_differ() {
        let a = random_nonce().expect("random");
        let b = random_nonce().expect("random");
        assert_ne!(a, b);
    }

    #[test]
    fn replay_is_rejected() {
        let mut guard = ReplayGuard::default();
        assert_eq!(guard.check(NOW, NOW, &nonce(1)), Ok(()));
        assert_eq!(
            guard.check(NOW + 5, NOW, &nonce(1)),
            Err(ReplayError::Replayed)
        );
        assert_eq!(guard.check(NOW + 5, NOW, &nonce(2)), Ok(()));
        assert_eq!(guard.check(NOW + 5, NOW + 1, &nonce(1)), Ok(()));
        assert_eq!(guard.len(), 3);
    }

    #[test]
    fn window_edges() {
        let mut guard = ReplayGuard::default();
        let window = ReplayGuard::DEFAULT_WINDOW_MS;
        assert_eq!(guard.check(NOW, NOW - window, &nonce(1)), Ok(()));
        assert_eq!(guard.check(NOW, NOW + window, &nonce(2)), Ok(()));
        assert_eq!(
            guard.check(NOW, NOW - window - 1, &nonce(3)),
            Err(ReplayError::TooOld {
                behind_ms: window + 1,
                window_ms: window
            })
        );
        assert_eq!(
            guard.check(NOW, NOW + window + 1, &nonce(4)),
            Err(ReplayError::FromFuture {
                ahead_ms: window + 1,
                window_ms: window
            })
        );
        assert!(matches!(
            guard.check(0, u64::MAX, &nonce(5)),
            Err(ReplayError::FromFuture { .. })
        ));
        assert!(matches!(
            guard.check(u64::MAX, 0, &nonce(6)),
            Err(ReplayError::TooOld { .. })
        ));
    }

    #[test]
    fn clock_errors_name_the_clock() {
        let mut guard = ReplayGuard::default();
        let old = guard.check(NOW, NOW - 41_000, &nonce(1)).expect_err("old");
        assert_eq!(
            old.to_string(),
            "timestamp 41 s behind this host's clock (window 30 s): check the client's clock"
        );
        let future = guard
            .check(NOW, NOW + 30_001, &nonce(1))
            .expect_err("future");
        assert_eq!(
            future.to_string(),
            "timestamp 31 s ahead of this host's clock (window 30 s): check the client's clock"
        );
    }

    #[test]
    fn a_full_guard_evicts_the_oldest_and_raises_the_floor() {
        let mut guard = ReplayGuard::new(30_000, 4);
        for n in 0..4 {
            assert_eq!(guard.check(NOW, NOW + n, &nonce(n)), Ok(()));
        }
        // Inserted last but oldest: it is the one evicted.
        assert_eq!(guard.check(NOW, NOW - 10, &nonce(99)), Ok(()));
        assert_eq!(guard.len(), 4);
        assert_eq!(
            guard.check(NOW, NOW - 10, &nonce(99)),
            Err(ReplayError::BelowFloor { floor_ms: NOW - 10 })
        );

        assert_eq!(guard.check(NOW, NOW + 10, &nonce(10)), Ok(()));
        assert_eq!(guard.len(), 4);
        assert_eq!(
            guard.check(NOW + 1, NOW, &nonce(0)),
            Err(ReplayError::BelowFloor { floor_ms: NOW })
        );
        assert_eq!(
            guard.check(NOW + 1, NOW, &nonce(1234)),
            Err(ReplayError::BelowFloor { floor_ms: NOW })
        );
        assert_eq!(
            guard.check(NOW + 1, NOW + 1, &nonce(1)),
            Err(ReplayError::Replayed)
        );
        assert_eq!(guard.check(NOW + 1, NOW + 11, &nonce(11)), Ok(()));
        assert_eq!(guard.len(), 4);
    }

    #[test]
    fn a_forgotten_nonce_stays_refused_when_the_clock_steps_back() {
        let mut guard = ReplayGuard::new(30_000, 100);
        assert_eq!(guard.check(NOW, NOW, &nonce(1)), Ok(()));
        assert_eq!(guard.check(NOW + 30_001, NOW + 30_001, &nonce(2)), Ok(()));
        assert_eq!(guard.len(), 1);
        assert_eq!(
            guard.check(NOW + 10_000, NOW, &nonce(1)),
            Err(ReplayError::BelowFloor { floor_ms: NOW })
        );
    }

    #[test]
    fn the_epoch_is_covered_by_the_mac() {
        let mut request = signed(&key(7), EPOCH, nonce(1), NOW);
        assert_eq!(request.auth.epoch, EPOCH.as_u64());
        assert!(verify(&key(7), &request));
        request.auth.epoch += 1;
        assert!(!verify(&key(7), &request));
    }

    #[test]
    fn generated_epochs_are_known_and_differ() {
        let a = Epoch::generate().expect("random");
        let b = Epoch::generate().expect("random");
        assert!(a.is_known() && b.is_known());
        assert_ne!(a, b);
        assert!(!Epoch::UNKNOWN.is_known());
        assert_eq!(Epoch::from_u64(0x2a).to_string(), "000000000000002a");
    }

    #[test]
    fn an_epoch_announcement_holds_for_its_request_and_key_only() {
        let request = signed(&key(7), Epoch::UNKNOWN, nonce(1), NOW);
        let mac = sign_epoch(&key(7), EPOCH, &request);
        assert!(verify_epoch(&key(7), EPOCH, &mac, &request));
        assert!(!verify_epoch(&key(8), EPOCH, &mac, &request));
        assert!(!verify_epoch(&key(7), Epoch(EPOCH.0 + 1), &mac, &request));
        // An old announcement replayed to the client's next request.
        let next = signed(&key(7), Epoch::UNKNOWN, nonce(2), NOW + 1);
        assert!(!verify_epoch(&key(7), EPOCH, &mac, &next));
        // The announcement is no connect MAC, and "unknown" is never one.
        assert_ne!(mac, request.auth.mac);
        let unknown = sign_epoch(&key(7), Epoch::UNKNOWN, &request);
        assert!(!verify_epoch(&key(7), Epoch::UNKNOWN, &unknown, &request));
    }

    #[test]
    fn a_clock_answer_holds_for_its_request_clock_epoch_and_key_only() {
        let request = signed(&key(7), EPOCH, nonce(1), NOW - 300_000);
        let mac = sign_clock(&key(7), NOW, EPOCH, &request);
        assert!(verify_clock(&key(7), NOW, EPOCH, &mac, &request));
        assert!(!verify_clock(&key(8), NOW, EPOCH, &mac, &request));
        // An attacker cannot move the time it tells, nor the epoch.
        assert!(!verify_clock(&key(7), NOW + 1, EPOCH, &mac, &request));
        assert!(!verify_clock(
            &key(7),
            NOW,
            Epoch(EPOCH.0 + 1),
            &mac,
            &request
        ));
        // An old answer replayed to the client's next request.
        let next = signed(&key(7), EPOCH, nonce(2), NOW - 299_000);
        assert!(!verify_clock(&key(7), NOW, EPOCH, &mac, &next));
        // It is neither an epoch announcement nor a connect MAC.
        assert!(!verify_epoch(&key(7), EPOCH, &mac, &request));
        assert_ne!(mac, sign_epoch(&key(7), EPOCH, &request));
        assert_ne!(mac, request.auth.mac);
        let unknown = sign_clock(&key(7), NOW, Epoch::UNKNOWN, &request);
        assert!(!verify_clock(
            &key(7),
            NOW,
            Epoch::UNKNOWN,
            &unknown,
            &request
        ));
    }

    #[test]
    fn a_guard_accepts_only_its_own_epoch() {
        let mut guard = ConnectGuard::new(EPOCH);
        let fresh = signed(&key(7), EPOCH, nonce(1), NOW);
        assert_eq!(guard.check(NOW, &fresh.auth), Ok(()));
        assert_eq!(guard.check(NOW, &fresh.auth), Err(ReplayError::Replayed));
        for other in [Epoch::UNKNOWN, Epoch(EPOCH.0 ^ 1)] {
            let stale = signed(&key(7), other, nonce(2), NOW);
            assert_eq!(
                guard.check(NOW + 5, &stale.auth),
                Err(ReplayError::StaleEpoch {
                    signed_for: other,
                    current: EPOCH
                })
            );
        }
        // A stale header is not remembered: the same nonce, signed again
        // for the right epoch, is a new request.
        let again = signed(&key(7), EPOCH, nonce(2), NOW);
        assert_eq!(guard.check(NOW + 5, &again.auth), Ok(()));
        assert_eq!(guard.len(), 2);
        // Outside the window: too old, whatever the epoch (so silence).
        let old = signed(&key(7), Epoch::UNKNOWN, nonce(3), NOW);
        assert!(matches!(
            guard.check(NOW + 31_000, &old.auth),
            Err(ReplayError::TooOld { .. })
        ));
    }

    #[test]
    fn no_header_from_before_a_restart_is_accepted_after_it() {
        // One concentrator run accepts a client's headers for a minute
        // (clock up to 20 s off, some held back and never delivered); then
        // it restarts. Every one of them, replayed at any time afterwards,
        // is refused; fresh headers for the new epoch pass at once.
        let mut rng = XorShift(0x5eed);
        let before = Epoch(0x1111);
        let mut guard = ConnectGuard::new(before);
        let mut captured = Vec::new();
        for i in 0..6_000u64 {
            let now = NOW + i * 10;
            let skewed = now + rng.below(40_001) - 20_000;
            let request = signed(&key(7), before, nonce(i), skewed);
            if i % 7 != 0 {
                assert_eq!(guard.check(now, &request.auth), Ok(()));
            }
            captured.push(request);
        }
        let restarted_at = NOW + 60_000;
        let after = Epoch(0x2222);
        let mut guard = ConnectGuard::new(after);
        for delay in [0, 1, 500, 10_000, 29_999, 30_000, 3_600_000] {
            let now = restarted_at + delay;
            for request in &captured {
                assert!(verify(&key(7), request));
                assert!(matches!(
                    guard.check(now, &request.auth),
                    Err(ReplayError::StaleEpoch { .. }
                        | ReplayError::TooOld { .. }
                        | ReplayError::FromFuture { .. })
                ));
            }
            let fresh = signed(&key(7), after, nonce(1_000_000 + delay), now);
            assert_eq!(guard.check(now, &fresh.auth), Ok(()));
        }
    }

    /// Seeded xorshift64 for deterministic jitter.
    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    #[test]
    fn expiry_bounds_memory_over_a_long_run() {
        // One simulated hour at 100 requests/s from clients whose clocks are
        // up to ±5 s off: never more than ~40 s of requests are remembered.
        let mut guard = ReplayGuard::default();
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let mut max_len = 0;
        for i in 0..360_000u64 {
            let now = NOW + i * 10;
            let skewed = now + rng.below(10_001) - 5_000;
            assert_eq!(guard.check(now, skewed, &nonce(i)), Ok(()));
            max_len = max_len.max(guard.len());
        }
        assert!(max_len <= 3_600, "remembered {max_len} requests");
        assert!(max_len >= 3_000);
    }

    #[test]
    fn capacity_bounds_memory_under_pressure() {
        // 1 000 requests/s with room for 5 000: the floor rises, fresh
        // requests still pass, and the guard never exceeds its capacity.
        let mut guard = ReplayGuard::new(30_000, 5_000);
        for i in 0..100_000u64 {
            let now = NOW + i;
            assert_eq!(guard.check(now, now, &nonce(i)), Ok(()));
            assert!(guard.len() <= 5_000);
        }
        assert_eq!(
            guard.check(NOW + 100_000, NOW + 90_000, &nonce(90_000)),
            Err(ReplayError::BelowFloor {
                floor_ms: NOW + 94_999
            })
        );
    }
}
