//! The connections between accept and authentication, and who gives way
//! when there are too many.
//!
//! A peer on the internet can open connections and send nothing (or one
//! byte a second) until the handshake timeout closes them. Their number is
//! capped ([`super::MAX_HANDSHAKES`]), so they cost bounded memory and
//! descriptors; but a cap alone lets whoever fills it first shut everyone
//! else out for a whole timeout. So a new connection is always admitted,
//! and when the table is full, the oldest pending connection of the
//! source that holds the most slots is closed to make room. A flooding
//! address then only ever recycles its own slots, and a legitimate
//! client, whose header comes in its SYN (Fast Open) or one round trip
//! later, holds a slot for milliseconds and is never the one chosen while
//! anyone holds more. Many flooding addresses (one slot each) push out the
//! oldest pending connection, which again is one that sent nothing for the
//! longest: a legitimate header is gone long before.
//!
//! A connection closed to make room keeps its slot until its task has
//! actually dropped the socket (it does so on its next poll, which on a
//! busy host comes after many more accepts), and the accept loop accepts
//! only while the slots held, closing ones included, leave room
//! ([`Handshakes::room`]). So the sockets in their handshake never number
//! more than the cap plus the one newcomer that pushes another out: before
//! this, accept bursts outran the closes and reached 1,080-1,182
//! descriptors against 1,024 slots.
//!
//! Sources are counted as the handshake rate limiter counts them
//! ([`crate::crypto::cookie::source_key`]: IPv6 by /64).
//!
//! [`Table`] is the pure bookkeeping; [`Handshakes`] keeps one behind a
//! mutex, with the eviction signal of each connection as its value, and
//! wakes the accept loop when a socket closes.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{oneshot, Notify};

use crate::crypto::cookie::source_key;

/// A pending connection's place in the [`Table`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    source: IpAddr,
    id: u64,
}

/// A connection closed to make room: its source, and the value it was
/// admitted with.
#[derive(Debug)]
pub(super) struct Evicted<T> {
    /// Its source ([`source_key`] of its address).
    pub(super) source: IpAddr,
    /// What it was admitted with.
    pub(super) value: T,
}

/// At most `capacity` pending connections, by source, oldest first; the
/// ones evicted count until their sockets are closed.
#[derive(Debug)]
pub(super) struct Table<T> {
    capacity: usize,
    next_id: u64,
    /// Pending connections (in `by_source`).
    len: usize,
    /// Connections evicted whose sockets are not closed yet.
    closing: usize,
    by_source: HashMap<IpAddr, BTreeMap<u64, T>>,
}

impl<T> Table<T> {
    /// A table for `capacity` pending connections (at least 1).
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            next_id: 0,
            len: 0,
            closing: 0,
            by_source: HashMap::new(),
        }
    }
    /// How many connections are pending.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Admits a connection from `addr` with `value`; when that makes one
    /// too many (counting those still closing), the oldest of the source
    /// with the most (ties: the one whose oldest is oldest) is removed and
    /// returned, and counts as closing until its slot is
    /// [removed](Self::remove). The newcomer is never the one removed.
    pub(super) fn admit(&mut self, addr: IpAddr, value: T) -> (Slot, Option<Evicted<T>>) {
        let source = source_key(addr);
        let id = self.next_id;
        self.next_id += 1;
        self.by_source.entry(source).or_default().insert(id, value);
        self.len += 1;
        // With the newcomer the only one pending (every other slot still
        // closing) there is nobody to push out: the closes make room.
        let evicted = (self.held() > self.capacity && self.len > 1)
            .then(|| self.evict())
            .flatten();
        (Slot { source, id }, evicted)
    }

    /// Gives back `slot` once its socket is closed, or handed over to a
    /// connection slot (authenticated); `None` if it was evicted before.
    /// Each slot must be removed exactly once.
    pub(super) fn remove(&mut self, slot: Slot) -> Option<T> {
        let Some(entries) = self.by_source.get_mut(&slot.source) else {
            self.closing = self.closing.saturating_sub(1);
            return None;
        };
        let Some(value) = entries.remove(&slot.id) else {
            self.closing = self.closing.saturating_sub(1);
            return None;
        };
        if entries.is_empty() {
            self.by_source.remove(&slot.source);
        }
        self.len -= 1;
        Some(value)
    }

    /// Slots held: pending connections and evicted ones still closing.
    pub(super) fn held(&self) -> usize {
        self.len + self.closing
    }

    /// Whether a newcomer may be accepted now: it fits, or it can push out
    /// a pending connection while no other eviction is still closing. Held
    /// slots then never exceed the capacity by more than the one newcomer.
    pub(super) fn has_room(&self) -> bool {
        self.held() <= self.capacity
    }

    fn evict(&mut self) -> Option<Evicted<T>> {
        let (&source, _) = self.by_source.iter().max_by(|a, b| {
            let oldest = |e: &BTreeMap<u64, T>| e.keys().next().copied().unwrap_or(u64::MAX);
            // More entries wins; then the older oldest (smaller id).
            a.1.len()
                .cmp(&b.1.len())
                .then_with(|| oldest(b.1).cmp(&oldest(a.1)))
        })?;
        let entries = self.by_source.get_mut(&source)?;
        let (_, value) = entries.pop_first()?;
        if entries.is_empty() {
            self.by_source.remove(&source);
        }
        self.len -= 1;
        self.closing += 1;
        Some(Evicted { source, value })
    }
}

