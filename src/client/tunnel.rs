//! One flow's tunnel: an MPTCP connection to the concentrator whose first
//! bytes are the signed connect header (in the SYN, with TCP Fast Open),
//! and the concentrator's answer.
//!
//! Each header is signed, when a flow needs it, for the concentrator epoch
//! last announced (none at start). A concentrator that restarted refuses it
//! with its new epoch under a MAC bound to that header; the tunnel then
//! signs again and retries once on a new connection. Nothing was forwarded,
//! so the LAN host's first bytes go again safely (see
//! [`crate::auth::ConnectGuard`]). Likewise, a header whose timestamp the
//! concentrator finds outside its window (this host's clock stepped, or
//! is off) is answered with the concentrator's clock and epoch: the client
//! corrects its clock offset ([`super::clock`]) and retries once.
//!
//! A tunnel whose every subflow is on an uplink that died before the
//! answer came (it was opened just before the cut: the kernel joins the
//! other uplinks only once the connection is fully established) would hang
//! until the connect timeout. It is **rescued**: the same signed bytes go
//! once more on a new tunnel from a live uplink. The concentrator's replay
//! guard makes that safe: if the first copy reached it, the second is
//! refused unanswered and nothing is forwarded twice; then the first
//! tunnel gets [`RESCUE_GRACE`] to gain a live subflow, or fails (the LAN
//! host sees a reset at once instead of after the timeout).

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use super::clock::{Clock, Told};
use crate::auth::{self, Epoch, Key};
use crate::config::SendBuffer;
use crate::sys;
use crate::wire::convert::{
    header_len, ClientId, ConnectRequest, DecodeError, ErrorCode, Response,
};

/// Largest first flight of LAN bytes sent with the connect header: header
/// and data must fit in one SYN (an MSS of 1460 less MPTCP and TCP options).
pub(super) const MAX_EARLY: usize = 1024;

/// Receive buffer of a tunnel socket: room for the bonded links'
/// bandwidth-delay product plus the reordering between paths of different
/// delay (60 Mbit/s over 200 ms of queue and delay is 1.5 MB; twice that).
///
/// Fixing it also works around a kernel problem (seen on 6.18): with
/// receive autotuning, an MPTCP connection opened with TCP Fast Open whose
/// server sends before the second subflow has joined collapses to about
/// 1 Mbit/s (the receiver drops data as outside its window,
/// `MPTcpExtNoDSSInWindow`); with a fixed buffer it runs at full speed.
pub(super) const RECV_BUFFER: u32 = 4 << 20;

/// Largest answer read before relaying starts (fixed header plus an Error
/// TLV; anything longer is a broken concentrator).
const MAX_RESPONSE: usize = 64;

/// How long a tunnel whose uplinks died waits, once its rescue is sent,
/// for the rescue's answer or for a subflow of its own on a live uplink,
/// before it fails. The kernel joins the live uplinks within a round trip
/// once a connection is fully established; one that is not never gains
/// one. A rescue the concentrator refused as a replay is closed without a
/// word, which does not always reach the client promptly.
pub(super) const RESCUE_GRACE: Duration = Duration::from_secs(3);

/// How often a tunnel whose uplinks changed looks at its subflows.
const RESCUE_POLL: Duration = Duration::from_millis(100);

/// How long a tunnel must be seen on a working uplink, after its uplinks
/// changed, before it stops looking: a join the concentrator refuses (it
/// lost the handshake's last ACK with the line) is reset a round trip
/// after it looked established.
const SETTLE: Duration = Duration::from_secs(2);

/// How often a relaying tunnel that looks fine looks again until it
/// settles.
const SETTLE_POLL: Duration = Duration::from_millis(500);

/// Whether a tunnel keeps a working uplink after its uplinks changed,
/// from what is seen of its subflows every [`RESCUE_POLL`] (pure: `now`
/// passed in).
#[derive(Debug)]
struct Lifeline {
    /// Since when it has been seen on a working uplink without a break.
    fine_since: Option<tokio::time::Instant>,
    /// Since when it has not (or since the change).
    lost_since: tokio::time::Instant,
}

