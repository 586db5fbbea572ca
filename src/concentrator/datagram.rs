//! The concentrator's side of the datagram tunnel: the one UDP port (shared
//! with the uplink probes of [`super::probe`]) and the exit's TUN.
//!
//! From a client: a datagram goes to the [`Responder`]; what authenticates
//! as an IP packet is checked (its source must be the client's own tunnel
//! address, its destination must pass the [`Policy`] and not be another
//! client's) and written to the TUN. A path probe is echoed on the path it
//! came on. Anything that does not authenticate is dropped without a word.
//!
//! To a client: a packet the TUN gives is sealed for the client that owns
//! its destination address and sent on the path the client itself used
//! last for that flow, or on all of them if the client sent it on several
//! (the client's scheduler decides, from its path cores, and the
//! concentrator mirrors it: DNS the client sent redundantly is answered
//! redundantly). Only live paths count: one the client was not heard on
//! (data or its uplink probes, every 30 ms while it is busy) for
//! [`STALE_AFTER`] longer than on another is taken as down, so a stream
//! towards the client moves off a dead line as quickly as the client's
//! own, and back once the line is heard again. A flow the client has not
//! sent on lately goes on the live path it last sent data on. A steer
//! from the client (its scheduler moved a flow that only receives) sets
//! the flow's path to the one the steer came on; a flow's path is kept as
//! long as packets of it go out.
//!
//! Each client announces its MTU (the largest IP packet all its paths
//! carry whole once sealed, [`Inner::Mtu`]); a larger packet towards it is
//! cut into IPv4 fragments that fit, or, if it may not be (DF set, IPv6),
//! dropped and answered with ICMP "fragmentation needed" / Packet Too Big
//! (written to the TUN: conntrack maps it back to the sender), at most
//! [`TOO_BIG_PER_SEC`] a second per sender.
//!
//! The responder and the per-client path table sit behind one mutex, held
//! for the handling of one packet and never across an await.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{debug, info, trace, warn};

use super::accept::Clients;
use super::policy::Policy;
use crate::control::snapshot::{unix_at, PathCounters, PeerTunnel};
use crate::crypto::cookie::RateLimiter;
use crate::crypto::{Dropped, PeerId, Received, Responder, SystemRng};
use crate::datagram::schedule::MAX_PATHS;
use crate::log_budget::{LogBudget, LOG_WINDOW};
use crate::udp;
use crate::wire::convert::ClientId;
use crate::wire::flow::{flow_of, FlowKey};
use crate::wire::fragment::{self, Fit, Fragments};
use crate::wire::probe::MAGIC;
use crate::wire::tunnel::{Inner, PathProbe, ANY_PATH, DATA_OVERHEAD, TYPE_INITIATION};
use crate::wire::{build_icmp_too_big_for, coalesce, vnet};

/// Largest datagram read from the UDP socket or the TUN.
const MAX_DATAGRAM: usize = 65_535;

/// A flow's paths are mirrored for this long after the client last sent on
/// it, steered it or a packet of it went out; later replies take the
/// client's most recent path.
const MIRROR_FOR: Duration = Duration::from_secs(30);

/// A path not heard from for this much longer than the client's freshest
/// path is taken as down. The client probes every path every 30 ms while
/// it has traffic (mostly within a few ms of each other), so this is five
/// missed probes.
const STALE_AFTER: Duration = Duration::from_millis(150);

/// Flows remembered per client at most; the table is cleared when full
/// (replies then take the most recent path until the client sends again).
const MAX_FLOWS_PER_CLIENT: usize = 16_384;

/// How often expired sessions are swept.
const TICK: Duration = Duration::from_secs(1);

/// More handshake initiations than this in a second put the responder
/// under load for the next second: initiations must then carry a cookie
/// (mac2), which a spoofed source cannot get.
const LOAD_INITIATIONS_PER_SEC: u32 = 200;

/// At most this many dropped datagrams are logged (at `debug`) per log
/// window.
const DROP_LOGS_PER_WINDOW: u32 = 10;

/// ICMP errors for packets too big for a client's MTU, per second and
/// sender (anyone on the internet can send one towards a client it has a
/// flow with); a burst of as many.
const TOO_BIG_PER_SEC: u64 = 10;
/// Senders the ICMP rate limiter remembers.
const TOO_BIG_SOURCES: usize = 4096;

/// The least MTU a client may announce: IPv4's 576, which every host
/// reassembles.
const MIN_CLIENT_MTU: u16 = 576;

