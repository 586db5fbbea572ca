//! The `[control]` table, the same in both roles: where the daemon serves
//! its status (`mpbond status`) and its metrics.
//!
//! ```toml
//! [control]                              # optional
//! socket = "/run/mpbond/client-home.sock" # optional: the control socket (mode 0600);
//!                                        # default /run/mpbond/ROLE-STEM.sock, STEM
//!                                        # being this file's name without .toml
//! metrics = "192.168.77.1:9310"          # optional: serve Prometheus metrics over
//!                                        # HTTP at http://ADDR:PORT/metrics; off
//!                                        # unless set
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{parse_socket_addr, ConfigError, ConfigFile, ValueError};

/// Where control sockets are by default, and where `mpbond status` looks
/// for them.
pub const RUN_DIR: &str = "/run/mpbond";

/// Longest socket path a Unix socket address holds (`sun_path` less its
/// terminating zero).
pub const MAX_SOCKET_PATH: usize = 107;

/// The validated `[control]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// The control socket's path.
    pub socket: PathBuf,
    /// Where to serve the metrics over HTTP; `None`: not at all.
    pub metrics: Option<SocketAddr>,
}

/// The `[control]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawControl {
    socket: Option<Spanned<String>>,
    metrics: Option<Spanned<String>>,
}

impl ControlConfig {
    /// The socket a daemon of `role` ("client", "concentrator") running
    /// with the config file `config` serves when its config names none:
    /// `/run/mpbond/ROLE-STEM.sock`.
    pub fn default_socket(role: &str, config: &Path) -> PathBuf {
        let stem = config
            .file_stem()
            .map_or_else(|| "mpbond".into(), |s| s.to_string_lossy());
        Path::new(RUN_DIR).join(format!("{role}-{stem}.sock"))
    }

    /// The `[control]` table of `file` for a daemon of `role`, checked.
    pub(crate) fn from_raw(
        file: &ConfigFile,
        role: &str,
        raw: Option<&RawControl>,
    ) -> Result<Self, ConfigError> {
        let empty = RawControl::default();
        let raw = raw.unwrap_or(&empty);
        let socket = match &raw.socket {
            None => Self::default_socket(role, file.path()),
            Some(text) => {
                let path = file.resolve(Path::new(text.get_ref()));
                if text.get_ref().is_empty()
                    || path.as_os_str().len() > MAX_SOCKET_PATH
                    || path.file_name().is_none()
                {
                    return Err(file.invalid(
                        "control.socket",
                        text.span(),
                        ValueError::ControlSocket {
                            text: text.get_ref().clone(),
                            max: MAX_SOCKET_PATH,
                        },
                    ));
                }
                path
            }
        };
        let metrics = match &raw.metrics {
            None => None,
            Some(text) => {
                let addr = parse_socket_addr(text.get_ref())
                    .and_then(|addr| match addr.port() {
                        0 => Err(ValueError::MetricsPortZero),
                        _ => Ok(addr),
                    })
                    .map_err(|e| file.invalid("control.metrics", text.span(), e))?;
                Some(addr)
            }
        };
        Ok(Self { socket, metrics })
    }
}

/// Just enough of a config file of either role to find its control
/// socket: the role is told by the keys only a client's file
/// (`concentrator`) or a concentrator's (`listen`) has.
#[derive(Debug, Deserialize)]
struct Peek {
    concentrator: Option<toml::Value>,
    listen: Option<toml::Value>,
    control: Option<RawControl>,
}

/// The role ("client" or "concentrator") of the config file at `path` and
/// the control socket its daemon serves, without checking the rest of the
/// file (nor reading its keys).
pub fn socket_of(path: &Path) -> Result<(&'static str, PathBuf), ConfigError> {
    let file = ConfigFile::read(path)?;
    let peek = file.deserialize::<Peek>()?.value;
    let role = match (&peek.concentrator, &peek.listen) {
        (Some(_), None) => "client",
        (None, Some(_)) => "concentrator",
        _ => return Err(file.missing("concentrator", ValueError::UnknownRole)),
    };
    let control = ControlConfig::from_raw(&file, role, peek.control.as_ref())?;
    Ok((role, control.socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(text: &str) -> Result<ControlConfig, ConfigError> {
        let file = ConfigFile::from_text("/etc/mpbond/home.toml", text);
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Wrapper {
            control: Option<RawControl>,
        }
        let parsed = file.deserialize::<Wrapper>()?;
        ControlConfig::from_raw(&file, "client", parsed.value.control.as_ref())
    }

    #[test]
    fn defaults_name_the_socket_after_the_role_and_the_file() {
        let config = control("").expect("valid");
        assert_eq!(config.socket, PathBuf::from("/run/mpbond/client-home.sock"));
        assert_eq!(config.metrics, None);
    }

    #[test]
    fn a_socket_and_metrics_address_are_taken() {
        let config = control("[control]\nsocket = \"ctl.sock\"\nmetrics = \"127.0.0.1:9311\"\n")
            .expect("valid");
        assert_eq!(config.socket, PathBuf::from("/etc/mpbond/ctl.sock"));
        assert_eq!(
            config.metrics,
            Some("127.0.0.1:9311".parse().expect("addr"))
        );
    }

    #[test]
    fn bad_values_name_the_line_and_key() {
        let e = control("[control]\nmetrics = \"localhost\"\n").expect_err("not an address");
        assert_eq!(e.key(), Some("control.metrics"));
        assert_eq!(e.location().line, Some(2));
        let e = control("[control]\n\nmetrics = \"127.0.0.1:0\"\n").expect_err("port 0");
        assert_eq!(e.location().line, Some(3));
        let long = format!("[control]\nsocket = \"/{}\"\n", "a".repeat(120));
        let e = control(&long).expect_err("too long");
        assert_eq!(e.key(), Some("control.socket"));
        let e = control("[control]\nsockets = \"x\"\n").expect_err("unknown key");
        assert_eq!(e.key(), Some("control.sockets"));
    }
}
