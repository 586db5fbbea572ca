//! Link profiles: the built-in ones, profile files, delivery traces, and the
//! value syntax shared with the live `link ... set` command.
//!
//! # Values
//!
//! Units are case-insensitive and may follow the number after a space.
//!
//! | value | examples | range |
//! | --- | --- | --- |
//! | rate | `20mbit`, `5Mbit`, `1gbit`, `500kbit`, `64000bit`, `1.5mbit`, `unlimited` | 8 kbit/s to 100 Gbit/s |
//! | duration | `10ms`, `1.5ms`, `250us`, `2s`, `0` | 0 to 10 s |
//! | loss | `0.5%`, `0%`, `0` | 0 % to 100 % |
//! | queue | `50ms`; `64kb`, `65536b`, `1mb` (kb = 1024 b, as in tc); `100p`, `100pkt`; `unlimited` | 1 ms to 10 s; 1 B to 1 GiB; 1 to 100 000 packets |
//!
//! # Profiles
//!
//! [`resolve`] takes a built-in name ([`BUILTIN_NAMES`]) or the path of a
//! profile file:
//!
//! ```toml
//! # down = wan -> client, up = client -> wan
//! seed = 7               # optional: seeds loss, jitter and models (default 1)
//! [down]
//! trace = "traces/lte.down"  # relative to this file's directory; or rate = "20mbit"
//! delay = "10ms"         # required
//! jitter = "2ms"         # optional, default 0
//! loss = "0.1%"          # optional, default 0
//! burst_loss = { p = "0.5%", r = "25%", loss_bad = "50%" }  # optional, see below
//! queue = "50ms"         # optional, default 100ms
//! reorder = false        # optional: may jitter reorder frames? default false
//! [up]
//! model = "lte-bursty"   # exactly one of rate, trace and model
//! delay = "10ms"
//! ```
//!
//! `model` generates a [`BUILTIN_TRACE_SECS`]-second trace of one of the
//! bursty cellular models of [`crate::gen`] (for this direction, from the
//! profile's seed). `burst_loss` is Gilbert-Elliott loss
//! ([`BurstLoss`]): per frame, `p` is the chance of going from the good
//! state to the bad one, `r` of coming back (required, above 0), and
//! `loss_bad` (required) and `loss_good` (default 0) the loss in each.
//!
//! Both sections are required and unknown keys are errors. Errors name the
//! file, line and key: `profiles/x.toml:4: down.rate: "20mbitz" is not a
//! rate; use e.g. 20mbit, 500kbit, 1gbit or unlimited`.
//!
//! # Built-in profiles
//!
//! `dsl`, `lte`, `fast` and `none` have fixed rates (see [`builtin`]).
//! `lte-bursty`, `lte-drive` and `lte-weak` shape each direction with a
//! trace generated from the model of the same name when the profile is
//! resolved, from the profile's seed ([`DEFAULT_SEED`] unless overridden),
//! so a built-in is the same on every run.
//!
//! # Traces
//!
//! A trace file (mahimahi format) has one whole number of milliseconds per
//! line, each a delivery opportunity of 1500 bytes; several lines may repeat
//! a value. Values never decrease, and the last one is the period after
//! which the trace repeats, so it must be greater than 0. Blank lines and
//! lines starting with `#` are ignored. See [`crate::model`] for how a trace
//! shapes traffic.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::gen::{self, Dir, Model};
use crate::model::{
    BurstLoss, DirectionParams, Loss, QueueLimit, Shaping, Trace, TraceError, MAX_QUEUE_FRAMES,
    MAX_TRACE_OPPORTUNITIES, MAX_TRACE_PERIOD_MS,
};

/// Names [`resolve`] knows without a file.
pub const BUILTIN_NAMES: [&str; 7] = [
    "dsl",
    "lte",
    "none",
    "fast",
    "lte-bursty",
    "lte-drive",
    "lte-weak",
];

/// Length of the traces generated for built-in profiles and `model` keys:
/// long enough that a test or benchmark does not see it repeat.
pub const BUILTIN_TRACE_SECS: u64 = 300;

/// Seed of the built-in profiles and of files that do not set one.
pub const DEFAULT_SEED: u64 = 1;

/// Slowest rate accepted, in bits per second.
pub const MIN_RATE_BITS_PER_SEC: u64 = 8_000;
/// Fastest rate accepted, in bits per second.
pub const MAX_RATE_BITS_PER_SEC: u64 = 100_000_000_000;
/// Longest delay or jitter accepted.
pub const MAX_DURATION: Duration = Duration::from_secs(10);
/// Largest trace file read, in bytes.
pub const MAX_TRACE_FILE_BYTES: u64 = 256 << 20;

const DEFAULT_QUEUE: QueueLimit = QueueLimit::Time(Duration::from_millis(100));
const MIN_QUEUE_TIME: Duration = Duration::from_millis(1);
const MAX_QUEUE_BYTES: u64 = 1 << 30;

/// A value that does not parse or is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not a rate at all.
    #[error("{text:?} is not a rate; use e.g. 20mbit, 500kbit, 1gbit or unlimited")]
    NotARate {
        /// The text given.
        text: String,
    },
    /// A rate outside 8 kbit/s to 100 Gbit/s.
    #[error("{text:?} is outside the allowed range of rates, 8 kbit/s to 100 Gbit/s")]
    RateOutOfRange {
        /// The text given.
        text: String,
    },
    /// Not a duration at all.
    #[error("{text:?} is not a duration; use e.g. 10ms, 1.5ms, 250us, 2s or 0")]
    NotADuration {
        /// The text given.
        text: String,
    },
    /// A duration over 10 s.
    #[error("{text:?} is outside the allowed range of durations, 0 to 10 s")]
    DurationOutOfRange {
        /// The text given.
        text: String,
    },
    /// Not a loss rate at all.
    #[error("{text:?} is not a loss rate; use a percentage such as 0.5% or 0%")]
    NotALoss {
        /// The text given.
        text: String,
    },
    /// A loss rate over 100 %.
    #[error("{text:?} is outside the allowed range of loss rates, 0% to 100%")]
    LossOutOfRange {
        /// The text given.
        text: String,
    },
    /// Not a queue size at all.
    #[error("{text:?} is not a queue size; use e.g. 50ms, 64kb, 65536b, 100p or unlimited")]
    NotAQueue {
        /// The text given.
        text: String,
    },
    /// A queue size outside the range for its unit.
    #[error("{text:?} is outside the allowed range of queue sizes in {allowed}")]
    QueueOutOfRange {
        /// The text given.
        text: String,
        /// The range for the unit used, e.g. "time, 1 ms to 10 s".
        allowed: &'static str,
    },
}

/// A place in a file, shown as `path:line` or `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub path: PathBuf,
    /// The line, counting from 1, when known.
    pub line: Option<usize>,
}

impl Location {
    fn line(path: &Path, line: usize) -> Self {
        Self {
            path: path.to_owned(),
            line: Some(line),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        match self.line {
            Some(line) => write!(f, ":{line}"),
            None => Ok(()),
        }
    }
}

/// A trace file that cannot be read or is not a valid trace.
#[derive(Debug, thiserror::Error)]
pub enum TraceFileError {
    /// The file cannot be read.
    #[error("cannot read trace {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file is larger than [`MAX_TRACE_FILE_BYTES`].
    #[error("{}: larger than {MAX_TRACE_FILE_BYTES} bytes; is it a trace?", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A line is not a whole number.
    #[error("{at}: {text:?} is not a whole number of milliseconds")]
    NotANumber {
        /// File and line.
        at: Location,
        /// The line's text.
        text: String,
    },
    /// A line is smaller than the one before.
    #[error(
        "{at}: {value} is less than the previous line's {previous}: \
         a trace must not go back in time"
    )]
    GoesBack {
        /// File and line.
        at: Location,
        /// The line's value.
        value: u64,
        /// The previous value.
        previous: u64,
    },
    /// A line is later than [`MAX_TRACE_PERIOD_MS`].
    #[error("{at}: {text} is later than the maximum of {MAX_TRACE_PERIOD_MS} ms (7 days)")]
    TooLate {
        /// File and line.
        at: Location,
        /// The line's text.
        text: String,
    },
    /// More than [`MAX_TRACE_OPPORTUNITIES`] lines.
    #[error("{at}: more than {MAX_TRACE_OPPORTUNITIES} delivery opportunities")]
    TooMany {
        /// File and the first line too many.
        at: Location,
    },
    /// No line with a value.
    #[error("{}: empty trace", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The last value, the period, is 0.
    #[error("{at}: the last value is the trace's period and must be greater than 0")]
    ZeroPeriod {
        /// File and line of the last value.
        at: Location,
    },
    /// Rejected by [`Trace::new`] (the checks above should prevent this).
    #[error("{}: invalid trace", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: TraceError,
    },
}

