//! Fuzzes the link emulator's profile files (`linkem::profile::
//! parse_profile`, what `mpbond-linkem --profile FILE` and the lab read)
//! and the value parsers behind them and behind its control socket's `set`
//! command (`parse_rate`, `parse_duration`, `parse_loss`, `parse_queue`),
//! then runs a few frames through the queueing model each parsed
//! direction configures.
//!
//! Each input is tried as a profile file and as each value.
//!
//! Besides "no panic", it checks round trips: every value that parses
//! prints (`format_*`, as the emulator reports it) as text that parses to
//! the same value; a profile without traces, written back as TOML from its
//! values, parses to the same profile; and the model never delivers more
//! frames than it was given, nor any before the profile's delay less its
//! jitter.
//!
//! Seeds: `fuzz/corpus/profile/`: the built-in profiles written as files,
//! and values as profiles and the control socket take them.

#![no_main]

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use linkem::model::{Direction, DirectionParams, Shaping, Verdict};
use linkem::profile::{
    format_duration, format_loss, format_queue, format_shaping, parse_duration, parse_loss,
    parse_profile, parse_queue, parse_rate, LinkProfile,
};

/// `params` as a profile section, or `None` for a trace (which lives in
/// another file).
fn section(name: &str, params: &DirectionParams) -> Option<String> {
    if matches!(params.shaping, Shaping::Trace(_)) {
        return None;
    }
    let mut out = format!(
        "[{name}]\nrate = \"{}\"\ndelay = \"{}\"\njitter = \"{}\"\nloss = \"{}\"\n\
         queue = \"{}\"\nreorder = {}\n",
        format_shaping(&params.shaping),
        format_duration(params.delay),
        format_duration(params.jitter),
        format_loss(params.loss),
        format_queue(&params.queue),
        params.allow_reorder,
    );
    if let Some(burst) = &params.burst_loss {
        let _ = writeln!(
            out,
            "burst_loss = {{ p = \"{}\", r = \"{}\", loss_good = \"{}\", loss_bad = \"{}\" }}",
            format_loss(burst.p),
            format_loss(burst.r),
            format_loss(burst.loss_good),
            format_loss(burst.loss_bad),
        );
    }
    Some(out)
}

/// A few frames through the model `params` configure, on a fake clock.
fn run_model(params: &DirectionParams, seed: u64) {
    let mut direction = Direction::<Vec<u8>>::new(params.clone(), seed);
    let mut queued = 0;
    for size in [60, 1500, 1500, 9000] {
        if direction.on_frame(Duration::ZERO, vec![0; size]) == Verdict::Queued {
            queued += 1;
        }
    }
    let mut delivered = 0;
    for _ in 0..16 {
        let Some(at) = direction.poll_timeout() else {
            break;
        };
        while let Some(frame) = direction.poll_transmit(at) {
            let earliest = params.delay.saturating_sub(params.jitter);
            assert!(at >= earliest, "a frame left before its delay");
            assert!(frame.len() <= 9000);
            delivered += 1;
        }
    }
    assert!(delivered <= queued);
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(shaping) = parse_rate(text) {
        assert!(!matches!(shaping, Shaping::Trace(_)));
        assert_eq!(parse_rate(&format_shaping(&shaping)), Ok(shaping));
    }
    if let Ok(duration) = parse_duration(text) {
        assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
    }
    if let Ok(loss) = parse_loss(text) {
        assert_eq!(parse_loss(&format_loss(loss)), Ok(loss));
    }
    if let Ok(queue) = parse_queue(text) {
        assert_eq!(parse_queue(&format_queue(&queue)), Ok(queue));
    }

    let path = Path::new("/nonexistent/mpbond-fuzz/link.toml");
    let Ok(profile) = parse_profile(text, path) else {
        return;
    };
    let _ = profile.to_string();
    run_model(&profile.down, profile.seed);
    run_model(&profile.up, profile.seed.wrapping_add(1));
    let (Some(down), Some(up)) = (section("down", &profile.down), section("up", &profile.up))
    else {
        return;
    };
    let written = format!("seed = {}\n{down}{up}", profile.seed);
    let again: LinkProfile = parse_profile(&written, path)
        .unwrap_or_else(|e| panic!("written back, the profile does not parse: {e}\n{written}"));
    assert_eq!(again, profile, "{written}");
});
