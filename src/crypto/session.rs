//! A transport session: what one handshake keys, until the next one.
//!
//! Data messages are sealed with ChaCha20-Poly1305 (RFC 8439) under the
//! handshake's keys, with the message's counter as nonce (32 zero bits and
//! the counter little-endian, Noise spec § 5.1's `ChaChaPoly` nonce) and
//! the cleartext data header (type, receiver index, counter, path id) as
//! associated data. One counter serves all paths of a session: packets go
//! out over several uplinks and arrive reordered, and the session's
//! [`ReplayWindow`] sorts them out (WireGuard paper § 5.4.6).
//!
//! The AEAD is ring's, not snow's transport state: snow's takes no
//! associated data, and ring seals and opens in place in the caller's
//! buffer with its assembly ChaCha20-Poly1305, which the per-packet path
//! wants.
//!
//! A session is good for [`REJECT_AFTER_TIME`] and
//! [`REJECT_AFTER_MESSAGES`]; the initiator replaces it after
//! [`REKEY_AFTER_TIME`] or [`REKEY_AFTER_MESSAGES`] (see
//! [`Session::rekey_due`]).

use std::time::{Duration, Instant};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};

use super::handshake::SessionKeys;
use super::replay::{ReplayError, ReplayWindow};
use super::timers::{
    REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME,
};
use crate::wire::tunnel::{self, Data, Inner, InnerError, DATA_HEADER_LEN, TAG_LEN};

