//! Sysctls the program changes, restored when the guard drops, and after a
//! crash by the next start.
//!
//! Before a value changes, the value it had is recorded in a file under
//! [`RECORDS`] (a tmpfs: a reboot resets both the sysctls and the records),
//! one per network namespace (`net.*` sysctls are per namespace) and key.
//! A clean exit writes the value back and removes the record. A run that
//! finds a record was preceded by one that crashed: the record holds the
//! value from before that run, so it is the one this run restores, even
//! if the sysctl already has the value this run wants.

use std::io;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

/// Where the values from before a change are kept while it lasts.
pub const RECORDS: &str = "/run/mpbond/sysctl";

/// A sysctl set by this program; dropping the guard writes the previous
/// value back.
#[derive(Debug)]
pub struct SysctlGuard {
    key: String,
    previous: String,
    file: PathBuf,
    /// The record of `previous`, if one could be written.
    record: Option<PathBuf>,
}

fn path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// Reads a sysctl (`net.ipv4.tcp_fastopen`) as trimmed text.
pub fn read_sysctl(key: &str) -> io::Result<String> {
    Ok(std::fs::read_to_string(path(key))?.trim().to_owned())
}

/// The record's file name for `key` in this process's network namespace.
fn record_path(records: &Path, key: &str) -> PathBuf {
    let netns = std::fs::read_link("/proc/self/ns/net")
        .ok()
        .and_then(|link| {
            let text = link.to_string_lossy().into_owned();
            let inode: String = text.chars().filter(char::is_ascii_digit).collect();
            (!inode.is_empty()).then_some(inode)
        })
        .unwrap_or_else(|| "unknown".to_owned());
    records.join(format!("net-{netns}-{key}"))
}

impl SysctlGuard {
    /// Sets `key` to `value`. `None` when nothing had to change and no
    /// crashed run left a value to restore (so nothing will be restored).
    pub fn set(key: &str, value: &str) -> io::Result<Option<Self>> {
        Self::set_in(
            key,
            value,
            &path(key),
            &record_path(Path::new(RECORDS), key),
        )
    }

    /// Ensures the bits of `mask` are set in an integer sysctl.
    pub fn set_bits(key: &str, mask: u32) -> io::Result<Option<Self>> {
        let current: u32 = read_sysctl(key)?.parse().map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{key} is not a number"))
        })?;
        Self::set(key, &(current | mask).to_string())
    }

    /// [`Self::set`] with the sysctl at `file` and its record at `record`.
    fn set_in(key: &str, value: &str, file: &Path, record: &Path) -> io::Result<Option<Self>> {
        let current = std::fs::read_to_string(file)?.trim().to_owned();
        let left = std::fs::read_to_string(record)
            .ok()
            .map(|text| text.trim().to_owned())
            .filter(|text| !text.is_empty());
        let previous = match left {
            Some(before) => {
                info!(
                    key,
                    value = %before,
                    "a crashed run left this sysctl changed; its value from before is restored on exit"
                );
                before
            }
            None if current == value => return Ok(None),
            None => current.clone(),
        };
        let recorded = match write_record(record, &previous) {
            Ok(()) => Some(record.to_owned()),
            Err(e) => {
                warn!(
                    key,
                    record = %record.display(),
                    error = %e,
                    "cannot record a sysctl's value: after a crash it stays changed"
                );
                None
            }
        };
        if current != value {
            if let Err(e) = std::fs::write(file, value) {
                if let Some(record) = &recorded {
                    let _ = std::fs::remove_file(record);
                }
                return Err(e);
            }
            info!(key, value, previous = %previous, "sysctl set");
        }
        Ok(Some(Self {
            key: key.to_owned(),
            previous,
            file: file.to_owned(),
            record: recorded,
        }))
    }
}

/// Writes `value` to `record` (through a temporary file and a rename, so a
/// crash never leaves half a record).
fn write_record(record: &Path, value: &str) -> io::Result<()> {
    if let Some(dir) = record.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let partial = record.with_extension("partial");
    std::fs::write(&partial, format!("{value}\n"))?;
    std::fs::rename(&partial, record)
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        match std::fs::write(&self.file, &self.previous) {
            Ok(()) => {
                info!(key = %self.key, value = %self.previous, "sysctl restored");
                if let Some(record) = &self.record {
                    let _ = std::fs::remove_file(record);
                }
            }
            Err(e) => warn!(key = %self.key, error = %e, "cannot restore sysctl"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("mpbond-sysctl-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            Self(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path)
            .expect("read")
            .trim()
            .to_owned()
    }

    #[test]
    fn a_clean_run_restores_and_leaves_no_record() {
        let dir = Dir::new("clean");
        let file = dir.0.join("ip_forward");
        let record = dir.0.join("records/net-1-ip_forward");
        std::fs::write(&file, "0\n").expect("write");
        let guard = SysctlGuard::set_in("k", "1", &file, &record)
            .expect("set")
            .expect("a change");
        assert_eq!(read(&file), "1");
        assert_eq!(read(&record), "0");
        drop(guard);
        assert_eq!(read(&file), "0");
        assert!(!record.exists());
        // Already as wanted, no record: nothing to do or restore.
        std::fs::write(&file, "1").expect("write");
        assert!(SysctlGuard::set_in("k", "1", &file, &record)
            .expect("set")
            .is_none());
    }

    #[test]
    fn after_a_crash_the_next_run_restores_the_value_from_before_it() {
        let dir = Dir::new("crash");
        let file = dir.0.join("ip_forward");
        let record = dir.0.join("records/net-1-ip_forward");
        std::fs::write(&file, "0").expect("write");
        let crashed = SysctlGuard::set_in("k", "1", &file, &record)
            .expect("set")
            .expect("a change");
        std::mem::forget(crashed); // kill -9: no drop
        assert_eq!(read(&file), "1");
        let next = SysctlGuard::set_in("k", "1", &file, &record)
            .expect("set")
            .expect("the crashed run's change is this run's to undo");
        drop(next);
        assert_eq!(read(&file), "0");
        assert!(!record.exists());
    }
}
