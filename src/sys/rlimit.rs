//! The process's open-file limit (`RLIMIT_NOFILE`).

use std::io;

use super::cvt;

/// The open-file limit now: (soft, hard).
pub fn open_file_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into `limit`, which lives
    // across the call.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) })?;
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Sets the open-file limit to `soft` and `hard` (raising `hard` needs
/// `CAP_SYS_RESOURCE`, and it may not pass `fs.nr_open`).
pub fn set_open_file_limit(soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads one `rlimit` from `limit`, which lives across
    // the call.
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) })?;
    Ok(())
}
