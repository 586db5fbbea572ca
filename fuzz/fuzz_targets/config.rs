//! Fuzzes the config files: the client's and the concentrator's TOML
//! (`config::{ClientConfig, ConcentratorConfig}`, parsed and validated as
//! `mpbond client --config` and `mpbond concentrator --config` do) and the
//! base64 keys they or their key files carry (`auth::Key`,
//! `crypto::{StaticSecret, PublicKey}`).
//!
//! Each input is tried as both configs and as a key file. The files sit
//! in a directory that does not exist, so relative key files are never
//! found (absolute ones are opened like the daemons would).
//!
//! Besides "no panic", it checks that an error's line lies in the file,
//! that its message and causes print, and that a key that parses prints
//! back as the same text.
//!
//! Seeds: `fuzz/corpus/config/`: the lab's configs (`deploy/lab/`), the
//! same with inline keys, and key files as `mpbond keygen` writes them.

#![no_main]

use std::error::Error;

use libfuzzer_sys::fuzz_target;
use mpbond::auth::Key;
use mpbond::config::client::RawClientConfig;
use mpbond::config::concentrator::RawConcentratorConfig;
use mpbond::config::{ClientConfig, ConcentratorConfig, ConfigError, ConfigFile};
use mpbond::crypto::{PublicKey, StaticSecret};

fn check_error(text: &str, err: &ConfigError) {
    if let Some(line) = err.location().line {
        assert!(
            line >= 1 && line <= text.lines().count().max(1) + 1,
            "line {line}"
        );
    }
    // The message and its causes, as `mpbond` prints them.
    let mut source: Option<&dyn Error> = Some(err);
    while let Some(cause) = source {
        let _ = cause.to_string();
        source = cause.source();
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    let file = ConfigFile::from_text("/nonexistent/mpbond-fuzz/client.toml", text);
    let client = file
        .deserialize::<RawClientConfig>()
        .and_then(ClientConfig::try_from);
    if let Err(err) = &client {
        check_error(text, err);
    }

    let file = ConfigFile::from_text("/nonexistent/mpbond-fuzz/concentrator.toml", text);
    let concentrator = file
        .deserialize::<RawConcentratorConfig>()
        .and_then(ConcentratorConfig::try_from);
    if let Err(err) = &concentrator {
        check_error(text, err);
    }

    if let Ok(key) = Key::from_base64(text) {
        assert_eq!(key.to_base64(), text.trim());
    }
    if let Ok(secret) = StaticSecret::from_base64(text) {
        assert_eq!(secret.to_base64(), text.trim());
    }
    if let Ok(public) = PublicKey::from_base64(text) {
        assert_eq!(public.to_base64(), text.trim());
    }
});
