//! Where the logs go and how they look: on a terminal or in a file, one
//! line per event with its time and level; under systemd, whose journal
//! stamps every line itself, no time, and the level as a syslog priority
//! prefix (`<4>` for a warning, sd-daemon(3)) so that `journalctl -p`
//! filters on it.

use std::fmt;
use std::io::IsTerminal as _;
use std::os::unix::fs::MetadataExt as _;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: `MPBOND_LOG` (an `EnvFilter`, default
/// `info`) to standard error, in the journal's format when standard error
/// is the journal.
pub fn init() {
    let journal = stderr_is_journal();
    JOURNAL.store(journal, Ordering::Relaxed);
    let filter = EnvFilter::try_from_env("MPBOND_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if journal {
        builder
            .with_ansi(false)
            .event_format(Journal(format().without_time()))
            .init();
    } else {
        // Colours only on a terminal, not in log files.
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// Whether [`init`] found standard error to be the journal.
static JOURNAL: AtomicBool = AtomicBool::new(false);

/// What to put before a line written to standard error without `tracing`
/// (the error a command ends with): its priority under the journal.
pub fn error_prefix() -> &'static str {
    if JOURNAL.load(Ordering::Relaxed) {
        "<3>"
    } else {
        ""
    }
}

/// The default format, which the journal variant wraps.
fn format() -> format::Format {
    format::Format::default()
}

/// Whether standard error is connected to the journal: systemd sets
/// `JOURNAL_STREAM` to the device and inode of that stream
/// (systemd.exec(5)); a process it started whose standard error was
/// redirected elsewhere (a file, a pipe) keeps the variable but not the
/// stream.
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    // The link to the open stream: metadata follows it to the socket.
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    value
        .to_str()
        .is_some_and(|v| names_stream(v, meta.dev(), meta.ino()))
}

/// Whether a `JOURNAL_STREAM` value (`DEV:INO`, decimal) names the
/// stream of device `dev` and inode `ino`.
fn names_stream(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.split_once(':') else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

/// The syslog priority journald reads from a `<N>` line prefix.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// An event format that starts each event with its syslog priority.
struct Journal<F>(F);

impl<S, N, F> FormatEvent<S, N> for Journal<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn journal_stream_must_name_this_stream() {
        assert!(names_stream("2049:123456", 2049, 123_456));
        assert!(!names_stream("2049:123457", 2049, 123_456));
        assert!(!names_stream("2050:123456", 2049, 123_456));
        assert!(!names_stream("", 2049, 123_456));
        assert!(!names_stream("2049", 2049, 123_456));
        assert!(!names_stream("x:y", 2049, 123_456));
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(Level::ERROR), 3);
        assert_eq!(priority(Level::WARN), 4);
        assert_eq!(priority(Level::INFO), 6);
        assert_eq!(priority(Level::DEBUG), 7);
        assert_eq!(priority(Level::TRACE), 7);
    }

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("sink").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn journal_lines_carry_a_priority_and_no_time() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .event_format(Journal(format().without_time()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(uplink = "lte", "uplink down");
            tracing::info!("client ready");
        });
        let out = String::from_utf8(sink.0.lock().expect("sink").clone()).expect("utf-8");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].starts_with("<4> WARN "), "{out}");
        assert!(lines[0].contains("uplink down uplink=\"lte\""), "{out}");
        assert!(lines[1].starts_with("<6> INFO "), "{out}");
        // No timestamp: nothing that looks like a year.
        assert!(!out.contains("20"), "{out}");
    }
}
