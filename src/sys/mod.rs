//! The only place with `unsafe`: thin, checked wrappers over Linux syscalls
//! and netlink.
//!
//! Every wrapper returns `std::io::Result` (netlink: [`NetlinkError`], which
//! names the operation and carries the errno) and owns its file descriptors
//! ([`OwnedFd`](std::os::fd::OwnedFd)), so nothing leaks on error paths.
//! Callers above this module stay safe Rust.

mod iface;
mod memory;
mod mptcp_info;
mod netlink;
mod netns;
mod nft;
mod rlimit;
mod sockopt;
mod sysctl;
mod tun;

pub use mptcp_info::{mptcp_fell_back, mptcp_subflow_locals};
pub use netlink::{
    AddressFamily, EndpointFlags, FlushReport, LinkEvent, LinkEvents, LinkStats, MptcpEndpoint,
    MptcpEvent, MptcpEventKind, MptcpEvents, MptcpLimits, MptcpPm, NetlinkError, Route, Rtnl, Rule,
    MAIN_TABLE, MPBOND_RTPROT,
};
pub use netns::enter_netns;
pub use nft::{NftError, NftTable};
pub use rlimit::{open_file_limit, set_open_file_limit};
pub use sockopt::{
    allow_fragments, mptcp_subflows, path_mtu, set_datagram_buffers, set_recv_buffer,
    set_tcp_fastopen_connect, set_tcp_fastopen_listener, tcp_state, SubflowInfo, SUBFLOW_INFO_LEN,
    TCP_ESTABLISHED,
};
pub use sysctl::{read_sysctl, SysctlGuard, RECORDS as SYSCTL_RECORDS};

pub use iface::interface_index;
pub use memory::{trim_free_memory, TRIM_EVERY};
pub use tun::{set_tun_offloads, write_tun, TUN_TCP_OFFLOADS, TUN_UDP_OFFLOADS};

use std::io;

/// Turns a libc return value of -1 into the thread's `errno`.
fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
