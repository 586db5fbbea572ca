//! From an accepted connection to an admitted request: read the connect
//! header, authenticate the client, refuse replays, check the destination
//! policy and the client's connection limit.
//!
//! A peer that does not authenticate gets nothing back, not even an Error
//! TLV: a scanner learns nothing about what listens here. Only an
//! authenticated client is told why it was refused; a recent header signed
//! for another concentrator run (before this one started) gets the current
//! epoch, so that its client can sign again (see [`auth::ConnectGuard`]),
//! and one whose timestamp lies outside the window gets this host's clock
//! and epoch, within a budget per client (see [`crate::clock`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::policy::{Denied, Policy};
use crate::auth::{self, ConnectGuard, Epoch, Key, ReplayError};
use crate::clock::AnswerBudget;
use crate::config::concentrator::ClientConfig;
use crate::wire::convert::{
    self, ClientId, ConnectRequest, DecodeError, Response, MAX_MESSAGE_LEN,
};

/// A buffer that holds any connect header.
pub(super) type HeaderBuf = [u8; MAX_MESSAGE_LEN];

/// One configured client and its live state.
#[derive(Debug)]
pub(super) struct Client {
    pub(super) id: ClientId,
    key: Key,
    replay: Mutex<ConnectGuard>,
    /// Clock answers left for this client (connect headers and probes).
    clock_answers: Mutex<AnswerBudget>,
    /// Connections open.
    open: AtomicUsize,
    /// Connections it may have open (a reload may change it).
    max_connections: AtomicUsize,
    /// Set when a reload removed the client (or changed its key): its
    /// connections end.
    removed: watch::Sender<bool>,
}

/// The configured clients by id, and this concentrator run's epoch. A
/// reload replaces the set ([`Clients::reload`]).
#[derive(Debug)]
pub(super) struct Clients {
    by_id: RwLock<HashMap<ClientId, Arc<Client>>>,
    /// Clients a reload removed, for their replay guards: a client
    /// removed and added again must not take headers it already took.
    retired: Mutex<HashMap<ClientId, Arc<Client>>>,
    epoch: Epoch,
}

/// What a reload changed in the clients.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct ClientChanges {
    /// New ids.
    pub(super) added: Vec<ClientId>,
    /// Ids no longer configured: their connections end.
    pub(super) removed: Vec<ClientId>,
    /// Ids with another key: their connections end (they were made with
    /// the old key).
    pub(super) rekeyed: Vec<ClientId>,
    /// Ids with another connection limit: (id, old, new).
    pub(super) limits: Vec<(ClientId, usize, usize)>,
}

/// Two clients with the same id were configured.
#[derive(Debug, thiserror::Error)]
#[error("client id {0} is configured twice: give each client its own id")]
pub(super) struct DuplicateClient(pub(super) ClientId);