/// The concentrator's [`Table`] of pending connections, shared by the
/// accept loop and the connection tasks. Each entry's value tells its task
/// that it was evicted (by being dropped).
#[derive(Debug)]
pub(super) struct Handshakes {
    table: Mutex<Table<oneshot::Sender<()>>>,
    /// Signalled when a slot is given back.
    freed: Notify,
}

impl Handshakes {
    /// Room for `capacity` pending connections.
    pub(super) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            table: Mutex::new(Table::new(capacity)),
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table<oneshot::Sender<()>>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connections in their handshake now (for the status).
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Slots held: pending connections and evicted ones not closed yet.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.lock().held()
    }

    /// Waits until a newcomer may be accepted ([`Table::has_room`]): the
    /// accept loop calls it before each accept, so it never accepts while
    /// a connection it pushed out still holds its socket. Cancel-safe.
    pub(super) async fn room(&self) {
        loop {
            // Registered before the check, so a slot given back between
            // the check and the wait is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.lock().has_room() {
                return;
            }
            freed.await;
        }
    }

    /// Admits a connection from `ip`. When that evicts another, its task
    /// is told (its sender dropped) and its source is returned.
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr) -> (Pending, Option<IpAddr>) {
        let (tx, evicted) = oneshot::channel();
        let (slot, gone) = self.lock().admit(ip, tx);
        let pending = Pending {
            handshakes: Arc::clone(self),
            slot,
            evicted: Some(evicted),
        };
        let source = gone.map(|Evicted { source, value }| {
            // Dropping the sender (outside the lock) wakes the evicted
            // task, which closes its socket, then gives its slot back.
            drop(value);
            source
        });
        (pending, source)
    }
}

/// A connection's slot among the pending ones, held until it is dropped:
/// drop it only after the connection's socket is closed, or once another
/// budget (a connection slot) counts the socket.
#[derive(Debug)]
pub(super) struct Pending {
    handshakes: Arc<Handshakes>,
    slot: Slot,
    /// `None` once eviction was seen.
    evicted: Option<oneshot::Receiver<()>>,
}

