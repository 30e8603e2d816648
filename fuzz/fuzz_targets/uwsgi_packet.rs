//! `postern::fuzzing::uwsgi_packet` (its doc says what is checked). Run: `cargo +nightly fuzz run
//! uwsgi_packet` from the repo root; README "Fuzzing".
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postern::fuzzing::uwsgi_packet(data));
