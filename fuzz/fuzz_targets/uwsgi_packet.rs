//! The uwsgi packet and vars parsers on arbitrary bytes: never panic, never read out
//! of bounds. Run: `cargo +nightly fuzz run uwsgi_packet` (from the repo root).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((n, p))) = postern::proto::uwsgi::parse_packet(data, 65535) {
        assert!(n <= data.len());
        let _ = postern::proto::uwsgi::parse_vars(p.vars);
    }
    let _ = postern::proto::uwsgi::parse_vars(data);
});
