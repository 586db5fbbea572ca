//! The probe echo: on the listener's port, over UDP, answers each client's
//! authenticated probe (see [`crate::wire::probe`]) so the client can tell
//! which uplinks still reach the concentrator. Anything that does not
//! verify is dropped without a word: the echo never answers a stranger, so
//! it cannot be used to reflect traffic at someone else.

use super::accept::Clients;
use crate::auth;
use crate::wire::convert::ClientId;
use crate::wire::probe::{Kind, Probe};

/// Probes older or newer than this (by the client's clock against ours)
/// are not answered: replays of old probes get nothing.
const FRESHNESS_MS: u64 = 30_000;

/// The reply to `datagram` at `now_ms`, and the client it came from, if it
/// is a fresh request that verifies with that client's key.
pub(super) fn answer(
    clients: &Clients,
    datagram: &[u8],
    now_ms: u64,
) -> Option<(Vec<u8>, ClientId)> {
    let (probe, body, mac) = Probe::decode(datagram).ok()?;
    if probe.kind != Kind::Request || now_ms.abs_diff(probe.sent_ms) > FRESHNESS_MS {
        return None;
    }
    let key = clients.key(&probe.client_id)?;
    if !auth::verify_probe(key, body, &mac) {
        return None;
    }
    let reply = Probe {
        kind: Kind::Reply,
        ..probe
    };
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
        let reply = answer(&clients(), &request("lab", NOW, &key(1)), NOW + 5)
            .expect("answered")
            .0;
        let (probe, body, mac) = Probe::decode(&reply).expect("a probe");
        assert_eq!(probe.kind, Kind::Reply);
        assert_eq!((probe.seq, probe.sent_ms), (42, NOW));
        assert!(auth::verify_probe(&key(1), body, &mac));
    }

    #[test]
    fn strangers_forgeries_stale_probes_and_replies_get_nothing() {
        let clients = clients();
        assert!(answer(&clients, &request("lab", NOW, &key(2)), NOW).is_none());
        assert!(answer(&clients, &request("eve", NOW, &key(1)), NOW).is_none());
        assert!(answer(&clients, &request("lab", NOW - 60_000, &key(1)), NOW).is_none());
        assert!(answer(&clients, b"GET / HTTP/1.1\r\n\r\n", NOW).is_none());
        let (reply, id) = answer(&clients, &request("lab", NOW, &key(1)), NOW).expect("answered");
        assert_eq!(id.as_str(), "lab");
        assert!(
            answer(&clients, &reply, NOW).is_none(),
            "a reply is not answered"
        );
    }
}
