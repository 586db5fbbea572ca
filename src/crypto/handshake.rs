//! The tunnel's handshake: Noise `IK` (Noise spec § 7.5) with X25519,
//! ChaCha20-Poly1305 and BLAKE2s, as WireGuard (paper § 5.4.2–5.4.3), run
//! by snow.
//!
//! The initiator is always the client: it knows the concentrator's static
//! public key from its config. The concentrator learns the client's static
//! key from the first message and looks it up among its configured clients
//! ([`InitiationReceived::peer`]); an unknown key gets no answer.
//!
//! The initiation's payload is the initiator's session index, a TAI64N
//! timestamp from its wall clock and the data ciphers it offers
//! ([`Ciphers`]: AES-256-GCM besides ChaCha20-Poly1305 when its CPU has
//! AES instructions). The responder accepts a client's
//! initiation only if the timestamp is later than that client's last
//! accepted one (paper § 5.1): a recorded initiation replayed later cannot
//! make the concentrator drop the client's session. The response's payload
//! is the responder's index and the cipher it chose from the offer. Both
//! are inside the Noise messages, so authenticated: nobody on the path can
//! change the choice.
//!
//! `IK` rather than `IKpsk2`: the optional preshared key of WireGuard would
//! be a second secret per client to manage, and post-quantum hedging is out
//! of scope here. Forward secrecy comes from the ephemeral keys: every
//! handshake gives new session keys, and the statics alone cannot recover
//! them.
//!
//! The session keys leave snow through its raw split (`risky-raw-split`):
//! snow's transport state takes no associated data, and the data path
//! needs the header as AD, so [`super::session`] uses ring's AEAD with
//! these keys.

use std::time::Duration;

use zeroize::Zeroizing;

use super::keys::{PublicKey, StaticSecret, KEY_LEN};
use super::session::{Cipher, Ciphers};
use crate::wire::tunnel::{
    self, INITIATION_LEN, INITIATION_NOISE_LEN, INITIATION_PAYLOAD_LEN, RESPONSE_LEN,
    RESPONSE_NOISE_LEN, RESPONSE_PAYLOAD_LEN,
};

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// The Noise prologue: both ends must agree on it, which binds a handshake
/// to this protocol and version (v2: the payloads carry the cipher offer
/// and choice).
pub const PROLOGUE: &[u8] = b"mpbond tunnel v2";

