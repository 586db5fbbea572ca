//! Copy bytes both ways between the client's stream and the destination's,
//! so that each end sees what it would have seen connected directly:
//!
//! - **Half-close:** end of stream from one side becomes `shutdown(Write)`
//!   towards the other, and the opposite direction keeps going until it
//!   ends too.
//! - **Reset:** an error on either side (a reset, a timeout) resets the
//!   other with `SO_LINGER` 0, never a clean close: a transfer cut short
//!   must not look complete. The same happens when the relay is dropped
//!   midway (the concentrator shutting down), and when the process dies
//!   (`kill -9`, a crash): both sockets carry `SO_LINGER` 0 from the start
//!   of the relay until it has ended cleanly, so the kernel resets them
//!   when it closes a dead process's descriptors. Without that it would
//!   send a FIN for any socket with nothing unread, and the peer would
//!   take a download or an upload cut short for a complete one.
//!
//! - **Dead peers:** keepalive probes on both sockets end a relay whose
//!   client or server vanished without a reset, freeing its slot.
//!
//! `tokio::io::copy_bidirectional` closes cleanly after an error, so it
//! does not do.

use std::fmt;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;
use tracing::debug;

use crate::sendbuf::Sizer;

/// Bytes buffered per direction at first: a request or a small answer.
/// Most connections never need more, and ten thousand of them must fit a
/// small router (`bench.sh scale`).
const START_LEN: usize = 4 * 1024;
/// The most bytes buffered per direction: a read that fills the buffer
/// doubles it up to this (a bulk transfer reaches it within a few reads).
const BUFFER_LEN: usize = 64 * 1024;

/// Idle time before keepalive probes start.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Time between keepalive probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes before the kernel drops the connection.
const KEEPALIVE_RETRIES: u32 = 6;

/// Which end of a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The mpbond client, over MPTCP.
    Client,
    /// The destination server, over TCP.
    Server,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Client => "client",
            Self::Server => "destination",
        })
    }
}

/// What a relay that ended cleanly carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transferred {
    /// Bytes from the client to the destination, early payload included.
    pub(crate) up: u64,
    /// Bytes from the destination to the client.
    pub(crate) down: u64,
}

/// Why a relay ended with a reset.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RelayError {
    /// Reading from one side failed.
    #[error("reading from the {side} failed")]
    Read {
        /// The side read from.
        side: Side,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// Writing to one side failed.
    #[error("writing to the {side} failed")]
    Write {
        /// The side written to.
        side: Side,
        /// What the system said.
        #[source]
        source: io::Error,
    },
}

/// Relays between `client` and `server` until both directions have ended;
/// `early` (payload that arrived with the connect header) goes to the server
/// first.
///
/// `sized`: the side whose socket is an MPTCP tunnel whose send buffer
/// follows its subflows ([`crate::sendbuf`]), re-evaluated as the relay
/// writes to it.
///
/// On `Err`, both sockets are set to reset on close; the caller closes them
/// by dropping them.
pub(crate) async fn relay(
    client: &TcpStream,
    server: &TcpStream,
    early: &[u8],
    sized: Option<(Side, Sizer)>,
) -> Result<Transferred, RelayError> {
    relay_counted(client, server, early, sized, None).await
}

/// [`relay`], adding the bytes written each way to `counted` (up, down)
/// as they go, for a live count across connections.
pub(crate) async fn relay_counted(
    client: &TcpStream,
    server: &TcpStream,
    early: &[u8],
    sized: Option<(Side, Sizer)>,
    counted: Option<(&AtomicU64, &AtomicU64)>,
) -> Result<Transferred, RelayError> {
    let mut guard = ResetOnDrop {
        sockets: [client, server],
        armed: true,
    };
    guard.reset_on_close(true);
    for stream in [client, server] {
        keepalive(stream);
        // Relayed bytes go out as they come: Nagle would hold a small write
        // (a response after the connect answer) for a round trip.
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, "cannot set TCP_NODELAY");
        }
    }
    let mut up = vec![0; START_LEN.max(early.len())];
    up[..early.len()].copy_from_slice(early);
    let down = vec![0; START_LEN];
    let (mut to_server, mut to_client) = (None, None);
    match sized {
        Some((Side::Server, sizer)) => to_server = Some(sizer),
        Some((Side::Client, sizer)) => to_client = Some(sizer),
        None => {}
    }
    let (up_count, down_count) = counted.unzip();
    let (up, down) = tokio::try_join!(
        pump(
            client,
            server,
            up,
            early.len(),
            Side::Client,
            to_server,
            up_count
        ),
        pump(server, client, down, 0, Side::Server, to_client, down_count),
    )?;
    // Both directions ended with a FIN each way: close cleanly, after
    // what is still queued has gone.
    guard.reset_on_close(false);
    guard.armed = false;
    Ok(Transferred { up, down })
}

