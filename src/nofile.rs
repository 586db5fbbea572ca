//! Raising the open-file limit to what the config needs.
//!
//! Each relayed connection holds two descriptors at either end (the LAN
//! host's socket and the tunnel at the client; the tunnel and the server's
//! socket at the concentrator), so the inherited limit (1024 under a
//! systemd service by default, whose hard limit is 524,288) would cap a
//! client at about 500 flows. At start each end raises its soft limit to
//! what it needs, and its hard limit too where it may (root, up to
//! `fs.nr_open`); if the system allows less it says so, with the number
//! of connections that caps it at and what to change.

use tracing::{info, warn};

/// Descriptors kept for everything that is not a connection (sockets,
/// netlink, the TUN, files, tokio).
pub const SPARE: u64 = 256;

/// Descriptors that `connections` concurrent connections need.
pub fn needed(connections: u64) -> u64 {
    connections.saturating_mul(2).saturating_add(SPARE)
}

/// The limits to ask for, given the current (soft, hard) and what is
/// needed: `None` when the soft limit is enough already; else first the
/// needed soft and hard limit (privileged), then, if that is refused, the
/// soft limit raised as far as the hard one allows.
pub fn plan(current: (u64, u64), wanted: u64) -> Option<[(u64, u64); 2]> {
    let (soft, hard) = current;
    (soft < wanted).then(|| [(wanted, hard.max(wanted)), (wanted.min(hard), hard)])
}

/// The number of connections `limit` descriptors carry.
pub fn connections_for(limit: u64) -> u64 {
    limit.saturating_sub(SPARE) / 2
}

/// Raises the process's open-file limit for `connections` concurrent
/// connections (`what`: "client" or "concentrator", for the log); logs
/// what it did and warns when the system allows less. Returns the soft
/// limit now in force (`None` if it cannot be read).
pub fn raise_for(what: &str, connections: u64) -> Option<u64> {
    let wanted = needed(connections);
    let current = match crate::sys::open_file_limit() {
        Ok(current) => current,
        Err(e) => {
            warn!(error = %e, "cannot read the open-file limit (RLIMIT_NOFILE)");
            return None;
        }
    };
    let Some(tries) = plan(current, wanted) else {
        return Some(current.0);
    };
    for (soft, hard) in tries {
        if crate::sys::set_open_file_limit(soft, hard).is_ok() {
            if soft >= wanted {
                info!(
                    before = current.0,
                    now = soft,
                    connections,
                    "{what}: open-file limit raised"
                );
            } else {
                warn!(
                    limit = soft,
                    hard,
                    wanted,
                    connections = connections_for(soft),
                    "{what}: the system's open-file limit caps this at about that many \
                     connections; raise the hard limit (LimitNOFILE= in the systemd unit, \
                     or ulimit -Hn) to at least the wanted number"
                );
            }
            return Some(soft);
        }
    }
    warn!(
        limit = current.0,
        wanted,
        connections = connections_for(current.0),
        "{what}: cannot raise the open-file limit; this caps it at about that many \
         connections: raise LimitNOFILE= in the systemd unit, or ulimit -n"
    );
    Some(current.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_rises_to_what_is_needed_and_the_hard_one_if_it_must() {
        assert_eq!(needed(1024), 2 * 1024 + SPARE);
        assert_eq!(
            plan((1024, 524_288), 2304),
            Some([(2304, 524_288), (2304, 524_288)])
        );
        assert_eq!(
            plan((1024, 4096), 131_328),
            Some([(131_328, 131_328), (4096, 4096)]),
            "privileged: both; else as far as the hard limit goes"
        );
        assert_eq!(plan((200_000, 200_000), 131_328), None, "enough already");
        assert_eq!(connections_for(1024), 384);
        assert_eq!(connections_for(100), 0);
        assert_eq!(needed(u64::MAX), u64::MAX);
    }
}
