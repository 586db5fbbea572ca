//! Feeds arbitrary bytes to the connect header parsers: they must never
//! panic, and whatever they accept must re-encode to something that decodes
//! to the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mpbond::wire::convert::{header_len, ConnectRequest, Response, MAX_MESSAGE_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(len)) = header_len(data) {
        assert!((4..=MAX_MESSAGE_LEN).contains(&len));
    }
    if let Ok((request, used)) = ConnectRequest::decode(data) {
        assert!(used <= data.len());
        let encoded = request.encode();
        assert_eq!(
            ConnectRequest::decode(&encoded),
            Ok((request, encoded.len()))
        );
    }
    if let Ok((response, used)) = Response::decode(data) {
        assert!(used <= data.len());
        let encoded = response.encode();
        assert_eq!(Response::decode(&encoded), Ok((response, encoded.len())));
    }
});
