//! WireGuard's defence against handshake floods (paper § 5.3, § 5.4.4 and
//! § 5.4.7): mac1, mac2 with cookies under load, and a per-source rate
//! limiter.
//!
//! - **mac1** is a keyed BLAKE2s-128 over the message, keyed with a hash
//!   of the receiver's static public key. Anyone who knows that key can
//!   make it, so it proves nothing about the sender, but it lets the
//!   responder drop garbage and scans with one hash instead of an X25519
//!   operation, and keeps mpbond silent to anyone who does not know its
//!   public key.
//! - **mac2** is keyed with a cookie: a MAC of the sender's address under
//!   a secret the responder replaces every two minutes. Only when it is
//!   [under load](CookieChecker::check) does the responder require it; a
//!   message without a valid mac2 then gets a [cookie
//!   reply](CookieChecker::cookie_reply) instead of a DH, which costs the
//!   responder one MAC and proves, next time, that the sender receives at
//!   its address. The reply is sealed with XChaCha20-Poly1305 (random
//!   nonce) under a key from the responder's public key, with the
//!   initiation's mac1 as associated data, so only the sender of that
//!   initiation can use it.
//! - The [`RateLimiter`] is a token bucket per source address (IPv6 per
//!   /64) with a fixed-size table: a flood of spoofed sources evicts the
//!   oldest entries instead of growing memory.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use blake2::digest::consts::U16;
use blake2::digest::Mac as _;
use blake2::{Blake2s256, Blake2sMac, Digest as _};
use chacha20poly1305::aead::AeadInPlace as _;
use chacha20poly1305::{KeyInit as _, XChaCha20Poly1305};
use zeroize::Zeroizing;

use super::keys::PublicKey;
use super::timers::COOKIE_LIFETIME;
use super::{Random, RandomError};
use crate::wire::tunnel::{
    self, CookieReply, COOKIE_NONCE_LEN, COOKIE_REPLY_LEN, MAC_LEN, TAG_LEN,
};

/// Label hashed with a public key for the mac1 key.
const LABEL_MAC1: &[u8] = b"mac1----";
/// Label hashed with a public key for the cookie reply's key.
const LABEL_COOKIE: &[u8] = b"cookie--";
/// How often the responder replaces the secret its cookies are made with.
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);

/// Why a handshake message or cookie reply was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    /// mac1 is wrong: the sender does not know our public key, or the
    /// message is garbage.
    #[error("handshake message with a wrong mac1: not for this key, or garbage")]
    Mac1,
    /// Under load, and mac2 is missing or stale: answer with a cookie
    /// reply, do not handshake.
    #[error("under load and the handshake carries no valid cookie: a cookie reply is due")]
    NeedCookie,
    /// A cookie reply that does not open: not an answer to our last
    /// initiation, or forged.
    #[error("cookie reply does not open: not an answer to the last initiation sent")]
    Reply,
    /// The system's random number generator failed.
    #[error("random number generator failed while making a cookie")]
    Random(#[from] RandomError),
}

/// BLAKE2s-256 of `label` and `public`: the key of mac1 or of cookie
/// replies for messages to the holder of `public`.
fn labelled_key(label: &[u8], public: &PublicKey) -> [u8; 32] {
    let mut hash = Blake2s256::new();
    hash.update(label);
    hash.update(public.as_bytes());
    hash.finalize().into()
}

/// Keyed BLAKE2s-128 of `input`; `key` is 16 or 32 bytes.
fn mac(key: &[u8], input: &[u8]) -> [u8; MAC_LEN] {
    // Keys here are 16 or 32 bytes, which BLAKE2s always takes.
    let Ok(mut state) = <Blake2sMac<U16> as blake2::digest::Mac>::new_from_slice(key) else {
        return [0; MAC_LEN];
    };
    state.update(input);
    state.finalize().into_bytes().into()
}

/// Whether `tag` is the MAC of `input` with `key`; constant time.
fn mac_ok(key: &[u8], input: &[u8], tag: &[u8; MAC_LEN]) -> bool {
    let Ok(mut state) = <Blake2sMac<U16> as blake2::digest::Mac>::new_from_slice(key) else {
        return false;
    };
    state.update(input);
    state.verify_slice(tag).is_ok()
}

