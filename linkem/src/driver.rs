//! The emulator's thin driver: moves Ethernet frames between two interfaces
//! through one [`Direction`] model per direction, and serves live commands
//! on a Unix control socket.
//!
//! Each direction has its own thread that owns its model, its receiving
//! socket (on the ingress interface) and its sending socket (on the egress
//! interface); the threads share nothing. The control thread talks to them
//! over channels and wakes them with an eventfd, so a command takes effect at
//! once, not at the next frame.
//!
//! Control protocol: a client connects, writes one command line, and reads
//! the reply until EOF. A reply starts with `ok` or `error: <why>`.
//!
//! ```text
//! up | down | blackhole                 link state (down = carrier lost)
//! set [up|down|both] RATE DELAY LOSS    new shaping; "-" keeps a value
//! stats [--kv]                          counters, as a table or key=value
//! ```

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::{debug, info, warn};

use crate::model::{Direction, DirectionParams, DirectionStats, LinkState};
use crate::profile::{self, LinkProfile};
use crate::sys::{self, EventFd, PacketSocket};

/// Largest frame read from an interface (jumbo frames fit); a longer one
/// (GRO left on) is counted as truncated and dropped.
const MAX_FRAME: usize = 9_216;
/// Receive batches (of up to [`sys::MAX_BATCH`] frames) per wake-up before
/// the thread transmits what is due.
const RX_BATCHES: usize = 4;
/// Socket buffers: room for bursts at gigabit rates.
const SOCKET_BUFFER: usize = 8 << 20;

/// What the emulator needs to start.
#[derive(Debug)]
pub struct LinkConfig {
    /// Name of the link for logs and stats (`dsl`, `lte`).
    pub name: String,
    /// Interface towards the client (its peer is the client's uplink).
    pub client_if: String,
    /// Interface towards the wan router.
    pub wan_if: String,
    /// Shaping per direction and the loss/jitter seed.
    pub profile: LinkProfile,
    /// Where to listen for control commands.
    pub control: PathBuf,
}

