//! Downloads through the tunnel to the LAN host, timed byte by byte, and
//! the checks a user would make of them.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::{connect, run_in, Hasher, NsServer, Pattern, Sha256};

/// What a download saw.
#[derive(Debug)]
pub struct Received {
    pub len: u64,
    pub sha256: Sha256,
    /// Longest time without a byte, and when it started (since the start).
    pub longest_gap: Duration,
    pub gap_at: Duration,
    pub took: Duration,
    /// Every wait for a byte longer than [`NOTED_GAP`]: when it started,
    /// how long it was.
    pub gaps: Vec<(Instant, Duration)>,
}

/// Waits for a byte shorter than this are not noted.
pub const NOTED_GAP: Duration = Duration::from_millis(50);

impl Received {
    /// The longest wait for a byte that overlaps `from..to`.
    pub fn longest_gap_within(&self, from: Instant, to: Instant) -> Duration {
        self.gaps
            .iter()
            .filter(|(at, len)| *at < to && *at + *len > from)
            .map(|(_, len)| *len)
            .max()
            .unwrap_or_default()
    }
}

/// Starts a download from `server` (a [`Behavior::Source`]) to the LAN
/// host; `progress` gets the byte count every 64 KiB or so.
pub fn start_download(
    server: SocketAddr,
    progress: mpsc::Sender<u64>,
) -> thread::JoinHandle<io::Result<Received>> {
    thread::spawn(move || {
        run_in("mpb-lan", "download", Duration::from_secs(120), move || {
            let mut s = connect(server, Duration::from_secs(5))?;
            s.write_all(b"get\n")?;
            let started = Instant::now();
            let mut hasher = Hasher::new();
            let mut buf = vec![0; 64 << 10];
            let (mut last, mut longest_gap, mut gap_at) = (started, Duration::ZERO, Duration::ZERO);
            let mut gaps = Vec::new();
            loop {
                let n = s.read(&mut buf)?;
                let now = Instant::now();
                if now - last > longest_gap {
                    longest_gap = now - last;
                    gap_at = last - started;
                }
                if now - last > NOTED_GAP {
                    gaps.push((last, now - last));
                }
                last = now;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                let _ = progress.send(hasher.len());
            }
            Ok(Received {
                len: hasher.len(),
                took: started.elapsed(),
                sha256: hasher.finish(),
                longest_gap,
                gap_at,
                gaps,
            })
        })
    })
}

/// Waits until the download has passed `bytes`.
pub fn wait_for(progress: &mpsc::Receiver<u64>, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match progress.recv_timeout(left) {
            Ok(n) if n >= bytes => return,
            Ok(_) => {}
            Err(e) => panic!("the download did not pass {bytes} bytes: {e}"),
        }
    }
}

/// Checks a finished download of `len` bytes of [`Pattern`] `seed`: all
/// bytes, intact, through the tunnel (the server saw the concentrator,
/// 10.77.9.2); returns what it saw.
pub fn check_download(
    what: &str,
    got: io::Result<Received>,
    srv: &NsServer,
    len: u64,
    seed: u64,
) -> Received {
    let concentrator = IpAddr::from([10, 77, 9, 2]);
    let got = got.unwrap_or_else(|e| panic!("{what}: the download failed: {e}"));
    let served = srv.next(Duration::from_secs(10));
    eprintln!(
        "{what}: {} MiB in {:.1} s; longest wait for a byte {:?} (at {:.1} s)",
        got.len >> 20,
        got.took.as_secs_f64(),
        got.longest_gap,
        got.gap_at.as_secs_f64()
    );
    assert_eq!(got.len, len, "{what}: length differs");
    assert_eq!(
        got.sha256,
        Pattern::sha256(seed, len),
        "{what}: bytes corrupted"
    );
    assert_eq!(
        served.peer.ip(),
        concentrator,
        "{what}: bypassed the tunnel"
    );
    assert!(served.error.is_none(), "{what}: server: {:?}", served.error);
    got
}

/// How a download cut short ended: the bytes that came (each checked
/// against the pattern), how the stream ended, and when.
pub type Cut = (u64, io::Result<()>, Instant);

/// Starts a download of [`Pattern`] `seed` from `server` (a
/// [`super::Behavior::Source`]) to the LAN host, meant to be cut by a
/// fault, and waits until 1 MiB arrived; returns its end and its progress.
/// `keep` (the server, say) lives until the download ends.
pub fn start_cut_download(
    server: SocketAddr,
    seed: u64,
    keep: impl Send + 'static,
) -> (mpsc::Receiver<Cut>, mpsc::Receiver<u64>) {
    let (end_tx, ended) = mpsc::channel();
    let (progress_tx, progress) = mpsc::channel();
    thread::spawn(move || {
        let cut = run_in(
            "mpb-lan",
            "cut download",
            Duration::from_secs(90),
            move || {
                let _keep = keep;
                let mut s = match connect(server, Duration::from_secs(5)) {
                    Ok(s) => s,
                    Err(e) => return (0, Err(e), Instant::now()),
                };
                if let Err(e) = s.write_all(b"get\n") {
                    return (0, Err(e), Instant::now());
                }
                let (len, how) = super::read_pattern(&mut s, seed, |n| {
                    let _ = progress_tx.send(n);
                });
                (len, how, Instant::now())
            },
        );
        let _ = end_tx.send(cut);
    });
    wait_for(&progress, 1 << 20);
    (ended, progress)
}
