//! The client: captures the site's TCP in a TUN device, lets the kernel
//! terminate each flow on a local listener ([`redirect`]), and carries each
//! flow to the concentrator as one MPTCP connection whose subflows use every
//! uplink ([`system`] is the one owner of the routing and path manager
//! set-up).
//!
//! Tasks: one reads the TUN and rewrites packets; one accepts per address
//! family; one per flow opens its tunnel and relays; one expires old flows;
//! one reloads the config at each SIGHUP (`reload.rs` says what changes).

mod capture;
mod clock;
mod datagram;
mod flow;
mod health;
mod joins;
pub mod redirect;
mod reload;
mod status;
pub mod system;
mod tun;
mod tunnel;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};
use tokio::net::TcpListener;
use tokio::task::{JoinError, JoinSet};
use tracing::{info, warn};

use crate::config::ClientConfig;
use crate::control::http::HttpError;
use crate::control::socket::{ControlError, ControlSocket};
use crate::sys::{LinkEvents, MptcpEvents, MptcpPm, NetlinkError};
use redirect::{ConnectMode, FlowKey, FlowTable, RedirectAddrs};
use system::UplinkError;
use tunnel::{Tunnel, Tunnels, WarmPool};

/// The port the redirect's listeners use on the TUN's addresses.
pub const LISTEN_PORT: u16 = 7301;

/// How often old flows are expired.
const EXPIRE_EVERY: Duration = Duration::from_secs(5);

/// At shutdown, how long the relayed flows' tasks may take to end once
/// aborted (each only closes two sockets).
const FLOWS_END_WITHIN: Duration = Duration::from_secs(1);

/// At shutdown, how long the capture keeps running after the flows were
/// reset, to carry their resets out of the TUN to the LAN hosts (each is
/// one packet the kernel queued on the TUN when the socket closed).
const RESETS_DRAIN: Duration = Duration::from_millis(100);

