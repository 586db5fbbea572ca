//! A config reload at the concentrator (SIGHUP, `systemctl reload`).
//!
//! Applied while it serves: the clients (added, removed, new keys, new
//! connection limits, new tunnel addresses), the destination policy, the
//! timeouts and the send buffer of new connections. Connections that are
//! still allowed go on untouched; those of a client removed (or given
//! another key), and those to a destination the new policy denies, are
//! reset at once, both ends. A removed client's datagram session ends too.
//!
//! What needs new sockets (`listen`, `[control]`) keeps its running value
//! until a restart, with a warning naming the keys. A change of the
//! concentrator's identity (`private_key`) or of the datagram tunnel's
//! exit (`[datagram]`) changes what the clients' settings mean, so such a
//! config is refused whole, as one that does not load: the running config
//! stays, and the log says why.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, PoisonError};

use tokio::sync::watch;
use tracing::{info, warn};

use super::accept::{Client, ClientChanges};
use super::policy::Policy;
use super::Shared;
use crate::chain::Chain;
use crate::config::{ConcentratorConfig, ConfigError};
use crate::wire::convert::ClientId;

/// Why a reload was refused; the running config stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not load (it names the file, line and key).
    #[error("the new config does not load")]
    Config(#[source] ConfigError),
    /// Two clients with one id (possible only in a config built in code).
    #[error("client id {id} is configured twice: give each client its own id")]
    DuplicateClient {
        /// The id.
        id: ClientId,
    },
    /// The private key changed.
    #[error(
        "private_key changed: the concentrator's identity changes only at a restart \
         (restart it to use the new key)"
    )]
    PrivateKey,
    /// The `[datagram]` section changed.
    #[error(
        "[datagram] changed: the datagram tunnel's exit changes only at a restart \
         (restart the concentrator to apply it)"
    )]
    Datagram,
    /// The datagram tunnel refuses a client's public key.
    #[error("the datagram tunnel refuses the new clients' keys")]
    Keys(#[source] crate::crypto::ResponderError),
}

/// What a reload applied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// What changed, one entry each (`clients added: lab3`, ...).
    pub changes: Vec<String>,
    /// Keys that changed but keep their running value until a restart.
    pub needs_restart: Vec<&'static str>,
}

