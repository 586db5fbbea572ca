//! One redirected flow: the listener accepted it from the fake peer, the
//! flow table says where it was going; open its tunnel (in fast mode with
//! the LAN host's first bytes in the same SYN) and relay.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use super::redirect::{ConnectMode, Flow, FlowKey};
use super::tunnel::{Tunnel, TunnelError, MAX_EARLY};
use super::{ClientError, Shared};
use crate::config::SendBuffer;
use crate::relay::Side;
use crate::sendbuf::{Policy, Sizer};

/// How long to wait for the LAN host's first bytes so they ride in the
/// tunnel's SYN; a host that speaks first (HTTP, TLS) sends them at once.
const EARLY_WAIT: Duration = Duration::from_millis(10);

/// Pause after an accept error (out of descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts redirected flows until the listener fails.
pub(super) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
) -> Result<(), ClientError> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "accepting a redirected flow failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let claimed = shared.table().claim(peer);
        let Some((key, flow)) = claimed else {
            debug!(%peer, "connection to the redirect listener from outside the redirect");
            reset(&stream);
            continue;
        };
        shared.spawn_flow(serve(shared.clone(), key, flow, stream));
    }
}

async fn serve(shared: Arc<Shared>, key: FlowKey, flow: Flow, lan: TcpStream) {
    let opened = match shared.mode {
        ConnectMode::Strict => {
            let parked = shared.parked().remove(&key).map(|(_, tunnel)| tunnel);
            match parked {
                Some(tunnel) => Ok(tunnel),
                None => shared.tunnels.open(flow.server, &[]).await,
            }
        }
        ConnectMode::Fast => match first_bytes(&lan).await {
            Ok(early) => shared.tunnels.open(flow.server, &early).await,
            Err(e) => {
                debug!(client = %flow.client, error = %e, "LAN host gone before its first bytes");
                shared.table().closed(shared.now(), key);
                return;
            }
        },
    };
    match opened {
        Ok(tunnel) => {
            shared.joins.tunnel_opened(&tunnel.stream);
            relay(&shared, &flow, &lan, tunnel).await
        }
        Err(e) => refused(&flow, &lan, &e),
    }
    shared.table().closed(shared.now(), key);
}

async fn relay(shared: &Shared, flow: &Flow, lan: &TcpStream, tunnel: Tunnel) {
    if !tunnel.leftover.is_empty() {
        if let Err(e) = crate::relay::write_all(lan, &tunnel.leftover).await {
            debug!(error = %e, "LAN host gone");
            reset(lan);
            reset(&tunnel.stream);
            return;
        }
    }
    debug!(client = %flow.client, server = %flow.server, "relaying");
    let sized = (shared.tunnels.settings().send_buffer == SendBuffer::Auto)
        .then(|| (Side::Server, Sizer::new(Policy::default(), 0)));
    tokio::select! {
        done = crate::relay::relay(lan, &tunnel.stream, &[], sized) => match done {
            Ok(done) => debug!(
                client = %flow.client,
                server = %flow.server,
                up = done.up,
                down = done.down,
                "flow closed"
            ),
            Err(e) => debug!(client = %flow.client, server = %flow.server, error = %e, "flow reset"),
        },
        // Dropping the relay resets both sides: the LAN host learns now,
        // not when TCP gives up.
        () = shared.tunnels.orphaned(&tunnel.stream) => info!(
            client = %flow.client,
            server = %flow.server,
            "flow reset: every uplink its tunnel had went down, and it gained no working one"
        ),
    }
}

/// Fails the LAN host's connection the way a direct one would have: with a
/// reset (the only signal left once its handshake is done).
fn refused(flow: &Flow, lan: &TcpStream, e: &TunnelError) {
    match e {
        TunnelError::Refused { .. } => {
            debug!(client = %flow.client, server = %flow.server, error = %e, "flow refused")
        }
        _ => info!(client = %flow.client, server = %flow.server, error = %e, "tunnel failed"),
    }
    reset(lan);
}

/// The LAN host's first bytes if they come within [`EARLY_WAIT`]; end of
/// stream counts as none (the relay then passes the half-close on).
async fn first_bytes(lan: &TcpStream) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; MAX_EARLY];
    match tokio::time::timeout(EARLY_WAIT, lan.readable()).await {
        Err(_) => return Ok(Vec::new()),
        Ok(ready) => ready?,
    }
    match lan.try_read(&mut buf) {
        Ok(n) => {
            buf.truncate(n);
            Ok(buf)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Makes the close of `stream` a reset.
fn reset(stream: &TcpStream) {
    // A socket that cannot take the option is already closed or reset.
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}