/// Copies `from` → `to` until `from` ends, starting with `buf[..pending]`,
/// then half-closes `to`; `sizer` sizes `to`'s send buffer as it goes;
/// `counted` adds up what was written. `buf` grows (see [`grown`]) while
/// reads fill it. Returns the bytes written.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    mut buf: Vec<u8>,
    mut pending: usize,
    from_side: Side,
    mut sizer: Option<Sizer>,
    counted: Option<&AtomicU64>,
) -> Result<u64, RelayError> {
    let to_side = match from_side {
        Side::Client => Side::Server,
        Side::Server => Side::Client,
    };
    let write_error = |source| RelayError::Write {
        side: to_side,
        source,
    };
    let mut total = 0;
    loop {
        if pending > 0 {
            write_all(to, &buf[..pending]).await.map_err(write_error)?;
            total += pending as u64;
            if let Some(counted) = counted {
                counted.fetch_add(pending as u64, Ordering::Relaxed);
            }
            if let Some(sizer) = sizer.as_mut() {
                sizer.tick(std::time::Instant::now(), to);
            }
        }
        if let Some(len) = grown(pending, buf.len()) {
            buf.resize(len, 0);
        }
        pending = read(from, &mut buf)
            .await
            .map_err(|source| RelayError::Read {
                side: from_side,
                source,
            })?;
        if pending == 0 {
            break;
        }
    }
    SockRef::from(to)
        .shutdown(Shutdown::Write)
        .map_err(write_error)?;
    Ok(total)
}

/// The new length of a relay buffer of `len` bytes whose last read brought
/// `read` bytes: double while reads fill it, up to [`BUFFER_LEN`].
fn grown(read: usize, len: usize) -> Option<usize> {
    (read >= len && len < BUFFER_LEN).then(|| (len * 2).min(BUFFER_LEN))
}

/// Reads what is available, waiting for at least one byte or end of stream.
pub(crate) async fn read(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Err(e) if retry(&e) => continue,
            result => return result,
        }
    }
}

