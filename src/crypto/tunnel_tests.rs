//! End-to-end tests of the two ends in memory, on a fake clock: the
//! driver's job is done by [`Net`], which carries datagrams between them
//! with a delay per path.

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::endpoint::{Dropped, Initiator, PeerId, Received, Responder, SealError};
use super::keys::StaticSecret;
use super::session::{Cipher, Ciphers, SessionError};
use super::timers::{
    NEW_HANDSHAKE_AFTER_SILENCE, REJECT_AFTER_TIME, REKEY_AFTER_TIME, REKEY_ATTEMPT_TIME,
    REKEY_TIMEOUT,
};
use super::{replay::ReplayError, TestRng};
use crate::wire::tunnel::{Inner, PathProbe};

const UNIX_START: Duration = Duration::from_secs(1_800_000_000);

fn secret(byte: u8) -> StaticSecret {
    StaticSecret::from_bytes([byte; 32])
}

fn client_addr(path: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(192, 0, 2, 10 + path), 51_000))
}

/// Which way a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dir {
    Up,
    Down,
}

/// A client, a concentrator, and the datagrams in flight between them.
struct Net {
    t0: Instant,
    now: Instant,
    client: Initiator<TestRng>,
    server: Responder<TestRng>,
    /// Delay of each path.
    delay: [Duration; 2],
    /// In flight: (arrival, sequence) → (direction, path, bytes).
    flight: BTreeMap<(Instant, u64), (Dir, u8, Vec<u8>)>,
    seq: u64,
    /// What arrived, IP payloads only, per direction.
    delivered: Vec<(Dir, Vec<u8>)>,
    dropped: Vec<(Dir, String)>,
    handshakes: usize,
}

impl Net {
    fn new() -> Self {
        let t0 = Instant::now();
        let server = Responder::new(secret(2), [secret(1).public_key()], TestRng(22))
            .expect("valid clients");
        Self {
            t0,
            now: t0,
            client: Initiator::new(secret(1), secret(2).public_key(), TestRng(11), t0),
            server,
            delay: [Duration::from_millis(10), Duration::from_millis(40)],
            flight: BTreeMap::new(),
            seq: 0,
            delivered: Vec::new(),
            dropped: Vec::new(),
            handshakes: 0,
        }
    }

    fn unix(&self) -> Duration {
        UNIX_START + (self.now - self.t0)
    }

    fn send(&mut self, dir: Dir, path: u8, bytes: Vec<u8>) {
        let at = self.now + self.delay[usize::from(path % 2)];
        self.seq += 1;
        self.flight.insert((at, self.seq), (dir, path, bytes));
    }

    /// Moves the endpoints' own transmits into flight.
    fn collect(&mut self) {
        while let Some(t) = self.client.poll_transmit() {
            self.send(Dir::Up, t.path.unwrap_or(0), t.bytes);
        }
        while let Some(t) = self.server.poll_transmit() {
            let path = if t.dst == client_addr(1) { 1 } else { 0 };
            self.send(Dir::Down, path, t.bytes);
        }
    }

    fn deliver(&mut self, dir: Dir, path: u8, mut bytes: Vec<u8>) {
        let now = self.now;
        let result = match dir {
            Dir::Up => self
                .server
                .handle_datagram(now, client_addr(path), &mut bytes)
                .map(|r| (r, Dir::Up)),
            Dir::Down => self
                .client
                .handle_datagram(now, path, &mut bytes)
                .map(|r| (r, Dir::Down)),
        };
        match result {
            Ok((
                Received::Data {
                    path: got, inner, ..
                },
                dir,
            )) => {
                assert_eq!(got, path, "the header's path id is the path used");
                if let Inner::Ip(packet) = inner {
                    self.delivered.push((dir, packet.to_vec()));
                }
            }
            Ok((Received::Handshake { .. }, _)) => self.handshakes += 1,
            Ok((Received::Cookie, _)) => {}
            Err(e) => self.dropped.push((dir, e.to_string())),
        }
    }

