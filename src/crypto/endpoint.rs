//! The two ends of the tunnel as sans-IO state machines: [`Initiator`] on
//! the client (one peer, the concentrator) and [`Responder`] on the
//! concentrator (many clients, found by public key and by session index).
//!
//! The driver hands each datagram to `handle_datagram` with `now` and the
//! uplink or address it came from, seals what it wants to send with
//! `seal`, sends what `poll_transmit` gives (handshake messages, cookie
//! replies, the initiator's confirming keepalive), and calls
//! `handle_timeout` once `poll_timeout` is reached. Nothing here reads a
//! clock or opens a socket.
//!
//! Every message that does not authenticate ends in [`Dropped`], which
//! the driver counts and drops without answering: the only answers to
//! unauthenticated bytes are cookie replies to initiations with a valid
//! mac1 while the concentrator is under load.
//!
//! # Timers (WireGuard paper § 6)
//!
//! The initiator alone starts handshakes: at start, when its session is
//! [`REKEY_AFTER_TIME`] old (plus jitter), when it has none to send with,
//! and when it has sent data for [`NEW_HANDSHAKE_AFTER_SILENCE`] without
//! hearing anything (the concentrator restarted and forgot the session).
//! An unanswered initiation goes again every [`REKEY_TIMEOUT`] (plus
//! jitter) for up to [`REKEY_ATTEMPT_TIME`]. Then, without a session, the
//! initiator waits for data to send ([`Initiator::seal`]) before trying
//! again; with a session that is due for rekeying it starts over at once,
//! since that session will expire.
//!
//! Both ends keep the previous session for receiving until it expires, so
//! packets still in flight on a slow uplink when a rekey completes are
//! delivered. The responder keeps a new session as "next" and keeps
//! sending on the current one until the initiator's first message on the
//! new one confirms it (paper § 5.4.5, key confirmation); the initiator
//! sends that keepalive at once.
//!
//! Keepalives: the responder answers data it received with a keepalive
//! if it had nothing to send for [`KEEPALIVE_TIMEOUT`], so the initiator's
//! silence timer fires only when the responder really lost the session.
//! Keepalives themselves arm neither timer (WireGuard paper § 6.5).
//!
//! The concentrator rate-limits every initiation whose mac1 (and, under
//! load, mac2) is valid, before its DH; WireGuard limits only under load,
//! but one client's handshakes never approach the rate, and the table is
//! bounded.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::cookie::{CookieChecker, CookieError, CookieJar, Mac1Key, RateLimiter};
use super::handshake::{self, HandshakeError, InitiatorHandshake, Tai64n};
use super::keys::{PublicKey, StaticSecret};
use super::session::{Cipher, Ciphers, Session, SessionError};
use super::timers::{
    KEEPALIVE_TIMEOUT, NEW_HANDSHAKE_AFTER_SILENCE, REJECT_AFTER_TIME, REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME, REKEY_JITTER, REKEY_TIMEOUT,
};
use super::{Random, RandomError};
use crate::wire::tunnel::{
    self, CookieReply, Data, Initiation, Inner, InnerError, MessageType, Response,
    COOKIE_REPLY_LEN, DATA_MIN_LEN, INITIATION_LEN, RESPONSE_LEN,
};

/// Handshake messages waiting for `poll_transmit` at most; more are not
/// answered (a flood must not grow memory).
pub const MAX_QUEUED: usize = 256;

/// A configured client of a [`Responder`]: its position in the list given
/// to [`Responder::new`]. The initiator's one peer is `PeerId(0)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub usize);

/// What a datagram that authenticated brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received<'a> {
    /// A handshake step completed (`peer` is known once a client's
    /// initiation authenticated); `poll_transmit` has the answer.
    Handshake {
        /// The client, on the responder; `PeerId(0)` on the initiator.
        peer: PeerId,
    },
    /// Under load: the initiation was answered with a cookie reply
    /// (responder), or a cookie was taken for the next initiation
    /// (initiator).
    Cookie,
    /// A data message: a keepalive, an IP packet or a probe.
    Data {
        /// Who sent it.
        peer: PeerId,
        /// The path id in its header, i.e. the uplink it was sent on.
        path: u8,
        /// What it carried.
        inner: Inner<'a>,
    },
}

