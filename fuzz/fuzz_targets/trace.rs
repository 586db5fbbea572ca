//! Fuzzes the link emulator's mahimahi delivery traces
//! (`linkem::profile::parse_trace`: one millisecond offset per line, each
//! a chance to deliver one 1500-byte packet, the last one the period),
//! which profiles name with `trace = "FILE"`.
//!
//! Besides "no panic", it checks that an accepted trace is non-empty,
//! non-decreasing, within the period and opportunity limits, and that
//! written back one offset a line it parses to the same trace.
//!
//! Seeds: `fuzz/corpus/trace/`: short traces in mahimahi's format (with
//! comments, blank lines, bursts at one instant) and edge cases.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use linkem::model::{MAX_TRACE_OPPORTUNITIES, MAX_TRACE_PERIOD_MS};
use linkem::profile::parse_trace;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/nonexistent/mpbond-fuzz/line.trace");
    let Ok(trace) = parse_trace(text, path) else {
        return;
    };
    let offsets = trace.opportunities_ms();
    assert!(!offsets.is_empty() && offsets.len() <= MAX_TRACE_OPPORTUNITIES);
    assert!(offsets.windows(2).all(|pair| pair[0] <= pair[1]));
    let period = *offsets.last().expect("non-empty");
    assert!(period > 0 && period <= MAX_TRACE_PERIOD_MS);
    assert_eq!(trace.period().as_millis(), u128::from(period));
    let _ = trace.mean_bits_per_sec();

    let mut written = String::new();
    for offset in offsets {
        written.push_str(&offset.to_string());
        written.push('\n');
    }
    assert_eq!(parse_trace(&written, path).ok().as_ref(), Some(&trace));
});