impl Pending {
    /// Completes when the connection was evicted to make room (at once if
    /// that was seen before). Cancel-safe.
    pub(super) async fn evicted(&mut self) {
        if let Some(evicted) = &mut self.evicted {
            // Nothing is ever sent: the sender's drop is the signal.
            let _ = evicted.await;
            self.evicted = None;
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.handshakes.lock().remove(self.slot);
        self.handshakes.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn a_flooding_source_recycles_its_own_slots_and_others_get_in() {
        let mut table = Table::new(4);
        let flooder = ip("203.0.113.9");
        let mut slots = Vec::new();
        for i in 0..4 {
            let (slot, evicted) = table.admit(flooder, i);
            assert!(evicted.is_none(), "room for the first four");
            slots.push(slot);
        }
        // The flood goes on: each new one of its connections closes its own
        // oldest.
        let (_, evicted) = table.admit(flooder, 4);
        let evicted = evicted.expect("full: one must go");
        assert_eq!((evicted.source, evicted.value), (flooder, 0));
        // A legitimate client gets in, and the flooder's oldest makes room.
        let (client, evicted) = table.admit(ip("192.0.2.7"), 100);
        assert_eq!(evicted.map(|e| e.value), Some(1));
        assert_eq!(table.len, 4);
        // More flood does not push the client out while the flooder holds
        // more slots than it.
        for i in 5..50 {
            let (_, evicted) = table.admit(flooder, i);
            assert_eq!(evicted.map(|e| e.source), Some(flooder));
        }
        assert_eq!(
            table.remove(client),
            Some(100),
            "the client's slot is still there"
        );
        assert_eq!(table.remove(slots[0]), None, "evicted before");
        assert_eq!(table.len, 3);
    }

    #[test]
    fn with_one_slot_each_the_oldest_goes_and_ipv6_counts_by_64() {
        let mut table = Table::new(3);
        let (a, _) = table.admit(ip("198.51.100.1"), 'a');
        table.admit(ip("198.51.100.2"), 'b');
        table.admit(ip("198.51.100.3"), 'c');
        let (_, evicted) = table.admit(ip("198.51.100.4"), 'd');
        assert_eq!(evicted.map(|e| e.value), Some('a'), "the oldest");
        assert_eq!(table.remove(a), None);
        let (_, evicted) = table.admit(ip("2001:db8:1:2::1"), 'e');
        assert_eq!(evicted.map(|e| e.value), Some('b'), "ties: the oldest");
        // Two addresses of one /64 are one source: it holds the most.
        let (_, evicted) = table.admit(ip("2001:db8:1:2::ffff"), 'f');
        let evicted = evicted.expect("full");
        assert_eq!(evicted.value, 'e', "the /64 holds two: its oldest goes");
        assert_eq!(evicted.source, ip("2001:db8:1:2::"));
        let (_, evicted) = table.admit(ip("198.51.100.9"), 'g');
        assert_eq!(evicted.map(|e| e.value), Some('c'));
    }

    #[test]
    fn removing_frees_room_and_empty_sources_are_forgotten() {
        let mut table = Table::new(2);
        let (a, _) = table.admit(ip("192.0.2.1"), 1);
        let (b, _) = table.admit(ip("192.0.2.1"), 2);
        assert_eq!(table.remove(a), Some(1));
        assert_eq!(table.remove(b), Some(2));
        assert_eq!(table.len, 0);
        assert!(table.by_source.is_empty());
        let (_, evicted) = table.admit(ip("192.0.2.2"), 3);
        assert!(evicted.is_none());
    }

    #[test]
    fn an_evicted_connection_holds_its_slot_until_its_socket_is_closed() {
        let mut table = Table::new(2);
        let flooder = ip("203.0.113.9");
        let (first, _) = table.admit(flooder, 1);
        table.admit(flooder, 2);
        assert!(table.has_room(), "full, but a newcomer may push one out");
        let (_, evicted) = table.admit(ip("192.0.2.7"), 3);
        assert_eq!(evicted.map(|e| e.value), Some(1));
        // The evicted socket is not closed yet: it still counts, and no
        // other newcomer may be accepted until it is.
        assert_eq!(table.held(), 3);
        assert!(!table.has_room());
        assert_eq!(table.remove(first), None, "closed now");
        assert_eq!(table.held(), 2);
        assert!(table.has_room());
        // With every other slot closing, a newcomer pushes out nobody (not
        // itself either) and the table waits for the closes.
        let mut table = Table::new(1);
        let (a, _) = table.admit(flooder, 1);
        let (b, evicted) = table.admit(flooder, 2);
        assert_eq!(evicted.map(|e| e.value), Some(1));
        assert!(!table.has_room());
        assert_eq!(table.remove(b), Some(2), "authenticated");
        assert!(table.has_room(), "one slot held, by a closing socket");
        let (c, evicted) = table.admit(flooder, 3);
        assert!(
            evicted.is_none(),
            "the newcomer is never the one pushed out"
        );
        assert!(!table.has_room(), "the evicted one still closing");
        assert_eq!(table.remove(a), None);
        assert!(table.has_room());
        assert_eq!(table.remove(c), Some(3));
        assert_eq!(table.held(), 0);
    }

    /// Whether `future` completes on its first poll.
    fn ready<F: std::future::Future>(future: F) -> bool {
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        std::pin::pin!(future).poll(&mut context).is_ready()
    }

    #[test]
    fn the_accept_loop_waits_for_an_evicted_socket_to_close() {
        let handshakes = Handshakes::new(2);
        let flooder = ip("203.0.113.9");
        let (mut first, gone) = handshakes.admit(flooder);
        assert_eq!(gone, None);
        let (_second, _) = handshakes.admit(flooder);
        assert!(ready(handshakes.room()), "a newcomer may push one out");
        assert!(!ready(first.evicted()), "not evicted yet");
        let (_third, gone) = handshakes.admit(flooder);
        assert_eq!(gone, Some(flooder));
        assert!(ready(first.evicted()), "told to close");
        assert!(ready(first.evicted()), "and told again when asked again");
        assert!(!ready(handshakes.room()), "its socket still counts");
        assert_eq!(handshakes.held(), 3);
        drop(first);
        assert!(ready(handshakes.room()));
        assert_eq!(handshakes.held(), 2);
    }

    /// The accept loop against a flood, on a runtime where an evicted
    /// connection's task runs only after the loop gives way (as on a busy
    /// host): the sockets open at once never exceed the slots plus the one
    /// newcomer.
    #[tokio::test]
    async fn a_burst_of_accepts_never_outruns_the_closes() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        const CAPACITY: usize = 16;
        let handshakes = Handshakes::new(CAPACITY);
        let open = Arc::new(AtomicUsize::new(0));
        let mut peak = 0;
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..200u8 {
            handshakes.room().await;
            // accept(): one more socket.
            peak = peak.max(open.fetch_add(1, Ordering::SeqCst) + 1);
            let (mut pending, _) = handshakes.admit(IpAddr::from([203, 0, 113, n % 4]));
            let open = Arc::clone(&open);
            tasks.spawn(async move {
                pending.evicted().await;
                // The socket closes some polls later, then the slot.
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                open.fetch_sub(1, Ordering::SeqCst);
                drop(pending);
            });
        }
        assert!(peak <= CAPACITY + 1, "{peak} sockets open at once");
        assert!(handshakes.held() <= CAPACITY + 1);
        tasks.abort_all();
    }
}
