//! CGI variables → WSGI environ rules (PROTOCOLS.md §4), on bytes, before any Python
//! string exists. Shared by every front-end protocol: uwsgi today, FastCGI and SCGI next.

use rustc_hash::FxHashMap as HashMap;
use std::borrow::Cow;

use super::ProtoError;

/// The variables of one request after normalisation, in arrival order, each key once.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cgi<'a> {
    pub vars: Vec<(&'a [u8], Cow<'a, [u8]>)>,
    /// `wsgi.url_scheme` (§4.4).
    pub scheme: &'static str,
    /// Decoded `CONTENT_LENGTH`; `None` when absent or empty.
    pub content_length: Option<u64>,
    /// `REQUEST_METHOD` was absent or empty: the front server is misconfigured.
    pub method_missing: bool,
    /// What was repaired or dropped, for a debug line.
    pub notes: Vec<&'static str>,
}

/// Listener facts used when the front server left a required variable out.
#[derive(Debug, Clone, Copy, Default)]
pub struct Defaults<'a> {
    pub server_name: &'a [u8],
    pub server_port: &'a [u8],
    /// uwsgi modifier1 30: strip SCRIPT_NAME from the front of PATH_INFO (§1.3).
    pub modifier30: bool,
    /// FastCGI/SCGI: a SCRIPT_NAME without PATH_INFO is the whole path (nginx's stock
    /// `fastcgi_params`, Apache's ProxyPass; §2.13), not a mount point.
    pub script_name_is_path: bool,
    /// `--mount` prefixes (no trailing `/`): when the front server gave no
    /// SCRIPT_NAME, the longest one that starts the path (on a `/` boundary) becomes it.
    pub mounts: &'a [Vec<u8>],
}

/// `HTTP_*` variables that cannot legitimately repeat: a repeat replaces.
const SINGLE: &[&[u8]] = &[b"HTTP_HOST", b"HTTP_CONTENT_LENGTH", b"HTTP_CONTENT_TYPE"];

/// Request headers that must not reach the app (§4.2): duplicated CGI information,
/// httpoxy, and hop-by-hop fields the front server has already acted on.
const DROPPED: &[&[u8]] = &[
    b"HTTP_CONTENT_TYPE",
    b"HTTP_CONTENT_LENGTH",
    b"HTTP_PROXY",
    b"HTTP_TRANSFER_ENCODING",
];