    /// Runs timers and deliveries up to `until`.
    fn run_until(&mut self, until: Instant) {
        loop {
            self.collect();
            let timer = [self.client.poll_timeout(), self.server.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let arrival = self.flight.keys().next().map(|(at, _)| *at);
            let next = [timer, arrival].into_iter().flatten().min();
            let Some(next) = next.filter(|t| *t <= until) else {
                self.now = until;
                return;
            };
            self.now = self.now.max(next);
            if arrival == Some(next) {
                if let Some((_, (dir, path, bytes))) = self.flight.pop_first() {
                    self.deliver(dir, path, bytes);
                }
                continue;
            }
            if self.client.poll_timeout().is_some_and(|t| t <= self.now) {
                let unix = self.unix();
                self.client
                    .handle_timeout(self.now, unix)
                    .expect("test rng");
            }
            if self.server.poll_timeout().is_some_and(|t| t <= self.now) {
                self.server.handle_timeout(self.now);
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    fn connect(&mut self) {
        self.run_for(Duration::from_millis(200));
        assert!(self.client.is_established(self.now));
        assert!(self.server.is_established(PeerId(0), self.now));
    }

    /// Handshakes (as [`Net::connect`] does, without its checks) and
    /// returns the client's initiation, to be replayed.
    fn connect_keeping_the_initiation(&mut self) -> Vec<u8> {
        let now = self.now;
        self.client.handle_timeout(now, UNIX_START).expect("rng");
        let initiation = self.client.poll_transmit().expect("initiation").bytes;
        self.send(Dir::Up, 0, initiation.clone());
        self.run_for(Duration::from_millis(200));
        initiation
    }

    fn seal_up(&mut self, path: u8, payload: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut buf = vec![0; payload.len() + 64];
        let len = self
            .client
            .seal(self.now, path, &Inner::Ip(payload), &mut buf)?;
        buf.truncate(len);
        Ok(buf)
    }

    fn seal_down(&mut self, path: u8, payload: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut buf = vec![0; payload.len() + 64];
        let len = self
            .server
            .seal(self.now, PeerId(0), path, &Inner::Ip(payload), &mut buf)?;
        buf.truncate(len);
        Ok(buf)
    }

    fn seal_down_to(&mut self, peer: PeerId, path: u8, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0; payload.len() + 64];
        let len = self
            .server
            .seal(self.now, peer, path, &Inner::Ip(payload), &mut buf)
            .expect("session");
        buf.truncate(len);
        buf
    }

    fn delivered(&self, dir: Dir) -> Vec<Vec<u8>> {
        self.delivered
            .iter()
            .filter(|(d, _)| *d == dir)
            .map(|(_, p)| p.clone())
            .collect()
    }
}

#[test]
fn handshake_then_data_both_ways_on_both_paths() {
    let mut net = Net::new();
    net.connect();
    assert_eq!(net.handshakes, 2, "initiation answered, response taken");
    for path in [0, 1] {
        let up = net.seal_up(path, b"ping from the LAN").expect("session");
        net.send(Dir::Up, path, up);
        let down = net
            .seal_down(path, b"pong from the internet")
            .expect("session");
        net.send(Dir::Down, path, down);
    }
    net.run_for(Duration::from_millis(100));
    assert_eq!(
        net.delivered(Dir::Up),
        vec![b"ping from the LAN".to_vec(); 2]
    );
    assert_eq!(
        net.delivered(Dir::Down),
        vec![b"pong from the internet".to_vec(); 2]
    );
    assert!(net.dropped.is_empty(), "{:?}", net.dropped);

    // Probes travel as control messages and keep their fields.
    let probe = PathProbe {
        path: 1,
        seq: 7,
        sent_us: 123,
        echo_us: 99,
        echo_delay_us: 4,
        rx_bytes: 1000,
        rx_packets: 3,
    };
    let mut buf = [0; 128];
    let len = net
        .client
        .seal(net.now, 1, &Inner::Probe(probe), &mut buf)
        .expect("seals");
    let got = net
        .server
        .handle_datagram(net.now, client_addr(1), &mut buf[..len])
        .expect("opens");
    assert_eq!(
        got,
        Received::Data {
            peer: PeerId(0),
            path: 1,
            inner: Inner::Probe(probe)
        }
    );
}

#[test]
fn the_data_cipher_is_aes_gcm_only_when_both_ends_run_it() {
    use Cipher::*;
    for (client, server, cipher) in [
        (Ciphers::WITH_AES, Ciphers::WITH_AES, Aes256Gcm),
        (Ciphers::WITH_AES, Ciphers::CHACHA_ONLY, ChaCha20Poly1305),
        (Ciphers::CHACHA_ONLY, Ciphers::WITH_AES, ChaCha20Poly1305),
        (Ciphers::CHACHA_ONLY, Ciphers::CHACHA_ONLY, ChaCha20Poly1305),
    ] {
        let mut net = Net::new();
        net.client = Initiator::new(secret(1), secret(2).public_key(), TestRng(11), net.now)
            .with_ciphers(client);
        net.server = Responder::new(secret(2), [secret(1).public_key()], TestRng(22))
            .expect("valid clients")
            .with_ciphers(server);
        net.connect();
        assert_eq!(net.client.cipher(), Some(cipher));
        assert_eq!(net.server.cipher(PeerId(0)), Some(cipher));
        for path in [0, 1] {
            let up = net.seal_up(path, b"up").expect("session");
            net.send(Dir::Up, path, up);
            let down = net.seal_down(path, b"down").expect("session");
            net.send(Dir::Down, path, down);
        }
        net.run_for(Duration::from_millis(100));
        assert_eq!(net.delivered(Dir::Up), vec![b"up".to_vec(); 2]);
        assert_eq!(net.delivered(Dir::Down), vec![b"down".to_vec(); 2]);
        assert!(net.dropped.is_empty(), "{:?}", net.dropped);
    }
}

#[test]
fn an_aes_gcm_session_is_replaced_once_either_end_sent_its_share() {
    use super::session::AES_GCM_REKEY_AFTER_MESSAGES;
    for dir in [Dir::Up, Dir::Down] {
        let mut net = Net::new();
        net.client = Initiator::new(secret(1), secret(2).public_key(), TestRng(11), net.now)
            .with_ciphers(Ciphers::WITH_AES);
        net.server = Responder::new(secret(2), [secret(1).public_key()], TestRng(22))
            .expect("valid clients")
            .with_ciphers(Ciphers::WITH_AES);
        net.connect();
        let index = |net: &mut Net| net.client.current_mut().map(|s| s.local_index());
        let first = index(&mut net);
        let before = net.handshakes;
        // One second in, far from the two-minute rekey: the sender's
        // counter reaches the share with the next message.
        net.run_for(Duration::from_secs(1));
        let session = match dir {
            Dir::Up => net.client.current_mut(),
            Dir::Down => net.server.current_mut(PeerId(0)),
        };
        session
            .expect("a session")
            .skip_to(AES_GCM_REKEY_AFTER_MESSAGES);
        let message = match dir {
            Dir::Up => net.seal_up(0, b"the last of its share"),
            Dir::Down => net.seal_down(0, b"the last of its share"),
        };
        net.send(dir, 0, message.expect("session"));
        net.run_for(Duration::from_millis(200));
        assert_eq!(net.delivered(dir), vec![b"the last of its share".to_vec()]);
        assert_eq!(
            net.handshakes,
            before + 2,
            "{dir:?}: a new handshake at once, not after two minutes"
        );
        // Data carries on, on the new session.
        let up = net.seal_up(1, b"after").expect("session");
        net.send(Dir::Up, 1, up);
        let down = net.seal_down(1, b"after").expect("session");
        net.send(Dir::Down, 1, down);
        assert_ne!(index(&mut net), first, "{dir:?}: a new session");
        net.run_for(Duration::from_millis(200));
        let other = if dir == Dir::Up { Dir::Down } else { Dir::Up };
        assert_eq!(net.delivered(dir).len(), 2, "{dir:?}");
        assert_eq!(net.delivered(other), vec![b"after".to_vec()], "{dir:?}");
        assert!(net.dropped.is_empty(), "{dir:?}: {:?}", net.dropped);
    }
}

#[test]
fn no_session_before_the_handshake() {
    let mut net = Net::new();
    assert_eq!(net.seal_up(0, b"early"), Err(SealError::NoSession));
    assert_eq!(net.seal_down(0, b"early"), Err(SealError::NoSession));
    net.connect();
    assert!(net.seal_up(0, b"now").is_ok());
}

#[test]
fn reordering_across_two_paths_and_redundant_duplicates() {
    let mut net = Net::new();
    net.connect();
    // Path 1 is 400 ms slower; 5000 packets at 10 µs intervals on
    // alternating paths, every tenth also duplicated on the other path
    // (redundant mode).
    net.delay = [Duration::from_millis(1), Duration::from_millis(400)];
    for n in 0..5000u32 {
        let path = (n % 2) as u8;
        let packet = net.seal_up(path, &n.to_be_bytes()).expect("session");
        if n % 10 == 0 {
            net.send(Dir::Up, 1 - path, packet.clone());
        }
        net.send(Dir::Up, path, packet);
        net.now += Duration::from_micros(10);
    }
    net.run_for(Duration::from_secs(1));
    let got: HashSet<_> = net.delivered(Dir::Up).into_iter().collect();
    assert_eq!(net.delivered(Dir::Up).len(), 5000, "each packet once");
    assert_eq!(got.len(), 5000);
    assert_eq!(net.dropped.len(), 500, "the duplicates");
    assert!(net
        .dropped
        .iter()
        .all(|(_, e)| e == "data message refused by its session"));
}

#[test]
fn replayed_and_tampered_data_is_dropped() {
    let mut net = Net::new();
    net.connect();
    let packet = net.seal_up(0, b"once").expect("session");
    let mut first = packet.clone();
    assert!(net
        .server
        .handle_datagram(net.now, client_addr(0), &mut first)
        .is_ok());
    let mut again = packet.clone();
    assert!(matches!(
        net.server
            .handle_datagram(net.now, client_addr(0), &mut again),
        Err(Dropped::Session(SessionError::Replay(
            ReplayError::Duplicate { .. }
        )))
    ));
    let fresh = net.seal_up(0, b"twice").expect("session");
    for at in 4..fresh.len() {
        let mut tampered = fresh.clone();
        tampered[at] ^= 0x80;
        assert!(
            net.server
                .handle_datagram(net.now, client_addr(0), &mut tampered)
                .is_err(),
            "byte {at}"
        );
    }
    let mut genuine = fresh;
    assert!(net
        .server
        .handle_datagram(net.now, client_addr(0), &mut genuine)
        .is_ok());
    assert!(net.server.poll_transmit().is_none(), "no answer to any");
}

#[test]
fn unknown_clients_and_wrong_keys_get_silence() {
    let mut net = Net::new();
    let now = net.now;
    // A client the concentrator does not know, with the right server key.
    let mut stranger = Initiator::new(secret(3), secret(2).public_key(), TestRng(5), now);
    stranger.handle_timeout(now, UNIX_START).expect("rng");
    let mut init = stranger.poll_transmit().expect("initiation").bytes;
    assert!(matches!(
        net.server.handle_datagram(now, client_addr(0), &mut init),
        Err(Dropped::UnknownPeer { key }) if key == secret(3).public_key()
    ));
    // A client with the wrong idea of the concentrator's key.
    let mut confused = Initiator::new(secret(1), secret(4).public_key(), TestRng(6), now);
    confused.handle_timeout(now, UNIX_START).expect("rng");
    let mut init = confused.poll_transmit().expect("initiation").bytes;
    assert!(matches!(
        net.server.handle_datagram(now, client_addr(0), &mut init),
        Err(Dropped::Cookie(_))
    ));
    // Garbage of every length and type.
    for len in 0..200 {
        for kind in 0..6u8 {
            let mut junk = vec![0x5a; len];
            if let Some(first) = junk.first_mut() {
                *first = kind;
            }
            assert!(net
                .server
                .handle_datagram(now, client_addr(0), &mut junk)
                .is_err());
            assert!(net.client.handle_datagram(now, 0, &mut junk).is_err());
        }
    }
    assert!(net.server.poll_transmit().is_none());
}

#[test]
fn a_replayed_initiation_is_refused() {
    let mut net = Net::new();
    let now = net.now;
    net.client.handle_timeout(now, UNIX_START).expect("rng");
    let init = net.client.poll_transmit().expect("initiation").bytes;
    let mut first = init.clone();
    assert!(net
        .server
        .handle_datagram(now, client_addr(0), &mut first)
        .is_ok());
    let mut replay = init;
    assert!(matches!(
        net.server.handle_datagram(now, client_addr(0), &mut replay),
        Err(Dropped::StaleTimestamp { peer: PeerId(0) })
    ));
}

/// A concentrator restart forgets each client's last handshake
/// timestamp, as WireGuard's does; the connect header's epoch has no
/// counterpart here. So an initiation recorded before the restart and
/// replayed after it from elsewhere is answered (to the replayer), but it
/// forwards nothing: its session is never confirmed (that takes data
/// sealed with keys only the initiator's ephemeral secret derives), the
/// data recorded with it is refused, and the client's next handshake,
/// with a newer timestamp, takes over as before.
#[test]
fn a_replayed_initiation_after_a_restart_forwards_nothing() {
    let mut net = Net::new();
    let initiation = net.connect_keeping_the_initiation();
    assert!(net.client.is_established(net.now));
    let recorded: Vec<Vec<u8>> = (0..3u8)
        .map(|n| net.seal_up(0, &[b'r', n]).expect("session"))
        .collect();
    for packet in &recorded {
        net.send(Dir::Up, 0, packet.clone());
    }
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.delivered(Dir::Up).len(), 3);

    net.server =
        Responder::new(secret(2), [secret(1).public_key()], TestRng(99)).expect("valid clients");
    let attacker = SocketAddr::from((Ipv4Addr::new(203, 0, 113, 9), 4444));
    let mut replay = initiation.clone();
    assert!(matches!(
        net.server.handle_datagram(net.now, attacker, &mut replay),
        Ok(Received::Handshake { peer: PeerId(0) })
    ));
    let answer = net.server.poll_transmit().expect("a response");
    assert_eq!(answer.dst, attacker, "the response goes to the replayer");
    assert!(!net.server.is_established(PeerId(0), net.now));
    for packet in &recorded {
        let mut packet = packet.clone();
        assert!(net
            .server
            .handle_datagram(net.now, attacker, &mut packet)
            .is_err());
    }
    let mut again = initiation;
    assert!(matches!(
        net.server.handle_datagram(net.now, attacker, &mut again),
        Err(Dropped::StaleTimestamp { .. })
    ));
    assert!(!net.server.is_established(PeerId(0), net.now));
    assert_eq!(net.delivered(Dir::Up).len(), 3, "nothing forwarded");

    // The client notices the silence and handshakes again (a later
    // timestamp than the replayed one); its traffic flows.
    let end = net.now + NEW_HANDSHAKE_AFTER_SILENCE + Duration::from_secs(5);
    let mut n = 0u32;
    while net.now < end {
        let up = net.seal_up(0, &n.to_be_bytes()).expect("client session");
        net.send(Dir::Up, 0, up);
        n += 1;
        net.run_for(Duration::from_millis(100));
    }
    assert!(net.server.is_established(PeerId(0), net.now));
    assert!(net.delivered(Dir::Up).len() > 3);
    assert!(
        net.delivered(Dir::Up).iter().skip(3).all(|p| p.len() == 4),
        "only the client's new packets arrive"
    );
}

#[test]
fn rekeys_every_two_minutes_without_losing_a_packet() {
    let mut net = Net::new();
    net.connect();
    let mut sent = 0u32;
    let mut indices = HashSet::new();
    // Seven minutes of one packet each way every 20 ms, alternating paths
    // (one 10 ms, the other 40 ms away).
    let end = net.now + Duration::from_secs(420);
    while net.now < end {
        let path = (sent % 2) as u8;
        let payload = sent.to_be_bytes();
        let up = net
            .seal_up(path, &payload)
            .expect("never without a session");
        net.send(Dir::Up, path, up);
        let down = net
            .seal_down(path, &payload)
            .expect("never without a session");
        net.send(Dir::Down, path, down);
        sent += 1;
        net.run_for(Duration::from_millis(20));
        if let Some(local) = net.client_index() {
            indices.insert(local);
        }
    }
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.delivered(Dir::Up).len(), sent as usize);
    assert_eq!(net.delivered(Dir::Down).len(), sent as usize);
    assert!(net.dropped.is_empty(), "{:?}", net.dropped);
    // 420 s / (120 s + jitter): three rekeys, four sessions.
    assert_eq!(indices.len(), 4, "{indices:?}");
}

impl Net {
    /// The client's session index, as data in flight to it carries it.
    fn client_index(&self) -> Option<u32> {
        self.flight
            .values()
            .filter(|(dir, _, bytes)| *dir == Dir::Down && bytes.first() == Some(&4))
            .find_map(|(_, _, bytes)| Some(u32::from_be_bytes(bytes.get(4..8)?.try_into().ok()?)))
    }
}

#[test]
fn a_handshake_under_load_needs_a_cookie() {
    let mut net = Net::new();
    net.server.set_under_load(true);
    net.run_for(Duration::from_millis(200));
    assert!(!net.client.is_established(net.now), "cookie reply only");
    assert!(net.client.is_handshaking());
    // The retry carries the cookie as mac2 and goes through.
    net.run_for(REKEY_TIMEOUT + Duration::from_secs(1));
    assert!(net.client.is_established(net.now));
    assert!(net.server.is_established(PeerId(0), net.now));
    assert!(net.dropped.is_empty(), "{:?}", net.dropped);
}

#[test]
fn an_unanswered_handshake_is_retried_every_five_seconds_for_ninety() {
    let mut net = Net::new();
    let mut initiations = Vec::new();
    let end = net.t0 + REKEY_ATTEMPT_TIME + Duration::from_secs(30);
    while net.now < end {
        if let Some(at) = net.client.poll_timeout().filter(|t| *t <= end) {
            net.now = net.now.max(at);
            let unix = net.unix();
            net.client.handle_timeout(net.now, unix).expect("rng");
        } else {
            net.now = end;
        }
        while let Some(t) = net.client.poll_transmit() {
            assert_eq!(t.bytes.first(), Some(&1));
            initiations.push(net.now - net.t0);
        }
    }
    assert_eq!(initiations.first(), Some(&Duration::ZERO));
    for pair in initiations.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= REKEY_TIMEOUT && gap <= REKEY_TIMEOUT + Duration::from_millis(333));
    }
    assert!(initiations.last().is_some_and(|t| *t < REKEY_ATTEMPT_TIME));
    assert!((16..=18).contains(&initiations.len()), "{initiations:?}");
    assert!(!net.client.is_handshaking(), "gave up");
    // Data to send brings it back.
    assert_eq!(net.seal_up(0, b"hello?"), Err(SealError::NoSession));
    let unix = net.unix();
    net.client.handle_timeout(net.now, unix).expect("rng");
    assert!(net.client.poll_transmit().is_some());
}

