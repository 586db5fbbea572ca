//! Fuzzes the datagram tunnel: every message view and the inner payloads
//! on arbitrary bytes, then the concentrator's and the client's
//! `handle_datagram` (mac1/cookie, rate limiter, Noise, index lookup,
//! replay window, AEAD) on the bytes as they are and on genuine messages
//! the input tampers with.
//!
//! Input: a mode byte, then the message. Mode bit 0: tamper with the
//! genuine data message; bit 1: the concentrator is under load; bits 2–3:
//! which source address; bit 4: tamper with a genuine initiation; bit 5:
//! feed the bytes to both ends after a full handshake, and tamper with a
//! genuine data message; bit 6: run the timers long after (a rekey).
//! The endpoints (fresh and established) are made once and copied for
//! each input (`--cfg fuzzing` clones): X25519 is slow under the fuzzer's
//! instrumentation, so only a tampered initiation whose MACs still verify
//! and a rekey (bit 6) pay for it.
//!
//! Besides "no panic", it checks that nothing unauthenticated is answered
//! unless it carried a valid mac1 (only cookie replies and handshake
//! responses ever leave), and that an untouched genuine message opens.
//!
//! Seeds: `fuzz/corpus/tunnel/`, written by the unit test
//! `crypto::tunnel_tests::write_fuzz_corpus` and committed with `git add
//! -f` (the directory is ignored so that what the fuzzer adds stays out of
//! git).

#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use mpbond::crypto::{Initiator, PeerId, Random, RandomError, Received, Responder, StaticSecret};
use mpbond::wire::tunnel::{CookieReply, Data, Initiation, Inner, MessageType, Response};

/// Deterministic randomness, so every run of an input does the same.
#[derive(Clone)]
struct Seeded(u64);

impl Random for Seeded {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), RandomError> {
        for byte in dest {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *byte = (self.0 >> 56) as u8;
        }
        Ok(())
    }
}

fn views(data: &[u8]) {
    let _ = MessageType::of(data);
    if let Ok(m) = Initiation::new_checked(data) {
        let _ = (
            m.noise(),
            m.mac1(),
            m.mac2(),
            m.mac1_input(),
            m.mac2_input(),
        );
    }
    if let Ok(m) = Response::new_checked(data) {
        let _ = (
            m.receiver_index(),
            m.noise(),
            m.mac1(),
            m.mac2(),
            m.mac1_input(),
        );
    }
    if let Ok(m) = CookieReply::new_checked(data) {
        let _ = (m.nonce(), m.sealed_cookie());
    }
    if let Ok(m) = Data::new_checked(data) {
        let _ = (m.receiver_index(), m.counter(), m.path());
        assert_eq!(m.header().len() + m.sealed().len(), data.len());
    }
    if let Ok(inner) = Inner::parse(data) {
        let mut out = vec![0; inner.len()];
        let len = inner.encode(&mut out).expect("room for it");
        assert_eq!(Inner::parse(&out[..len]), Ok(inner));
    }
}

fn secret(byte: u8) -> StaticSecret {
    StaticSecret::from_bytes([byte; 32])
}

/// Both ends as every input starts from, made once: X25519 is slow under
/// the fuzzer's instrumentation (about 110 inputs/s under ASan when each
/// input made its own), so each input works on copies.
struct Fixture {
    t0: Instant,
    t1: Instant,
    unix: Duration,
    /// Before any handshake.
    server: Responder<Seeded>,
    client: Initiator<Seeded>,
    /// The client's first initiation, genuine.
    initiation: Vec<u8>,
    /// After a full handshake and the client's keepalive: data flows.
    established: (Responder<Seeded>, Initiator<Seeded>),
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(1);
        let unix = Duration::from_secs(1_800_000_000);
        let src = source(0);
        let server =
            Responder::new(secret(2), [secret(1).public_key()], Seeded(2)).expect("valid clients");
        let client = Initiator::new(secret(1), secret(2).public_key(), Seeded(1), t0);

        let mut hs_client = client.fuzz_clone().expect("no handshake yet");
        hs_client.handle_timeout(t0, unix).expect("rng");
        let initiation = hs_client.poll_transmit().expect("an initiation").bytes;
        let mut hs_server = server.clone();
        let mut init = initiation.clone();
        assert!(hs_server.handle_datagram(t1, src, &mut init).is_ok());
        let mut response = hs_server.poll_transmit().expect("a response").bytes;
        assert!(matches!(
            hs_client.handle_datagram(t1, 0, &mut response),
            Ok(Received::Handshake { .. })
        ));
        let mut keepalive = hs_client.poll_transmit().expect("keepalive").bytes;
        assert!(hs_server.handle_datagram(t1, src, &mut keepalive).is_ok());
        while hs_server.poll_transmit().is_some() {}
        while hs_client.poll_transmit().is_some() {}
        Fixture {
            t0,
            t1,
            unix,
            server,
            client,
            initiation,
            established: (hs_server, hs_client),
        }
    })
}

fn source(which: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(192, 0, 2, which & 3), 51_000))
}

fn client_copy(client: &Initiator<Seeded>) -> Initiator<Seeded> {
    client
        .fuzz_clone()
        .expect("the fixture holds no handshake in flight")
}