/// Why the client could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TUN device could not be created.
    #[error(
        "cannot create TUN device {name}: is another mpbond client running, \
         and does this host have /dev/net/tun (modprobe tun)?"
    )]
    Tun {
        /// The device name.
        name: String,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// Routing or the path manager could not be set up.
    #[error("cannot set up the uplinks")]
    Uplinks(#[from] UplinkError),
    /// A redirect listener could not be opened.
    #[error("cannot listen on {addr} for redirected flows")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// The uplink health watcher's thread could not be started.
    #[error("cannot start the uplink health watcher")]
    Health {
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// Reading or writing the TUN device failed.
    #[error("the TUN device {name} failed")]
    TunIo {
        /// The device name.
        name: String,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// Uplink health could not open its own handle on the path manager,
    /// without which it cannot move traffic off a failed uplink.
    #[error(
        "uplink health cannot reach the kernel's MPTCP path manager, so failover would \
         never happen: check that the kernel has CONFIG_MPTCP and that \
         net.mptcp.enabled=1 (sysctl)"
    )]
    HealthPathManager(#[source] NetlinkError),
    /// The control socket or the metrics listener could not be opened.
    #[error("cannot serve the status")]
    Control(#[from] ControlError),
    /// The metrics listener could not be opened.
    #[error("cannot serve the metrics")]
    Metrics(#[from] HttpError),
    /// Uplink health could not subscribe to the kernel's link and address
    /// events.
    #[error(
        "uplink health cannot subscribe to the kernel's link and address events \
         (rtnetlink), so carrier loss would go unnoticed: check the process's \
         file descriptor limit and that no sandbox denies netlink sockets"
    )]
    HealthLinkEvents(#[source] io::Error),
    /// A task the client cannot run without panicked (or was cancelled,
    /// which nothing does before shutdown). One flow's relay task is not
    /// such a task: its panic ends that flow alone.
    #[error(
        "the client's {task} task panicked; exiting so that a supervisor \
         restarts the client"
    )]
    TaskPanicked {
        /// Which task: "capture", "accept", "expire", "health", "warm pool",
        /// "control socket", "metrics" or "reload".
        task: &'static str,
        /// The panic, with its message.
        #[source]
        source: JoinError,
    },
}

/// What the client's tasks share.
struct Shared {
    tun: tun::Tun,
    tun_name: String,
    addrs: RedirectAddrs,
    mode: ConnectMode,
    table: Mutex<FlowTable>,
    /// Strict mode: tunnels opened for held SYNs, waiting for the listener
    /// to accept their flow.
    parked: Mutex<HashMap<FlowKey, (Instant, Tunnel)>>,
    tunnels: Tunnels,
    /// Whether each uplink's MPTCP subflows join.
    joins: Arc<joins::JoinWatch>,
    /// The datagram tunnel, if the config has one.
    datagrams: Option<Arc<datagram::Datagrams>>,
    /// The relayed flows' tasks, so that shutdown can reset them while the
    /// capture still carries the resets to the LAN hosts.
    flows: Mutex<JoinSet<()>>,
    /// The uplinks as health last published them, for `mpbond status`.
    status: status::Board,
    start: Instant,
}

impl Shared {
    /// Time since start: the redirect's clock.
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn table(&self) -> MutexGuard<'_, FlowTable> {
        // A panic while holding the lock leaves a table that is still
        // consistent (every method finishes its update before returning).
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn flows(&self) -> MutexGuard<'_, JoinSet<()>> {
        self.flows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `flow` as one of the relayed flows' tasks (forgetting those
    /// that ended).
    fn spawn_flow(&self, flow: impl Future<Output = ()> + Send + 'static) {
        let mut flows = self.flows();
        while flows.try_join_next().is_some() {}
        flows.spawn(flow);
    }

    /// Resets every relayed flow, and gives the capture the time to carry
    /// the resets to the LAN hosts: stopped without this, the client would
    /// leave each LAN host waiting on a connection nobody serves (a host
    /// that only receives would never learn of it).
    async fn reset_flows(&self) {
        let mut flows = std::mem::take(&mut *self.flows());
        if flows.is_empty() {
            return;
        }
        info!(flows = flows.len(), "resetting the relayed flows");
        // An aborted relay closes both its sockets with SO_LINGER 0.
        flows.abort_all();
        let _ = tokio::time::timeout(FLOWS_END_WITHIN, async {
            while flows.join_next().await.is_some() {}
        })
        .await;
        tokio::time::sleep(RESETS_DRAIN).await;
    }

    fn parked(&self) -> MutexGuard<'_, HashMap<FlowKey, (Instant, Tunnel)>> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs the client with the config read from `path` until `shutdown`
/// completes or a part fails; removes everything it installed before
/// returning. Each of `hangups` reads `path` again and applies what
/// changed (see `reload.rs`).
pub async fn run(
    config: ClientConfig,
    path: &std::path::Path,
    shutdown: impl Future,
    hangups: crate::reload::Hangups,
) -> Result<(), ClientError> {
    // First: a second client with the same config stops here, before it
    // touches anything.
    let control = ControlSocket::bind(&config.control.socket)?;
    let metrics = config
        .control
        .metrics
        .map(crate::control::http::bind)
        .transpose()?;
    // Two descriptors per flow: the LAN host's socket and its tunnel.
    let limit = crate::nofile::raise_for("client", redirect::MAX_FLOWS as u64);
    let max_flows = limit
        .and_then(|limit| usize::try_from(crate::nofile::connections_for(limit)).ok())
        .map_or(redirect::MAX_FLOWS, |n| n.min(redirect::MAX_FLOWS));
    let tun_config = &config.tun;
    let tun = tun::Tun::open(tun_config).map_err(|source| ClientError::Tun {
        name: tun_config.name.clone(),
        source,
    })?;
    info!(name = %tun_config.name, ipv4 = %tun_config.ipv4, ipv6 = %tun_config.ipv6, "TUN device up");

    // Opened before anything is installed: without them health would only
    // log and failover would silently never happen. The path manager handle
    // goes to the owner of system state, through which health changes the
    // endpoints.
    let pm = MptcpPm::open().map_err(ClientError::HealthPathManager)?;
    let link_events =
        LinkEvents::open(health::EVENT_POLL).map_err(ClientError::HealthLinkEvents)?;

    // Dropping it (an early return below) removes everything again.
    let nat = config
        .datagram
        .as_ref()
        .map(|d| (d.address_v4, d.address_v6));
    let system = system::start(
        &config.uplinks,
        &tun_config.name,
        config.concentrator.ip(),
        pm,
        nat,
    )
    .await?;
    let clock = Arc::new(clock::Clock::new());
    let datagrams = match (&config.datagram, &config.identity) {
        (Some(dg), Some(identity)) => {
            let settings: Vec<_> = config
                .uplinks
                .iter()
                .map(|u| crate::datagram::schedule::PathSettings { backup: u.backup })
                .collect();
            Some(Arc::new(datagram::Datagrams::new(
                identity.clone(),
                SocketAddr::new(config.concentrator.ip(), dg.port),
                dg.scheduler(),
                &settings,
                (dg.address_v4.into(), dg.address_v6.map(Into::into)),
                dg.mtu,
                Arc::clone(&clock),
            )))
        }
        _ => None,
    };
    let uplinks = system.uplinks().await;
    let candidates: Vec<health::Candidate<'_>> = uplinks
        .iter()
        .map(|uplink| health::Candidate {
            uplink,
            rank: (!uplink.addr.is_unspecified()).then_some(0),
            rtt: None,
        })
        .collect();
    let source = health::pick_source(&candidates, None);
    let joins = joins::JoinWatch::new(&uplinks);
    match MptcpEvents::open(joins::EVENT_POLL) {
        Ok(events) => {
            if let Err(e) = joins::spawn(&joins, events) {
                warn!(error = %e, "cannot start the MPTCP join watcher; a line that strips MPTCP options goes unreported");
            }
        }
        Err(e) => warn!(
            error = %e,
            "cannot subscribe to the MPTCP path manager's events; a line that strips MPTCP \
             options goes unreported"
        ),
    }

    let addrs = RedirectAddrs {
        tun_v4: tun_config.ipv4.addr(),
        fake_v4: tun_config.fake_v4(),
        tun_v6: tun_config.ipv6.addr(),
        fake_v6: tun_config.fake_v6(),
        listen_port: LISTEN_PORT,
    };
    let listeners = [
        listen(SocketAddr::new(addrs.tun_v4.into(), LISTEN_PORT))?,
        listen(SocketAddr::new(addrs.tun_v6.into(), LISTEN_PORT))?,
    ];

    let shared = Arc::new(Shared {
        tun,
        tun_name: tun_config.name.clone(),
        addrs,
        mode: config.connect_mode,
        table: Mutex::new(FlowTable::with_limit(addrs, config.connect_mode, max_flows)),
        parked: Mutex::new(HashMap::new()),
        tunnels: Tunnels {
            concentrator: config.concentrator,
            id: config.id.clone(),
            key: config.key.clone(),
            paths: tokio::sync::watch::Sender::new(tunnel::Paths {
                source,
                live: Vec::new(),
            }),
            settings: tokio::sync::watch::Sender::new(tunnel_settings(&config)),
            warm: WarmPool::new(),
            epoch: std::sync::atomic::AtomicU64::new(crate::auth::Epoch::UNKNOWN.as_u64()),
            clock,
        },
        joins,
        datagrams,
        flows: Mutex::new(JoinSet::new()),
        status: status::Board::default(),
        start: Instant::now(),
    });

    let mut tasks = Tasks::default();
    tasks.spawn("capture", capture::run(shared.clone()));
    for listener in listeners {
        tasks.spawn("accept", flow::accept_loop(shared.clone(), listener));
    }
    tasks.spawn("expire", expire_loop(shared.clone()));
    if let Some(datagrams) = &shared.datagrams {
        tasks.spawn("datagram timers", datagram::timers(Arc::clone(datagrams)));
    }
    let (orders, orders_rx) = tokio::sync::mpsc::unbounded_channel();
    tasks.spawn(
        "health",
        health::watch(
            shared.clone(),
            system.clone(),
            uplinks.clone(),
            link_events,
            orders_rx,
        ),
    );
    let warm = shared.clone();
    tasks.spawn("warm pool", async move {
        warm.tunnels.keep_warm().await;
        Ok(())
    });
    let provider = status::provider(&shared, &config, path);
    tasks.spawn("control socket", {
        let provider = provider.clone();
        async move {
            control.serve(provider).await;
            Ok(())
        }
    });
    if let Some(listener) = metrics {
        let history = shared.status.history();
        tasks.spawn("metrics", async move {
            crate::control::http::serve(listener, provider, history).await;
            Ok(())
        });
    }
    info!(
        concentrator = %config.concentrator,
        mode = ?config.connect_mode,
        uplinks = uplinks.len(),
        source = ?source,
        "client ready"
    );
    tasks.spawn(
        "reload",
        reload_loop(shared.clone(), config, path.to_owned(), hangups, orders),
    );

    let result = tokio::select! {
        _ = shutdown => {
            info!("stopping");
            Ok(())
        }
        Some(ended) = tasks.join_next() => ended,
    };
    // The capture still runs: it carries the flows' resets to the LAN.
    shared.reset_flows().await;
    tasks.set.shutdown().await;
    drop(shared);
    // Also after a task failed or panicked; waits until it is all gone.
    match system.shutdown().await {
        Ok(()) => info!("uplink set-up removed"),
        Err(e) => warn!(error = %e, "could not remove all of the uplink set-up"),
    }
    result
}

/// What new tunnels are opened with, as `config` says.
fn tunnel_settings(config: &ClientConfig) -> tunnel::TunnelSettings {
    tunnel::TunnelSettings {
        timeout: config.connect_timeout,
        send_buffer: config.send_buffer,
        warm: config.warm_connections,
        warm_max_age: config.warm_max_age,
    }
}

/// Reloads the config from `path` at each request of `hangups` (SIGHUP),
/// until the client stops; never returns otherwise. A file that does not
/// load changes nothing; one that does is compared with the running
/// config ([`reload::plan`]): tunnel settings and the datagram policy apply
/// at once, uplink changes go to health as `orders`, and keys that need a
/// restart keep their running value.
async fn reload_loop(
    shared: Arc<Shared>,
    mut running: ClientConfig,
    path: std::path::PathBuf,
    mut hangups: crate::reload::Hangups,
    orders: tokio::sync::mpsc::UnboundedSender<reload::UplinkOrder>,
) -> Result<(), ClientError> {
    let mut slots: reload::Slots = running.uplinks.iter().cloned().map(Some).collect();
    loop {
        hangups.next().await;
        let new = match ClientConfig::load(&path) {
            Ok(new) => new,
            Err(e) => {
                warn!(
                    path = %path.display(),
                    error = %crate::chain::Chain(&e),
                    "reload refused: the file has an error; the running config stays, unchanged"
                );
                continue;
            }
        };
        let plan = reload::plan(&running, &slots, &new);
        if plan.is_empty() {
            info!(path = %path.display(), "config reloaded: nothing changed");
            continue;
        }
        if plan.settings_changed() {
            shared.tunnels.set_settings(tunnel_settings(&plan.config));
            if let (Some(datagrams), Some(dg)) = (&shared.datagrams, &plan.config.datagram) {
                datagrams.set_policy(&dg.scheduler());
            }
        }
        if !plan.restart.is_empty() {
            warn!(
                keys = ?plan.restart,
                "config reload: these keys changed but take effect only after a restart \
                 (systemctl restart); their running values stay"
            );
        }
        info!(path = %path.display(), "config reloaded: {plan}");
        for order in plan.orders {
            // Health runs as long as this task does.
            let _ = orders.send(order);
        }
        running = plan.config;
        slots = plan.slots;
    }
}

/// The client's top-level tasks, each with a name for the error that says
/// which one panicked.
#[derive(Default)]
struct Tasks {
    set: JoinSet<Result<(), ClientError>>,
    names: HashMap<tokio::task::Id, &'static str>,
}

impl Tasks {
    fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = Result<(), ClientError>> + Send + 'static,
    ) {
        let id = self.set.spawn(task).id();
        self.names.insert(id, name);
    }

    /// Waits for the next task to end and says what that means for the
    /// client: the task's own result, or [`ClientError::TaskPanicked`].
    /// `None` when no task is left.
    async fn join_next(&mut self) -> Option<Result<(), ClientError>> {
        let joined = self.set.join_next_with_id().await?;
        Some(match joined {
            Ok((_, result)) => result,
            Err(source) => Err(ClientError::TaskPanicked {
                task: self.names.get(&source.id()).copied().unwrap_or("unnamed"),
                source,
            }),
        })
    }
}

/// A listener on a TUN address. Bound with `IP_FREEBIND`: the TUN's IPv6
/// address may still be tentative (duplicate address detection).
fn listen(addr: SocketAddr) -> Result<TcpListener, ClientError> {
    let make = || -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        match addr.ip() {
            IpAddr::V4(_) => socket.set_freebind_v4(true)?,
            IpAddr::V6(_) => {
                socket.set_only_v6(true)?;
                socket.set_freebind_v6(true)?;
            }
        }
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&SockAddr::from(addr))?;
        socket.listen(1024)?;
        TcpListener::from_std(std::net::TcpListener::from(socket))
    };
    make().map_err(|source| ClientError::Listen { addr, source })
}