/// Why the emulator could not start or stopped.
#[derive(Debug, Error)]
pub enum DriverError {
    /// An interface name does not exist in this namespace.
    #[error("interface {name} not found in this network namespace")]
    NoInterface {
        name: String,
        #[source]
        source: io::Error,
    },
    /// An AF_PACKET socket could not be opened or bound.
    #[error("cannot open a packet socket on {name} (needs root or CAP_NET_RAW)")]
    Socket {
        name: String,
        #[source]
        source: io::Error,
    },
    /// The control socket could not be created.
    #[error("cannot listen on control socket {}", path.display())]
    Control {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A direction's thread could not be started.
    #[error("cannot start the {dir} thread")]
    Spawn {
        dir: &'static str,
        #[source]
        source: io::Error,
    },
    /// A direction's thread failed while running.
    #[error("the {dir} direction stopped: waiting on its sockets failed")]
    Wait {
        dir: &'static str,
        #[source]
        source: io::Error,
    },
    /// A direction's thread ended without saying why (it panicked).
    #[error("the {dir} direction's thread ended unexpectedly")]
    ThreadLost { dir: &'static str },
}

/// Errors of a control client ([`send_command`]).
#[derive(Debug, Error)]
pub enum ControlError {
    /// Nobody listens at the socket path.
    #[error("cannot reach the link emulator at {}: is the lab up?", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The conversation broke off.
    #[error("talking to the link emulator at {} failed", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The emulator refused the command.
    #[error("{0}")]
    Refused(String),
}

/// Sends one command line to a running emulator and returns its reply
/// (without the leading `ok` line).
pub fn send_command(path: &Path, command: &str) -> Result<String, ControlError> {
    let io_err = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(|source| ControlError::Connect {
        path: path.to_owned(),
        source,
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io_err)?;
    writeln!(stream, "{command}").map_err(io_err)?;
    stream.shutdown(std::net::Shutdown::Write).map_err(io_err)?;
    let mut reply = String::new();
    io::Read::read_to_string(&mut stream, &mut reply).map_err(io_err)?;
    match reply.split_once('\n') {
        Some(("ok", rest)) => Ok(rest.to_owned()),
        _ if reply.trim() == "ok" => Ok(String::new()),
        _ => Err(ControlError::Refused(
            reply
                .trim()
                .strip_prefix("error: ")
                .unwrap_or(reply.trim())
                .to_owned(),
        )),
    }
}

/// A command for one direction's thread.
enum Command {
    Params(DirectionParams),
    State(LinkState),
    Stats(mpsc::Sender<(DirectionStats, IoStats)>),
}

/// Counters of the driver itself (the model counts the rest).
#[derive(Clone, Copy, Debug, Default)]
struct IoStats {
    /// Frames longer than [`MAX_FRAME`], dropped.
    truncated: u64,
    /// Frames the egress interface refused (carrier down, buffer full).
    tx_errors: u64,
    /// Receive errors (e.g. the interface went down under the socket).
    rx_errors: u64,
}

/// A running direction as seen by the control thread.
struct DirectionHandle {
    name: &'static str,
    commands: mpsc::Sender<Command>,
    wake: std::sync::Arc<EventFd>,
    params: DirectionParams,
}

impl DirectionHandle {
    fn send(&self, command: Command) -> Result<(), String> {
        self.commands
            .send(command)
            .map_err(|_| format!("the {} direction has stopped", self.name))?;
        self.wake
            .notify()
            .map_err(|e| format!("cannot wake the {} direction: {e}", self.name))
    }
}

/// Runs the emulator until a direction fails. Never returns `Ok` by itself:
/// the lab stops it with a signal.
pub fn run(config: LinkConfig) -> Result<(), DriverError> {
    let LinkConfig {
        name,
        client_if,
        wan_if,
        profile,
        control,
    } = config;
    let client_index = index_of(&client_if)?;
    let wan_index = index_of(&wan_if)?;
    let start = Instant::now();
    let (done_tx, done_rx) = mpsc::channel();

    let up = spawn_direction(
        "up",
        (&client_if, client_index),
        (&wan_if, wan_index),
        profile.up.clone(),
        profile.seed,
        start,
        done_tx.clone(),
    )?;
    let down = spawn_direction(
        "down",
        (&wan_if, wan_index),
        (&client_if, client_index),
        profile.down.clone(),
        profile.seed.wrapping_add(1),
        start,
        done_tx,
    )?;

    // The control socket appears only once both directions forward frames:
    // the lab waits for it as the sign that the link is ready.
    let _ = std::fs::remove_file(&control);
    let listener = UnixListener::bind(&control).map_err(|source| DriverError::Control {
        path: control.clone(),
        source,
    })?;
    info!(link = %name, client_if, wan_if, control = %control.display(), "link emulator running");
    let mut state = ControlState {
        link: name,
        client_if,
        state: LinkState::Up,
        directions: [up, down],
    };
    thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => state.serve(stream),
                    Err(e) => warn!(error = %e, "control socket accept failed"),
                }
            }
        })
        .map_err(|source| DriverError::Spawn {
            dir: "control",
            source,
        })?;

    match done_rx.recv() {
        Ok(result) => result,
        Err(_) => Err(DriverError::ThreadLost { dir: "up or down" }),
    }
}

fn index_of(name: &str) -> Result<u32, DriverError> {
    sys::interface_index(name).map_err(|source| DriverError::NoInterface {
        name: name.to_owned(),
        source,
    })
}

fn spawn_direction(
    dir: &'static str,
    (rx_name, rx_index): (&str, u32),
    (tx_name, tx_index): (&str, u32),
    params: DirectionParams,
    seed: u64,
    start: Instant,
    done: mpsc::Sender<Result<(), DriverError>>,
) -> Result<DirectionHandle, DriverError> {
    let socket_err = |name: &str| {
        let name = name.to_owned();
        move |source| DriverError::Socket { name, source }
    };
    let rx = PacketSocket::receiver(rx_index, SOCKET_BUFFER).map_err(socket_err(rx_name))?;
    let tx = PacketSocket::sender(tx_index, SOCKET_BUFFER).map_err(socket_err(tx_name))?;
    let wake =
        std::sync::Arc::new(EventFd::new().map_err(|source| DriverError::Spawn { dir, source })?);
    let (commands, command_rx) = mpsc::channel();
    let model = Direction::new(params.clone(), seed);
    let thread_wake = wake.clone();
    thread::Builder::new()
        .name(format!("linkem-{dir}"))
        .spawn(move || {
            let result = forward(dir, model, &rx, &tx, &thread_wake, &command_rx, start);
            let _ = done.send(result);
        })
        .map_err(|source| DriverError::Spawn { dir, source })?;
    Ok(DirectionHandle {
        name: dir,
        commands,
        wake,
        params,
    })
}