/// A profile that cannot be resolved, read or validated.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Neither a built-in name nor an existing file.
    #[error(
        "unknown link profile {spec:?}: not a built-in profile ({}) and no such file",
        BUILTIN_NAMES.join(", ")
    )]
    Unknown {
        /// What was asked for.
        spec: String,
    },
    /// The profile file cannot be read.
    #[error("cannot read link profile {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Not TOML, or not the profile format (unknown key, wrong type).
    #[error("{at}: {message}")]
    Toml {
        /// Where the TOML parser stopped.
        at: Location,
        /// The parser's message.
        message: String,
    },
    /// `[down]` or `[up]` is missing.
    #[error("{}: missing section [{section}]", path.display())]
    MissingSection {
        /// The file.
        path: PathBuf,
        /// `down` or `up`.
        section: &'static str,
    },
    /// A section has more than one of `rate`, `trace` and `model`.
    #[error("{at}: [{section}] has more than one of rate, trace and model; keep one")]
    RateAndTrace {
        /// File and line of the second key.
        at: Location,
        /// `down` or `up`.
        section: &'static str,
    },
    /// A section has neither `rate` nor `trace` nor `model`.
    #[error("{at}: [{section}] has none of rate, trace and model; add e.g. rate = \"20mbit\"")]
    NoRateOrTrace {
        /// File and line of the section.
        at: Location,
        /// `down` or `up`.
        section: &'static str,
    },
    /// A section has no `delay`.
    #[error("{at}: [{section}] has no delay; add e.g. delay = \"10ms\"")]
    NoDelay {
        /// File and line of the section.
        at: Location,
        /// `down` or `up`.
        section: &'static str,
    },
    /// A value is invalid.
    #[error("{at}: {key}")]
    Value {
        /// File and line of the value.
        at: Location,
        /// The key, e.g. `down.rate`.
        key: String,
        /// What is wrong with it.
        #[source]
        source: ValueError,
    },
    /// A `model` key names no model.
    #[error("{at}: {key}")]
    Model {
        /// File and line of the value.
        at: Location,
        /// The key, e.g. `down.model`.
        key: String,
        /// Which models exist.
        #[source]
        source: gen::UnknownModel,
    },
    /// A `burst_loss` table lacks a key it needs, or its `r` is 0.
    #[error("{at}: {key}: {problem}")]
    BurstLoss {
        /// File and line of the table.
        at: Location,
        /// The key, e.g. `down.burst_loss.r`.
        key: String,
        /// What is wrong and what to do.
        problem: &'static str,
    },
    /// A built-in trace model could not generate its trace (a bug).
    #[error("cannot generate the {model} trace for {dir}")]
    Generate {
        /// The model.
        model: Model,
        /// The direction.
        dir: Dir,
        /// Why.
        #[source]
        source: gen::GenError,
    },
    /// The trace named by a `trace` key is invalid.
    #[error("{at}: {key}")]
    Trace {
        /// File and line of the `trace` key.
        at: Location,
        /// The key, e.g. `down.trace`.
        key: String,
        /// What is wrong with the trace.
        #[source]
        source: Box<TraceFileError>,
    },
}

/// How the lab joins the two sides of a link.
// Made once per run: the size of `Emulated` costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Profile {
    /// `none`: a plain veth, no emulator.
    Veth,
    /// The userspace emulator with these parameters.
    Emulated(LinkProfile),
}

/// The emulator's parameters for both directions of a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkProfile {
    /// The built-in name, or the profile file's stem.
    pub name: String,
    /// Client to wan.
    pub up: DirectionParams,
    /// Wan to client.
    pub down: DirectionParams,
    /// Seeds loss and jitter; the driver derives one seed per direction.
    pub seed: u64,
}

impl fmt::Display for LinkProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: down {}; up {}",
            self.name,
            format_direction(&self.down),
            format_direction(&self.up)
        )
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Profile::Veth => f.write_str("none: plain veth, no emulator"),
            Profile::Emulated(profile) => profile.fmt(f),
        }
    }
}

/// A built-in profile or the profile file at `spec`.
pub fn resolve(spec: &str) -> Result<Profile, ProfileError> {
    resolve_with_seed(spec, None)
}

