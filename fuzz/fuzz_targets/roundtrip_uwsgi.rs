//! `postern::fuzzing::roundtrip_uwsgi` (its doc says what is checked). Run: `cargo +nightly fuzz run
//! roundtrip_uwsgi` from the repo root; README "Fuzzing".
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postern::fuzzing::roundtrip_uwsgi(data));