/// What [`Lifeline::observe`] concludes.
#[derive(Debug, PartialEq, Eq)]
enum Held {
    /// Look again after [`RESCUE_POLL`].
    Watching,
    /// On a working uplink for [`SETTLE`]: stop looking until the next
    /// change.
    Settled,
    /// On none for `grace`: it will not carry anything again.
    Lost,
}

impl Lifeline {
    /// Starts watching at `now`, when the uplinks changed.
    fn new(now: tokio::time::Instant) -> Self {
        Self {
            fine_since: None,
            lost_since: now,
        }
    }

    /// `fine`: some subflow is established on a working uplink now.
    fn observe(&mut self, now: tokio::time::Instant, fine: bool, grace: Duration) -> Held {
        if fine {
            let since = *self.fine_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= SETTLE {
                return Held::Settled;
            }
            return Held::Watching;
        }
        if self.fine_since.take().is_some() {
            self.lost_since = now;
        }
        if now.saturating_duration_since(self.lost_since) >= grace {
            Held::Lost
        } else {
            Held::Watching
        }
    }
}

/// The uplinks tunnels can use now, as uplink health last judged them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Paths {
    /// The address new tunnels bind to (a usable uplink's).
    pub(super) source: Option<IpAddr>,
    /// The addresses of every uplink that works (not dead, addressed).
    pub(super) live: Vec<IpAddr>,
}

/// What the client needs to open tunnels.
#[derive(Debug)]
pub(super) struct Tunnels {
    /// The concentrator's listener.
    pub(super) concentrator: SocketAddr,
    /// This client's id.
    pub(super) id: ClientId,
    /// Its key.
    pub(super) key: Key,
    /// Where new tunnels start from and which uplinks work, from uplink
    /// health; tunnels waiting for their answer watch it.
    pub(super) paths: watch::Sender<Paths>,
    /// The settings a config reload may change; each new tunnel reads
    /// them when it starts.
    pub(super) settings: watch::Sender<TunnelSettings>,
    /// Tunnels connected ahead of use.
    pub(super) warm: WarmPool,
    /// The concentrator epoch headers are signed for: the last one it
    /// announced ([`Epoch::as_u64`]), 0 ([`Epoch::UNKNOWN`]) until then.
    pub(super) epoch: AtomicU64,
    /// The clock headers (and probes, and handshakes) are stamped with.
    pub(super) clock: Arc<Clock>,
}

/// What new tunnels are opened with; a config reload changes them for the
/// tunnels opened after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TunnelSettings {
    /// Reaching the concentrator and, through it, the destination.
    pub(super) timeout: Duration,
    /// `SO_SNDBUF` of each tunnel socket; 0: the kernel's autotuning.
    pub(super) send_buffer: SendBuffer,
    /// Warm tunnels kept while the site is active.
    pub(super) warm: usize,
    /// How old a warm tunnel may get before it is replaced.
    pub(super) warm_max_age: Duration,
}

/// How long after the last new flow warm tunnels are kept: an idle site
/// costs the concentrator nothing.
const WARM_LINGER: Duration = Duration::from_secs(60);

/// Pause after a warm tunnel could not be opened.
const WARM_BACKOFF: Duration = Duration::from_secs(1);

/// MPTCP connections to the concentrator opened before a flow needs them.
///
/// A Fast Open SYN carries the connect header, but the kernel's MPTCP does
/// not send the server's first bytes before the client's third ACK (unlike
/// plain TCP Fast Open), so a fresh tunnel still costs two round trips
/// before the LAN host sees an answer. A warm tunnel is already
/// established: the header and the request leave at once, the answer comes
/// one round trip later. Warm tunnels are kept only while flows start (for
/// [`WARM_LINGER`] after the last one) and replaced before the
/// concentrator's handshake timeout would close them.
#[derive(Debug)]
pub(super) struct WarmPool {
    idle: Mutex<VecDeque<(Instant, TcpStream)>>,
    last_use: Mutex<Option<Instant>>,
    wanted: Notify,
}

impl WarmPool {
    /// An empty pool; how many tunnels it keeps, and how old, are the
    /// [`TunnelSettings`].
    pub(super) fn new() -> Self {
        Self {
            idle: Mutex::new(VecDeque::new()),
            last_use: Mutex::new(None),
            wanted: Notify::new(),
        }
    }