/// Like [`resolve`], with `seed` (when given) in place of the profile's
/// own: it seeds loss, jitter and generated traces.
pub fn resolve_with_seed(spec: &str, seed: Option<u64>) -> Result<Profile, ProfileError> {
    if let Some(profile) = builtin_seeded(spec, seed.unwrap_or(DEFAULT_SEED)) {
        return profile;
    }
    let path = Path::new(spec);
    if !path.exists() {
        return Err(ProfileError::Unknown {
            spec: spec.to_owned(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_profile_seeded(&text, path, seed).map(Profile::Emulated)
}

/// The built-in profile called `name` (see [`BUILTIN_NAMES`]), with the
/// default seed; `None` for other names. A bursty profile whose trace
/// cannot be generated (a bug) is `None` too; [`resolve`] reports why.
pub fn builtin(name: &str) -> Option<Profile> {
    builtin_seeded(name, DEFAULT_SEED)?.ok()
}

/// A bursty built-in: its trace model, and per direction (down, up) the
/// one-way delay, queue and burst loss.
struct Bursty {
    model: Model,
    delays: [Duration; 2],
    queues: [QueueLimit; 2],
    burst_losses: [Option<BurstLoss>; 2],
}

/// The bursty built-in called `name`.
fn bursty(name: &str) -> Option<Bursty> {
    let ms = Duration::from_millis;
    let loss = |ppm| Loss::from_ppm(ppm).unwrap_or(Loss::ZERO);
    let burst = |p, r, bad| BurstLoss {
        p: loss(p),
        r: loss(r),
        loss_good: Loss::ZERO,
        loss_bad: loss(bad),
    };
    let (model, delays, queues, burst_losses) = match name {
        // Urban LTE: the radio's gaps, little loss (the link layer retries),
        // a bloated buffer.
        "lte-bursty" => (
            Model::LteBursty,
            [ms(30), ms(30)],
            [QueueLimit::Time(ms(150)), QueueLimit::Time(ms(150))],
            [None, None],
        ),
        // Driving: handover losses come in short bursts.
        "lte-drive" => (
            Model::LteDrive,
            [ms(35), ms(40)],
            [QueueLimit::Bytes(384 << 10), QueueLimit::Bytes(128 << 10)],
            [
                Some(burst(2_000, 300_000, 400_000)),
                Some(burst(2_000, 300_000, 400_000)),
            ],
        ),
        // Cell edge: deep buffers, fading that loses frames in bursts.
        "lte-weak" => (
            Model::LteWeak,
            [ms(40), ms(40)],
            [QueueLimit::Time(ms(300)), QueueLimit::Time(ms(300))],
            [
                Some(burst(5_000, 250_000, 500_000)),
                Some(burst(5_000, 250_000, 500_000)),
            ],
        ),
        _ => return None,
    };
    Some(Bursty {
        model,
        delays,
        queues,
        burst_losses,
    })
}

/// The built-in profile called `name` with `seed`; `None` for other names.
fn builtin_seeded(name: &str, seed: u64) -> Option<Result<Profile, ProfileError>> {
    if let Some(Bursty {
        model,
        delays,
        queues,
        burst_losses,
    }) = bursty(name)
    {
        let direction = |dir: Dir, index: usize| {
            let trace = gen::generate(model, dir, seed, BUILTIN_TRACE_SECS)
                .map_err(|source| ProfileError::Generate { model, dir, source })?;
            Ok(DirectionParams {
                shaping: Shaping::Trace(Arc::new(trace)),
                delay: delays[index],
                queue: queues[index],
                burst_loss: burst_losses[index],
                ..DirectionParams::default()
            })
        };
        let profile = direction(Dir::Down, 0).and_then(|down| {
            Ok(Profile::Emulated(LinkProfile {
                name: name.to_owned(),
                down,
                up: direction(Dir::Up, 1)?,
                seed,
            }))
        });
        return Some(profile);
    }
    let (name, down, up) = match name {
        "none" => return Some(Ok(Profile::Veth)),
        "dsl" => {
            let dsl = |mbit: u64| DirectionParams {
                shaping: Shaping::Rate {
                    bits_per_sec: mbit * 1_000_000,
                },
                delay: Duration::from_millis(10),
                queue: QueueLimit::Time(Duration::from_millis(50)),
                ..DirectionParams::default()
            };
            ("dsl", dsl(20), dsl(5))
        }
        "lte" => {
            let lte = |mbit: u64| DirectionParams {
                shaping: Shaping::Rate {
                    bits_per_sec: mbit * 1_000_000,
                },
                delay: Duration::from_millis(30),
                jitter: Duration::from_millis(5),
                loss: Loss::from_ppm(5_000).unwrap_or(Loss::ZERO),
                queue: QueueLimit::Time(Duration::from_millis(100)),
                ..DirectionParams::default()
            };
            ("lte", lte(40), lte(10))
        }
        "fast" => (
            "fast",
            DirectionParams::default(),
            DirectionParams::default(),
        ),
        _ => return None,
    };
    Some(Ok(Profile::Emulated(LinkProfile {
        name: name.to_owned(),
        up,
        down,
        seed,
    })))
}

/// Reads and validates the profile file at `path`.
pub fn load_profile(path: &Path) -> Result<LinkProfile, ProfileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_profile(&text, path)
}

/// Validates `text` as the profile file at `path` (which names the profile,
/// locates its traces and appears in errors).
pub fn parse_profile(text: &str, path: &Path) -> Result<LinkProfile, ProfileError> {
    parse_profile_seeded(text, path, None)
}

/// Like [`parse_profile`], with `seed` (when given) in place of the file's.
fn parse_profile_seeded(
    text: &str,
    path: &Path,
    seed: Option<u64>,
) -> Result<LinkProfile, ProfileError> {
    let file = SourceFile { path, text };
    let raw: RawProfile = toml::from_str(text).map_err(|err| ProfileError::Toml {
        at: Location {
            path: path.to_owned(),
            line: err.span().map(|span| file.line(span.start)),
        },
        // toml's messages may span lines; keep the error on one.
        message: err.message().trim().replace('\n', "; "),
    })?;
    LinkProfile::try_from(InFile { file, raw, seed })
}

/// Reads and validates the trace file at `path`.
pub fn load_trace(path: &Path) -> Result<Trace, TraceFileError> {
    let mut text = String::new();
    File::open(path)
        .and_then(|file| {
            file.take(MAX_TRACE_FILE_BYTES + 1)
                .read_to_string(&mut text)
        })
        .map_err(|source| TraceFileError::Read {
            path: path.to_owned(),
            source,
        })?;
    if text.len() as u64 > MAX_TRACE_FILE_BYTES {
        return Err(TraceFileError::TooLarge {
            path: path.to_owned(),
        });
    }
    parse_trace(&text, path)
}

/// Validates `text` as the trace file at `path` (which appears in errors).
pub fn parse_trace(text: &str, path: &Path) -> Result<Trace, TraceFileError> {
    let mut offsets: Vec<u64> = Vec::new();
    let mut last_line = 0;
    for (index, line) in text.lines().enumerate() {
        let at = || Location::line(path, index + 1);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !line.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TraceFileError::NotANumber {
                at: at(),
                text: line.to_owned(),
            });
        }
        let value = match line.parse::<u64>() {
            Ok(value) if value <= MAX_TRACE_PERIOD_MS => value,
            _ => {
                return Err(TraceFileError::TooLate {
                    at: at(),
                    text: line.to_owned(),
                })
            }
        };
        if let Some(&previous) = offsets.last() {
            if value < previous {
                return Err(TraceFileError::GoesBack {
                    at: at(),
                    value,
                    previous,
                });
            }
        }
        if offsets.len() >= MAX_TRACE_OPPORTUNITIES {
            return Err(TraceFileError::TooMany { at: at() });
        }
        offsets.push(value);
        last_line = index + 1;
    }
    match offsets.last() {
        None => {
            return Err(TraceFileError::Empty {
                path: path.to_owned(),
            })
        }
        Some(0) => {
            return Err(TraceFileError::ZeroPeriod {
                at: Location::line(path, last_line),
            })
        }
        Some(_) => {}
    }
    Trace::new(offsets).map_err(|source| TraceFileError::Invalid {
        path: path.to_owned(),
        source,
    })
}

/// Parses a rate: `20mbit`, `500kbit`, `64000bit`, `1gbit`, `unlimited`.
pub fn parse_rate(text: &str) -> Result<Shaping, ValueError> {
    let trimmed = text.trim();
    if trimmed.eq_ignore_ascii_case("unlimited") {
        return Ok(Shaping::Unlimited);
    }
    let not_a_rate = || ValueError::NotARate {
        text: text.to_owned(),
    };
    let (number, unit) = split_unit(trimmed);
    let scale = match unit.strip_suffix("/s").unwrap_or(&unit) {
        "bit" => 1,
        "kbit" => 1_000,
        "mbit" => 1_000_000,
        "gbit" => 1_000_000_000,
        _ => return Err(not_a_rate()),
    };
    let bits = scaled(number, scale).ok_or_else(not_a_rate)?;
    match u64::try_from(bits) {
        Ok(bits_per_sec)
            if (MIN_RATE_BITS_PER_SEC..=MAX_RATE_BITS_PER_SEC).contains(&bits_per_sec) =>
        {
            Ok(Shaping::Rate { bits_per_sec })
        }
        _ => Err(ValueError::RateOutOfRange {
            text: text.to_owned(),
        }),
    }
}

/// Parses a delay or jitter: `10ms`, `1.5ms`, `250us`, `2s`, `0`; at most
/// 10 s.
pub fn parse_duration(text: &str) -> Result<Duration, ValueError> {
    let nanos = parse_nanos(text.trim()).ok_or_else(|| ValueError::NotADuration {
        text: text.to_owned(),
    })?;
    match u64::try_from(nanos).map(Duration::from_nanos) {
        Ok(duration) if duration <= MAX_DURATION => Ok(duration),
        _ => Err(ValueError::DurationOutOfRange {
            text: text.to_owned(),
        }),
    }
}

/// Parses a loss rate: `0.5%`, `0%`, `0`.
pub fn parse_loss(text: &str) -> Result<Loss, ValueError> {
    let not_a_loss = || ValueError::NotALoss {
        text: text.to_owned(),
    };
    let (number, unit) = split_unit(text.trim());
    let ppm = scaled(number, 10_000).ok_or_else(not_a_loss)?;
    if !(unit == "%" || unit.is_empty() && ppm == 0) {
        return Err(not_a_loss());
    }
    u32::try_from(ppm)
        .ok()
        .and_then(Loss::from_ppm)
        .ok_or_else(|| ValueError::LossOutOfRange {
            text: text.to_owned(),
        })
}

/// Parses a queue size: a time (`50ms`), bytes (`64kb`, `65536b`, `1mb`),
/// packets (`100p`, `100pkt`) or `unlimited`.
pub fn parse_queue(text: &str) -> Result<QueueLimit, ValueError> {
    let trimmed = text.trim();
    if trimmed.eq_ignore_ascii_case("unlimited") {
        return Ok(QueueLimit::Unlimited);
    }
    let not_a_queue = || ValueError::NotAQueue {
        text: text.to_owned(),
    };
    let out_of_range = |allowed| ValueError::QueueOutOfRange {
        text: text.to_owned(),
        allowed,
    };
    let (number, unit) = split_unit(trimmed);
    let byte_scale = match unit.as_str() {
        "b" => Some(1),
        "kb" | "kib" => Some(1 << 10),
        "mb" | "mib" => Some(1 << 20),
        _ => None,
    };
    if let Some(scale) = byte_scale {
        let bytes = scaled(number, scale).ok_or_else(not_a_queue)?;
        return match u64::try_from(bytes) {
            Ok(bytes) if (1..=MAX_QUEUE_BYTES).contains(&bytes) => Ok(QueueLimit::Bytes(bytes)),
            _ => Err(out_of_range("bytes, 1 B to 1 GiB")),
        };
    }
    if matches!(unit.as_str(), "p" | "pkt" | "pkts" | "packet" | "packets") {
        if number.contains('.') {
            return Err(not_a_queue());
        }
        let packets = scaled(number, 1).ok_or_else(not_a_queue)?;
        return match u64::try_from(packets) {
            Ok(packets) if (1..=MAX_QUEUE_FRAMES as u64).contains(&packets) => {
                Ok(QueueLimit::Packets(packets))
            }
            _ => Err(out_of_range("packets, 1 to 100000")),
        };
    }
    let nanos = parse_nanos(trimmed).ok_or_else(not_a_queue)?;
    match u64::try_from(nanos).map(Duration::from_nanos) {
        Ok(time) if (MIN_QUEUE_TIME..=MAX_DURATION).contains(&time) => Ok(QueueLimit::Time(time)),
        _ => Err(out_of_range("time, 1 ms to 10 s")),
    }
}

/// A rate for people: `20 Mbit/s`, `1.5 Mbit/s`, `64 kbit/s`.
pub fn format_rate(bits_per_sec: u64) -> String {
    let (unit, name) = match bits_per_sec {
        1_000_000_000.. => (1_000_000_000, "Gbit/s"),
        1_000_000.. => (1_000_000, "Mbit/s"),
        1_000.. => (1_000, "kbit/s"),
        _ => (1, "bit/s"),
    };
    format!("{} {name}", decimal(bits_per_sec.into(), unit))
}

/// Shaping for people: `unlimited`, `20 Mbit/s`, `trace (mean 3.6 Mbit/s)`.
pub fn format_shaping(shaping: &Shaping) -> String {
    match shaping {
        Shaping::Unlimited => "unlimited".to_owned(),
        Shaping::Rate { bits_per_sec } => format_rate(*bits_per_sec),
        Shaping::Trace(trace) => {
            // Three or four significant digits: a mean to the bit says
            // nothing more about a bursty trace.
            let mean = trace.mean_bits_per_sec();
            let step = match mean {
                1_000_000.. => 10_000,
                1_000.. => 10,
                _ => 1,
            };
            let rounded = (mean + step / 2) / step * step;
            format!("trace (mean {})", format_rate(rounded))
        }
    }
}

/// A duration for people: `10 ms`, `1.5 ms`, `250 us`, `2 s`, `0 ms`.
pub fn format_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    let (unit, name) = match nanos {
        0 => return "0 ms".to_owned(),
        1_000_000_000.. => (1_000_000_000, "s"),
        1_000_000.. => (1_000_000, "ms"),
        1_000.. => (1_000, "us"),
        _ => (1, "ns"),
    };
    format!("{} {name}", decimal(nanos, unit))
}

