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
//! Sources are counted as the handshake rate limiter counts them
//! ([`crate::crypto::cookie::source_key`]: IPv6 by /64).
//!
//! [`Table`] is the pure bookkeeping; the concentrator keeps one behind a
//! mutex, with the eviction signal of each connection as its value.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

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

/// At most `capacity` pending connections, by source, oldest first.
#[derive(Debug)]
pub(super) struct Table<T> {
    capacity: usize,
    next_id: u64,
    len: usize,
    by_source: HashMap<IpAddr, BTreeMap<u64, T>>,
}

impl<T> Table<T> {
    /// A table for `capacity` pending connections (at least 1).
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            next_id: 0,
            len: 0,
            by_source: HashMap::new(),
        }
    }
    /// How many connections are pending.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Admits a connection from `addr` with `value`; when that makes one
    /// too many, the oldest of the source with the most (ties: the one
    /// whose oldest is oldest) is removed and returned. The newcomer is
    /// never the one removed.
    pub(super) fn admit(&mut self, addr: IpAddr, value: T) -> (Slot, Option<Evicted<T>>) {
        let source = source_key(addr);
        let id = self.next_id;
        self.next_id += 1;
        self.by_source.entry(source).or_default().insert(id, value);
        self.len += 1;
        let evicted = (self.len > self.capacity).then(|| self.evict()).flatten();
        (Slot { source, id }, evicted)
    }

    /// Removes `slot` (its connection authenticated, failed or closed);
    /// `None` if it was evicted before.
    pub(super) fn remove(&mut self, slot: Slot) -> Option<T> {
        let entries = self.by_source.get_mut(&slot.source)?;
        let value = entries.remove(&slot.id)?;
        if entries.is_empty() {
            self.by_source.remove(&slot.source);
        }
        self.len -= 1;
        Some(value)
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
        Some(Evicted { source, value })
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
}