/// Normalises the raw `(key, value)` pairs of one request into the environ's CGI part.
///
/// - A repeated `HTTP_*` key (nginx 1.22 sends one variable per header line) is joined
///   with `", "` (`"; "` for `HTTP_COOKIE`) as RFC 3875 §4.1.18 says; other repeated
///   keys (a `uwsgi_param` overriding a stock one) keep the last value.
/// - `CONTENT_TYPE`/`CONTENT_LENGTH` are never duplicated as `HTTP_*`; when only the
///   `HTTP_` form arrived it is promoted.
/// - `SCRIPT_NAME` is always present (`""` for a root mount), never ends with `/`, and
///   is cut from the front of `PATH_INFO` when the front server left it there (§4.3).
/// - `PATH_INFO` falls back to the decoded path of `REQUEST_URI`/`DOCUMENT_URI`;
///   `QUERY_STRING`, `SERVER_NAME`, `SERVER_PORT`, `SERVER_PROTOCOL` always exist.
pub fn normalise<'a>(
    pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    defaults: Defaults<'a>,
) -> Result<Cgi<'a>, ProtoError> {
    let mut cgi = Cgi::default();
    let mut index: HashMap<&'a [u8], usize> = HashMap::default();
    for (key, value) in pairs {
        if key.is_empty() {
            continue;
        }
        let found = if cgi.vars.len() < 32 && index.is_empty() {
            cgi.vars.iter().position(|(k, _)| *k == key)
        } else {
            if index.is_empty() {
                index.extend(cgi.vars.iter().enumerate().map(|(i, (k, _))| (*k, i)));
            }
            index.get(key).copied()
        };
        match found {
            // Host and the content headers are unique in HTTP (nginx refuses a request
            // with two Hosts), so a repeat is a `uwsgi_param` override: last wins.
            Some(i) if key.starts_with(b"HTTP_") && !SINGLE.contains(&key) => {
                let sep: &[u8] = if key == b"HTTP_COOKIE" { b"; " } else { b", " };
                let joined = cgi.vars[i].1.to_mut();
                joined.extend_from_slice(sep);
                joined.extend_from_slice(value);
            }
            Some(i) => cgi.vars[i].1 = Cow::Borrowed(value),
            None => {
                if !index.is_empty() {
                    index.insert(key, cgi.vars.len());
                }
                cgi.vars.push((key, Cow::Borrowed(value)));
            }
        }
    }

    // Promote the HTTP_ forms only when the CGI form is missing, then drop them.
    for (cgi_key, http_key) in [
        (&b"CONTENT_TYPE"[..], &b"HTTP_CONTENT_TYPE"[..]),
        (b"CONTENT_LENGTH", b"HTTP_CONTENT_LENGTH"),
    ] {
        let has = get(&cgi.vars, cgi_key).is_some_and(|v| !v.is_empty());
        if !has {
            if let Some(v) = get(&cgi.vars, http_key).map(<[u8]>::to_vec) {
                set(&mut cgi.vars, cgi_key, Cow::Owned(v));
                cgi.notes.push("promoted an HTTP_CONTENT_* header");
            }
        }
    }
    cgi.vars.retain(|(k, v)| {
        !DROPPED.contains(k)
            && !(v.is_empty() && (*k == b"CONTENT_TYPE" || *k == b"CONTENT_LENGTH"))
    });

    cgi.content_length = match get(&cgi.vars, b"CONTENT_LENGTH") {
        None => None,
        Some(v) => Some(parse_content_length(v)?),
    };
    cgi.method_missing = get(&cgi.vars, b"REQUEST_METHOD").is_none_or(|v| v.is_empty());
    cgi.scheme = url_scheme(
        get(&cgi.vars, b"UWSGI_SCHEME"),
        get(&cgi.vars, b"HTTPS"),
        get(&cgi.vars, b"REQUEST_SCHEME"),
    );

    // Paths (§4.3, §2.13).
    if defaults.script_name_is_path && get(&cgi.vars, b"PATH_INFO").is_none() {
        if let Some(whole) = get(&cgi.vars, b"SCRIPT_NAME")
            .filter(|s| !s.is_empty())
            .map(<[u8]>::to_vec)
        {
            set(&mut cgi.vars, b"PATH_INFO", Cow::Owned(whole));
            set(&mut cgi.vars, b"SCRIPT_NAME", Cow::Borrowed(b""));
            cgi.notes
                .push("SCRIPT_NAME without PATH_INFO taken as the whole path");
        }
    }
    if get(&cgi.vars, b"PATH_INFO").is_none() {
        let uri = get(&cgi.vars, b"REQUEST_URI")
            .or_else(|| get(&cgi.vars, b"DOCUMENT_URI"))
            .map(|u| percent_decode(u.split(|&b| b == b'?').next().unwrap_or_default()));
        if let Some(path) = uri {
            set(&mut cgi.vars, b"PATH_INFO", Cow::Owned(path));
            cgi.notes.push("PATH_INFO derived from REQUEST_URI");
        }
    }
    let script = get(&cgi.vars, b"SCRIPT_NAME").map(<[u8]>::to_vec);
    let path = get(&cgi.vars, b"PATH_INFO").map(<[u8]>::to_vec);
    let (script, path) = split_script_name(
        script.as_deref().unwrap_or_default(),
        path.as_deref().unwrap_or_default(),
        defaults.modifier30,
    );
    let (mut script, mut path) = (script.into_owned(), path.into_owned());
    if script.is_empty() {
        if let Some(m) = longest_mount(defaults.mounts, &path) {
            script = m.to_vec();
            path.drain(..m.len());
        }
    }
    set(&mut cgi.vars, b"SCRIPT_NAME", Cow::Owned(script));
    set(&mut cgi.vars, b"PATH_INFO", Cow::Owned(path));

    for (key, default) in [
        (&b"QUERY_STRING"[..], &b""[..]),
        (b"SERVER_NAME", defaults.server_name),
        (b"SERVER_PORT", defaults.server_port),
        (b"SERVER_PROTOCOL", b"HTTP/1.1"),
    ] {
        if get(&cgi.vars, key).is_none_or(|v| v.is_empty() && key != b"QUERY_STRING") {
            set(&mut cgi.vars, key, Cow::Owned(default.to_vec()));
        }
    }
    Ok(cgi)
}

fn get<'v>(vars: &'v [(&[u8], Cow<'_, [u8]>)], key: &[u8]) -> Option<&'v [u8]> {
    vars.iter().find(|(k, _)| *k == key).map(|(_, v)| &**v)
}

fn set<'a>(vars: &mut Vec<(&'a [u8], Cow<'a, [u8]>)>, key: &'static [u8], value: Cow<'a, [u8]>) {
    match vars.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => vars.push((key, value)),
    }
}