/// One client of the tunnel.
#[derive(Debug)]
struct Peer {
    /// Its public key (a reload that changes it starts a new peer).
    key: crate::crypto::PublicKey,
    /// Its tunnel addresses.
    v4: Option<IpAddr>,
    v6: Option<IpAddr>,
    /// Where each of its paths was last heard from, and when.
    paths: [Option<(SocketAddr, Instant)>; MAX_PATHS],
    /// Per flow (as the client sends it): a bit per path it used last
    /// (all bits: it sent on several), and when.
    flows: HashMap<FlowKey, (u8, Instant)>,
    /// The path it sent its last data packet on alone.
    last_data: Option<usize>,
    /// Probe sequence per path, for the echoes.
    probe_seq: [u64; MAX_PATHS],
    /// The largest IP packet it takes whole, as it announced; `None`
    /// until it has (packets then go as they are).
    mtu: Option<usize>,
    /// When its last handshake completed.
    handshake_at: Option<Instant>,
    /// Its data packets, for the status (`tx`: towards it).
    counters: PathCounters,
}

impl Peer {
    /// A client of the tunnel not heard from yet.
    fn new(key: crate::crypto::PublicKey, v4: Option<IpAddr>, v6: Option<IpAddr>) -> Self {
        Self {
            key,
            v4,
            v6,
            paths: [None; MAX_PATHS],
            flows: HashMap::new(),
            last_data: None,
            probe_seq: [0; MAX_PATHS],
            mtu: None,
            handshake_at: None,
            counters: PathCounters::default(),
        }
    }

    fn owns(&self, addr: IpAddr) -> bool {
        Some(addr) == self.v4 || Some(addr) == self.v6
    }

    /// The paths to send a reply of `flow` (keyed as the client sends it)
    /// on, as a bit set. A mirror that is used lives on: a flow that only
    /// receives keeps the path the client chose (or steered it to).
    fn paths_for(&mut self, now: Instant, flow: Option<&FlowKey>) -> u8 {
        let live = self.live(now);
        if let Some((bits, at)) = flow.and_then(|f| self.flows.get_mut(f)) {
            if now.saturating_duration_since(*at) < MIRROR_FOR && *bits & live != 0 {
                *at = now;
                return *bits & live;
            }
        }
        if let Some(i) = self.last_data.filter(|&i| live & (1 << i) != 0) {
            return 1 << i;
        }
        // The path heard from last.
        self.paths
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.map(|(_, at)| (i, at)))
            .max_by_key(|&(_, at)| at)
            .map_or(0, |(i, _)| 1 << i)
    }

    /// Paths heard from within the mirror time and not [`STALE_AFTER`]
    /// behind the freshest.
    fn live(&self, now: Instant) -> u8 {
        let Some(freshest) = self.paths.iter().flatten().map(|&(_, at)| at).max() else {
            return 0;
        };
        let mut bits = 0;
        for (i, path) in self.paths.iter().enumerate() {
            if path.is_some_and(|(_, at)| {
                now.saturating_duration_since(at) < MIRROR_FOR
                    && freshest.saturating_duration_since(at) <= STALE_AFTER
            }) {
                bits |= 1 << i;
            }
        }
        bits
    }

    /// Replies of `flow` (keyed as the client sends it) go on the paths
    /// of `bits` from `now`. A full table is cleared first.
    fn mirror(&mut self, flow: FlowKey, bits: u8, now: Instant) {
        if self.flows.len() >= MAX_FLOWS_PER_CLIENT {
            self.flows.clear();
        }
        self.flows.insert(flow, (bits, now));
    }

    /// The path whose address is `src`.
    fn path_of(&self, src: SocketAddr) -> Option<usize> {
        self.paths
            .iter()
            .position(|p| p.is_some_and(|(addr, _)| addr == src))
    }
}

/// Everything behind the lock.
#[derive(Debug)]
struct State {
    responder: Responder<SystemRng>,
    peers: Vec<Peer>,
    by_addr: HashMap<IpAddr, PeerId>,
    /// The tunnel's clients by the id their uplink probes carry.
    by_id: HashMap<ClientId, PeerId>,
    /// The destination policy (a reload replaces it).
    policy: Arc<Policy>,
    /// Dropped datagrams logged in the current log window.
    drop_log: LogBudget,
    /// Initiations in the current second, and when it started.
    initiations: (Instant, u32),
    /// Since when cookies are required, and the initiations counted
    /// since: one line when the load starts, one when it is over.
    load: Option<(Instant, u64)>,
    /// ICMP errors for packets too big for a client, per sender.
    too_big: RateLimiter,
}