/// A loss rate for people: `0.5%`.
pub fn format_loss(loss: Loss) -> String {
    format!("{}%", decimal(loss.ppm().into(), 10_000))
}

/// Burst loss for people: `burst loss p 0.5% r 25% good 0% bad 50% (mean
/// 0.98%)`.
pub fn format_burst_loss(burst: &BurstLoss) -> String {
    format!(
        "burst loss p {} r {} good {} bad {} (mean {:.2}%)",
        format_loss(burst.p),
        format_loss(burst.r),
        format_loss(burst.loss_good),
        format_loss(burst.loss_bad),
        burst.mean_loss() * 100.0
    )
}

/// A queue size for people: `50 ms`, `64 KiB`, `1500 B`, `100 packets`,
/// `unlimited`.
pub fn format_queue(queue: &QueueLimit) -> String {
    match *queue {
        QueueLimit::Bytes(bytes) if bytes >= 1 << 20 && bytes % (1 << 20) == 0 => {
            format!("{} MiB", bytes >> 20)
        }
        QueueLimit::Bytes(bytes) if bytes >= 1 << 10 && bytes % (1 << 10) == 0 => {
            format!("{} KiB", bytes >> 10)
        }
        QueueLimit::Bytes(bytes) => format!("{bytes} B"),
        QueueLimit::Packets(packets) => format!("{packets} packets"),
        QueueLimit::Time(time) => format_duration(time),
        QueueLimit::Unlimited => "unlimited".to_owned(),
    }
}

/// One direction for people: `20 Mbit/s, delay 10 ms, jitter 0 ms, loss 0%,
/// queue 50 ms`.
pub fn format_direction(params: &DirectionParams) -> String {
    format!(
        "{}, delay {}, jitter {}{}, loss {}{}, queue {}",
        format_shaping(&params.shaping),
        format_duration(params.delay),
        format_duration(params.jitter),
        if params.allow_reorder {
            " (may reorder)"
        } else {
            ""
        },
        format_loss(params.loss),
        params
            .burst_loss
            .as_ref()
            .map_or_else(String::new, |burst| format!(
                ", {}",
                format_burst_loss(burst)
            )),
        format_queue(&params.queue),
    )
}

/// A profile file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    seed: Option<u64>,
    down: Option<Spanned<RawDirection>>,
    up: Option<Spanned<RawDirection>>,
}

/// A `[down]` or `[up]` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDirection {
    rate: Option<Spanned<String>>,
    trace: Option<Spanned<String>>,
    delay: Option<Spanned<String>>,
    jitter: Option<Spanned<String>>,
    loss: Option<Spanned<String>>,
    burst_loss: Option<Spanned<RawBurstLoss>>,
    model: Option<Spanned<String>>,
    queue: Option<Spanned<String>>,
    reorder: Option<bool>,
}

/// A `burst_loss = { ... }` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBurstLoss {
    p: Option<Spanned<String>>,
    r: Option<Spanned<String>>,
    loss_good: Option<Spanned<String>>,
    loss_bad: Option<Spanned<String>>,
}

/// The text of a profile file and where it is.
#[derive(Clone, Copy)]
struct SourceFile<'a> {
    path: &'a Path,
    text: &'a str,
}