/// Why a peer was dropped without an answer.
#[derive(Debug, thiserror::Error)]
pub(super) enum Rejected {
    /// It did not send a whole header in time.
    #[error("no complete connect header within {0:?}")]
    Timeout(Duration),
    /// It closed its side before the header was complete.
    #[error("closed after {received} bytes, before the connect header was complete")]
    Closed {
        /// Bytes received.
        received: usize,
    },
    /// Closed to make room for a newer connection: every handshake slot
    /// was taken and this peer's source held the most.
    #[error("closed to make room: every handshake slot was taken and this source held the most")]
    Evicted,
    /// Reading failed (typically a reset).
    #[error("reading the connect header failed")]
    Read(#[source] std::io::Error),
    /// The bytes are not a valid connect header.
    #[error("not a valid connect header")]
    Malformed(#[source] DecodeError),
    /// The client id is not configured.
    #[error("unknown client id \"{0}\": not in the config")]
    UnknownClient(ClientId),
    /// The MAC does not verify with the client's key.
    #[error("bad MAC for client {0}: its key differs from the one configured")]
    BadMac(ClientId),
    /// The request was seen before or is outside the time window.
    #[error("client {id}: connect header refused by the replay guard")]
    Replay {
        /// The client.
        id: ClientId,
        /// Why.
        #[source]
        source: ReplayError,
    },
    /// The request is recent and authentic but signed for another
    /// concentrator run: refused, and answered with `answer` (the current
    /// epoch) instead of silence.
    #[error("client {id}: connect header refused")]
    StaleEpoch {
        /// The client.
        id: ClientId,
        /// The epochs ([`ReplayError::StaleEpoch`]).
        #[source]
        source: ReplayError,
        /// The announcement of the current epoch, for this request.
        answer: Response,
    },
    /// The request is authentic but its timestamp lies outside the window
    /// around this host's clock: refused, and answered with `answer` (this
    /// host's clock and epoch) instead of silence.
    #[error("client {id}: connect header refused; told this host's clock")]
    StaleClock {
        /// The client.
        id: ClientId,
        /// How far off ([`ReplayError::TooOld`] or
        /// [`ReplayError::FromFuture`]).
        #[source]
        source: ReplayError,
        /// The clock answer, for this request.
        answer: Response,
    },
}

impl Rejected {
    /// Whether the peer got far enough to know the protocol (a valid
    /// header): worth an `info` line, where noise from scanners is `debug`.
    pub(super) fn speaks_protocol(&self) -> bool {
        matches!(
            self,
            Self::UnknownClient(_)
                | Self::BadMac(_)
                | Self::Replay { .. }
                | Self::StaleEpoch { .. }
                | Self::StaleClock { .. }
        )
    }

    /// What the peer is told: only a stale epoch or clock gets an answer.
    pub(super) fn answer(&self) -> Option<Response> {
        match self {
            Self::StaleEpoch { answer, .. } | Self::StaleClock { answer, .. } => Some(*answer),
            _ => None,
        }
    }
}

/// Why an authenticated client's request is refused; it is answered with
/// an Error TLV.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refused {
    /// The destination policy denies the destination.
    #[error("destination denied")]
    Denied(#[source] Denied),
    /// The client already has its maximum number of connections open.
    #[error("connection limit reached ({limit} open): raise max_connections for this client if this is normal")]
    Busy {
        /// The client's limit.
        limit: usize,
    },
    /// As many connections are open as the open-file limit carries.
    #[error(
        "open-file limit reached ({limit} connections open in all): raise LimitNOFILE= \
         (or ulimit -Hn) for the concentrator"
    )]
    Full {
        /// The connections the limit carries.
        limit: usize,
    },
}

