//! The concentrator role: terminate clients' MPTCP connections and forward
//! each one to its destination as plain TCP.
//!
//! One task per connection, in data-flow order:
//!
//! 1. `listen`: the MPTCP listener (plain TCP clients
//!    fall back on it transparently), with TCP Fast Open.
//! 2. `accept`: read the connect header within the handshake timeout,
//!    authenticate the client, refuse replays (also those from before a
//!    restart: each run has its own epoch, [`crate::auth::ConnectGuard`]);
//!    then admit the request: destination [`policy`], the client's
//!    connection limit. A peer that fails authentication is closed without
//!    a word; a recent header for another run is told the current epoch.
//! 3. `forward`: connect to the destination within the connect timeout and
//!    answer `Connected` or an RFC 8803 Error TLV.
//! 4. `relay`: copy bytes both ways, propagating half-close and reset.

mod accept;
mod datagram;
pub mod exit;
mod forward;
mod handshakes;
mod listen;
pub mod policy;
mod probe;
mod reload;
mod status;

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};
use tracing::{debug, field, info, info_span, warn, Instrument as _, Span};

use crate::chain::Chain;
use crate::config::{ConcentratorConfig, SendBuffer};
use crate::control::http::HttpError;
use crate::control::socket::{ControlError, ControlSocket};
use crate::log_budget::{LogBudget, LOG_WINDOW};
use crate::relay::Side;
use crate::sendbuf::{self, Sizer};
use crate::sys::SysctlGuard;
use crate::wire::convert::{ClientId, Response, MAX_MESSAGE_LEN};
use accept::{Clients, HeaderBuf};
use handshakes::{Handshakes, Pending};
use policy::Policy;
pub use reload::{ReloadError, Reloaded, Reloader};

/// Connections at most that may be between accept and authentication at
/// once. Bounds what unauthenticated peers can hold (a task, a socket, a
/// header buffer each: about 8 KiB of memory and one descriptor); when all
/// are taken, a new connection still gets in and the oldest pending one of
/// the source holding the most is closed (see `handshakes`). One closed to
/// make room counts until its socket is closed, so at most one more socket
/// than this is ever in its handshake.
pub const MAX_HANDSHAKES: usize = 1024;

