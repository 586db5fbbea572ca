//! Socket options that socket2 does not expose.

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use super::cvt;

/// Enables TCP Fast Open on a listening socket (TCP or MPTCP) with room for
/// `queue_len` pending Fast Open requests (`TCP_FASTOPEN`, see tcp(7)).
///
/// A client's SYN may then carry data (the connect header) that the listener
/// accepts without waiting for the handshake to finish. The kernel still
/// needs server-side Fast Open enabled in `net.ipv4.tcp_fastopen` (bit 2,
/// value 2 or 3); with the sysctl off, the option is accepted and has no
/// effect. MPTCP listeners support the option from Linux 6.1.
pub fn set_tcp_fastopen_listener(socket: &impl AsFd, queue_len: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(queue_len).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "TCP Fast Open queue length does not fit in a C int",
        )
    })?;
    set_int_option(socket.as_fd(), libc::IPPROTO_TCP, libc::TCP_FASTOPEN, value)
}

/// Makes the first write on an unconnected TCP or MPTCP socket go out in
/// the SYN (`TCP_FASTOPEN_CONNECT`, see tcp(7)): `connect` returns at once
/// and the kernel sends the SYN with the first data, using a cached Fast
/// Open cookie when it holds one (else it asks for a cookie and sends the
/// data after the handshake). Needs client-side Fast Open in
/// `net.ipv4.tcp_fastopen` (bit 0x1, the default). MPTCP sockets support
/// it from Linux 6.1.
pub fn set_tcp_fastopen_connect(socket: &impl AsFd) -> io::Result<()> {
    set_int_option(
        socket.as_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_FASTOPEN_CONNECT,
        1,
    )
}

/// The TCP state of a connected TCP or MPTCP socket (`tcpi_state` of
/// `TCP_INFO`: 1 established, 3 SYN-RECV, see `include/net/tcp_states.h`).
/// On an MPTCP socket the kernel reports the connection's state.
pub fn tcp_state(socket: &impl AsFd) -> io::Result<u8> {
    // SAFETY: `tcp_info` is plain old data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which lives
    // across the call; the descriptor is borrowed from an open socket.
    cvt(unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    })?;
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "TCP_INFO returned nothing",
        ));
    }
    Ok(info.tcpi_state)
}

/// `tcpi_state` of an established connection.
pub const TCP_ESTABLISHED: u8 = 1;

/// Fixes a socket's receive buffer at `bytes` (the kernel doubles it for
/// bookkeeping), past `net.core.rmem_max` where the process may
/// (`SO_RCVBUFFORCE` needs CAP_NET_ADMIN; else `SO_RCVBUF`, capped).
/// A fixed buffer also turns receive-buffer autotuning off for the socket.
pub fn set_recv_buffer(socket: &impl AsFd, bytes: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "receive buffer size does not fit in a C int",
        )
    })?;
    let fd = socket.as_fd();
    match set_int_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, value) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            set_int_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, value)
        }
        result => result,
    }
}

/// Sets an integer socket option: the one setsockopt wrapper in `sys`.
pub(super) fn set_int_option(
    socket: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt reads exactly `size_of::<c_int>()` bytes from
    // `value`, which lives across the call; the descriptor is borrowed from
    // an open socket.
    cvt(unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::{Domain, Protocol, Socket, Type};

    fn fastopen_queue(socket: &Socket) -> libc::c_int {
        let mut value: libc::c_int = 0;
        let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value`, which
        // lives across the call.
        cvt(unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_FASTOPEN,
                (&raw mut value).cast(),
                &mut len,
            )
        })
        .expect("getsockopt TCP_FASTOPEN");
        value
    }

    #[test]
    fn sets_the_queue_length_on_a_tcp_listener() {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
        set_tcp_fastopen_listener(&socket, 256).expect("TCP_FASTOPEN");
        assert_eq!(fastopen_queue(&socket), 256);
    }

    #[test]
    fn refuses_a_queue_length_past_c_int() {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
        let err = set_tcp_fastopen_listener(&socket, u32::MAX).expect_err("too long");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
