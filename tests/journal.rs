//! Under systemd, standard error is the journal (`JOURNAL_STREAM` names
//! it): lines carry a syslog priority and no time of their own. Elsewhere
//! (the variable left over but standard error redirected) they do not.

use std::io::Read as _;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

/// What `mpbond client` with a missing config writes to standard error
/// when that is a socket, with `JOURNAL_STREAM` naming it (`named`) or
/// another stream.
fn stderr_of_a_failed_start(named: bool) -> String {
    let (ours, theirs) = UnixStream::pair().expect("socket pair");
    let meta = std::fs::metadata(format!("/proc/self/fd/{}", theirs.as_raw_fd()))
        .expect("the socket's inode");
    let stream = if named {
        format!("{}:{}", meta.dev(), meta.ino())
    } else {
        format!("{}:{}", meta.dev(), meta.ino() + 1)
    };
    let status = Command::new(env!("CARGO_BIN_EXE_mpbond"))
        .args(["client", "--config", "/nonexistent/mpbond-client.toml"])
        .env("JOURNAL_STREAM", stream)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(OwnedFd::from(theirs))
        .status()
        .expect("run mpbond");
    assert!(!status.success(), "a missing config must fail the start");
    ours.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut out = String::new();
    let mut ours = ours;
    ours.read_to_string(&mut out)
        .expect("read its standard error");
    out
}

#[test]
fn the_journal_gets_priorities_and_a_redirected_stream_does_not() {
    let journal = stderr_of_a_failed_start(true);
    assert!(
        journal
            .starts_with("<3>mpbond: /nonexistent/mpbond-client.toml: cannot read the config file"),
        "{journal:?}"
    );
    let elsewhere = stderr_of_a_failed_start(false);
    assert!(
        elsewhere
            .starts_with("mpbond: /nonexistent/mpbond-client.toml: cannot read the config file"),
        "{elsewhere:?}"
    );
}