impl SourceFile<'_> {
    /// The line (from 1) holding byte `offset`.
    fn line(&self, offset: usize) -> usize {
        let before = self
            .text
            .as_bytes()
            .get(..offset)
            .unwrap_or(self.text.as_bytes());
        before.iter().filter(|&&b| b == b'\n').count() + 1
    }

    fn at(&self, offset: usize) -> Location {
        Location::line(self.path, self.line(offset))
    }

    /// Parses the value of `section.key`, naming it and its line on error.
    fn value<T>(
        &self,
        section: &str,
        key: &str,
        value: &Spanned<String>,
        parse: fn(&str) -> Result<T, ValueError>,
    ) -> Result<T, ProfileError> {
        parse(value.get_ref()).map_err(|source| ProfileError::Value {
            at: self.at(value.span().start),
            key: format!("{section}.{key}"),
            source,
        })
    }

    /// Like [`Self::value`] for a key that may be absent.
    fn optional<T>(
        &self,
        section: &str,
        key: &str,
        value: Option<Spanned<String>>,
        parse: fn(&str) -> Result<T, ValueError>,
    ) -> Result<Option<T>, ProfileError> {
        value
            .map(|value| self.value(section, key, &value, parse))
            .transpose()
    }

    /// Validates `section.burst_loss`.
    fn burst_loss(
        &self,
        section: &'static str,
        raw: Spanned<RawBurstLoss>,
    ) -> Result<BurstLoss, ProfileError> {
        let at = self.at(raw.span().start);
        let raw = raw.into_inner();
        let key = |name: &str| format!("{section}.burst_loss.{name}");
        let required = |name: &str, value: Option<Spanned<String>>, problem| {
            let Some(value) = value else {
                return Err(ProfileError::BurstLoss {
                    at: at.clone(),
                    key: key(name),
                    problem,
                });
            };
            self.value(section, &format!("burst_loss.{name}"), &value, parse_loss)
        };
        let burst = BurstLoss {
            p: required(
                "p",
                raw.p,
                "missing; add the chance per frame of a loss burst starting, e.g. p = \"0.5%\"",
            )?,
            r: required(
                "r",
                raw.r,
                "missing; add the chance per frame of a burst ending, e.g. r = \"25%\"",
            )?,
            loss_bad: required(
                "loss_bad",
                raw.loss_bad,
                "missing; add the loss during a burst, e.g. loss_bad = \"50%\"",
            )?,
            loss_good: self
                .optional(section, "burst_loss.loss_good", raw.loss_good, parse_loss)?
                .unwrap_or_default(),
        };
        if burst.r == Loss::ZERO {
            return Err(ProfileError::BurstLoss {
                at,
                key: key("r"),
                problem: "is 0, so the first burst would never end; use e.g. r = \"25%\"",
            });
        }
        Ok(burst)
    }

    /// Validates the section called `section`.
    fn direction(
        &self,
        section: &'static str,
        raw: Option<Spanned<RawDirection>>,
        seed: u64,
    ) -> Result<DirectionParams, ProfileError> {
        let Some(raw) = raw else {
            return Err(ProfileError::MissingSection {
                path: self.path.to_owned(),
                section,
            });
        };
        let section_at = self.at(raw.span().start);
        let raw = raw.into_inner();
        let shaping = match (raw.rate, raw.trace, raw.model) {
            (None, None, Some(model)) => {
                let name: Model =
                    model
                        .get_ref()
                        .parse()
                        .map_err(|source| ProfileError::Model {
                            at: self.at(model.span().start),
                            key: format!("{section}.model"),
                            source,
                        })?;
                let dir = if section == "up" { Dir::Up } else { Dir::Down };
                let trace =
                    gen::generate(name, dir, seed, BUILTIN_TRACE_SECS).map_err(|source| {
                        ProfileError::Generate {
                            model: name,
                            dir,
                            source,
                        }
                    })?;
                Shaping::Trace(Arc::new(trace))
            }
            (Some(rate), None, None) => self.value(section, "rate", &rate, parse_rate)?,
            (None, Some(trace), None) => {
                let path = self
                    .path
                    .parent()
                    .unwrap_or(Path::new(""))
                    .join(trace.get_ref());
                let trace_file = load_trace(&path).map_err(|source| ProfileError::Trace {
                    at: self.at(trace.span().start),
                    key: format!("{section}.trace"),
                    source: Box::new(source),
                })?;
                Shaping::Trace(Arc::new(trace_file))
            }
            // Two or three at once: point at the later key of rate/trace,
            // or at model.
            (Some(_), Some(second), None) | (_, _, Some(second)) => {
                return Err(ProfileError::RateAndTrace {
                    at: self.at(second.span().start),
                    section,
                })
            }
            (None, None, None) => {
                return Err(ProfileError::NoRateOrTrace {
                    at: section_at,
                    section,
                })
            }
        };
        let Some(delay) = raw.delay else {
            return Err(ProfileError::NoDelay {
                at: section_at,
                section,
            });
        };
        Ok(DirectionParams {
            shaping,
            delay: self.value(section, "delay", &delay, parse_duration)?,
            jitter: self
                .optional(section, "jitter", raw.jitter, parse_duration)?
                .unwrap_or_default(),
            loss: self
                .optional(section, "loss", raw.loss, parse_loss)?
                .unwrap_or_default(),
            burst_loss: raw
                .burst_loss
                .map(|raw| self.burst_loss(section, raw))
                .transpose()?,
            queue: self
                .optional(section, "queue", raw.queue, parse_queue)?
                .unwrap_or(DEFAULT_QUEUE),
            allow_reorder: raw.reorder.unwrap_or(false),
        })
    }
}

/// A deserialized profile with the file it came from, which validation
/// needs for error positions and trace paths.
struct InFile<'a> {
    file: SourceFile<'a>,
    raw: RawProfile,
    /// Replaces the file's seed.
    seed: Option<u64>,
}

impl TryFrom<InFile<'_>> for LinkProfile {
    type Error = ProfileError;

    fn try_from(InFile { file, raw, seed }: InFile<'_>) -> Result<Self, ProfileError> {
        let seed = seed.or(raw.seed).unwrap_or(DEFAULT_SEED);
        Ok(LinkProfile {
            name: file
                .path
                .file_stem()
                .map_or_else(String::new, |stem| stem.to_string_lossy().into_owned()),
            down: file.direction("down", raw.down, seed)?,
            up: file.direction("up", raw.up, seed)?,
            seed,
        })
    }
}

/// Splits `"1.5 mbit"` into `("1.5", "mbit")`, the unit lowercased.
fn split_unit(text: &str) -> (&str, String) {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(end);
    (number, unit.trim().to_lowercase())
}

/// Nanoseconds in `10ms`, `1.5ms`, `250us`, `2s`, `0`.
fn parse_nanos(text: &str) -> Option<u128> {
    let (number, unit) = split_unit(text);
    let scale = match unit.as_str() {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "" => return scaled(number, 1).filter(|&value| value == 0),
        _ => return None,
    };
    scaled(number, scale)
}

/// The decimal `number` (`20`, `1.5`, `.5`) times `scale`, rounded to the
/// nearest whole number and saturating (so huge values fail range checks);
/// `None` unless `number` is digits with at most one point.
fn scaled(number: &str, scale: u64) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() && fraction.is_empty() || !digits(whole) || !digits(fraction) {
        return None;
    }
    let mut value: u128 = 0;
    for digit in whole.bytes() {
        value = value
            .saturating_mul(10)
            .saturating_add(u128::from(digit - b'0'));
    }
    let value = value.saturating_mul(u128::from(scale));
    // 18 digits keep `numerator * scale` within u128 for any u64 scale.
    let fraction = fraction.get(..18).unwrap_or(fraction);
    let (mut numerator, mut denominator) = (0u128, 1u128);
    for digit in fraction.bytes() {
        numerator = numerator * 10 + u128::from(digit - b'0');
        denominator *= 10;
    }
    let rounded = (numerator * u128::from(scale) + denominator / 2) / denominator;
    Some(value.saturating_add(rounded))
}