    fn idle(&self) -> MutexGuard<'_, VecDeque<(Instant, TcpStream)>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A warm tunnel younger than `max_age`, if any; counts as activity.
    fn take(&self, max_age: Duration) -> Option<TcpStream> {
        *self.last_use.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.wanted.notify_one();
        let mut idle = self.idle();
        while let Some((at, stream)) = idle.pop_back() {
            if at.elapsed() < max_age {
                return Some(stream);
            }
        }
        None
    }

    /// Whether a flow started within the last minute.
    pub(super) fn active(&self) -> bool {
        self.last_use
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at.elapsed() < WARM_LINGER)
    }

    /// Drops tunnels past `max_age`, and all but `keep` (the newest), or
    /// all of them once the site is idle.
    fn expire(&self, keep: usize, max_age: Duration) {
        let active = self.active();
        let mut idle = self.idle();
        idle.retain(|(at, _)| active && at.elapsed() < max_age);
        idle.truncate(keep);
    }
}

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub(super) enum TunnelError {
    /// The local socket could not be set up.
    #[error("cannot set up a socket to the concentrator {concentrator}")]
    Socket {
        /// The concentrator.
        concentrator: SocketAddr,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// Connecting, sending the header or reading the answer failed.
    #[error("the connection to the concentrator {concentrator} failed")]
    Io {
        /// The concentrator.
        concentrator: SocketAddr,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// No answer in time.
    #[error("no answer from the concentrator {concentrator} within {after:?}")]
    TimedOut {
        /// The concentrator.
        concentrator: SocketAddr,
        /// The timeout.
        after: Duration,
    },
    /// The concentrator closed before answering (it refused the client).
    #[error(
        "the concentrator {concentrator} closed without answering: check that \
         its config lists this client's id and key"
    )]
    Closed {
        /// The concentrator.
        concentrator: SocketAddr,
    },
    /// An answer that does not parse.
    #[error("the concentrator {concentrator} sent an answer that does not parse")]
    BadAnswer {
        /// The concentrator.
        concentrator: SocketAddr,
        /// What is wrong.
        #[source]
        source: DecodeError,
    },
    /// An answer longer than any the protocol defines.
    #[error("the concentrator {concentrator} sent a {len}-byte answer; answers are at most {MAX_RESPONSE} bytes")]
    AnswerTooLong {
        /// The concentrator.
        concentrator: SocketAddr,
        /// The length it announced.
        len: usize,
    },
    /// The concentrator could not reach the destination, or refused it.
    #[error("the concentrator refused the connection: {code:?}")]
    Refused {
        /// Its RFC 8803 error code.
        code: ErrorCode,
    },
    /// The concentrator refused the header as signed for another of its
    /// runs (it restarted, or this client just started) and announced its
    /// current epoch; signing again for it is the cure.
    #[error(
        "the concentrator {concentrator} runs epoch {epoch} (restarted since the header \
         was signed): nothing was forwarded; sign again"
    )]
    StaleEpoch {
        /// The concentrator.
        concentrator: SocketAddr,
        /// Its epoch, now the one headers are signed for.
        epoch: Epoch,
    },
    /// The concentrator refused the header as outside its clock window and
    /// told its clock and epoch; the clock offset now follows it, and
    /// signing again is the cure.
    #[error(
        "the concentrator {concentrator} found the header's timestamp outside its window \
         (this host's clock is off or stepped): nothing was forwarded; sign again on its clock"
    )]
    StaleClock {
        /// The concentrator.
        concentrator: SocketAddr,
    },
    /// A clock answer whose MAC does not verify.
    #[error(
        "the concentrator {concentrator} sent a clock answer that does not verify with this \
         client's key: it was forged on the way, or the concentrator has another key for \
         this client"
    )]
    BadClock {
        /// The concentrator.
        concentrator: SocketAddr,
    },
    /// An epoch announcement whose MAC does not verify.
    #[error(
        "the concentrator {concentrator} announced an epoch that does not verify with this \
         client's key: it was forged on the way, or the concentrator has another key for \
         this client"
    )]
    BadEpoch {
        /// The concentrator.
        concentrator: SocketAddr,
    },
    /// Every uplink the tunnel had died before the answer came, and the
    /// concentrator holds it (it refused the same header on a live
    /// uplink as a replay), so it cannot be tried again safely.
    #[error(
        "the uplink the tunnel to {concentrator} started on went down before its answer \
         came, and the connection gained no other within {RESCUE_GRACE:?}"
    )]
    LineLost {
        /// The concentrator.
        concentrator: SocketAddr,
    },
    /// The signing randomness failed.
    #[error("cannot sign the connect header")]
    Auth(#[from] auth::AuthError),
}

