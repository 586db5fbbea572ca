//! Network namespaces: run the calling thread inside a named namespace.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::cvt;

/// Moves the calling thread into the network namespace `name` (as made by
/// `ip netns add`, i.e. `/run/netns/NAME`). Other threads are unaffected;
/// sockets opened afterwards by this thread belong to that namespace.
pub fn enter_netns(name: &str) -> io::Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a namespace name"),
        ));
    }
    let file = File::open(Path::new("/run/netns").join(name))?;
    // SAFETY: setns(2) on a descriptor we own, for the calling thread only;
    // it touches no memory of ours.
    cvt(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) })?;
    Ok(())
}