/// An authenticated client's request, admitted to be forwarded. Holds one
/// of the client's connection slots and one of the concentrator's (its
/// descriptors), given back on drop.
#[derive(Debug)]
pub(super) struct Admitted {
    /// The client.
    pub(super) client: Arc<Client>,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.client.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The concentrator's connection slots: as many as its open-file limit
/// carries, for all clients together.
#[derive(Debug)]
pub(super) struct Slots {
    semaphore: Arc<Semaphore>,
    limit: usize,
}

impl Slots {
    /// `limit` slots.
    pub(super) fn new(limit: usize) -> Self {
        let limit = limit.min(Semaphore::MAX_PERMITS);
        Self {
            semaphore: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// The slots that an open-file limit of `descriptors` carries, with
    /// `handshakes` descriptors kept for connections still in their
    /// handshake (each a socket of its own).
    pub(super) fn for_descriptors(descriptors: u64, handshakes: usize) -> Self {
        let kept = descriptors.saturating_sub(handshakes as u64);
        Self::new(usize::try_from(crate::nofile::connections_for(kept)).unwrap_or(usize::MAX))
    }

    /// How many slots there are.
    pub(super) fn limit(&self) -> usize {
        self.limit
    }
}

impl Clients {
    /// The clients of the config, for concentrator run `epoch` (drawn
    /// once per start with [`Epoch::generate`]); ids must be unique.
    pub(super) fn new(configs: Vec<ClientConfig>, epoch: Epoch) -> Result<Self, DuplicateClient> {
        let clients = Self {
            by_id: RwLock::new(HashMap::new()),
            retired: Mutex::new(HashMap::new()),
            epoch,
        };
        clients.reload(configs)?;
        Ok(clients)
    }

    /// Replaces the configured clients with `configs` (ids must be
    /// unique; on a duplicate nothing changes). A client whose id and key
    /// stay keeps its state and its open connections (under its new
    /// limit: above it, no new one is admitted until enough have closed);
    /// one removed, or whose key changed, is marked removed, which ends
    /// its connections (see [`Client::removed`]).
    pub(super) fn reload(
        &self,
        configs: Vec<ClientConfig>,
    ) -> Result<ClientChanges, DuplicateClient> {
        let mut seen = std::collections::HashSet::with_capacity(configs.len());
        if let Some(dup) = configs.iter().find(|c| !seen.insert(&c.id)) {
            return Err(DuplicateClient(dup.id.clone()));
        }
        let mut changes = ClientChanges::default();
        let mut by_id = self.by_id.write().unwrap_or_else(PoisonError::into_inner);
        let mut retired = lock(&self.retired);
        let mut old = std::mem::take(&mut *by_id);
        for config in configs {
            let kept = old.remove(&config.id);
            let client = match kept {
                Some(client) if client.key == config.key => {
                    let before = client
                        .max_connections
                        .swap(config.max_connections, Ordering::AcqRel);
                    if before != config.max_connections {
                        changes
                            .limits
                            .push((config.id.clone(), before, config.max_connections));
                    }
                    client
                }
                kept => {
                    match &kept {
                        Some(client) => {
                            changes.rekeyed.push(config.id.clone());
                            client.remove();
                        }
                        None => changes.added.push(config.id.clone()),
                    }
                    // The replay guard of the same id and key removed
                    // before carries over.
                    let guard = retired
                        .remove(&config.id)
                        .filter(|r| r.key == config.key)
                        .map(|r| {
                            std::mem::replace(&mut *lock(&r.replay), ConnectGuard::new(self.epoch))
                        })
                        .unwrap_or_else(|| ConnectGuard::new(self.epoch));
                    if let Some(client) = kept {
                        retired.insert(config.id.clone(), client);
                    }
                    Arc::new(Client {
                        id: config.id.clone(),
                        key: config.key,
                        replay: Mutex::new(guard),
                        clock_answers: Mutex::new(AnswerBudget::new()),
                        open: AtomicUsize::new(0),
                        max_connections: AtomicUsize::new(config.max_connections),
                        removed: watch::Sender::new(false),
                    })
                }
            };
            by_id.insert(config.id, client);
        }
        for (id, client) in old {
            client.remove();
            changes.removed.push(id.clone());
            retired.insert(id, client);
        }
        changes.added.sort();
        changes.removed.sort();
        changes.rekeyed.sort();
        changes.limits.sort();
        Ok(changes)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ClientId, Arc<Client>>> {
        self.by_id.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many clients are configured.
    pub(super) fn len(&self) -> usize {
        self.read().len()
    }

    /// This concentrator run's epoch.
    pub(super) fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The client `id`, if it is configured.
    pub(super) fn client(&self, id: &ClientId) -> Option<Arc<Client>> {
        self.read().get(id).cloned()
    }

    /// The client that sent `request` if its MAC verifies and it is fresh
    /// at `now_ms` (unix milliseconds); `now` (the monotonic clock) paces
    /// the clock answers.
    pub(super) fn authenticate(
        &self,
        request: &ConnectRequest,
        now_ms: u64,
        now: Instant,
    ) -> Result<Arc<Client>, Rejected> {
        let id = &request.auth.client_id;
        let client = self
            .client(id)
            .ok_or_else(|| Rejected::UnknownClient(id.clone()))?;
        if !auth::verify(&client.key, request) {
            return Err(Rejected::BadMac(id.clone()));
        }
        // Only after verify: otherwise made-up nonces could fill the guard.
        let checked = client
            .replay
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .check(now_ms, &request.auth);
        match checked {
            Ok(()) => Ok(client),
            Err(source @ ReplayError::StaleEpoch { current, .. }) => Err(Rejected::StaleEpoch {
                id: id.clone(),
                source,
                answer: Response::StaleEpoch {
                    epoch: current.as_u64(),
                    mac: auth::sign_epoch(&client.key, current, request),
                },
            }),
            Err(source @ (ReplayError::TooOld { .. } | ReplayError::FromFuture { .. }))
                if client.take_clock_answer(now) =>
            {
                Err(Rejected::StaleClock {
                    id: id.clone(),
                    source,
                    answer: Response::StaleClock {
                        now_ms,
                        epoch: self.epoch.as_u64(),
                        mac: auth::sign_clock(&client.key, now_ms, self.epoch, request),
                    },
                })
            }
            Err(source) => Err(Rejected::Replay {
                id: id.clone(),
                source,
            }),
        }
    }
}

impl Client {
    /// The client's key.
    pub(super) fn key(&self) -> &Key {
        &self.key
    }

    /// Whether this client may be told this host's clock once more at
    /// `now` (see [`AnswerBudget`]).
    pub(super) fn take_clock_answer(&self, now: Instant) -> bool {
        self.clock_answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(now)
    }

    /// Checks `destination` against `policy`, then takes one of this
    /// client's connection slots.
    pub(super) fn admit(
        self: &Arc<Self>,
        destination: SocketAddr,
        policy: &Policy,
        slots: &Slots,
    ) -> Result<Admitted, Refused> {
        policy.check(destination).map_err(Refused::Denied)?;
        let limit = self.max_connections();
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < limit).then_some(open + 1)
            })
            .map_err(|_| Refused::Busy { limit })?;
        // From here on, dropping `admitted` gives the client's slot back.
        let slot = Arc::clone(&slots.semaphore).try_acquire_owned();
        let client = Arc::clone(self);
        match slot {
            Ok(slot) => Ok(Admitted {
                client,
                _slot: slot,
            }),
            Err(_) => {
                client.open.fetch_sub(1, Ordering::AcqRel);
                Err(Refused::Full { limit: slots.limit })
            }
        }
    }

    /// How many connections the client has open.
    pub(super) fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// How many connections it may have open.
    pub(super) fn max_connections(&self) -> usize {
        self.max_connections.load(Ordering::Acquire)
    }

    /// Marks the client removed: its connections end.
    fn remove(&self) {
        self.removed.send_replace(true);
    }

    /// Completes once a reload has removed the client (at once if it has
    /// been already).
    pub(super) async fn removed(&self) {
        let mut removed = self.removed.subscribe();
        // The sender lives as long as `self`.
        let _ = removed.wait_for(|removed| *removed).await;
    }
}

/// Locks `mutex`, also after a panic elsewhere (the state stays usable).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads one connect header from `peer` into `buf` within `timeout` and
/// decodes it. Returns the request and where in `buf` the payload bytes
/// read along with the header are: they come first in the relay.
pub(super) async fn read_header<R: AsyncRead + Unpin>(
    peer: &mut R,
    buf: &mut HeaderBuf,
    timeout: Duration,
) -> Result<(ConnectRequest, Range<usize>), Rejected> {
    tokio::time::timeout(timeout, read_header_untimed(peer, buf))
        .await
        .map_err(|_| Rejected::Timeout(timeout))?
}

async fn read_header_untimed<R: AsyncRead + Unpin>(
    peer: &mut R,
    buf: &mut HeaderBuf,
) -> Result<(ConnectRequest, Range<usize>), Rejected> {
    let mut filled = 0;
    loop {
        // `buf` holds the longest possible header, so while the header is
        // incomplete there is always room left to read into.
        let n = peer
            .read(&mut buf[filled..])
            .await
            .map_err(Rejected::Read)?;
        if n == 0 {
            return Err(Rejected::Closed { received: filled });
        }
        filled += n;
        let Some(len) = convert::header_len(&buf[..filled]).map_err(Rejected::Malformed)? else {
            continue;
        };
        if filled >= len {
            let (request, used) =
                ConnectRequest::decode(&buf[..filled]).map_err(Rejected::Malformed)?;
            return Ok((request, used..filled));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::sign_request;
    use tokio::io::AsyncWriteExt as _;

    const NOW: u64 = 1_700_000_000_000;
    const EPOCH: Epoch = Epoch::from_u64(0x6d70_0001);

    fn key() -> Key {
        Key::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").expect("key")
    }

    fn id(text: &str) -> ClientId {
        text.parse().expect("id")
    }

    fn clients(max_connections: usize) -> Clients {
        Clients::new(
            vec![ClientConfig {
                id: id("lab"),
                key: key(),
                max_connections,
                tunnel: None,
                public_key: None,
            }],
            EPOCH,
        )
        .expect("unique ids")
    }

    fn destination() -> SocketAddr {
        "198.51.100.7:443".parse().expect("addr")
    }

    fn request(client: &str, key: &Key, nonce: u8) -> ConnectRequest {
        sign_request(key, id(client), destination(), EPOCH, [nonce; 16], NOW)
    }

    #[test]
    fn a_header_from_another_run_is_answered_with_this_runs_epoch() {
        let clients = clients(4);
        for (n, before) in [(1, Epoch::UNKNOWN), (2, Epoch::from_u64(0x6d70_0000))] {
            let req = sign_request(&key(), id("lab"), destination(), before, [n; 16], NOW);
            let rejected = clients
                .authenticate(&req, NOW, Instant::now())
                .expect_err("stale");
            assert!(rejected.speaks_protocol());
            let Some(Response::StaleEpoch { epoch, mac }) = rejected.answer() else {
                panic!("a stale epoch is answered: {rejected:?}");
            };
            assert_eq!(epoch, EPOCH.as_u64());
            assert!(auth::verify_epoch(&key(), EPOCH, &mac, &req));
            // Again and again: answered each time, never admitted.
            assert!(clients.authenticate(&req, NOW + 1, Instant::now()).is_err());
            // The client signs again for the announced epoch and is in.
            let again = sign_request(&key(), id("lab"), destination(), EPOCH, [n; 16], NOW + 2);
            assert!(clients
                .authenticate(&again, NOW + 3, Instant::now())
                .is_ok());
        }
        // Replays and strangers still get no answer at all; a header from
        // outside the window gets the clock (see the test below).
        let req = request("lab", &key(), 9);
        assert!(clients.authenticate(&req, NOW, Instant::now()).is_ok());
        let replayed = clients
            .authenticate(&req, NOW, Instant::now())
            .expect_err("replay");
        assert_eq!(replayed.answer(), None);
        let old = sign_request(
            &key(),
            id("lab"),
            destination(),
            Epoch::UNKNOWN,
            [8; 16],
            NOW,
        );
        let too_old = clients
            .authenticate(&old, NOW + 60_000, Instant::now())
            .expect_err("old");
        assert!(matches!(
            too_old.answer(),
            Some(Response::StaleClock { .. })
        ));
        let wrong = Key::generate().expect("random");
        let forged = sign_request(
            &wrong,
            id("lab"),
            destination(),
            Epoch::UNKNOWN,
            [8; 16],
            NOW,
        );
        assert_eq!(
            clients
                .authenticate(&forged, NOW, Instant::now())
                .expect_err("bad mac")
                .answer(),
            None
        );
    }

    #[test]
    fn a_header_outside_the_window_is_answered_with_this_hosts_clock() {
        let clients = clients(4);
        let t0 = Instant::now();
        // The client's clock is 5 minutes ahead, then 5 minutes behind;
        // it does not know the epoch yet either.
        for (n, skew) in [(1u8, 300_000i64), (2, -300_000)] {
            let stamped = NOW.saturating_add_signed(skew);
            let req = sign_request(
                &key(),
                id("lab"),
                destination(),
                Epoch::UNKNOWN,
                [n; 16],
                stamped,
            );
            let rejected = clients.authenticate(&req, NOW, t0).expect_err("off");
            assert!(rejected.speaks_protocol());
            let Some(Response::StaleClock { now_ms, epoch, mac }) = rejected.answer() else {
                panic!("a header outside the window is answered with the clock: {rejected:?}");
            };
            assert_eq!((now_ms, epoch), (NOW, EPOCH.as_u64()));
            assert!(auth::verify_clock(&key(), now_ms, EPOCH, &mac, &req));
            // Signed again on the concentrator's clock and epoch: in, once.
            let again = sign_request(&key(), id("lab"), destination(), EPOCH, [n; 16], NOW + 20);
            assert!(clients.authenticate(&again, NOW + 30, t0).is_ok());
            assert!(matches!(
                clients.authenticate(&again, NOW + 40, t0),
                Err(Rejected::Replay {
                    source: ReplayError::Replayed,
                    ..
                })
            ));
        }
        // Anyone replaying a captured old header is answered within the
        // budget only, then met with silence; nothing is ever admitted.
        let old = request("lab", &key(), 3);
        let answered = (0..100)
            .filter(|_| {
                let rejected = clients
                    .authenticate(&old, NOW + 3_600_000, t0)
                    .expect_err("old");
                rejected.answer().is_some()
            })
            .count();
        assert_eq!(answered, AnswerBudget::BURST as usize - 2);
        let later = t0 + Duration::from_secs(1);
        let rejected = clients
            .authenticate(&old, NOW + 3_600_000, later)
            .expect_err("old");
        assert!(rejected.answer().is_some(), "the budget refills");
        // A bad MAC outside the window: silence, and no answer spent.
        let wrong = Key::generate().expect("random");
        let forged = sign_request(&wrong, id("lab"), destination(), EPOCH, [4; 16], NOW);
        assert!(matches!(
            clients.authenticate(&forged, NOW + 3_600_000, later),
            Err(Rejected::BadMac(_))
        ));
    }

    #[test]
    fn a_signed_request_authenticates_once() {
        let clients = clients(4);
        let req = request("lab", &key(), 1);
        let client = clients
            .authenticate(&req, NOW + 10, Instant::now())
            .expect("valid");
        assert_eq!(client.id.as_str(), "lab");
        assert!(matches!(
            clients.authenticate(&req, NOW + 20, Instant::now()),
            Err(Rejected::Replay {
                source: ReplayError::Replayed,
                ..
            })
        ));
        assert!(clients
            .authenticate(&request("lab", &key(), 2), NOW, Instant::now())
            .is_ok());
    }

    #[test]
    fn unknown_ids_bad_macs_and_stale_requests_are_rejected() {
        let clients = clients(4);
        assert!(matches!(
            clients.authenticate(&request("other", &key(), 1), NOW, Instant::now()),
            Err(Rejected::UnknownClient(_))
        ));
        let wrong = Key::generate().expect("random");
        assert!(matches!(
            clients.authenticate(&request("lab", &wrong, 1), NOW, Instant::now()),
            Err(Rejected::BadMac(_))
        ));
        let mut tampered = request("lab", &key(), 1);
        tampered.destination = "198.51.100.8:443".parse().expect("addr");
        assert!(matches!(
            clients.authenticate(&tampered, NOW, Instant::now()),
            Err(Rejected::BadMac(_))
        ));
        assert!(matches!(
            clients.authenticate(&request("lab", &key(), 1), NOW + 60_000, Instant::now()),
            Err(Rejected::StaleClock {
                source: ReplayError::TooOld { .. },
                ..
            })
        ));
        // A bad MAC must not consume the nonce: the genuine request still passes.
        assert!(clients
            .authenticate(&request("lab", &key(), 1), NOW, Instant::now())
            .is_ok());
    }

    fn config(name: &str, key: Key, max_connections: usize) -> ClientConfig {
        ClientConfig {
            id: id(name),
            key,
            max_connections,
            tunnel: None,
            public_key: None,
        }
    }

    /// Whether `client` has been marked removed (its connections end).
    fn is_removed(client: &Client) -> bool {
        *client.removed.borrow()
    }

    #[test]
    fn a_reload_keeps_kept_clients_and_ends_removed_ones() {
        let clients = clients(2);
        let lab = clients
            .authenticate(&request("lab", &key(), 1), NOW, Instant::now())
            .expect("valid");
        let (policy, slots) = (Policy::default(), Slots::new(10));
        let open = lab.admit(destination(), &policy, &slots).expect("slot");
        let _second = lab.admit(destination(), &policy, &slots).expect("slot");

        // Another client added, lab's limit lowered below what it has open.
        let other = Key::generate().expect("random");
        let changes = clients
            .reload(vec![
                config("lab", key(), 1),
                config("two", other.clone(), 5),
            ])
            .expect("unique ids");
        assert_eq!(
            changes,
            ClientChanges {
                added: vec![id("two")],
                limits: vec![(id("lab"), 2, 1)],
                ..ClientChanges::default()
            }
        );
        assert!(!is_removed(&lab), "kept: its connections go on");
        let same = clients.client(&id("lab")).expect("still there");
        assert!(Arc::ptr_eq(&same, &lab));
        assert_eq!(lab.open_connections(), 2);
        // Above its new limit: nothing more until enough have closed.
        assert!(matches!(
            lab.admit(destination(), &policy, &slots),
            Err(Refused::Busy { limit: 1 })
        ));
        drop(open);
        assert!(matches!(
            lab.admit(destination(), &policy, &slots),
            Err(Refused::Busy { limit: 1 })
        ));
        // Its replay guard carries on: a header it took is still refused.
        assert!(matches!(
            clients.authenticate(&request("lab", &key(), 1), NOW, Instant::now()),
            Err(Rejected::Replay { .. })
        ));
        assert!(clients
            .authenticate(&request("two", &other, 1), NOW, Instant::now())
            .is_ok());

        // Removed: marked so, unknown from now on.
        let changes = clients
            .reload(vec![config("two", other.clone(), 5)])
            .expect("unique ids");
        assert_eq!(changes.removed, [id("lab")]);
        assert!(is_removed(&lab));
        assert!(matches!(
            clients.authenticate(&request("lab", &key(), 2), NOW, Instant::now()),
            Err(Rejected::UnknownClient(_))
        ));

        // Back with the same key: a fresh client, but the headers it sent
        // before are still refused.
        let changes = clients
            .reload(vec![
                config("two", other.clone(), 5),
                config("lab", key(), 2),
            ])
            .expect("unique ids");
        assert_eq!(changes.added, [id("lab")]);
        let back = clients.client(&id("lab")).expect("back");
        assert!(!is_removed(&back));
        assert_eq!(back.open_connections(), 0);
        assert!(matches!(
            clients.authenticate(&request("lab", &key(), 1), NOW, Instant::now()),
            Err(Rejected::Replay { .. })
        ));
        assert!(clients
            .authenticate(&request("lab", &key(), 3), NOW, Instant::now())
            .is_ok());

        // Another key: the old client's connections end.
        let new_key = Key::generate().expect("random");
        let changes = clients
            .reload(vec![
                config("two", other.clone(), 5),
                config("lab", new_key.clone(), 2),
            ])
            .expect("unique ids");
        assert_eq!(changes.rekeyed, [id("lab")]);
        assert!(is_removed(&back));
        assert!(matches!(
            clients.authenticate(&request("lab", &key(), 4), NOW, Instant::now()),
            Err(Rejected::BadMac(_))
        ));
        assert!(clients
            .authenticate(&request("lab", &new_key, 4), NOW, Instant::now())
            .is_ok());

        // Duplicates change nothing.
        let dup = vec![config("two", other.clone(), 5), config("two", other, 5)];
        assert!(clients.reload(dup).is_err());
        assert_eq!(clients.len(), 2);
    }

    #[tokio::test]
    async fn removed_completes_for_a_client_removed_before_or_after_the_wait() {
        let clients = clients(2);
        let lab = clients.client(&id("lab")).expect("configured");
        let waiting = tokio::spawn({
            let lab = Arc::clone(&lab);
            async move { lab.removed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        clients.reload(Vec::new()).expect("no clients");
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken")
            .expect("task");
        tokio::time::timeout(Duration::from_secs(1), lab.removed())
            .await
            .expect("already removed");
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let config = ClientConfig {
            id: id("lab"),
            key: key(),
            max_connections: 1,
            tunnel: None,
            public_key: None,
        };
        assert!(Clients::new(vec![config.clone(), config], EPOCH).is_err());
    }

    #[test]
    fn admission_checks_policy_then_holds_a_slot_per_connection() {
        let clients = clients(2);
        let client = clients
            .authenticate(&request("lab", &key(), 1), NOW, Instant::now())
            .expect("valid");
        let policy = Policy::default();
        let slots = Slots::new(10);

        let denied = "127.0.0.1:22".parse().expect("addr");
        assert!(matches!(
            client.admit(denied, &policy, &slots),
            Err(Refused::Denied(_))
        ));
        assert_eq!(client.open_connections(), 0);

        let first = client
            .admit(destination(), &policy, &slots)
            .expect("slot 1");
        let second = client
            .admit(destination(), &policy, &slots)
            .expect("slot 2");
        assert_eq!(client.open_connections(), 2);
        assert!(matches!(
            client.admit(destination(), &policy, &slots),
            Err(Refused::Busy { limit: 2 })
        ));
        drop(first);
        assert_eq!(client.open_connections(), 1);
        assert!(client.admit(destination(), &policy, &slots).is_ok());
        drop(second);
    }

    #[test]
    fn the_concentrators_slots_cap_all_clients_together() {
        let clients = clients(5);
        let client = clients
            .authenticate(&request("lab", &key(), 1), NOW, Instant::now())
            .expect("valid");
        let policy = Policy::default();
        let slots = Slots::new(2);
        let first = client
            .admit(destination(), &policy, &slots)
            .expect("slot 1");
        let _second = client
            .admit(destination(), &policy, &slots)
            .expect("slot 2");
        let full = client.admit(destination(), &policy, &slots);
        assert!(matches!(full, Err(Refused::Full { limit: 2 })), "{full:?}");
        assert_eq!(
            client.open_connections(),
            2,
            "the refused one holds nothing"
        );
        drop(first);
        assert!(client.admit(destination(), &policy, &slots).is_ok());
    }

    #[test]
    fn slots_leave_room_for_handshakes_and_the_rest() {
        // 20,000 descriptors, 1,024 handshakes, 256 spare: two per slot.
        assert_eq!(Slots::for_descriptors(20_000, 1024).limit(), 9_360);
        assert_eq!(Slots::for_descriptors(100, 1024).limit(), 0);
    }

    async fn read_from(
        chunks: Vec<Vec<u8>>,
        close: bool,
    ) -> Result<(ConnectRequest, Vec<u8>), Rejected> {
        let (mut near, mut far) = tokio::io::duplex(4096);
        let writer = tokio::spawn(async move {
            for chunk in chunks {
                far.write_all(&chunk).await.expect("write");
                tokio::task::yield_now().await;
            }
            if !close {
                std::future::pending::<()>().await;
            }
        });
        let mut buf = [0; MAX_MESSAGE_LEN];
        let result = read_header(&mut near, &mut buf, Duration::from_millis(200))
            .await
            .map(|(request, early)| (request, buf[early].to_vec()));
        writer.abort();
        result
    }

    #[tokio::test]
    async fn a_header_split_into_bytes_is_reassembled_and_early_payload_kept() {
        let req = request("lab", &key(), 1);
        let mut bytes = req.encode();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let chunks = bytes.iter().map(|&b| vec![b]).collect();
        let (decoded, early) = read_from(chunks, true).await.expect("header");
        assert_eq!(decoded, req);
        let header_len = req.encode().len();
        assert!(bytes[header_len..].starts_with(&early));

        let (decoded, early) = read_from(vec![bytes.clone()], true).await.expect("header");
        assert_eq!(decoded, req);
        assert_eq!(early, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn bad_input_is_rejected() {
        let header = request("lab", &key(), 1).encode();
        assert!(matches!(
            read_from(vec![header[..30].to_vec()], true).await,
            Err(Rejected::Closed { received: 30 })
        ));
        assert!(matches!(
            read_from(vec![header[..30].to_vec()], false).await,
            Err(Rejected::Timeout(_))
        ));
        assert!(matches!(
            read_from(vec![b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()], false).await,
            Err(Rejected::Malformed(DecodeError::BadMagic { .. }))
        ));
        let mut bad_tlv = header.clone();
        bad_tlv[4] = 22;
        assert!(matches!(
            read_from(vec![bad_tlv], false).await,
            Err(Rejected::Malformed(DecodeError::UnsupportedTlv { .. }))
        ));
    }
}
