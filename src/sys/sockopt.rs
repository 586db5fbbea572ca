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

/// Lets the kernel fragment what a UDP socket sends when it is larger
/// than the path's MTU, instead of refusing it (`EMSGSIZE`): the datagram
/// tunnel keeps its sealed packets within the path MTU, but for IPv6
/// packets up to 1280 bytes on narrower lines, and a fragmented datagram
/// beats a lost one. `v6`: the socket is IPv6.
pub fn allow_fragments(socket: &impl AsFd, v6: bool) -> io::Result<()> {
    let fd = socket.as_fd();
    if v6 {
        // A dual-stack socket also sends IPv4 (to mapped addresses).
        let _ = set_int_option(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DONT,
        );
        // Set by quinn-udp (crate::udp), which fragments nothing.
        set_int_option(fd, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 0)?;
        set_int_option(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DONT,
        )
    } else {
        set_int_option(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DONT,
        )
    }
}

/// The path MTU the kernel knows from `local` (an address of this host) to
/// `remote`: the MTU of the route that policy routing picks for that
/// source (the uplink's interface, or a route's `mtu` attribute), or what
/// path MTU discovery has learnt since. Found with a throwaway UDP socket
/// bound to `local` and connected to `remote` (nothing is sent).
pub fn path_mtu(local: std::net::IpAddr, remote: std::net::SocketAddr) -> io::Result<u32> {
    let socket = std::net::UdpSocket::bind(std::net::SocketAddr::new(local, 0))?;
    socket.connect(remote)?;
    let (level, name) = if remote.is_ipv6() {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU)
    };
    let mut mtu: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes (one c_int) into `mtu`,
    // which lives across the call; the descriptor is borrowed from the
    // socket above, open until it drops at the end of this function.
    cvt(unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            level,
            name,
            (&raw mut mtu).cast(),
            &mut len,
        )
    })?;
    u32::try_from(mtu).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative MTU"))
}

/// Gives a datagram socket `bytes` of receive and send buffer each: with
/// `SO_RCVBUFFORCE` / `SO_SNDBUFFORCE` when the process may (root,
/// `CAP_NET_ADMIN`), past `net.core.rmem_max` / `wmem_max`, else as much as
/// those allow. A tunnel socket's default (about 208 KiB) overflows in a
/// burst of a few hundred full-size datagrams.
pub fn set_datagram_buffers(socket: &impl AsFd, bytes: usize) -> io::Result<()> {
    let fd = socket.as_fd();
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if set_int_option(fd, libc::SOL_SOCKET, force, value).is_err() {
            set_int_option(fd, libc::SOL_SOCKET, plain, value)?;
        }
    }
    Ok(())
}

/// `SOL_MPTCP` (`include/linux/socket.h`).
const SOL_MPTCP: libc::c_int = 284;
/// `MPTCP_TCPINFO` (`include/uapi/linux/mptcp.h`): each subflow's
/// `struct tcp_info`, behind a `struct mptcp_subflow_data` header.
const MPTCP_TCPINFO: libc::c_int = 2;
/// `sizeof(struct mptcp_subflow_data)`.
const SUBFLOW_DATA_LEN: usize = 16;
/// How much of each subflow's `struct tcp_info` is asked for: up to and
/// including `tcpi_snd_wnd` (Linux 5.19); older kernels fill less.
pub const SUBFLOW_INFO_LEN: usize = 232;

/// What a sender needs to know of one subflow of an MPTCP connection, from
/// its `struct tcp_info`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubflowInfo {
    /// `tcpi_state` (1: established).
    pub state: u8,
    /// Smoothed round trip, microseconds.
    pub rtt_us: u32,
    /// The smallest round trip seen lately (the path without its queue),
    /// microseconds.
    pub min_rtt_us: u32,
    /// Congestion window, segments.
    pub snd_cwnd: u32,
    /// Sender's segment size, bytes.
    pub snd_mss: u32,
    /// Segments sent and not yet acknowledged.
    pub unacked: u32,
    /// Bytes queued on the subflow and not yet sent.
    pub notsent_bytes: u32,
    /// The pacing rate, bytes per second.
    pub pacing_rate: u64,
    /// The most recent delivery rate sample, bytes per second.
    pub delivery_rate: u64,
}