/// The datagram side of the concentrator.
pub(super) struct Datagrams {
    state: Mutex<State>,
    tun: tun_rs::AsyncDevice,
    /// Whether the TUN's packets carry a virtio-net header.
    vnet: bool,
    /// Writes to the TUN, a flow's datagrams joined where it can.
    writer: udp::TunWriter,
}

impl std::fmt::Debug for Datagrams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datagrams").finish_non_exhaustive()
    }
}

/// A client of the tunnel as the config gives it.
#[derive(Debug, Clone)]
pub(super) struct TunnelClient {
    pub(super) id: ClientId,
    pub(super) public_key: crate::crypto::PublicKey,
    pub(super) v4: Option<IpAddr>,
    pub(super) v6: Option<IpAddr>,
}

impl Datagrams {
    pub(super) fn new(
        responder: Responder<SystemRng>,
        clients: Vec<TunnelClient>,
        (tun, vnet): (tun_rs::AsyncDevice, bool),
        policy: Arc<Policy>,
    ) -> Self {
        let mut state = State {
            responder,
            peers: Vec::new(),
            by_addr: HashMap::new(),
            by_id: HashMap::new(),
            policy,
            drop_log: LogBudget::new(DROP_LOGS_PER_WINDOW),
            initiations: (Instant::now(), 0),
            load: None,
            too_big: RateLimiter::with_limits(TOO_BIG_PER_SEC, TOO_BIG_PER_SEC, TOO_BIG_SOURCES),
        };
        state.set_peers(clients);
        Self {
            state: Mutex::new(state),
            tun,
            vnet,
            writer: udp::TunWriter::new(vnet),
        }
    }

    /// A config reload: the tunnel's clients and the policy from now on.
    /// A client whose id and key stay keeps its session, paths and
    /// counters; one removed (or with another key) loses its session at
    /// once. On an error (a key the responder refuses) nothing changes.
    pub(super) fn reload(
        &self,
        clients: Vec<TunnelClient>,
        policy: Arc<Policy>,
    ) -> Result<(), crate::crypto::ResponderError> {
        let mut state = self.state();
        state
            .responder
            .set_clients(clients.iter().map(|c| c.public_key))?;
        state.set_peers(clients);
        state.policy = policy;
        Ok(())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Each tunnel client's session and traffic, by id, for the status.
    pub(super) fn status(&self) -> HashMap<ClientId, PeerTunnel> {
        let now = Instant::now();
        let state = self.state();
        state
            .by_id
            .iter()
            .filter_map(|(id, &peer)| {
                let client = state.peers.get(peer.0)?;
                let tunnel = PeerTunnel {
                    session: state.responder.is_established(peer, now),
                    last_handshake_unix: client.handshake_at.map(unix_at),
                    paths: u64::from(client.live(now).count_ones()),
                    cipher: state.responder.cipher(peer).map(|c| c.name().to_owned()),
                    counters: client.counters,
                };
                Some((id.clone(), tunnel))
            })
            .collect()
    }
}

impl State {
    /// Sets the tunnel's clients, in the responder's order (a client's
    /// [`PeerId`] is its position). A client whose id and key were there
    /// before keeps its state, under its (maybe new) addresses.
    fn set_peers(&mut self, clients: Vec<TunnelClient>) {
        let mut old: HashMap<ClientId, Peer> = HashMap::with_capacity(self.peers.len());
        let mut peers: Vec<Option<Peer>> = std::mem::take(&mut self.peers)
            .into_iter()
            .map(Some)
            .collect();
        for (id, peer) in self.by_id.drain() {
            if let Some(peer) = peers.get_mut(peer.0).and_then(Option::take) {
                old.insert(id, peer);
            }
        }
        self.by_addr.clear();
        for (i, client) in clients.into_iter().enumerate() {
            for addr in [client.v4, client.v6].into_iter().flatten() {
                self.by_addr.insert(addr, PeerId(i));
            }
            let peer = match old.remove(&client.id) {
                Some(peer) if peer.key == client.public_key => Peer {
                    v4: client.v4,
                    v6: client.v6,
                    ..peer
                },
                _ => Peer::new(client.public_key, client.v4, client.v6),
            };
            self.by_id.insert(client.id, PeerId(i));
            self.peers.push(peer);
        }
    }

