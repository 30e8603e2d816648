//! `postern::fuzzing::fastcgi_server` (its doc says what is checked). Run: `cargo +nightly fuzz run
//! fastcgi_server` from the repo root; README "Fuzzing".
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postern::fuzzing::fastcgi_server(data));