impl TunnelError {
    /// How the LAN host should learn about the failure: `true` for a
    /// reset (the server refused or reset), `false` for unreachable.
    pub(super) fn is_reset(&self) -> bool {
        match self {
            Self::Refused { code } => !matches!(
                code,
                ErrorCode::DestinationUnreachable | ErrorCode::NetworkFailure
            ),
            _ => false,
        }
    }
}

/// An open tunnel and any bytes that came after the answer (the server's
/// first bytes, for the LAN host).
#[derive(Debug)]
pub(super) struct Tunnel {
    /// The MPTCP connection, relaying from now on.
    pub(super) stream: TcpStream,
    /// Bytes read past the answer.
    pub(super) leftover: Vec<u8>,
}

impl Tunnels {
    /// Opens a tunnel to `destination`, sending `early` (the LAN host's
    /// first bytes) with the header, and waits for the answer: on a warm
    /// tunnel if there is one, else on a new one whose SYN carries the
    /// header (TCP Fast Open).
    pub(super) async fn open(
        &self,
        destination: SocketAddr,
        early: &[u8],
    ) -> Result<Tunnel, TunnelError> {
        let concentrator = self.concentrator;
        let settings = self.settings();
        let open = async {
            let mut warm = self.warm.take(settings.warm_max_age);
            let mut closed_retry = true;
            let mut epoch_retry = true;
            let mut clock_retry = true;
            loop {
                let (stream, is_warm) = match warm.take() {
                    Some(stream) => (stream, true),
                    None => (
                        self.socket(true).map_err(|source| TunnelError::Socket {
                            concentrator,
                            source,
                        })?,
                        false,
                    ),
                };
                let (request, first) = self.sign(destination, early)?;
                match self.answered(stream, &request, &first).await {
                    // The concentrator closed a warm tunnel without reading
                    // the header (restart, timeout): no server saw anything
                    // yet.
                    Err(TunnelError::Closed { .. } | TunnelError::Io { .. }) if is_warm => {
                        debug!("warm tunnel was closed; opening a new one");
                    }
                    // Closed before the header was read (it was lost and
                    // retransmitted past the concentrator's handshake
                    // timeout, on a congested line): nothing reached a
                    // server, so one more try is safe.
                    Err(TunnelError::Closed { .. }) if closed_retry => {
                        closed_retry = false;
                        debug!("tunnel closed without an answer; trying once more");
                    }
                    // Refused before anything was forwarded; the header
                    // will now carry the announced epoch.
                    Err(e @ TunnelError::StaleEpoch { .. }) if epoch_retry => {
                        epoch_retry = false;
                        debug!(error = %e, "signing again for the concentrator's epoch");
                    }
                    // Likewise; the header will now carry the
                    // concentrator's time (and epoch).
                    Err(e @ TunnelError::StaleClock { .. }) if clock_retry => {
                        clock_retry = false;
                        debug!(error = %e, "signing again on the concentrator's clock");
                    }
                    result => return result,
                }
            }
        };
        match tokio::time::timeout(settings.timeout, open).await {
            Ok(result) => result,
            Err(_) => Err(TunnelError::TimedOut {
                concentrator,
                after: settings.timeout,
            }),
        }
    }

    /// The settings new tunnels use now.
    pub(super) fn settings(&self) -> TunnelSettings {
        *self.settings.borrow()
    }

