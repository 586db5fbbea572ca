//! A budget of log lines per window, for what a peer on the network can
//! make a daemon log (rejected connect headers, dropped datagrams, failed
//! accepts): such lines must not fill the disk, however fast they come.
//!
//! The first lines of a window are logged; the rest are counted, and
//! whoever ends the window (a timer) logs the count: `n more ... in the
//! last 10 s`. Pure: the caller's timer is the clock.

use std::time::Duration;

/// The window of the log budgets.
pub(crate) const LOG_WINDOW: Duration = Duration::from_secs(10);

/// Lines logged per window at most, and how many were left out.
#[derive(Debug)]
pub(crate) struct LogBudget {
    lines: u32,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    /// A budget of `lines` lines per window.
    pub(crate) const fn new(lines: u32) -> Self {
        Self {
            lines,
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged in this window; if not, it is counted.
    pub(crate) fn take(&mut self) -> bool {
        if self.used < self.lines {
            self.used += 1;
            return true;
        }
        self.suppressed += 1;
        false
    }

    /// Ends the window: how many lines were left out in it.
    pub(crate) fn end_window(&mut self) -> u64 {
        self.used = 0;
        std::mem::take(&mut self.suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_logs_its_first_lines_and_counts_the_rest_once() {
        let mut budget = LogBudget::new(5);
        let logged = (0..25).filter(|_| budget.take()).count();
        assert_eq!(logged, 5, "the first five of a window");
        assert_eq!(budget.end_window(), 20, "the rest counted");
        assert_eq!(budget.end_window(), 0, "and only once");
        assert!(budget.take(), "a new window logs again");
    }
}
