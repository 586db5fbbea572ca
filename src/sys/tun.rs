//! TUN device settings tun-rs does not expose.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::cvt;

/// The TUN offloads for TCP only: partial checksums, TCP segmentation over
/// IPv4 and IPv6 (no UDP segmentation: UDP comes one datagram at a time).
pub const TUN_TCP_OFFLOADS: libc::c_uint = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;

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