/// The key mac1 of messages to the holder of `public` is made with.
#[derive(Clone)]
pub struct Mac1Key([u8; 32]);

impl Mac1Key {
    /// The mac1 key for messages to `public`.
    pub fn new(public: &PublicKey) -> Self {
        Self(labelled_key(LABEL_MAC1, public))
    }

    /// mac1 of `input`.
    pub fn sign(&self, input: &[u8]) -> [u8; MAC_LEN] {
        mac(&self.0, input)
    }

    /// Whether `tag` is mac1 of `input`; constant time.
    pub fn verify(&self, input: &[u8], tag: &[u8; MAC_LEN]) -> bool {
        mac_ok(&self.0, input, tag)
    }
}

impl std::fmt::Debug for Mac1Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mac1Key(..)")
    }
}

/// The bytes of a source address a cookie is bound to.
fn address_bytes(src: SocketAddr) -> ([u8; 18], usize) {
    let mut out = [0; 18];
    let len = match src.ip() {
        IpAddr::V4(ip) => {
            out[..4].copy_from_slice(&ip.octets());
            4
        }
        IpAddr::V6(ip) => {
            out[..16].copy_from_slice(&ip.octets());
            16
        }
    };
    out[len..len + 2].copy_from_slice(&src.port().to_be_bytes());
    (out, len + 2)
}

/// The responder's side: checks mac1 and mac2 and makes cookie replies.
#[cfg_attr(fuzzing, derive(Clone))]
pub struct CookieChecker {
    mac1: Mac1Key,
    reply_key: Zeroizing<[u8; 32]>,
    secret: Zeroizing<[u8; 32]>,
    secret_born: Option<Instant>,
}

impl CookieChecker {
    /// The checker of a responder whose static public key is `local`.
    pub fn new(local: &PublicKey) -> Self {
        Self {
            mac1: Mac1Key::new(local),
            reply_key: Zeroizing::new(labelled_key(LABEL_COOKIE, local)),
            secret: Zeroizing::new([0; 32]),
            secret_born: None,
        }
    }

    /// The cookie `src` must use as mac2 key now.
    fn cookie(
        &mut self,
        now: Instant,
        src: SocketAddr,
        rng: &mut impl Random,
    ) -> Result<[u8; MAC_LEN], RandomError> {
        let stale = self
            .secret_born
            .is_none_or(|born| now.saturating_duration_since(born) >= COOKIE_SECRET_LIFETIME);
        if stale {
            rng.fill(&mut self.secret[..])?;
            self.secret_born = Some(now);
        }
        let (addr, len) = address_bytes(src);
        Ok(mac(&self.secret[..], &addr[..len]))
    }

    /// Checks an initiation's MACs: mac1 always, mac2 only `under_load`.
    /// [`CookieError::NeedCookie`] means: send [`Self::cookie_reply`].
    pub fn check<T: AsRef<[u8]>>(
        &mut self,
        now: Instant,
        src: SocketAddr,
        message: &tunnel::Initiation<T>,
        under_load: bool,
        rng: &mut impl Random,
    ) -> Result<(), CookieError> {
        if !self.mac1.verify(message.mac1_input(), &message.mac1()) {
            return Err(CookieError::Mac1);
        }
        if !under_load {
            return Ok(());
        }
        let cookie = self.cookie(now, src, rng)?;
        if mac_ok(&cookie, message.mac2_input(), &message.mac2()) {
            return Ok(());
        }
        Err(CookieError::NeedCookie)
    }

    /// Writes into `out` the cookie reply to an initiation from `src` that
    /// carried `mac1`.
    pub fn cookie_reply(
        &mut self,
        now: Instant,
        src: SocketAddr,
        mac1: &[u8; MAC_LEN],
        rng: &mut impl Random,
        out: &mut [u8; COOKIE_REPLY_LEN],
    ) -> Result<(), CookieError> {
        let cookie = self.cookie(now, src, rng)?;
        let mut nonce = [0; COOKIE_NONCE_LEN];
        rng.fill(&mut nonce)?;
        let mut sealed = [0; MAC_LEN + TAG_LEN];
        sealed[..MAC_LEN].copy_from_slice(&cookie);
        let cipher = XChaCha20Poly1305::new((&*self.reply_key).into());
        let tag = cipher
            .encrypt_in_place_detached((&nonce).into(), mac1, &mut sealed[..MAC_LEN])
            // Only fails for messages longer than the cipher allows.
            .map_err(|_| CookieError::Reply)?;
        sealed[MAC_LEN..].copy_from_slice(&tag);
        tunnel::encode_cookie_reply(out, &nonce, &sealed);
        Ok(())
    }
}