/// Why a handshake step failed. Every one of them is silent towards the
/// network: the caller drops the message.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// snow refused to set up a handshake (a bug, or no randomness for the
    /// ephemeral key).
    #[error("could not set up the Noise handshake")]
    Setup(#[source] snow::Error),
    /// Writing the initiation failed.
    #[error("could not write the handshake initiation")]
    WriteInitiation(#[source] snow::Error),
    /// The initiation does not decrypt with our static key: not for us, or
    /// forged.
    #[error("handshake initiation does not decrypt: not for this key, or forged")]
    ReadInitiation(#[source] snow::Error),
    /// The initiation carries a payload of the wrong length.
    #[error("handshake initiation with a {len}-byte payload, expected {INITIATION_PAYLOAD_LEN}")]
    InitiationPayload {
        /// The payload length.
        len: usize,
    },
    /// Writing the response failed.
    #[error("could not write the handshake response")]
    WriteResponse(#[source] snow::Error),
    /// The response does not decrypt: not an answer to this initiation, or
    /// forged.
    #[error("handshake response does not decrypt: not an answer to this initiation, or forged")]
    ReadResponse(#[source] snow::Error),
    /// The response carries a payload of the wrong length.
    #[error("handshake response with a {len}-byte payload, expected {RESPONSE_PAYLOAD_LEN}")]
    ResponsePayload {
        /// The payload length.
        len: usize,
    },
    /// The response names a cipher the initiation did not offer (a broken
    /// or incompatible concentrator).
    #[error("handshake response chose data cipher {byte}, which this client did not offer")]
    ResponseCipher {
        /// The cipher byte.
        byte: u8,
    },
    /// The responder was asked to answer with a cipher the initiator did
    /// not offer (a bug).
    #[error("cannot answer with {cipher}: the initiator did not offer it")]
    CipherNotOffered {
        /// The cipher.
        cipher: Cipher,
    },
    /// snow did not report the initiator's static key (a bug).
    #[error("the handshake did not reveal the initiator's static key")]
    NoRemoteStatic,
}

/// A TAI64N timestamp (TAI seconds with the 2^62 offset, then
/// nanoseconds; 12 bytes, big-endian), so byte order is time order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Tai64n([u8; 12]);

impl Tai64n {
    /// The timestamp `since_unix_epoch` after 1970 (the wall clock; leap
    /// seconds are ignored, as WireGuard does, since only order matters).
    pub fn from_unix(since_unix_epoch: Duration) -> Self {
        let mut out = [0; 12];
        let seconds = (1u64 << 62).saturating_add(since_unix_epoch.as_secs());
        out[..8].copy_from_slice(&seconds.to_be_bytes());
        out[8..].copy_from_slice(&since_unix_epoch.subsec_nanos().to_be_bytes());
        Self(out)
    }

    /// The 12 bytes.
    pub fn as_bytes(&self) -> &[u8; 12] {
        &self.0
    }

    /// The timestamp with these bytes.
    pub fn from_bytes(bytes: [u8; 12]) -> Self {
        Self(bytes)
    }
}

/// The two keys a handshake produces. Zeroed when dropped; `Debug` hides
/// them.
pub struct SessionKeys {
    /// Key for what this end sends.
    pub(crate) send: Zeroizing<[u8; KEY_LEN]>,
    /// Key for what this end receives.
    pub(crate) recv: Zeroizing<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

fn builder<'a>(local: &'a [u8]) -> Result<snow::Builder<'a>, HandshakeError> {
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse().map_err(HandshakeError::Setup)?;
    snow::Builder::new(params)
        .local_private_key(local)
        .and_then(|b| b.prologue(PROLOGUE))
        .map_err(HandshakeError::Setup)
}

/// The initiator's handshake in flight, waiting for the response.
pub struct InitiatorHandshake {
    state: snow::HandshakeState,
    local_index: u32,
    offer: Ciphers,
}

impl std::fmt::Debug for InitiatorHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitiatorHandshake")
            .field("local_index", &self.local_index)
            .finish_non_exhaustive()
    }
}

/// A finished handshake.
#[derive(Debug)]
pub struct Established {
    /// The index the peer chose: data to it carries this.
    pub remote_index: u32,
    /// The session's keys.
    pub keys: SessionKeys,
    /// The cipher the responder chose.
    pub cipher: Cipher,
}

/// Starts a handshake from `local` to `peer`, announcing `local_index`
/// (data to us will carry it), `timestamp` and the ciphers it `offer`s;
/// writes the initiation, with zero MACs, into `out`. Stamp it with
/// [`super::cookie::CookieJar::stamp`] before sending.
pub fn initiate(
    local: &StaticSecret,
    peer: &PublicKey,
    local_index: u32,
    timestamp: Tai64n,
    offer: Ciphers,
    out: &mut [u8; INITIATION_LEN],
) -> Result<InitiatorHandshake, HandshakeError> {
    let secret = local.to_bytes();
    let mut state = builder(&secret[..])?
        .remote_public_key(peer.as_bytes())
        .and_then(|b| b.build_initiator())
        .map_err(HandshakeError::Setup)?;
    let mut payload = [0; INITIATION_PAYLOAD_LEN];
    payload[..4].copy_from_slice(&local_index.to_be_bytes());
    payload[4..16].copy_from_slice(timestamp.as_bytes());
    payload[16] = offer.to_byte();
    let mut noise = [0; INITIATION_NOISE_LEN];
    let len = state
        .write_message(&payload, &mut noise)
        .map_err(HandshakeError::WriteInitiation)?;
    if len != INITIATION_NOISE_LEN {
        return Err(HandshakeError::WriteInitiation(snow::Error::Input));
    }
    tunnel::encode_initiation(out, &noise);
    Ok(InitiatorHandshake {
        state,
        local_index,
        offer,
    })
}

impl InitiatorHandshake {
    /// The index announced in the initiation.
    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    /// Reads the response. On failure the handshake stays as it was, so a
    /// forged response does not spoil the genuine one that may follow.
    pub fn finish<T: AsRef<[u8]>>(
        &mut self,
        response: &tunnel::Response<T>,
    ) -> Result<Established, HandshakeError> {
        let mut payload = [0; RESPONSE_NOISE_LEN];
        let len = self
            .state
            .read_message(response.noise(), &mut payload)
            .map_err(HandshakeError::ReadResponse)?;
        let payload: [u8; RESPONSE_PAYLOAD_LEN] = payload
            .get(..len)
            .and_then(|p| p.try_into().ok())
            .ok_or(HandshakeError::ResponsePayload { len })?;
        let [a, b, c, d, byte] = payload;
        let cipher = Cipher::from_byte(byte)
            .filter(|&cipher| self.offer.contains(cipher))
            .ok_or(HandshakeError::ResponseCipher { byte })?;
        let (initiator_to_responder, responder_to_initiator) =
            self.state.dangerously_get_raw_split();
        Ok(Established {
            remote_index: u32::from_be_bytes([a, b, c, d]),
            cipher,
            keys: SessionKeys {
                send: Zeroizing::new(initiator_to_responder),
                recv: Zeroizing::new(responder_to_initiator),
            },
        })
    }
}

/// An initiation that decrypted with the responder's static key. Check
/// [`Self::peer`] against the configured clients and [`Self::timestamp`]
/// against that client's last one before answering with
/// [`Self::respond`].
pub struct InitiationReceived {
    state: snow::HandshakeState,
    /// The initiator's static public key (authenticated).
    pub peer: PublicKey,
    /// The initiator's index: data to it carries this.
    pub sender_index: u32,
    /// The initiator's timestamp.
    pub timestamp: Tai64n,
    /// The ciphers the initiator offers.
    pub offer: Ciphers,
}

impl std::fmt::Debug for InitiationReceived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitiationReceived")
            .field("peer", &self.peer)
            .field("sender_index", &self.sender_index)
            .finish_non_exhaustive()
    }
}