impl fmt::Display for Reloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.changes.is_empty() {
            f.write_str("nothing changed")?;
        } else {
            f.write_str(&self.changes.join("; "))?;
        }
        if !self.needs_restart.is_empty() {
            write!(
                f,
                "; {} changed but keep their running value until a restart",
                self.needs_restart.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Applies new configs to a running concentrator
/// ([`super::Concentrator::reloader`]).
#[derive(Debug, Clone)]
pub struct Reloader {
    pub(super) shared: Arc<Shared>,
}

impl Reloader {
    /// Applies `new`, or refuses it whole: see the module's documentation.
    ///
    /// # Errors
    ///
    /// [`ReloadError`] says why it was refused; nothing changed then.
    pub fn reload(&self, new: ConcentratorConfig) -> Result<Reloaded, ReloadError> {
        let shared = &*self.shared;
        let old = shared.config();
        let plan = plan(&old, &new)?;
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = new.clients.iter().find(|c| !seen.insert(&c.id)) {
            return Err(ReloadError::DuplicateClient { id: dup.id.clone() });
        }
        let policy = Arc::new(Policy::new(
            new.policy.allow.clone(),
            new.policy.deny.clone(),
        ));
        // The one step that can still fail goes first.
        if let Some(datagrams) = &shared.datagrams {
            datagrams
                .reload(super::tunnel_clients(&new), Arc::clone(&policy))
                .map_err(ReloadError::Keys)?;
        }
        let clients = shared
            .clients
            .reload(new.clients.clone())
            .map_err(|dup| ReloadError::DuplicateClient { id: dup.0 })?;
        shared.stats.reload(&new);
        if plan.policy {
            shared.policy.send_replace(policy);
        }
        let mut running = new;
        // What needs a restart keeps its running value.
        running.listen = old.listen;
        running.control = old.control.clone();
        *shared
            .config
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(running);
        let mut changes = describe(&clients);
        changes.extend(plan.changes);
        Ok(Reloaded {
            changes,
            needs_restart: plan.needs_restart,
        })
    }

    /// Reloads from `path`, logging what was applied or why the running
    /// config stays.
    pub fn reload_from(&self, path: &Path) {
        let loaded = ConcentratorConfig::load(path).map_err(ReloadError::Config);
        match loaded.and_then(|new| self.reload(new)) {
            Ok(reloaded) => {
                info!(config = %path.display(), "config reloaded: {reloaded}");
                if !reloaded.needs_restart.is_empty() {
                    warn!(
                        config = %path.display(),
                        keys = %reloaded.needs_restart.join(", "),
                        "these changes take effect at the next restart; until then the running \
                         values stay"
                    );
                }
            }
            Err(e) => warn!(
                config = %path.display(),
                error = %Chain(&e),
                "reload refused; the running config stays"
            ),
        }
    }
}

/// What a reload from `old` to `new` changes besides the clients, or why
/// it is refused. Pure.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Whether the policy changed.
    policy: bool,
    changes: Vec<String>,
    needs_restart: Vec<&'static str>,
}

fn plan(old: &ConcentratorConfig, new: &ConcentratorConfig) -> Result<Plan, ReloadError> {
    let public = |c: &ConcentratorConfig| c.private_key.as_ref().map(|k| k.public_key());
    if public(old) != public(new) {
        return Err(ReloadError::PrivateKey);
    }
    if old.datagram != new.datagram {
        return Err(ReloadError::Datagram);
    }
    let mut plan = Plan::default();
    // `old.listen` is the bound address: port 0 in the file means any.
    let same_listen =
        old.listen == new.listen || (new.listen.port() == 0 && old.listen.ip() == new.listen.ip());
    if !same_listen {
        plan.needs_restart.push("listen");
    }
    if old.control != new.control {
        plan.needs_restart.push("[control]");
    }
    if old.policy != new.policy {
        plan.policy = true;
        plan.changes.push("policy changed".to_owned());
    }
    if old.handshake_timeout != new.handshake_timeout {
        plan.changes.push(format!(
            "handshake_timeout {:?} -> {:?}",
            old.handshake_timeout, new.handshake_timeout
        ));
    }
    if old.connect_timeout != new.connect_timeout {
        plan.changes.push(format!(
            "connect_timeout {:?} -> {:?}",
            old.connect_timeout, new.connect_timeout
        ));
    }
    if old.send_buffer != new.send_buffer {
        plan.changes.push(format!(
            "send_buffer {:?} -> {:?} (for new connections)",
            old.send_buffer, new.send_buffer
        ));
    }
    let tunnels = |c: &ConcentratorConfig| {
        c.clients
            .iter()
            .map(|c| (c.id.clone(), c.tunnel))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let (before, after) = (tunnels(old), tunnels(new));
    let moved: Vec<String> = after
        .iter()
        .filter(|(id, addrs)| before.get(*id).is_some_and(|b| b != *addrs))
        .map(|(id, _)| id.to_string())
        .collect();
    if !moved.is_empty() {
        plan.changes
            .push(format!("tunnel addresses changed: {}", moved.join(", ")));
    }
    Ok(plan)
}

/// The clients' changes, as log entries.
fn describe(changes: &ClientChanges) -> Vec<String> {
    let ids = |ids: &[ClientId]| {
        ids.iter()
            .map(ClientId::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = Vec::new();
    if !changes.added.is_empty() {
        out.push(format!("clients added: {}", ids(&changes.added)));
    }
    if !changes.removed.is_empty() {
        out.push(format!(
            "clients removed (their connections reset): {}",
            ids(&changes.removed)
        ));
    }
    if !changes.rekeyed.is_empty() {
        out.push(format!(
            "clients with a new key (their connections reset): {}",
            ids(&changes.rekeyed)
        ));
    }
    for (id, before, after) in &changes.limits {
        out.push(format!("client {id}: max_connections {before} -> {after}"));
    }
    out
}

/// Why a running connection is no longer allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Disallowed {
    /// Its client was removed from the config, or got another key.
    ClientRemoved,
    /// The new policy denies its destination.
    Denied,
}

impl fmt::Display for Disallowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ClientRemoved => "its client was removed from the config, or has a new key",
            Self::Denied => "the policy denies its destination now",
        })
    }
}