/// One direction's loop: read what arrived, hand it to the model, send what
/// is due, sleep until the next frame or deadline.
fn forward(
    dir: &'static str,
    mut model: Direction<Vec<u8>>,
    rx: &PacketSocket,
    tx: &PacketSocket,
    wake: &EventFd,
    commands: &mpsc::Receiver<Command>,
    start: Instant,
) -> Result<(), DriverError> {
    if let Err(e) = sys::set_timer_slack(Duration::from_micros(1)) {
        debug!(error = %e, "cannot lower timer slack; delays may be late by up to 50 µs");
    }
    let mut bufs = vec![vec![0u8; MAX_FRAME]; sys::MAX_BATCH];
    let mut lens = [0usize; sys::MAX_BATCH];
    let mut due: Vec<Vec<u8>> = Vec::with_capacity(sys::MAX_BATCH);
    let mut io_stats = IoStats::default();
    let mut wake_timer = WakeTimer::new();
    loop {
        while let Ok(command) = commands.try_recv() {
            let now = start.elapsed();
            match command {
                Command::Params(params) => model.set_params(now, params),
                Command::State(state) => model.set_state(now, state),
                Command::Stats(reply) => {
                    let _ = reply.send((model.stats(), io_stats));
                }
            }
        }

        for _ in 0..RX_BATCHES {
            let received = match rx.recv_many(&mut bufs, &mut lens) {
                Ok(n) => n,
                Err(e) => {
                    // ENETDOWN after the interface went down and similar:
                    // the socket recovers when the interface comes back.
                    io_stats.rx_errors += 1;
                    debug!(dir, error = %e, "receive failed");
                    0
                }
            };
            let now = start.elapsed();
            for (buf, &len) in bufs.iter().zip(&lens[..received]) {
                if len > buf.len() {
                    io_stats.truncated += 1;
                    continue;
                }
                let _ = model.on_frame(now, buf[..len].to_vec());
            }
            if received < sys::MAX_BATCH {
                break;
            }
        }

        let now = start.elapsed();
        loop {
            due.clear();
            while due.len() < sys::MAX_BATCH {
                let Some(frame) = model.poll_transmit(now) else {
                    break;
                };
                due.push(frame);
            }
            let mut sent = 0;
            while sent < due.len() {
                match tx.send_many(&due[sent..]) {
                    Ok(n) => sent += n.max(1),
                    Err(e) => {
                        // Carrier down or a full queue at the peer: this
                        // frame is lost, as on a real wire.
                        io_stats.tx_errors += 1;
                        debug!(dir, error = %e, "transmit failed");
                        sent += 1;
                    }
                }
            }
            if due.len() < sys::MAX_BATCH {
                break;
            }
        }

        let deadline = model.poll_timeout();
        let ready = wake_timer
            .wait(start, deadline, &[rx.as_fd(), wake.as_fd()])
            .map_err(|source| DriverError::Wait { dir, source })?;
        if ready & 0b10 != 0 {
            let _ = wake.drain();
        }
    }
}

/// Sleeps until a frame is due, without sending it late by the operating
/// system's wake-up latency.
///
/// A timed wait on this kind of machine wakes 100-150 µs after its deadline
/// (and sometimes much later), which would add that to every delayed frame.
/// So the wait ends early, by a running estimate of the 90th percentile of
/// the observed lateness, and the rest is spent spinning until the exact
/// deadline: frames are never sent early. Spinning is capped at a tenth of
/// the thread's time; beyond that (dense traffic, where a frame is due every
/// few hundred µs) the thread sleeps to the deadline and accepts the
/// lateness rather than burn a core.
#[derive(Debug)]
struct WakeTimer {
    /// How much earlier than the deadline to wake (nanoseconds).
    early_ns: u64,
    /// Spin time still allowed (nanoseconds), refilled at 10 % of elapsed time.
    budget_ns: u64,
    /// When the budget was last refilled.
    refilled: Duration,
}

impl WakeTimer {
    /// Step of the quantile estimate (down; up is nine times larger, so it
    /// settles where 1 wake-up in 10 comes after the deadline).
    const STEP_NS: u64 = 2_000;
    /// Bound on waking early, so also on one spin.
    const MAX_EARLY_NS: u64 = 400_000;
    /// Bound on the spin budget.
    const MAX_BUDGET_NS: u64 = 5_000_000;