/// `value / unit` in decimal without trailing zeros; `unit` is a power of
/// ten.
fn decimal(value: u128, unit: u128) -> String {
    let (whole, fraction) = (value / unit, value % unit);
    if fraction == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let fraction = format!("{fraction:0width$}");
    format!("{whole}.{}", fraction.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The error and its sources joined with ": ", as `anyhow` shows them.
    fn chain(err: &dyn Error) -> String {
        let mut text = err.to_string();
        let mut source = err.source();
        while let Some(err) = source {
            text.push_str(": ");
            text.push_str(&err.to_string());
            source = err.source();
        }
        text
    }

    /// A directory under the system's temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let path = std::env::temp_dir().join(format!(
                "mpbond-profile-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).expect("create temp dir");
            Self(path)
        }

        fn write(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.0.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("create dir");
            }
            std::fs::write(&path, contents).expect("write temp file");
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn bits(shaping: Shaping) -> Option<u64> {
        match shaping {
            Shaping::Rate { bits_per_sec } => Some(bits_per_sec),
            _ => None,
        }
    }

    #[test]
    fn rates_parse() {
        let cases = [
            ("20mbit", 20_000_000),
            ("5Mbit", 5_000_000),
            ("1gbit", 1_000_000_000),
            ("500kbit", 500_000),
            ("64000bit", 64_000),
            ("1.5mbit", 1_500_000),
            (" 20 Mbit/s ", 20_000_000),
            ("8kbit", 8_000),
            ("100gbit", 100_000_000_000),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_rate(text).map(bits), Ok(Some(expected)), "{text}");
        }
        assert_eq!(parse_rate("unlimited"), Ok(Shaping::Unlimited));
        assert_eq!(parse_rate("Unlimited"), Ok(Shaping::Unlimited));
    }

    #[test]
    fn bad_rates_say_what_is_accepted() {
        assert_eq!(
            parse_rate("20mbitz").map_err(|e| e.to_string()),
            Err("\"20mbitz\" is not a rate; use e.g. 20mbit, 500kbit, 1gbit or unlimited".into())
        );
        for text in ["20", "mbit", "-5mbit", "1.2.3mbit", "", "20mbps", "1e6bit"] {
            assert_eq!(
                parse_rate(text),
                Err(ValueError::NotARate { text: text.into() })
            );
        }
        for text in [
            "7999bit",
            "0mbit",
            "101gbit",
            "99999999999999999999999999999999gbit",
        ] {
            let err = parse_rate(text).expect_err(text);
            assert_eq!(
                err.to_string(),
                format!("{text:?} is outside the allowed range of rates, 8 kbit/s to 100 Gbit/s")
            );
        }
    }

    #[test]
    fn durations_parse() {
        let cases = [
            ("10ms", Duration::from_millis(10)),
            ("1.5ms", Duration::from_micros(1500)),
            ("250us", Duration::from_micros(250)),
            ("250µs", Duration::from_micros(250)),
            ("2s", Duration::from_secs(2)),
            ("0", Duration::ZERO),
            ("0ms", Duration::ZERO),
            ("10 s", Duration::from_secs(10)),
            ("100ns", Duration::from_nanos(100)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn bad_durations_say_what_is_accepted() {
        assert_eq!(
            parse_duration("10").map_err(|e| e.to_string()),
            Err("\"10\" is not a duration; use e.g. 10ms, 1.5ms, 250us, 2s or 0".into())
        );
        for text in ["5m", "ms", "1e3ms", "-1ms", "1.5.ms"] {
            assert_eq!(
                parse_duration(text),
                Err(ValueError::NotADuration { text: text.into() })
            );
        }
        assert_eq!(
            parse_duration("10.001s").map_err(|e| e.to_string()),
            Err("\"10.001s\" is outside the allowed range of durations, 0 to 10 s".into())
        );
        assert!(parse_duration("99999999999999999999999s").is_err());
    }

    #[test]
    fn losses_parse() {
        let cases = [
            ("0.5%", 5_000),
            ("0", 0),
            ("0%", 0),
            ("0.0", 0),
            ("100%", 1_000_000),
            ("0.0001%", 1),
            ("1 %", 10_000),
        ];
        for (text, ppm) in cases {
            assert_eq!(parse_loss(text).map(Loss::ppm), Ok(ppm), "{text}");
        }
    }

    #[test]
    fn bad_losses_say_what_is_accepted() {
        assert_eq!(
            parse_loss("0.5").map_err(|e| e.to_string()),
            Err("\"0.5\" is not a loss rate; use a percentage such as 0.5% or 0%".into())
        );
        for text in ["abc", "%", "-1%", "0.5%%"] {
            assert_eq!(
                parse_loss(text),
                Err(ValueError::NotALoss { text: text.into() })
            );
        }
        assert_eq!(
            parse_loss("100.1%").map_err(|e| e.to_string()),
            Err("\"100.1%\" is outside the allowed range of loss rates, 0% to 100%".into())
        );
    }

    #[test]
    fn queues_parse() {
        let cases = [
            ("50ms", QueueLimit::Time(Duration::from_millis(50))),
            ("64kb", QueueLimit::Bytes(65_536)),
            ("65536b", QueueLimit::Bytes(65_536)),
            ("1mb", QueueLimit::Bytes(1 << 20)),
            ("1.5KiB", QueueLimit::Bytes(1536)),
            ("100p", QueueLimit::Packets(100)),
            ("100pkt", QueueLimit::Packets(100)),
            ("unlimited", QueueLimit::Unlimited),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_queue(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn bad_queues_say_what_is_accepted() {
        assert_eq!(
            parse_queue("50").map_err(|e| e.to_string()),
            Err(
                "\"50\" is not a queue size; use e.g. 50ms, 64kb, 65536b, 100p or unlimited".into()
            )
        );
        for text in ["64kbit", "1.5p", "p", "lots"] {
            assert_eq!(
                parse_queue(text),
                Err(ValueError::NotAQueue { text: text.into() })
            );
        }
        let out_of_range = [
            ("0p", "packets, 1 to 100000"),
            ("100001p", "packets, 1 to 100000"),
            ("0b", "bytes, 1 B to 1 GiB"),
            ("2048mb", "bytes, 1 B to 1 GiB"),
            ("0ms", "time, 1 ms to 10 s"),
            ("11s", "time, 1 ms to 10 s"),
        ];
        for (text, allowed) in out_of_range {
            assert_eq!(
                parse_queue(text).map_err(|e| e.to_string()),
                Err(format!(
                    "{text:?} is outside the allowed range of queue sizes in {allowed}"
                ))
            );
        }
    }

    #[test]
    fn formats_are_readable_and_parse_back() {
        for (bits_per_sec, text) in [
            (20_000_000, "20 Mbit/s"),
            (1_500_000, "1.5 Mbit/s"),
            (64_000, "64 kbit/s"),
            (100_000_000_000, "100 Gbit/s"),
            (1_234_567, "1.234567 Mbit/s"),
        ] {
            assert_eq!(format_rate(bits_per_sec), text);
            assert_eq!(parse_rate(text).map(bits), Ok(Some(bits_per_sec)));
        }
        assert_eq!(format_rate(999), "999 bit/s");
        for (duration, text) in [
            (Duration::from_micros(1500), "1.5 ms"),
            (Duration::from_micros(250), "250 us"),
            (Duration::from_secs(2), "2 s"),
            (Duration::ZERO, "0 ms"),
            (Duration::from_nanos(7), "7 ns"),
        ] {
            assert_eq!(format_duration(duration), text);
            assert_eq!(parse_duration(text), Ok(duration));
        }
        for (ppm, text) in [
            (5_000, "0.5%"),
            (0, "0%"),
            (1_000_000, "100%"),
            (1, "0.0001%"),
        ] {
            let loss = Loss::from_ppm(ppm).expect("in range");
            assert_eq!(format_loss(loss), text);
            assert_eq!(parse_loss(text), Ok(loss));
        }
        for (queue, text) in [
            (QueueLimit::Bytes(65_536), "64 KiB"),
            (QueueLimit::Bytes(1 << 20), "1 MiB"),
            (QueueLimit::Bytes(1500), "1500 B"),
            (QueueLimit::Packets(100), "100 packets"),
            (QueueLimit::Time(Duration::from_millis(50)), "50 ms"),
            (QueueLimit::Unlimited, "unlimited"),
        ] {
            assert_eq!(format_queue(&queue), text);
            assert_eq!(parse_queue(text), Ok(queue));
        }
    }

    #[test]
    fn builtins_match_the_lab_table() {
        let Some(Profile::Emulated(dsl)) = builtin("dsl") else {
            panic!("dsl is emulated");
        };
        assert_eq!(bits(dsl.down.shaping.clone()), Some(20_000_000));
        assert_eq!(bits(dsl.up.shaping.clone()), Some(5_000_000));
        for direction in [&dsl.down, &dsl.up] {
            assert_eq!(direction.delay, Duration::from_millis(10));
            assert_eq!(direction.jitter, Duration::ZERO);
            assert_eq!(direction.loss, Loss::ZERO);
            assert_eq!(direction.queue, QueueLimit::Time(Duration::from_millis(50)));
        }
        assert_eq!(
            dsl.to_string(),
            "dsl: down 20 Mbit/s, delay 10 ms, jitter 0 ms, loss 0%, queue 50 ms; \
             up 5 Mbit/s, delay 10 ms, jitter 0 ms, loss 0%, queue 50 ms"
        );

        let Some(Profile::Emulated(lte)) = builtin("lte") else {
            panic!("lte is emulated");
        };
        assert_eq!(bits(lte.down.shaping.clone()), Some(40_000_000));
        assert_eq!(bits(lte.up.shaping.clone()), Some(10_000_000));
        for direction in [&lte.down, &lte.up] {
            assert_eq!(direction.delay, Duration::from_millis(30));
            assert_eq!(direction.jitter, Duration::from_millis(5));
            assert_eq!(direction.loss.ppm(), 5_000);
            assert_eq!(
                direction.queue,
                QueueLimit::Time(Duration::from_millis(100))
            );
            assert!(!direction.allow_reorder);
        }

        assert_eq!(builtin("none"), Some(Profile::Veth));
        let Some(Profile::Emulated(fast)) = builtin("fast") else {
            panic!("fast is emulated");
        };
        assert_eq!(fast.down, DirectionParams::default());
        assert_eq!(fast.up, DirectionParams::default());

        for name in BUILTIN_NAMES {
            assert_eq!(resolve(name).ok(), builtin(name), "{name}");
        }
    }

    #[test]
    fn unknown_profile_lists_the_builtins() {
        let err = resolve("cable").expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "unknown link profile \"cable\": not a built-in profile (dsl, lte, none, fast, \
             lte-bursty, lte-drive, lte-weak) and no such file"
        );
    }

    #[test]
    fn profile_file_with_a_trace_resolves() {
        let dir = TempDir::new();
        dir.write(
            "traces/lte.down",
            "# three opportunities per 10 ms\n0\n0\n\n10\r\n",
        );
        let path = dir.write(
            "mylink.toml",
            r#"
# down = wan -> client, up = client -> wan
seed = 7
[down]
trace = "traces/lte.down"
delay = "10ms"
jitter = "2ms"
loss = "0.1%"
queue = "64kb"
reorder = true
[up]
rate = "5mbit"
delay = "1.5ms"
"#,
        );
        let spec = path.to_str().expect("utf-8 temp path");
        let Ok(Profile::Emulated(profile)) = resolve(spec) else {
            panic!("{:?}", resolve(spec));
        };
        assert_eq!(profile.name, "mylink");
        assert_eq!(profile.seed, 7);
        let Shaping::Trace(trace) = &profile.down.shaping else {
            panic!("down is traced");
        };
        assert_eq!(trace.opportunities_ms(), [0, 0, 10]);
        assert_eq!(trace.mean_bits_per_sec(), 3_600_000);
        assert_eq!(profile.down.delay, Duration::from_millis(10));
        assert_eq!(profile.down.jitter, Duration::from_millis(2));
        assert_eq!(profile.down.loss.ppm(), 1_000);
        assert_eq!(profile.down.queue, QueueLimit::Bytes(65_536));
        assert!(profile.down.allow_reorder);
        assert_eq!(
            profile.up,
            DirectionParams {
                shaping: Shaping::Rate {
                    bits_per_sec: 5_000_000
                },
                delay: Duration::from_micros(1500),
                queue: QueueLimit::Time(Duration::from_millis(100)),
                ..DirectionParams::default()
            }
        );
        assert_eq!(
            profile.to_string(),
            "mylink: down trace (mean 3.6 Mbit/s), delay 10 ms, jitter 2 ms (may reorder), \
             loss 0.1%, queue 64 KiB; \
             up 5 Mbit/s, delay 1.5 ms, jitter 0 ms, loss 0%, queue 100 ms"
        );
    }

    #[test]
    fn bursty_builtins_are_generated_traces_reproducible_from_the_seed() {
        for name in ["lte-bursty", "lte-drive", "lte-weak"] {
            let Some(Profile::Emulated(profile)) = builtin(name) else {
                panic!("{name} is built in");
            };
            assert_eq!(profile.name, name);
            for (dir, params) in [("down", &profile.down), ("up", &profile.up)] {
                let Shaping::Trace(trace) = &params.shaping else {
                    panic!("{name} {dir} is traced");
                };
                assert_eq!(trace.period(), Duration::from_secs(BUILTIN_TRACE_SECS));
                assert!(
                    (Duration::from_millis(30)..=Duration::from_millis(40)).contains(&params.delay),
                    "{name} {dir}"
                );
            }
            let (down, up) = (&profile.down.shaping, &profile.up.shaping);
            assert!(up.mean_bits_per_sec() < down.mean_bits_per_sec(), "{name}");
            // Same seed, same profile; another seed, other traces.
            assert_eq!(resolve(name).ok(), builtin(name), "{name}");
            let Ok(Profile::Emulated(other)) = resolve_with_seed(name, Some(2)) else {
                panic!("{name} with seed 2");
            };
            assert_eq!(other.seed, 2);
            assert_ne!(other.down.shaping, profile.down.shaping, "{name}");
            assert_eq!(other.down.delay, profile.down.delay, "{name}");
        }
        let Some(Profile::Emulated(weak)) = builtin("lte-weak") else {
            panic!("lte-weak is built in");
        };
        // A trace's mean shows to four digits: 1337 opportunities in a
        // second are 16.044 Mbit/s.
        let mut offsets = vec![0; 1336];
        offsets.push(1000);
        let trace = Trace::new(offsets).expect("trace");
        assert_eq!(
            format_shaping(&Shaping::Trace(Arc::new(trace))),
            "trace (mean 16.04 Mbit/s)"
        );
        let burst = weak.down.burst_loss.expect("lte-weak loses in bursts");
        assert!((0.005..=0.02).contains(&burst.mean_loss()), "{burst:?}");
    }

    #[test]
    fn profile_file_with_a_model_and_burst_loss_resolves() {
        let dir = TempDir::new();
        let text = r#"seed = 5
[down]
model = "lte-drive"
delay = "35ms"
burst_loss = { p = "0.5%", r = "25%", loss_bad = "50%" }
queue = "256kb"
[up]
model = "lte-drive"
delay = "40ms"
burst_loss = { p = "1%", r = "20%", loss_good = "0.1%", loss_bad = "30%" }
"#;
        let path = dir.write("drive.toml", text);
        let spec = path.to_str().expect("utf-8 temp path");
        let Ok(Profile::Emulated(profile)) = resolve(spec) else {
            panic!("{:?}", resolve(spec));
        };
        let expected =
            gen::generate(Model::LteDrive, Dir::Down, 5, BUILTIN_TRACE_SECS).expect("generate");
        assert_eq!(profile.down.shaping, Shaping::Trace(Arc::new(expected)));
        let loss = |percent| Loss::from_percent(percent).expect("in range");
        assert_eq!(
            profile.down.burst_loss,
            Some(BurstLoss {
                p: loss(0.5),
                r: loss(25.0),
                loss_good: Loss::ZERO,
                loss_bad: loss(50.0),
            })
        );
        assert_eq!(profile.up.burst_loss.map(|b| b.loss_good), Some(loss(0.1)));
        assert!(profile
            .to_string()
            .contains("burst loss p 0.5% r 25% good 0% bad 50% (mean 0.98%)"));
        // A seed given on the command line replaces the file's.
        let Ok(Profile::Emulated(reseeded)) = resolve_with_seed(spec, Some(6)) else {
            panic!("reseeded");
        };
        assert_eq!(reseeded.seed, 6);
        assert_ne!(reseeded.down.shaping, profile.down.shaping);
    }

    #[test]
    fn model_and_burst_loss_errors_name_file_line_and_key() {
        let cases = [
            (
                format!("[down]\nmodel = \"lte-fast\"\ndelay = \"1ms\"\n{UP}"),
                "profiles/x.toml:2: down.model: unknown trace model \"lte-fast\"; \
                 use one of lte-bursty, lte-drive, lte-weak",
            ),
            (
                format!("[down]\nrate = \"1mbit\"\nmodel = \"lte-weak\"\ndelay = \"1ms\"\n{UP}"),
                "profiles/x.toml:3: [down] has more than one of rate, trace and model; keep one",
            ),
            (
                format!(
                    "[down]\nrate = \"1mbit\"\ndelay = \"1ms\"\n\
                     burst_loss = {{ p = \"1%\", loss_bad = \"50%\" }}\n{UP}"
                ),
                "profiles/x.toml:4: down.burst_loss.r: missing; add the chance per frame of a \
                 burst ending, e.g. r = \"25%\"",
            ),
            (
                format!(
                    "[down]\nrate = \"1mbit\"\ndelay = \"1ms\"\n\
                     burst_loss = {{ p = \"1%\", r = \"0%\", loss_bad = \"50%\" }}\n{UP}"
                ),
                "profiles/x.toml:4: down.burst_loss.r: is 0, so the first burst would never \
                 end; use e.g. r = \"25%\"",
            ),
            (
                format!(
                    "[down]\nrate = \"1mbit\"\ndelay = \"1ms\"\n{UP}\
                     burst_loss = {{ p = \"1%\", r = \"5\", loss_bad = \"50%\" }}\n"
                ),
                "profiles/x.toml:7: up.burst_loss.r: \"5\" is not a loss rate; \
                 use a percentage such as 0.5% or 0%",
            ),
            (
                format!(
                    "[down]\nrate = \"1mbit\"\ndelay = \"1ms\"\n\
                     burst_loss = {{ p = \"1%\", r = \"5%\", bad = \"50%\" }}\n{UP}"
                ),
                "profiles/x.toml:4: unknown field `bad`, expected one of",
            ),
        ];
        for (text, expected) in cases {
            let err = profile_error(&text);
            assert!(
                err.starts_with(expected),
                "{err:?} should start with {expected:?}"
            );
        }
    }

    const UP: &str = "[up]\nrate = \"5mbit\"\ndelay = \"10ms\"\n";

    /// The error for profile `text` read from `profiles/x.toml`.
    fn profile_error(text: &str) -> String {
        let err = parse_profile(text, Path::new("profiles/x.toml")).expect_err("invalid");
        chain(&err)
    }

    #[test]
    fn profile_value_errors_name_file_line_and_key() {
        let text = format!("seed = 7\n\n[down]\nrate = \"20mbitz\"\ndelay = \"10ms\"\n{UP}");
        assert_eq!(
            profile_error(&text),
            "profiles/x.toml:4: down.rate: \"20mbitz\" is not a rate; \
             use e.g. 20mbit, 500kbit, 1gbit or unlimited"
        );
        let text = format!("[down]\nrate = \"20mbit\"\ndelay = \"10ms\"\n{UP}queue = \"50\"\n");
        assert_eq!(
            profile_error(&text),
            "profiles/x.toml:7: up.queue: \"50\" is not a queue size; \
             use e.g. 50ms, 64kb, 65536b, 100p or unlimited"
        );
        let text = format!("[down]\nrate = \"20mbit\"\ndelay = \"10ms\"\nloss = \"1\"\n{UP}");
        assert!(profile_error(&text).starts_with("profiles/x.toml:4: down.loss: \"1\" is not"));
        let text = format!("[down]\nrate = \"20mbit\"\ndelay = \"11s\"\n{UP}");
        assert!(profile_error(&text).starts_with("profiles/x.toml:3: down.delay: \"11s\" is"));
        let text = format!("[down]\nrate = \"20mbit\"\ndelay = \"1ms\"\njitter = \"x\"\n{UP}");
        assert!(profile_error(&text).starts_with("profiles/x.toml:4: down.jitter: \"x\" is"));
    }

    #[test]
    fn profile_structure_errors_name_file_and_line() {
        let cases = [
            (
                format!("[down]\nratez = \"20mbit\"\ndelay = \"10ms\"\n{UP}"),
                "profiles/x.toml:2: unknown field `ratez`, expected one of",
            ),
            (
                format!("seed = -1\n{UP}"),
                "profiles/x.toml:1: invalid value: integer `-1`, expected u64",
            ),
            (
                format!("[down]\nrate = 20\n{UP}"),
                "profiles/x.toml:2: invalid type: integer `20`, expected a string",
            ),
            (
                "[down\n".to_owned(),
                "profiles/x.toml:1: invalid table header; expected",
            ),
            (UP.to_owned(), "profiles/x.toml: missing section [down]"),
            (
                "[down]\nrate = \"1mbit\"\ndelay = \"0\"\n".to_owned(),
                "profiles/x.toml: missing section [up]",
            ),
            (
                format!("{UP}\n[down]\nrate = \"1mbit\"\ntrace = \"t\"\ndelay = \"0\"\n"),
                "profiles/x.toml:7: [down] has more than one of rate, trace and model; keep one",
            ),
            (
                format!("{UP}\n[down]\ndelay = \"0\"\n"),
                "profiles/x.toml:5: [down] has none of rate, trace and model; add e.g. rate = \"20mbit\"",
            ),
            (
                format!("{UP}\n[down]\nrate = \"1mbit\"\n"),
                "profiles/x.toml:5: [down] has no delay; add e.g. delay = \"10ms\"",
            ),
        ];
        for (text, expected) in cases {
            let err = profile_error(&text);
            assert!(
                err.starts_with(expected),
                "{err:?} should start with {expected:?}"
            );
        }
    }

    #[test]
    fn profile_trace_errors_name_both_files() {
        let dir = TempDir::new();
        dir.write("traces/bad.down", "0\n5\n12a\n");
        let profile = format!("[down]\ntrace = \"traces/bad.down\"\ndelay = \"1ms\"\n{UP}");
        let path = dir.write("x.toml", &profile);
        let err = load_profile(&path).expect_err("bad trace");
        assert_eq!(
            chain(&err),
            format!(
                "{}:2: down.trace: {}:3: \"12a\" is not a whole number of milliseconds",
                path.display(),
                dir.0.join("traces/bad.down").display()
            )
        );

        let profile = format!("[down]\ntrace = \"traces/missing\"\ndelay = \"1ms\"\n{UP}");
        let path = dir.write("y.toml", &profile);
        let err = load_profile(&path).expect_err("missing trace");
        assert!(matches!(
            &err,
            ProfileError::Trace { source, .. } if matches!(**source, TraceFileError::Read { .. })
        ));
        assert!(chain(&err).contains("cannot read trace"), "{}", chain(&err));
    }

    #[test]
    fn unreadable_profile_names_the_file() {
        let dir = TempDir::new();
        let path = dir.0.join("nothing-here");
        std::fs::create_dir(&path).expect("mkdir");
        let err = resolve(path.to_str().expect("utf-8")).expect_err("a directory");
        assert!(matches!(err, ProfileError::Read { .. }));
        assert!(err.to_string().starts_with("cannot read link profile "));
    }

    fn trace_error(text: &str) -> String {
        parse_trace(text, Path::new("traces/x.down"))
            .expect_err("invalid")
            .to_string()
    }

    #[test]
    fn trace_errors_name_file_line_and_text() {
        assert_eq!(
            trace_error("0\n5\n12a\n"),
            "traces/x.down:3: \"12a\" is not a whole number of milliseconds"
        );
        assert_eq!(
            trace_error("# ramp\n55\n\n40\n"),
            "traces/x.down:4: 40 is less than the previous line's 55: \
             a trace must not go back in time"
        );
        assert_eq!(trace_error("# nothing\n\n"), "traces/x.down: empty trace");
        assert_eq!(trace_error(""), "traces/x.down: empty trace");
        assert_eq!(
            trace_error("0\n0\n# end\n"),
            "traces/x.down:2: the last value is the trace's period and must be greater than 0"
        );
        assert_eq!(
            trace_error("-5\n"),
            "traces/x.down:1: \"-5\" is not a whole number of milliseconds"
        );
        assert_eq!(
            trace_error("1.5\n"),
            "traces/x.down:1: \"1.5\" is not a whole number of milliseconds"
        );
        assert_eq!(
            trace_error("1\n99999999999999999999999\n"),
            "traces/x.down:2: 99999999999999999999999 is later than the maximum of \
             604800000 ms (7 days)"
        );
    }

    #[test]
    fn traces_parse() {
        let trace = parse_trace("# c\n  0\r\n0\n\n7\n10\n", Path::new("t")).expect("valid");
        assert_eq!(trace.opportunities_ms(), [0, 0, 7, 10]);
        assert_eq!(trace.period(), Duration::from_millis(10));
        let err = load_trace(Path::new("/nonexistent/mpbond/trace")).expect_err("missing");
        assert!(matches!(err, TraceFileError::Read { .. }));
        assert_eq!(
            err.to_string(),
            "cannot read trace /nonexistent/mpbond/trace"
        );
    }
}
