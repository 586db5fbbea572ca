//! The owner: a thread that exclusively holds the `Plumbing` (and with it
//! the one path manager handle) and serves [`Handle`]s' commands one at a
//! time, until it is shut down or every handle is gone; then it removes
//! everything it installed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::apply::Plumbing;
use super::error::UplinkError;
use super::plan::{AddressChange, LinkChange, Uplink};
use crate::config::client::UplinkConfig;
use crate::sys::MptcpPm;

/// What [`Handle::regateway`] answers: the old and new gateway, if the
/// uplink's route moved.
type Regatewayed = Result<Option<(Option<IpAddr>, IpAddr)>, UplinkError>;

/// What a [`Handle`] asks the owner, with where the answer goes.
enum Command {
    SetEndpoint {
        index: usize,
        on: bool,
        reply: oneshot::Sender<Result<(), UplinkError>>,
    },
    Readdress {
        index: usize,
        reply: oneshot::Sender<Result<AddressChange, UplinkError>>,
    },
    Regateway {
        index: usize,
        reply: oneshot::Sender<Regatewayed>,
    },
    Relink {
        index: usize,
        reply: oneshot::Sender<Result<LinkChange, UplinkError>>,
    },
    Uplinks {
        reply: oneshot::Sender<Vec<Uplink>>,
    },
    Retire {
        index: usize,
        reply: oneshot::Sender<Result<(), UplinkError>>,
    },
    Join {
        index: usize,
        config: UplinkConfig,
        reply: oneshot::Sender<Result<Uplink, UplinkError>>,
    },
    SetBackup {
        index: usize,
        backup: bool,
        reply: oneshot::Sender<Result<(), UplinkError>>,
    },
    Shutdown {
        reply: oneshot::Sender<Result<(), UplinkError>>,
    },
}

/// Starts the owner: a thread (in the calling thread's network namespace)
/// that cleans what a crashed run left, then installs the uplinks' routes,
/// rules, MPTCP endpoints and limits, the sysctls and the capture into the
/// TUN device `tun` (already created and up), for a concentrator at
/// `concentrator`. `pm` is the path manager handle it keeps; the caller
/// opens it, so that a kernel without MPTCP is a start-up error of its own.
///
/// Returns once everything is installed; on error nothing stays installed.
pub async fn start(
    uplinks: &[UplinkConfig],
    tun: &str,
    concentrator: IpAddr,
    pm: MptcpPm,
    nat: Option<(Ipv4Addr, Option<Ipv6Addr>)>,
) -> Result<Handle, UplinkError> {
    let (uplinks, tun) = (uplinks.to_vec(), tun.to_owned());
    let (installed_tx, installed) = oneshot::channel();
    let (commands, receiver) = mpsc::unbounded_channel();
    let thread = thread::Builder::new()
        .name("mpbond-system".into())
        .spawn(move || {
            let plumbing = match Plumbing::install(&uplinks, &tun, concentrator, pm, nat) {
                Ok(plumbing) => plumbing,
                Err(e) => {
                    let _ = installed_tx.send(Err(e));
                    return;
                }
            };
            if installed_tx.send(Ok(())).is_ok() {
                serve(plumbing, receiver);
            }
        })
        .map_err(|source| UplinkError::Spawn { source })?;
    let handle = Handle {
        inner: Arc::new(Inner {
            commands,
            _thread: Joiner(Some(thread)),
        }),
    };
    match installed.await {
        Ok(Ok(())) => Ok(handle),
        // Dropping the handle joins the thread, which has ended.
        Ok(Err(e)) => Err(e),
        // The thread panicked while installing; Plumbing's drop removed
        // what it had.
        Err(_) => Err(UplinkError::OwnerGone),
    }
}

