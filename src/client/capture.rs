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

/// Reads the TUN until it fails. A wake-up reads what is queued, up to
/// [`TUN_BATCH`] packets: TCP goes through the redirect one by one; the
/// rest is sealed for the datagram tunnel under one lock into one buffer
/// and sent in runs of equal-sized datagrams per uplink (GSO).
///
/// With offloads each packet comes behind its [`vnet`] header: TCP may be a
/// super-packet with a partial checksum, rewritten as such and written
/// back with the same header; a partial checksum of anything else is
/// finished here before it is sealed (UDP segmentation is off, so no
/// datagram is a super-packet).
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
    let mut buf = vec![0; room];
    let mut read: Vec<Range<usize>> = Vec::with_capacity(TUN_BATCH);
    let mut tunnelled: Vec<Range<usize>> = Vec::with_capacity(TUN_BATCH);
    // Sealing adds at most DATA_OVERHEAD + 1 per packet (fragments a
    // header more each): twice the read room holds any batch.
    let mut batch = udp::SendBatch::<u8>::new(2 * room);
    let mut sockets: Sockets = Default::default();
    let mut sends = Vec::new();
    let mut replies = Vec::new();
    let mut full = FullLog::default();
    loop {
        let n = shared
            .tun
            .recv(&mut buf)
            .await
            .map_err(|source| ClientError::TunIo {
                name: shared.tun_name.clone(),
                source,
            })?;
        udp::read_queued_tun(
            &shared.tun,
            &mut buf,
            n,
            head + MAX_PACKET,
            TUN_BATCH,
            &mut read,
        );
        tunnelled.clear();
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
        let Some(datagrams) = shared.datagrams.as_ref().filter(|_| !tunnelled.is_empty()) else {
            continue;
        };
        datagrams.on_tun_packets(
            &buf,
            &tunnelled,
            &mut batch,
            &mut sockets,
            &mut sends,
            &mut replies,
        );
        super::datagram::send_batch(datagrams.concentrator, &batch, &sockets);
        batch.clear();
        super::datagram::send(datagrams.concentrator, std::mem::take(&mut sends));
        for reply in replies.drain(..) {
            send(&shared, &reply).await;
        }
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
