//! The datagram tunnel's cryptography, pure and sans-IO: static keys, the
//! Noise IK handshake, transport sessions with WireGuard's timers, the
//! RFC 6479 replay window, and WireGuard's cookie and rate limiting under
//! load.
//!
//! Nothing here opens a socket or reads a clock: `now` (monotonic) and the
//! wall clock for handshake timestamps are parameters, and randomness comes
//! through [`Random`] ([`SystemRng`] in the daemon, a seeded generator in
//! tests). The exception is the handshake's ephemeral keys, which snow
//! draws from the operating system itself.
//!
//! - [`keys`]: X25519 identities and the TCP connect-header key derived from
//!   them.
//! - [`handshake`]: Noise `IK` (initiator = client) with a timestamp against
//!   replayed handshakes.
//! - [`session`]: ChaCha20-Poly1305 or AES-256-GCM (when both ends have
//!   AES instructions) with a 64-bit counter shared by all paths, the
//!   header as associated data, rekey timers.
//! - [`replay`]: the anti-replay bitmap window, wide enough for multipath
//!   reordering.
//! - [`cookie`]: mac1/mac2, cookie replies and the per-source rate limiter.
//! - [`endpoint`]: the two ends, [`Initiator`] (client) and [`Responder`]
//!   (concentrator), which tie the rest together behind `handle_datagram`,
//!   `seal`, `poll_transmit`, `poll_timeout` and `handle_timeout`.
//!
//! The message layouts are in [`crate::wire::tunnel`].

pub mod cookie;
pub mod endpoint;
pub mod handshake;
pub mod keys;
pub mod replay;
pub mod session;

use std::time::Duration;

pub use endpoint::{
    Dropped, Initiator, InitiatorTransmit, PeerId, Received, Responder, ResponderError,
    ResponderTransmit, SealError,
};
pub use keys::{connect_key, keygen_text, KeyError, PublicKey, StaticSecret};

/// WireGuard's timers and limits (WireGuard paper § 6.1, "Timers").
pub mod timers {
    use super::Duration;

    /// The initiator starts a new handshake once its session is this old.
    pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
    /// A session this old neither sends nor receives.
    pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
    /// The initiator starts a new handshake after sending this many
    /// messages on one session.
    pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
    /// A session refuses to send or receive past this counter (2^64 − 2^13
    /// − 1: the replay window must never wrap).
    pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
    /// An unanswered initiation is sent again after this long.
    pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
    /// The initiator gives up a handshake that is unanswered this long.
    pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
    /// Having received data and sent nothing for this long, the responder
    /// sends a keepalive. WireGuard waits 10 s; the tunnel answers within
    /// a second so that the client can tell a concentrator that lost its
    /// session (a restart) from one that merely has nothing to say, in
    /// seconds rather than WireGuard's 15 (at most one 33-byte keepalive
    /// a second per client sending one way).
    pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(1);
    /// Having sent data and heard nothing for this long, the initiator
    /// assumes the responder lost its session (a restart) and handshakes
    /// again: the responder's keepalive timeout, one lost keepalive and a
    /// slow line's round trip (WireGuard: 10 s + 5 s).
    pub const NEW_HANDSHAKE_AFTER_SILENCE: Duration = Duration::from_secs(3);
    /// Upper bound of the random delay added to each rekey and retry, so
    /// that many clients do not handshake in lock-step.
    pub const REKEY_JITTER: Duration = Duration::from_millis(333);
    /// A cookie from a cookie reply is used for this long.
    pub const COOKIE_LIFETIME: Duration = Duration::from_secs(120);
}

/// Why random bytes could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system's random number generator failed")]
pub struct RandomError;

/// A source of random bytes: [`SystemRng`] in the daemon, a seeded
/// generator in tests (so indices, jitter and cookie nonces repeat).
pub trait Random {
    /// Fills `dest` with random bytes.
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), RandomError>;

    /// A random `u32`.
    fn next_u32(&mut self) -> Result<u32, RandomError> {
        let mut bytes = [0; 4];
        self.fill(&mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    /// A random duration in `0..=max` (millisecond steps).
    fn jitter(&mut self, max: Duration) -> Result<Duration, RandomError> {
        let max_ms = u32::try_from(max.as_millis()).unwrap_or(u32::MAX);
        let ms = self.next_u32()? % max_ms.saturating_add(1);
        Ok(Duration::from_millis(u64::from(ms)))
    }
}

/// The operating system's generator (ring's `SystemRandom`).
#[derive(Debug)]
pub struct SystemRng(ring::rand::SystemRandom);

impl SystemRng {
    /// The system's generator.
    pub fn new() -> Self {
        Self(ring::rand::SystemRandom::new())
    }
}

impl Default for SystemRng {
    fn default() -> Self {
        Self::new()
    }
}

impl Random for SystemRng {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), RandomError> {
        ring::rand::SecureRandom::fill(&self.0, dest).map_err(|_| RandomError)
    }
}

/// A deterministic generator for tests (xorshift64*; not for keys).
#[cfg(test)]
#[derive(Debug, Clone)]
pub(crate) struct TestRng(pub(crate) u64);

#[cfg(test)]
impl Random for TestRng {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), RandomError> {
        for byte in dest {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            *byte = (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tunnel_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_bound() {
        let mut rng = TestRng(7);
        let max = timers::REKEY_JITTER;
        let draws: Vec<_> = (0..1000).map(|_| rng.jitter(max).expect("rng")).collect();
        assert!(draws.iter().all(|d| *d <= max));
        assert!(draws.iter().any(|d| *d > max / 2));
        assert_eq!(rng.jitter(Duration::ZERO), Ok(Duration::ZERO));
        assert!(SystemRng::new().next_u32().is_ok());
    }
}