/// Why a datagram was dropped. Nothing is sent back for any of these.
#[derive(Debug, thiserror::Error)]
pub enum Dropped {
    /// Not a tunnel message, or the wrong length for its type.
    #[error("malformed tunnel message")]
    Malformed(#[source] tunnel::Error),
    /// A message type this end never receives (an initiation at the
    /// client, a response or cookie reply at the concentrator).
    #[error("tunnel message of a kind this end does not receive")]
    Unexpected,
    /// mac1 is wrong, or a cookie reply does not open.
    #[error("handshake message refused by its MACs")]
    Cookie(#[source] CookieError),
    /// The source sent more initiations than its rate allows.
    #[error("handshake from {src} over its rate limit")]
    RateLimited {
        /// The source.
        src: SocketAddr,
    },
    /// Under load, the source asked for more cookies than its rate
    /// allows: its initiation gets no cookie reply (each costs a seal and
    /// a send, and a legitimate client needs one every two minutes).
    #[error("cookie reply to {src} over its rate limit")]
    CookieRateLimited {
        /// The source.
        src: SocketAddr,
    },
    /// The Noise handshake failed (does not decrypt, bad payload).
    #[error("handshake failed")]
    Handshake(#[source] HandshakeError),
    /// The initiation decrypted but its static key is no configured
    /// client.
    #[error("handshake from public key {key}, which is not a configured client")]
    UnknownPeer {
        /// The static key it carried.
        key: PublicKey,
    },
    /// A client's initiation is not newer than the last one accepted: a
    /// replay, or the client's clock went back.
    #[error(
        "handshake from client {peer:?} with an old timestamp: replayed, or its clock went back"
    )]
    StaleTimestamp {
        /// The client.
        peer: PeerId,
    },
    /// A response or cookie reply while no handshake is in flight, or for
    /// another one.
    #[error("handshake answer for no handshake in flight")]
    NoHandshake,
    /// Data for a session index that is not (or no longer) ours.
    #[error("data for unknown session index {index}")]
    UnknownIndex {
        /// The index.
        index: u32,
    },
    /// The session refused the data message (replay, forged, expired).
    #[error("data message refused by its session")]
    Session(#[source] SessionError),
    /// The message authenticated but its payload is no inner message.
    #[error("authenticated data message with a malformed payload")]
    Inner(#[source] InnerError),
    /// No random numbers for an index or a cookie.
    #[error("random number generator failed")]
    Random(#[source] RandomError),
}

/// Why `seal` could not seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// No usable session yet (handshake in flight or just expired); the
    /// packet is dropped and a handshake is due.
    #[error("no session to seal with yet: the handshake is not complete")]
    NoSession,
    /// The session refused (buffer too small, exhausted).
    #[error("could not seal the data message")]
    Session(#[source] SessionError),
}

/// A message from the initiator to send to the concentrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitiatorTransmit {
    /// The uplink to send it on, or `None`: whichever the driver prefers
    /// (for initiations).
    pub path: Option<u8>,
    /// The datagram.
    pub bytes: Vec<u8>,
}

/// A message from the responder to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponderTransmit {
    /// Where: the source of the message it answers.
    pub dst: SocketAddr,
    /// The datagram.
    pub bytes: Vec<u8>,
}

fn push<T>(queue: &mut VecDeque<T>, item: T) {
    if queue.len() < MAX_QUEUED {
        queue.push_back(item);
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// An initiation in flight.
#[derive(Debug)]
struct Pending {
    handshake: InitiatorHandshake,
    first_sent: Instant,
    last_sent: Instant,
    retry_jitter: Duration,
}

/// The client's end: one peer, the concentrator.
#[derive(Debug)]
pub struct Initiator<R: Random> {
    local: StaticSecret,
    peer: PublicKey,
    /// The data ciphers its initiations offer.
    ciphers: Ciphers,
    jar: CookieJar,
    /// Checks mac1 of responses (keyed with our own public key).
    response_mac1: Mac1Key,
    rng: R,
    pending: Option<Pending>,
    current: Option<Session>,
    previous: Option<Session>,
    rekey_jitter: Duration,
    /// When a handshake became wanted (start, no session to send with).
    wanted_since: Option<Instant>,
    /// When data was first sealed since anything was last received.
    unanswered_since: Option<Instant>,
    last_unix: Duration,
    queue: VecDeque<InitiatorTransmit>,
}

impl<R: Random> Initiator<R> {
    /// The client `local` talking to the concentrator `peer`; wants a
    /// handshake at once (`poll_timeout` is `now`).
    pub fn new(local: StaticSecret, peer: PublicKey, rng: R, now: Instant) -> Self {
        let response_mac1 = Mac1Key::new(&local.public_key());
        Self {
            jar: CookieJar::new(&peer),
            local,
            peer,
            ciphers: Ciphers::local(),
            response_mac1,
            rng,
            pending: None,
            current: None,
            previous: None,
            rekey_jitter: Duration::ZERO,
            wanted_since: Some(now),
            unanswered_since: None,
            last_unix: Duration::ZERO,
            queue: VecDeque::new(),
        }
    }

    /// A copy, for fuzzing only (`--cfg fuzzing`): the tunnel target sets
    /// up its endpoints once and copies them for each input, instead of
    /// paying for X25519 on every one. `None` while a handshake is in
    /// flight (its Noise state cannot be copied).
    #[cfg(fuzzing)]
    pub fn fuzz_clone(&self) -> Option<Self>
    where
        R: Clone,
    {
        if self.pending.is_some() {
            return None;
        }
        Some(Self {
            local: self.local.clone(),
            peer: self.peer,
            ciphers: self.ciphers,
            jar: self.jar.clone(),
            response_mac1: self.response_mac1.clone(),
            rng: self.rng.clone(),
            pending: None,
            current: self.current.clone(),
            previous: self.previous.clone(),
            rekey_jitter: self.rekey_jitter,
            wanted_since: self.wanted_since,
            unanswered_since: self.unanswered_since,
            last_unix: self.last_unix,
            queue: self.queue.clone(),
        })
    }

    /// Offers `ciphers` instead of what this machine runs fast
    /// ([`Ciphers::local`]) from the next handshake on.
    pub fn with_ciphers(mut self, ciphers: Ciphers) -> Self {
        self.ciphers = ciphers;
        self
    }

    /// The cipher of the session it sends with, if any.
    pub fn cipher(&self) -> Option<Cipher> {
        self.current.as_ref().map(Session::cipher)
    }

    /// The session it sends with, for tests.
    #[cfg(test)]
    pub(crate) fn current_mut(&mut self) -> Option<&mut Session> {
        self.current.as_mut()
    }

    /// Whether a session is up to send with at `now`.
    pub fn is_established(&self, now: Instant) -> bool {
        self.current.as_ref().is_some_and(|s| !s.is_expired(now))
    }

    /// Whether a handshake is in flight.
    pub fn is_handshaking(&self) -> bool {
        self.pending.is_some()
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<InitiatorTransmit> {
        self.queue.pop_front()
    }

    /// When to call [`Self::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut at = None;
        if let Some(pending) = &self.pending {
            at = earliest(
                at,
                Some(pending.last_sent + REKEY_TIMEOUT + pending.retry_jitter),
            );
            at = earliest(at, Some(pending.first_sent + REKEY_ATTEMPT_TIME));
        } else {
            at = earliest(at, self.wanted_since);
            at = earliest(
                at,
                self.unanswered_since
                    .map(|t| t + NEW_HANDSHAKE_AFTER_SILENCE),
            );
            if let Some(current) = &self.current {
                // A spent session is due at once (its creation is past).
                let due = if current.spent() {
                    current.created()
                } else {
                    current.created() + REKEY_AFTER_TIME + self.rekey_jitter
                };
                at = earliest(at, Some(due));
            }
        }
        for session in [&self.current, &self.previous].into_iter().flatten() {
            at = earliest(at, Some(session.created() + REJECT_AFTER_TIME));
        }
        at
    }

    /// Runs the timers at `now`; `unix` is the wall clock (time since
    /// 1970), for the timestamp of an initiation.
    pub fn handle_timeout(&mut self, now: Instant, unix: Duration) -> Result<(), RandomError> {
        if self.previous.as_ref().is_some_and(|s| s.is_expired(now)) {
            self.previous = None;
        }
        if self.current.as_ref().is_some_and(|s| s.is_expired(now)) {
            self.current = None;
            self.wanted_since.get_or_insert(now);
        }
        if let Some(pending) = &self.pending {
            if now.saturating_duration_since(pending.first_sent) >= REKEY_ATTEMPT_TIME {
                // Give up until there is data to send again.
                self.pending = None;
                self.wanted_since = None;
                self.unanswered_since = None;
                return Ok(());
            }
            if now >= pending.last_sent + REKEY_TIMEOUT + pending.retry_jitter {
                let first_sent = pending.first_sent;
                return self.send_initiation(now, unix, first_sent);
            }
            return Ok(());
        }
        let wanted = self.wanted_since.is_some_and(|t| now >= t);
        let rekey = self
            .current
            .as_ref()
            .is_some_and(|s| s.rekey_due(now, self.rekey_jitter));
        let silent = self
            .unanswered_since
            .is_some_and(|t| now >= t + NEW_HANDSHAKE_AFTER_SILENCE);
        if wanted || rekey || silent {
            self.unanswered_since = None;
            return self.send_initiation(now, unix, now);
        }
        Ok(())
    }

    fn send_initiation(
        &mut self,
        now: Instant,
        unix: Duration,
        first_sent: Instant,
    ) -> Result<(), RandomError> {
        let index = self.fresh_index()?;
        // Strictly increasing even if the wall clock stands still or steps
        // back while we run.
        let unix = unix.max(self.last_unix + Duration::from_nanos(1));
        self.last_unix = unix;
        let mut out = [0; INITIATION_LEN];
        let Ok(handshake) = handshake::initiate(
            &self.local,
            &self.peer,
            index,
            Tai64n::from_unix(unix),
            self.ciphers,
            &mut out,
        ) else {
            // snow could not make an ephemeral key; try again at the next
            // retry.
            self.wanted_since = Some(now + REKEY_TIMEOUT);
            return Ok(());
        };
        if let Ok(mut view) = Initiation::new_checked(&mut out[..]) {
            self.jar.stamp(now, &mut view);
        }
        self.pending = Some(Pending {
            handshake,
            first_sent,
            last_sent: now,
            retry_jitter: self.rng.jitter(REKEY_JITTER)?,
        });
        self.wanted_since = None;
        push(
            &mut self.queue,
            InitiatorTransmit {
                path: None,
                bytes: out.to_vec(),
            },
        );
        Ok(())
    }

    fn fresh_index(&mut self) -> Result<u32, RandomError> {
        loop {
            let index = self.rng.next_u32()?;
            let taken = [&self.current, &self.previous]
                .into_iter()
                .flatten()
                .any(|s| s.local_index() == index);
            if !taken {
                return Ok(index);
            }
        }
    }

    /// Handles a datagram that arrived on uplink `path`. Data is opened in
    /// place in `bytes`.
    pub fn handle_datagram<'a>(
        &mut self,
        now: Instant,
        path: u8,
        bytes: &'a mut [u8],
    ) -> Result<Received<'a>, Dropped> {
        match MessageType::of(bytes).map_err(Dropped::Malformed)? {
            MessageType::Data => self.handle_data(now, bytes),
            MessageType::Response => self.handle_response(now, path, bytes),
            MessageType::CookieReply => {
                let reply = CookieReply::new_checked(&*bytes).map_err(Dropped::Malformed)?;
                if self.pending.is_none() {
                    return Err(Dropped::NoHandshake);
                }
                self.jar.consume(now, &reply).map_err(Dropped::Cookie)?;
                Ok(Received::Cookie)
            }
            MessageType::Initiation => Err(Dropped::Unexpected),
        }
    }

    fn handle_response(
        &mut self,
        now: Instant,
        path: u8,
        bytes: &[u8],
    ) -> Result<Received<'static>, Dropped> {
        let response = Response::new_checked(bytes).map_err(Dropped::Malformed)?;
        if !self
            .response_mac1
            .verify(response.mac1_input(), &response.mac1())
        {
            return Err(Dropped::Cookie(CookieError::Mac1));
        }
        let pending = self
            .pending
            .as_mut()
            .filter(|p| p.handshake.local_index() == response.receiver_index())
            .ok_or(Dropped::NoHandshake)?;
        let established = pending
            .handshake
            .finish(&response)
            .map_err(Dropped::Handshake)?;
        let session = Session::new(
            pending.handshake.local_index(),
            established.remote_index,
            established.cipher,
            &established.keys,
            now,
            true,
        )
        .map_err(Dropped::Session)?;
        self.pending = None;
        self.previous = self.current.replace(session);
        self.rekey_jitter = self.rng.jitter(REKEY_JITTER).map_err(Dropped::Random)?;
        self.unanswered_since = None;
        // Key confirmation: the responder sends on the new session only
        // once it has heard from us on it.
        let mut keepalive = [0; DATA_MIN_LEN];
        if let Some(current) = &mut self.current {
            if let Ok(len) = current.seal(now, path, &Inner::Keepalive, &mut keepalive) {
                push(
                    &mut self.queue,
                    InitiatorTransmit {
                        path: Some(path),
                        bytes: keepalive[..len].to_vec(),
                    },
                );
            }
        }
        Ok(Received::Handshake { peer: PeerId(0) })
    }

    fn handle_data<'a>(
        &mut self,
        now: Instant,
        bytes: &'a mut [u8],
    ) -> Result<Received<'a>, Dropped> {
        let index = Data::new_checked(&*bytes)
            .map_err(Dropped::Malformed)?
            .receiver_index();
        let session = [&mut self.current, &mut self.previous]
            .into_iter()
            .flatten()
            .find(|s| s.local_index() == index)
            .ok_or(Dropped::UnknownIndex { index })?;
        let (path, plain) = session.open(now, bytes).map_err(Dropped::Session)?;
        self.unanswered_since = None;
        let inner = Inner::parse(plain).map_err(Dropped::Inner)?;
        Ok(Received::Data {
            peer: PeerId(0),
            path,
            inner,
        })
    }

    /// Seals `inner` for uplink `path` into `out`; returns its length.
    /// Without a session the packet is dropped ([`SealError::NoSession`])
    /// and a handshake becomes due.
    pub fn seal(
        &mut self,
        now: Instant,
        path: u8,
        inner: &Inner<'_>,
        out: &mut [u8],
    ) -> Result<usize, SealError> {
        let Some(session) = self.current.as_mut().filter(|s| !s.is_expired(now)) else {
            if self.pending.is_none() {
                self.wanted_since.get_or_insert(now);
            }
            return Err(SealError::NoSession);
        };
        match session.seal(now, path, inner, out) {
            Ok(len) => {
                // As WireGuard: keepalives expect no answer.
                if !inner.is_empty() {
                    self.unanswered_since.get_or_insert(now);
                }
                Ok(len)
            }
            Err(SessionError::Exhausted) => {
                self.wanted_since.get_or_insert(now);
                Err(SealError::NoSession)
            }
            Err(e) => Err(SealError::Session(e)),
        }
    }
}

