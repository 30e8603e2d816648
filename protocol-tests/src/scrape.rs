//! postern's `--stats` endpoint as the tests read it: one GET, `/metrics`' samples,
//! `/status` as JSON.

use crate::harness::{parse_http, raw, Addr, Response};

/// GET `path` from the stats endpoint at `addr` (fails on an answer that is not HTTP).
pub fn get(addr: &Addr, path: &str) -> Response {
    let req = format!("GET {path} HTTP/1.1\r\nHost: stats\r\nConnection: close\r\n\r\n");
    let resp = raw(addr, req.as_bytes());
    parse_http(&resp)
        .unwrap_or_else(|| panic!("bad answer to {path}: {:?}", String::from_utf8_lossy(&resp)))
}

/// `/metrics`: a 200 in Prometheus' text format; its text.
pub fn metrics(addr: &Addr) -> String {
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    r.text()
}

/// The value of the sample `series` (`name{labels}`, exactly as written) in a
/// `/metrics` text; `None` when absent.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `/status`: a 200; its JSON.
pub fn status(addr: &Addr) -> serde_json::Value {
    let r = get(addr, "/status");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}