impl std::fmt::Debug for CookieChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieChecker").finish_non_exhaustive()
    }
}

/// The initiator's side: stamps initiations with mac1 and, once it has a
/// cookie, mac2; opens cookie replies.
#[cfg_attr(fuzzing, derive(Clone))]
pub struct CookieJar {
    mac1: Mac1Key,
    reply_key: Zeroizing<[u8; 32]>,
    cookie: Option<(Zeroizing<[u8; MAC_LEN]>, Instant)>,
    last_mac1: Option<[u8; MAC_LEN]>,
}

impl CookieJar {
    /// The jar for initiations to the responder whose public key is `peer`.
    pub fn new(peer: &PublicKey) -> Self {
        Self {
            mac1: Mac1Key::new(peer),
            reply_key: Zeroizing::new(labelled_key(LABEL_COOKIE, peer)),
            cookie: None,
            last_mac1: None,
        }
    }

    /// Sets mac1, and mac2 if a cookie younger than its lifetime is at
    /// hand (zeros otherwise), on an initiation about to be sent.
    pub fn stamp<T: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        now: Instant,
        message: &mut tunnel::Initiation<T>,
    ) {
        let mac1 = self.mac1.sign(message.mac1_input());
        message.set_mac1(&mac1);
        self.last_mac1 = Some(mac1);
        let fresh = self
            .cookie
            .as_ref()
            .filter(|(_, got)| now.saturating_duration_since(*got) < COOKIE_LIFETIME);
        let mac2 = match fresh {
            Some((cookie, _)) => mac(&cookie[..], message.mac2_input()),
            None => [0; MAC_LEN],
        };
        message.set_mac2(&mac2);
    }

    /// Takes the cookie from a reply to the last initiation stamped; the
    /// next initiation carries it as mac2.
    pub fn consume<T: AsRef<[u8]>>(
        &mut self,
        now: Instant,
        reply: &CookieReply<T>,
    ) -> Result<(), CookieError> {
        let ad = self.last_mac1.ok_or(CookieError::Reply)?;
        let sealed = reply.sealed_cookie();
        let (Some(ciphertext), Some(tag)) = (sealed.get(..MAC_LEN), sealed.get(MAC_LEN..)) else {
            return Err(CookieError::Reply);
        };
        let mut cookie = Zeroizing::new([0; MAC_LEN]);
        cookie.copy_from_slice(ciphertext);
        if tag.len() != TAG_LEN {
            return Err(CookieError::Reply);
        }
        let cipher = XChaCha20Poly1305::new((&*self.reply_key).into());
        cipher
            .decrypt_in_place_detached((&reply.nonce()).into(), &ad, &mut cookie[..], tag.into())
            .map_err(|_| CookieError::Reply)?;
        self.cookie = Some((cookie, now));
        Ok(())
    }
}

impl std::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieJar")
            .field("has_cookie", &self.cookie.is_some())
            .finish_non_exhaustive()
    }
}

/// Handshakes a source may start per second, on average (WireGuard's).
pub const HANDSHAKES_PER_SECOND: u64 = 20;
/// Handshakes a source may start at once after a quiet spell.
pub const HANDSHAKE_BURST: u64 = 5;
/// Sources the rate limiter remembers; the oldest is forgotten first.
pub const RATE_LIMIT_SOURCES: usize = 4096;

