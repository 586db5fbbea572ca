//! A transport session: what one handshake keys, until the next one.
//!
//! Data messages are sealed with the [`Cipher`] the handshake chose,
//! ChaCha20-Poly1305 (RFC 8439) or AES-256-GCM, under the handshake's
//! keys, with the message's counter as nonce (32 zero bits and the counter
//! little-endian, Noise spec § 5.1's `ChaChaPoly` nonce) and the cleartext
//! data header (type, receiver index, counter, path id) as associated
//! data. One counter serves all paths of a session: packets go
//! out over several uplinks and arrive reordered, and the session's
//! [`ReplayWindow`] sorts them out (WireGuard paper § 5.4.6).
//!
//! The AEAD is ring's, not snow's transport state: snow's takes no
//! associated data, and ring seals and opens in place in the caller's
//! buffer with its assembly, which the per-packet path wants.
//!
//! AES-256-GCM is used only when both ends have AES and carry-less
//! multiplication in hardware ([`Ciphers::local`]): there it costs about a
//! third of ChaCha20-Poly1305 per packet (ring on this project's x86 test
//! machines: 204 against 704 ns for 1,200 bytes), and the cipher was
//! 25-39 % of either daemon's CPU at Gbit/s. Without the instructions
//! (many home routers' ARM and MIPS cores) ChaCha20-Poly1305 is the faster
//! and constant-time one, so it stays the default both ends always have.
//! AES-GCM's security bound depends on how much one key seals, so a
//! session under it is replaced far sooner ([`Cipher::rekey_after`]).
//!
//! A session is good for [`REJECT_AFTER_TIME`] and
//! [`REJECT_AFTER_MESSAGES`]; the initiator replaces it after
//! [`REKEY_AFTER_TIME`] or [`REKEY_AFTER_MESSAGES`] (see
//! [`Session::rekey_due`]).

use std::time::{Duration, Instant};

use ring::aead::{
    Aad, Algorithm, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305, NONCE_LEN,
};

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

/// The AEAD that seals a session's data messages, chosen by the responder
/// in the handshake from what the initiator offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    /// ChaCha20-Poly1305: every end has it.
    ChaCha20Poly1305,
    /// AES-256-GCM, when both ends have AES in hardware.
    Aes256Gcm,
}

/// AES-GCM sessions are replaced after this many messages in either
/// direction. The bound on an attacker's advantage against AES-GCM's
/// confidentiality grows with the square of the blocks one key seals
/// (RFC 9001 § 6.6 and its appendix B). A tunnel message is one UDP
/// datagram on a line (94 blocks at 1,500 bytes, 563 on 9,000-byte jumbo
/// frames), and a session seals at most twice this many
/// ([`Cipher::reject_after`]): at most 2^34.2 blocks, an advantage under
/// 2^-59 (QUIC aims under 2^-57). At 2 Gbit/s of 1,200-byte packets this
/// is a rekey about every 80 s instead of every 120.
pub const AES_GCM_REKEY_AFTER_MESSAGES: u64 = 1 << 24;

impl Cipher {
    /// The byte that names it in a handshake response.
    pub fn to_byte(self) -> u8 {
        match self {
            Self::ChaCha20Poly1305 => 0,
            Self::Aes256Gcm => 1,
        }
    }

    /// The cipher a response's byte names, if any.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::ChaCha20Poly1305),
            1 => Some(Self::Aes256Gcm),
            _ => None,
        }
    }

    /// Its name in logs and the status.
    pub fn name(self) -> &'static str {
        match self {
            Self::ChaCha20Poly1305 => "chacha20-poly1305",
            Self::Aes256Gcm => "aes-256-gcm",
        }
    }

    fn algorithm(self) -> &'static Algorithm {
        match self {
            Self::ChaCha20Poly1305 => &CHACHA20_POLY1305,
            Self::Aes256Gcm => &AES_256_GCM,
        }
    }

    /// After how many messages, sent or received, the initiator replaces a
    /// session under this cipher.
    pub fn rekey_after(self) -> u64 {
        match self {
            Self::ChaCha20Poly1305 => REKEY_AFTER_MESSAGES,
            Self::Aes256Gcm => AES_GCM_REKEY_AFTER_MESSAGES,
        }
    }

    /// The counter from which a session under this cipher seals nothing
    /// more.
    pub fn reject_after(self) -> u64 {
        match self {
            Self::ChaCha20Poly1305 => REJECT_AFTER_MESSAGES,
            Self::Aes256Gcm => 2 * AES_GCM_REKEY_AFTER_MESSAGES,
        }
    }
}

impl std::fmt::Display for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The ciphers an end can use, as the one byte of flags an initiation
/// carries. ChaCha20-Poly1305 is implied; bits this version does not know
/// are ignored, so a later version can offer more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ciphers(u8);

