//! The `mpbond-linkem` command line: the lab's link emulator.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

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
        /// Built-in profile (dsl, lte, fast) or a profile file.
        #[arg(long)]
        profile: String,
        /// Seed for loss and jitter (overrides the profile's).
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
            let profile::Profile::Emulated(mut profile) = profile::resolve(&spec)? else {
                anyhow::bail!(
                    "profile {spec:?} is a plain veth and needs no emulator; \
                     scripts/lab.sh wires it directly"
                );
            };
            if let Some(seed) = seed {
                profile.seed = seed;
            }
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
                    println!("{spec}: down {}", driver::describe(&p.down));
                    println!("{spec}: up   {}", driver::describe(&p.up));
                }
            }
            Ok(())
        }
        Command::Ctl { control, command } => {
            let reply = driver::send_command(&control, &command.join(" "))?;
            print!("{reply}");
            Ok(())
        }
    }
}