    /// New tunnels use `settings` from now on; the warm pool follows at
    /// once (tunnels beyond a smaller target, or older than a shorter
    /// age, go at its next look).
    pub(super) fn set_settings(&self, settings: TunnelSettings) {
        self.settings.send_replace(settings);
    }

    /// The source address new tunnels bind to now.
    pub(super) fn source(&self) -> Option<IpAddr> {
        self.paths.borrow().source
    }

    /// New tunnels start from `paths.source`; warm tunnels from elsewhere
    /// go; tunnels waiting for their answer look again at their uplinks.
    /// `true` if the source changed.
    pub(super) fn set_paths(&self, paths: Paths) -> bool {
        let mut moved = false;
        self.paths.send_if_modified(|current| {
            if *current == paths {
                return false;
            }
            moved = current.source != paths.source;
            *current = paths;
            true
        });
        if moved {
            self.warm.idle().clear();
            self.warm.wanted.notify_one();
        }
        moved
    }

    /// Keeps the warm pool filled while the site is active, as the
    /// settings say at each look; never returns.
    pub(super) async fn keep_warm(&self) {
        let mut changes = self.settings.subscribe();
        loop {
            let settings = *changes.borrow_and_update();
            if settings.warm == 0 {
                self.warm.idle().clear();
                // The sender lives as long as `self`.
                let _ = changes.changed().await;
                continue;
            }
            tokio::select! {
                () = self.warm.wanted.notified() => {}
                () = tokio::time::sleep(settings.warm_max_age / 4) => {}
                _ = changes.changed() => {}
            }
            let settings = self.settings();
            self.warm.expire(settings.warm, settings.warm_max_age);
            while self.warm.active() && self.warm.idle().len() < settings.warm {
                match self.connect_warm().await {
                    Ok(stream) => self.warm.idle().push_front((Instant::now(), stream)),
                    Err(e) => {
                        debug!(error = %e, "cannot open a warm tunnel");
                        tokio::time::sleep(WARM_BACKOFF).await;
                        break;
                    }
                }
            }
        }
    }

    async fn connect_warm(&self) -> io::Result<TcpStream> {
        let stream = self.socket(false)?;
        tokio::time::timeout(self.settings().timeout, stream.writable())
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
        stream.peer_addr()?;
        Ok(stream)
    }

    /// The signed header for `destination` and, behind it, `early`: the
    /// first bytes of a tunnel.
    fn sign(
        &self,
        destination: SocketAddr,
        early: &[u8],
    ) -> Result<(ConnectRequest, Vec<u8>), TunnelError> {
        let request = auth::sign_request(
            &self.key,
            self.id.clone(),
            destination,
            self.epoch(),
            auth::random_nonce()?,
            self.clock.now_ms(),
        );
        let mut first = request.encode();
        first.extend_from_slice(early);
        Ok((request, first))
    }

    /// Returns once every subflow of the relaying tunnel `stream` has been
    /// on dead uplinks for [`RESCUE_GRACE`] while another uplink works:
    /// the kernel joins the live uplinks only when the connection became
    /// fully established, so one that lost its only line before that (or
    /// whose join failed) would hang until TCP gives up, for minutes, or
    /// forever once half-closed. Never returns otherwise.
    pub(super) async fn orphaned(&self, stream: &TcpStream) {
        let mut paths = self.paths.subscribe();
        let mut seen = Subflows::default();
        loop {
            if paths.changed().await.is_err() {
                return std::future::pending().await;
            }
            let mut lifeline = Lifeline::new(tokio::time::Instant::now());
            loop {
                let live = paths.borrow_and_update().live.clone();
                // With no uplink working, there is nothing better to be on;
                // it may carry on when its own comes back.
                let fine = live.is_empty() || seen.established_on(stream, &live);
                match lifeline.observe(tokio::time::Instant::now(), fine, RESCUE_GRACE) {
                    // Every relaying tunnel looks when the lines change: one
                    // that looks fine looks a few times until it settles
                    // (cheap with thousands of tunnels), one that does not
                    // looks often.
                    Held::Watching if fine => tokio::time::sleep(SETTLE_POLL).await,
                    Held::Watching => tokio::time::sleep(RESCUE_POLL).await,
                    Held::Settled => break,
                    Held::Lost => {
                        debug!(subflows = ?seen.locals, live = ?live, "the tunnel has no subflow on a working uplink");
                        return;
                    }
                }
            }
        }
    }

