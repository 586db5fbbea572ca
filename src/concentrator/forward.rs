//! Connect to the destination and answer the client: `Connected`, or an
//! Error TLV whose code tells the client how to fail its LAN flow
//! (`ConnectionReset` → the LAN host sees a reset, as if it had connected
//! directly).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::accept::Refused;
use crate::wire::convert::{ErrorCode, Response};

/// How long a refused client may take to close its side after the Error
/// TLV, so that the close does not reset the connection before it is read.
const REFUSE_DRAIN: Duration = Duration::from_secs(1);

/// How often [`established`] looks at the connection's state.
const ESTABLISHED_POLL: Duration = Duration::from_millis(1);

/// Waits (at most `limit`) until a Fast Open connection has left SYN-RECV.
///
/// A client's SYN can carry the whole connect header, so the header is read
/// before the handshake has finished. Linux (seen on 6.18) does not send
/// what an MPTCP socket writes in that state when the handshake completes:
/// the answer would sit in the send queue until the client gives up. Writing
/// only once the connection is established avoids that; this costs nothing
/// in the usual case, where the handshake ends while the destination is
/// being connected.
pub(super) async fn established(stream: &TcpStream, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match crate::sys::tcp_state(stream) {
            Ok(state) if state == SYN_RECV => {}
            // Established, or closing: writing is safe or moot either way.
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the connection state");
                return;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::debug!("handshake still unfinished; answering anyway");
            return;
        }
        tokio::time::sleep(ESTABLISHED_POLL).await;
    }
}

/// `tcpi_state` of a passive Fast Open connection before the client's ACK.
const SYN_RECV: u8 = 3;

/// Why the destination could not be reached.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectError {
    /// The handshake did not finish within the connect timeout.
    #[error("connecting to {destination} timed out after {after:?}")]
    TimedOut {
        /// The destination.
        destination: SocketAddr,
        /// The timeout.
        after: Duration,
    },
    /// The system refused or failed the connection.
    #[error("connecting to {destination} failed")]
    Failed {
        /// The destination.
        destination: SocketAddr,
        /// What the system said.
        #[source]
        source: io::Error,
    },
}

impl ConnectError {
    /// The RFC 8803 error code that tells the client what happened.
    pub(super) fn code(&self) -> ErrorCode {
        match self {
            Self::TimedOut { .. } => ErrorCode::DestinationUnreachable,
            Self::Failed { source, .. } => match source.kind() {
                io::ErrorKind::ConnectionRefused => ErrorCode::ConnectionReset,
                io::ErrorKind::HostUnreachable
                | io::ErrorKind::NetworkUnreachable
                | io::ErrorKind::TimedOut => ErrorCode::DestinationUnreachable,
                _ => ErrorCode::NetworkFailure,
            },
        }
    }
}

impl Refused {
    /// The RFC 8803 error code that tells the client what happened.
    pub(super) fn code(&self) -> ErrorCode {
        match self {
            Self::Denied(_) => ErrorCode::NotAuthorized,
            Self::Busy { .. } | Self::Full { .. } => ErrorCode::ResourceExceeded,
        }
    }
}

/// Opens a plain TCP connection to `destination` within `timeout`.
pub(super) async fn connect(
    destination: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    match tokio::time::timeout(timeout, TcpStream::connect(destination)).await {
        Err(_) => Err(ConnectError::TimedOut {
            destination,
            after: timeout,
        }),
        Ok(result) => result.map_err(|source| ConnectError::Failed {
            destination,
            source,
        }),
    }
}

/// Tells the client its request succeeded; the relay starts after this.
pub(super) async fn connected(client: &mut TcpStream) -> io::Result<()> {
    client.write_all(&Response::Connected.encode()).await
}

/// Answers the client with an Error TLV carrying `code` and closes.
///
/// Closing a socket with unread data resets it, and a reset can make the
/// client's kernel drop the answer unread. So after the answer the client
/// gets [`REFUSE_DRAIN`] to close its side, while anything it still sends
/// is discarded.
pub(super) async fn refuse(client: TcpStream, code: ErrorCode) -> io::Result<()> {
    answer_and_close(client, Response::Error { code, value: 0 }).await
}

/// Answers the client with `response` (a refusal) and closes, as
/// [`refuse`] does.
pub(super) async fn answer_and_close(mut client: TcpStream, response: Response) -> io::Result<()> {
    client.write_all(&response.encode()).await?;
    client.shutdown().await?;
    let mut sink = [0; 4096];
    let _ = tokio::time::timeout(REFUSE_DRAIN, async {
        while client.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(kind: io::ErrorKind) -> ErrorCode {
        ConnectError::Failed {
            destination: "198.51.100.7:443".parse().expect("addr"),
            source: io::Error::from(kind),
        }
        .code()
    }

    #[test]
    fn connect_errors_map_to_rfc_8803_codes() {
        assert_eq!(
            failed(io::ErrorKind::ConnectionRefused),
            ErrorCode::ConnectionReset
        );
        assert_eq!(
            failed(io::ErrorKind::HostUnreachable),
            ErrorCode::DestinationUnreachable
        );
        assert_eq!(
            failed(io::ErrorKind::NetworkUnreachable),
            ErrorCode::DestinationUnreachable
        );
        assert_eq!(
            failed(io::ErrorKind::TimedOut),
            ErrorCode::DestinationUnreachable
        );
        assert_eq!(
            failed(io::ErrorKind::AddrNotAvailable),
            ErrorCode::NetworkFailure
        );
        assert_eq!(
            failed(io::ErrorKind::PermissionDenied),
            ErrorCode::NetworkFailure
        );
        let timed_out = ConnectError::TimedOut {
            destination: "198.51.100.7:443".parse().expect("addr"),
            after: Duration::from_secs(5),
        };
        assert_eq!(timed_out.code(), ErrorCode::DestinationUnreachable);
    }

    #[test]
    fn os_errors_have_the_kinds_mapped_above() {
        let kind = |errno| io::Error::from_raw_os_error(errno).kind();
        assert_eq!(kind(libc::ECONNREFUSED), io::ErrorKind::ConnectionRefused);
        assert_eq!(kind(libc::EHOSTUNREACH), io::ErrorKind::HostUnreachable);
        assert_eq!(kind(libc::ENETUNREACH), io::ErrorKind::NetworkUnreachable);
        assert_eq!(kind(libc::ETIMEDOUT), io::ErrorKind::TimedOut);
    }
}