impl Ciphers {
    /// ChaCha20-Poly1305 alone.
    pub const CHACHA_ONLY: Self = Self(0);
    /// ChaCha20-Poly1305 and AES-256-GCM.
    pub const WITH_AES: Self = Self(AES_256_GCM_BIT);

    /// What this machine runs fast: AES-256-GCM too when the CPU has AES
    /// and carry-less multiplication instructions (x86-64 AES-NI and
    /// PCLMULQDQ, the ARMv8 crypto extension's AES and PMULL).
    pub fn local() -> Self {
        if aes_in_hardware() {
            Self::WITH_AES
        } else {
            Self::CHACHA_ONLY
        }
    }

    /// The flags as sent.
    pub fn to_byte(self) -> u8 {
        self.0
    }

    /// The flags received, unknown bits dropped.
    pub fn from_byte(byte: u8) -> Self {
        Self(byte & AES_256_GCM_BIT)
    }

    /// Whether `cipher` is among them.
    pub fn contains(self, cipher: Cipher) -> bool {
        match cipher {
            Cipher::ChaCha20Poly1305 => true,
            Cipher::Aes256Gcm => self.0 & AES_256_GCM_BIT != 0,
        }
    }

    /// The responder's choice, from its own ciphers (`self`) and those the
    /// initiator offers: AES-256-GCM when both run it fast.
    pub fn choose(self, offered: Ciphers) -> Cipher {
        if self.contains(Cipher::Aes256Gcm) && offered.contains(Cipher::Aes256Gcm) {
            Cipher::Aes256Gcm
        } else {
            Cipher::ChaCha20Poly1305
        }
    }
}

const AES_256_GCM_BIT: u8 = 1;

#[cfg(target_arch = "x86_64")]
fn aes_in_hardware() -> bool {
    std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
}

#[cfg(target_arch = "aarch64")]
fn aes_in_hardware() -> bool {
    std::arch::is_aarch64_feature_detected!("aes")
        && std::arch::is_aarch64_feature_detected!("pmull")
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn aes_in_hardware() -> bool {
    false
}

/// One session's keys, counter, replay window and age.
#[cfg_attr(fuzzing, derive(Clone))]
pub struct Session {
    local_index: u32,
    remote_index: u32,
    cipher: Cipher,
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
            .field("cipher", &self.cipher)
            .field("next_counter", &self.next_counter)
            .field("initiator", &self.initiator)
            .finish_non_exhaustive()
    }
}