/// Reads an initiation with the responder's static secret `local`. This
/// costs two X25519 operations: check mac1 (and, under load, mac2) and the
/// rate limiter first.
pub fn receive_initiation<T: AsRef<[u8]>>(
    local: &StaticSecret,
    initiation: &tunnel::Initiation<T>,
) -> Result<InitiationReceived, HandshakeError> {
    let secret = local.to_bytes();
    let mut state = builder(&secret[..])?
        .build_responder()
        .map_err(HandshakeError::Setup)?;
    let mut payload = [0; INITIATION_NOISE_LEN];
    let len = state
        .read_message(initiation.noise(), &mut payload)
        .map_err(HandshakeError::ReadInitiation)?;
    let payload: [u8; INITIATION_PAYLOAD_LEN] = payload
        .get(..len)
        .and_then(|p| p.try_into().ok())
        .ok_or(HandshakeError::InitiationPayload { len })?;
    let peer: [u8; KEY_LEN] = state
        .get_remote_static()
        .and_then(|s| s.try_into().ok())
        .ok_or(HandshakeError::NoRemoteStatic)?;
    let mut index = [0; 4];
    index.copy_from_slice(&payload[..4]);
    let mut timestamp = [0; 12];
    timestamp.copy_from_slice(&payload[4..16]);
    Ok(InitiationReceived {
        state,
        peer: PublicKey::from_bytes(peer),
        sender_index: u32::from_be_bytes(index),
        timestamp: Tai64n(timestamp),
        offer: Ciphers::from_byte(payload[16]),
    })
}

