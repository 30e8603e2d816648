//! `postern::fuzzing::roundtrip_fastcgi` (its doc says what is checked). Run: `cargo +nightly fuzz run
//! roundtrip_fastcgi` from the repo root; README "Fuzzing".
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postern::fuzzing::roundtrip_fastcgi(data));