#[test]
fn the_client_handshakes_again_after_the_concentrator_restarts() {
    let mut net = Net::new();
    net.connect();
    net.server =
        Responder::new(secret(2), [secret(1).public_key()], TestRng(99)).expect("valid clients");
    let mut lost = 0;
    let mut n = 0u32;
    let end = net.now + NEW_HANDSHAKE_AFTER_SILENCE + Duration::from_secs(5);
    while net.now < end {
        let up = net
            .seal_up(0, &n.to_be_bytes())
            .expect("client still has its session");
        net.send(Dir::Up, 0, up);
        if let Ok(down) = net.seal_down(0, &n.to_be_bytes()) {
            net.send(Dir::Down, 0, down);
        }
        n += 1;
        net.run_for(Duration::from_millis(100));
        if !net.server.is_established(PeerId(0), net.now) {
            lost += 1;
        }
    }
    assert!(net.client.is_established(net.now));
    assert!(net.server.is_established(PeerId(0), net.now));
    // Lost until the silence was noticed, then everything arrives.
    assert!(lost <= 160, "{lost}");
    let before = net.delivered(Dir::Up).len();
    for n in 0..10u32 {
        let up = net.seal_up(1, &n.to_be_bytes()).expect("session");
        net.send(Dir::Up, 1, up);
    }
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.delivered(Dir::Up).len(), before + 10);
}

