//! The control socket: a Unix stream socket, mode 0600, on which a daemon
//! answers one request per connection. The request is one line, `status`;
//! the answer is the daemon's [`Status`] as one line of JSON (or
//! `{"error": "..."}`), then the daemon closes the connection.
//!
//! The socket is removed when the daemon stops; one left by a crash is
//! replaced at start (one a running daemon still answers on is not).

use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info, warn};

use super::{Provider, Status};

/// The one request there is.
pub const REQUEST_STATUS: &str = "status";

/// Longest request line read.
const MAX_REQUEST: u64 = 256;

/// How long a peer may take to send its request, and `mpbond status` to
/// get its answer.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// Largest answer `mpbond status` reads (a concentrator with thousands of
/// clients stays well below).
const MAX_ANSWER: u64 = 64 << 20;

/// Why the control socket could not be served or asked.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket's directory could not be created.
    #[error("cannot create the control socket's directory {}", .path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A daemon still answers on the socket.
    #[error(
        "another mpbond daemon serves the control socket {}: stop it, or give this one its \
         own [control] socket in its config",
        .path.display()
    )]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// Something other than a socket has the socket's name.
    #[error(
        "{} exists and is not a socket: remove it, or name another [control] socket in \
         the config",
        .path.display()
    )]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A stale socket (from a crash) could not be removed.
    #[error("cannot remove the stale control socket {}", .path.display())]
    RemoveStale {
        /// The socket.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// The socket could not be bound.
    #[error("cannot listen on the control socket {}", .path.display())]
    Bind {
        /// The socket.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// The socket's mode could not be set.
    #[error("cannot make the control socket {} root-only (mode 0600)", .path.display())]
    Permissions {
        /// The socket.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// No daemon listens on the socket.
    #[error(
        "no mpbond daemon answers on {}: is it running (its log says \"client ready\" or \
         \"concentrator listening\")? It serves the socket its config's [control] socket \
         names, by default /run/mpbond/ROLE-CONFIGNAME.sock",
        .path.display()
    )]
    NotRunning {
        /// The socket.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// The socket may not be opened by this user.
    #[error("cannot open {}: the control socket is root-only; run mpbond status as root (sudo)", .path.display())]
    Denied {
        /// The socket.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// Asking the daemon failed.
    #[error("asking the daemon on {} failed", .path.display())]
    Ask {
        /// The socket.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// The daemon's answer is not a status.
    #[error(
        "the daemon on {} gave an answer this mpbond does not read: is it another mpbond version?",
        .path.display()
    )]
    Answer {
        /// The socket.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: serde_json::Error,
    },
    /// The daemon answered with an error.
    #[error("the daemon on {} refused: {message}", .path.display())]
    Refused {
        /// The socket.
        path: PathBuf,
        /// What it said.
        message: String,
    },
    /// The directory of sockets could not be listed.
    #[error("cannot list the control sockets in {} (run mpbond status as root)", .path.display())]
    List {
        /// The directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
}

/// A bound control socket; its file is removed on drop.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds the control socket at `path` (mode 0600), creating its
    /// directory (mode 0700) if needed and replacing a stale socket. Must
    /// run inside a Tokio runtime.
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| ControlError::CreateDir {
                    path: dir.to_owned(),
                    source,
                })?;
        }
        replace_stale(path)?;
        let listener = UnixListener::bind(path).map_err(|source| ControlError::Bind {
            path: path.to_owned(),
            source,
        })?;
        // From here on, dropping `socket` removes the file.
        let socket = Self {
            listener,
            path: path.to_owned(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| ControlError::Permissions {
                path: path.to_owned(),
                source,
            },
        )?;
        info!(socket = %path.display(), "control socket ready (mpbond status)");
        Ok(socket)
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers requests with snapshots from `provider` until dropped (the
    /// task is aborted); one task per connection, each bounded in time.
    pub async fn serve(self, provider: Provider) {
        let path: std::sync::Arc<str> = self.path.display().to_string().into();
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "accepting on the control socket failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let provider = provider.clone();
            let path = path.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(TIMEOUT, answer(stream, &provider, &path)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(error = %e, "control request failed"),
                    Err(_) => debug!("control request timed out"),
                }
            });
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                warn!(socket = %self.path.display(), error = %e, "cannot remove the control socket");
            }
        }
    }
}

/// Removes a socket at `path` that no one answers on (left by a crash).
fn replace_stale(path: &Path) -> Result<(), ControlError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ControlError::Bind {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ControlError::NotASocket {
            path: path.to_owned(),
        });
    }
    if StdUnixStream::connect(path).is_ok() {
        return Err(ControlError::InUse {
            path: path.to_owned(),
        });
    }
    info!(socket = %path.display(), "replacing a stale control socket (left by a crash?)");
    std::fs::remove_file(path).map_err(|source| ControlError::RemoveStale {
        path: path.to_owned(),
        source,
    })
}

/// Reads one request from `stream` (on the socket `path`) and answers it.
async fn answer(stream: UnixStream, provider: &Provider, path: &str) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::io::BufReader::new(read.take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let reply = match line.trim() {
        REQUEST_STATUS => match super::snapshot(provider).await {
            Some(mut status) => {
                status.socket = path.to_owned();
                serde_json::to_string(&status)
            }
            None => serde_json::to_string(&serde_json::json!({
                "error": "the daemon could not build its status (see its log)"
            })),
        },
        other => serde_json::to_string(&serde_json::json!({
            "error": format!("unknown request {other:?}: send \"{REQUEST_STATUS}\"")
        })),
    }
    .map_err(io::Error::other)?;
    write.write_all(reply.as_bytes()).await?;
    write.write_all(b"\n").await?;
    write.shutdown().await
}

/// Asks the daemon on `path` for its status (blocking, within
/// [`TIMEOUT`]).
pub fn query(path: &Path) -> Result<Status, ControlError> {
    let stream = StdUnixStream::connect(path).map_err(|source| match source.kind() {
        io::ErrorKind::PermissionDenied => ControlError::Denied {
            path: path.to_owned(),
            source,
        },
        _ => ControlError::NotRunning {
            path: path.to_owned(),
            source,
        },
    })?;
    let ask = |source| ControlError::Ask {
        path: path.to_owned(),
        source,
    };
    stream.set_read_timeout(Some(TIMEOUT)).map_err(ask)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(ask)?;
    (&stream)
        .write_all(format!("{REQUEST_STATUS}\n").as_bytes())
        .map_err(ask)?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_ANSWER))
        .read_line(&mut line)
        .map_err(ask)?;
    parse_answer(path, &line)
}

/// A daemon's answer line read from the socket `path`: its status, or
/// the error it gave.
pub fn parse_answer(path: &Path, line: &str) -> Result<Status, ControlError> {
    #[derive(serde::Deserialize)]
    struct Refusal {
        error: String,
    }
    if let Ok(refusal) = serde_json::from_str::<Refusal>(line) {
        return Err(ControlError::Refused {
            path: path.to_owned(),
            message: refusal.error,
        });
    }
    let mut status: Status = serde_json::from_str(line).map_err(|source| ControlError::Answer {
        path: path.to_owned(),
        source,
    })?;
    if status.socket.is_empty() {
        status.socket = path.display().to_string();
    }
    Ok(status)
}

/// The control sockets in `dir` (`*.sock`), sorted; none if it does not
/// exist.
pub fn discover(dir: &Path) -> Result<Vec<PathBuf>, ControlError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ControlError::List {
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut sockets: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .collect();
    sockets.sort();
    Ok(sockets)
}
