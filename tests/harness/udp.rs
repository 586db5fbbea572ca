//! UDP helpers for datagram tunnel tests: an echo server in a namespace
//! that tells the sender which address it saw, and one echo exchange.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::in_ns;

/// A UDP echo server in a namespace: answers each datagram with the
/// sender's address, a newline, then the datagram. Stops when dropped.
pub struct Echo {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Echo {
    pub fn start(ns: &str, addrs: &[SocketAddr]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &addr in addrs {
            let stop = Arc::clone(&stop);
            let (tx, rx) = std::sync::mpsc::channel();
            threads.push(in_ns(ns, move || {
                let socket = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
                socket
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .expect("timeout");
                let _ = tx.send(());
                let mut buf = vec![0; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    let mut answer = format!("{}\n", from.ip()).into_bytes();
                    answer.extend_from_slice(&buf[..n]);
                    let _ = socket.send_to(&answer, from);
                }
            }));
            rx.recv_timeout(Duration::from_secs(5))
                .expect("the echo server binds");
        }
        Self { stop, threads }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Sends `payload` to `to` and waits up to `wait` for the echo; the
/// address the server saw, if it answered with the same payload.
pub fn echo_once(
    socket: &UdpSocket,
    to: SocketAddr,
    payload: &[u8],
    wait: Duration,
) -> Option<IpAddr> {
    socket.send_to(payload, to).ok()?;
    socket.set_read_timeout(Some(wait)).ok()?;
    let mut buf = vec![0; 65_536];
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        let Ok(n) = socket.recv(&mut buf) else { break };
        let answer = &buf[..n];
        let newline = answer.iter().position(|&b| b == b'\n')?;
        if &answer[newline + 1..] == payload {
            return std::str::from_utf8(&answer[..newline]).ok()?.parse().ok();
        }
    }
    None
}