/// Serves commands until a shutdown or until every handle is gone; either
/// way the plumbing is removed before the thread ends.
fn serve(mut plumbing: Plumbing, mut commands: mpsc::UnboundedReceiver<Command>) {
    // A caller that stopped waiting for its answer is no reason to stop.
    while let Some(command) = commands.blocking_recv() {
        match command {
            Command::SetEndpoint { index, on, reply } => {
                let _ = reply.send(plumbing.set_endpoint(index, on));
            }
            Command::Readdress { index, reply } => {
                let _ = reply.send(plumbing.readdress(index));
            }
            Command::Regateway { index, reply } => {
                let _ = reply.send(plumbing.regateway(index));
            }
            Command::Relink { index, reply } => {
                let _ = reply.send(plumbing.relink(index));
            }
            Command::Uplinks { reply } => {
                let _ = reply.send(plumbing.uplinks());
            }
            Command::Retire { index, reply } => {
                let _ = reply.send(plumbing.retire(index));
            }
            Command::Join {
                index,
                config,
                reply,
            } => {
                let _ = reply.send(plumbing.join(index, &config));
            }
            Command::SetBackup {
                index,
                backup,
                reply,
            } => {
                let _ = reply.send(plumbing.set_backup(index, backup));
            }
            Command::Shutdown { reply } => {
                let removed = plumbing.remove();
                // Restores the sysctls.
                drop(plumbing);
                let _ = reply.send(removed);
                return;
            }
        }
    }
    info!("every handle on the uplinks' system state is gone: removing it");
    // Plumbing's drop removes everything, logging what it cannot.
}

/// The way to the owner of the uplinks' system state; cheap to clone and
/// usable from any task or thread. Each method waits for the owner's
/// answer; commands are served one at a time, in the order they arrive.
///
/// When the last handle is dropped, the owner removes everything it
/// installed, and the drop waits for that (blocking the dropping thread
/// briefly), so that nothing outlives the client even when it stops on an
/// error or a panic. [`shutdown`](Self::shutdown) does the same, with the
/// result.
#[derive(Clone)]
pub struct Handle {
    inner: Arc<Inner>,
}

/// What the handles share. Field order matters: the sender is dropped
/// (closing the channel, so the owner ends) before the thread is joined.
struct Inner {
    commands: mpsc::UnboundedSender<Command>,
    /// Held for its drop.
    _thread: Joiner,
}

/// Joins the owner's thread on drop.
struct Joiner(Option<JoinHandle<()>>);

impl Drop for Joiner {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            if thread.join().is_err() {
                warn!(
                    "the owner of the uplinks' system state panicked; the next start of \
                     mpbond removes any leftovers"
                );
            }
        }
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("closed", &self.inner.commands.is_closed())
            .finish()
    }
}