#[test]
fn sessions_expire_without_traffic_and_come_back_on_demand() {
    let mut net = Net::new();
    net.connect();
    // Idle: the client still rekeys on its timer.
    net.run_for(REKEY_AFTER_TIME + Duration::from_secs(1));
    assert!(net.client.is_established(net.now));
    net.run_for(REJECT_AFTER_TIME);
    assert!(net.client.is_established(net.now));
    assert!(net.seal_up(0, b"still there").is_ok());
}

/// The `n`th initiation of a flood: a fresh initiator each, as a flooder
/// with the server's public key makes them.
fn flood_initiation(n: u64, now: Instant) -> Vec<u8> {
    let mut flooder = Initiator::new(secret(1), secret(2).public_key(), TestRng(n + 100), now);
    flooder
        .handle_timeout(now, UNIX_START + Duration::from_secs(n))
        .expect("rng");
    flooder.poll_transmit().expect("initiation").bytes
}

#[test]
fn an_initiation_flood_is_rate_limited() {
    let mut net = Net::new();
    let now = net.now;
    let mut limited = 0;
    for n in 0..50u64 {
        let mut init = flood_initiation(n, now);
        if let Err(Dropped::RateLimited { .. }) =
            net.server.handle_datagram(now, client_addr(0), &mut init)
        {
            limited += 1;
        }
    }
    assert_eq!(limited, 45);
}

