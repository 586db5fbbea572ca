//! The client's side of the datagram tunnel: what the TUN gives that is
//! not TCP is scheduled onto the uplinks, sealed and sent to the
//! concentrator's UDP port; what comes back is opened and written to the
//! TUN.
//!
//! The sockets are the uplinks' probe sockets (one per uplink, bound to its
//! address, so policy routing sends it out of that uplink): health opens
//! and closes them as addresses come and go and tells [`Datagrams`]; their
//! readers hand every datagram that is not an old-style probe answer to
//! [`Datagrams::on_datagram`]. Health also feeds each uplink's path
//! estimates to the scheduler, so a line health calls dead carries no
//! datagrams either.
//!
//! Packets reach the TUN already source-NATed by the kernel to the
//! client's tunnel address (`system::nat`); replies written back are
//! mapped to the LAN host by conntrack.
//!
//! The tunnel's MTU is the largest IP packet that fits every uplink once
//! sealed: each uplink's path MTU towards the concentrator (the kernel's,
//! [`crate::sys::path_mtu`], read every few seconds) less the outer IP and
//! UDP headers and [`DATA_OVERHEAD`], the smallest of them, capped by the
//! config's `mtu`. A larger packet from the LAN is cut into IPv4
//! fragments that fit, or refused with ICMP "fragmentation needed" /
//! Packet Too Big ([`crate::wire::fragment`]); the MTU is announced to the
//! concentrator on every path ([`Inner::Mtu`]), which does the same the
//! other way. No sealed datagram then needs the outer datagram fragmented
//! (carrier NATs often drop fragments), but for IPv6 packets up to 1280
//! bytes on paths narrower than that.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{debug, info, trace};

use super::clock::Clock;

use crate::control::snapshot::{PathCounters, TunnelStatus};
use crate::crypto::cookie::RateLimiter;
use crate::crypto::session::SessionError;
use crate::crypto::{Dropped, Initiator, PublicKey, Received, StaticSecret, SystemRng};
use crate::datagram::schedule::{Decision, PathId, PathSettings, Scheduler, MAX_PATHS};
use crate::datagram::SchedulerConfig;
use crate::log_budget::{LogBudget, LOG_WINDOW};
use crate::path::Estimates;
use crate::udp::{self, Socket as UdpSocket};
use crate::wire::flow::{flow_of, Flow};
use crate::wire::fragment::{self, Fit, Fragments};
use crate::wire::tunnel::{
    Inner, PathProbe, ANY_PATH, DATA_OVERHEAD, MTU_LEN, PROBE_LEN, STEER_V6_LEN,
};
use crate::wire::{build_icmp_port_unreachable_for, build_icmp_too_big_for};

/// The timer task wakes at least this often (the initiator's timers are
/// seconds; this bounds how late a handshake retry can be).
const TICK: Duration = Duration::from_millis(250);

/// Room for the largest packet the TUN gives, sealed.
#[cfg(test)]
pub(super) const MAX_SEALED: usize = 65_535 + DATA_OVERHEAD + 1;

/// The site counts as active this long after a datagram.
const ACTIVE_FOR: Duration = Duration::from_secs(5);

/// Each uplink sends a keepalive this often, so the concentrator knows
/// every path's address (its replies and failover use them) even while the
/// scheduler sends nothing on some; and at once on a new socket or
/// session.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);

/// Uplink probes ride the tunnel's session (sealed [`PathProbe`]s, which
/// the concentrator echoes on the same path) while the session has heard
/// from the concentrator this recently; otherwise (no session yet, the
/// site idle and probing slowly, a concentrator restarted and not yet
/// handshaken with) they go as the plain authenticated probes of
/// [`crate::wire::probe`], which any running concentrator answers. So a
/// session gone stale never makes every line look dead (busy, each uplink
/// probes every 30 ms, so a fresh session hears an echo every few ms).
const PROBE_SESSION_FRESH: Duration = Duration::from_millis(150);

/// Packets held while the tunnel's handshake runs: at most this many, for
/// at most [`STAGED_FOR`] (a DNS query sent right after start, or after
/// the session lapsed, goes out once the handshake completes instead of
/// waiting for the resolver's retry).
const MAX_STAGED: usize = 128;
const STAGED_FOR: Duration = Duration::from_secs(3);

/// The uplinks' path MTUs are read this often (an interface's MTU can
/// change, and the kernel's path MTU discovery learns), and at the next
/// tick after an uplink's socket changes.
const MTU_EVERY: Duration = Duration::from_secs(5);

/// The tunnel's MTU before any uplink's is known: a 1500-byte line.
const DEFAULT_LINE_MTU: u32 = 1500;

/// ICMP errors for packets too big for the tunnel, per second and
/// destination the LAN sent to; a burst of as many.
const TOO_BIG_PER_SEC: u64 = 10;
/// Destinations the ICMP rate limiter remembers.
const TOO_BIG_DESTINATIONS: usize = 1024;

/// Everything behind the lock.
struct State {
    initiator: Initiator<SystemRng>,
    scheduler: Scheduler,
    sockets: [Option<Arc<UdpSocket>>; MAX_PATHS],
    established: bool,
    /// Packets dropped because no session was up yet, since the last log.
    no_session: u64,
    /// When the TUN last gave a packet for the tunnel.
    last_packet: Option<Instant>,
    /// When each uplink last announced itself with a keepalive.
    announced: [Option<Instant>; MAX_PATHS],
    /// Packets that came while there was no session, and when.
    staged: VecDeque<(Instant, Vec<u8>)>,
    /// When the session last delivered anything from the concentrator.
    last_heard: Option<Instant>,
    /// The largest IP packet the tunnel carries whole.
    mtu: usize,
    /// An uplink's socket changed since the path MTUs were last read.
    mtu_stale: bool,
    /// ICMP errors for packets too big, per destination.
    too_big: RateLimiter,
    /// Dropped datagrams from the concentrator's address logged (at
    /// `debug`) in the current log window, which started then: anyone on
    /// the path can forge them.
    drop_log: (LogBudget, Instant),
    /// When the last handshake completed.
    handshake_at: Option<Instant>,
    /// Data packets sent and received per path, for the status.
    counters: [PathCounters; MAX_PATHS],
}

