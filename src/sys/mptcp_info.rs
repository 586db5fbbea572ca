//! What an MPTCP socket says about itself (`SOL_MPTCP` options, see
//! mptcp(7)).

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use socket2::{Protocol, SockRef};

/// `SOL_MPTCP` and `MPTCP_INFO` (`linux/socket.h`, `linux/mptcp.h`).
const SOL_MPTCP: libc::c_int = 284;
const MPTCP_INFO: libc::c_int = 1;

/// Whether a connected MPTCP socket fell back to plain TCP (the peer or a
/// middlebox dropped the MPTCP options of the handshake): `MPTCP_INFO`
/// asked with a length of 0, which the kernel answers with success on an
/// MPTCP connection and `EOPNOTSUPP` on a fallen-back one. `None` for a
/// socket that is not an MPTCP one (`SO_PROTOCOL`): the kernel answers
/// `EOPNOTSUPP` on plain TCP sockets too.
pub fn mptcp_fell_back(socket: &impl AsFd) -> io::Result<Option<bool>> {
    let protocol = SockRef::from(socket).protocol()?;
    if protocol != Some(Protocol::MPTCP) {
        return Ok(None);
    }
    let mut unused = 0u8;
    let mut len: libc::socklen_t = 0;
    // SAFETY: with `len` 0 the kernel writes nothing into the buffer (it
    // may only write `len` back); both live across the call and the
    // descriptor is borrowed from an open socket.
    let ret = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            SOL_MPTCP,
            MPTCP_INFO,
            (&raw mut unused).cast(),
            &mut len,
        )
    };
    if ret == 0 {
        return Ok(Some(false));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) => Ok(Some(true)),
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::{Domain, Protocol, Socket, Type};

    #[test]
    fn a_plain_tcp_socket_is_not_an_answer() {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
        assert_eq!(mptcp_fell_back(&socket).expect("asked"), None);
    }
}