    /// [`Self::exchange`] on `stream`, rescued once if every uplink it has
    /// dies before the answer comes (see the module's documentation).
    async fn answered(
        &self,
        stream: TcpStream,
        request: &ConnectRequest,
        first: &[u8],
    ) -> Result<Tunnel, TunnelError> {
        let mut paths = self.paths.subscribe();
        let mut rescued = false;
        let mut seen = Subflows::default();
        let outcome = {
            let original = self.exchange(&stream, request, first);
            tokio::pin!(original);
            loop {
                tokio::select! {
                    result = &mut original => break result.map(|leftover| (None, leftover)),
                    changed = paths.changed(), if !rescued => {
                        if changed.is_err() {
                            break original.await.map(|leftover| (None, leftover));
                        }
                    }
                }
                // With no uplink working, there is nowhere to rescue it to;
                // it may still get through when its own comes back.
                let live = paths.borrow_and_update().live.clone();
                if live.is_empty() || seen.on(&stream, &live) {
                    continue;
                }
                rescued = true;
                debug!(
                    subflows = ?seen.locals,
                    live = ?live,
                    "the tunnel's uplinks died before its answer; sending its header again from a live one"
                );
                let rescue = async {
                    let stream = self.socket(true).map_err(|source| TunnelError::Socket {
                        concentrator: self.concentrator,
                        source,
                    })?;
                    let leftover = self.exchange(&stream, request, first).await?;
                    Ok::<_, TunnelError>((stream, leftover))
                };
                tokio::pin!(rescue);
                let mut rescue_pending = true;
                let mut lifeline = Lifeline::new(tokio::time::Instant::now());
                let gained = loop {
                    tokio::select! {
                        result = &mut original => break Some(result.map(|leftover| (None, leftover))),
                        result = &mut rescue, if rescue_pending => match result {
                            Ok((stream, leftover)) => {
                                info!("tunnel rescued: its uplink died before the answer; the same header went again from a live one");
                                break Some(Ok((Some(stream), leftover)));
                            }
                            // Refused as a replay (the first copy got
                            // through), or it failed: the first tunnel is
                            // the one left.
                            Err(e) => {
                                rescue_pending = false;
                                debug!(error = %e, "the rescue did not get through; waiting for the first tunnel to gain a live uplink");
                            }
                        },
                        () = tokio::time::sleep(RESCUE_POLL) => {}
                    }
                    // Once the first tunnel has a working subflow, the
                    // concentrator holds it: the rescue can only be refused.
                    let live = paths.borrow_and_update().live.clone();
                    let fine = seen.established_on(&stream, &live);
                    match lifeline.observe(tokio::time::Instant::now(), fine, RESCUE_GRACE) {
                        Held::Watching => {}
                        Held::Settled => break None,
                        Held::Lost => {
                            break Some(Err(TunnelError::LineLost {
                                concentrator: self.concentrator,
                            }))
                        }
                    }
                };
                if let Some(result) = gained {
                    break result;
                }
            }
        };
        let (rescue, leftover) = outcome?;
        Ok(Tunnel {
            stream: rescue.unwrap_or(stream),
            leftover,
        })
    }

