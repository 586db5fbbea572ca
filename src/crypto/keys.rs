//! Static X25519 identities: one keypair per client and per concentrator,
//! and the connect-header key both ends derive from them.
//!
//! Keys come from `x25519-dalek` (with `static_secrets`): it is the curve
//! crate snow's default resolver already builds on (`curve25519-dalek`), it
//! zeroizes secrets on drop, and it reports a non-contributory (all-zero)
//! Diffie-Hellman result, which [`connect_key`] must refuse. snow's own
//! resolver would give raw byte arrays with none of that.
//!
//! # One identity per client, for TCP too
//!
//! A user manages one keypair per client: the concentrator's config lists
//! each client's public key, the client's config the concentrator's. The
//! connect header of the TCP side (see [`crate::auth`]) keeps its fast
//! HMAC-SHA256, keyed with [`connect_key`]: HKDF-SHA256 (RFC 5869) over the
//! static-static X25519 shared secret, salted with [`CONNECT_KEY_LABEL`] and
//! bound to both public keys. Each end computes it from its own secret and
//! the other's public key, so no shared secret has to be copied between
//! machines, and the key changes whenever either end's keypair does. This
//! key has no forward secrecy (it is static-static); the header carries no
//! payload worth it, and replay-after-restart is issue 10's to harden.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::auth;

/// Length of an X25519 key (secret or public) in bytes.
pub const KEY_LEN: usize = 32;

/// HKDF salt of [`connect_key`]: a key derived here is never one derived
/// for anything else from the same DH.
pub const CONNECT_KEY_LABEL: &[u8] = b"mpbond connect-key v1";

/// Why a key could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The system's random number generator failed.
    #[error("the system's random number generator failed while making a key")]
    Random,
    /// A key is not valid base64.
    #[error("key is not valid base64: a key is 32 bytes in base64, as `mpbond keygen` prints")]
    Encoding(#[source] base64::DecodeError),
    /// A key decodes to the wrong number of bytes.
    #[error("key decodes to {len} bytes: a key is 32 bytes in base64, as `mpbond keygen` prints")]
    Length {
        /// How many bytes it decoded to.
        len: usize,
    },
    /// The peer's public key is a low-order point: the shared secret would
    /// be all zeros, known to anyone.
    #[error(
        "public key {peer} is not a usable X25519 key (a low-order point): \
         copy the peer's public key again from its `mpbond keygen` output"
    )]
    LowOrder {
        /// The public key refused.
        peer: PublicKey,
    },
}

/// A static X25519 secret key.
///
/// `Debug` prints `StaticSecret(..)`, there is no `Display`, and the bytes
/// are zeroed when it is dropped. [`StaticSecret::to_base64`] is the one
/// way to show it (for `mpbond keygen`).
#[derive(Clone)]
pub struct StaticSecret(x25519_dalek::StaticSecret);

impl StaticSecret {
    /// A fresh random secret from the system's generator.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new()
            .fill(&mut bytes[..])
            .map_err(|_| KeyError::Random)?;
        Ok(Self::from_bytes(*bytes))
    }

    /// The secret with these bytes (clamped by X25519 when used).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(x25519_dalek::StaticSecret::from(bytes))
    }

    /// Reads a secret in standard base64 (with padding); surrounding
    /// whitespace is ignored.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        Ok(Self::from_bytes(decode(text)?))
    }

    /// The secret in standard base64.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0.as_bytes())
    }

    /// The public key that goes with this secret.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_dalek::PublicKey::from(&self.0))
    }

    /// The raw bytes, for the handshake; zeroed when dropped.
    pub(crate) fn to_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// X25519 with `peer`; `None` if the result is all zeros (a low-order
    /// point), which no caller may use as a secret.
    pub(crate) fn diffie_hellman(&self, peer: &PublicKey) -> Option<Zeroizing<[u8; KEY_LEN]>> {
        let shared = self.0.diffie_hellman(&peer.0);
        if !shared.was_contributory() {
            return None;
        }
        Some(Zeroizing::new(shared.to_bytes()))
    }
}

impl fmt::Debug for StaticSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticSecret(..)")
    }
}

/// A static X25519 public key, as configs carry it (base64).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(x25519_dalek::PublicKey);

impl PublicKey {
    /// The public key with these bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(x25519_dalek::PublicKey::from(bytes))
    }

    /// Reads a public key in standard base64 (with padding); surrounding
    /// whitespace is ignored.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        Ok(Self::from_bytes(decode(text)?))
    }

    /// The key in standard base64, as configs carry it.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0.as_bytes())
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        self.0.as_bytes()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl std::str::FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        Self::from_base64(text)
    }
}

