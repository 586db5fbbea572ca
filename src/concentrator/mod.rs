//! The concentrator role: terminate clients' MPTCP connections and forward
//! each one to its destination as plain TCP.
//!
//! One task per connection, in data-flow order:
//!
//! 1. `listen`: the MPTCP listener (plain TCP clients
//!    fall back on it transparently), with TCP Fast Open.
//! 2. `accept`: read the connect header within the handshake timeout,
//!    authenticate the client, refuse replays; then admit the request:
//!    destination [`policy`], the client's connection limit. A peer that
//!    fails authentication is closed without a word.
//! 3. `forward`: connect to the destination within the connect timeout and
//!    answer `Connected` or an RFC 8803 Error TLV.
//! 4. `relay`: copy bytes both ways, propagating half-close and reset.

mod accept;
pub mod exit;
mod forward;
mod listen;
pub mod policy;
mod probe;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinSet};
use tracing::{debug, field, info, info_span, warn, Instrument as _, Span};

use crate::chain::Chain;
use crate::config::{ConcentratorConfig, SendBuffer};
use crate::relay::Side;
use crate::sendbuf::{self, Sizer};
use crate::sys::SysctlGuard;
use crate::wire::convert::{ClientId, MAX_MESSAGE_LEN};
use accept::{Clients, HeaderBuf};
use policy::Policy;

/// Connections at most that may be between accept and authentication at
/// once; more are closed at once. Bounds what unauthenticated peers can
/// hold (a task, a socket, a header buffer each).
pub const MAX_HANDSHAKES: usize = 1024;

/// After shutdown is asked for, how long open connections may go on
/// before they are reset.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Pause after a failed `accept` (out of file descriptors, typically), so
/// the loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Why the concentrator could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConcentratorError {
    /// The listening socket could not be set up.
    #[error(
        "cannot listen on {addr}: check that the address belongs to this host \
         and that no other process uses the port"
    )]
    Listen {
        /// The configured listen address.
        addr: SocketAddr,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// Two clients have the same id (possible only in a config built in
    /// code; a config file with duplicates does not load).
    #[error("client id {id} is configured twice: give each client its own id")]
    DuplicateClient {
        /// The id.
        id: ClientId,
    },
    /// A task the concentrator cannot run without panicked. One
    /// connection's task is not such a task: its panic ends that connection
    /// alone.
    #[error(
        "the concentrator's {task} task panicked; exiting so that a supervisor \
         restarts the concentrator"
    )]
    TaskPanicked {
        /// Which task.
        task: &'static str,
        /// The panic, with its message.
        #[source]
        source: JoinError,
    },
}

/// A concentrator bound to its listen address, ready to serve.
#[derive(Debug)]
pub struct Concentrator {
    listener: listen::Listener,
    probes: Option<tokio::net::UdpSocket>,
    shared: Arc<Shared>,
}

/// What every connection task reads.
#[derive(Debug)]
struct Shared {
    clients: Arc<Clients>,
    policy: Policy,
    handshake_timeout: Duration,
    connect_timeout: Duration,
    /// How accepted tunnels' send buffers are sized.
    send_buffer: SendBuffer,
    handshakes: Arc<Semaphore>,
}