/// Dropped datagrams logged per log window.
const DROP_LOGS_PER_WINDOW: u32 = 10;

/// The datagram tunnel of the client.
pub(super) struct Datagrams {
    state: Mutex<State>,
    /// The concentrator's UDP port.
    pub(super) concentrator: SocketAddr,
    v4: IpAddr,
    v6: Option<IpAddr>,
    /// The config's cap on the MTU.
    mtu_cap: Option<u16>,
    /// The clock of handshake timestamps (the concentrator's, as far as
    /// the client knows it).
    clock: Arc<Clock>,
}

impl std::fmt::Debug for Datagrams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datagrams")
            .field("concentrator", &self.concentrator)
            .finish_non_exhaustive()
    }
}

/// Sealed datagrams, each with the uplink socket to send it on.
pub(super) type Sends = Vec<(Arc<UdpSocket>, Vec<u8>)>;

/// What a datagram from the concentrator gave.
#[cfg(test)]
pub(super) struct FromConcentrator<'a> {
    /// An IP packet for the TUN.
    pub(super) packet: Option<&'a [u8]>,
    /// The sequence number of the uplink's probe it echoes.
    pub(super) answer: Option<u64>,
    /// What to send in turn.
    pub(super) sends: Sends,
}

/// What a packet from the TUN turned into.
pub(super) enum Outgoing {
    /// The packet sealed into the caller's buffer, this many bytes of it,
    /// to send on each of these uplinks (a bit per uplink index).
    Sealed(usize, u8),
    /// Messages to send, each on an uplink's socket (handshakes, packets
    /// held until a handshake completed).
    Send(Vec<(Arc<UdpSocket>, Vec<u8>)>),
    /// An answer for the TUN (QUIC refused with an ICMP unreachable).
    Reply(Vec<u8>),
    /// Nothing.
    Nothing,
}

impl Datagrams {
    /// A tunnel to `concentrator` with this identity, for uplinks with
    /// these settings (config order), from tunnel addresses `(v4, v6)`, its
    /// MTU at most `mtu_cap`, its handshakes stamped by `clock`.
    pub(super) fn new(
        identity: (StaticSecret, PublicKey),
        concentrator: SocketAddr,
        scheduler: SchedulerConfig,
        uplinks: &[PathSettings],
        (v4, v6): (IpAddr, Option<IpAddr>),
        mtu_cap: Option<u16>,
        clock: Arc<Clock>,
    ) -> Self {
        let now = Instant::now();
        let mut sched = Scheduler::new(scheduler, now);
        for (i, settings) in uplinks.iter().enumerate().take(MAX_PATHS) {
            if let Ok(id) = u8::try_from(i) {
                // In range: `take(MAX_PATHS)`.
                let _ = sched.add_path(now, PathId(id), *settings);
            }
        }
        let (secret, public) = identity;
        Self {
            state: Mutex::new(State {
                initiator: Initiator::new(secret, public, SystemRng::new(), now),
                scheduler: sched,
                sockets: Default::default(),
                established: false,
                no_session: 0,
                handshake_at: None,
                counters: [PathCounters::default(); MAX_PATHS],
                drop_log: (LogBudget::new(DROP_LOGS_PER_WINDOW), Instant::now()),
                last_packet: None,
                announced: [None; MAX_PATHS],
                staged: VecDeque::with_capacity(MAX_STAGED),
                last_heard: None,
                mtu: tunnel_mtu(DEFAULT_LINE_MTU, concentrator.is_ipv6(), mtu_cap),
                mtu_stale: true,
                too_big: RateLimiter::with_limits(
                    TOO_BIG_PER_SEC,
                    TOO_BIG_PER_SEC,
                    TOO_BIG_DESTINATIONS,
                ),
            }),
            concentrator,
            v4,
            v6,
            mtu_cap,
            clock,
        }
    }

