//! The TUN reader: every packet goes through the redirect's flow table and
//! back into the TUN, rewritten. In strict mode a new flow's SYN is held
//! while the tunnel reaches the server, then released or answered with the
//! failure the LAN host would have seen.

use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, trace, warn};

use super::datagram::Sockets;
use super::redirect::{Checksum, Decision, Flow, FlowKey};
use super::{ClientError, Shared};
use crate::log_budget::{LogBudget, LOG_WINDOW};
use crate::udp;
use crate::wire::coalesce::{self, SplitError};
use crate::wire::{build_icmp_unreachable_for, build_rst_for, classify, vnet, Protocol, TcpPacket};

/// Largest IP packet read from the TUN (a super-packet with offloads).
const MAX_PACKET: usize = 65_535;

/// Packets read from the TUN per wake-up at most.
const TUN_BATCH: usize = 64;

/// The read buffer without offloads: room for [`TUN_BATCH`] full-sized
/// packets and one of the largest.
const READ_ROOM: usize = TUN_BATCH * 1500 + MAX_PACKET;

/// The read buffer with offloads: a wake-up reads at least this many
/// super-packets (or [`TUN_BATCH`] packets).
const SUPER_PACKETS: usize = 8;

/// Room behind the read buffer for the datagrams of UDP super-packets
/// cut up for the tunnel: two of the largest. When it is full, what the
/// wake-up gathered for the tunnel so far goes out first.
const SPLIT_ROOM: usize = 2 * coalesce::MAX_SPLIT_LEN;

/// Reads the TUN until it fails. A wake-up reads what is queued, up to
/// [`TUN_BATCH`] packets: TCP goes through the redirect one by one; the
/// rest is sealed for the datagram tunnel under one lock into one buffer
/// and sent in runs of equal-sized datagrams per uplink (GSO).
///
/// With offloads each packet comes behind its [`vnet`] header: TCP may be a
/// super-packet with a partial checksum, rewritten as such and written
/// back with the same header; a UDP super-packet is cut into its
/// datagrams behind the read buffer; a partial checksum of anything else
/// is finished here before it is sealed.
pub(super) async fn run(shared: Arc<Shared>) -> Result<(), ClientError> {
    let offload = shared.tun.offload();
    let (head, room) = if offload {
        (
            vnet::LEN,
            TUN_BATCH * 1500 + SUPER_PACKETS * (vnet::LEN + MAX_PACKET),
        )
    } else {
        (0, READ_ROOM)
    };
    let split_room = if offload { SPLIT_ROOM } else { 0 };
    let mut buf = vec![0; room + split_room];
    let mut read: Vec<Range<usize>> = Vec::with_capacity(TUN_BATCH);
    let mut tunnelled: Vec<Range<usize>> = Vec::with_capacity(TUN_BATCH);
    // Sealing adds at most DATA_OVERHEAD + 1 per packet (fragments a
    // header more each): twice the read and split rooms hold any batch.
    let mut out = Outgoing {
        batch: udp::SendBatch::<u8>::new(2 * (room + split_room)),
        sockets: Default::default(),
        sends: Vec::new(),
        replies: Vec::new(),
    };
    let mut full = FullLog::default();
    loop {
        let n = shared
            .tun
            .recv(&mut buf[..room])
            .await
            .map_err(|source| ClientError::TunIo {
                name: shared.tun_name.clone(),
                source,
            })?;
        udp::read_queued_tun(
            &shared.tun,
            &mut buf[..room],
            n,
            head + MAX_PACKET,
            TUN_BATCH,
            &mut read,
        );
        tunnelled.clear();
        // Bytes of the split room in use.
        let mut split_used = 0;
        for framed in &read {
            let header = if offload {
                match buf.get(framed.clone()).map(vnet::Header::parse) {
                    Some(Ok(header)) => Some(header),
                    _ => {
                        trace!(len = framed.len(), "TUN read without its virtio-net header");
                        continue;
                    }
                }
            } else {
                None
            };
            let range = framed.start + head..framed.end;
            let Some(packet) = buf.get_mut(range.clone()) else {
                continue;
            };
            if shared.datagrams.is_some()
                && !matches!(classify(packet), Protocol::Tcp | Protocol::Invalid)
            {
                if let Some(h) = header.filter(vnet::Header::is_udp_gso) {
                    // Cut into its datagrams behind the read buffer; when
                    // that is full, what is gathered goes out first.
                    for _ in 0..2 {
                        let (area, spare) = buf.split_at_mut(room);
                        let Some(packet) = area.get(range.clone()) else {
                            break;
                        };
                        let Some(spare) = spare.get_mut(split_used..) else {
                            break;
                        };
                        let base = room + split_used;
                        let split = coalesce::split(packet, usize::from(h.gso_size), spare, |r| {
                            tunnelled.push(base + r.start..base + r.end)
                        });
                        match split {
                            Ok(used) => split_used += used,
                            Err(SplitError::NoRoom { .. }) if split_used > 0 => {
                                flush(&shared, &buf, &tunnelled, &mut out).await;
                                tunnelled.clear();
                                split_used = 0;
                                continue;
                            }
                            Err(e) => {
                                trace!(error = %e, "UDP super-packet for the tunnel dropped");
                            }
                        }
                        break;
                    }
                    continue;
                }
                if let Some(header) = &header {
                    if let Err(e) = vnet::finish_checksum(header, packet) {
                        trace!(error = %e, len = packet.len(), "packet for the tunnel dropped");
                        continue;
                    }
                }
                tunnelled.push(range);
                continue;
            }
            let n = packet.len();
            let checksum = match &header {
                Some(h) if h.needs_csum() => Checksum::Partial {
                    start: usize::from(h.csum_start),
                    offset: usize::from(h.csum_offset),
                },
                _ => Checksum::Full,
            };
            let decision = shared.table().handle_with(shared.now(), packet, checksum);
            match decision {
                Decision::Forward => {
                    let Some(out) = buf.get(framed.clone()) else {
                        continue;
                    };
                    if let Err(e) = shared.tun.send_framed(out).await {
                        debug!(error = %e, len = out.len(), "writing to the TUN failed");
                    }
                }
                Decision::Reply(reply) => send(&shared, &reply).await,
                Decision::Full(reply) => {
                    full.refused(std::time::Instant::now(), shared.table().open());
                    send(&shared, &reply).await;
                }
                Decision::Hold(key, flow) => {
                    // Written back later as a plain packet: with its checksum whole.
                    if let Some(header) = &header {
                        if let Err(e) = vnet::finish_checksum(header, packet) {
                            trace!(error = %e, "held SYN dropped");
                            continue;
                        }
                    }
                    tokio::spawn(hold(shared.clone(), key, flow, packet.to_vec()));
                }
                Decision::Drop(reason) => trace!(?reason, len = n, "packet dropped"),
            }
        }
        flush(&shared, &buf, &tunnelled, &mut out).await;
    }
}

