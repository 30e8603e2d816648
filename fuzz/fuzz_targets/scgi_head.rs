//! `postern::fuzzing::scgi_head` (its doc says what is checked). Run: `cargo +nightly fuzz run
//! scgi_head` from the repo root; README "Fuzzing".
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postern::fuzzing::scgi_head(data));