/// Why a responder could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ResponderError {
    /// A client's public key is a low-order point: no secret could be
    /// shared with it.
    #[error(
        "client public key {key} is not a usable X25519 key (a low-order point): \
         copy it again from the client's `mpbond keygen` output"
    )]
    LowOrderClient {
        /// The key.
        key: PublicKey,
    },
    /// Two clients have the same public key.
    #[error("client public key {key} is configured twice: each client needs its own keypair")]
    DuplicateClient {
        /// The key.
        key: PublicKey,
    },
}

/// One configured client's state on the responder.
#[derive(Debug)]
#[cfg_attr(fuzzing, derive(Clone))]
struct Peer {
    /// mac1 key of responses to it.
    mac1: Mac1Key,
    last_timestamp: Option<Tai64n>,
    /// Confirmed: sends and receives.
    current: Option<Session>,
    /// Replaced by a rekey: receives until it expires.
    previous: Option<Session>,
    /// Handshake answered, not yet confirmed by data from the client.
    next: Option<Session>,
    /// Data came and nothing went back yet: when to send a keepalive, and
    /// where (the last source and path heard).
    keepalive_due: Option<(Instant, SocketAddr, u8)>,
}

impl Peer {
    fn sessions(&self) -> impl Iterator<Item = &Session> {
        [&self.current, &self.previous, &self.next]
            .into_iter()
            .flatten()
    }
}