/// What a wake-up sends for the datagram tunnel, kept between wake-ups
/// for its buffers.
struct Outgoing {
    batch: udp::SendBatch<u8>,
    sockets: Sockets,
    sends: super::datagram::Sends,
    replies: Vec<Vec<u8>>,
}

/// Seals the packets at `tunnelled` in `buf` for the datagram tunnel and
/// sends them; answers for the LAN (ICMP errors) go to the TUN.
async fn flush(shared: &Shared, buf: &[u8], tunnelled: &[Range<usize>], out: &mut Outgoing) {
    let Some(datagrams) = shared.datagrams.as_ref().filter(|_| !tunnelled.is_empty()) else {
        return;
    };
    datagrams.on_tun_packets(
        buf,
        tunnelled,
        &mut out.batch,
        &mut out.sockets,
        &mut out.sends,
        &mut out.replies,
    );
    super::datagram::send_batch(datagrams.concentrator, &out.batch, &out.sockets);
    out.batch.clear();
    super::datagram::send(datagrams.concentrator, std::mem::take(&mut out.sends));
    for reply in out.replies.drain(..) {
        send(shared, &reply).await;
    }
}

/// Counts new flows reset because the flow table is full and says so once
/// per [`LOG_WINDOW`], with the count of the window before: a LAN host
/// opening flows in a loop must not fill the log.
#[derive(Debug)]
struct FullLog {
    budget: LogBudget,
    window: Option<Instant>,
}

impl Default for FullLog {
    fn default() -> Self {
        Self {
            budget: LogBudget::new(1),
            window: None,
        }
    }
}

impl FullLog {
    fn refused(&mut self, now: Instant, open: usize) {
        let mut unlogged = 0;
        if self
            .window
            .is_none_or(|start| now.saturating_duration_since(start) >= LOG_WINDOW)
        {
            self.window = Some(now);
            unlogged = self.budget.end_window();
        }
        if !self.budget.take() {
            return;
        }
        warn!(
            reset = unlogged + 1,
            open,
            "new connections from the LAN reset: as many flows are open as the open-file \
             limit carries (see the open-file limit warning at start; raise LimitNOFILE= \
             or ulimit -Hn)"
        );
    }
}

async fn send(shared: &Shared, packet: &[u8]) {
    if let Err(e) = shared.tun.send(packet).await {
        // The kernel refuses a packet it cannot route; the sender retries.
        debug!(error = %e, len = packet.len(), "writing to the TUN failed");
    }
}

/// Strict mode: opens the flow's tunnel while its SYN waits, then lets the
/// SYN through to the listener, or answers it with a reset (refused) or an
/// ICMP unreachable.
async fn hold(shared: Arc<Shared>, key: FlowKey, flow: Flow, mut syn: Vec<u8>) {
    match shared.tunnels.open(flow.server, &[]).await {
        Ok(tunnel) => {
            shared
                .parked()
                .insert(key, (std::time::Instant::now(), tunnel));
            let decision = {
                let mut table = shared.table();
                table.confirm(key);
                table.handle(shared.now(), &mut syn)
            };
            if decision == Decision::Forward {
                send(&shared, &syn).await;
            } else {
                shared.parked().remove(&key);
                debug!(?decision, "held SYN no longer forwardable");
            }
        }
        Err(e) => {
            info!(client = %flow.client, server = %flow.server, error = %e, "flow refused");
            shared.table().refuse(key);
            let reply = if e.is_reset() {
                TcpPacket::new_checked(&syn[..])
                    .ok()
                    .and_then(|p| build_rst_for(&p))
            } else {
                let from: IpAddr = match flow.server {
                    std::net::SocketAddr::V4(_) => shared.addrs.tun_v4.into(),
                    std::net::SocketAddr::V6(_) => shared.addrs.tun_v6.into(),
                };
                build_icmp_unreachable_for(&syn, from)
            };
            if let Some(reply) = reply {
                send(&shared, &reply).await;
            }
        }
    }
}