    fn new() -> Self {
        Self {
            early_ns: 100_000,
            budget_ns: Self::MAX_BUDGET_NS,
            refilled: Duration::ZERO,
        }
    }

    /// Waits for one of `fds` or until `deadline` (since `start`); returns
    /// the readiness mask of [`sys::wait_readable`].
    fn wait(
        &mut self,
        start: Instant,
        deadline: Option<Duration>,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> io::Result<u64> {
        let Some(deadline) = deadline else {
            return sys::wait_readable(fds, None);
        };
        let now = start.elapsed();
        let refill = (now.saturating_sub(self.refilled).as_nanos() / 10) as u64;
        self.budget_ns = (self.budget_ns + refill).min(Self::MAX_BUDGET_NS);
        self.refilled = now;
        if self.budget_ns < self.early_ns {
            return sys::wait_readable(fds, Some(deadline.saturating_sub(now)));
        }
        let target = deadline.saturating_sub(Duration::from_nanos(self.early_ns));
        if target > now {
            let ready = sys::wait_readable(fds, Some(target - now))?;
            if ready != 0 {
                return Ok(ready);
            }
            let late = start.elapsed().saturating_sub(target).as_nanos() as u64;
            self.learn(late);
        }
        let spin_from = start.elapsed();
        while start.elapsed() < deadline {
            std::hint::spin_loop();
        }
        let spun = start.elapsed().saturating_sub(spin_from).as_nanos() as u64;
        self.budget_ns = self.budget_ns.saturating_sub(spun);
        Ok(0)
    }

    /// Quantile estimate of the wake-up lateness.
    fn learn(&mut self, late_ns: u64) {
        self.early_ns = if late_ns > self.early_ns {
            self.early_ns + 9 * Self::STEP_NS
        } else {
            self.early_ns.saturating_sub(Self::STEP_NS)
        }
        .min(Self::MAX_EARLY_NS);
    }
}

/// What the control thread knows and owns.
struct ControlState {
    link: String,
    client_if: String,
    state: LinkState,
    directions: [DirectionHandle; 2],
}

impl ControlState {
    fn serve(&mut self, stream: UnixStream) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut line = String::new();
        let mut reader = BufReader::new(&stream);
        let reply = match reader.read_line(&mut line) {
            Ok(_) => match self.execute(line.trim()) {
                Ok(text) => format!("ok\n{text}"),
                Err(why) => format!("error: {why}\n"),
            },
            Err(e) => format!("error: cannot read the command: {e}\n"),
        };
        let mut stream = &stream;
        let _ = stream.write_all(reply.as_bytes());
    }

