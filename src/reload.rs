//! Reloading the config while the daemon runs: SIGHUP (`systemctl reload`)
//! asks for it, the role re-reads its config file and applies what changed,
//! or keeps the running config and says why.
//!
//! The signal handler only counts; the role waits on [`Hangups`] beside
//! its other work, so several signals in a row make one reload of the
//! file as it is by then.

use tokio::sync::watch;

/// Reload requests, as the role sees them.
#[derive(Debug)]
pub struct Hangups(Option<watch::Receiver<u64>>);

/// What asks for reloads (the signal handler holds it).
#[derive(Debug)]
pub struct Asker(watch::Sender<u64>);

impl Hangups {
    /// A pair: ask on the [`Asker`], wait on the [`Hangups`].
    pub fn channel() -> (Asker, Self) {
        let (tx, rx) = watch::channel(0);
        (Asker(tx), Self(Some(rx)))
    }

    /// Requests that never come (for a daemon embedded without signals).
    pub fn never() -> Self {
        Self(None)
    }

    /// Completes at the next request (at once for one not seen yet); never
    /// once the asker is gone.
    pub async fn next(&mut self) {
        let Some(rx) = &mut self.0 else {
            return std::future::pending().await;
        };
        if rx.changed().await.is_err() {
            self.0 = None;
            std::future::pending::<()>().await;
        }
    }
}

impl Asker {
    /// Asks for a reload.
    pub fn ask(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn requests_in_a_row_make_one_reload() {
        let (asker, mut hangups) = Hangups::channel();
        asker.ask();
        asker.ask();
        tokio::time::timeout(Duration::from_secs(1), hangups.next())
            .await
            .expect("the first request is seen");
        let again = tokio::time::timeout(Duration::from_millis(50), hangups.next()).await;
        assert!(
            again.is_err(),
            "two requests before the wait are one reload"
        );
        asker.ask();
        tokio::time::timeout(Duration::from_secs(1), hangups.next())
            .await
            .expect("a later request is seen");
        drop(asker);
        let gone = tokio::time::timeout(Duration::from_millis(50), hangups.next()).await;
        assert!(gone.is_err(), "no reload once the asker is gone");
    }
}