/// A token bucket per source, for handshake initiations (WireGuard
/// `ratelimiter.c`). Pure: `now` is passed in. Memory is a fixed-size
/// table; when it is full the source entered longest ago is dropped
/// (it then starts again with a full bucket, so eviction never locks a
/// source out).
#[derive(Debug)]
#[cfg_attr(fuzzing, derive(Clone))]
pub struct RateLimiter {
    buckets: HashMap<IpAddr, Bucket>,
    order: VecDeque<IpAddr>,
    capacity: usize,
    cost: Duration,
    burst: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Credit, as time: each handshake costs `cost`.
    credit: Duration,
    last: Instant,
}

impl RateLimiter {
    /// [`HANDSHAKES_PER_SECOND`] per source, bursts of
    /// [`HANDSHAKE_BURST`], [`RATE_LIMIT_SOURCES`] sources.
    pub fn new() -> Self {
        Self::with_limits(HANDSHAKES_PER_SECOND, HANDSHAKE_BURST, RATE_LIMIT_SOURCES)
    }

    /// `per_second` handshakes per source on average, `burst` at once,
    /// at most `sources` remembered (each at least 1).
    pub fn with_limits(per_second: u64, burst: u64, sources: usize) -> Self {
        let cost = Duration::from_secs(1) / u32::try_from(per_second.max(1)).unwrap_or(u32::MAX);
        Self {
            buckets: HashMap::with_capacity(sources.max(1)),
            order: VecDeque::with_capacity(sources.max(1)),
            capacity: sources.max(1),
            cost,
            burst: cost.saturating_mul(u32::try_from(burst.max(1)).unwrap_or(u32::MAX)),
        }
    }

    /// Whether a handshake from `src` may go ahead at `now`; spends one
    /// token if so.
    pub fn allow(&mut self, now: Instant, src: IpAddr) -> bool {
        let key = source_key(src);
        if let Some(bucket) = self.buckets.get_mut(&key) {
            let elapsed = now.saturating_duration_since(bucket.last);
            bucket.credit = bucket.credit.saturating_add(elapsed).min(self.burst);
            bucket.last = now;
            let Some(left) = bucket.credit.checked_sub(self.cost) else {
                return false;
            };
            bucket.credit = left;
            return true;
        }
        if self.buckets.len() >= self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.buckets.remove(&oldest);
            }
        }
        self.order.push_back(key);
        self.buckets.insert(
            key,
            Bucket {
                credit: self.burst.saturating_sub(self.cost),
                last: now,
            },
        );
        true
    }

    /// How many sources are remembered.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no source is remembered.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

