//! The TUN reader: every packet goes through the redirect's flow table and
//! back into the TUN, rewritten. In strict mode a new flow's SYN is held
//! while the tunnel reaches the server, then released or answered with the
//! failure the LAN host would have seen.

use std::net::IpAddr;
use std::sync::Arc;

use tracing::{debug, info, trace};

use super::datagram::Outgoing;
use super::redirect::{Decision, Flow, FlowKey};
use super::{ClientError, Shared};
use crate::wire::{build_icmp_unreachable_for, build_rst_for, classify, Protocol, TcpPacket};

/// Largest packet read from the TUN (no offloads: at most the MTU).
const MAX_PACKET: usize = 65_535;

/// Reads the TUN until it fails.
pub(super) async fn run(shared: Arc<Shared>) -> Result<(), ClientError> {
    let mut buf = vec![0; MAX_PACKET];
    let mut sealed = vec![0; super::datagram::MAX_SEALED];
    loop {
        let n = shared
            .tun
            .recv(&mut buf)
            .await
            .map_err(|source| ClientError::TunIo {
                name: shared.tun_name.clone(),
                source,
            })?;
        let packet = &mut buf[..n];
        if let Some(datagrams) = &shared.datagrams {
            if !matches!(classify(packet), Protocol::Tcp | Protocol::Invalid) {
                match datagrams.on_tun_packet(packet, &mut sealed) {
                    Outgoing::Sealed(len, sockets) => {
                        super::datagram::send_sealed(
                            datagrams.concentrator,
                            &sealed[..len],
                            sockets,
                        );
                    }
                    Outgoing::Send(sends) => super::datagram::send(datagrams.concentrator, sends),
                    Outgoing::Reply(reply) => send(&shared, &reply).await,
                    Outgoing::Nothing => {}
                }
                continue;
            }
        }
        let decision = shared.table().handle(shared.now(), packet);
        match decision {
            Decision::Forward => send(&shared, packet).await,
            Decision::Reply(reply) => send(&shared, &reply).await,
            Decision::Hold(key, flow) => {
                tokio::spawn(hold(shared.clone(), key, flow, packet.to_vec()));
            }
            Decision::Drop(reason) => trace!(?reason, len = n, "packet dropped"),
        }
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
