//! The clock of every timestamp the client makes: its wall clock plus the
//! offset the concentrator's clock answers taught it ([`crate::clock`]).
//! One per client, shared by the tunnels (connect headers), health (plain
//! probes) and the datagram tunnel (handshake timestamps), so a step of the
//! host's clock is corrected once for all of them.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{debug, info};

use crate::auth;
use crate::clock::{Offset, ProbeLedger, Sample};

/// The client's clock for timestamps.
#[derive(Debug, Default)]
pub(super) struct Clock {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    offset: Offset,
    probes: ProbeLedger,
}

/// Which kind of answer told the concentrator's clock (for the log).
#[derive(Debug, Clone, Copy)]
pub(super) enum Told {
    /// A refused connect header's answer.
    Connect,
    /// A probe's clock answer.
    Probe,
}

impl Told {
    fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect header",
            Self::Probe => "probe",
        }
    }
}

impl Clock {
    /// A clock without offset: the host's own, until an answer says better.
    pub(super) fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every method leaves the state consistent before it returns.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Now on the concentrator's clock as far as the client knows it, unix
    /// milliseconds: for a connect header.
    pub(super) fn now_ms(&self) -> u64 {
        self.state().offset.stamp_ms(auth::unix_ms())
    }

    /// Now on the concentrator's clock, since 1970: for a handshake's
    /// TAI64N timestamp.
    pub(super) fn unix_now(&self) -> Duration {
        let local = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.state().offset.stamp(local)
    }

    /// The timestamp for plain probe `seq` over `uplink`, sent now; noted,
    /// so that a clock answer to it counts once.
    pub(super) fn stamp_probe(&self, uplink: usize, seq: u64) -> u64 {
        let mut state = self.state();
        let sent_ms = state.offset.stamp_ms(auth::unix_ms());
        state.probes.sent(uplink, seq, sent_ms, Instant::now());
        sent_ms
    }

    /// The concentrator's clock read `concentrator_ms` when it answered a
    /// request sent at `sent` (whose MAC binding the caller checked); the
    /// answer arrived at `received`.
    pub(super) fn learn(&self, concentrator_ms: u64, sent: Instant, received: Instant, told: Told) {
        let sample = Sample {
            concentrator_ms,
            sent,
            received,
            local_ms: auth::unix_ms(),
        };
        let learnt = self.state().offset.learn(&sample);
        match learnt {
            Ok(learnt) if learnt.is_step() => info!(
                offset_ms = learnt.after_ms,
                change_ms = learnt.after_ms.saturating_sub(learnt.before_ms),
                told = told.as_str(),
                "this host's clock is not the concentrator's (it stepped, or has been \
                 off since boot): timestamps now follow the concentrator's clock"
            ),
            Ok(learnt) => debug!(
                offset_ms = learnt.after_ms,
                told = told.as_str(),
                "clock offset refined"
            ),
            Err(e) => debug!(error = %e, told = told.as_str(), "clock answer not used"),
        }
    }

    /// A verified clock answer to probe `seq` over `uplink` stamped
    /// `sent_ms`, received at `received`: learnt from if the client sent
    /// that probe (and it was not answered before).
    pub(super) fn probe_answer(
        &self,
        uplink: usize,
        seq: u64,
        sent_ms: u64,
        concentrator_ms: u64,
        received: Instant,
    ) {
        let sent = self.state().probes.take(uplink, seq, sent_ms);
        match sent {
            Some(sent) => self.learn(concentrator_ms, sent, received, Told::Probe),
            None => debug!(
                uplink,
                seq, "clock answer for no probe sent lately: not used"
            ),
        }
    }
}