    /// Reads each uplink's path MTU towards the concentrator (outside the
    /// lock: a socket and a route lookup each) and sets the tunnel's; a
    /// change is announced on every path at once.
    fn refresh_mtu(&self) {
        let locals: Vec<IpAddr> = {
            let mut state = self.state();
            state.mtu_stale = false;
            state
                .sockets
                .iter()
                .flatten()
                .filter_map(|s| s.local_addr().ok())
                .map(|a| a.ip())
                .collect()
        };
        let mut smallest: Option<u32> = None;
        for local in locals {
            match crate::sys::path_mtu(local, self.concentrator) {
                Ok(mtu) => smallest = Some(smallest.map_or(mtu, |s| s.min(mtu))),
                Err(e) => debug!(%local, error = %e, "cannot read an uplink's path MTU"),
            }
        }
        let Some(line) = smallest else { return };
        let mtu = tunnel_mtu(line, self.concentrator.is_ipv6(), self.mtu_cap);
        let mut state = self.state();
        if state.mtu != mtu {
            info!(mtu, line_mtu = line, "datagram tunnel MTU");
            state.mtu = mtu;
            state.announced = [None; MAX_PATHS];
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Uplink `index` has this socket now (`None`: none, it has no
    /// address).
    pub(super) fn set_socket(&self, index: usize, socket: Option<Arc<UdpSocket>>) {
        let mut state = self.state();
        if let Some(slot) = state.sockets.get_mut(index) {
            *slot = socket;
        }
        if let Some(announced) = state.announced.get_mut(index) {
            *announced = None;
        }
        state.mtu_stale = true;
    }

    /// The scheduling policy of `config` applies from now on (a config
    /// reload).
    pub(super) fn set_policy(&self, config: &SchedulerConfig) {
        self.state().scheduler.set_policy(Instant::now(), config);
    }

    /// Uplink `index` is a path with these settings now (it joined, or
    /// its `backup` flag changed), or none (`None`: it was removed; its
    /// flows move at their next packet).
    pub(super) fn set_path(&self, index: usize, settings: Option<PathSettings>) {
        let Ok(id) = u8::try_from(index) else { return };
        let now = Instant::now();
        let mut state = self.state();
        match settings {
            // Past the last path: the uplink carries TCP alone.
            Some(settings) => {
                if let Err(e) = state.scheduler.add_path(now, PathId(id), settings) {
                    debug!(error = %e, "the uplink gets no datagram path");
                }
            }
            None => state.scheduler.remove_path(now, PathId(id)),
        }
        if settings.is_none() {
            if let Some(slot) = state.sockets.get_mut(index) {
                *slot = None;
            }
        }
    }

    /// Uplink `index`'s path core says this now.
    pub(super) fn update(&self, index: usize, now: Instant, estimates: &Estimates) {
        let Ok(id) = u8::try_from(index) else { return };
        let mut state = self.state();
        state.scheduler.update(PathId(id), now, estimates);
        state
            .scheduler
            .set_rate(PathId(id), now, estimates.rx_bytes_per_sec);
    }

    /// Schedules and seals one packet the TUN gave (not TCP).
    /// `sealed` must hold [`MAX_SEALED`] bytes.
    #[cfg(test)]
    pub(super) fn on_tun_packet(&self, packet: &[u8], sealed: &mut [u8]) -> Outgoing {
        let now = Instant::now();
        self.tun_packet(&mut self.state(), now, packet, sealed)
    }

    /// Schedules and seals the packets the TUN gave (not TCP; where each
    /// lies in `buf`) under one lock: into `batch` for the uplinks of its
    /// bits (the sockets they had then in `sockets`), what else goes out
    /// (handshakes, fragments) into `sends`, answers for the TUN into
    /// `replies`.
    pub(super) fn on_tun_packets(
        &self,
        buf: &[u8],
        packets: &[Range<usize>],
        batch: &mut udp::SendBatch<u8>,
        sockets: &mut Sockets,
        sends: &mut Sends,
        replies: &mut Vec<Vec<u8>>,
    ) {
        let now = Instant::now();
        let mut state = self.state();
        sockets.clone_from(&state.sockets);
        for range in packets {
            let Some(packet) = buf.get(range.clone()) else {
                continue;
            };
            // Sized by the caller to hold its batch.
            let Some(room) = batch.room(packet.len() + DATA_OVERHEAD + 1) else {
                continue;
            };
            match self.tun_packet(&mut state, now, packet, room) {
                Outgoing::Sealed(len, bits) => {
                    batch.commit(bits, len);
                    count_sent(&mut state.counters, bits, packet.len());
                }
                Outgoing::Send(more) => sends.extend(more),
                Outgoing::Reply(reply) => replies.push(reply),
                Outgoing::Nothing => {}
            }
        }
    }

    fn tun_packet(
        &self,
        state: &mut State,
        now: Instant,
        packet: &[u8],
        sealed: &mut [u8],
    ) -> Outgoing {
        let Ok(flow) = flow_of(packet) else {
            return Outgoing::Nothing;
        };
        // The kernel's own link-local and multicast chatter on the TUN
        // (router solicitations, MLD) stays here.
        if !is_global_ish(flow.key.dst) || !self.is_ours(flow.key.src) {
            trace!(src = %flow.key.src, dst = %flow.key.dst, "not tunnelled");
            return Outgoing::Nothing;
        }
        state.last_packet = Some(now);
        let Some(routed) = route_fitted(state, now, &flow, packet, sealed) else {
            if !state.too_big.allow(now, flow.key.dst) {
                return Outgoing::Nothing;
            }
            let mtu = fragment::announced_mtu(packet, state.mtu);
            trace!(len = packet.len(), mtu, "too big for the tunnel");
            return build_icmp_too_big_for(packet, mtu).map_or(Outgoing::Nothing, Outgoing::Reply);
        };
        match routed {
            Routed::Out(out) => out,
            Routed::NoSession => {
                // Held until the handshake completes (as WireGuard's staged
                // packets), which starts now rather than at the next tick.
                if state.staged.len() < MAX_STAGED {
                    state.staged.push_back((now, packet.to_vec()));
                } else {
                    state.no_session += 1;
                }
                run_timers(state, now, &self.clock);
                Outgoing::Send(drain(state))
            }
        }
    }

    /// The tunnel's state and each uplink's (by index) packet counts, for
    /// the status.
    pub(super) fn status(&self) -> (TunnelStatus, Vec<PathCounters>) {
        let now = Instant::now();
        let state = self.state();
        let tunnel = TunnelStatus {
            session: state.initiator.is_established(now),
            last_handshake_unix: state.handshake_at.map(crate::control::snapshot::unix_at),
            mtu: state.mtu as u64,
            cipher: state.initiator.cipher().map(|c| c.name().to_owned()),
        };
        (tunnel, state.counters.to_vec())
    }

    /// Whether datagrams went through lately (so health probes at the
    /// busy rate).
    pub(super) fn active(&self, now: Instant) -> bool {
        self.state()
            .last_packet
            .is_some_and(|at| now.saturating_duration_since(at) < ACTIVE_FOR)
    }

    fn is_ours(&self, addr: IpAddr) -> bool {
        addr == self.v4 || Some(addr) == self.v6
    }

    /// Probe `seq` of uplink `index` sealed in the session, if it is
    /// fresh ([`PROBE_SESSION_FRESH`]); `None`: send a plain probe.
    pub(super) fn seal_probe(&self, index: usize, seq: u64) -> Option<Vec<u8>> {
        let path = u8::try_from(index).ok()?;
        let now = Instant::now();
        let mut state = self.state();
        let fresh = state.established
            && state
                .last_heard
                .is_some_and(|at| now.saturating_duration_since(at) < PROBE_SESSION_FRESH);
        if !fresh {
            return None;
        }
        // The echo carries `sent_us` back: here the probe's sequence number.
        let probe = PathProbe {
            path,
            seq,
            sent_us: seq,
            ..PathProbe::default()
        };
        let mut out = [0; DATA_OVERHEAD + PROBE_LEN];
        let len = state
            .initiator
            .seal(now, path, &Inner::Probe(probe), &mut out)
            .ok()?;
        Some(out[..len].to_vec())
    }

    /// Handles a datagram uplink `index` received from the concentrator:
    /// the IP packet to write to the TUN, if it carried one; the sequence
    /// number of this uplink's probe it answers, if it is an echo; what to
    /// send.
    #[cfg(test)]
    pub(super) fn on_datagram<'a>(
        &self,
        index: usize,
        bytes: &'a mut [u8],
    ) -> FromConcentrator<'a> {
        let now = Instant::now();
        let mut sends = Vec::new();
        let (range, answer) = self.datagram(&mut self.state(), now, index, bytes, &mut sends);
        FromConcentrator {
            packet: range.and_then(|r| bytes.get(r)),
            answer,
            sends,
        }
    }

    /// Handles the datagrams uplink `index` received from the concentrator
    /// in one batch (where each lies in `bytes`), under one lock, opened in
    /// place: where the IP packets for the TUN lie go to `packets`, the
    /// sequence numbers of this uplink's probes they answer to `answers`,
    /// what to send in turn to `sends`.
    pub(super) fn on_datagrams(
        &self,
        index: usize,
        bytes: &mut [u8],
        datagrams: &[Range<usize>],
        packets: &mut Vec<Range<usize>>,
        answers: &mut Vec<u64>,
        sends: &mut Sends,
    ) {
        let now = Instant::now();
        let mut state = self.state();
        for range in datagrams {
            let Some(datagram) = bytes.get_mut(range.clone()) else {
                continue;
            };
            let (packet, answer) = self.datagram(&mut state, now, index, datagram, sends);
            if let Some(packet) = packet {
                packets.push(range.start + packet.start..range.start + packet.end);
            }
            answers.extend(answer);
        }
    }

    /// One datagram from the concentrator on uplink `index`, opened in
    /// place: where the IP packet it carried lies in `bytes`, the probe
    /// sequence number it answers; what to send goes to `sends`.
    fn datagram(
        &self,
        state: &mut State,
        now: Instant,
        index: usize,
        bytes: &mut [u8],
        sends: &mut Sends,
    ) -> (Option<Range<usize>>, Option<u64>) {
        let Ok(path) = u8::try_from(index) else {
            return (None, None);
        };
        let (base, len) = (bytes.as_ptr() as usize, bytes.len());
        let received = state.initiator.handle_datagram(now, path, bytes);
        if received.is_ok() {
            state.last_heard = Some(now);
        }
        sends.extend(drain(state));
        let mut answer = None;
        let packet = match received {
            Ok(Received::Data {
                inner: Inner::Ip(packet),
                ..
            }) => {
                if let Some(c) = state.counters.get_mut(usize::from(path)) {
                    c.rx_packets += 1;
                    c.rx_bytes += packet.len() as u64;
                }
                steer(state, now, packet, path, sends);
                udp::range_in(base, len, packet)
            }
            Ok(Received::Data {
                inner: Inner::Probe(echo),
                ..
            }) => {
                answer = (echo.path == path).then_some(echo.echo_us);
                None
            }
            Ok(Received::Handshake { .. }) => {
                if !state.established {
                    let cipher = state.initiator.cipher().map(|c| c.name());
                    info!(concentrator = %self.concentrator, cipher, "datagram tunnel up");
                }
                state.established = true;
                state.handshake_at = Some(now);
                // The new session's concentrator may be a restarted one.
                state.announced = [None; MAX_PATHS];
                flush_staged(state, now, sends);
                None
            }
            Ok(_) => None,
            // The later copies of a packet sent on several paths.
            Err(Dropped::Session(SessionError::Replay(_))) => None,
            Err(dropped) => {
                if state.drop_log.0.take() {
                    debug!(uplink = index, why = %dropped, "datagram from the concentrator dropped");
                }
                None
            }
        };
        (packet, answer)
    }

    /// Runs the initiator's timers; what to send.
    fn on_tick(&self) -> Vec<(Arc<UdpSocket>, Vec<u8>)> {
        let now = Instant::now();
        let mut state = self.state();
        run_timers(&mut state, now, &self.clock);
        if now.saturating_duration_since(state.drop_log.1) >= LOG_WINDOW {
            state.drop_log.1 = now;
            let dropped = state.drop_log.0.end_window();
            if dropped > 0 {
                debug!(
                    suppressed = dropped,
                    "{dropped} more datagrams from the concentrator's address dropped in the \
                     last {} s",
                    LOG_WINDOW.as_secs()
                );
            }
        }
        if state.no_session > 0 {
            debug!(
                dropped = state.no_session,
                "datagrams dropped: the tunnel's handshake is not complete"
            );
            state.no_session = 0;
        }
        let mut sends = drain(&mut state);
        if state.established {
            announce(&mut state, now, &mut sends);
        }
        sends
    }
}

/// Counts a data packet of `len` bytes sealed for the paths of `bits`.
fn count_sent(counters: &mut [PathCounters; MAX_PATHS], bits: u8, len: usize) {
    for (i, c) in counters.iter_mut().enumerate() {
        if bits & (1 << i) != 0 {
            c.tx_packets += 1;
            c.tx_bytes += len as u64;
        }
    }
}

/// Tells the concentrator to send the flow of `packet` (which arrived on
/// path `arrived`) on another path, if the scheduler says so: a flow that
/// only receives moves for load, or comes back to its path, this way.
fn steer(
    state: &mut State,
    now: Instant,
    packet: &[u8],
    arrived: u8,
    sends: &mut Vec<(Arc<UdpSocket>, Vec<u8>)>,
) {
    let Ok(flow) = flow_of(packet) else { return };
    let key = flow.key.reversed();
    let to = state.scheduler.on_received(now, &key, PathId(arrived));
    log_moved(&mut state.scheduler);
    let Some(to) = to else {
        return;
    };
    let Some(socket) = state.sockets.get(usize::from(to.0)).cloned().flatten() else {
        return;
    };
    let mut out = [0; DATA_OVERHEAD + STEER_V6_LEN];
    if let Ok(len) = state
        .initiator
        .seal(now, to.0, &Inner::Steer(key), &mut out)
    {
        trace!(uplink = to.0, flow = ?key, "steering a flow");
        sends.push((socket, out[..len].to_vec()));
    }
}

/// Logs a flow the scheduler moved off a full line (at most one a second).
fn log_moved(scheduler: &mut Scheduler) {
    if let Some((from, to)) = scheduler.take_moved() {
        debug!(from = from.0, to = to.0, "a flow moved off a full uplink");
    }
}

/// The tunnel's MTU on each uplink that has not announced itself for
/// [`ANNOUNCE_EVERY`] (the path's keepalive too).
fn announce(state: &mut State, now: Instant, sends: &mut Vec<(Arc<UdpSocket>, Vec<u8>)>) {
    for i in 0..MAX_PATHS {
        let (Some(socket), Ok(path)) = (state.sockets[i].clone(), u8::try_from(i)) else {
            continue;
        };
        if state.announced[i].is_some_and(|at| now.saturating_duration_since(at) < ANNOUNCE_EVERY) {
            continue;
        }
        let mut out = [0; DATA_OVERHEAD + MTU_LEN];
        let mtu = Inner::Mtu(u16::try_from(state.mtu).unwrap_or(u16::MAX));
        if let Ok(len) = state.initiator.seal(now, path, &mtu, &mut out) {
            sends.push((socket, out[..len].to_vec()));
            state.announced[i] = Some(now);
        }
    }
}

/// Runs the initiator's timers when they are due, once an uplink has a
/// socket: an initiation made before then would be dropped, and the
/// initiator, counting it as sent, would retry only after the rekey
/// timeout (5 s of no datagrams after a start).
fn run_timers(state: &mut State, now: Instant, clock: &Clock) {
    if !state.sockets.iter().any(Option::is_some) {
        return;
    }
    if state.initiator.poll_timeout().is_some_and(|at| at <= now) {
        if let Err(e) = state.initiator.handle_timeout(now, clock.unix_now()) {
            debug!(error = %e, "datagram tunnel timers");
        }
    }
}

/// What [`route`] made of a packet.
enum Routed {
    Out(Outgoing),
    /// No session to seal it with (yet).
    NoSession,
}

/// Schedules and seals `packet` of `flow` into `out`.
fn route(state: &mut State, now: Instant, flow: &Flow, packet: &[u8], out: &mut [u8]) -> Routed {
    let decision = state.scheduler.schedule(now, flow, packet.len());
    log_moved(&mut state.scheduler);
    let paths = match decision {
        Decision::Send(paths) => paths,
        Decision::Drop => return Routed::Out(Outgoing::Nothing),
        Decision::Block => {
            return Routed::Out(
                build_icmp_port_unreachable_for(packet).map_or(Outgoing::Nothing, Outgoing::Reply),
            )
        }
    };
    let mut bits = 0u8;
    let mut count = 0;
    let mut only = 0;
    for id in paths.iter() {
        if state
            .sockets
            .get(usize::from(id.0))
            .is_some_and(Option::is_some)
        {
            bits |= 1 << id.0;
            count += 1;
            only = id.0;
        }
    }
    // One path: sealed for it. Several (redundant): sealed once for any
    // path, the same bytes on each, so the concentrator's replay window
    // drops the copies after the first.
    let path = match count {
        0 => return Routed::Out(Outgoing::Nothing),
        1 => only,
        _ => ANY_PATH,
    };
    match state.initiator.seal(now, path, &Inner::Ip(packet), out) {
        Ok(len) => Routed::Out(Outgoing::Sealed(len, bits)),
        Err(_) => Routed::NoSession,
    }
}

/// Routes `packet` of `flow` as the tunnel's MTU allows: whole (sealed
/// into `out`), or as fragments that fit; `None`: too big, and it may not
/// be cut (the caller refuses it).
fn route_fitted(
    state: &mut State,
    now: Instant,
    flow: &Flow,
    packet: &[u8],
    out: &mut [u8],
) -> Option<Routed> {
    match fragment::fit(packet, state.mtu) {
        Fit::Send => Some(route(state, now, flow, packet, out)),
        Fit::Fragment => Some(route_fragments(state, now, flow, packet)),
        Fit::Refuse => None,
    }
}

/// Cuts `packet` of `flow` into fragments that fit the MTU and seals each
/// for the path(s) the scheduler gives the flow.
fn route_fragments(state: &mut State, now: Instant, flow: &Flow, packet: &[u8]) -> Routed {
    let Some(mut fragments) = Fragments::new(packet, state.mtu) else {
        return Routed::Out(Outgoing::Nothing);
    };
    let mut piece = vec![0; state.mtu];
    let mut sends = Vec::with_capacity(fragments.count());
    while let Some(len) = fragments.next_into(&mut piece) {
        let Some(piece) = piece.get(..len) else { break };
        let mut out = vec![0; len + DATA_OVERHEAD + 1];
        match route(state, now, flow, piece, &mut out) {
            Routed::Out(Outgoing::Sealed(len, bits)) => {
                for socket in sockets_of(state, bits) {
                    sends.push((socket, out[..len].to_vec()));
                }
            }
            Routed::Out(Outgoing::Send(more)) => sends.extend(more),
            Routed::Out(_) => {}
            Routed::NoSession => return Routed::NoSession,
        }
    }
    Routed::Out(Outgoing::Send(sends))
}

/// The tunnel's MTU over a line of `line_mtu` bytes: less the outer IP
/// (IPv6 when the concentrator is) and UDP headers and a data message's
/// overhead; at least the config's range allows, at most `cap`.
fn tunnel_mtu(line_mtu: u32, outer_v6: bool, cap: Option<u16>) -> usize {
    let outer = if outer_v6 { 40 + 8 } else { 20 + 8 };
    let floor = *crate::config::client::DatagramConfig::MTU_RANGE.start();
    let inner = usize::try_from(line_mtu)
        .unwrap_or(usize::MAX)
        .saturating_sub(outer + DATA_OVERHEAD + 1)
        .clamp(usize::from(floor), usize::from(u16::MAX));
    cap.map_or(inner, |cap| inner.min(usize::from(cap.max(floor))))
}

/// The packets held for want of a session that are still fresh, sealed
/// now that there is one; what does not seal is dropped (and counted).
fn flush_staged(state: &mut State, now: Instant, sends: &mut Vec<(Arc<UdpSocket>, Vec<u8>)>) {
    while let Some((at, packet)) = state.staged.pop_front() {
        if now.saturating_duration_since(at) > STAGED_FOR {
            state.no_session += 1;
            continue;
        }
        let Ok(flow) = flow_of(&packet) else { continue };
        let mut out = vec![0; packet.len() + DATA_OVERHEAD + 1];
        // Too big: its sender hears nothing; it sent before the tunnel was up.
        let Some(routed) = route_fitted(state, now, &flow, &packet, &mut out) else {
            continue;
        };
        match routed {
            Routed::Out(Outgoing::Sealed(len, bits)) => {
                for socket in sockets_of(state, bits) {
                    sends.push((socket, out[..len].to_vec()));
                }
            }
            Routed::Out(Outgoing::Send(more)) => sends.extend(more),
            Routed::Out(_) => {}
            Routed::NoSession => state.no_session += 1,
        }
    }
}

/// The uplinks' sockets, by index.
pub(super) type Sockets = [Option<Arc<UdpSocket>>; MAX_PATHS];

/// The sockets of the uplinks of `bits`.
fn sockets_of(state: &State, bits: u8) -> impl Iterator<Item = Arc<UdpSocket>> + '_ {
    state
        .sockets
        .iter()
        .enumerate()
        .filter(move |(i, _)| bits & (1 << i) != 0)
        .filter_map(|(_, s)| s.clone())
}

