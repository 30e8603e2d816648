//! `postern::fuzzing::roundtrip_scgi` (its doc says what is checked). Run: `cargo +nightly fuzz run
//! roundtrip_scgi` from the repo root; README "Fuzzing".
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postern::fuzzing::roundtrip_scgi(data));
