//! Netlink: the kernel's MPTCP path manager ([`MptcpPm`]).
//!
//! Everything is synchronous: the operations are rare and the kernel
//! answers at once, so async callers run them directly or from
//! `spawn_blocking`. A handle belongs to the network namespace of the
//! thread that opened it, for its whole life.
//!
//! Messages are encoded by the rust-netlink crates
//! (`netlink-packet-generic`, `netlink-packet-core`) and sent over a
//! `netlink-sys` socket; only the MPTCP path manager's attributes are
//! written here, because no crate covers its write commands.

mod mptcp;
mod socket;
#[cfg(test)]
mod tests;

use std::ffi::CStr;
use std::io;
use std::net::IpAddr;

pub use mptcp::{EndpointFlags, MptcpEndpoint, MptcpLimits, MptcpPm};

/// A netlink operation that failed: which one, on what, and the kernel's
/// errno as the source.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// [`MptcpPm::open`].
    #[error(
        "cannot open the kernel's MPTCP path manager (generic netlink family mptcp_pm); \
         is MPTCP built into this kernel?"
    )]
    OpenMptcpPm {
        /// The socket or family lookup error.
        #[source]
        source: io::Error,
    },
    /// [`MptcpPm::limits`].
    #[error("cannot read the MPTCP limits")]
    MptcpLimits {
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// [`MptcpPm::set_limits`].
    #[error(
        "cannot set the MPTCP limits to subflows {} add_addr_accepted {}",
        limits.subflows,
        limits.add_addr_accepted
    )]
    SetMptcpLimits {
        /// What was asked for.
        limits: MptcpLimits,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// [`MptcpPm::endpoints`].
    #[error("cannot list the MPTCP endpoints")]
    MptcpEndpoints {
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// [`MptcpPm::add_endpoint`].
    #[error("cannot add MPTCP endpoint {addr}{}", dev.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    AddEndpoint {
        /// The endpoint's address.
        addr: IpAddr,
        /// Its interface, if it had one.
        dev: Option<String>,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// [`MptcpPm::del_endpoint`].
    #[error("cannot delete MPTCP endpoint id {id}")]
    DelEndpoint {
        /// The endpoint id.
        id: u8,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// [`MptcpPm::set_endpoint_backup`].
    #[error(
        "cannot {} MPTCP endpoint id {id}",
        if *backup { "make a backup of" } else { "take backup off" }
    )]
    SetEndpointBackup {
        /// The endpoint id.
        id: u8,
        /// What was asked for.
        backup: bool,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}

impl NetlinkError {
    /// The kernel's errno (or the OS error) behind this failure, if any.
    pub fn errno(&self) -> Option<i32> {
        self.io().raw_os_error()
    }

    /// A delete or change of something that is not there: an MPTCP
    /// endpoint id. Lets callers make removal idempotent.
    pub fn is_not_found(&self) -> bool {
        let errno = self.errno();
        match self {
            Self::DelEndpoint { .. } | Self::SetEndpointBackup { .. } => {
                errno == Some(libc::ENOENT)
            }
            _ => false,
        }
    }

    /// An add of something that is already there, identical: an MPTCP
    /// endpoint for the same address. Lets callers make adding idempotent.
    ///
    /// An MPTCP endpoint id held by another address is `EBUSY` and not
    /// counted here: that is a conflict, not a repeat.
    pub fn is_already_exists(&self) -> bool {
        matches!(self, Self::AddEndpoint { .. }) && self.errno() == Some(libc::EEXIST)
    }

    fn io(&self) -> &io::Error {
        match self {
            Self::OpenMptcpPm { source }
            | Self::MptcpLimits { source }
            | Self::SetMptcpLimits { source, .. }
            | Self::MptcpEndpoints { source }
            | Self::AddEndpoint { source, .. }
            | Self::DelEndpoint { source, .. }
            | Self::SetEndpointBackup { source, .. } => source,
        }
    }
}

/// The name of interface `index` in the calling thread's namespace, for
/// messages; `#INDEX` when it has none (any more).
fn interface_name(index: u32) -> String {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buf` is IF_NAMESIZE bytes, as if_indextoname(3) requires; it
    // writes a NUL-terminated name into it or returns NULL.
    let name = unsafe { libc::if_indextoname(index, buf.as_mut_ptr().cast()) };
    if name.is_null() {
        return format!("#{index}");
    }
    match CStr::from_bytes_until_nul(&buf) {
        Ok(name) => name.to_string_lossy().into_owned(),
        Err(_) => format!("#{index}"),
    }
}
