//! `postern::fuzzing::fastcgi_record` (its doc says what is checked). Run: `cargo +nightly fuzz run
//! fastcgi_record` from the repo root; README "Fuzzing".
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postern::fuzzing::fastcgi_record(data));