/// After shutdown is asked for, how long open connections may go on
/// before they are reset.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Receive and send buffer of the datagram tunnel's UDP socket.
const DATAGRAM_SOCKET_BUFFER: usize = 4 << 20;

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
    /// This run's epoch could not be drawn.
    #[error("cannot draw the concentrator's epoch")]
    Epoch(#[source] crate::auth::AuthError),
    /// Two clients have the same id (possible only in a config built in
    /// code; a config file with duplicates does not load).
    #[error("client id {id} is configured twice: give each client its own id")]
    DuplicateClient {
        /// The id.
        id: ClientId,
    },
    /// The datagram tunnel's exit could not be set up.
    #[error("cannot set up the datagram tunnel")]
    Exit(#[source] exit::ExitError),
    /// `[datagram]` without the concentrator's private key (possible only
    /// in a config built in code; a config file without one does not load).
    #[error("the datagram tunnel needs the concentrator's private_key")]
    NoPrivateKey,
    /// The datagram tunnel's keys are unusable.
    #[error("cannot set up the datagram tunnel's keys")]
    Keys(#[source] crate::crypto::ResponderError),
    /// The control socket could not be opened.
    #[error("cannot serve the status")]
    Control(#[from] ControlError),
    /// The metrics listener could not be opened.
    #[error("cannot serve the metrics")]
    Metrics(#[from] HttpError),
    /// The datagram tunnel's UDP port could not be opened.
    #[error("cannot open the datagram tunnel's UDP port {addr}: is another process using it?")]
    DatagramPort {
        /// The address.
        addr: SocketAddr,
        /// What the system said.
        #[source]
        source: io::Error,
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
    probes: Option<Arc<crate::udp::Socket>>,
    datagram: Option<DatagramSide>,
    shared: Arc<Shared>,
}

/// The datagram tunnel while it runs: its socket (the probes' unless it
/// has a port of its own), its state, and the exit (TUN, table, sysctls),
/// dropped when the concentrator stops.
#[derive(Debug)]
struct DatagramSide {
    socket: Arc<crate::udp::Socket>,
    own_socket: bool,
    datagrams: Arc<datagram::Datagrams>,
    _exit: exit::ExitGuards,
}

/// What every connection task reads.
#[derive(Debug)]
struct Shared {
    clients: Arc<Clients>,
    /// The destination policy. A reload sends a new one: each connection
    /// checks its destination against it and ends if it is denied now.
    policy: watch::Sender<Arc<Policy>>,
    /// The running config, as last reloaded (its `listen` the bound
    /// address): each connection's timeouts and send buffer, the status,
    /// and what the next reload compares with.
    config: RwLock<Arc<ConcentratorConfig>>,
    /// The connections between accept and authentication.
    handshakes: Arc<Handshakes>,
    /// Connections the open-file limit carries, for all clients.
    slots: accept::Slots,
    /// Rejections of peers that speak the protocol (replays among them:
    /// anyone who captured a header can cause them), logged at `info`.
    rejection_log: Mutex<LogBudget>,
    /// Rejections of everything else (scanners, garbage, silence, slow
    /// peers), logged at `debug`.
    noise_log: Mutex<LogBudget>,
    /// Counters for the status.
    stats: status::Stats,
    /// The datagram tunnel, for the status.
    datagrams: Option<Arc<datagram::Datagrams>>,
}

/// Locks `mutex`, also after a panic elsewhere (the state stays usable).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// The running config.
    fn config(&self) -> Arc<ConcentratorConfig> {
        Arc::clone(&self.config.read().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Rejections of peers that speak the protocol logged per window.
const REJECTIONS_LOGGED_PER_WINDOW: u32 = 5;
/// Other rejections logged (at `debug`) per window.
const NOISE_LOGGED_PER_WINDOW: u32 = 5;
/// Failed accepts logged per window.
const ACCEPT_ERRORS_LOGGED_PER_WINDOW: u32 = 1;

/// Pending connections closed to make room in the current log window.
#[derive(Debug, Default)]
struct Evictions {
    count: u64,
    latest: Option<IpAddr>,
}

impl Concentrator {
    /// Opens the listener of `config` and returns it with the address it is
    /// bound to (useful with port 0). Must run inside a Tokio runtime.
    pub fn bind(config: ConcentratorConfig) -> Result<(Self, SocketAddr), ConcentratorError> {
        // A new epoch per run: headers signed for an earlier run (captured
        // before a restart) are refused for ever, with nothing on disk.
        let epoch = crate::auth::Epoch::generate().map_err(ConcentratorError::Epoch)?;
        let clients = Arc::new(
            Clients::new(config.clients.clone(), epoch)
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
        let probes = udp_socket(local_addr)
            .map_err(|e| {
                warn!(addr = %local_addr, error = %e, "cannot open the probe echo (UDP); clients will not detect blackholed uplinks");
            })
            .ok()
            .map(Arc::new);
        let policy = Arc::new(Policy::new(
            config.policy.allow.clone(),
            config.policy.deny.clone(),
        ));
        let datagram = match &config.datagram {
            None => None,
            Some(dg) => Some(datagram_side(
                &config,
                dg,
                local_addr,
                probes.as_ref(),
                &policy,
            )?),
        };
        // The limit as raised at start (`run`); unknown: no cap but the
        // clients' own.
        let slots = crate::sys::open_file_limit()
            .map_or(accept::Slots::new(usize::MAX), |(soft, _)| {
                accept::Slots::for_descriptors(soft, MAX_HANDSHAKES)
            });
        info!(
            listen = %local_addr,
            multipath = listener.multipath,
            clients = clients.len(),
            epoch = %clients.epoch(),
            connections = slots.limit(),
            "concentrator listening"
        );
        let stats = status::Stats::new(&config);
        let mut running = config;
        running.listen = local_addr;
        let shared = Arc::new(Shared {
            clients,
            policy: watch::Sender::new(Arc::clone(&policy)),
            config: RwLock::new(Arc::new(running)),
            handshakes: Handshakes::new(MAX_HANDSHAKES),
            slots,
            rejection_log: Mutex::new(LogBudget::new(REJECTIONS_LOGGED_PER_WINDOW)),
            noise_log: Mutex::new(LogBudget::new(NOISE_LOGGED_PER_WINDOW)),
            stats,
            datagrams: datagram.as_ref().map(|d| Arc::clone(&d.datagrams)),
        });
        Ok((
            Self {
                listener,
                probes,
                datagram,
                shared,
            },
            local_addr,
        ))
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr
    }

    /// This run's epoch: connect headers must carry it (drawn at
    /// [`Concentrator::bind`]; a restart draws another).
    pub fn epoch(&self) -> crate::auth::Epoch {
        self.shared.clients.epoch()
    }

    /// Whether the listener is MPTCP; `false` when the kernel refused MPTCP
    /// and it fell back to plain TCP.
    pub fn is_multipath(&self) -> bool {
        self.listener.multipath
    }

    /// What builds this concentrator's status (`mpbond status`, metrics);
    /// its config was read from `path`.
    pub fn status_provider(&self, path: &std::path::Path) -> crate::control::Provider {
        status::provider(&self.shared, path, self.listener.multipath)
    }

    /// What applies a new config to this concentrator while it serves
    /// (see [`Reloader::reload`]).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            shared: Arc::clone(&self.shared),
        }
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
            datagram,
            shared,
        } = self;
        let shared_port = datagram.as_ref().filter(|d| !d.own_socket);
        let mut probe_task = probes.map(|socket| {
            tokio::spawn(datagram::serve_udp(
                socket,
                Arc::clone(&shared.clients),
                shared_port.map(|d| Arc::clone(&d.datagrams)),
            ))
        });
        let mut datagram_tasks = JoinSet::new();
        if let Some(side) = &datagram {
            if side.own_socket {
                datagram_tasks.spawn(datagram::serve_udp(
                    Arc::clone(&side.socket),
                    Arc::clone(&shared.clients),
                    Some(Arc::clone(&side.datagrams)),
                ));
            }
            datagram_tasks.spawn(datagram::serve_tun(
                Arc::clone(&side.socket),
                Arc::clone(&side.datagrams),
            ));
            datagram_tasks.spawn(datagram::tick(Arc::clone(&side.datagrams)));
        }
        let mut connections = JoinSet::new();
        let mut result = Ok(());
        let mut evictions = Evictions::default();
        let mut accept_errors = LogBudget::new(ACCEPT_ERRORS_LOGGED_PER_WINDOW);
        let mut log_window =
            tokio::time::interval_at(tokio::time::Instant::now() + LOG_WINDOW, LOG_WINDOW);
        let mut trim = tokio::time::interval(crate::sys::TRIM_EVERY);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = log_window.tick() => {
                    end_log_window(&shared, &mut evictions, &mut accept_errors);
                }
                // What closed connections freed goes back to the system.
                _ = trim.tick() => crate::sys::trim_free_memory(),
                Some(joined) = async { Some((&mut probe_task.as_mut()?).await) } => {
                    probe_task = None;
                    result = task_ended("probe echo", joined);
                    if result.is_err() {
                        break;
                    }
                }
                Some(joined) = datagram_tasks.join_next(), if !datagram_tasks.is_empty() => {
                    result = task_ended("datagram tunnel", joined);
                    if result.is_err() {
                        break;
                    }
                }
                Some(joined) = connections.join_next(), if !connections.is_empty() => {
                    if let Some(e) = joined.err().filter(JoinError::is_panic) {
                        warn!(error = %e, "a connection task panicked");
                    }
                }
                // Only while the handshake slots have room, counting the
                // connections pushed out whose sockets are still open: a
                // burst of accepts must not outrun their closes.
                accepted = async {
                    shared.handshakes.room().await;
                    listener.listener.accept().await
                } => match accepted {
                    Ok((stream, peer)) => {
                        let (pending, evicted) = shared.handshakes.admit(peer.ip());
                        if let Some(source) = evicted {
                            evictions.count += 1;
                            evictions.latest = Some(source);
                        }
                        let span = info_span!(
                            "conn",
                            %peer,
                            client = field::Empty,
                            dst = field::Empty
                        );
                        connections.spawn(
                            connection(Arc::clone(&shared), stream, pending).instrument(span),
                        );
                    }
                    Err(e) => {
                        if accept_errors.take() {
                            let hint = if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                                "; out of file descriptors: raise the open-file limit \
                                 (LimitNOFILE=) or lower max_connections"
                            } else {
                                ""
                            };
                            warn!(error = %e, "accepting a connection failed; pausing 100 ms{hint}");
                        }
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                },
            }
        }
        drop(listener);
        // Probes and datagrams go on answering through the grace: silent,
        // the concentrator would have its clients declare every uplink
        // dead and take their subflows down, and the resets at the end of
        // the grace would then have no way to them (their LAN hosts'
        // connections would hang instead of failing).
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
        if let Some(task) = probe_task {
            task.abort();
        }
        datagram_tasks.shutdown().await;
        drop(datagram);
        info!("concentrator stopped");
        result
    }
}

/// Ends a log window: one line per kind of event that was left out of the
/// log in it, with the count.
fn end_log_window(shared: &Shared, evictions: &mut Evictions, accept_errors: &mut LogBudget) {
    let window = LOG_WINDOW.as_secs();
    let rejected = lock(&shared.rejection_log).end_window();
    if rejected > 0 {
        info!(
            suppressed = rejected,
            "{rejected} more peers rejected in the last {window} s (not logged one by one)"
        );
    }
    let noise = lock(&shared.noise_log).end_window();
    if noise > 0 {
        debug!(
            suppressed = noise,
            "{noise} more peers without a valid connect header closed in the last {window} s"
        );
    }
    let failed = accept_errors.end_window();
    if failed > 0 {
        warn!(
            suppressed = failed,
            "{failed} more failed accepts in the last {window} s"
        );
    }
    let Evictions { count, latest } = std::mem::take(evictions);
    if let (true, Some(latest)) = (count > 0, latest) {
        info!(
            closed = count,
            %latest,
            limit = MAX_HANDSHAKES,
            "{count} pending connections closed in the last {window} s to make room: every \
             handshake slot was taken; the sources holding the most went first (the latest: \
             {latest})"
        );
    }
}

/// A UDP socket on `addr`, set up for batches (GRO; [`crate::udp`]).
fn udp_socket(addr: SocketAddr) -> io::Result<crate::udp::Socket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    crate::udp::Socket::new(tokio::net::UdpSocket::from_std(socket)?)
}

/// Opens the datagram tunnel: the exit (TUN, masquerade, forwarding), the
/// responder with the clients' public keys, and the UDP socket (the
/// probes' when the port is the same).
fn datagram_side(
    config: &ConcentratorConfig,
    dg: &crate::config::concentrator::DatagramExitConfig,
    local_addr: SocketAddr,
    probes: Option<&Arc<crate::udp::Socket>>,
    policy: &Arc<Policy>,
) -> Result<DatagramSide, ConcentratorError> {
    let Some(secret) = config.private_key.clone() else {
        // The config refuses [datagram] without a private key.
        return Err(ConcentratorError::NoPrivateKey);
    };
    let tunnel_clients = tunnel_clients(config);
    let responder = crate::crypto::Responder::new(
        secret,
        tunnel_clients.iter().map(|c| c.public_key),
        crate::crypto::SystemRng::new(),
    )
    .map_err(ConcentratorError::Keys)?;
    let addr = SocketAddr::new(local_addr.ip(), dg.port);
    let (socket, own_socket) = match probes {
        Some(probes) if dg.port == local_addr.port() => (Arc::clone(probes), false),
        _ => (
            Arc::new(
                udp_socket(addr)
                    .map_err(|source| ConcentratorError::DatagramPort { addr, source })?,
            ),
            true,
        ),
    };
    if let Err(e) = crate::sys::allow_fragments(&*socket, addr.is_ipv6()) {
        warn!(error = %e, "cannot allow fragments on the datagram socket; large datagrams may be refused");
    }
    // All clients' datagrams arrive on this one socket.
    if let Err(e) = crate::sys::set_datagram_buffers(&*socket, DATAGRAM_SOCKET_BUFFER) {
        warn!(error = %e, bytes = DATAGRAM_SOCKET_BUFFER, "cannot enlarge the datagram socket's buffers; bursts may be dropped");
    }
    exit::cleanup_leftovers();
    let exit_config = exit::ExitConfig {
        tun: dg.tun.clone(),
        ipv4: Some(dg.ipv4),
        ipv6: dg.ipv6,
        mtu: exit::TUN_MTU,
    };
    let (tun, vnet, guards) = exit::Exit::open(&exit_config)
        .map_err(ConcentratorError::Exit)?
        .into_parts();
    let datagrams = Arc::new(datagram::Datagrams::new(
        responder,
        tunnel_clients,
        (tun, vnet),
        Arc::clone(policy),
    ));
    info!(
        port = dg.port,
        tun = %dg.tun,
        clients = config.clients.iter().filter(|c| c.tunnel.is_some()).count(),
        "datagram tunnel open"
    );
    Ok(DatagramSide {
        socket,
        own_socket,
        datagrams,
        _exit: guards,
    })
}

/// The clients of `config` that use the datagram tunnel.
fn tunnel_clients(config: &ConcentratorConfig) -> Vec<datagram::TunnelClient> {
    config
        .clients
        .iter()
        .filter_map(|c| {
            let tunnel = c.tunnel?;
            Some(datagram::TunnelClient {
                id: c.id.clone(),
                public_key: c.public_key?,
                v4: Some(IpAddr::V4(tunnel.v4)),
                v6: tunnel.v6.map(IpAddr::V6),
            })
        })
        .collect()
}

/// Binds the listener of `config` (read from `path`), serves its status on
/// its control socket (and metrics, if configured), and serves clients
/// until `shutdown` completes.
pub async fn run(
    config: ConcentratorConfig,
    path: &std::path::Path,
    shutdown: impl Future,
    mut hangups: crate::reload::Hangups,
) -> Result<(), ConcentratorError> {
    // First: a second concentrator with the same config stops here.
    let control = ControlSocket::bind(&config.control.socket)?;
    let metrics = config
        .control
        .metrics
        .map(crate::control::http::bind)
        .transpose()?;
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
    // Two descriptors per connection: the client's tunnel and the
    // server's socket; and one per pending handshake (half a connection).
    let connections: usize = config.clients.iter().map(|c| c.max_connections).sum();
    crate::nofile::raise_for(
        "concentrator",
        (connections + MAX_HANDSHAKES.div_ceil(2)) as u64,
    );
    let (concentrator, _) = Concentrator::bind(config)?;
    let provider = concentrator.status_provider(path);
    let reloader = concentrator.reloader();
    let mut observers = JoinSet::new();
    observers.spawn(control.serve(provider.clone()));
    if let Some(listener) = metrics {
        // No uplinks here: the page shows the clients as they are now.
        let history = std::sync::Arc::default();
        observers.spawn(crate::control::http::serve(listener, provider, history));
    }
    let reloads = async {
        loop {
            hangups.next().await;
            reloader.reload_from(path);
        }
    };
    let served = tokio::select! {
        served = concentrator.serve(shutdown) => served,
        never = reloads => never,
    };
    // Dropping the tasks closes the socket and removes its file.
    observers.shutdown().await;
    served
}

/// What the end of a task the concentrator cannot run without means: a
/// return is fine (the task logged why it stopped), a panic is
/// [`ConcentratorError::TaskPanicked`].
fn task_ended(task: &'static str, joined: Result<(), JoinError>) -> Result<(), ConcentratorError> {
    joined.map_err(|source| ConcentratorError::TaskPanicked { task, source })
}

/// One client connection, from accept to close; runs in its span.
async fn connection(shared: Arc<Shared>, mut stream: TcpStream, mut pending: Pending) {
    // The settings of the config running now serve the whole connection;
    // the policy is watched from here on (a reload may deny the
    // destination later).
    let config = shared.config();
    let mut policy = shared.policy.subscribe();
    let mut header: HeaderBuf = [0; MAX_MESSAGE_LEN];
    // The answer and the first relayed bytes must not wait for each other's
    // ACK (Nagle); that would add a round trip to every connection.
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "cannot set TCP_NODELAY");
    }
    // A bounded send buffer: what a dead line had in flight is re-sent
    // behind what is queued on the surviving ones, so less queued means a
    // shorter stall (FIELD-NOTES). Autotuning would grow it to megabytes.
    if let SendBuffer::Fixed(bytes) = config.send_buffer {
        if let Err(e) = socket2::SockRef::from(&stream).set_send_buffer_size(bytes as usize) {
            debug!(error = %e, "cannot set the tunnel's send buffer");
        }
    }
    let read = tokio::select! {
        read = accept::read_header(&mut stream, &mut header, config.handshake_timeout) => read,
        () = pending.evicted() => Err(accept::Rejected::Evicted),
    };
    let authenticated = read.and_then(|(request, early)| {
        let client =
            shared
                .clients
                .authenticate(&request, crate::auth::unix_ms(), Instant::now())?;
        Ok((client, request, early))
    });
    // From here on, the handshake slot is given back only once the socket
    // is closed (or counted by a connection slot), and an eviction closes
    // it at once, also while a refusal is being answered.
    let (client, request, early) = match authenticated {
        Ok(authenticated) => authenticated,
        Err(rejected) => {
            shared.stats.rejected(&rejected);
            tokio::select! {
                biased;
                () = reject(&shared, stream, rejected) => {}
                () = pending.evicted() => {}
            }
            drop(pending);
            return;
        }
    };
    let counters = shared.stats.client(&client.id);
    let destination = request.destination;
    Span::current()
        .record("client", client.id.as_str())
        .record("dst", field::display(destination));
    info!("client authenticated");

    let current = Arc::clone(&policy.borrow_and_update());
    let admitted = match client.admit(destination, &current, &shared.slots) {
        Ok(admitted) => admitted,
        Err(refused) => {
            if let Some(c) = &counters {
                c.refused();
            }
            info!(error = %Chain(&refused), code = %refused.code(), "request refused");
            let answer = async {
                forward::established(&stream, config.handshake_timeout).await;
                if let Err(e) = forward::refuse(stream, refused.code()).await {
                    debug!(error = %e, "answering the refusal failed");
                }
            };
            tokio::select! {
                biased;
                () = answer => {}
                () = pending.evicted() => {}
            }
            drop(pending);
            return;
        }
    };
    // The connection slot counts this socket now.
    drop(pending);
    let server = match forward::connect(destination, config.connect_timeout).await {
        Ok(server) => server,
        Err(e) => {
            if let Some(c) = &counters {
                c.refused();
            }
            info!(error = %Chain(&e), code = %e.code(), "connecting to the destination failed");
            drop(admitted);
            forward::established(&stream, config.handshake_timeout).await;
            if let Err(e) = forward::refuse(stream, e.code()).await {
                debug!(error = %e, "answering the refusal failed");
            }
            return;
        }
    };
    if let Some(c) = &counters {
        c.admitted();
    }
    let local = server
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!(
        %local,
        open = admitted.client.open_connections(),
        "connected to destination"
    );
    forward::established(&stream, config.handshake_timeout).await;
    if let Err(e) = forward::connected(&mut stream).await {
        info!(error = %e, "client gone before the answer; resetting the destination");
        let _ = socket2::SockRef::from(&server).set_linger(Some(Duration::ZERO));
        return;
    }
    let sized = (config.send_buffer == SendBuffer::Auto)
        .then(|| (Side::Client, Sizer::new(sendbuf::Policy::downloads(), 0)));
    let counted = counters.as_deref().map(status::ClientCounters::meters);
    let relayed = tokio::select! {
        relayed = crate::relay::relay_counted(&stream, &server, &header[early], sized, counted) => {
            Some(relayed)
        }
        why = reload::disallowed(&admitted.client, destination, &mut policy) => {
            // Both ends learn at once that the connection is over.
            for socket in [&stream, &server] {
                let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
            }
            info!("connection reset: {why} (config reload)");
            None
        }
    };
    match relayed {
        Some(Ok(done)) => info!(up = done.up, down = done.down, "connection closed"),
        Some(Err(e)) => info!(error = %Chain(&e), "connection reset"),
        None => {}
    }
    drop(admitted);
}