impl Handle {
    /// Sends `command` made with a fresh reply channel and waits for the
    /// answer; [`UplinkError::OwnerGone`] if the owner is no longer there.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, UplinkError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .commands
            .send(command(reply))
            .map_err(|_| UplinkError::OwnerGone)?;
        answer.await.map_err(|_| UplinkError::OwnerGone)
    }

    /// Adds (`on`) or removes uplink `index`'s MPTCP endpoint (`index`: its
    /// position in the config and in [`uplinks`](Self::uplinks)), at its
    /// current address. Removing it makes the kernel close the uplink's
    /// subflows and tell the concentrator; adding it back gives running
    /// connections a subflow on it again. Idempotent: an endpoint already
    /// there, or already gone, is not an error; nothing happens for an
    /// uplink without an address or an `index` past the last uplink.
    pub async fn set_endpoint(&self, index: usize, on: bool) -> Result<(), UplinkError> {
        self.ask(|reply| Command::SetEndpoint { index, on, reply })
            .await?
    }

    /// Reads again the addresses of uplink `index` after its interface had
    /// an address event. When the address its subflows should use changed
    /// (a DHCP renumbering, an address removed), its source rule moves to
    /// the new one and its route is put back (the kernel drops a route with
    /// the last address of its gateway's subnet); its endpoint moves with
    /// the next [`set_endpoint`](Self::set_endpoint). `Same` for an `index`
    /// past the last uplink.
    pub async fn readdress(&self, index: usize) -> Result<AddressChange, UplinkError> {
        self.ask(|reply| Command::Readdress { index, reply })
            .await?
    }

    /// Uplink `index`, if it has no gateway in the config, follows the
    /// system's default route out of its interface: when that route has a
    /// new gateway (a DHCP renewal), the uplink's route moves to it.
    /// Returns the old and new gateway when it moved. A system route that
    /// disappears leaves the last gateway in place (DHCP removes and adds
    /// it again on renewal).
    pub async fn regateway(
        &self,
        index: usize,
    ) -> Result<Option<(Option<IpAddr>, IpAddr)>, UplinkError> {
        self.ask(|reply| Command::Regateway { index, reply })
            .await?
    }

    /// Looks uplink `index`'s interface up by name again, after a link
    /// event, and follows it: an interface that appeared (for the first
    /// time, or again with a new index after it was unplugged) gets the
    /// uplink's route and source rule once it has an address, and its
    /// endpoint with the next [`set_endpoint`](Self::set_endpoint); one
    /// that went away loses what was installed for it (endpoint, rule,
    /// route). `Same` for an `index` past the last uplink.
    pub async fn relink(&self, index: usize) -> Result<LinkChange, UplinkError> {
        self.ask(|reply| Command::Relink { index, reply }).await?
    }

    /// A config reload removed uplink `index`: it leaves as an unplugged
    /// one does (endpoint, source rule and route removed) and stays out
    /// whatever its interface does; later commands for `index` do nothing
    /// until [`join`](Self::join) puts an uplink there again. Returns the
    /// first failure to remove something (the uplink is out all the same).
    pub async fn retire(&self, index: usize) -> Result<(), UplinkError> {
        self.ask(|reply| Command::Retire { index, reply }).await?
    }

    /// A config reload added uplink `config` at `index` (one retired, or
    /// one past the last): it joins as a hot-plugged one does (route and
    /// source rule once its interface has an address, its endpoint with
    /// the next [`set_endpoint`](Self::set_endpoint)). Returns it as it is
    /// now (without an interface yet, its index is
    /// [`NO_INTERFACE`](super::NO_INTERFACE)).
    pub async fn join(&self, index: usize, config: UplinkConfig) -> Result<Uplink, UplinkError> {
        self.ask(|reply| Command::Join {
            index,
            config,
            reply,
        })
        .await?
    }

    /// A config reload changed uplink `index`'s `backup`: its endpoint is
    /// marked so at once if installed (running connections keep their
    /// subflows), and when it is added later.
    pub async fn set_backup(&self, index: usize, backup: bool) -> Result<(), UplinkError> {
        self.ask(|reply| Command::SetBackup {
            index,
            backup,
            reply,
        })
        .await?
    }

    /// The uplinks as they are now, in config order; one without an
    /// address has the unspecified address, one without an interface
    /// [`NO_INTERFACE`](super::NO_INTERFACE) as its index. None once the
    /// owner has stopped (nothing is installed any more).
    pub async fn uplinks(&self) -> Vec<Uplink> {
        self.ask(|reply| Command::Uplinks { reply })
            .await
            .unwrap_or_default()
    }

    /// Removes everything installed (newest first) and restores the
    /// sysctls, then stops the owner; later commands, from any handle, get
    /// [`UplinkError::OwnerGone`]. Returns the first failure (it still
    /// tries to remove the rest; each failure is logged).
    pub async fn shutdown(&self) -> Result<(), UplinkError> {
        self.ask(|reply| Command::Shutdown { reply }).await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_and_plumbing_can_move_between_threads() {
        fn sendable<T: Send + Sync>() {}
        sendable::<Handle>();
        sendable::<Plumbing>();
    }
}