impl Concentrator {
    /// Opens the listener of `config` and returns it with the address it is
    /// bound to (useful with port 0). Must run inside a Tokio runtime.
    pub fn bind(config: ConcentratorConfig) -> Result<(Self, SocketAddr), ConcentratorError> {
        let clients = Arc::new(
            Clients::new(config.clients)
                .map_err(|dup| ConcentratorError::DuplicateClient { id: dup.0 })?,
        );
        let listener =
            listen::listen(config.listen).map_err(|source| ConcentratorError::Listen {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr;
        // The uplink probes' echo, on the same port over UDP. Without it
        // the concentrator still serves; clients then only see carrier
        // loss, not blackholed lines.
        let probes = std::net::UdpSocket::bind(local_addr)
            .and_then(|socket| {
                socket.set_nonblocking(true)?;
                tokio::net::UdpSocket::from_std(socket)
            })
            .map_err(|e| {
                warn!(addr = %local_addr, error = %e, "cannot open the probe echo (UDP); clients will not detect blackholed uplinks");
            })
            .ok();
        info!(
            listen = %local_addr,
            multipath = listener.multipath,
            clients = clients.len(),
            "concentrator listening"
        );
        let shared = Arc::new(Shared {
            clients,
            policy: Policy::new(config.policy.allow, config.policy.deny),
            handshake_timeout: config.handshake_timeout,
            connect_timeout: config.connect_timeout,
            send_buffer: config.send_buffer,
            handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
        });
        Ok((
            Self {
                listener,
                probes,
                shared,
            },
            local_addr,
        ))
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr
    }

    /// Whether the listener is MPTCP; `false` when the kernel refused MPTCP
    /// and it fell back to plain TCP.
    pub fn is_multipath(&self) -> bool {
        self.listener.multipath
    }

    /// Serves clients until `shutdown` completes; then stops accepting,
    /// gives open connections [`SHUTDOWN_GRACE`] to finish and resets the
    /// rest.
    ///
    /// # Errors
    ///
    /// [`ConcentratorError::TaskPanicked`] if the probe echo's task
    /// panicked; connections are then wound down as on shutdown. A
    /// connection task's panic is only logged.
    pub async fn serve(self, shutdown: impl Future) -> Result<(), ConcentratorError> {
        let Self {
            listener,
            probes,
            shared,
        } = self;
        let mut probe_task =
            probes.map(|socket| tokio::spawn(probe::serve(socket, Arc::clone(&shared.clients))));
        let mut connections = JoinSet::new();
        let mut result = Ok(());
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(joined) = async { Some((&mut probe_task.as_mut()?).await) } => {
                    probe_task = None;
                    result = task_ended("probe echo", joined);
                    if result.is_err() {
                        break;
                    }
                }
                Some(joined) = connections.join_next(), if !connections.is_empty() => {
                    if let Some(e) = joined.err().filter(JoinError::is_panic) {
                        warn!(error = %e, "a connection task panicked");
                    }
                }
                accepted = listener.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let Ok(handshake) = Arc::clone(&shared.handshakes).try_acquire_owned()
                        else {
                            debug!(%peer, "too many handshakes in progress; closing");
                            continue;
                        };
                        let span = info_span!(
                            "conn",
                            %peer,
                            client = field::Empty,
                            dst = field::Empty
                        );
                        connections.spawn(
                            connection(Arc::clone(&shared), stream, handshake).instrument(span),
                        );
                    }
                    Err(e) => {
                        warn!(error = %e, "accept failed; pausing");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                },
            }
        }
        drop(listener);
        if let Some(task) = probe_task {
            task.abort();
        }
        if !connections.is_empty() {
            info!(
                open = connections.len(),
                grace = ?SHUTDOWN_GRACE,
                "stopped accepting; waiting for open connections"
            );
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
                while connections.join_next().await.is_some() {}
            })
            .await;
            if !connections.is_empty() {
                info!(open = connections.len(), "resetting connections still open");
            }
            connections.shutdown().await;
        }
        info!("concentrator stopped");
        result
    }
}

/// Binds the listener of `config` and serves until `shutdown` completes.
pub async fn run(
    config: ConcentratorConfig,
    shutdown: impl Future,
) -> Result<(), ConcentratorError> {
    // The listener's TCP_FASTOPEN works only with the server bit of this
    // sysctl (the default, 1, enables clients only). Owned: restored when
    // the guard drops on the way out.
    let _fast_open = match SysctlGuard::set_bits("net.ipv4.tcp_fastopen", 0x2) {
        Ok(guard) => guard,
        Err(e) => {
            warn!(error = %e, "cannot enable server-side TCP Fast Open; connects take one more round trip");
            None
        }
    };
    let (concentrator, _) = Concentrator::bind(config)?;
    concentrator.serve(shutdown).await
}

/// What the end of a task the concentrator cannot run without means: a
/// return is fine (the task logged why it stopped), a panic is
/// [`ConcentratorError::TaskPanicked`].
fn task_ended(task: &'static str, joined: Result<(), JoinError>) -> Result<(), ConcentratorError> {
    joined.map_err(|source| ConcentratorError::TaskPanicked { task, source })
}

