//! `postern::fuzzing::fastcgi_assemble` (its doc says what is checked). Run: `cargo +nightly fuzz run
//! fastcgi_assemble` from the repo root; README "Fuzzing".
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postern::fuzzing::fastcgi_assemble(data));
