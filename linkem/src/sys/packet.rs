//! AF_PACKET sockets, interface flags, waiting with a nanosecond timeout,
//! and eventfd: what the link emulator needs to bridge two interfaces.

use std::ffi::CString;
use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::{cvt, cvt_size};

/// `ETH_P_ALL` in network byte order, as `sll_protocol` and `socket()` want it.
const ETH_P_ALL_BE: u16 = (libc::ETH_P_ALL as u16).to_be();

/// The kernel index of interface `name`.
pub fn interface_index(name: &str) -> io::Result<u32> {
    let c_name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL"))?;
    // SAFETY: `c_name` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(index)
}

/// Sets or clears `IFF_UP` on interface `name` (in the caller's namespace).
///
/// Setting a veth end down takes the carrier away from its peer, which is
/// how the emulator makes a line "lose carrier" on the client's side.
pub fn set_interface_up(name: &str, up: bool) -> io::Result<()> {
    let mut req = ifreq_for(name)?;
    let sock = datagram_socket()?;
    // SAFETY: SIOCGIFFLAGS reads the name and writes `ifru_flags` of a
    // properly sized, initialised `ifreq` that lives across the call.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: the kernel just filled `ifru_flags`; reading a c_short union
    // member of an initialised union is sound.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    let up_flag = libc::IFF_UP as libc::c_short;
    req.ifr_ifru.ifru_flags = if up {
        flags | up_flag
    } else {
        flags & !up_flag
    };
    // SAFETY: as above; SIOCSIFFLAGS only reads the request.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) })?;
    Ok(())
}

fn ifreq_for(name: &str) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid interface name"),
        ));
    }
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

fn datagram_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets this thread's timer slack, so that timed waits wake close to their
/// deadline (the default slack is 50 µs).
pub fn set_timer_slack(slack: Duration) -> io::Result<()> {
    let ns = libc::c_ulong::try_from(slack.as_nanos()).unwrap_or(libc::c_ulong::MAX);
    // SAFETY: PR_SET_TIMERSLACK takes an unsigned long by value and touches
    // no memory of ours.
    cvt(unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns, 0, 0, 0) })?;
    Ok(())
}

/// A raw `AF_PACKET` socket bound to one interface, non-blocking.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// A socket that receives every frame arriving on interface `ifindex`
    /// (not the ones the host sends there), with a `rcvbuf`-byte buffer.
    pub fn receiver(ifindex: u32, rcvbuf: usize) -> io::Result<Self> {
        // Protocol 0 receives nothing until bind, so no frame of another
        // interface can slip in before the socket is bound.
        let sock = Self::unbound()?;
        sock.set_int(libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1)?;
        let size = libc::c_int::try_from(rcvbuf).unwrap_or(libc::c_int::MAX);
        sock.set_int(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size)
            .or_else(|_| sock.set_int(libc::SOL_SOCKET, libc::SO_RCVBUF, size))?;
        sock.bind(ifindex, ETH_P_ALL_BE)?;
        Ok(sock)
    }

    /// A socket that only transmits on interface `ifindex`, bypassing its
    /// qdisc (the emulator is the queue).
    pub fn sender(ifindex: u32, sndbuf: usize) -> io::Result<Self> {
        let sock = Self::unbound()?;
        sock.set_int(libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1)?;
        let size = libc::c_int::try_from(sndbuf).unwrap_or(libc::c_int::MAX);
        sock.set_int(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, size)
            .or_else(|_| sock.set_int(libc::SOL_SOCKET, libc::SO_SNDBUF, size))?;
        sock.bind(ifindex, 0)?;
        Ok(sock)
    }

    fn unbound() -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = cvt(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        })?;
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    fn set_int(&self, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
        // SAFETY: setsockopt reads exactly `size_of::<c_int>()` bytes from
        // `value`, which lives across the call; the descriptor is owned by
        // `self` and open.
        cvt(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&raw const value).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })?;
        Ok(())
    }

    fn bind(&self, ifindex: u32, protocol_be: u16) -> io::Result<()> {
        let ifindex = libc::c_int::try_from(ifindex).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "interface index too large")
        })?;
        // SAFETY: `sockaddr_ll` is plain old data; all-zero is valid.
        let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as libc::c_ushort;
        addr.sll_protocol = protocol_be;
        addr.sll_ifindex = ifindex;
        // SAFETY: `addr` is an initialised sockaddr_ll and the length passed
        // is its size.
        cvt(unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        Ok(())
    }

    /// Receives one frame into `buf`. `Ok(None)` when no frame is waiting.
    /// The returned length is the frame's real length, which exceeds
    /// `buf.len()` when the frame was truncated.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the
        // duration of the call.
        let ret = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        match cvt_size(ret) {
            Ok(len) => Ok(Some(len)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Receives up to `bufs.len()` frames in one system call (at most 64).
    /// `lens[i]` gets frame `i`'s real length, which exceeds `bufs[i].len()`
    /// when it was truncated. Returns how many frames arrived (0: none).
    pub fn recv_many(&self, bufs: &mut [Vec<u8>], lens: &mut [usize]) -> io::Result<usize> {
        let count = bufs.len().min(lens.len()).min(MAX_BATCH);
        let mut iovecs: Vec<libc::iovec> = bufs[..count]
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let mut headers = message_headers(&mut iovecs);
        // SAFETY: `headers` holds `count` entries, each pointing at one live
        // iovec that points at a live buffer of its stated length; all of
        // them outlive the call and nothing else accesses them meanwhile.
        let ret = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                headers.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        let received = match cvt(ret) {
            Ok(n) => n as usize,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        };
        for (len, header) in lens.iter_mut().zip(&headers[..received]) {
            *len = header.msg_len as usize;
        }
        Ok(received)
    }

    /// Sends up to 64 complete Ethernet frames in one system call. Returns
    /// how many were sent; an error means the first one could not be.
    pub fn send_many<F: AsRef<[u8]>>(&self, frames: &[F]) -> io::Result<usize> {
        let count = frames.len().min(MAX_BATCH);
        if count == 0 {
            return Ok(0);
        }
        let mut iovecs: Vec<libc::iovec> = frames[..count]
            .iter()
            .map(|f| libc::iovec {
                // sendmmsg only reads through this pointer.
                iov_base: f.as_ref().as_ptr().cast_mut().cast(),
                iov_len: f.as_ref().len(),
            })
            .collect();
        let mut headers = message_headers(&mut iovecs);
        // SAFETY: as in `recv_many`; the kernel only reads the frames.
        let ret = unsafe {
            libc::sendmmsg(
                self.fd.as_raw_fd(),
                headers.as_mut_ptr(),
                count as libc::c_uint,
                0,
            )
        };
        cvt(ret).map(|n| n as usize)
    }

    /// Sends one complete Ethernet frame.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is valid for reads of `frame.len()` bytes for the
        // duration of the call.
        let ret = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        cvt_size(ret).map(drop)
    }
}