/// Completes when a reload takes away what allows `client`'s connection
/// to `destination`; `policy` is the policy as the connection last saw it.
pub(super) async fn disallowed(
    client: &Client,
    destination: SocketAddr,
    policy: &mut watch::Receiver<Arc<Policy>>,
) -> Disallowed {
    let denied = async {
        loop {
            if policy.borrow_and_update().check(destination).is_err() {
                return;
            }
            if policy.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = client.removed() => Disallowed::ClientRemoved,
        () = denied => Disallowed::Denied,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const SECRET_A: &str = "IBESExQVFhcYGRobHB0eHyAhIiMkJSYnKCkqKywtLi8=";
    const SECRET_B: &str = "MDEyMzQ1Njc4OTo7PD0+P0BBQkNERUZHSElKS0xNTk8=";

    /// The config `extra` adds to, loaded from a file of its own.
    fn config(extra: &str) -> ConcentratorConfig {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // One name: the control socket's follows it.
        let dir =
            std::env::temp_dir().join(format!("mpbond-reload-plan-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the config directory");
        let path = dir.join("concentrator.toml");
        let text = format!(
            "listen = \"127.0.0.1:7300\"\n{extra}\n[[client]]\nid = \"lab\"\nkey = \"{KEY}\"\n"
        );
        std::fs::write(&path, text).expect("write the config");
        let loaded = ConcentratorConfig::load(&path);
        let _ = std::fs::remove_dir_all(&dir);
        loaded.expect("a valid config")
    }

    #[test]
    fn the_same_config_changes_nothing() {
        let plan = plan(&config(""), &config("")).expect("applies");
        assert_eq!(plan, Plan::default());
    }

    #[test]
    fn settings_apply_and_sockets_wait_for_a_restart() {
        let old = config("");
        let mut new = config(
            "handshake_timeout = \"3s\"\n\
             [policy]\nallow = [\"10.9.0.0/16\"]\n[control]\nmetrics = \"127.0.0.1:9999\"",
        );
        new.listen.set_port(7301);
        let plan = plan(&old, &new).expect("applies");
        assert!(plan.policy);
        assert!(
            plan.changes.iter().any(|c| c == "policy changed"),
            "{plan:?}"
        );
        assert!(
            plan.changes
                .iter()
                .any(|c| c.starts_with("handshake_timeout")),
            "{plan:?}"
        );
        assert_eq!(plan.needs_restart, ["listen", "[control]"]);
    }

    #[test]
    fn a_new_identity_or_datagram_exit_is_refused_whole() {
        let a = config(&format!("private_key = \"{SECRET_A}\""));
        let b = config(&format!("private_key = \"{SECRET_B}\""));
        assert!(matches!(plan(&a, &b), Err(ReloadError::PrivateKey)));
        assert!(matches!(
            plan(&a, &config("")),
            Err(ReloadError::PrivateKey)
        ));
        let exit = |net: &str| {
            config(&format!(
                "private_key = \"{SECRET_A}\"\n[datagram]\nipv4 = \"{net}\""
            ))
        };
        assert!(matches!(
            plan(&exit("10.77.0.1/24"), &exit("10.78.0.1/24")),
            Err(ReloadError::Datagram)
        ));
        assert!(plan(&exit("10.77.0.1/24"), &exit("10.77.0.1/24")).is_ok());
    }

    #[test]
    fn a_bound_port_0_is_the_same_listen() {
        let mut old = config("");
        let new = config("");
        old.listen.set_port(0);
        let mut bound = config("");
        bound.listen.set_port(43_210);
        let mut zero = new.clone();
        zero.listen.set_port(0);
        assert!(plan(&bound, &zero)
            .expect("applies")
            .needs_restart
            .is_empty());
        assert_eq!(plan(&old, &new).expect("applies").needs_restart, ["listen"]);
    }
}