    fn execute(&mut self, line: &str) -> Result<String, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["up"] => self.set_state(LinkState::Up),
            ["down"] => self.set_state(LinkState::Down),
            ["blackhole"] => self.set_state(LinkState::Blackhole),
            ["set", rest @ ..] => self.set(rest),
            ["stats"] => self.stats(false),
            ["stats", "--kv"] => self.stats(true),
            _ => Err(format!(
                "unknown command {line:?}; use up, down, blackhole, \
                 set [up|down|both] RATE DELAY LOSS, stats [--kv]"
            )),
        }
    }

    fn set_state(&mut self, state: LinkState) -> Result<String, String> {
        // Carrier follows the state: only `down` takes it away; a blackhole
        // keeps it up, which is what makes it hard to detect.
        let carrier = state != LinkState::Down;
        sys::set_interface_up(&self.client_if, carrier).map_err(|e| {
            format!(
                "cannot set {} {}: {e}",
                self.client_if,
                if carrier { "up" } else { "down" }
            )
        })?;
        for d in &self.directions {
            d.send(Command::State(state))?;
        }
        info!(link = %self.link, ?state, "link state changed");
        self.state = state;
        Ok(String::new())
    }

    fn set(&mut self, args: &[&str]) -> Result<String, String> {
        let (which, values) = match args {
            [d @ ("up" | "down" | "both"), rest @ ..] => (*d, rest),
            rest => ("both", rest),
        };
        let [rate, delay, loss] = values else {
            return Err(
                "set takes [up|down|both] RATE DELAY LOSS, e.g. set down 10mbit 20ms 1% \
                 (\"-\" keeps a value)"
                    .to_owned(),
            );
        };
        let rate = keep_or(rate, profile::parse_rate).map_err(|e| e.to_string())?;
        let delay = keep_or(delay, profile::parse_duration).map_err(|e| e.to_string())?;
        let loss = keep_or(loss, profile::parse_loss).map_err(|e| e.to_string())?;
        for d in &mut self.directions {
            if which != "both" && which != d.name {
                continue;
            }
            let mut params = d.params.clone();
            if let Some(rate) = &rate {
                params.shaping = rate.clone();
            }
            if let Some(delay) = delay {
                params.delay = delay;
            }
            if let Some(loss) = loss {
                params.loss = loss;
            }
            d.send(Command::Params(params.clone()))?;
            info!(link = %self.link, dir = d.name, params = %describe(&params), "link shaping changed");
            d.params = params;
        }
        Ok(String::new())
    }

    fn stats(&self, kv: bool) -> Result<String, String> {
        let mut out = String::new();
        if !kv {
            out.push_str(&format!(
                "link {}  state {}\n{:<5} {:<52} {:>10} {:>12} {:>10} {:>12} {:>9} {:>9} {:>9} {:>7}\n",
                self.link,
                self.state.as_str(),
                "dir",
                "shaping",
                "rx_frames",
                "rx_bytes",
                "tx_frames",
                "tx_bytes",
                "drop_loss",
                "drop_queue",
                "drop_down",
                "queued",
            ));
        } else {
            out.push_str(&format!("state={}\n", self.state.as_str()));
        }
        for d in &self.directions {
            let (reply_tx, reply_rx) = mpsc::channel();
            d.send(Command::Stats(reply_tx))?;
            let (s, io) = reply_rx
                .recv_timeout(Duration::from_secs(2))
                .map_err(|_| format!("the {} direction did not answer", d.name))?;
            if kv {
                let p = &d.params;
                out.push_str(&format!(
                    "{0}.rate_bps={1}\n{0}.delay_us={2}\n{0}.jitter_us={3}\n{0}.loss_percent={4}\n\
                     {0}.burst_loss_percent={5}\n",
                    d.name,
                    p.shaping.mean_bits_per_sec().unwrap_or(0),
                    p.delay.as_micros(),
                    p.jitter.as_micros(),
                    p.loss.percent(),
                    p.burst_loss.map_or(0.0, |b| b.mean_loss() * 100.0),
                ));
                for (key, value) in [
                    ("rx_frames", s.rx_frames),
                    ("rx_bytes", s.rx_bytes),
                    ("tx_frames", s.tx_frames),
                    ("tx_bytes", s.tx_bytes),
                    ("drop_loss", s.drop_loss),
                    ("drop_queue", s.drop_queue),
                    ("drop_down", s.drop_down),
                    ("queued_frames", s.queued_frames),
                    ("queued_bytes", s.queued_bytes),
                    ("truncated", io.truncated),
                    ("tx_errors", io.tx_errors),
                    ("rx_errors", io.rx_errors),
                ] {
                    out.push_str(&format!("{}.{key}={value}\n", d.name));
                }
            } else {
                out.push_str(&format!(
                    "{:<5} {:<52} {:>10} {:>12} {:>10} {:>12} {:>9} {:>9} {:>9} {:>7}\n",
                    d.name,
                    describe(&d.params),
                    s.rx_frames,
                    s.rx_bytes,
                    s.tx_frames,
                    s.tx_bytes,
                    s.drop_loss,
                    s.drop_queue,
                    s.drop_down + io.tx_errors,
                    s.queued_frames,
                ));
            }
        }
        Ok(out)
    }
}

/// `"-"` keeps the current value; anything else is parsed.
fn keep_or<T, E>(text: &str, parse: impl Fn(&str) -> Result<T, E>) -> Result<Option<T>, E> {
    if text == "-" {
        Ok(None)
    } else {
        parse(text).map(Some)
    }
}

/// One-line summary of a direction's shaping for the stats table, e.g.
/// `20 Mbit/s 10 ms ±0 ms loss 0%` or `trace (mean 9.06 Mbit/s) 35 ms ±0 ms
/// loss 0% burst 0.26%` (the burst loss's mean).
pub fn describe(params: &DirectionParams) -> String {
    let burst = params
        .burst_loss
        .as_ref()
        .map_or_else(String::new, |burst| {
            format!(" burst {:.2}%", burst.mean_loss() * 100.0)
        });
    format!(
        "{} {} ±{} loss {}{burst}",
        profile::format_shaping(&params.shaping),
        profile::format_duration(params.delay),
        profile::format_duration(params.jitter),
        profile::format_loss(params.loss),
    )
}