/// The client's data message carrying `payload` on `path`.
fn seal_payload(client: &mut Initiator<Seeded>, now: Instant, path: u8) -> Vec<u8> {
    let mut sealed = vec![0; 64];
    let len = client
        .seal(now, path, &Inner::Ip(b"payload"), &mut sealed)
        .expect("established");
    sealed.truncate(len);
    sealed
}

fuzz_target!(|input: &[u8]| {
    views(input);
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    views(data);

    let f = fixture();
    let (t0, t1, unix) = (f.t0, f.t1, f.unix);
    let src = source(mode >> 2);
    let mut server = f.server.clone();
    server.set_under_load(mode & 2 != 0);
    let mut client = client_copy(&f.client);

    // Raw bytes at both ends, before any session exists.
    let mut raw = data.to_vec();
    let answered = server.handle_datagram(t0, src, &mut raw);
    let mut raw = data.to_vec();
    let _ = client.handle_datagram(t0, 0, &mut raw);
    if answered.is_err() {
        assert!(
            server.poll_transmit().is_none(),
            "answered a dropped message"
        );
    }
    while server.poll_transmit().is_some() {}

    // A genuine initiation, tampered with by the input.
    if mode & 0x10 != 0 && !data.is_empty() {
        let mut tampered = f.initiation.clone();
        for (byte, x) in tampered.iter_mut().zip(data.iter().cycle()) {
            *byte ^= x;
        }
        let changed = tampered != f.initiation;
        // The genuine one was answered when the fixture was made.
        if changed && server.handle_datagram(t0, src, &mut tampered).is_err() {
            assert!(server.poll_transmit().is_none());
        } else if changed {
            // Only the MACs' tail may be changed harmlessly (mac2 is
            // ignored when not under load).
            assert_eq!(tampered[..133], f.initiation[..133]);
        }
        while server.poll_transmit().is_some() {}
    }

    if mode & 0x20 == 0 {
        return;
    }

    // Sessions up at both ends, so data reaches them.
    let mut server = f.established.0.clone();
    let mut client = client_copy(&f.established.1);

    // A genuine data message, sealed before the raw bytes arrive. Every
    // input starts from the same state, so the fuzzer can learn a genuine
    // message of another input (the same counter, another path): that one
    // opens and the genuine copy is then a replay.
    let mut sealed = seal_payload(&mut client, t1, mode);
    let genuine = sealed.clone();
    let counter = |bytes: &[u8]| Data::new_checked(bytes).ok().map(|d| d.counter());

    // Raw bytes again, now that there are sessions to look up.
    let mut raw = data.to_vec();
    let raw_opened = matches!(
        server.handle_datagram(t1, src, &mut raw),
        Ok(Received::Data { .. })
    );
    let replay = raw_opened && counter(data) == counter(&genuine);
    let mut raw = data.to_vec();
    let _ = client.handle_datagram(t1, 1, &mut raw);
    while server.poll_transmit().is_some() {}
    while client.poll_transmit().is_some() {}

    // The genuine message, tampered with by the input.
    if mode & 1 != 0 {
        for (byte, x) in sealed.iter_mut().zip(data.iter().cycle()) {
            *byte ^= x;
        }
    }
    let changed = sealed != genuine;
    let sent = sealed.clone();
    match server.handle_datagram(t1, src, &mut sealed) {
        Ok(Received::Data { peer, path, inner }) => {
            assert!(!replay, "a counter opened twice");
            assert_eq!(peer, PeerId(0));
            assert_eq!(inner, Inner::Ip(b"payload"));
            if changed {
                // The genuine message of another input: every input seals
                // with the same keys and counter, only the path differs
                // (the mode). With AES-GCM the fuzzer found that one from
                // this one (under one nonce the tags of two headers
                // differ by a fixed pattern; the session's counter never
                // repeats a nonce). Only that may open.
                let mut other = client_copy(&f.established.1);
                let resealed = seal_payload(&mut other, t1, path);
                assert_eq!(sent, resealed, "a tampered data message opened");
            } else {
                assert_eq!(path, mode);
            }
        }
        Ok(other) => panic!("data opened as {other:?}"),
        Err(e) => assert!(changed || replay, "a genuine data message was dropped: {e}"),
    }
    assert!(server.poll_transmit().is_none());

    // And the way back.
    let mut down = vec![0; 64 + data.len()];
    if let Ok(len) = server.seal(
        t1,
        PeerId(0),
        0,
        &Inner::Ip(data).into_ip_or_keepalive(),
        &mut down,
    ) {
        let mut down = down[..len].to_vec();
        assert!(client.handle_datagram(t1, 0, &mut down).is_ok());
    }

    // Timers after the input did its worst: a second later, or (bit 6)
    // long after, when both ends rekey (X25519 again, so only some inputs
    // pay for it).
    let wait = if mode & 0x40 != 0 { 200 } else { 1 };
    let later = t1 + Duration::from_secs(wait);
    server.handle_timeout(later);
    let _ = client.handle_timeout(later, unix + Duration::from_secs(wait));
    let _ = (server.poll_timeout(), client.poll_timeout());
});

trait IpOrKeepalive<'a> {
    fn into_ip_or_keepalive(self) -> Inner<'a>;
}

impl<'a> IpOrKeepalive<'a> for Inner<'a> {
    /// An empty IP packet is not a message; send a keepalive instead.
    fn into_ip_or_keepalive(self) -> Inner<'a> {
        match self {
            Inner::Ip(p) if p.is_empty() => Inner::Keepalive,
            other => other,
        }
    }
}