impl InitiationReceived {
    /// Answers with `local_index` (data to us will carry it) and `cipher`
    /// (one of [`Self::offer`]): writes the response, with zero MACs, into
    /// `out` and returns the session keys. Stamp mac1 with
    /// [`super::cookie::Mac1Key`] of [`Self::peer`].
    pub fn respond(
        mut self,
        local_index: u32,
        cipher: Cipher,
        out: &mut [u8; RESPONSE_LEN],
    ) -> Result<SessionKeys, HandshakeError> {
        if !self.offer.contains(cipher) {
            return Err(HandshakeError::CipherNotOffered { cipher });
        }
        let mut payload = [0; RESPONSE_PAYLOAD_LEN];
        payload[..4].copy_from_slice(&local_index.to_be_bytes());
        payload[4] = cipher.to_byte();
        let mut noise = [0; RESPONSE_NOISE_LEN];
        let len = self
            .state
            .write_message(&payload, &mut noise)
            .map_err(HandshakeError::WriteResponse)?;
        if len != RESPONSE_NOISE_LEN {
            return Err(HandshakeError::WriteResponse(snow::Error::Input));
        }
        tunnel::encode_response(out, self.sender_index, &noise);
        let (initiator_to_responder, responder_to_initiator) =
            self.state.dangerously_get_raw_split();
        Ok(SessionKeys {
            send: Zeroizing::new(responder_to_initiator),
            recv: Zeroizing::new(initiator_to_responder),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tunnel::{Initiation, Response};

    fn secret(byte: u8) -> StaticSecret {
        StaticSecret::from_bytes([byte; KEY_LEN])
    }

    fn ts(seconds: u64) -> Tai64n {
        Tai64n::from_unix(Duration::from_secs(seconds))
    }

    /// The client's initiation offering `offer`, as the server read it.
    fn initiated(
        client: &StaticSecret,
        server: &StaticSecret,
        offer: Ciphers,
    ) -> (InitiatorHandshake, InitiationReceived) {
        let mut init = [0; INITIATION_LEN];
        let hs = initiate(client, &server.public_key(), 5, ts(9), offer, &mut init).expect("init");
        let view = Initiation::new_checked(&init[..]).expect("parses");
        (hs, receive_initiation(server, &view).expect("decrypts"))
    }

    /// A full handshake; returns both ends' keys.
    fn handshake(client: &StaticSecret, server: &StaticSecret) -> (Established, SessionKeys) {
        handshake_with(client, server, Ciphers::WITH_AES, Ciphers::WITH_AES)
    }

    /// A full handshake, the client offering `offer`, the server running
    /// `runs`; returns both ends' keys.
    fn handshake_with(
        client: &StaticSecret,
        server: &StaticSecret,
        offer: Ciphers,
        runs: Ciphers,
    ) -> (Established, SessionKeys) {
        let mut init = [0; INITIATION_LEN];
        let mut hs =
            initiate(client, &server.public_key(), 11, ts(1000), offer, &mut init).expect("init");
        let view = Initiation::new_checked(&init[..]).expect("parses");
        let received = receive_initiation(server, &view).expect("decrypts");
        assert_eq!(received.peer, client.public_key());
        assert_eq!(received.sender_index, 11);
        assert_eq!(received.timestamp, ts(1000));
        assert_eq!(received.offer, offer);
        let cipher = runs.choose(received.offer);
        let mut resp = [0; RESPONSE_LEN];
        let server_keys = received.respond(22, cipher, &mut resp).expect("responds");
        let view = Response::new_checked(&resp[..]).expect("parses");
        assert_eq!(view.receiver_index(), 11);
        let established = hs.finish(&view).expect("finishes");
        assert_eq!(established.remote_index, 22);
        assert_eq!(established.cipher, cipher);
        (established, server_keys)
    }

    #[test]
    fn both_ends_get_matching_keys() {
        let (client, server) = (secret(1), secret(2));
        let (c, s) = handshake(&client, &server);
        assert_eq!(*c.keys.send, *s.recv);
        assert_eq!(*c.keys.recv, *s.send);
        assert_ne!(*c.keys.send, *c.keys.recv);
    }

    #[test]
    fn every_handshake_has_fresh_keys() {
        let (client, server) = (secret(1), secret(2));
        let (a, _) = handshake(&client, &server);
        let (b, _) = handshake(&client, &server);
        assert_ne!(*a.keys.send, *b.keys.send);
        assert_ne!(*a.keys.recv, *b.keys.recv);
    }

    #[test]
    fn an_initiation_for_another_key_does_not_decrypt() {
        let mut init = [0; INITIATION_LEN];
        initiate(
            &secret(1),
            &secret(2).public_key(),
            1,
            ts(1),
            Ciphers::WITH_AES,
            &mut init,
        )
        .expect("init");
        let view = Initiation::new_checked(&init[..]).expect("parses");
        assert!(matches!(
            receive_initiation(&secret(3), &view),
            Err(HandshakeError::ReadInitiation(_))
        ));
        for at in [4, 40, 100, 115] {
            let mut flipped = init;
            flipped[at] ^= 0x10;
            let view = Initiation::new_checked(&flipped[..]).expect("parses");
            assert!(receive_initiation(&secret(2), &view).is_err(), "byte {at}");
        }
    }

    #[test]
    fn a_forged_response_does_not_spoil_the_handshake() {
        let (client, server) = (secret(1), secret(2));
        let (mut hs, received) = initiated(&client, &server, Ciphers::CHACHA_ONLY);
        let mut resp = [0; RESPONSE_LEN];
        let server_keys = received
            .respond(6, Cipher::ChaCha20Poly1305, &mut resp)
            .expect("responds");
        let mut forged = resp;
        forged[50] ^= 1;
        assert!(matches!(
            hs.finish(&Response::new_checked(&forged[..]).expect("parses")),
            Err(HandshakeError::ReadResponse(_))
        ));
        let ok = hs
            .finish(&Response::new_checked(&resp[..]).expect("parses"))
            .expect("the genuine response still works");
        assert_eq!(*ok.keys.send, *server_keys.recv);
    }

    #[test]
    fn the_cipher_is_aes_only_when_both_ends_offer_it_and_answers_only_from_the_offer() {
        let (client, server) = (secret(1), secret(2));
        for (offer, runs, cipher) in [
            (Ciphers::WITH_AES, Ciphers::WITH_AES, Cipher::Aes256Gcm),
            (
                Ciphers::WITH_AES,
                Ciphers::CHACHA_ONLY,
                Cipher::ChaCha20Poly1305,
            ),
            (
                Ciphers::CHACHA_ONLY,
                Ciphers::WITH_AES,
                Cipher::ChaCha20Poly1305,
            ),
            (
                Ciphers::CHACHA_ONLY,
                Ciphers::CHACHA_ONLY,
                Cipher::ChaCha20Poly1305,
            ),
        ] {
            let (c, s) = handshake_with(&client, &server, offer, runs);
            assert_eq!(c.cipher, cipher);
            assert_eq!(*c.keys.send, *s.recv);
        }
        let (_, received) = initiated(&client, &server, Ciphers::CHACHA_ONLY);
        assert!(matches!(
            received.respond(2, Cipher::Aes256Gcm, &mut [0; RESPONSE_LEN]),
            Err(HandshakeError::CipherNotOffered {
                cipher: Cipher::Aes256Gcm
            })
        ));
    }

    #[test]
    fn timestamps_order_like_time() {
        assert!(ts(1) < ts(2));
        let a = Tai64n::from_unix(Duration::new(5, 999_999_999));
        let b = Tai64n::from_unix(Duration::new(6, 0));
        assert!(a < b);
        assert_eq!(Tai64n::from_bytes(*a.as_bytes()), a);
        assert_eq!(
            format!("{:?}", handshake(&secret(1), &secret(2)).1),
            "SessionKeys(..)"
        );
    }
}