fn aead_key(cipher: Cipher, key: &[u8]) -> Result<LessSafeKey, SessionError> {
    UnboundKey::new(cipher.algorithm(), key)
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
    /// `local_index`, data from us `remote_index`, sealed with `cipher`.
    /// `initiator` says whether this end started the handshake (only the
    /// initiator rekeys).
    pub fn new(
        local_index: u32,
        remote_index: u32,
        cipher: Cipher,
        keys: &SessionKeys,
        now: Instant,
        initiator: bool,
    ) -> Result<Self, SessionError> {
        Ok(Self {
            local_index,
            remote_index,
            cipher,
            send: aead_key(cipher, &keys.send[..])?,
            recv: aead_key(cipher, &keys.recv[..])?,
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

    /// The cipher its messages are sealed with.
    pub fn cipher(&self) -> Cipher {
        self.cipher
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
    /// `jitter` added to the rekey time: it is old, or it carried its
    /// share of messages ([`Self::spent`]). Always false on the responder.
    pub fn rekey_due(&self, now: Instant, jitter: Duration) -> bool {
        self.initiator
            && (now.saturating_duration_since(self.created) >= REKEY_AFTER_TIME + jitter
                || self.spent())
    }

    /// Whether either end has sent its cipher's share of messages on this
    /// session ([`Cipher::rekey_after`]; the peer's count is the highest
    /// counter received from it), so that the initiator must replace it
    /// whatever its age.
    pub fn spent(&self) -> bool {
        let limit = self.cipher.rekey_after();
        self.next_counter >= limit || self.replay.highest().is_some_and(|h| h >= limit)
    }

    /// Moves the send counter to `counter`, for tests of the limits
    /// without sealing millions of messages.
    #[cfg(test)]
    pub(crate) fn skip_to(&mut self, counter: u64) {
        self.next_counter = counter;
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
        if counter >= self.cipher.reject_after() {
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
            // ring refuses only messages longer than the cipher can count.
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

    const BOTH: [Cipher; 2] = [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm];

    fn pair(now: Instant, cipher: Cipher) -> (Session, Session) {
        (
            Session::new(1, 2, cipher, &keys(7, 8), now, true).expect("keys"),
            Session::new(2, 1, cipher, &keys(8, 7), now, false).expect("keys"),
        )
    }

    #[test]
    fn seal_and_open_both_ways() {
        for cipher in BOTH {
            let now = Instant::now();
            let (mut a, mut b) = pair(now, cipher);
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
    }

    #[test]
    fn replays_tampering_and_wrong_keys_are_refused() {
        for cipher in BOTH {
            let now = Instant::now();
            let (mut a, mut b) = pair(now, cipher);
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

            let mut other = Session::new(2, 1, Cipher::ChaCha20Poly1305, &keys(9, 9), now, false)
                .expect("keys");
            let len = a.seal(now, 0, &Inner::Keepalive, &mut buf).expect("seals");
            assert_eq!(other.open(now, &mut buf[..len]), Err(SessionError::Decrypt));
            let mut wrong_index =
                Session::new(5, 1, Cipher::ChaCha20Poly1305, &keys(8, 7), now, false)
                    .expect("keys");
            assert_eq!(
                wrong_index.open(now, &mut buf[..len]),
                Err(SessionError::WrongIndex { index: 2 })
            );
        }
    }

    #[test]
    fn reordered_across_paths_all_open_once() {
        for cipher in BOTH {
            let now = Instant::now();
            let (mut a, mut b) = pair(now, cipher);
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
    }

    #[test]
    fn timers_expire_and_rekey() {
        for cipher in BOTH {
            let t0 = Instant::now();
            let (mut a, mut b) = pair(t0, cipher);
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

    #[test]
    fn aes_gcm_sessions_rekey_after_their_share_of_messages_either_way() {
        let now = Instant::now();
        let jitter = Duration::ZERO;
        let (mut a, mut b) = pair(now, Cipher::Aes256Gcm);
        assert!(!a.rekey_due(now, jitter));
        // The initiator's own count.
        a.next_counter = AES_GCM_REKEY_AFTER_MESSAGES - 1;
        assert!(!a.rekey_due(now, jitter));
        a.next_counter = AES_GCM_REKEY_AFTER_MESSAGES;
        assert!(a.rekey_due(now, jitter));
        // The responder's, as the initiator sees it: a download alone
        // brings the rekey about.
        let (mut a, mut b2) = pair(now, Cipher::Aes256Gcm);
        b2.next_counter = AES_GCM_REKEY_AFTER_MESSAGES;
        let mut buf = [0u8; 64];
        let len = b2.seal(now, 0, &Inner::Keepalive, &mut buf).expect("seals");
        assert!(!a.rekey_due(now, jitter));
        a.open(now, &mut buf[..len]).expect("opens");
        assert!(a.rekey_due(now, jitter));
        // Past twice the share nothing more is sealed.
        b.next_counter = 2 * AES_GCM_REKEY_AFTER_MESSAGES;
        assert_eq!(
            b.seal(now, 0, &Inner::Keepalive, &mut buf),
            Err(SessionError::Exhausted)
        );
        // ChaCha20-Poly1305 has no such limit short of WireGuard's.
        let (mut c, _) = pair(now, Cipher::ChaCha20Poly1305);
        c.next_counter = 2 * AES_GCM_REKEY_AFTER_MESSAGES;
        assert!(!c.rekey_due(now, jitter));
        c.seal(now, 0, &Inner::Keepalive, &mut buf).expect("seals");
    }

    #[test]
    fn both_ends_must_use_the_same_cipher() {
        let now = Instant::now();
        let mut a = Session::new(1, 2, Cipher::Aes256Gcm, &keys(7, 8), now, true).expect("keys");
        let mut b =
            Session::new(2, 1, Cipher::ChaCha20Poly1305, &keys(8, 7), now, false).expect("keys");
        let mut buf = [0u8; 64];
        let len = a.seal(now, 0, &Inner::Keepalive, &mut buf).expect("seals");
        assert_eq!(b.open(now, &mut buf[..len]), Err(SessionError::Decrypt));
    }

    #[test]
    fn the_responder_chooses_aes_only_when_both_run_it() {
        use Cipher::*;
        let (chacha, aes) = (Ciphers::CHACHA_ONLY, Ciphers::WITH_AES);
        assert_eq!(aes.choose(aes), Aes256Gcm);
        assert_eq!(aes.choose(chacha), ChaCha20Poly1305);
        assert_eq!(chacha.choose(aes), ChaCha20Poly1305);
        assert_eq!(chacha.choose(chacha), ChaCha20Poly1305);
        // Flags a later version may add are ignored.
        assert_eq!(Ciphers::from_byte(0xfe), chacha);
        assert_eq!(Ciphers::from_byte(0xff), aes);
        for cipher in BOTH {
            assert_eq!(Cipher::from_byte(cipher.to_byte()), Some(cipher));
            assert!(aes.contains(cipher));
        }
        assert!(!chacha.contains(Aes256Gcm));
        assert_eq!(Cipher::from_byte(2), None);
    }
}