    /// Client `id`'s uplink probe, which verified, came from `src`: that
    /// path is alive (if it is one of the client's tunnel paths).
    fn heard_probe(&mut self, id: &ClientId, src: SocketAddr, now: Instant) {
        let Some(&peer) = self.by_id.get(id) else {
            return;
        };
        let Some(client) = self.peers.get_mut(peer.0) else {
            return;
        };
        if let Some(i) = client.path_of(src) {
            client.paths[i] = Some((src, now));
        }
    }
}

fn transient(e: &std::io::Error) -> bool {
    // ICMP errors from earlier sends show up on a later receive.
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
            | std::io::ErrorKind::WouldBlock
    ) || e.raw_os_error() == Some(libc::EHOSTUNREACH)
        || e.raw_os_error() == Some(libc::ENETUNREACH)
}

/// Datagrams handled per wake-up at most before the UDP task lets others
/// run (a receive takes at most [`udp::RECV_MESSAGES`] messages, each up
/// to 64 datagrams with GRO).
const UDP_BUDGET: usize = 64;

/// Serves the UDP port until it fails: probes (old format) and the
/// tunnel's messages. Each receive takes what is queued, up to a batch:
/// handled under one lock, then the answers (probe echoes, handshake
/// responses) go out, then the packets go to the TUN.
pub(super) async fn serve_udp(
    socket: Arc<udp::Socket>,
    clients: Arc<Clients>,
    datagrams: Option<Arc<Datagrams>>,
) {
    let mut batch = udp::RecvBatch::new();
    let mut received: Vec<(SocketAddr, Range<usize>)> = Vec::with_capacity(UDP_BUDGET);
    let mut replies: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    let mut packets: Vec<Range<usize>> = Vec::with_capacity(UDP_BUDGET);
    let mut handled = 0;
    loop {
        match socket.recv(&mut batch).await {
            Ok(()) => {}
            Err(e) if transient(&e) => continue,
            Err(e) => {
                warn!(error = %e, "the UDP socket failed; probes and datagrams stop");
                return;
            }
        }
        let now = Instant::now();
        received.clear();
        received.extend(batch.datagrams());
        handled += received.len();
        let bytes = batch.bytes_mut();
        handle_batch(
            &clients,
            datagrams.as_deref(),
            now,
            &mut received,
            bytes,
            &mut replies,
            &mut packets,
        );
        // Echoes first: the client's health times them.
        for (dst, reply) in replies.drain(..) {
            if let Err(e) = socket.send_to(&reply, dst).await {
                debug!(%dst, error = %e, "cannot answer a client");
            }
        }
        if let Some(datagrams) = &datagrams {
            let (failed, error) = datagrams.writer.write(&datagrams.tun, bytes, &packets);
            if let Some(e) = error {
                debug!(error = %e, failed, "writing to the TUN failed");
            }
            packets.clear();
        }
        if handled >= UDP_BUDGET {
            handled = 0;
            tokio::task::yield_now().await;
        }
    }
}

/// Handles the datagrams of one receive (`received`: each one's source and
/// where it lies in `bytes`) under one lock, taken at the first that needs
/// it: what to answer goes to `replies`, where the packets for the TUN lie
/// to `packets`.
fn handle_batch(
    clients: &Clients,
    datagrams: Option<&Datagrams>,
    now: Instant,
    received: &mut Vec<(SocketAddr, Range<usize>)>,
    bytes: &mut [u8],
    replies: &mut Vec<(SocketAddr, Vec<u8>)>,
    packets: &mut Vec<Range<usize>>,
) {
    let mut state = None;
    // The policy as the batch found it (one clone per batch, not per
    // packet; a reload's new one applies from the next batch).
    let mut policy: Option<Arc<Policy>> = None;
    for (src, range) in received.drain(..) {
        let Some(datagram) = bytes.get_mut(range.clone()) else {
            continue;
        };
        if datagram.starts_with(&MAGIC) {
            if let Some((reply, id)) =
                super::probe::answer(clients, datagram, crate::auth::unix_ms(), now)
            {
                if let Some(datagrams) = datagrams {
                    state
                        .get_or_insert_with(|| datagrams.state())
                        .heard_probe(&id, src, now);
                }
                replies.push((src, reply));
            }
            continue;
        }
        let Some(datagrams) = datagrams else {
            continue;
        };
        let state = state.get_or_insert_with(|| datagrams.state());
        let policy = policy.get_or_insert_with(|| Arc::clone(&state.policy));
        if let Some(packet) = from_client(state, policy, now, src, datagram, replies) {
            packets.push(range.start + packet.start..range.start + packet.end);
        }
    }
}

