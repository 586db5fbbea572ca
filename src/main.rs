//! The `mpbond` command line.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory as _, Parser, Subcommand};
use clap_complete::Shell;

use mpbond::auth::Key;
use mpbond::config::control;
use mpbond::config::{ClientConfig, ConcentratorConfig};
use mpbond::control::{socket, text};
use mpbond::crypto::{keygen_text, StaticSecret};
use mpbond::reload::{Asker, Hangups};
use mpbond::{client, concentrator};

#[derive(Debug, Parser)]
#[command(
    name = "mpbond",
    version,
    about = "Bond every uplink into one connection with kernel MPTCP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Capture the site's TCP in a TUN device and carry each connection to
    /// the concentrator over every uplink; stops on Ctrl-C or SIGTERM.
    Client {
        /// The client's config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Accept clients' MPTCP connections and forward them to their
    /// destinations; stops on Ctrl-C or SIGTERM.
    Concentrator {
        /// The concentrator's config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Make a new X25519 key pair and print it as config lines (or write
    /// the private key to a file and the public key beside it).
    Keygen {
        /// Write the private key to FILE (created with mode 0600; must not
        /// exist) and the public key to FILE.pub, and print the public key.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Make a shared key for `key` / `key_file` instead (TCP only, the
        /// scheme before key pairs).
        #[arg(long)]
        shared: bool,
    },
    /// Show what the running daemons see: each uplink's state, round trip,
    /// loss and traffic (client), each client's connections and tunnel
    /// (concentrator). Asks each daemon on its control socket (root only).
    Status {
        /// Ask the daemon running with this config file (on the control
        /// socket it names); without it, every daemon with a socket in
        /// /run/mpbond.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print a JSON list, one document per daemon (fields in the README).
        #[arg(long)]
        json: bool,
        /// Refresh in place until Ctrl-C (with --json: one list per line).
        #[arg(long)]
        watch: bool,
        /// With --watch: seconds between refreshes.
        #[arg(long, value_name = "SECS", default_value_t = 1.0, requires = "watch")]
        interval: f64,
        /// With --watch: stop after this many refreshes.
        #[arg(long, value_name = "N", requires = "watch")]
        count: Option<u64>,
    },
    /// Write the man pages or the shell completions into a directory, from
    /// this command line's own definition (for packaging: scripts/package.sh).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: Generate,
    },
}

/// What `mpbond generate` writes.
#[derive(Debug, Subcommand)]
enum Generate {
    /// Man pages: mpbond.1 and one per subcommand (mpbond-client.1, ...).
    Man {
        /// The directory to write them into (created if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Completions for bash (mpbond.bash), zsh (_mpbond) and fish
    /// (mpbond.fish).
    Completions {
        /// The directory to write them into (created if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    mpbond::logging::init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}mpbond: {e:#}", mpbond::logging::error_prefix());
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Client { config } => run_client(&config),
        Command::Concentrator { config } => run_concentrator(&config),
        Command::Keygen { out, shared } => keygen(out.as_deref(), shared),
        Command::Status {
            config,
            json,
            watch,
            interval,
            count,
        } => status(config.as_deref(), json, watch.then_some((interval, count))),
        Command::Generate { what } => generate(what),
    }
}

/// The command line as documented: without the hidden subcommands (this
/// one), which the completions would offer otherwise.
fn documented() -> clap::Command {
    let full = Cli::command();
    let mut cmd = clap::Command::new("mpbond")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(true)
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    cmd
}

/// `mpbond generate`: man pages or completions, from the same definition
/// of the command line that parses it, so they never disagree. No date in
/// the man pages, so that a package build is reproducible.
fn generate(what: Generate) -> anyhow::Result<()> {
    let (Generate::Man { dir } | Generate::Completions { dir }) = &what;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    let cmd = documented();
    match what {
        Generate::Man { dir } => clap_mangen::generate_to(cmd, &dir)
            .with_context(|| format!("cannot write the man pages into {}", dir.display()))?,
        Generate::Completions { dir } => {
            let mut cmd = cmd;
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                clap_complete::generate_to(shell, &mut cmd, "mpbond", &dir).with_context(|| {
                    format!(
                        "cannot write the {shell} completions into {}",
                        dir.display()
                    )
                })?;
            }
        }
    }
    Ok(())
}

fn run_client(path: &Path) -> anyhow::Result<()> {
    let config = ClientConfig::load(path)?;
    until_signal(|shutdown, hangups| async move {
        Ok(client::run(config, path, shutdown, hangups).await?)
    })
}

fn run_concentrator(path: &Path) -> anyhow::Result<()> {
    let config = ConcentratorConfig::load(path)?;
    until_signal(|shutdown, hangups| async move {
        Ok(concentrator::run(config, path, shutdown, hangups).await?)
    })
}