/// Most messages moved by one `recvmmsg`/`sendmmsg` call.
pub const MAX_BATCH: usize = 64;

/// One `mmsghdr` per iovec, no address, no control data.
fn message_headers(iovecs: &mut [libc::iovec]) -> Vec<libc::mmsghdr> {
    iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: `mmsghdr` is plain old data; all-zero is valid (null
            // name and control pointers with zero lengths).
            let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect()
}

impl AsFd for PacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A non-blocking eventfd used to wake a thread sleeping in
/// [`wait_readable`].
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// A new eventfd with counter 0.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain eventfd(2) call; the result is checked before use.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Makes the eventfd readable.
    pub fn notify(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of a live u64, as eventfd requires.
        let ret = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                mem::size_of::<u64>(),
            )
        };
        match cvt_size(ret) {
            Ok(_) => Ok(()),
            // The counter is saturated: the reader is already due to wake.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Resets the counter so the eventfd is no longer readable.
    pub fn drain(&self) -> io::Result<()> {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64, as eventfd requires.
        let ret = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut value as *mut u64).cast(),
                mem::size_of::<u64>(),
            )
        };
        match cvt_size(ret) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Waits until one of `fds` is readable or `timeout` passes (`None`: no
/// limit). Returns a bit mask: bit `i` set when `fds[i]` is readable (or has
/// an error pending, which the next read reports). At most 64 descriptors.
pub fn wait_readable(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> io::Result<u64> {
    if fds.len() > 64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "more than 64 descriptors",
        ));
    }
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
        // Below 10^9: fits every c_long.
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `pollfds` holds `pollfds.len()` initialised entries and `ts_ptr`
    // is null or points at a live timespec; both outlive the call.
    let ret = unsafe {
        libc::ppoll(
            pollfds.as_mut_ptr(),
            pollfds.len() as libc::nfds_t,
            ts_ptr,
            std::ptr::null(),
        )
    };
    match cvt(ret) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(0),
        Err(e) => return Err(e),
    }
    Ok(pollfds
        .iter()
        .enumerate()
        .filter(|(_, p)| p.revents != 0)
        .fold(0u64, |mask, (i, _)| mask | (1 << i)))
}