/// The concentrator's end: many clients, known by public key.
#[derive(Debug)]
#[cfg_attr(fuzzing, derive(Clone))]
pub struct Responder<R: Random> {
    local: StaticSecret,
    /// The data ciphers it chooses from.
    ciphers: Ciphers,
    checker: CookieChecker,
    limiter: RateLimiter,
    /// Cookie replies per source, under load.
    cookie_limiter: RateLimiter,
    rng: R,
    peers: Vec<Peer>,
    by_key: HashMap<PublicKey, PeerId>,
    /// Session index → client; at most three per client.
    by_index: HashMap<u32, PeerId>,
    /// The last initiation timestamp of clients a reload removed, so that
    /// one configured again refuses its old initiations (replays).
    retired: HashMap<PublicKey, Tai64n>,
    under_load: bool,
    queue: VecDeque<ResponderTransmit>,
}

impl<R: Random> Responder<R> {
    /// The concentrator `local` with these clients, each [`PeerId`] being
    /// a client's position in `clients`.
    pub fn new(
        local: StaticSecret,
        clients: impl IntoIterator<Item = PublicKey>,
        rng: R,
    ) -> Result<Self, ResponderError> {
        let mut responder = Self {
            checker: CookieChecker::new(&local.public_key()),
            local,
            ciphers: Ciphers::local(),
            limiter: RateLimiter::new(),
            cookie_limiter: RateLimiter::new(),
            rng,
            peers: Vec::new(),
            by_key: HashMap::new(),
            by_index: HashMap::new(),
            retired: HashMap::new(),
            under_load: false,
            queue: VecDeque::new(),
        };
        responder.set_clients(clients)?;
        Ok(responder)
    }