/// `mpbond status`: once, or with `watch` (seconds between refreshes, how
/// many at most) until Ctrl-C.
fn status(
    config: Option<&Path>,
    json: bool,
    watch: Option<(f64, Option<u64>)>,
) -> anyhow::Result<()> {
    let sockets = match config {
        Some(path) => vec![control::socket_of(path)?.1],
        None => {
            let dir = Path::new(control::RUN_DIR);
            let sockets = socket::discover(dir)?;
            if sockets.is_empty() {
                anyhow::bail!(
                    "no mpbond daemon runs here: {} holds no control socket. Start one \
                     (mpbond client --config FILE, mpbond concentrator --config FILE), or give \
                     --config FILE for a daemon whose [control] socket lies elsewhere",
                    dir.display()
                );
            }
            sockets
        }
    };
    let Some((interval, count)) = watch else {
        print!("{}", status_once(&sockets, json, config.is_some())?);
        return Ok(());
    };
    let interval = std::time::Duration::try_from_secs_f64(interval)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--interval must be a positive number of seconds")?;
    for done in 1u64.. {
        let shown = status_once(&sockets, json, config.is_some());
        let mut out = std::io::stdout().lock();
        match (&shown, json) {
            (Ok(text), true) => write!(out, "{text}")?,
            // Home, clear the screen, draw.
            (Ok(text), false) => write!(out, "\x1b[H\x1b[2J{text}")?,
            (Err(e), _) => writeln!(out, "mpbond: {e:#}")?,
        }
        out.flush()?;
        if count.is_some_and(|count| done >= count) {
            break;
        }
        std::thread::sleep(interval);
    }
    Ok(())
}

/// Every daemon's status on `sockets`, as text or one JSON list (one
/// line). An unanswered socket found in /run/mpbond (not `named` by a
/// config) is a stale one: it is reported on stderr and skipped, unless
/// none answers.
fn status_once(sockets: &[PathBuf], json: bool, named: bool) -> anyhow::Result<String> {
    let mut statuses = Vec::new();
    let mut errors = Vec::new();
    for socket in sockets {
        match socket::query(socket) {
            Ok(status) => statuses.push(status),
            Err(e) if named => return Err(e.into()),
            Err(e) => errors.push(anyhow::Error::new(e)),
        }
    }
    let mut errors = errors.into_iter();
    if statuses.is_empty() {
        if let Some(first) = errors.next() {
            for e in errors {
                eprintln!("mpbond: {e:#}");
            }
            return Err(first);
        }
    }
    for e in errors {
        eprintln!("mpbond: {e:#}");
    }
    if json {
        return Ok(format!("{}\n", serde_json::to_string(&statuses)?));
    }
    let blocks: Vec<String> = statuses.iter().map(text::render).collect();
    Ok(blocks.join("\n"))
}

/// Runs `serve` on a multi-threaded runtime, handing it a future that
/// completes on SIGINT or SIGTERM and the reload requests (SIGHUP).
fn until_signal<F, Fut>(serve: F) -> anyhow::Result<()>
where
    F: FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>, Hangups) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let (asker, hangups) = Hangups::channel();
        let shutdown = shutdown_signal(asker)?;
        serve(Box::pin(shutdown), hangups).await
    })
}

/// Completes on the first Ctrl-C (SIGINT) or SIGTERM; a SIGHUP asks
/// `asker` for a reload of the config.
fn shutdown_signal(asker: Asker) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    // SIGHUP's default would end the daemon at once, leaving its routes,
    // rules and endpoints for the next start to clean up.
    let mut hangup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    Ok(async move {
        let name = loop {
            tokio::select! {
                _ = interrupt.recv() => break "SIGINT",
                _ = terminate.recv() => break "SIGTERM",
                _ = hangup.recv() => {
                    tracing::info!(signal = "SIGHUP", "reloading the config");
                    asker.ask();
                }
            }
        };
        tracing::info!(signal = name, "shutting down");
    })
}

fn keygen(out: Option<&Path>, shared: bool) -> anyhow::Result<()> {
    let (line, public) = if shared {
        (format!("{}\n", Key::generate()?.to_base64()), None)
    } else {
        let secret = StaticSecret::generate()?;
        let Some(_) = out else {
            print!("{}", keygen_text(&secret));
            return Ok(());
        };
        (
            format!("{}\n", secret.to_base64()),
            Some(format!("{}\n", secret.public_key())),
        )
    };
    let Some(path) = out else {
        print!("{line}");
        return Ok(());
    };
    // create_new: never overwrite a key, nor write through a file someone
    // else created with looser permissions.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create key file {} (it must not exist yet)",
                path.display()
            )
        })?;
    file.write_all(line.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write key file {}", path.display()))?;
    if let Some(public) = &public {
        let mut pub_path = path.as_os_str().to_owned();
        pub_path.push(".pub");
        let pub_path = PathBuf::from(pub_path);
        std::fs::write(&pub_path, public)
            .with_context(|| format!("cannot write public key file {}", pub_path.display()))?;
        println!("public_key = \"{}\"", public.trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
        documented().debug_assert();
    }

    #[test]
    fn the_documented_command_line_lists_every_command_but_generate() {
        let cmd = documented();
        let names: Vec<&str> = cmd.get_subcommands().map(|s| s.get_name()).collect();
        assert_eq!(names, ["client", "concentrator", "keygen", "status"]);
    }
}
