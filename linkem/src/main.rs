//! The `mpbond-linkem` command line: the lab's link emulator.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use linkem::gen::{self, Dir, Model, TraceStats};
use linkem::{driver, profile};

#[derive(Debug, Parser)]
#[command(
    name = "mpbond-linkem",
    version,
    about = "The mpbond lab's link emulator (used by scripts/lab.sh)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bridge two interfaces, shaping each direction with a profile.
    Run {
        /// Link name for logs and stats (dsl, lte).
        #[arg(long)]
        name: String,
        /// Interface towards the client.
        #[arg(long)]
        client_if: String,
        /// Interface towards the wan router.
        #[arg(long)]
        wan_if: String,
        /// Built-in profile (dsl, lte, fast, lte-bursty, lte-drive,
        /// lte-weak) or a profile file.
        #[arg(long)]
        profile: String,
        /// Seed for loss, jitter and generated traces (overrides the
        /// profile's).
        #[arg(long)]
        seed: Option<u64>,
        /// Control socket path.
        #[arg(long)]
        control: PathBuf,
    },
    /// Check a profile and print what it means; exit 1 with the reason if it is bad.
    Check {
        /// Built-in profile name or profile file.
        profile: String,
    },
    /// Send a command to a running emulator: up, down, blackhole,
    /// set [up|down|both] RATE DELAY LOSS, stats [--kv].
    Ctl {
        /// Control socket path.
        #[arg(long)]
        control: PathBuf,
        /// The command and its arguments.
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Generate or describe delivery traces (mahimahi format).
    #[command(subcommand)]
    Trace(TraceCommand),
}

#[derive(Debug, Subcommand)]
enum TraceCommand {
    /// Write a trace of a bursty cellular model to standard output.
    Gen {
        /// The model: lte-bursty, lte-drive or lte-weak.
        #[arg(long)]
        model: Model,
        /// Seed of the model's draws.
        #[arg(long, default_value_t = profile::DEFAULT_SEED)]
        seed: u64,
        /// Length in seconds (the trace's period).
        #[arg(long, default_value_t = 300)]
        secs: u64,
        /// Direction: down (wan to client) or up (slower).
        #[arg(long, default_value = "down")]
        dir: Dir,
    },
    /// Print a trace file's mean rate, gaps per minute, longest gap and
    /// per-second rate percentiles.
    Stats {
        /// The trace file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("MPBOND_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal, not in log files and journals.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mpbond-linkem: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            name,
            client_if,
            wan_if,
            profile: spec,
            seed,
            control,
        } => {
            let profile::Profile::Emulated(profile) = profile::resolve_with_seed(&spec, seed)?
            else {
                anyhow::bail!(
                    "profile {spec:?} is a plain veth and needs no emulator; \
                     scripts/lab.sh wires it directly"
                );
            };
            driver::run(driver::LinkConfig {
                name: name.clone(),
                client_if,
                wan_if,
                profile,
                control,
            })
            .with_context(|| format!("link emulator {name}"))
        }
        Command::Check { profile: spec } => {
            match profile::resolve(&spec)? {
                profile::Profile::Veth => println!("{spec}: plain veth, no emulator"),
                profile::Profile::Emulated(p) => {
                    println!("{spec}: down {}", profile::format_direction(&p.down));
                    println!("{spec}: up   {}", profile::format_direction(&p.up));
                }
            }
            Ok(())
        }
        Command::Ctl { control, command } => {
            let reply = driver::send_command(&control, &command.join(" "))?;
            print!("{reply}");
            Ok(())
        }
        Command::Trace(TraceCommand::Gen {
            model,
            seed,
            secs,
            dir,
        }) => {
            let trace = gen::generate(model, dir, seed, secs)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for ms in trace.opportunities_ms() {
                writeln!(out, "{ms}").context("cannot write the trace")?;
            }
            out.flush().context("cannot write the trace")
        }
        Command::Trace(TraceCommand::Stats { file }) => {
            let trace = profile::load_trace(&file)?;
            print!("{}", TraceStats::of(&trace));
            Ok(())
        }
    }
}