    /// Sends `first` (the signed `request` and the LAN host's first bytes)
    /// on `stream` and reads the answer; the bytes read past it come back.
    async fn exchange(
        &self,
        stream: &TcpStream,
        request: &ConnectRequest,
        first: &[u8],
    ) -> Result<Vec<u8>, TunnelError> {
        let concentrator = self.concentrator;
        let io_error = |source| TunnelError::Io {
            concentrator,
            source,
        };
        let sent = Instant::now();
        write_all(stream, first).await.map_err(io_error)?;

        let mut buf = [0; MAX_RESPONSE];
        let mut have = 0;
        let total = loop {
            match header_len(&buf[..have]) {
                Ok(Some(total)) if total <= have => break total,
                Ok(Some(total)) if total > MAX_RESPONSE => {
                    return Err(TunnelError::AnswerTooLong {
                        concentrator,
                        len: total,
                    })
                }
                Ok(_) => {}
                Err(source) => {
                    return Err(TunnelError::BadAnswer {
                        concentrator,
                        source,
                    })
                }
            }
            let n = crate::relay::read(stream, &mut buf[have..])
                .await
                .map_err(io_error)?;
            if n == 0 {
                return Err(TunnelError::Closed { concentrator });
            }
            have += n;
        };
        let (response, used) =
            Response::decode(&buf[..total]).map_err(|source| TunnelError::BadAnswer {
                concentrator,
                source,
            })?;
        match response {
            Response::Connected => Ok(buf[used..have].to_vec()),
            Response::Error { code, .. } => Err(TunnelError::Refused { code }),
            Response::StaleEpoch { epoch, mac } => {
                let epoch = Epoch::from_u64(epoch);
                if !auth::verify_epoch(&self.key, epoch, &mac, request) {
                    return Err(TunnelError::BadEpoch { concentrator });
                }
                let before = self.epoch.swap(epoch.as_u64(), Ordering::Relaxed);
                if before != epoch.as_u64() {
                    info!(%epoch, "the concentrator announced a new epoch (it restarted, or this client did); signing for it");
                }
                Err(TunnelError::StaleEpoch {
                    concentrator,
                    epoch,
                })
            }
            Response::StaleClock { now_ms, epoch, mac } => {
                let epoch = Epoch::from_u64(epoch);
                if !auth::verify_clock(&self.key, now_ms, epoch, &mac, request) {
                    return Err(TunnelError::BadClock { concentrator });
                }
                self.clock
                    .learn(now_ms, sent, Instant::now(), Told::Connect);
                let before = self.epoch.swap(epoch.as_u64(), Ordering::Relaxed);
                if before != epoch.as_u64() {
                    info!(%epoch, "the concentrator announced a new epoch with its clock; signing for it");
                }
                Err(TunnelError::StaleClock { concentrator })
            }
        }
    }

    /// The epoch headers are signed for now.
    fn epoch(&self) -> Epoch {
        Epoch::from_u64(self.epoch.load(Ordering::Relaxed))
    }

    /// A nonblocking MPTCP socket (plain TCP where the kernel has no MPTCP)
    /// bound to the uplink's source address, "connected" with Fast Open so
    /// that the first write sends the SYN.
    fn socket(&self, fast_open: bool) -> io::Result<TcpStream> {
        let domain = Domain::for_address(self.concentrator);
        let socket = match Socket::new(domain, Type::STREAM, Some(Protocol::MPTCP)) {
            Ok(socket) => socket,
            Err(e) if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) => {
                warn!(
                    "the kernel has no MPTCP (net.mptcp.enabled=0?): using plain TCP, one uplink"
                );
                Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?
            }
            Err(e) => return Err(e),
        };
        socket.set_nonblocking(true)?;
        if let Err(e) = socket.set_tcp_nodelay(true) {
            debug!(error = %e, "TCP_NODELAY not supported on the tunnel socket");
        }
        if let Err(e) = sys::set_recv_buffer(&socket, RECV_BUFFER) {
            warn!(error = %e, "cannot size the tunnel's receive buffer");
        }
        // Bounded, so that an upload's data on a dead line is re-sent soon:
        // it queues behind what the surviving lines already hold.
        if let SendBuffer::Fixed(bytes) = self.settings().send_buffer {
            if let Err(e) = socket.set_send_buffer_size(bytes as usize) {
                debug!(error = %e, "cannot set the tunnel's send buffer");
            }
        }
        let source = self.source();
        if let Some(source) = source {
            socket.bind(&SockAddr::from(SocketAddr::new(source, 0)))?;
        }
        if fast_open {
            if let Err(e) = sys::set_tcp_fastopen_connect(&socket) {
                debug!(error = %e, "no TCP Fast Open on the tunnel socket; connecting costs a round trip");
            }
        }
        match socket.connect(&SockAddr::from(self.concentrator)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        TcpStream::from_std(std::net::TcpStream::from(socket))
    }
}