/// Handles one datagram from `src` that is not a probe: what to answer
/// goes to `replies`; the IP packet for the TUN, if it carried one that
/// passes, is returned as where it lies in `bytes` (opened in place).
fn from_client(
    state: &mut State,
    policy: &Policy,
    now: Instant,
    src: SocketAddr,
    bytes: &mut [u8],
    replies: &mut Vec<(SocketAddr, Vec<u8>)>,
) -> Option<Range<usize>> {
    if bytes.first() == Some(&TYPE_INITIATION) {
        count_initiation(state, now);
    }
    let (base, len) = (bytes.as_ptr() as usize, bytes.len());
    let received = state.responder.handle_datagram(now, src, bytes);
    while let Some(transmit) = state.responder.poll_transmit() {
        replies.push((transmit.dst, transmit.bytes));
    }
    match received {
        Ok(Received::Data { peer, path, inner }) => {
            let client = state.peers.get_mut(peer.0)?;
            // A packet sent on several paths: its path is where it came
            // from (each client uplink announces itself with a
            // keepalive under its own path id first).
            let index = if path == ANY_PATH {
                client.path_of(src)
            } else {
                Some(usize::from(path)).filter(|&i| i < MAX_PATHS)
            };
            if path != ANY_PATH && index.is_none() {
                return None;
            }
            if let Some(i) = index {
                client.paths[i] = Some((src, now));
            }
            match inner {
                Inner::Ip(packet) => {
                    let packet_len = packet.len() as u64;
                    match check_packet(policy, &state.by_addr, client, peer, packet) {
                        Ok(key) => {
                            client.counters.rx_packets += 1;
                            client.counters.rx_bytes += packet_len;
                            // One path: that one; several: every live one.
                            let bits = match index.filter(|_| path != ANY_PATH) {
                                Some(i) => {
                                    client.last_data = Some(i);
                                    1 << i
                                }
                                None => u8::MAX,
                            };
                            client.mirror(key, bits, now);
                            udp::range_in(base, len, packet)
                        }
                        Err(why) => {
                            log_drop(&mut state.drop_log, src, &why);
                            None
                        }
                    }
                }
                Inner::Probe(probe) => {
                    let index = index?;
                    let seq = client.probe_seq[index];
                    client.probe_seq[index] += 1;
                    let echo = PathProbe {
                        path,
                        seq,
                        sent_us: 0,
                        echo_us: probe.sent_us,
                        echo_delay_us: 0,
                        rx_bytes: 0,
                        rx_packets: 0,
                    };
                    let mut out = [0; 128];
                    if let Ok(len) =
                        state
                            .responder
                            .seal(now, peer, path, &Inner::Probe(echo), &mut out)
                    {
                        replies.push((src, out[..len].to_vec()));
                    }
                    None
                }
                Inner::Steer(key) => {
                    // Only for the client's own flows, on a path of its
                    // own (not "any").
                    if let Some(i) = index.filter(|_| path != ANY_PATH && client.owns(key.src)) {
                        client.mirror(key, 1 << i, now);
                    }
                    None
                }
                Inner::Mtu(mtu) => {
                    let mtu = usize::from(mtu.max(MIN_CLIENT_MTU));
                    if client.mtu != Some(mtu) {
                        info!(client = peer.0, mtu, "client's datagram tunnel MTU");
                    }
                    client.mtu = Some(mtu);
                    None
                }
                Inner::Keepalive => None,
            }
        }
        Ok(Received::Handshake { peer }) => {
            let cipher = state.responder.cipher(peer).map(|c| c.name());
            info!(%src, client = peer.0, cipher, "datagram tunnel handshake");
            if let Some(client) = state.peers.get_mut(peer.0) {
                client.handshake_at = Some(now);
            }
            None
        }
        Ok(Received::Cookie) => None,
        Err(dropped) => {
            let why = dropped.to_string();
            if !matches!(dropped, Dropped::Malformed(_)) {
                log_drop(&mut state.drop_log, src, &why);
            }
            None
        }
    }
}

/// Counts an initiation. Once more than [`LOAD_INITIATIONS_PER_SEC`]
/// arrive within a second, cookies are required for the rest of that
/// second and all of the next. Logged once when the load starts and once
/// when it is over, however long it lasts.
fn count_initiation(state: &mut State, now: Instant) {
    roll_initiations(state, now);
    state.initiations.1 += 1;
    if let Some((_, seen)) = &mut state.load {
        *seen += 1;
    }
    if state.initiations.1 == LOAD_INITIATIONS_PER_SEC + 1 {
        state.responder.set_under_load(true);
        if state.load.is_none() {
            warn!(
                limit = LOAD_INITIATIONS_PER_SEC,
                "more than {LOAD_INITIATIONS_PER_SEC} handshake initiations within a second; \
                 requiring cookies until it calms down"
            );
            state.load = Some((now, u64::from(state.initiations.1)));
        }
    }
}

