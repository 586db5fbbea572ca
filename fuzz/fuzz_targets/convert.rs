//! Feeds arbitrary bytes to the connect header parsers and the MAC check
//! behind them (what the concentrator does with a new connection's first
//! bytes, and the client with the answer): they must never panic, and
//! whatever they accept must re-encode to something that decodes to the
//! same value.
//!
//! Besides "no panic", it checks that a header's length is bounded, that
//! the MAC only verifies for the request that was signed (re-signing an
//! accepted request with the test key verifies; one changed bit of the
//! destination does not), that an epoch announcement and a clock answer
//! verify only with their genuine MAC, and that the length `header_len`
//! announces is the length `decode` takes.
//!
//! Seeds: `fuzz/corpus/convert/`, written by the unit test
//! `wire::convert::tests::write_fuzz_corpus`.

#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use mpbond::auth::{self, Key};
use mpbond::wire::convert::{header_len, ConnectRequest, Response, MAX_MESSAGE_LEN};

fuzz_target!(|data: &[u8]| {
    let announced = match header_len(data) {
        Ok(Some(len)) => {
            assert!((4..=MAX_MESSAGE_LEN).contains(&len));
            Some(len)
        }
        _ => None,
    };
    if let Ok((request, used)) = ConnectRequest::decode(data) {
        assert!(used <= data.len());
        assert_eq!(Some(used), announced);
        let encoded = request.encode();
        assert_eq!(
            ConnectRequest::decode(&encoded),
            Ok((request.clone(), encoded.len()))
        );
        assert_eq!(
            request.mac_input()[..],
            {
                let mut zeroed = encoded.clone();
                zeroed[ConnectRequest::MAC_RANGE].fill(0);
                zeroed
            }[..]
        );

        let key = Key::from_bytes([7; 32]);
        let _ = auth::verify(&key, &request);
        let signed = auth::sign_request(
            &key,
            request.auth.client_id.clone(),
            request.destination,
            auth::Epoch::from_u64(request.auth.epoch),
            request.auth.nonce,
            request.auth.timestamp_ms,
        );
        assert!(auth::verify(&key, &signed));
        assert!(!auth::verify(&Key::from_bytes([8; 32]), &signed));
        let mut moved = signed.clone();
        moved.destination = SocketAddr::new(moved.destination.ip(), !moved.destination.port());
        assert!(!auth::verify(&key, &moved));
        // Only the MAC may differ between what came in and the re-signed.
        let mut resigned = signed.encode();
        resigned[ConnectRequest::MAC_RANGE].copy_from_slice(&request.auth.mac);
        assert_eq!(resigned, encoded);
    }
    if let Ok((response, used)) = Response::decode(data) {
        assert!(used <= data.len());
        assert_eq!(Some(used), announced);
        let encoded = response.encode();
        assert_eq!(Response::decode(&encoded), Ok((response, encoded.len())));
        // An epoch announcement or a clock answer holds only for the
        // request it answers.
        let key = Key::from_bytes([7; 32]);
        let request = auth::sign_request(
            &key,
            "lab".parse().expect("valid id"),
            SocketAddr::from(([198, 51, 100, 10], 80)),
            auth::Epoch::UNKNOWN,
            [0x5a; 16],
            1_795_000_000_000,
        );
        if let Response::StaleEpoch { epoch, mac } = response {
            let epoch = auth::Epoch::from_u64(epoch);
            let genuine = auth::sign_epoch(&key, epoch, &request);
            assert_eq!(
                auth::verify_epoch(&key, epoch, &mac, &request),
                mac == genuine && epoch.is_known()
            );
        }
        if let Response::StaleClock { now_ms, epoch, mac } = response {
            let epoch = auth::Epoch::from_u64(epoch);
            let genuine = auth::sign_clock(&key, now_ms, epoch, &request);
            assert_eq!(
                auth::verify_clock(&key, now_ms, epoch, &mac, &request),
                mac == genuine && epoch.is_known()
            );
            assert!(!auth::verify_clock(&key, now_ms ^ 1, epoch, &genuine, &request));
        }
    }
});