/// The initiator's queued messages, each with the socket to send it on:
/// its own path, or for initiations the first uplink that has a socket and
/// carries.
fn drain(state: &mut State) -> Vec<(Arc<UdpSocket>, Vec<u8>)> {
    let mut sends = Vec::new();
    while let Some(transmit) = state.initiator.poll_transmit() {
        let socket = match transmit.path {
            Some(path) => state.sockets.get(usize::from(path)).cloned().flatten(),
            None => state.sockets.iter().flatten().next().cloned(),
        };
        if let Some(socket) = socket {
            sends.push((socket, transmit.bytes));
        }
    }
    sends
}

/// Whether packets to `addr` are worth tunnelling: not link-local, not
/// multicast, not unspecified.
fn is_global_ish(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            !(a.is_multicast() || a.is_link_local() || a.is_unspecified() || a.is_broadcast())
        }
        IpAddr::V6(a) => {
            !(a.is_multicast() || a.is_unspecified() || (a.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// Sends datagrams to the concentrator; a full socket buffer or a dead
/// line is loss, as for any datagram.
pub(super) fn send(concentrator: SocketAddr, sends: Vec<(Arc<UdpSocket>, Vec<u8>)>) {
    for (socket, bytes) in sends {
        if let Err(e) = socket.try_send_to(&bytes, concentrator) {
            trace!(error = %e, "datagram not sent");
        }
    }
}

/// Sends the runs of `batch` to the concentrator, each on the sockets of
/// its uplinks (bits into `sockets`), with GSO where the kernel has it.
pub(super) fn send_batch(concentrator: SocketAddr, batch: &udp::SendBatch<u8>, sockets: &Sockets) {
    for (bits, bytes, segment) in batch.runs() {
        for (i, socket) in sockets.iter().enumerate() {
            let Some(socket) = socket.as_ref().filter(|_| bits & (1 << i) != 0) else {
                continue;
            };
            if let Err(e) = socket.try_send_segments(concentrator, bytes, segment) {
                trace!(error = %e, "datagrams not sent");
            }
        }
    }
}

/// Runs the initiator's timers forever.
pub(super) async fn timers(datagrams: Arc<Datagrams>) -> Result<(), super::ClientError> {
    let mut interval = tokio::time::interval(TICK);
    let mut mtu_read: Option<Instant> = None;
    loop {
        interval.tick().await;
        let now = Instant::now();
        let due = mtu_read.is_none_or(|at| now.saturating_duration_since(at) >= MTU_EVERY);
        if due || datagrams.state().mtu_stale {
            datagrams.refresh_mtu();
            mtu_read = Some(now);
        }
        let sends = datagrams.on_tick();
        send(datagrams.concentrator, sends);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Responder, ResponderTransmit};
    use crate::path::{GapHistogram, Limits, Verdict};

    fn usable() -> Estimates {
        Estimates {
            verdict: Verdict::Usable,
            srtt: Some(Duration::from_millis(20)),
            rttvar: Duration::from_millis(1),
            min_rtt: Some(Duration::from_millis(20)),
            loss: 0.0,
            rx_bytes_per_sec: 0,
            tx_bytes_per_sec: 0,
            limits: Limits {
                quiet: Duration::from_millis(120),
                busy: Duration::from_millis(600),
                hold: Duration::from_millis(250),
            },
            damping: 0.0,
            gaps: GapHistogram::default(),
            changes: 0,
            false_alarms: 0,
        }
    }

    fn udp_from(src: [u8; 4]) -> Vec<u8> {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ipv4(src, [198, 51, 100, 10], 64)
            .udp(5353, 53)
            .write(&mut out, b"a query sent before the handshake")
            .expect("udp");
        out
    }

    fn sent(out: Outgoing, sealed: &[u8]) -> Vec<Vec<u8>> {
        match out {
            Outgoing::Send(sends) => sends.into_iter().map(|(_, bytes)| bytes).collect(),
            Outgoing::Sealed(len, bits) => (0..bits.count_ones())
                .map(|_| sealed[..len].to_vec())
                .collect(),
            _ => Vec::new(),
        }
    }

    #[tokio::test]
    async fn the_first_handshake_waits_for_an_uplink_socket_instead_of_being_lost() {
        let client = StaticSecret::generate().expect("key");
        let concentrator = StaticSecret::generate().expect("key").public_key();
        let datagrams = Datagrams::new(
            (client, concentrator),
            "127.0.0.1:7300".parse().expect("addr"),
            SchedulerConfig::default(),
            &[PathSettings::default()],
            ("10.77.0.2".parse().expect("addr"), None),
            None,
            Arc::new(Clock::new()),
        );
        assert!(
            datagrams.on_tick().is_empty(),
            "no socket yet: nothing sent"
        );
        let socket = loopback_socket().await;
        datagrams.set_socket(0, Some(socket));
        let sent = datagrams.on_tick();
        assert_eq!(sent.len(), 1, "the initiation goes at the next tick");
        assert_eq!(sent[0].1[0], crate::wire::tunnel::TYPE_INITIATION);
    }

    /// A batched UDP socket on loopback.
    async fn loopback_socket() -> Arc<UdpSocket> {
        let io = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Arc::new(UdpSocket::new(io).expect("socket"))
    }

    /// The tunnel's handshake, its initiation sent at the next tick from
    /// `src` and the response handed back on uplink 0.
    fn handshake(
        datagrams: &Datagrams,
        responder: &mut Responder<SystemRng>,
        src: SocketAddr,
        now: Instant,
    ) {
        let mut initiation = datagrams.on_tick()[0].1.clone();
        assert!(matches!(
            responder.handle_datagram(now, src, &mut initiation),
            Ok(Received::Handshake { .. })
        ));
        let mut response = responder.poll_transmit().expect("a response").bytes;
        datagrams.on_datagram(0, &mut response);
    }

    /// A client tunnel with `uplinks` uplinks and the concentrator's
    /// responder that knows it.
    fn pair(uplinks: usize) -> (Datagrams, Responder<SystemRng>) {
        let client = StaticSecret::generate().expect("key");
        let concentrator = StaticSecret::generate().expect("key");
        let responder = Responder::new(
            concentrator.clone(),
            [client.public_key()],
            SystemRng::new(),
        )
        .expect("responder");
        let datagrams = Datagrams::new(
            (client, concentrator.public_key()),
            "127.0.0.1:7300".parse().expect("addr"),
            SchedulerConfig::default(),
            &vec![PathSettings::default(); uplinks],
            ("10.77.0.2".parse().expect("addr"), None),
            None,
            Arc::new(Clock::new()),
        );
        (datagrams, responder)
    }

    #[tokio::test]
    async fn a_packet_sent_before_the_handshake_goes_out_once_it_completes() {
        let (datagrams, mut responder) = pair(1);
        let socket = loopback_socket().await;
        let src = socket.local_addr().expect("addr");
        datagrams.set_socket(0, Some(socket));
        datagrams.update(0, Instant::now(), &usable());

        let packet = udp_from([10, 77, 0, 2]);
        let mut sealed = vec![0; MAX_SEALED];
        let out = datagrams.on_tun_packet(&packet, &mut sealed);
        let first = sent(out, &sealed);
        assert_eq!(first.len(), 1, "the handshake starts at once: {first:?}");
        assert_eq!(first[0][0], crate::wire::tunnel::TYPE_INITIATION);

        let mut initiation = first[0].clone();
        let now = Instant::now();
        assert!(matches!(
            responder.handle_datagram(now, src, &mut initiation),
            Ok(Received::Handshake { .. })
        ));
        let ResponderTransmit {
            bytes: mut response,
            ..
        } = responder.poll_transmit().expect("a response");
        let FromConcentrator {
            packet: none,
            sends,
            ..
        } = datagrams.on_datagram(0, &mut response);
        assert!(none.is_none());
        let mut delivered = Vec::new();
        for (_, mut bytes) in sends {
            if let Ok(Received::Data {
                inner: Inner::Ip(ip),
                ..
            }) = responder.handle_datagram(now, src, &mut bytes)
            {
                delivered.push(ip.to_vec());
            }
        }
        assert_eq!(delivered, [packet], "the held packet, once, intact");
    }

    #[test]
    fn the_mtu_is_the_line_less_the_outer_headers_and_the_seal() {
        assert_eq!(tunnel_mtu(1500, false, None), 1500 - 28 - DATA_OVERHEAD - 1);
        assert_eq!(tunnel_mtu(1500, false, None), 1438);
        assert_eq!(tunnel_mtu(1500, true, None), 1418);
        assert_eq!(
            tunnel_mtu(1492, false, Some(1400)),
            1400,
            "the config caps it"
        );
        assert_eq!(tunnel_mtu(1400, false, Some(1450)), 1338);
        assert_eq!(tunnel_mtu(0, false, None), 576, "never below 576");
        assert_eq!(tunnel_mtu(u32::MAX, false, None), 65_535);
    }

    /// A UDP packet from the client's tunnel address of `payload` bytes.
    fn big_udp(payload: usize, dont_fragment: bool) -> Vec<u8> {
        crate::wire::test_packets::sized_udp(false, payload, dont_fragment)
    }

    #[tokio::test]
    async fn packets_too_big_for_the_tunnel_are_cut_or_refused_with_the_mtu() {
        let (datagrams, mut responder) = pair(1);
        let socket = loopback_socket().await;
        let src = socket.local_addr().expect("addr");
        datagrams.set_socket(0, Some(socket));
        datagrams.update(0, Instant::now(), &usable());
        let now = Instant::now();
        handshake(&datagrams, &mut responder, src, now);
        let mut sealed = vec![0; MAX_SEALED];

        // 1438 bytes fit a 1500-byte line sealed.
        let fits = big_udp(1438 - 28, true);
        assert!(matches!(
            datagrams.on_tun_packet(&fits, &mut sealed),
            Outgoing::Sealed(len, _) if len == 1438 + DATA_OVERHEAD + 1
        ));

        // One more byte with DF set: refused, with the MTU to use.
        let df = big_udp(1438 - 28 + 1, true);
        let Outgoing::Reply(icmp) = datagrams.on_tun_packet(&df, &mut sealed) else {
            panic!("a DF packet over the MTU gets an ICMP error");
        };
        assert_eq!((icmp[20], icmp[21]), (3, 4), "fragmentation needed");
        assert_eq!(u16::from_be_bytes([icmp[26], icmp[27]]), 1438);
        assert_eq!(&icmp[16..20], &[10, 77, 0, 2], "to the sender");
        assert_eq!(&icmp[28..48], &df[..20], "quoting its header");

        // Without DF: cut into fragments that each fit, intact inside.
        let whole = big_udp(3000, false);
        let Outgoing::Send(sends) = datagrams.on_tun_packet(&whole, &mut sealed) else {
            panic!("a packet that may be fragmented is sent as fragments");
        };
        assert_eq!(sends.len(), 3);
        let mut payload = Vec::new();
        for (_, mut bytes) in sends {
            assert!(bytes.len() <= 1438 + DATA_OVERHEAD + 1);
            let Ok(Received::Data {
                inner: Inner::Ip(fragment),
                ..
            }) = responder.handle_datagram(now, src, &mut bytes)
            else {
                panic!("each fragment opens at the concentrator");
            };
            let word = u16::from_be_bytes([fragment[6], fragment[7]]);
            assert_eq!(usize::from(word & 0x1fff) * 8, payload.len(), "in order");
            payload.extend_from_slice(&fragment[20..]);
        }
        assert_eq!(payload, whole[20..], "the datagram, whole");

        // The ICMP errors are rate-limited (attackers and loops).
        let answered = (0..100)
            .filter(|_| {
                matches!(
                    datagrams.on_tun_packet(&df, &mut sealed),
                    Outgoing::Reply(_)
                )
            })
            .count();
        assert!(answered < 20, "{answered} of 100 answered at once");
    }

    #[tokio::test]
    async fn probes_ride_a_fresh_session_and_their_echoes_are_answers() {
        let (datagrams, mut responder) = pair(2);
        let socket = loopback_socket().await;
        let src = socket.local_addr().expect("addr");
        datagrams.set_socket(0, Some(socket.clone()));
        datagrams.set_socket(1, Some(socket));
        assert_eq!(datagrams.seal_probe(1, 7), None, "no session: plain probes");

        let now = Instant::now();
        handshake(&datagrams, &mut responder, src, now);

        let mut sealed = datagrams.seal_probe(1, 42).expect("a fresh session");
        let Ok(Received::Data {
            peer,
            path,
            inner: Inner::Probe(probe),
        }) = responder.handle_datagram(now, src, &mut sealed)
        else {
            panic!("the concentrator reads a path probe");
        };
        assert_eq!((path, probe.path, probe.sent_us), (1, 1, 42));
        let echo = PathProbe {
            path,
            echo_us: probe.sent_us,
            ..PathProbe::default()
        };
        let mut out = [0; 128];
        let len = responder
            .seal(now, peer, path, &Inner::Probe(echo), &mut out)
            .expect("seal the echo");
        let mut on_other = out[..len].to_vec();
        assert_eq!(
            datagrams.on_datagram(0, &mut on_other).answer,
            None,
            "an echo that came on another uplink answers nothing"
        );
        let len = responder
            .seal(now, peer, path, &Inner::Probe(echo), &mut out)
            .expect("seal the echo");
        assert_eq!(
            datagrams.on_datagram(1, &mut out[..len]).answer,
            Some(42),
            "the echo answers probe 42 of uplink 1"
        );
        // Silent for longer than PROBE_SESSION_FRESH: plain probes again.
        std::thread::sleep(PROBE_SESSION_FRESH + Duration::from_millis(20));
        assert_eq!(datagrams.seal_probe(1, 43), None);
    }
}