/// Starts a new second of initiation counting once the last one is over:
/// under load for this one if the last had more than
/// [`LOAD_INITIATIONS_PER_SEC`]; a second that did not ends the load.
fn roll_initiations(state: &mut State, now: Instant) {
    let (since, count) = &mut state.initiations;
    if now.saturating_duration_since(*since) < Duration::from_secs(1) {
        return;
    }
    let loaded = *count > LOAD_INITIATIONS_PER_SEC
        && now.saturating_duration_since(*since) < Duration::from_secs(2);
    *since = now;
    *count = 0;
    state.responder.set_under_load(loaded);
    if loaded {
        return;
    }
    if let Some((started, seen)) = state.load.take() {
        info!(
            initiations = seen,
            secs = now.saturating_duration_since(started).as_secs(),
            "handshake load is over; cookies no longer required"
        );
    }
}

/// Whether client `peer` may send `packet`: from its own address, to a
/// destination the policy allows and no client's. Its flow key if so.
fn check_packet(
    policy: &Policy,
    by_addr: &HashMap<IpAddr, PeerId>,
    client: &Peer,
    peer: PeerId,
    packet: &[u8],
) -> Result<FlowKey, String> {
    let flow = flow_of(packet).map_err(|e| format!("client {} sent a bad packet: {e}", peer.0))?;
    let key = flow.key;
    if !client.owns(key.src) {
        return Err(format!(
            "client {} sent a packet from {}, not its tunnel address",
            peer.0, key.src
        ));
    }
    if by_addr.contains_key(&key.dst) {
        return Err(format!("client {} sent a packet to another client", peer.0));
    }
    let port = key.ports().map_or(0, |(_, dst)| dst);
    policy
        .check_host(SocketAddr::new(key.dst, port))
        .map_err(|denied| format!("client {}: {denied}", peer.0))?;
    Ok(key)
}

/// Logs why a datagram was dropped, at most [`DROP_LOGS_PER_WINDOW`] a
/// log window (attackers choose what arrives); the tick logs how many more.
fn log_drop(log: &mut LogBudget, src: SocketAddr, why: &str) {
    if log.take() {
        debug!(%src, why, "datagram dropped");
    }
}

/// Packets read from the TUN per wake-up at most.
const TUN_BATCH: usize = 64;

/// The TUN read buffer: room for [`TUN_BATCH`] full-sized packets and
/// one of the largest.
const TUN_READ_ROOM: usize = TUN_BATCH * 1500 + MAX_DATAGRAM;

/// Where each datagram of a batch towards the clients goes: the paths'
/// addresses.
type Targets = [Option<SocketAddr>; MAX_PATHS];

/// Reads the TUN until it fails: each packet is sealed to the client that
/// owns its destination (cut to the client's MTU first, or refused). A
/// wake-up reads what is queued, up to [`TUN_BATCH`] packets, seals them
/// under one lock into one buffer, and sends runs of equal-sized
/// datagrams to the same path with GSO. No allocation per packet, but for
/// a packet too big for the client.
pub(super) async fn serve_tun(socket: Arc<udp::Socket>, datagrams: Arc<Datagrams>) {
    let head = if datagrams.vnet { vnet::LEN } else { 0 };
    let mut buf = vec![0; TUN_READ_ROOM + TUN_BATCH * head];
    // A UDP super-packet's datagrams, one super-packet at a time.
    let mut split = vec![
        0;
        if datagrams.vnet {
            coalesce::MAX_SPLIT_LEN
        } else {
            0
        }
    ];
    let mut split_ranges: Vec<Range<usize>> = Vec::with_capacity(coalesce::MAX_SPLIT);
    let mut read: Vec<Range<usize>> = Vec::with_capacity(TUN_BATCH);
    // Sealing adds at most DATA_OVERHEAD + 1 per packet, fragmenting a
    // header and that per fragment: twice the read room holds any batch.
    let mut batch = udp::SendBatch::<Targets>::new(2 * TUN_READ_ROOM);
    let mut refused: Vec<Vec<u8>> = Vec::new();
    loop {
        let n = match datagrams.tun.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "reading the datagram TUN failed; datagrams to clients stop");
                return;
            }
        };
        udp::read_queued_tun(
            &datagrams.tun,
            &mut buf,
            n,
            head + MAX_DATAGRAM,
            TUN_BATCH,
            &mut read,
        );
        {
            let now = Instant::now();
            let mut state = datagrams.state();
            for range in &read {
                let Some(framed) = buf.get_mut(range.clone()) else {
                    continue;
                };
                match unframe(framed, head) {
                    Some(Unframed::Packet(packet)) => {
                        to_client(&mut state, now, packet, &mut batch, &mut refused);
                    }
                    Some(Unframed::Super(packet, gso_size)) => {
                        split_ranges.clear();
                        let cut = coalesce::split(packet, gso_size, &mut split, |r| {
                            split_ranges.push(r);
                        });
                        if let Err(e) = cut {
                            trace!(error = %e, "UDP super-packet from the TUN dropped");
                        }
                        for r in &split_ranges {
                            if let Some(datagram) = split.get(r.clone()) {
                                to_client(&mut state, now, datagram, &mut batch, &mut refused);
                            }
                        }
                    }
                    None => {}
                }
            }
        }
        for (targets, bytes, segment) in batch.runs() {
            for addr in targets.iter().flatten() {
                if let Err(e) = socket.send_segments(*addr, bytes, segment).await {
                    debug!(%addr, error = %e, "cannot send a datagram to a client");
                }
            }
        }
        batch.clear();
        for icmp in refused.drain(..) {
            if let Err(e) = datagrams.writer.write_one(&datagrams.tun, &icmp) {
                debug!(error = %e, "writing an ICMP error to the TUN failed");
            }
        }
    }
}