fn decode(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let bytes = Zeroizing::new(BASE64.decode(text.trim()).map_err(KeyError::Encoding)?);
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length { len: bytes.len() })
}

/// What `mpbond keygen` prints for a fresh `secret`: the secret for this
/// machine's config and the public key for the peer's, as TOML lines.
pub fn keygen_text(secret: &StaticSecret) -> String {
    format!(
        "# Keep this line in this machine's config only.\n\
         private_key = \"{}\"\n\
         # Give this line to the other end: it goes in its config.\n\
         public_key = \"{}\"\n",
        secret.to_base64(),
        secret.public_key(),
    )
}

/// The connect-header MAC key shared by `local` and `peer`: HKDF-SHA256
/// over their static-static X25519 secret, salted with
/// [`CONNECT_KEY_LABEL`], with both public keys (smaller first) as info.
/// Each end gets the same key from its own secret and the other's public
/// key.
pub fn connect_key(local: &StaticSecret, peer: &PublicKey) -> Result<auth::Key, KeyError> {
    let shared = local
        .diffie_hellman(peer)
        .ok_or(KeyError::LowOrder { peer: *peer })?;
    let mine = local.public_key();
    let (first, second) = if mine.as_bytes() <= peer.as_bytes() {
        (mine.as_bytes(), peer.as_bytes())
    } else {
        (peer.as_bytes(), mine.as_bytes())
    };
    let mut key = Zeroizing::new([0u8; auth::KEY_LEN]);
    hkdf::Salt::new(hkdf::HKDF_SHA256, CONNECT_KEY_LABEL)
        .extract(&shared[..])
        .expand(&[first, second], hkdf::HKDF_SHA256)
        // 32 bytes is far below HKDF-SHA256's limit of 255 × 32.
        .and_then(|okm| okm.fill(&mut key[..]))
        .map_err(|_| KeyError::LowOrder { peer: *peer })?;
    Ok(auth::Key::from_bytes(*key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(byte: u8) -> StaticSecret {
        StaticSecret::from_bytes([byte; KEY_LEN])
    }

    #[test]
    fn keys_roundtrip_through_base64() {
        let secret = StaticSecret::generate().expect("random");
        let again = StaticSecret::from_base64(&format!(" {}\n", secret.to_base64())).expect("ok");
        assert_eq!(again.public_key(), secret.public_key());
        let copy = StaticSecret::from_bytes(*secret.to_bytes());
        assert_eq!(copy.public_key(), secret.public_key());
        let public = secret.public_key();
        assert_eq!(public.to_base64().len(), 44);
        assert_eq!(
            PublicKey::from_base64(&public.to_string()).expect("ok"),
            public
        );
        assert_ne!(
            StaticSecret::generate().expect("random").public_key(),
            public
        );
    }

    #[test]
    fn bad_keys_say_what_a_key_is() {
        let hint = "a key is 32 bytes in base64, as `mpbond keygen` prints";
        let err = PublicKey::from_base64("not base64!").expect_err("invalid");
        assert!(matches!(err, KeyError::Encoding(_)));
        assert!(err.to_string().contains(hint));
        let err = StaticSecret::from_base64(&BASE64.encode([1; 16])).expect_err("short");
        assert!(matches!(err, KeyError::Length { len: 16 }));
        assert!(err.to_string().contains(hint));
    }

    #[test]
    fn debug_hides_the_secret() {
        let s = secret(0x41);
        assert_eq!(format!("{s:?}"), "StaticSecret(..)");
        assert_eq!(format!("{s:#?}"), "StaticSecret(..)");
        let text = keygen_text(&s);
        assert!(text.contains(&s.to_base64()));
        assert!(text.contains(&s.public_key().to_base64()));
    }

    #[test]
    fn both_ends_derive_the_same_connect_key() {
        let (client, concentrator) = (secret(1), secret(2));
        let a = connect_key(&client, &concentrator.public_key()).expect("ok");
        let b = connect_key(&concentrator, &client.public_key()).expect("ok");
        assert_eq!(a.to_base64(), b.to_base64());
        let other = connect_key(&secret(3), &concentrator.public_key()).expect("ok");
        assert_ne!(a.to_base64(), other.to_base64());
    }

    #[test]
    fn low_order_points_are_refused() {
        // The identity point and a point of order 8 (RFC 7748 § 6.1 notes
        // both give an all-zero result).
        let order8 = [
            0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f,
            0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16,
            0x5f, 0x49, 0xb8, 0x00,
        ];
        for bad in [[0u8; 32], order8] {
            let peer = PublicKey::from_bytes(bad);
            let err = connect_key(&secret(1), &peer).expect_err("low order");
            assert!(matches!(err, KeyError::LowOrder { .. }), "{err}");
        }
    }
}
