//! The probe echo: on the listener's port, over UDP, answers each client's
//! authenticated probe (see [`crate::wire::probe`]) so the client can tell
//! which uplinks still reach the concentrator. Anything that does not
//! verify is dropped without a word: the echo never answers a stranger, so
//! it cannot be used to reflect traffic at someone else.
//!
//! A probe that verifies but whose timestamp lies outside the window (the
//! client's clock is off, or stepped) is not echoed but answered with this
//! host's clock ([`Kind::Clock`]), within the client's budget of clock
//! answers: so the client corrects its clock offset ([`crate::clock`])
//! instead of losing every uplink. Replays of old probes get at most that.

use std::time::Instant;

use super::accept::Clients;
use crate::auth;
use crate::wire::convert::ClientId;
use crate::wire::probe::{Kind, Probe};

/// Probes older or newer than this (by the client's clock against ours)
/// are not echoed: replays of old probes get nothing but (within a budget)
/// this host's clock.
const FRESHNESS_MS: u64 = 30_000;

/// The reply to `datagram` at `now_ms` (`now` on the monotonic clock, for
/// the budget), and the client it came from, if it is a request that
/// verifies with that client's key: an echo if it is fresh, else this
/// host's clock if the client's budget allows.
pub(super) fn answer(
    clients: &Clients,
    datagram: &[u8],
    now_ms: u64,
    now: Instant,
) -> Option<(Vec<u8>, ClientId)> {
    let (probe, body, mac) = Probe::decode(datagram).ok()?;
    if probe.kind != Kind::Request {
        return None;
    }
    let client = clients.client(&probe.client_id)?;
    let key = client.key();
    if !auth::verify_probe(key, body, &mac) {
        return None;
    }
    let kind = if now_ms.abs_diff(probe.sent_ms) <= FRESHNESS_MS {
        Kind::Reply
    } else if client.take_clock_answer(now) {
        Kind::Clock {
            concentrator_ms: now_ms,
        }
    } else {
        return None;
    };
    let reply = Probe { kind, ..probe };
    Some((
        reply.encode(&auth::sign_probe(key, &reply.body())),
        reply.client_id,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Key;
    use crate::config::concentrator::ClientConfig;

    const NOW: u64 = 1_795_000_000_000;

    fn clients() -> Clients {
        Clients::new(
            vec![ClientConfig {
                id: ClientId::try_from("lab").expect("id"),
                key: key(1),
                max_connections: 4,
                tunnel: None,
                public_key: None,
            }],
            crate::auth::Epoch::from_u64(1),
        )
        .expect("clients")
    }

    fn key(byte: u8) -> Key {
        Key::from_base64(&base64_of([byte; 32])).expect("key")
    }

    fn base64_of(bytes: [u8; 32]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn request(id: &str, sent_ms: u64, with: &Key) -> Vec<u8> {
        let probe = Probe {
            kind: Kind::Request,
            client_id: ClientId::try_from(id).expect("id"),
            seq: 42,
            sent_ms,
        };
        probe.encode(&auth::sign_probe(with, &probe.body()))
    }

    #[test]
    fn a_good_probe_gets_a_signed_echo() {
        let reply = answer(
            &clients(),
            &request("lab", NOW, &key(1)),
            NOW + 5,
            Instant::now(),
        )
        .expect("answered")
        .0;
        let (probe, body, mac) = Probe::decode(&reply).expect("a probe");
        assert_eq!(probe.kind, Kind::Reply);
        assert_eq!((probe.seq, probe.sent_ms), (42, NOW));
        assert!(auth::verify_probe(&key(1), body, &mac));
    }

    #[test]
    fn strangers_forgeries_and_replies_get_nothing() {
        let clients = clients();
        let t0 = Instant::now();
        assert!(answer(&clients, &request("lab", NOW, &key(2)), NOW, t0).is_none());
        assert!(answer(&clients, &request("eve", NOW, &key(1)), NOW, t0).is_none());
        assert!(answer(&clients, b"GET / HTTP/1.1\r\n\r\n", NOW, t0).is_none());
        // Forged and off the clock: still nothing, and no answer spent.
        for _ in 0..100 {
            assert!(answer(&clients, &request("lab", NOW - 60_000, &key(2)), NOW, t0).is_none());
        }
        let (reply, id) =
            answer(&clients, &request("lab", NOW, &key(1)), NOW, t0).expect("answered");
        assert_eq!(id.as_str(), "lab");
        assert!(
            answer(&clients, &reply, NOW, t0).is_none(),
            "a reply is not answered"
        );
        let (clock, _) =
            answer(&clients, &request("lab", NOW - 60_000, &key(1)), NOW, t0).expect("answered");
        assert!(
            answer(&clients, &clock, NOW, t0).is_none(),
            "a clock answer is not answered"
        );
    }

    #[test]
    fn a_probe_off_the_clock_is_answered_with_this_hosts_clock_within_a_budget() {
        let clients = clients();
        let t0 = Instant::now();
        for skew in [-300_000i64, 300_000] {
            let request = request("lab", NOW.saturating_add_signed(skew), &key(1));
            let (reply, id) = answer(&clients, &request, NOW, t0).expect("answered");
            assert_eq!(id.as_str(), "lab");
            let (probe, body, mac) = Probe::decode(&reply).expect("a probe");
            assert_eq!(
                probe.kind,
                Kind::Clock {
                    concentrator_ms: NOW
                }
            );
            // Bound to the request: its seq and time echoed, under the MAC.
            assert_eq!(
                (probe.seq, probe.sent_ms),
                (42, NOW.saturating_add_signed(skew))
            );
            assert!(auth::verify_probe(&key(1), body, &mac));
            assert!(!auth::verify_probe(&key(2), body, &mac));
        }
        // A flood of captured old probes: the budget, then silence.
        let old = request("lab", NOW - 3_600_000, &key(1));
        let answered = (0..1_000)
            .filter(|_| answer(&clients, &old, NOW, t0).is_some())
            .count();
        assert_eq!(answered, crate::clock::AnswerBudget::BURST as usize - 2);
        // Fresh probes are echoed whatever the budget.
        assert!(answer(&clients, &request("lab", NOW, &key(1)), NOW, t0).is_some());
    }
}