/// What a TUN read holds.
enum Unframed<'a> {
    /// One IP packet, its checksum complete.
    Packet(&'a [u8]),
    /// A UDP super-packet and its segment size, to be cut up.
    Super(&'a [u8], usize),
}

/// The IP packet of a TUN read, behind a virtio-net header of `head`
/// bytes (0: none): a partial checksum finished, a UDP super-packet
/// (UDP segmentation offload) as such, another super-packet dropped (TCP
/// segmentation is not asked for).
fn unframe(framed: &mut [u8], head: usize) -> Option<Unframed<'_>> {
    if head == 0 {
        return Some(Unframed::Packet(framed));
    }
    let header = vnet::Header::parse(framed).ok()?;
    let packet = framed.get_mut(head..)?;
    if header.is_udp_gso() {
        return Some(Unframed::Super(packet, usize::from(header.gso_size)));
    }
    if let Err(e) = vnet::finish_checksum(&header, packet) {
        trace!(error = %e, len = packet.len(), "TUN packet dropped");
        return None;
    }
    Some(Unframed::Packet(packet))
}

/// Seals one packet from the TUN for the client that owns its destination
/// into `batch` (its fragments, if it must be cut), or refuses it with an
/// ICMP error for the TUN.
fn to_client(
    state: &mut State,
    now: Instant,
    packet: &[u8],
    batch: &mut udp::SendBatch<Targets>,
    refused: &mut Vec<Vec<u8>>,
) {
    let Ok(flow) = flow_of(packet) else { return };
    let Some(&peer) = state.by_addr.get(&flow.key.dst) else {
        return;
    };
    let Some(client) = state.peers.get_mut(peer.0) else {
        return;
    };
    let fit = client
        .mtu
        .map_or(Fit::Send, |mtu| fragment::fit(packet, mtu));
    let mtu = client.mtu.unwrap_or(MAX_DATAGRAM);
    if fit == Fit::Refuse {
        if !state.too_big.allow(now, flow.key.src) {
            return;
        }
        if let Some(icmp) = build_icmp_too_big_for(packet, fragment::announced_mtu(packet, mtu)) {
            refused.push(icmp);
        }
        return;
    }
    let bits = client.paths_for(now, Some(&flow.key.reversed()));
    let mut targets: Targets = [None; MAX_PATHS];
    let mut count = 0;
    let mut only = 0;
    for (i, path) in client.paths.iter().enumerate() {
        if let (true, Some((addr, _)), Ok(id)) = (bits & (1 << i) != 0, path, u8::try_from(i)) {
            targets[count] = Some(*addr);
            count += 1;
            only = id;
        }
    }
    // Several paths: sealed once, the same bytes on each (the client's
    // replay window drops the later copies).
    let path = match count {
        0 => return,
        1 => only,
        _ => ANY_PATH,
    };
    client.counters.tx_packets += 1;
    client.counters.tx_bytes += packet.len() as u64;
    if fit == Fit::Fragment {
        let Some(mut fragments) = Fragments::new(packet, mtu) else {
            return;
        };
        let mut piece = vec![0; mtu];
        while let Some(len) = fragments.next_into(&mut piece) {
            let Some(piece) = piece.get(..len) else { break };
            seal_into(state, now, peer, path, piece, &targets, batch);
        }
    } else {
        seal_into(state, now, peer, path, packet, &targets, batch);
    }
}