/// Why a data message could not be sealed or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// ring refused the handshake's keys (not 32 bytes: a bug).
    #[error("could not set up the session's cipher with the handshake's keys")]
    Key,
    /// The session is older than the reject limit: handshake again.
    #[error(
        "session is {age:?} old, past the {REJECT_AFTER_TIME:?} limit: a new handshake is due"
    )]
    Expired {
        /// The session's age.
        age: Duration,
    },
    /// The session has sent its last counter: handshake again.
    #[error("session has sent its last counter: a new handshake is due")]
    Exhausted,
    /// The buffer to seal into is too small.
    #[error("buffer of {len} bytes too small for a {need}-byte data message")]
    BufferTooSmall {
        /// Bytes in the buffer.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The inner message could not be written.
    #[error("could not write the inner message")]
    Inner(#[source] InnerError),
    /// The bytes are not a data message.
    #[error("not a data message")]
    Malformed(#[source] tunnel::Error),
    /// A data message for another session.
    #[error("data message for index {index}, not this session's")]
    WrongIndex {
        /// The index it carries.
        index: u32,
    },
    /// The counter was seen before or is too old.
    #[error("data message refused by the replay window")]
    Replay(#[source] ReplayError),
    /// The tag does not verify: forged, damaged, or another key.
    #[error("data message does not authenticate: forged or damaged")]
    Decrypt,
}

/// One session's keys, counter, replay window and age.
#[cfg_attr(fuzzing, derive(Clone))]
pub struct Session {
    local_index: u32,
    remote_index: u32,
    send: LessSafeKey,
    recv: LessSafeKey,
    next_counter: u64,
    replay: ReplayWindow,
    created: Instant,
    initiator: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("next_counter", &self.next_counter)
            .field("initiator", &self.initiator)
            .finish_non_exhaustive()
    }
}

fn aead_key(key: &[u8]) -> Result<LessSafeKey, SessionError> {
    UnboundKey::new(&CHACHA20_POLY1305, key)
        .map(LessSafeKey::new)
        .map_err(|_| SessionError::Key)
}

fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0; NONCE_LEN];
    bytes[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(bytes)
}

impl Session {
    /// The session a handshake finished at `now`: data to us carries
    /// `local_index`, data from us `remote_index`. `initiator` says
    /// whether this end started the handshake (only the initiator rekeys).
    pub fn new(
        local_index: u32,
        remote_index: u32,
        keys: &SessionKeys,
        now: Instant,
        initiator: bool,
    ) -> Result<Self, SessionError> {
        Ok(Self {
            local_index,
            remote_index,
            send: aead_key(&keys.send[..])?,
            recv: aead_key(&keys.recv[..])?,
            next_counter: 0,
            replay: ReplayWindow::new(),
            created: now,
            initiator,
        })
    }

    /// The index data to this end carries.
    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    /// The index data from this end carries.
    pub fn remote_index(&self) -> u32 {
        self.remote_index
    }

    /// When the handshake finished.
    pub fn created(&self) -> Instant {
        self.created
    }

    /// How many messages were sealed.
    pub fn sent(&self) -> u64 {
        self.next_counter
    }

    /// Whether the session may no longer send or receive at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.created) >= REJECT_AFTER_TIME
    }

    /// Whether the initiator should replace this session at `now`, given
    /// `jitter` added to the rekey time. Always false on the responder.
    pub fn rekey_due(&self, now: Instant, jitter: Duration) -> bool {
        self.initiator
            && (now.saturating_duration_since(self.created) >= REKEY_AFTER_TIME + jitter
                || self.next_counter >= REKEY_AFTER_MESSAGES)
    }

    fn check_age(&self, now: Instant) -> Result<(), SessionError> {
        let age = now.saturating_duration_since(self.created);
        if age >= REJECT_AFTER_TIME {
            return Err(SessionError::Expired { age });
        }
        Ok(())
    }

    /// Seals `inner` for `path` into `out`; returns the message length
    /// ([`tunnel::DATA_OVERHEAD`] plus the inner length).
    pub fn seal(
        &mut self,
        now: Instant,
        path: u8,
        inner: &Inner<'_>,
        out: &mut [u8],
    ) -> Result<usize, SessionError> {
        self.check_age(now)?;
        let counter = self.next_counter;
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(SessionError::Exhausted);
        }
        let plain_len = inner.len();
        let need = DATA_HEADER_LEN + plain_len + TAG_LEN;
        let Some(message) = out.get_mut(..need) else {
            return Err(SessionError::BufferTooSmall {
                len: out.len(),
                need,
            });
        };
        let (header, rest) = message.split_at_mut(DATA_HEADER_LEN);
        tunnel::encode_data_header(header, self.remote_index, counter, path)
            .map_err(SessionError::Malformed)?;
        let (plain, tag_out) = rest.split_at_mut(plain_len);
        inner.encode(plain).map_err(SessionError::Inner)?;
        let tag = self
            .send
            .seal_in_place_separate_tag(nonce(counter), Aad::from(&*header), plain)
            // ring refuses only messages longer than ChaCha20 can count.
            .map_err(|_| SessionError::BufferTooSmall { len: need, need })?;
        tag_out.copy_from_slice(tag.as_ref());
        self.next_counter = counter + 1;
        Ok(need)
    }

    /// Opens a data message in place; returns the path it was sent on and
    /// the plaintext (parse it with [`Inner::parse`]). The replay window
    /// moves only for a message that authenticated.
    pub fn open<'b>(
        &mut self,
        now: Instant,
        message: &'b mut [u8],
    ) -> Result<(u8, &'b [u8]), SessionError> {
        let data = Data::new_checked(&*message).map_err(SessionError::Malformed)?;
        let (index, counter, path) = (data.receiver_index(), data.counter(), data.path());
        if index != self.local_index {
            return Err(SessionError::WrongIndex { index });
        }
        self.check_age(now)?;
        self.replay.check(counter).map_err(SessionError::Replay)?;
        let (header, sealed) = message.split_at_mut(DATA_HEADER_LEN.min(message.len()));
        let plain = self
            .recv
            .open_in_place(nonce(counter), Aad::from(&*header), sealed)
            .map_err(|_| SessionError::Decrypt)?;
        self.replay.commit(counter).map_err(SessionError::Replay)?;
        Ok((path, plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tunnel::{PathProbe, DATA_OVERHEAD};
    use zeroize::Zeroizing;

    fn keys(a: u8, b: u8) -> SessionKeys {
        SessionKeys {
            send: Zeroizing::new([a; 32]),
            recv: Zeroizing::new([b; 32]),
        }
    }

    fn pair(now: Instant) -> (Session, Session) {
        (
            Session::new(1, 2, &keys(7, 8), now, true).expect("keys"),
            Session::new(2, 1, &keys(8, 7), now, false).expect("keys"),
        )
    }

    #[test]
    fn seal_and_open_both_ways() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let packet = [0x45u8; 100];
        let mut buf = [0u8; 256];
        let len = a
            .seal(now, 3, &Inner::Ip(&packet), &mut buf)
            .expect("seals");
        assert_eq!(len, DATA_OVERHEAD + 101);
        let (path, plain) = b.open(now, &mut buf[..len]).expect("opens");
        assert_eq!(path, 3);
        assert_eq!(Inner::parse(plain), Ok(Inner::Ip(&packet)));

        let probe = Inner::Probe(PathProbe {
            path: 1,
            seq: 9,
            ..PathProbe::default()
        });
        let len = b.seal(now, 1, &probe, &mut buf).expect("seals");
        let (_, plain) = a.open(now, &mut buf[..len]).expect("opens");
        assert_eq!(Inner::parse(plain), Ok(probe));
        assert_eq!((a.sent(), b.sent()), (1, 1));
    }

    #[test]
    fn replays_tampering_and_wrong_keys_are_refused() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let mut buf = [0u8; 64];
        let len = a
            .seal(now, 0, &Inner::Ip(b"hello"), &mut buf)
            .expect("seals");
        let original = buf;
        b.open(now, &mut buf[..len]).expect("opens");
        let mut again = original;
        assert!(matches!(
            b.open(now, &mut again[..len]),
            Err(SessionError::Replay(ReplayError::Duplicate { counter: 0 }))
        ));
        // Every byte, header (the AD) included, is covered.
        let len = a
            .seal(now, 0, &Inner::Ip(b"hello"), &mut buf)
            .expect("seals");
        for at in (tunnel::field::COUNTER..len).chain([tunnel::field::PATH]) {
            let mut tampered = buf;
            tampered[at] ^= 1;
            assert!(b.open(now, &mut tampered[..len]).is_err(), "byte {at}");
        }
        // Forged messages did not move the window: the genuine one opens.
        b.open(now, &mut buf[..len]).expect("opens");

        let mut other = Session::new(2, 1, &keys(9, 9), now, false).expect("keys");
        let len = a.seal(now, 0, &Inner::Keepalive, &mut buf).expect("seals");
        assert_eq!(other.open(now, &mut buf[..len]), Err(SessionError::Decrypt));
        let mut wrong_index = Session::new(5, 1, &keys(8, 7), now, false).expect("keys");
        assert_eq!(
            wrong_index.open(now, &mut buf[..len]),
            Err(SessionError::WrongIndex { index: 2 })
        );
    }

    #[test]
    fn reordered_across_paths_all_open_once() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let mut sealed = Vec::new();
        for n in 0..1000u32 {
            let mut buf = vec![0u8; 64];
            let payload = n.to_be_bytes();
            let len = a
                .seal(now, (n % 2) as u8, &Inner::Ip(&payload), &mut buf)
                .expect("seals");
            buf.truncate(len);
            sealed.push(buf);
        }
        // Path 1 is 300 packets slower than path 0.
        let (fast, slow): (Vec<_>, Vec<_>) = sealed
            .into_iter()
            .enumerate()
            .partition(|(n, _)| n % 2 == 0);
        let mut order: Vec<Vec<u8>> = Vec::new();
        let mut slow = slow.into_iter().map(|(_, m)| m).peekable();
        for (n, m) in fast {
            order.push(m);
            if n >= 300 {
                if let Some(m) = slow.next() {
                    order.push(m);
                }
            }
        }
        order.extend(slow);
        let mut seen = std::collections::HashSet::new();
        for mut m in order {
            let copy = m.clone();
            let (_, plain) = b.open(now, &mut m).expect("opens");
            assert!(seen.insert(plain.to_vec()));
            let mut dup = copy;
            assert!(b.open(now, &mut dup).is_err());
        }
        assert_eq!(seen.len(), 1000);
    }

    #[test]
    fn timers_expire_and_rekey() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        let jitter = Duration::from_millis(200);
        assert!(!a.rekey_due(t0 + REKEY_AFTER_TIME, jitter));
        assert!(a.rekey_due(t0 + REKEY_AFTER_TIME + jitter, jitter));
        assert!(!b.rekey_due(t0 + REJECT_AFTER_TIME, jitter));
        let late = t0 + REJECT_AFTER_TIME;
        assert!(a.is_expired(late));
        let mut buf = [0u8; 64];
        assert!(matches!(
            a.seal(late, 0, &Inner::Keepalive, &mut buf),
            Err(SessionError::Expired { .. })
        ));
        let len = a
            .seal(
                late - Duration::from_millis(1),
                0,
                &Inner::Keepalive,
                &mut buf,
            )
            .expect("seals");
        assert!(matches!(
            b.open(late, &mut buf[..len]),
            Err(SessionError::Expired { .. })
        ));
        assert_eq!(
            a.seal(t0, 0, &Inner::Ip(&[1; 40]), &mut buf),
            Err(SessionError::BufferTooSmall { len: 64, need: 74 })
        );
    }
}
