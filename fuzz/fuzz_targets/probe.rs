//! Fuzzes the uplink probe (`wire::probe`), as both ends read it from a UDP
//! socket: the concentrator's echo and the client's health check decode
//! it, then verify its MAC (`auth::verify_probe`).
//!
//! Input: a probe; its last byte also picks what the fuzzer tampers with.
//!
//! Besides "no panic", it checks that what decodes re-encodes to exactly
//! the same bytes (so the MAC covers all of them), that the body handed
//! back is what the MAC covers, and that a genuine probe re-signed with
//! the test key verifies while a probe with any byte changed does not.
//!
//! Seeds: `fuzz/corpus/probe/`, written by the unit test
//! `wire::probe::tests::write_fuzz_corpus`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mpbond::auth::{self, Key};
use mpbond::wire::probe::{Probe, MAC_LEN, MAX_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok((probe, body, mac)) = Probe::decode(data) else {
        return;
    };
    assert!(data.len() <= MAX_LEN);
    assert_eq!(probe.encode(&mac), data);
    assert_eq!(probe.body(), body);
    assert_eq!(body.len() + MAC_LEN, data.len());

    let key = Key::from_bytes([7; 32]);
    let _ = auth::verify_probe(&key, body, &mac);
    let genuine = probe.encode(&auth::sign_probe(&key, body));
    let (_, body, mac) = Probe::decode(&genuine).expect("a signed probe decodes");
    assert!(auth::verify_probe(&key, body, &mac));
    assert!(!auth::verify_probe(&Key::from_bytes([8; 32]), body, &mac));

    let at = usize::from(data[data.len() - 1]) % genuine.len();
    let mut tampered = genuine.clone();
    tampered[at] ^= data[at] | 1;
    if let Ok((_, body, mac)) = Probe::decode(&tampered) {
        assert!(
            !auth::verify_probe(&key, body, &mac),
            "a tampered probe verified"
        );
    }
});
