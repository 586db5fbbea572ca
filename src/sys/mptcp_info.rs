//! What an MPTCP socket says about itself (`SOL_MPTCP` options, see
//! mptcp(7)).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd};

use socket2::{Protocol, SockRef};

/// `SOL_MPTCP` and `MPTCP_INFO` (`linux/socket.h`, `linux/mptcp.h`).
const SOL_MPTCP: libc::c_int = 284;
const MPTCP_INFO: libc::c_int = 1;
/// `MPTCP_SUBFLOW_ADDRS` (`linux/mptcp.h`, Linux 5.19): each subflow's
/// local and remote address, behind a `struct mptcp_subflow_data` header.
const MPTCP_SUBFLOW_ADDRS: libc::c_int = 3;
/// `sizeof(struct mptcp_subflow_data)`.
const SUBFLOW_DATA_LEN: usize = 16;
/// `sizeof(struct mptcp_subflow_addrs)`: two `struct sockaddr_storage`.
const SUBFLOW_ADDRS_LEN: usize = 256;
/// Subflows asked for: mpbond allows at most 8 uplinks, and the kernel
/// at most 8 subflows per connection.
const MAX_SUBFLOWS: usize = 8;

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

/// The local address of each subflow of the MPTCP connection `socket`
/// (`MPTCP_SUBFLOW_ADDRS`), joining ones included, into `out` (cleared
/// first). Fails with `EOPNOTSUPP` on a connection that fell back to plain
/// TCP and on a plain TCP socket.
pub fn mptcp_subflow_locals(socket: &impl AsFd, out: &mut Vec<IpAddr>) -> io::Result<()> {
    let mut buf = [0u8; SUBFLOW_DATA_LEN + MAX_SUBFLOWS * SUBFLOW_ADDRS_LEN];
    let header: [u32; 4] = [SUBFLOW_DATA_LEN as u32, 0, 0, SUBFLOW_ADDRS_LEN as u32];
    for (i, word) in header.iter().enumerate() {
        buf[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `buf`, which is
    // that long and lives across the call; the descriptor is borrowed from
    // an open socket.
    let ret = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            SOL_MPTCP,
            MPTCP_SUBFLOW_ADDRS,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if ret != 0 {
        out.clear();
        return Err(io::Error::last_os_error());
    }
    let filled = (len as usize).min(buf.len());
    parse_subflow_locals(&buf[..filled], out);
    Ok(())
}

/// Reads the local addresses out of an `MPTCP_SUBFLOW_ADDRS` answer:
/// the header's subflow count and per-entry size, then each entry's
/// `sockaddr_in` or `sockaddr_in6` (native endian family, network order
/// address), into `out` (cleared first). Entries cut short or of another
/// family are skipped.
fn parse_subflow_locals(buf: &[u8], out: &mut Vec<IpAddr>) {
    out.clear();
    let word = |at: usize| {
        buf.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_ne_bytes) as usize
    };
    let (count, size_user) = (word(4), word(12));
    if size_user == 0 {
        return;
    }
    for i in 0..count.min(MAX_SUBFLOWS) {
        let Some(entry) = buf.get(SUBFLOW_DATA_LEN + i * size_user..) else {
            break;
        };
        let family = entry
            .get(..2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_ne_bytes);
        let addr = match family.map(libc::c_int::from) {
            Some(libc::AF_INET) => entry
                .get(4..8)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(|b| IpAddr::V4(Ipv4Addr::from(b))),
            Some(libc::AF_INET6) => entry
                .get(8..24)
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .map(|b| IpAddr::V6(Ipv6Addr::from(b))),
            _ => None,
        };
        out.extend(addr);
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

    #[test]
    fn subflow_locals_parse_both_families_and_skip_what_is_cut_short() {
        let mut buf = vec![0u8; SUBFLOW_DATA_LEN + 3 * SUBFLOW_ADDRS_LEN];
        for (i, word) in [16u32, 3, 256, 256].iter().enumerate() {
            buf[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        let v4 = SUBFLOW_DATA_LEN;
        buf[v4..v4 + 2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        buf[v4 + 4..v4 + 8].copy_from_slice(&[10, 77, 1, 2]);
        let v6 = v4 + SUBFLOW_ADDRS_LEN;
        buf[v6..v6 + 2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        let six: Ipv6Addr = "fd00::2".parse().expect("address");
        buf[v6 + 8..v6 + 24].copy_from_slice(&six.octets());
        // The third entry is cut off after its family.
        let third = v6 + SUBFLOW_ADDRS_LEN;
        buf[third..third + 2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        buf.truncate(third + 3);
        let mut out = Vec::new();
        parse_subflow_locals(&buf, &mut out);
        assert_eq!(out, vec![IpAddr::from([10, 77, 1, 2]), IpAddr::V6(six)]);
        // A header that claims more subflows than fit reads what is there.
        parse_subflow_locals(&buf[..SUBFLOW_DATA_LEN + 6], &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_plain_tcp_socket_has_no_subflow_addresses() {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
        let mut out = vec![IpAddr::from([1, 2, 3, 4])];
        assert!(mptcp_subflow_locals(&socket, &mut out).is_err());
        assert!(out.is_empty());
    }
}
