//! nftables tables of mpbond's own, put in place and taken away with the
//! `nft` program (Debian package `nftables`).
//!
//! Each end owns one table (`inet mpbond_client`, `inet mpbond_conc`) and
//! never touches another: an operator's own ruleset stays as it is. A table
//! is replaced in one `nft -f` transaction (declare, delete, define), so a
//! leftover from a crashed run is replaced atomically at start, and dropping
//! the [`NftTable`] guard deletes it.
//!
//! Why the `nft` program rather than nf_tables netlink: the ruleset is a few
//! lines written once at start; `nft` validates them and reports errors an
//! operator can read, and the same text is what `nft list table` shows.

use std::io::{self, Write};
use std::process::{Command, Stdio};

use tracing::{info, warn};

/// Why a table could not be put in place or removed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// `nft` could not be started.
    #[error("cannot run `nft` (install the nftables package): {source}")]
    Spawn {
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// `nft` refused the ruleset or failed.
    #[error("nft refused table {family} {name}: {stderr}")]
    Refused {
        /// The table's family.
        family: &'static str,
        /// The table's name.
        name: String,
        /// What nft printed.
        stderr: String,
    },
}

/// A table this process installed; dropping it deletes the table.
#[derive(Debug)]
pub struct NftTable {
    family: &'static str,
    name: String,
}

/// Runs `nft -f -` with `script` on its standard input.
fn run(script: &str) -> Result<Result<(), String>, NftError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NftError::Spawn { source })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|source| NftError::Spawn { source })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| NftError::Spawn { source })?;
    if out.status.success() {
        Ok(Ok(()))
    } else {
        Ok(Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
    }
}

impl NftTable {
    /// Replaces table `family name` with one whose body is `body` (the
    /// chains and sets between the table's braces), in one transaction.
    pub fn install(family: &'static str, name: &str, body: &str) -> Result<Self, NftError> {
        let script = format!(
            "table {family} {name}\ndelete table {family} {name}\ntable {family} {name} {{\n{body}}}\n"
        );
        run(&script)?.map_err(|stderr| NftError::Refused {
            family,
            name: name.to_owned(),
            stderr,
        })?;
        info!(table = %format!("{family} {name}"), "nftables table installed");
        Ok(Self {
            family,
            name: name.to_owned(),
        })
    }

    /// Deletes table `family name` if a crashed run left it; whether there
    /// was one.
    pub fn remove_leftover(family: &'static str, name: &str) -> Result<bool, NftError> {
        // Declaring first makes the delete succeed whether or not it exists;
        // listing tells whether it did.
        let existed = Command::new("nft")
            .args(["list", "table", family, name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|source| NftError::Spawn { source })?
            .success();
        if existed {
            run(&format!(
                "table {family} {name}\ndelete table {family} {name}\n"
            ))?
            .map_err(|stderr| NftError::Refused {
                family,
                name: name.to_owned(),
                stderr,
            })?;
            info!(table = %format!("{family} {name}"), "removed a leftover nftables table");
        }
        Ok(existed)
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let script = format!(
            "table {0} {1}\ndelete table {0} {1}\n",
            self.family, self.name
        );
        match run(&script) {
            Ok(Ok(())) => {
                info!(table = %format!("{} {}", self.family, self.name), "nftables table removed")
            }
            Ok(Err(stderr)) => {
                warn!(table = %format!("{} {}", self.family, self.name), %stderr, "cannot remove nftables table")
            }
            Err(e) => {
                warn!(table = %format!("{} {}", self.family, self.name), error = %e, "cannot remove nftables table")
            }
        }
    }
}
