//! The listening socket: MPTCP where the kernel offers it (clients without
//! MPTCP fall back to plain TCP on it transparently), TCP otherwise, with
//! TCP Fast Open so a connect header can arrive in the SYN.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tracing::warn;

use crate::sys;

/// Pending Fast Open requests the kernel queues per listener.
const FASTOPEN_QUEUE: u32 = 256;
/// Accepted connections the kernel queues before `accept` (capped by
/// `net.core.somaxconn`, 4096 by default since Linux 5.4). A burst beyond
/// it, such as every client's tunnels coming back at once after a
/// restart, waits a second for the kernel's SYN-ACK retransmission. With
/// 1024 the floods lab test once saw about 370 of a 2,000-connection
/// burst (38,000 a second) closed a second later than the handshake
/// timeout allows, most likely that (the accept loop had fallen behind).
const BACKLOG: i32 = 4096;

/// A bound listener.
#[derive(Debug)]
pub(super) struct Listener {
    pub(super) listener: TcpListener,
    pub(super) local_addr: SocketAddr,
    /// Whether the socket is MPTCP (else plain TCP).
    pub(super) multipath: bool,
}

/// Binds and listens on `addr`. Must run inside a Tokio runtime.
pub(super) fn listen(addr: SocketAddr) -> io::Result<Listener> {
    let domain = Domain::for_address(addr);
    let (socket, multipath) = match Socket::new(domain, Type::STREAM, Some(Protocol::MPTCP)) {
        Ok(socket) => (socket, true),
        Err(e) => {
            warn!(
                error = %e,
                "the kernel refused an MPTCP socket; listening with plain TCP, so clients \
                 will not bond their uplinks (check `sysctl net.mptcp.enabled`)"
            );
            (
                Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?,
                false,
            )
        }
    };
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // "[::]" means every address, IPv4 included, whatever the host's
        // net.ipv6.bindv6only says.
        socket.set_only_v6(false)?;
    }
    if let Err(e) = sys::set_tcp_fastopen_listener(&socket, FASTOPEN_QUEUE) {
        warn!(error = %e, "TCP Fast Open unavailable on the listener; clients take one extra round trip");
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    let listener = TcpListener::from_std(socket.into())?;
    let local_addr = listener.local_addr()?;
    Ok(Listener {
        listener,
        local_addr,
        multipath,
    })
}