/// The longest of `mounts` that `path` starts with, on a `/` boundary.
fn longest_mount<'m>(mounts: &'m [Vec<u8>], path: &[u8]) -> Option<&'m [u8]> {
    mounts
        .iter()
        .filter(|m| {
            !m.is_empty() && path.starts_with(m) && (path.len() == m.len() || path[m.len()] == b'/')
        })
        .max_by_key(|m| m.len())
        .map(Vec::as_slice)
}

/// Decimal `CONTENT_LENGTH` (RFC 3875 §4.1.2): digits only, no sign, no spaces.
pub fn parse_content_length(v: &[u8]) -> Result<u64, ProtoError> {
    let bad = || ProtoError::BadContentLength(String::from_utf8_lossy(v).into_owned());
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    v.iter()
        .try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or_else(bad)
}

/// `wsgi.url_scheme` (§4.4): `UWSGI_SCHEME`, then `HTTPS` on/1/yes/true, then
/// `REQUEST_SCHEME`, else `http`. Forwarded headers are never trusted here.
pub fn url_scheme(
    uwsgi_scheme: Option<&[u8]>,
    https: Option<&[u8]>,
    request_scheme: Option<&[u8]>,
) -> &'static str {
    let known = |v: &[u8]| {
        if v.eq_ignore_ascii_case(b"https") {
            Some("https")
        } else if v.eq_ignore_ascii_case(b"http") {
            Some("http")
        } else {
            None
        }
    };
    if let Some(s) = uwsgi_scheme.and_then(known) {
        return s;
    }
    if let Some(v) = https {
        if [&b"on"[..], b"1", b"yes", b"true"]
            .iter()
            .any(|t| v.eq_ignore_ascii_case(t))
        {
            return "https";
        }
    }
    request_scheme.and_then(known).unwrap_or("http")
}

/// Splits the mount point from the path (§4.3): SCRIPT_NAME loses a trailing `/`
/// (a root mount is `""`), and is cut from the front of PATH_INFO when PATH_INFO
/// still starts with it (nginx with `uwsgi_param SCRIPT_NAME /app`, or modifier1 30).
pub fn split_script_name<'p>(
    script: &[u8],
    path: &'p [u8],
    modifier30: bool,
) -> (Cow<'p, [u8]>, Cow<'p, [u8]>) {
    let mut script = script;
    while let [rest @ .., b'/'] = script {
        script = rest;
    }
    let script: Cow<'p, [u8]> = Cow::Owned(script.to_vec());
    if script.is_empty() {
        return (script, Cow::Borrowed(path));
    }
    if let Some(rest) = path.strip_prefix(&script[..]) {
        if rest.is_empty() || rest[0] == b'/' {
            return (script, Cow::Borrowed(rest));
        }
    }
    if modifier30 {
        // uWSGI's rule: drop len(SCRIPT_NAME) bytes whatever they are.
        let cut = script.len().min(path.len());
        return (script, Cow::Borrowed(&path[cut..]));
    }
    (script, Cow::Borrowed(path))
}

