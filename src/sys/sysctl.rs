//! Sysctls the program changes, restored when the guard drops.

use std::io;
use std::path::PathBuf;

use tracing::{info, warn};

/// A sysctl set by this program; dropping the guard writes the previous
/// value back.
#[derive(Debug)]
pub struct SysctlGuard {
    key: String,
    previous: String,
}

fn path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// Reads a sysctl (`net.ipv4.tcp_fastopen`) as trimmed text.
pub fn read_sysctl(key: &str) -> io::Result<String> {
    Ok(std::fs::read_to_string(path(key))?.trim().to_owned())
}

impl SysctlGuard {
    /// Sets `key` to `value` unless it already has it; `None` when nothing
    /// had to change (and so nothing will be restored).
    pub fn set(key: &str, value: &str) -> io::Result<Option<Self>> {
        let previous = read_sysctl(key)?;
        if previous == value {
            return Ok(None);
        }
        std::fs::write(path(key), value)?;
        info!(key, value, previous = %previous, "sysctl set");
        Ok(Some(Self {
            key: key.to_owned(),
            previous,
        }))
    }

    /// Ensures the bits of `mask` are set in an integer sysctl.
    pub fn set_bits(key: &str, mask: u32) -> io::Result<Option<Self>> {
        let current: u32 = read_sysctl(key)?.parse().map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{key} is not a number"))
        })?;
        Self::set(key, &(current | mask).to_string())
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        match std::fs::write(path(&self.key), &self.previous) {
            Ok(()) => info!(key = %self.key, value = %self.previous, "sysctl restored"),
            Err(e) => warn!(key = %self.key, error = %e, "cannot restore sysctl"),
        }
    }
}
