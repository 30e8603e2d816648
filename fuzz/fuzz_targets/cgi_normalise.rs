//! `postern::fuzzing::cgi_normalise` (its doc says what is checked). Run: `cargo +nightly fuzz run
//! cgi_normalise` from the repo root; README "Fuzzing".
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postern::fuzzing::cgi_normalise(data));
