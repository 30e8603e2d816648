//! `postern::fuzzing::response_parse` (its doc says what is checked). Run: `cargo +nightly fuzz run
//! response_parse` from the repo root; README "Fuzzing".
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postern::fuzzing::response_parse(data));