    /// Chooses among `ciphers` instead of what this machine runs fast
    /// ([`Ciphers::local`]) from the next handshake on.
    pub fn with_ciphers(mut self, ciphers: Ciphers) -> Self {
        self.ciphers = ciphers;
        self
    }

    /// `peer`'s session it sends with, for tests.
    #[cfg(test)]
    pub(crate) fn current_mut(&mut self, peer: PeerId) -> Option<&mut Session> {
        self.peers.get_mut(peer.0).and_then(|p| p.current.as_mut())
    }

    /// The cipher of `peer`'s newest session (the one a handshake just
    /// made, before the client confirms it), if any.
    pub fn cipher(&self, peer: PeerId) -> Option<Cipher> {
        self.peers
            .get(peer.0)
            .and_then(|p| p.next.as_ref().or(p.current.as_ref()))
            .map(Session::cipher)
    }

    /// Replaces the clients (a config reload), each [`PeerId`] being a
    /// client's position in `clients` from now on. A key configured before
    /// keeps its sessions; the sessions of a key no longer configured end
    /// at once (its data is dropped as from a stranger). A key removed and
    /// configured again later still refuses its old initiations (their
    /// timestamps are remembered). On an error nothing changes.
    pub fn set_clients(
        &mut self,
        clients: impl IntoIterator<Item = PublicKey>,
    ) -> Result<(), ResponderError> {
        let keys: Vec<PublicKey> = clients.into_iter().collect();
        let mut by_key = HashMap::with_capacity(keys.len());
        for (i, &key) in keys.iter().enumerate() {
            if self.local.diffie_hellman(&key).is_none() {
                return Err(ResponderError::LowOrderClient { key });
            }
            if by_key.insert(key, PeerId(i)).is_some() {
                return Err(ResponderError::DuplicateClient { key });
            }
        }
        // The old peers by key, to be moved to their new places.
        let mut old: HashMap<PublicKey, Peer> = HashMap::with_capacity(self.peers.len());
        let old_keys = std::mem::take(&mut self.by_key);
        let mut old_peers: Vec<Option<Peer>> = std::mem::take(&mut self.peers)
            .into_iter()
            .map(Some)
            .collect();
        for (key, id) in old_keys {
            if let Some(peer) = old_peers.get_mut(id.0).and_then(Option::take) {
                old.insert(key, peer);
            }
        }
        self.peers = keys
            .iter()
            .map(|key| {
                old.remove(key).unwrap_or_else(|| Peer {
                    mac1: Mac1Key::new(key),
                    last_timestamp: self.retired.remove(key),
                    current: None,
                    previous: None,
                    next: None,
                    keepalive_due: None,
                })
            })
            .collect();
        // Sessions follow their peer to its new place.
        self.by_index.clear();
        for (i, peer) in self.peers.iter().enumerate() {
            for session in peer.sessions() {
                self.by_index.insert(session.local_index(), PeerId(i));
            }
        }
        // What is left was removed: its sessions are gone with it.
        for (key, peer) in old {
            if let Some(timestamp) = peer.last_timestamp {
                self.retired.insert(key, timestamp);
            }
        }
        self.by_key = by_key;
        Ok(())
    }

