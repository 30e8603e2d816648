//! `postern::fuzzing::asgi_scope` (its doc says what is checked). Run: `cargo +nightly fuzz run
//! asgi_scope` from the repo root; README "Fuzzing".
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postern::fuzzing::asgi_scope(data));