impl SubflowInfo {
    /// Reads a kernel `struct tcp_info` prefix of `bytes` (native endian).
    /// Fields the kernel did not fill (an older, shorter struct) read as 0.
    pub fn parse(bytes: &[u8]) -> Self {
        let u32_at = |at: usize| {
            bytes
                .get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u32::from_ne_bytes)
        };
        let u64_at = |at: usize| {
            bytes
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_ne_bytes)
        };
        Self {
            state: bytes.first().copied().unwrap_or(0),
            rtt_us: u32_at(68),
            min_rtt_us: u32_at(148),
            snd_cwnd: u32_at(80),
            snd_mss: u32_at(16),
            unacked: u32_at(24),
            notsent_bytes: u32_at(144),
            pacing_rate: u64_at(104),
            delivery_rate: u64_at(160),
        }
    }
}

/// Each subflow of the MPTCP connection `socket` (`MPTCP_TCPINFO`), into
/// `out` (cleared first); `buf` is scratch space, grown as needed. Fails on
/// a plain TCP socket (an MPTCP connection that fell back reports its one
/// subflow).
pub fn mptcp_subflows(
    socket: &impl AsFd,
    buf: &mut Vec<u8>,
    out: &mut Vec<SubflowInfo>,
) -> io::Result<()> {
    out.clear();
    // Room for 8 subflows: mpbond allows at most 8 uplinks.
    let len = SUBFLOW_DATA_LEN + 8 * SUBFLOW_INFO_LEN;
    buf.clear();
    buf.resize(len, 0);
    let header: [u32; 4] = [SUBFLOW_DATA_LEN as u32, 0, 0, SUBFLOW_INFO_LEN as u32];
    for (i, word) in header.iter().enumerate() {
        buf[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    let mut optlen = len as libc::socklen_t;
    // SAFETY: getsockopt writes at most `optlen` bytes into `buf`, which is
    // that long and lives across the call; the descriptor is borrowed from
    // an open socket.
    cvt(unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            SOL_MPTCP,
            MPTCP_TCPINFO,
            buf.as_mut_ptr().cast(),
            &mut optlen,
        )
    })?;
    let filled = (optlen as usize).min(buf.len());
    let word = |i: usize| {
        buf.get(i * 4..i * 4 + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_ne_bytes) as usize
    };
    let (count, size_user) = (word(1), word(3));
    if size_user == 0 {
        return Ok(());
    }
    for i in 0..count {
        let at = SUBFLOW_DATA_LEN + i * size_user;
        let Some(entry) = buf.get(at..(at + size_user).min(filled)) else {
            break;
        };
        if entry.is_empty() {
            break;
        }
        out.push(SubflowInfo::parse(entry));
    }
    Ok(())
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
    fn subflow_info_reads_the_kernel_layout_and_tolerates_short_structs() {
        let mut bytes = vec![0u8; SUBFLOW_INFO_LEN];
        bytes[0] = 1;
        bytes[16..20].copy_from_slice(&1420u32.to_ne_bytes());
        bytes[24..28].copy_from_slice(&33u32.to_ne_bytes());
        bytes[68..72].copy_from_slice(&20_000u32.to_ne_bytes());
        bytes[80..84].copy_from_slice(&40u32.to_ne_bytes());
        bytes[104..112].copy_from_slice(&3_000_000u64.to_ne_bytes());
        bytes[144..148].copy_from_slice(&65_536u32.to_ne_bytes());
        bytes[148..152].copy_from_slice(&12_000u32.to_ne_bytes());
        bytes[160..168].copy_from_slice(&2_500_000u64.to_ne_bytes());
        let info = SubflowInfo::parse(&bytes);
        assert_eq!(
            info,
            SubflowInfo {
                state: 1,
                rtt_us: 20_000,
                min_rtt_us: 12_000,
                snd_cwnd: 40,
                snd_mss: 1420,
                unacked: 33,
                notsent_bytes: 65_536,
                pacing_rate: 3_000_000,
                delivery_rate: 2_500_000,
            }
        );
        let short = SubflowInfo::parse(&bytes[..104]);
        assert_eq!(
            (short.rtt_us, short.pacing_rate, short.delivery_rate),
            (20_000, 0, 0)
        );
        assert_eq!(SubflowInfo::parse(&[]), SubflowInfo::default());
    }

    #[test]
    fn a_plain_tcp_socket_has_no_mptcp_subflows() {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        assert!(mptcp_subflows(&socket, &mut buf, &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn refuses_a_queue_length_past_c_int() {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
        let err = set_tcp_fastopen_listener(&socket, u32::MAX).expect_err("too long");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