#[test]
fn under_load_a_flooding_source_gets_few_cookie_replies() {
    let mut net = Net::new();
    net.server.set_under_load(true);
    let now = net.now;
    let (mut replies, mut limited) = (0, 0);
    for n in 0..50u64 {
        let mut init = flood_initiation(n, now);
        match net.server.handle_datagram(now, client_addr(0), &mut init) {
            Ok(Received::Cookie) => replies += 1,
            Err(Dropped::CookieRateLimited { .. }) => limited += 1,
            other => panic!("under load, an initiation without mac2: {other:?}"),
        }
    }
    assert_eq!(
        (replies, limited),
        (5, 45),
        "a burst of five, then the rate"
    );
    let mut sent = 0;
    while net.server.poll_transmit().is_some() {
        sent += 1;
    }
    assert_eq!(sent, 5, "only the allowed cookie replies go out");
    // Another source still gets its cookie.
    let mut other = Initiator::new(secret(1), secret(2).public_key(), TestRng(7), now);
    other.handle_timeout(now, UNIX_START).expect("rng");
    let mut init = other.poll_transmit().expect("initiation").bytes;
    assert!(matches!(
        net.server.handle_datagram(now, client_addr(1), &mut init),
        Ok(Received::Cookie)
    ));
}

/// Writes the seed corpus of `fuzz/fuzz_targets/tunnel.rs` (a mode byte,
/// then a message) when `MPBOND_WRITE_FUZZ_CORPUS` names a directory
/// (`MPBOND_WRITE_FUZZ_CORPUS=$PWD/fuzz/corpus/tunnel cargo test --lib
/// write_fuzz_corpus`):
/// genuine messages of every type, for the fuzzer to start from.
#[test]
fn write_fuzz_corpus() {
    let Some(dir) = std::env::var_os("MPBOND_WRITE_FUZZ_CORPUS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    let mut net = Net::new();
    let now = net.now;
    net.client.handle_timeout(now, UNIX_START).expect("rng");
    let initiation = net.client.poll_transmit().expect("initiation").bytes;
    let mut copy = initiation.clone();
    net.server
        .handle_datagram(now, client_addr(0), &mut copy)
        .expect("accepted");
    let response = net.server.poll_transmit().expect("response").bytes;
    net.server.set_under_load(true);
    let mut again = initiation.clone();
    let _ = net.server.handle_datagram(now, client_addr(0), &mut again);
    let cookie = net.server.poll_transmit().expect("cookie reply").bytes;
    let mut response_copy = response.clone();
    net.client
        .handle_datagram(now, 0, &mut response_copy)
        .expect("response");
    let data = net.seal_up(1, &[0x45, 0, 0, 20]).expect("session");
    let mut probe = [0; 128];
    let len = net
        .client
        .seal(now, 0, &Inner::Probe(PathProbe::default()), &mut probe)
        .expect("seals");
    for (name, mode, bytes) in [
        ("initiation", 0x00, &initiation[..]),
        ("initiation-under-load", 0x02, &initiation[..]),
        ("tamper-initiation", 0x30, &[0u8; 130][..]),
        ("response", 0x00, &response[..]),
        ("cookie-reply", 0x00, &cookie[..]),
        ("data", 0x00, &data[..]),
        ("tamper-data", 0x21, &[0u8, 0, 0, 0, 0, 0, 0, 0, 1][..]),
        ("probe", 0x00, &probe[..len]),
    ] {
        let mut file = vec![mode];
        file.extend_from_slice(bytes);
        std::fs::write(dir.join(name), &file).expect("seed written");
        // The same bytes again once a session is up (mode bit 5).
        if mode == 0 {
            file[0] = 0x20;
            std::fs::write(dir.join(format!("{name}-established")), file).expect("seed written");
        }
    }
}

#[test]
fn one_way_traffic_keeps_its_session_thanks_to_keepalives() {
    let mut net = Net::new();
    net.connect();
    let handshakes = net.handshakes;
    // A minute of upload only: the concentrator answers with keepalives,
    // so the client never thinks it restarted.
    for n in 0..60u32 {
        let up = net.seal_up(0, &n.to_be_bytes()).expect("session");
        net.send(Dir::Up, 0, up);
        net.run_for(Duration::from_secs(1));
    }
    assert_eq!(net.handshakes, handshakes, "no handshake but the first");
    assert_eq!(net.delivered(Dir::Up).len(), 60);
    assert!(net.dropped.is_empty(), "{:?}", net.dropped);
}

#[test]
fn debug_output_shows_no_key() {
    let mut net = Net::new();
    net.connect();
    let text = format!("{:?} {:?}", net.client, net.server);
    for key in [secret(1).to_base64(), secret(2).to_base64()] {
        assert!(!text.contains(&key));
    }
    assert!(!text.contains(&format!("{:?}", [1u8; 32])));
}

/// A reload that keeps the client keeps its session (also when it moves
/// to another place in the list); one that removes it ends the session at
/// once; configured again, it cannot be let in with its old initiation.
#[test]
fn a_reload_keeps_kept_clients_sessions_and_ends_removed_ones() {
    let mut net = Net::new();
    let initiation = net.connect_keeping_the_initiation();
    assert!(net.server.is_established(PeerId(0), net.now));

    // Another client first: ours moves to PeerId(1) with its session.
    let other = secret(7).public_key();
    net.server
        .set_clients([other, secret(1).public_key()])
        .expect("valid clients");
    assert!(net.server.is_established(PeerId(1), net.now));
    assert!(!net.server.is_established(PeerId(0), net.now));
    let up = net.seal_up(0, b"after the reload").expect("session");
    net.send(Dir::Up, 0, up);
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.delivered(Dir::Up), [b"after the reload".to_vec()]);
    let down = net.seal_down_to(PeerId(1), 0, b"to the moved client");
    net.send(Dir::Down, 0, down);
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.delivered(Dir::Down), [b"to the moved client".to_vec()]);

    // A bad list changes nothing.
    assert!(net.server.set_clients([other, other]).is_err());
    assert!(net.server.is_established(PeerId(1), net.now));

    // Removed: its data is dropped from now on.
    net.server.set_clients([other]).expect("valid clients");
    let up = net.seal_up(0, b"removed").expect("client session");
    let mut dropped = up;
    assert!(net
        .server
        .handle_datagram(net.now, client_addr(0), &mut dropped)
        .is_err());
    assert_eq!(net.delivered(Dir::Up).len(), 1);

    // Configured again: the initiation it made before is still refused.
    net.server
        .set_clients([other, secret(1).public_key()])
        .expect("valid clients");
    let mut replay = initiation;
    assert!(matches!(
        net.server
            .handle_datagram(net.now, client_addr(0), &mut replay),
        Err(Dropped::StaleTimestamp { peer: PeerId(1) })
    ));
    assert!(!net.server.is_established(PeerId(1), net.now));
}