/// Closes a peer whose header was refused: without a word (a reset), but for a
/// recent authentic header of another run, which gets the current epoch,
/// and an authentic header from outside the time window, which gets this
/// host's clock (within the client's budget).
async fn reject(shared: &Shared, stream: TcpStream, rejected: accept::Rejected) {
    let answer = rejected.answer();
    let what = match answer {
        Some(Response::StaleClock { .. }) => "answered with this host's clock; closing",
        Some(_) => "answered with this run's epoch; closing",
        None => "closing without an answer",
    };
    if rejected.speaks_protocol() {
        if lock(&shared.rejection_log).take() {
            info!(error = %Chain(&rejected), "peer rejected; {what}");
        }
    } else if lock(&shared.noise_log).take() {
        debug!(error = %Chain(&rejected), "peer rejected; {what}");
    }
    let Some(answer) = answer else {
        // A reset, so that a client that sent the same header again to
        // rescue a tunnel whose uplink died learns at once that the first
        // copy got through (an MPTCP close with the client's bytes unread
        // can take seconds to reach it).
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        return;
    };
    forward::established(&stream, shared.config().handshake_timeout).await;
    if let Err(e) = forward::answer_and_close(stream, answer).await {
        debug!(error = %e, "answering the refused header failed");
    }
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
