//! TUN device settings tun-rs does not expose.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd};

use super::cvt;

/// The TUN offloads for TCP: partial checksums, TCP segmentation over
/// IPv4 and IPv6.
pub const TUN_TCP_OFFLOADS: libc::c_uint = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;

/// UDP segmentation over IPv4 and IPv6 (Linux 6.2 on; needs
/// `TUN_F_CSUM`): a UDP super-packet (from a sender using `UDP_SEGMENT`,
/// or joined by GRO on the way in) reaches the TUN whole.
pub const TUN_UDP_OFFLOADS: libc::c_uint = libc::TUN_F_USO4 | libc::TUN_F_USO6;

/// Sets the offloads (`TUN_F_*`) a TUN device opened with `IFF_VNET_HDR`
/// accepts from the kernel (`TUNSETOFFLOAD`). Device-wide: it replaces
/// what was set before.
pub fn set_tun_offloads(tun: BorrowedFd<'_>, offloads: libc::c_uint) -> io::Result<()> {
    // SAFETY: `tun` is an open descriptor for the duration of the call;
    // TUNSETOFFLOAD takes its argument by value (an unsigned long), no
    // pointer is passed.
    let ret = unsafe {
        libc::ioctl(
            tun.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(offloads),
        )
    };
    cvt(ret).map(|_| ())
}

/// Writes one packet gathered from `bufs` to the TUN `tun` with one
/// `writev`, whatever an async runtime believes of the descriptor's
/// readiness (a TUN write never waits for room: the kernel takes the
/// packet into its stack at once, or refuses it). Returns the bytes
/// written.
pub fn write_tun(tun: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let count = libc::c_int::try_from(bufs.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `tun` is an open descriptor for the duration of the call;
    // `IoSlice` is ABI-compatible with `struct iovec` on Unix (std
    // documents it), and `bufs` outlives the call, which only reads the
    // `count` entries and the memory they point to.
    let written = unsafe { libc::writev(tun.as_raw_fd(), bufs.as_ptr().cast(), count) };
    usize::try_from(written).map_err(|_| io::Error::last_os_error())
}