/// One client connection, from accept to close; runs in its span.
async fn connection(shared: Arc<Shared>, mut stream: TcpStream, handshake: OwnedSemaphorePermit) {
    let mut header: HeaderBuf = [0; MAX_MESSAGE_LEN];
    // The answer and the first relayed bytes must not wait for each other's
    // ACK (Nagle); that would add a round trip to every connection.
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "cannot set TCP_NODELAY");
    }
    // A bounded send buffer: what a dead line had in flight is re-sent
    // behind what is queued on the surviving ones, so less queued means a
    // shorter stall (FIELD-NOTES). Autotuning would grow it to megabytes.
    if let SendBuffer::Fixed(bytes) = shared.send_buffer {
        if let Err(e) = socket2::SockRef::from(&stream).set_send_buffer_size(bytes as usize) {
            debug!(error = %e, "cannot set the tunnel's send buffer");
        }
    }
    let read = accept::read_header(&mut stream, &mut header, shared.handshake_timeout).await;
    let authenticated = read.and_then(|(request, early)| {
        let client = shared
            .clients
            .authenticate(&request, crate::auth::unix_ms())?;
        Ok((client, request, early))
    });
    drop(handshake);
    let (client, request, early) = match authenticated {
        Ok(authenticated) => authenticated,
        Err(rejected) if rejected.speaks_protocol() => {
            info!(error = %Chain(&rejected), "peer rejected; closing without an answer");
            return;
        }
        Err(rejected) => {
            debug!(error = %Chain(&rejected), "peer rejected; closing without an answer");
            return;
        }
    };
    let destination = request.destination;
    Span::current()
        .record("client", client.id.as_str())
        .record("dst", field::display(destination));
    info!("client authenticated");

    let admitted = match client.admit(destination, &shared.policy) {
        Ok(admitted) => admitted,
        Err(refused) => {
            info!(error = %Chain(&refused), code = %refused.code(), "request refused");
            forward::established(&stream, shared.handshake_timeout).await;
            if let Err(e) = forward::refuse(stream, refused.code()).await {
                debug!(error = %e, "answering the refusal failed");
            }
            return;
        }
    };
    let server = match forward::connect(destination, shared.connect_timeout).await {
        Ok(server) => server,
        Err(e) => {
            info!(error = %Chain(&e), code = %e.code(), "connecting to the destination failed");
            drop(admitted);
            forward::established(&stream, shared.handshake_timeout).await;
            if let Err(e) = forward::refuse(stream, e.code()).await {
                debug!(error = %e, "answering the refusal failed");
            }
            return;
        }
    };
    let local = server
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!(
        %local,
        open = admitted.client.open_connections(),
        "connected to destination"
    );
    forward::established(&stream, shared.handshake_timeout).await;
    if let Err(e) = forward::connected(&mut stream).await {
        info!(error = %e, "client gone before the answer; resetting the destination");
        let _ = socket2::SockRef::from(&server).set_linger(Some(Duration::ZERO));
        return;
    }
    let sized = (shared.send_buffer == SendBuffer::Auto)
        .then(|| (Side::Client, Sizer::new(sendbuf::Policy::downloads(), 0)));
    match crate::relay::relay(&stream, &server, &header[early], sized).await {
        Ok(done) => info!(up = done.up, down = done.down, "connection closed"),
        Err(e) => info!(error = %Chain(&e), "connection reset"),
    }
    drop(admitted);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicked_task_is_an_error_naming_it() {
        let joined = tokio::spawn(async { panic!("test panic in the probe echo") }).await;
        let error = task_ended("probe echo", joined).expect_err("a panic is an error");
        assert_eq!(
            error.to_string(),
            "the concentrator's probe echo task panicked; exiting so that a supervisor \
             restarts the concentrator"
        );
        let source = std::error::Error::source(&error).expect("the panic is the source");
        assert!(
            source.to_string().contains("test panic in the probe echo"),
            "{source}"
        );
        assert!(task_ended("probe echo", tokio::spawn(async {}).await).is_ok());
    }
}