/// Seals `packet` for `peer` on `path` into `batch`, for `targets`.
fn seal_into(
    state: &mut State,
    now: Instant,
    peer: PeerId,
    path: u8,
    packet: &[u8],
    targets: &Targets,
    batch: &mut udp::SendBatch<Targets>,
) {
    let Some(out) = batch.room(packet.len() + DATA_OVERHEAD + 1) else {
        return;
    };
    if let Ok(len) = state
        .responder
        .seal(now, peer, path, &Inner::Ip(packet), out)
    {
        batch.commit(*targets, len);
    }
}

/// Sweeps expired sessions every [`TICK`], forever.
pub(super) async fn tick(datagrams: Arc<Datagrams>) {
    let mut interval = tokio::time::interval(TICK);
    let window = u32::try_from(LOG_WINDOW.as_secs() / TICK.as_secs().max(1)).unwrap_or(1);
    for ticks in 1u32.. {
        interval.tick().await;
        let now = Instant::now();
        let mut state = datagrams.state();
        state.responder.handle_timeout(now);
        // The end of a load is noticed here too when initiations stop.
        roll_initiations(&mut state, now);
        if ticks.is_multiple_of(window.max(1)) {
            let dropped = state.drop_log.end_window();
            if dropped > 0 {
                debug!(
                    suppressed = dropped,
                    "{dropped} more datagrams dropped in the last {} s",
                    LOG_WINDOW.as_secs()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::flow::Demux;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::new("192.0.2.1".parse().expect("addr"), port)
    }

    fn peer() -> Peer {
        Peer::new(
            crate::crypto::StaticSecret::from_bytes([1; 32]).public_key(),
            None,
            None,
        )
    }

    fn flow() -> FlowKey {
        FlowKey {
            protocol: 17,
            src: "10.77.0.2".parse().expect("addr"),
            dst: "198.51.100.10".parse().expect("addr"),
            demux: Demux::Ports { src: 4000, dst: 53 },
        }
    }

    #[test]
    fn replies_follow_the_clients_path_and_leave_a_silent_one() {
        let t0 = Instant::now();
        let mut p = peer();
        p.paths[0] = Some((addr(1), t0));
        p.paths[1] = Some((addr(2), t0));
        p.flows.insert(flow(), (1 << 0, t0));
        p.last_data = Some(0);
        assert_eq!(p.paths_for(t0, Some(&flow())), 0b01);
        // Path 1 keeps being heard (probes), path 0 falls silent.
        let mut now = t0;
        for _ in 0..5 {
            now += Duration::from_millis(30);
            p.paths[1] = Some((addr(2), now));
        }
        assert_eq!(p.paths_for(now, Some(&flow())), 0b01, "150 ms: not yet");
        now += Duration::from_millis(30);
        p.paths[1] = Some((addr(2), now));
        assert_eq!(
            p.paths_for(now, Some(&flow())),
            0b10,
            "180 ms silent: moved"
        );
        assert_eq!(p.paths_for(now, None), 0b10, "other flows too");
        // Path 0 heard again: the flow goes back to it.
        p.paths[0] = Some((addr(1), now));
        assert_eq!(p.paths_for(now, Some(&flow())), 0b01);
    }

    #[test]
    fn a_flow_sent_on_every_path_is_answered_on_every_live_one() {
        let t0 = Instant::now();
        let mut p = peer();
        p.paths[0] = Some((addr(1), t0));
        p.paths[1] = Some((addr(2), t0));
        p.paths[2] = Some((addr(3), t0 - Duration::from_secs(31)));
        p.flows.insert(flow(), (u8::MAX, t0));
        assert_eq!(p.paths_for(t0, Some(&flow())), 0b011);
        assert_eq!(p.path_of(addr(2)), Some(1));
        assert_eq!(p.path_of(addr(9)), None);
    }

    #[test]
    fn a_forgotten_flow_takes_the_live_path_of_the_last_data() {
        let t0 = Instant::now();
        let mut p = peer();
        p.paths[0] = Some((addr(1), t0));
        p.paths[1] = Some((addr(2), t0 + Duration::from_millis(10)));
        p.last_data = Some(0);
        let later = t0 + Duration::from_millis(20);
        assert_eq!(p.paths_for(later, Some(&flow())), 0b01);
        p.flows.insert(flow(), (1 << 1, t0 - MIRROR_FOR));
        assert_eq!(p.paths_for(later, Some(&flow())), 0b01, "mirror expired");
        assert_eq!(peer().paths_for(later, None), 0, "nothing heard: nowhere");
    }
}
