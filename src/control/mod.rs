//! Observing a running daemon: a snapshot of its state ([`snapshot`]),
//! served on a root-only Unix socket ([`socket`]) to `mpbond status`, which
//! prints it for people ([`text`]) or as JSON, and as Prometheus metrics
//! ([`metrics`]) and a live status page over a small HTTP listener
//! ([`http`]), all from the same snapshot; the page also shows the last
//! minutes a client keeps ([`history`]).
//!
//! The daemons build a [`Status`] on request from what they keep anyway
//! (the path core's estimates, the interface counters, the flow table,
//! atomics they bump per batch), so that observing costs nothing while no
//! one looks.

pub mod history;
pub mod http;
pub mod metrics;
pub mod snapshot;
pub mod socket;
pub mod text;

use std::sync::Arc;

pub use snapshot::Status;
pub use socket::ControlError;

/// What builds a daemon's snapshot when asked; runs on a blocking thread
/// (it may take locks and ask the kernel for interface counters).
pub type Provider = Arc<dyn Fn() -> Status + Send + Sync>;

/// Builds a snapshot with `provider` off the async threads.
pub(crate) async fn snapshot(provider: &Provider) -> Option<Status> {
    let provider = Arc::clone(provider);
    tokio::task::spawn_blocking(move || provider()).await.ok()
}

#[cfg(test)]
mod tests;
