//! CGI normalisation on arbitrary variable blocks: never panics, and keeps its
//! invariants (SCRIPT_NAME without a trailing slash, one value per key).
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern::proto::{cgi, uwsgi};

fuzz_target!(|data: &[u8]| {
    let Ok(vars) = uwsgi::parse_vars(data) else { return };
    let pairs = vars
        .iter()
        .map(|(k, v)| (&data[k.start as usize..k.end as usize], &data[v.start as usize..v.end as usize]));
    if let Ok(c) = cgi::normalise(pairs, cgi::Defaults::default()) {
        let script = c.vars.iter().find(|(k, _)| *k == b"SCRIPT_NAME").map(|(_, v)| v).unwrap();
        assert!(!script.ends_with(b"/"));
        let mut keys: Vec<&[u8]> = c.vars.iter().map(|(k, _)| *k).collect();
        keys.sort();
        let n = keys.len();
        keys.dedup();
        assert_eq!(n, keys.len());
    }
});