async fn expire_loop(shared: Arc<Shared>) -> Result<(), ClientError> {
    let mut tick = tokio::time::interval(EXPIRE_EVERY);
    let mut trimmed = Instant::now();
    loop {
        tick.tick().await;
        if trimmed.elapsed() >= crate::sys::TRIM_EVERY {
            crate::sys::trim_free_memory();
            trimmed = Instant::now();
        }
        shared.table().expire(shared.now());
        shared
            .parked()
            .retain(|_, (at, _)| at.elapsed() < redirect::UNCLAIMED_TIMEOUT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicked_task_is_an_error_naming_it() {
        let mut tasks = Tasks::default();
        tasks.spawn("expire", std::future::pending());
        tasks.spawn("capture", async { panic!("test panic in capture") });
        let ended = tasks.join_next().await.expect("a task ended");
        let Err(
            error @ ClientError::TaskPanicked {
                task: "capture", ..
            },
        ) = ended
        else {
            panic!("expected the capture task's panic, got {ended:?}");
        };
        assert_eq!(
            error.to_string(),
            "the client's capture task panicked; exiting so that a supervisor restarts the client"
        );
        let source = std::error::Error::source(&error).expect("the panic is the source");
        assert!(
            source.to_string().contains("test panic in capture"),
            "{source}"
        );
        tasks.set.shutdown().await;
    }

    #[tokio::test]
    async fn a_task_that_ends_gives_its_own_result() {
        let mut tasks = Tasks::default();
        tasks.spawn("expire", async { Ok(()) });
        assert!(matches!(tasks.join_next().await, Some(Ok(()))));
        assert!(tasks.join_next().await.is_none());
    }
}
