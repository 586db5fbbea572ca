//! The emulator's only `unsafe`: AF_PACKET sockets, interface flags,
//! eventfd, timer slack and waiting with a nanosecond timeout.
//!
//! Every wrapper returns `std::io::Result` and owns its file descriptors
//! ([`OwnedFd`](std::os::fd::OwnedFd)), so nothing leaks on error paths.
//! Callers above this module stay safe Rust.

mod packet;

pub use packet::{
    interface_index, set_interface_up, set_timer_slack, wait_readable, EventFd, PacketSocket,
    MAX_BATCH,
};

use std::io;

/// Turns a libc return value of -1 into the thread's `errno`.
fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Same as [`cvt`] for calls returning `ssize_t`.
fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        // A non-negative ssize_t always fits in usize.
        Ok(ret as usize)
    }
}