/// What is seen of a tunnel's subflows, with the buffers to see it.
#[derive(Debug, Default)]
struct Subflows {
    /// Each subflow's local address, as last seen.
    locals: Vec<IpAddr>,
    /// Each subflow's TCP state and more, as last seen.
    infos: Vec<sys::SubflowInfo>,
    buf: Vec<u8>,
}

impl Subflows {
    /// Reads the local address of each subflow of `stream` into
    /// [`Self::locals`]; `false` when it has none to list (a connection
    /// that fell back to plain TCP, or a plain TCP socket), whose own
    /// local address is then the one listed.
    fn read_locals(&mut self, stream: &TcpStream) -> bool {
        if sys::mptcp_subflow_locals(stream, &mut self.locals).is_ok() {
            return true;
        }
        self.locals.clear();
        self.locals.extend(stream.local_addr().ok().map(|a| a.ip()));
        false
    }

    /// Whether some subflow of `stream` starts from a `live` address, in
    /// whatever state.
    fn on(&mut self, stream: &TcpStream, live: &[IpAddr]) -> bool {
        self.read_locals(stream);
        self.locals.iter().any(|a| live.contains(a))
    }

    /// Whether some subflow of `stream` is established from a `live`
    /// address. The kernel lists the subflows in the same order for both
    /// questions; answers that disagree on their number (a subflow came or
    /// went in between) count as no.
    fn established_on(&mut self, stream: &TcpStream, live: &[IpAddr]) -> bool {
        if !self.read_locals(stream) {
            return self.locals.iter().any(|a| live.contains(a))
                && matches!(sys::tcp_state(stream), Ok(TCP_ESTABLISHED));
        }
        if sys::mptcp_subflows(stream, &mut self.buf, &mut self.infos).is_err()
            || self.infos.len() != self.locals.len()
        {
            return false;
        }
        self.locals
            .iter()
            .zip(&self.infos)
            .any(|(addr, info)| live.contains(addr) && info.state == TCP_ESTABLISHED)
    }
}

/// `TCP_ESTABLISHED` of `tcpi_state`.
const TCP_ESTABLISHED: u8 = 1;

/// Writes all of `data`; the first write of a Fast Open socket sends the SYN
/// (with the data when a cookie is cached). Without a cookie the kernel
/// answers that write with EINPROGRESS and sends the data once the
/// handshake is done; that counts as "not writable yet".
async fn write_all(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        stream.writable().await?;
        let sent = stream.try_io(Interest::WRITABLE, || {
            SockRef::from(stream)
                .send(data)
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::EINPROGRESS) => io::ErrorKind::WouldBlock.into(),
                    _ => e,
                })
        });
        match sent {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds a fresh [`Lifeline`] what is seen at each time (ms after the
    /// lines changed) and checks each conclusion.
    fn watch(steps: &[(u64, bool, Held)]) {
        let start = tokio::time::Instant::now();
        let mut line = Lifeline::new(start);
        for (ms, fine, held) in steps {
            let now = start + Duration::from_millis(*ms);
            assert_eq!(
                line.observe(now, *fine, RESCUE_GRACE),
                *held,
                "at {ms} ms, fine: {fine}"
            );
        }
    }

    #[test]
    fn a_tunnel_seen_on_a_working_uplink_settles_after_a_while() {
        watch(&[
            (0, true, Held::Watching),
            (1_900, true, Held::Watching),
            (2_000, true, Held::Settled),
        ]);
    }

    #[test]
    fn a_tunnel_on_no_working_uplink_is_lost_after_the_grace() {
        watch(&[
            (100, false, Held::Watching),
            (2_900, false, Held::Watching),
            (3_000, false, Held::Lost),
        ]);
    }

    #[test]
    fn a_join_that_looked_established_and_was_refused_does_not_save_it() {
        // The concentrator resets a join a round trip after it looked
        // established (it never got the handshake's last ACK): the grace
        // counts again from when the join went.
        watch(&[
            (100, false, Held::Watching),
            (200, true, Held::Watching),
            (300, false, Held::Watching),
            (3_200, false, Held::Watching),
            (3_300, false, Held::Lost),
        ]);
    }
}
