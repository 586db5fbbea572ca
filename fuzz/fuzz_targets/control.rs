//! Fuzzes what the status interface reads: the metrics listener's HTTP
//! request head (`control::http::parse_head` and `route`, from whoever can
//! reach the metrics and status page address) and a daemon's answer on the control socket
//! (`control::socket::parse_answer`, as `mpbond status` reads it).
//!
//! Besides "no panic", it checks that a head that parses has a path
//! starting with `/` and lies within the bytes given, and that an answer
//! that parses renders as text, JSON and metrics.
//!
//! Seeds: `fuzz/corpus/control/`: requests as curl, Prometheus and a
//! browser on the status page send them, and a daemon's answer.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mpbond::control::http::{parse_head, route, MAX_HEAD};
use mpbond::control::socket::parse_answer;
use mpbond::control::{metrics, text};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(head)) = parse_head(data) {
        assert!(head.path.starts_with('/'));
        assert!(head.method.len() + head.path.len() < MAX_HEAD.min(data.len()));
        let _ = route(head.path);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(status) = parse_answer(Path::new("/run/mpbond/fuzz.sock"), text) {
        let _ = text::render(&status);
        let _ = metrics::render(&status);
    }
});
