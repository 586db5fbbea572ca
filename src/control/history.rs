//! The last minutes of a client's uplinks, for the status page: one sample
//! per uplink every [`SAMPLE_EVERY_S`] (rates, round trip, state), the
//! last [`SAMPLES`] kept, and the last [`EVENTS`] verdict changes with
//! their reasons.
//!
//! Kept by the daemon rather than by the page so that a page opened now
//! shows the minutes before it was opened (the moment a line went down is
//! usually what one opens it for). Recording is a push into a bounded
//! ring from what uplink health publishes anyway, once a second; memory
//! stays below a few tens of kilobytes per uplink whatever happens.
//!
//! Pure: callers pass the time. The page reads it once as
//! [`HistoryDocument`] (`/history.json`) and then follows the status
//! document.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::snapshot::UplinkStatus;

/// Seconds between samples.
pub const SAMPLE_EVERY_S: f64 = 1.0;

/// Samples kept per uplink (five minutes).
pub const SAMPLES: usize = 300;

/// State changes kept, all uplinks together.
pub const EVENTS: usize = 50;

/// Longest reason kept for a state change (they are short; a bound
/// anyway).
const MAX_REASON: usize = 200;

/// The history as the page reads it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryDocument {
    /// Seconds between samples.
    pub interval_s: f64,
    /// The uplinks, in config order.
    pub uplinks: Vec<UplinkHistory>,
    /// The latest state changes, oldest first.
    pub events: Vec<StateChange>,
}

/// One uplink's samples, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UplinkHistory {
    /// Its name in the config.
    pub name: String,
    /// Its samples.
    pub samples: Vec<Sample>,
}

/// One uplink at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When, in seconds since 1970.
    pub unix: f64,
    /// Receive rate, bytes per second.
    pub rx_bytes_per_sec: u64,
    /// Send rate, bytes per second.
    pub tx_bytes_per_sec: u64,
    /// Smoothed round trip, in milliseconds, if known.
    pub rtt_ms: Option<f64>,
    /// The verdict then (`usable`, `suspect`, `dead`, `back`).
    pub state: String,
}

/// An uplink's verdict changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateChange {
    /// When, in seconds since 1970.
    pub unix: f64,
    /// The uplink's name.
    pub uplink: String,
    /// The verdict before.
    pub from: String,
    /// The verdict after.
    pub to: String,
    /// Why.
    pub reason: String,
}

/// The rings; shared between the recorder (uplink health) and the HTTP
/// listener.
#[derive(Debug, Default)]
pub struct History {
    rings: Mutex<Rings>,
}

#[derive(Debug, Default)]
struct Rings {
    /// When the last sample was taken.
    last: Option<f64>,
    uplinks: Vec<(String, VecDeque<Sample>)>,
    events: VecDeque<StateChange>,
}

impl History {
    fn lock(&self) -> MutexGuard<'_, Rings> {
        self.rings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers the uplinks as they are at `now_unix`: sampled if
    /// [`SAMPLE_EVERY_S`] passed since the last sample (or the clock went
    /// back). An uplink no longer in `uplinks` loses its samples; a new
    /// one starts empty.
    pub fn offer<'a>(&self, now_unix: f64, uplinks: impl IntoIterator<Item = &'a UplinkStatus>) {
        let mut rings = self.lock();
        let due = rings
            .last
            .is_none_or(|last| now_unix - last >= SAMPLE_EVERY_S || now_unix < last);
        if !due {
            return;
        }
        rings.last = Some(now_unix);
        let mut old = std::mem::take(&mut rings.uplinks);
        rings.uplinks = uplinks
            .into_iter()
            .map(|u| {
                let mut ring = old
                    .iter()
                    .position(|(name, _)| *name == u.name)
                    .map(|i| old.swap_remove(i).1)
                    .unwrap_or_default();
                if ring.len() >= SAMPLES {
                    ring.pop_front();
                }
                ring.push_back(Sample {
                    unix: now_unix,
                    rx_bytes_per_sec: u.rx_bytes_per_sec,
                    tx_bytes_per_sec: u.tx_bytes_per_sec,
                    rtt_ms: u.rtt_ms,
                    state: u.state.clone(),
                });
                (u.name.clone(), ring)
            })
            .collect();
    }

    /// Records a state change.
    pub fn changed(&self, mut change: StateChange) {
        if change.reason.len() > MAX_REASON {
            let mut end = MAX_REASON;
            while !change.reason.is_char_boundary(end) {
                end -= 1;
            }
            change.reason.truncate(end);
        }
        let mut rings = self.lock();
        if rings.events.len() >= EVENTS {
            rings.events.pop_front();
        }
        rings.events.push_back(change);
    }

    /// The history as the page reads it.
    pub fn document(&self) -> HistoryDocument {
        let rings = self.lock();
        HistoryDocument {
            interval_s: SAMPLE_EVERY_S,
            uplinks: rings
                .uplinks
                .iter()
                .map(|(name, samples)| UplinkHistory {
                    name: name.clone(),
                    samples: samples.iter().cloned().collect(),
                })
                .collect(),
            events: rings.events.iter().cloned().collect(),
        }
    }
}
