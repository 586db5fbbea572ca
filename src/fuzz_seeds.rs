//! Writes the seed corpora of the fuzz targets in `fuzz/` from the unit
//! tests that know how to build genuine inputs (each module's
//! `write_fuzz_corpus` test). Only when `MPBOND_FUZZ_CORPUS` names the
//! corpus root: `MPBOND_FUZZ_CORPUS=$PWD/fuzz/corpus cargo test --lib
//! write_fuzz_corpus`; otherwise those tests do nothing.

use std::path::PathBuf;

/// Writes `seeds` (file name, bytes) into the corpus of `target`.
pub(crate) fn write(target: &str, seeds: &[(&str, Vec<u8>)]) {
    let Some(root) = std::env::var_os("MPBOND_FUZZ_CORPUS") else {
        return;
    };
    let dir = PathBuf::from(root).join(target);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).expect("seed written");
    }
}