/// Decodes `%XX` escapes; a malformed escape is kept as it is.
pub fn percent_decode(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pairs: &[(&'static str, &'static str)]) -> Cgi<'static> {
        normalise(
            pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
            Defaults {
                server_name: b"fallback",
                server_port: b"3031",
                ..Defaults::default()
            },
        )
        .unwrap()
    }

    fn run_with(
        pairs: &[(&'static str, &'static str)],
        script_name_is_path: bool,
        mounts: &'static [Vec<u8>],
    ) -> Cgi<'static> {
        normalise(
            pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
            Defaults {
                script_name_is_path,
                mounts,
                ..Defaults::default()
            },
        )
        .unwrap()
    }

    fn paths(cgi: &Cgi<'_>) -> (String, String) {
        let s = |k| String::from_utf8(val(cgi, k).unwrap().to_vec()).unwrap();
        (s("SCRIPT_NAME"), s("PATH_INFO"))
    }

    #[test]
    fn fastcgi_stock_params_script_name_is_the_whole_path() {
        let stock = [
            ("REQUEST_METHOD", "GET"),
            ("SCRIPT_NAME", "/app/a/b"),
            ("REQUEST_URI", "/app/a/b?x=1"),
        ];
        let cgi = run_with(&stock, true, &[]);
        assert_eq!(paths(&cgi), ("".into(), "/app/a/b".into()));
        static MOUNTS: std::sync::LazyLock<Vec<Vec<u8>>> =
            std::sync::LazyLock::new(|| vec![b"/ap".to_vec(), b"/app".to_vec()]);
        let cgi = run_with(&stock, true, &MOUNTS);
        assert_eq!(paths(&cgi), ("/app".into(), "/a/b".into()));
        // Not on a `/` boundary: /apple is not under /app.
        let cgi = run_with(
            &[("REQUEST_METHOD", "GET"), ("SCRIPT_NAME", "/apple")],
            true,
            &MOUNTS,
        );
        assert_eq!(paths(&cgi), ("".into(), "/apple".into()));
        // The mount itself.
        let cgi = run_with(
            &[("REQUEST_METHOD", "GET"), ("SCRIPT_NAME", "/app")],
            true,
            &MOUNTS,
        );
        assert_eq!(paths(&cgi), ("/app".into(), "".into()));
    }

    #[test]
    fn a_split_done_by_the_front_server_is_kept() {
        let cgi = run_with(
            &[
                ("REQUEST_METHOD", "GET"),
                ("SCRIPT_NAME", "/app"),
                ("PATH_INFO", "/a/b"),
            ],
            true,
            &[],
        );
        assert_eq!(paths(&cgi), ("/app".into(), "/a/b".into()));
        // uwsgi: SCRIPT_NAME without PATH_INFO is a mount (PATH_INFO from REQUEST_URI).
        let cgi = run_with(
            &[
                ("REQUEST_METHOD", "GET"),
                ("SCRIPT_NAME", "/app"),
                ("REQUEST_URI", "/app/x%20y"),
            ],
            false,
            &[],
        );
        assert_eq!(paths(&cgi), ("/app".into(), "/x y".into()));
    }

    #[test]
    fn mounts_apply_to_a_path_without_script_name() {
        static MOUNTS: std::sync::LazyLock<Vec<Vec<u8>>> =
            std::sync::LazyLock::new(|| vec![b"/app".to_vec()]);
        let cgi = run_with(
            &[("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/app/x?q")],
            false,
            &MOUNTS,
        );
        assert_eq!(paths(&cgi), ("/app".into(), "/x".into()));
        let cgi = run_with(
            &[("REQUEST_METHOD", "GET"), ("PATH_INFO", "/other")],
            false,
            &MOUNTS,
        );
        assert_eq!(paths(&cgi), ("".into(), "/other".into()));
    }

    fn val<'c>(cgi: &'c Cgi<'_>, key: &str) -> Option<&'c [u8]> {
        cgi.vars
            .iter()
            .find(|(k, _)| *k == key.as_bytes())
            .map(|(_, v)| &**v)
    }

    #[test]
    fn joins_repeated_headers_like_cgi() {
        let cgi = run(&[
            ("REQUEST_METHOD", "GET"),
            ("HTTP_ACCEPT", "text/html"),
            ("HTTP_ACCEPT", "application/json"),
            ("HTTP_COOKIE", "a=1"),
            ("HTTP_COOKIE", "b=2"),
            ("REMOTE_ADDR", "1.1.1.1"),
            ("REMOTE_ADDR", "2.2.2.2"),
        ]);
        assert_eq!(
            val(&cgi, "HTTP_ACCEPT"),
            Some(&b"text/html, application/json"[..])
        );
        assert_eq!(val(&cgi, "HTTP_COOKIE"), Some(&b"a=1; b=2"[..]));
        assert_eq!(val(&cgi, "REMOTE_ADDR"), Some(&b"2.2.2.2"[..]));
    }

    #[test]
    fn a_second_http_host_overrides_the_first() {
        let cgi = run(&[
            ("HTTP_HOST", "example.com"),
            ("HTTP_HOST", "example.com:8080"),
        ]);
        assert_eq!(val(&cgi, "HTTP_HOST"), Some(&b"example.com:8080"[..]));
    }

    #[test]
    fn joins_repeated_headers_among_many_variables() {
        let mut pairs: Vec<(String, String)> = (0..100)
            .map(|i| (format!("HTTP_X_{i}"), "v".into()))
            .collect();
        pairs.push(("HTTP_X_7".into(), "w".into()));
        let cgi = normalise(
            pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
            Defaults::default(),
        )
        .unwrap();
        assert_eq!(val(&cgi, "HTTP_X_7"), Some(&b"v, w"[..]));
        assert_eq!(
            cgi.vars
                .iter()
                .filter(|(k, _)| k.starts_with(b"HTTP_X_"))
                .count(),
            100
        );
    }

    #[test]
    fn drops_duplicated_and_hop_by_hop_headers() {
        let cgi = run(&[
            ("REQUEST_METHOD", "POST"),
            ("CONTENT_TYPE", "text/plain"),
            ("CONTENT_LENGTH", "5"),
            ("HTTP_CONTENT_TYPE", "text/plain"),
            ("HTTP_CONTENT_LENGTH", "5"),
            ("HTTP_TRANSFER_ENCODING", "chunked"),
            ("HTTP_PROXY", "evil:1"),
        ]);
        for k in [
            "HTTP_CONTENT_TYPE",
            "HTTP_CONTENT_LENGTH",
            "HTTP_TRANSFER_ENCODING",
            "HTTP_PROXY",
        ] {
            assert_eq!(val(&cgi, k), None, "{k}");
        }
        assert_eq!(cgi.content_length, Some(5));
    }

    #[test]
    fn drops_empty_content_headers_and_promotes_http_forms() {
        let cgi = run(&[
            ("REQUEST_METHOD", "GET"),
            ("CONTENT_TYPE", ""),
            ("CONTENT_LENGTH", ""),
        ]);
        assert_eq!(val(&cgi, "CONTENT_TYPE"), None);
        assert_eq!(cgi.content_length, None);
        let cgi = run(&[("REQUEST_METHOD", "POST"), ("HTTP_CONTENT_LENGTH", "3")]);
        assert_eq!(cgi.content_length, Some(3));
        assert_eq!(val(&cgi, "CONTENT_LENGTH"), Some(&b"3"[..]));
    }

    #[test]
    fn rejects_a_malformed_content_length() {
        for bad in ["-1", "1e3", " 5", "99999999999999999999", "0x10"] {
            let r = normalise(
                [(&b"CONTENT_LENGTH"[..], bad.as_bytes())],
                Defaults::default(),
            );
            assert!(matches!(r, Err(ProtoError::BadContentLength(_))), "{bad}");
        }
    }

    #[test]
    fn fills_required_variables() {
        let cgi = run(&[("REQUEST_METHOD", "GET"), ("PATH_INFO", "/x")]);
        assert_eq!(val(&cgi, "SCRIPT_NAME"), Some(&b""[..]));
        assert_eq!(val(&cgi, "QUERY_STRING"), Some(&b""[..]));
        assert_eq!(val(&cgi, "SERVER_NAME"), Some(&b"fallback"[..]));
        assert_eq!(val(&cgi, "SERVER_PORT"), Some(&b"3031"[..]));
        assert!(!cgi.method_missing);
        assert!(run(&[("PATH_INFO", "/")]).method_missing);
    }

    #[test]
    fn derives_path_info_from_request_uri() {
        let cgi = run(&[("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/a%20b/c?x=%41")]);
        assert_eq!(val(&cgi, "PATH_INFO"), Some(&b"/a b/c"[..]));
    }

    #[test]
    fn splits_script_name_from_path_info() {
        let cgi = run(&[
            ("REQUEST_METHOD", "GET"),
            ("SCRIPT_NAME", "/app/"),
            ("PATH_INFO", "/app/x"),
        ]);
        assert_eq!(val(&cgi, "SCRIPT_NAME"), Some(&b"/app"[..]));
        assert_eq!(val(&cgi, "PATH_INFO"), Some(&b"/x"[..]));
        let (s, p) = split_script_name(b"/app", b"/application", false);
        assert_eq!((&*s, &*p), (&b"/app"[..], &b"/application"[..]));
        let (s, p) = split_script_name(b"/", b"/x", false);
        assert_eq!((&*s, &*p), (&b""[..], &b"/x"[..]));
        let (s, p) = split_script_name(b"/app", b"/app", false);
        assert_eq!((&*s, &*p), (&b"/app"[..], &b""[..]));
        let (_, p) = split_script_name(b"/ab", b"/xyz/q", true);
        assert_eq!(&*p, b"z/q");
    }

    #[test]
    fn picks_the_url_scheme_in_order() {
        assert_eq!(url_scheme(Some(b"https"), None, Some(b"http")), "https");
        assert_eq!(url_scheme(None, Some(b"on"), Some(b"http")), "https");
        assert_eq!(url_scheme(None, Some(b"1"), None), "https");
        assert_eq!(url_scheme(None, Some(b"off"), Some(b"https")), "https");
        assert_eq!(url_scheme(None, None, Some(b"http")), "http");
        assert_eq!(url_scheme(Some(b"gopher"), None, None), "http");
        assert_eq!(url_scheme(None, None, None), "http");
    }

    #[test]
    fn decodes_percent_escapes_and_keeps_bad_ones() {
        assert_eq!(percent_decode(b"/%E2%82%AC%2f"), "/€/".as_bytes());
        assert_eq!(percent_decode(b"100%"), b"100%");
        assert_eq!(percent_decode(b"%zz%4"), b"%zz%4");
        assert_eq!(percent_decode(b"%41"), b"A");
    }
}