    /// Says whether the concentrator is under load: while it is, an
    /// initiation without a valid cookie (mac2) gets a cookie reply
    /// instead of a handshake.
    pub fn set_under_load(&mut self, under_load: bool) {
        self.under_load = under_load;
    }

    /// Whether `peer` has a confirmed session to send with at `now`.
    pub fn is_established(&self, peer: PeerId, now: Instant) -> bool {
        self.peers
            .get(peer.0)
            .and_then(|p| p.current.as_ref())
            .is_some_and(|s| !s.is_expired(now))
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<ResponderTransmit> {
        self.queue.pop_front()
    }

    /// When to call [`Self::handle_timeout`] next: the next session
    /// expiry (a scan over the clients).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let expiry = self
            .peers
            .iter()
            .flat_map(Peer::sessions)
            .map(|s| s.created() + REJECT_AFTER_TIME)
            .min();
        let keepalive = self
            .peers
            .iter()
            .filter_map(|p| p.keepalive_due.map(|(at, _, _)| at))
            .min();
        earliest(expiry, keepalive)
    }

    /// Forgets sessions that expired by `now`, and queues the keepalives
    /// that are due: a client that sent data and got nothing back for
    /// [`KEEPALIVE_TIMEOUT`] would otherwise think the concentrator lost
    /// its session (WireGuard's passive keepalive).
    pub fn handle_timeout(&mut self, now: Instant) {
        for peer in &mut self.peers {
            if let Some((_, dst, path)) = peer.keepalive_due.take_if(|(at, _, _)| *at <= now) {
                let mut out = [0; DATA_MIN_LEN];
                let sealed = peer
                    .current
                    .as_mut()
                    .map(|s| s.seal(now, path, &Inner::Keepalive, &mut out));
                if let Some(Ok(len)) = sealed {
                    push(
                        &mut self.queue,
                        ResponderTransmit {
                            dst,
                            bytes: out[..len].to_vec(),
                        },
                    );
                }
            }
            for slot in [&mut peer.current, &mut peer.previous, &mut peer.next] {
                if let Some(session) = slot.take_if(|s| s.is_expired(now)) {
                    self.by_index.remove(&session.local_index());
                }
            }
        }
    }

