//! `postern::fuzzing::codec_stream` (its doc says what is checked). Run: `cargo +nightly fuzz run
//! codec_stream` from the repo root; README "Fuzzing".
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postern::fuzzing::codec_stream(data));
