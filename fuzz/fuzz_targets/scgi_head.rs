//! The SCGI netstring and headers parsers on arbitrary bytes: never panic, never read
//! out of bounds, and every range lies inside the block. Run: `cargo +nightly fuzz run
//! scgi_head` (from the repo root).
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern::proto::scgi;

fn check(block: &[u8]) {
    if let Ok(headers) = scgi::parse_headers(block) {
        assert_eq!(
            headers
                .first()
                .map(|(k, _)| &block[k.start as usize..k.end as usize]),
            Some(scgi::CONTENT_LENGTH)
        );
        for (k, v) in &headers {
            assert!(k.start < k.end && k.end < v.start && v.end as usize <= block.len());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((n, block))) = scgi::parse_head(data, 65535) {
        assert!(n <= data.len());
        assert!(block.len() <= 65535);
        assert_eq!(data[n - 1], b',');
        check(block);
    }
    let _ = scgi::parse_head(data, usize::MAX);
    check(data);
});