    /// Handles a datagram from `src`. Data is opened in place in `bytes`.
    pub fn handle_datagram<'a>(
        &mut self,
        now: Instant,
        src: SocketAddr,
        bytes: &'a mut [u8],
    ) -> Result<Received<'a>, Dropped> {
        match MessageType::of(bytes).map_err(Dropped::Malformed)? {
            MessageType::Data => self.handle_data(now, src, bytes),
            MessageType::Initiation => self.handle_initiation(now, src, bytes),
            MessageType::Response | MessageType::CookieReply => Err(Dropped::Unexpected),
        }
    }

    fn handle_initiation(
        &mut self,
        now: Instant,
        src: SocketAddr,
        bytes: &[u8],
    ) -> Result<Received<'static>, Dropped> {
        let initiation = Initiation::new_checked(bytes).map_err(Dropped::Malformed)?;
        match self
            .checker
            .check(now, src, &initiation, self.under_load, &mut self.rng)
        {
            Ok(()) => {}
            Err(CookieError::NeedCookie) => {
                if !self.cookie_limiter.allow(now, src.ip()) {
                    return Err(Dropped::CookieRateLimited { src });
                }
                let mut reply = [0; COOKIE_REPLY_LEN];
                self.checker
                    .cookie_reply(now, src, &initiation.mac1(), &mut self.rng, &mut reply)
                    .map_err(Dropped::Cookie)?;
                push(
                    &mut self.queue,
                    ResponderTransmit {
                        dst: src,
                        bytes: reply.to_vec(),
                    },
                );
                return Ok(Received::Cookie);
            }
            Err(e) => return Err(Dropped::Cookie(e)),
        }
        if !self.limiter.allow(now, src.ip()) {
            return Err(Dropped::RateLimited { src });
        }
        let received =
            handshake::receive_initiation(&self.local, &initiation).map_err(Dropped::Handshake)?;
        let id = *self
            .by_key
            .get(&received.peer)
            .ok_or(Dropped::UnknownPeer { key: received.peer })?;
        let Some(peer) = self.peers.get(id.0) else {
            return Err(Dropped::UnknownPeer { key: received.peer });
        };
        if peer.last_timestamp.is_some_and(|t| received.timestamp <= t) {
            return Err(Dropped::StaleTimestamp { peer: id });
        }
        let key = received.peer;
        let index = self.fresh_index().map_err(Dropped::Random)?;
        let sender_index = received.sender_index;
        let timestamp = received.timestamp;
        let cipher = self.ciphers.choose(received.offer);
        let mut out = [0; RESPONSE_LEN];
        let keys = received
            .respond(index, cipher, &mut out)
            .map_err(Dropped::Handshake)?;
        let session = Session::new(index, sender_index, cipher, &keys, now, false)
            .map_err(Dropped::Session)?;
        let Some(peer) = self.peers.get_mut(id.0) else {
            return Err(Dropped::UnknownPeer { key });
        };
        if let Ok(mut view) = Response::new_checked(&mut out[..]) {
            let mac1 = peer.mac1.sign(view.mac1_input());
            view.set_mac1(&mac1);
        }
        peer.last_timestamp = Some(timestamp);
        if let Some(old) = peer.next.replace(session) {
            self.by_index.remove(&old.local_index());
        }
        self.by_index.insert(index, id);
        push(
            &mut self.queue,
            ResponderTransmit {
                dst: src,
                bytes: out.to_vec(),
            },
        );
        Ok(Received::Handshake { peer: id })
    }

    fn fresh_index(&mut self) -> Result<u32, RandomError> {
        loop {
            let index = self.rng.next_u32()?;
            if !self.by_index.contains_key(&index) {
                return Ok(index);
            }
        }
    }

    fn handle_data<'a>(
        &mut self,
        now: Instant,
        src: SocketAddr,
        bytes: &'a mut [u8],
    ) -> Result<Received<'a>, Dropped> {
        let index = Data::new_checked(&*bytes)
            .map_err(Dropped::Malformed)?
            .receiver_index();
        let id = *self
            .by_index
            .get(&index)
            .ok_or(Dropped::UnknownIndex { index })?;
        let peer = self
            .peers
            .get_mut(id.0)
            .ok_or(Dropped::UnknownIndex { index })?;
        let is_next = peer.next.as_ref().is_some_and(|s| s.local_index() == index);
        let session = [&mut peer.current, &mut peer.previous, &mut peer.next]
            .into_iter()
            .flatten()
            .find(|s| s.local_index() == index)
            .ok_or(Dropped::UnknownIndex { index })?;
        let (path, plain) = session.open(now, bytes).map_err(Dropped::Session)?;
        if is_next {
            // Confirmed: the client has the new session.
            let confirmed = peer.next.take();
            let old = std::mem::replace(&mut peer.previous, peer.current.take());
            peer.current = confirmed;
            if let Some(old) = old {
                self.by_index.remove(&old.local_index());
            }
        }
        if !plain.is_empty() {
            let at = peer
                .keepalive_due
                .map_or(now + KEEPALIVE_TIMEOUT, |(at, _, _)| at);
            peer.keepalive_due = Some((at, src, path));
        }
        let inner = Inner::parse(plain).map_err(Dropped::Inner)?;
        Ok(Received::Data {
            peer: id,
            path,
            inner,
        })
    }

    /// Seals `inner` for client `peer` on uplink `path` into `out`;
    /// returns its length. The driver sends it to the address it last
    /// heard from that client on that path.
    pub fn seal(
        &mut self,
        now: Instant,
        peer: PeerId,
        path: u8,
        inner: &Inner<'_>,
        out: &mut [u8],
    ) -> Result<usize, SealError> {
        let peer = self.peers.get_mut(peer.0).ok_or(SealError::NoSession)?;
        let session = peer
            .current
            .as_mut()
            .filter(|s| !s.is_expired(now))
            .ok_or(SealError::NoSession)?;
        let len = session
            .seal(now, path, inner, out)
            .map_err(SealError::Session)?;
        peer.keepalive_due = None;
        Ok(len)
    }
}