pub(crate) async fn write_all(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        stream.writable().await?;
        match stream.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if retry(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Readiness can be spurious; `try_read`/`try_write` then say so.
fn retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

fn keepalive(stream: &TcpStream) {
    let params = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    if let Err(e) = SockRef::from(stream).set_tcp_keepalive(&params) {
        debug!(error = %e, "cannot enable keepalive probes");
    }
}

/// Makes both sockets reset on close unless disarmed: after an error, and
/// when the relay future is dropped before it ends.
struct ResetOnDrop<'a> {
    sockets: [&'a TcpStream; 2],
    armed: bool,
}

impl ResetOnDrop<'_> {
    /// `SO_LINGER` 0 on both sockets (`reset`), or the default graceful
    /// close again.
    fn reset_on_close(&self, reset: bool) {
        let linger = reset.then_some(Duration::ZERO);
        for socket in self.sockets {
            // A socket that cannot take the option is already closed or
            // reset; there is nothing more to do for it.
            if let Err(e) = SockRef::from(socket).set_linger(linger) {
                debug!(error = %e, reset, "cannot set SO_LINGER");
            }
        }
    }
}

impl Drop for ResetOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.reset_on_close(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    #[test]
    fn buffers_start_small_and_double_while_reads_fill_them() {
        let mut len = START_LEN;
        assert_eq!(grown(100, len), None, "a small read keeps it");
        let mut steps = 0;
        while let Some(next) = grown(len, len) {
            len = next;
            steps += 1;
        }
        assert_eq!((len, steps), (BUFFER_LEN, 4));
        assert_eq!(grown(BUFFER_LEN, BUFFER_LEN), None);
        // Early payload larger than the start: already past it.
        assert_eq!(grown(70_000, 70_000), None);
    }

    /// A connected pair of loopback TCP streams.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (near, far) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (near.expect("connect"), far.expect("accept").0)
    }

    async fn bounded<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("test timed out")
    }

    #[tokio::test]
    async fn early_bytes_go_first_and_half_close_propagates() {
        bounded(async {
            let (mut client, client_end) = pair().await;
            let (server_end, mut server) = pair().await;
            let relay =
                tokio::spawn(async move { relay(&client_end, &server_end, b"early ", None).await });

            client.write_all(b"late").await.expect("write");
            client.shutdown().await.expect("half-close");
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.expect("read to EOF");
            assert_eq!(got, b"early late");

            server
                .write_all(b"still talking")
                .await
                .expect("write after EOF");
            server.shutdown().await.expect("half-close");
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.expect("read to EOF");
            assert_eq!(back, b"still talking");

            let transferred = relay.await.expect("join").expect("clean end");
            assert_eq!(transferred, Transferred { up: 10, down: 13 });
        })
        .await;
    }

    /// `SO_LINGER` of `stream`: `Some(0)` means its close is a reset.
    fn linger(stream: &TcpStream) -> Option<Duration> {
        SockRef::from(stream).linger().expect("SO_LINGER")
    }

    #[tokio::test]
    async fn sockets_reset_on_close_while_relaying_and_close_cleanly_after() {
        bounded(async {
            let (mut client, client_end) = pair().await;
            let (server_end, mut server) = pair().await;
            let ends = std::sync::Arc::new((client_end, server_end));
            let relay = {
                let ends = std::sync::Arc::clone(&ends);
                tokio::spawn(async move { relay(&ends.0, &ends.1, b"", None).await })
            };
            client.write_all(b"x").await.expect("write");
            let mut one = [0; 1];
            server.read_exact(&mut one).await.expect("relayed");
            // Running: were the process to die now, the kernel would reset
            // both connections instead of ending them with a FIN.
            assert_eq!(linger(&ends.0), Some(Duration::ZERO));
            assert_eq!(linger(&ends.1), Some(Duration::ZERO));

            client.shutdown().await.expect("half-close");
            server.shutdown().await.expect("half-close");
            let mut rest = Vec::new();
            server.read_to_end(&mut rest).await.expect("EOF");
            client.read_to_end(&mut rest).await.expect("EOF");
            relay.await.expect("join").expect("clean end");
            // Ended cleanly: closing must let queued bytes go, then FIN.
            assert_eq!(linger(&ends.0), None);
            assert_eq!(linger(&ends.1), None);
        })
        .await;
    }

    /// Writes `data` to `stream` and half-closes it while reading what
    /// comes back to the end.
    async fn exchange(stream: &mut TcpStream, data: &[u8]) -> Vec<u8> {
        let (mut r, mut w) = stream.split();
        let (_, got) = tokio::join!(
            async {
                w.write_all(data).await.expect("write");
                w.shutdown().await.expect("half-close");
            },
            async {
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.expect("read to EOF");
                got
            }
        );
        got
    }

    #[tokio::test]
    async fn megabytes_both_ways_arrive_intact_as_the_buffers_grow() {
        bounded(async {
            let (mut client, client_end) = pair().await;
            let (server_end, mut server) = pair().await;
            let relay =
                tokio::spawn(async move { relay(&client_end, &server_end, b"", None).await });
            let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
            let (client_got, server_got) =
                tokio::join!(exchange(&mut client, &data), exchange(&mut server, &data));
            assert!(client_got == data && server_got == data, "bytes differ");
            let transferred = relay.await.expect("join").expect("clean end");
            assert_eq!(
                transferred,
                Transferred {
                    up: 3_000_000,
                    down: 3_000_000
                }
            );
        })
        .await;
    }

    #[tokio::test]
    async fn a_reset_on_one_side_resets_the_other() {
        bounded(async {
            let (mut client, client_end) = pair().await;
            let (server_end, server) = pair().await;
            let relay =
                tokio::spawn(async move { relay(&client_end, &server_end, b"", None).await });

            SockRef::from(&server)
                .set_linger(Some(Duration::ZERO))
                .expect("linger");
            drop(server);
            let mut buf = [0; 16];
            let err = client.read(&mut buf).await.expect_err("must be reset");
            assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
            assert!(matches!(
                relay.await.expect("join"),
                Err(RelayError::Read {
                    side: Side::Server,
                    ..
                })
            ));
        })
        .await;
    }

    #[tokio::test]
    async fn dropping_the_relay_resets_both_sides() {
        bounded(async {
            let (mut client, client_end) = pair().await;
            let (server_end, mut server) = pair().await;
            let relay =
                tokio::spawn(async move { relay(&client_end, &server_end, b"", None).await });
            client.write_all(b"x").await.expect("write");
            let mut one = [0; 1];
            server.read_exact(&mut one).await.expect("relayed");
            relay.abort();
            let mut buf = [0; 16];
            for end in [&mut client, &mut server] {
                let err = end.read(&mut buf).await.expect_err("must be reset");
                assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
            }
        })
        .await;
    }
}