/// The source a per-source limit counts `ip` as: IPv4 addresses as they
/// are; IPv6 by /64, since one host holds a whole /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{StaticSecret, TestRng};
    use crate::wire::tunnel::{encode_initiation, INITIATION_LEN, INITIATION_NOISE_LEN};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn responder_key() -> PublicKey {
        StaticSecret::from_bytes([9; 32]).public_key()
    }

    fn jar_counter() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }

    fn src(last: u8) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(192, 0, 2, last), 40_000))
    }

    fn initiation(jar: &mut CookieJar, now: Instant) -> [u8; INITIATION_LEN] {
        // Each initiation differs, as real ones do (fresh ephemeral keys).
        let mut noise = [7; INITIATION_NOISE_LEN];
        noise[..8].copy_from_slice(&jar_counter().to_be_bytes());
        let mut out = [0; INITIATION_LEN];
        let mut message = encode_initiation(&mut out, &noise);
        jar.stamp(now, &mut message);
        out
    }

    #[test]
    fn mac1_needs_the_responders_public_key() {
        let now = Instant::now();
        let mut rng = TestRng(1);
        let mut checker = CookieChecker::new(&responder_key());
        let mut jar = CookieJar::new(&responder_key());
        let good = initiation(&mut jar, now);
        let view = tunnel::Initiation::new_checked(&good[..]).expect("parses");
        assert_eq!(checker.check(now, src(1), &view, false, &mut rng), Ok(()));

        let mut wrong = CookieJar::new(&StaticSecret::from_bytes([8; 32]).public_key());
        let bad = initiation(&mut wrong, now);
        let view = tunnel::Initiation::new_checked(&bad[..]).expect("parses");
        assert_eq!(
            checker.check(now, src(1), &view, false, &mut rng),
            Err(CookieError::Mac1)
        );
        let mut flipped = good;
        flipped[20] ^= 1;
        let view = tunnel::Initiation::new_checked(&flipped[..]).expect("parses");
        assert_eq!(
            checker.check(now, src(1), &view, false, &mut rng),
            Err(CookieError::Mac1)
        );
    }

    #[test]
    fn under_load_a_cookie_round_trip_lets_the_handshake_through() {
        let now = Instant::now();
        let mut rng = TestRng(2);
        let mut checker = CookieChecker::new(&responder_key());
        let mut jar = CookieJar::new(&responder_key());

        let first = initiation(&mut jar, now);
        let view = tunnel::Initiation::new_checked(&first[..]).expect("parses");
        assert_eq!(
            checker.check(now, src(1), &view, true, &mut rng),
            Err(CookieError::NeedCookie)
        );
        let mut reply = [0; COOKIE_REPLY_LEN];
        checker
            .cookie_reply(now, src(1), &view.mac1(), &mut rng, &mut reply)
            .expect("reply");
        let reply_view = CookieReply::new_checked(&reply[..]).expect("parses");
        assert_eq!(jar.consume(now, &reply_view), Ok(()));

        let second = initiation(&mut jar, now + Duration::from_millis(5));
        let view = tunnel::Initiation::new_checked(&second[..]).expect("parses");
        assert_eq!(checker.check(now, src(1), &view, true, &mut rng), Ok(()));
        // The cookie is bound to the address it was given to.
        assert_eq!(
            checker.check(now, src(2), &view, true, &mut rng),
            Err(CookieError::NeedCookie)
        );
        // A reply is good for the initiation it answers only.
        assert_eq!(jar.consume(now, &reply_view), Err(CookieError::Reply));
        // The secret rotates: the old cookie stops working.
        let later = now + COOKIE_SECRET_LIFETIME;
        assert_eq!(
            checker.check(later, src(1), &view, true, &mut rng),
            Err(CookieError::NeedCookie)
        );
        // And the initiator stops using a cookie past its lifetime.
        let stale = initiation(&mut jar, now + COOKIE_LIFETIME);
        assert_eq!(
            tunnel::Initiation::new_checked(&stale[..])
                .expect("parses")
                .mac2(),
            [0; MAC_LEN]
        );
    }

    #[test]
    fn forged_cookie_replies_are_refused() {
        let now = Instant::now();
        let mut jar = CookieJar::new(&responder_key());
        let mut reply = [0; COOKIE_REPLY_LEN];
        tunnel::encode_cookie_reply(&mut reply, &[1; 24], &[2; 32]);
        let view = CookieReply::new_checked(&reply[..]).expect("parses");
        assert_eq!(jar.consume(now, &view), Err(CookieError::Reply));
        let _ = initiation(&mut jar, now);
        assert_eq!(jar.consume(now, &view), Err(CookieError::Reply));
    }

    #[test]
    fn rate_limiter_allows_bursts_then_the_rate() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new();
        let ip = src(1).ip();
        let allowed = (0..100).filter(|_| limiter.allow(t0, ip)).count();
        assert_eq!(allowed, HANDSHAKE_BURST as usize);
        // Over ten seconds of one attempt per millisecond, the rate holds.
        let mut allowed = 0;
        for ms in 1..=10_000 {
            if limiter.allow(t0 + Duration::from_millis(ms), ip) {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 10 * HANDSHAKES_PER_SECOND as usize);
        // Another source is not affected.
        assert!(limiter.allow(t0 + Duration::from_secs(10), src(2).ip()));
    }

    #[test]
    fn rate_limiter_memory_is_bounded() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::with_limits(20, 5, 64);
        for n in 0..10_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
            assert!(limiter.allow(t0, ip));
            assert!(limiter.len() <= 64);
        }
        assert_eq!(limiter.len(), 64);
        // Hosts of one IPv6 /64 share a bucket.
        let mut limiter = RateLimiter::with_limits(20, 2, 64);
        let a = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 1));
        let b = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 9, 9, 9, 9));
        assert!(limiter.allow(t0, a));
        assert!(limiter.allow(t0, b));
        assert!(!limiter.allow(t0, a));
        assert_eq!(limiter.len(), 1);
    }
}
