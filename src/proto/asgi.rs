//! CGI variables → the fields of an ASGI HTTP connection scope (docs/protocols.md §7), on
//! bytes, before any Python object exists. The variables are first normalised exactly as
//! for the WSGI environ ([`cgi::normalise`]: mounts, modifier1 30, SCRIPT_NAME/PATH_INFO,
//! the scheme, repeated and duplicated headers), so one request means the same thing to a
//! WSGI and to an ASGI app; this module only maps the result onto the scope's fields.
//! PURE: no pyo3, tokio, tracing or I/O (`src/asgi/scope.rs` makes the dict).

use std::borrow::Cow;

use super::cgi::{self, Cgi, Defaults, Var, KNOWN};
use super::ProtoError;

/// `scope["asgi"]["version"]`: ASGI 3 (single callable).
pub const ASGI_VERSION: &str = "3.0";

/// `scope["asgi"]["spec_version"]`: the HTTP sub-specification version postern follows,
/// 2.4, the one where `send()` on a closed connection raises an `OSError` (§7.1; 2.5 only
/// adds a WebSocket field).
pub const SPEC_VERSION: &str = "2.4";

/// The index of `name` in [`KNOWN`], at compile time (a name missing there does not build).
const fn known_index(name: &str) -> u8 {
    let (name, mut i) = (name.as_bytes(), 0);
    while i < KNOWN.len() {
        let k = KNOWN[i].as_bytes();
        if k.len() == name.len() {
            let mut j = 0;
            while j < k.len() && k[j] == name[j] {
                j += 1;
            }
            if j == k.len() {
                return i as u8;
            }
        }
        i += 1;
    }
    panic!("not a KNOWN name")
}

const K_REQUEST_METHOD: u8 = known_index("REQUEST_METHOD");
const K_SCRIPT_NAME: u8 = known_index("SCRIPT_NAME");
const K_PATH_INFO: u8 = known_index("PATH_INFO");
const K_QUERY_STRING: u8 = known_index("QUERY_STRING");
const K_CONTENT_TYPE: u8 = known_index("CONTENT_TYPE");
const K_CONTENT_LENGTH: u8 = known_index("CONTENT_LENGTH");
const K_SERVER_NAME: u8 = known_index("SERVER_NAME");
const K_SERVER_PORT: u8 = known_index("SERVER_PORT");
const K_SERVER_PROTOCOL: u8 = known_index("SERVER_PROTOCOL");
const K_REQUEST_URI: u8 = known_index("REQUEST_URI");
const K_REMOTE_ADDR: u8 = known_index("REMOTE_ADDR");
const K_REMOTE_PORT: u8 = known_index("REMOTE_PORT");

/// The scope of one HTTP request, as Rust values: strings that must be `str` in Python are
/// already valid UTF-8 here (`&str`), byte strings stay bytes.
#[derive(Debug)]
pub struct Scope<'a> {
    /// `REQUEST_METHOD` as sent (nginx passes only upper-case tokens); empty when missing,
    /// see [`Scope::method_missing`].
    pub method: &'a [u8],
    /// From `SERVER_PROTOCOL` ([`http_version`]).
    pub http_version: &'static str,
    /// `SERVER_PROTOCOL` was not one [`http_version`] knows (then `"1.1"`).
    pub odd_protocol: bool,
    /// Same rules as `wsgi.url_scheme` (docs/protocols.md §4.4).
    pub scheme: &'static str,
    /// `SCRIPT_NAME` after normalisation (or the `--mount` that matched), decoded.
    pub root_path: Cow<'a, str>,
    /// The decoded path, `root_path` included: always starts with `root_path`.
    pub path: Cow<'a, str>,
    /// The root path or the rest of the path was not UTF-8: each invalid sequence became
    /// U+FFFD in `root_path`/`path` (`raw_path` keeps the bytes).
    pub lossy_path: bool,
    /// `REQUEST_URI` up to `?`, exact bytes ([`raw_path`]); `None` without `REQUEST_URI`.
    pub raw_path: Option<&'a [u8]>,
    /// `QUERY_STRING`, percent-encoded ([`encode_query`]); empty when absent.
    pub query_string: Cow<'a, [u8]>,
    /// `REMOTE_ADDR` and `REMOTE_PORT` (0 when that is missing or not a port);
    /// `None` without a `REMOTE_ADDR`.
    pub client: Option<(&'a [u8], u16)>,
    /// `SERVER_NAME` (the listener's address when the front server sent none) and
    /// `SERVER_PORT` when it is a port number.
    pub server: (&'a [u8], Option<u16>),
    /// Decoded `CONTENT_LENGTH`; `None` when absent or empty.
    pub content_length: Option<u64>,
    /// `REQUEST_METHOD` is `HEAD`: the response carries headers only.
    pub is_head: bool,
    /// `REQUEST_METHOD` was absent or empty: the front server is misconfigured.
    pub method_missing: bool,
    /// The normalised variables, where [`Scope::headers`] reads from.
    vars: Vec<Var<'a>>,
    /// `CONTENT_LENGTH` `0` is framing, not a header the client sent ([`scope`]).
    length_is_framing: bool,
}

/// One request header of the scope: its name comes from the CGI variable's name
/// ([`header_name`]), its value is the variable's value (bytes as sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'s> {
    /// The CGI name (`HTTP_X_FOO`, `CONTENT_TYPE`…).
    pub cgi_name: &'s [u8],
    /// Its index in [`KNOWN`], for a builder that keeps one name object per known name.
    pub known: Option<u8>,
    pub value: &'s [u8],
}

impl Header<'_> {
    /// The header's name in the scope: lower case, `-` for `_` ([`header_name`]).
    pub fn name(&self) -> impl ExactSizeIterator<Item = u8> + '_ {
        header_name(self.cgi_name)
    }
}

impl<'a> Scope<'a> {
    /// The request headers, each name once, in the order the front server sent them
    /// (`content-type` and `content-length` last): every `HTTP_*` variable in CGI form
    /// (repeats already joined, `HTTP_CONTENT_*` folded into the CGI forms, `HTTP_PROXY`
    /// and `HTTP_TRANSFER_ENCODING` dropped, as in the environ; see [`is_cgi_form`]),
    /// and non-empty `CONTENT_TYPE`/`CONTENT_LENGTH`.
    pub fn headers(&self) -> impl Iterator<Item = Header<'_>> + '_ {
        self.vars.iter().filter_map(|v| {
            let is_header = match v.known {
                Some(K_CONTENT_TYPE) => true,
                Some(K_CONTENT_LENGTH) => !self.length_is_framing,
                _ => v.key.len() > HTTP_.len() && v.key.starts_with(HTTP_) && is_cgi_form(v.key),
            };
            is_header.then_some(Header {
                cgi_name: v.key,
                known: v.known,
                value: &v.value,
            })
        })
    }

    /// How many headers [`Scope::headers`] yields (to size a list).
    pub fn header_count(&self) -> usize {
        self.headers().count()
    }
}

const HTTP_: &[u8] = b"HTTP_";

/// A header variable name as front servers make them (RFC 3875 §4.1.18: upper case, `_`
/// for `-`). Another form (`HTTP_x_a`, `HTTP_X-A`, `HTTP_Content_Length`) comes from no
/// nginx or Apache, and would give a second header of the same name beside the real one
/// (two `content-length` headers: Django joins them into `"5,5"`), so it is no header in
/// the scope (the WSGI environ still has it, as sent).
fn is_cgi_form(name: &[u8]) -> bool {
    !name.iter().any(|&b| b.is_ascii_lowercase() || b == b'-')
}

pub use super::cgi::encode_query;

/// Builds the scope fields from the raw `(key, value)` pairs of one request.
/// `length_always_sent`: the protocol sends `CONTENT_LENGTH` on every request (SCGI,
/// docs/protocols.md §3): a `0` there is a header only when the client sent one (an
/// `HTTP_CONTENT_LENGTH` variable), as an empty one is no header over uwsgi and FastCGI.
///
/// Errors are those of [`cgi::normalise`] (a malformed or conflicting `CONTENT_LENGTH`):
/// the request is answered 400, as on the WSGI path. Nothing else refuses a request: a
/// path that is not UTF-8 is served with U+FFFD in place of each invalid sequence.
pub fn scope<'a, P>(
    pairs: P,
    defaults: Defaults<'a>,
    length_always_sent: bool,
) -> Result<Scope<'a>, ProtoError>
where
    P: IntoIterator<Item = (&'a [u8], &'a [u8])>,
    P::IntoIter: Clone,
{
    let pairs = pairs.into_iter();
    // Only a body-less request over SCGI looks again (the usual GET there).
    let again = pairs.clone();
    let Cgi {
        mut vars,
        scheme,
        content_length,
        method_missing,
        is_head,
        notes: _,
    } = cgi::normalise(pairs, defaults)?;
    // Where each variable the scope reads sits in `vars`.
    let mut at = [usize::MAX; 12];
    let slot = |k: u8| match k {
        K_REQUEST_METHOD => Some(0),
        K_SCRIPT_NAME => Some(1),
        K_PATH_INFO => Some(2),
        K_QUERY_STRING => Some(3),
        K_SERVER_NAME => Some(4),
        K_SERVER_PORT => Some(5),
        K_SERVER_PROTOCOL => Some(6),
        K_REQUEST_URI => Some(7),
        K_REMOTE_ADDR => Some(8),
        K_REMOTE_PORT => Some(9),
        _ => None,
    };
    for (i, v) in vars.iter().enumerate() {
        if let Some(s) = v.known.and_then(slot) {
            at[s] = i;
        }
    }
    // Only SCRIPT_NAME and PATH_INFO (decoded), QUERY_STRING (encoded) and joined HTTP_*
    // values are owned; the others borrow the head. An owned value is moved out (the headers never read it).
    let borrowed = |vars: &[Var<'a>], s: usize| -> Option<&'a [u8]> {
        match &vars.get(at[s])?.value {
            Cow::Borrowed(v) => Some(v),
            Cow::Owned(_) => None,
        }
    };
    let mut take = |s: usize| -> Cow<'a, [u8]> {
        match vars.get_mut(at[s]) {
            Some(v) => std::mem::take(&mut v.value),
            None => Cow::Borrowed(b""),
        }
    };
    let script = take(1);
    let rest = take(2);
    // Percent-encoded by `cgi::normalise` where needed (then owned).
    let query_string = take(3);
    let (root_path, path, lossy_path) = join_paths(script, rest);
    let protocol = borrowed(&vars, 6).unwrap_or_default();
    let version = http_version(protocol);
    let port = |v: Option<&[u8]>| v.and_then(parse_port);
    Ok(Scope {
        method: borrowed(&vars, 0).unwrap_or_default(),
        http_version: version.unwrap_or("1.1"),
        odd_protocol: version.is_none(),
        scheme,
        root_path,
        path,
        lossy_path,
        raw_path: borrowed(&vars, 7).and_then(raw_path),
        query_string,
        client: borrowed(&vars, 8)
            .filter(|a| !a.is_empty())
            .map(|a| (a, port(borrowed(&vars, 9)).unwrap_or(0))),
        server: (
            borrowed(&vars, 4).unwrap_or_default(),
            port(borrowed(&vars, 5)),
        ),
        content_length,
        is_head,
        method_missing,
        vars,
        length_is_framing: length_always_sent
            && content_length == Some(0)
            && !again.into_iter().any(|(k, _)| k == b"HTTP_CONTENT_LENGTH"),
    })
}

/// `root_path` and `path` (= `root_path` + the rest) as UTF-8, and whether either had
/// bytes that are not. Each part is decoded on its own, so `path` always starts with
/// `root_path` even when a multi-byte sequence is split between the two.
fn join_paths<'a>(
    script: Cow<'a, [u8]>,
    rest: Cow<'a, [u8]>,
) -> (Cow<'a, str>, Cow<'a, str>, bool) {
    let (root, lossy_root) = utf8_lossy(script);
    let (rest, lossy_rest) = utf8_lossy(rest);
    let path = if root.is_empty() {
        rest
    } else {
        Cow::Owned([&*root, &*rest].concat())
    };
    (root, path, lossy_root || lossy_rest)
}

/// `v` as UTF-8, with U+FFFD for each invalid sequence (and `true` when there was one);
/// borrowed when `v` was borrowed and valid.
fn utf8_lossy(v: Cow<'_, [u8]>) -> (Cow<'_, str>, bool) {
    match v {
        Cow::Borrowed(b) => match std::str::from_utf8(b) {
            Ok(s) => (Cow::Borrowed(s), false),
            Err(_) => (String::from_utf8_lossy(b), true),
        },
        Cow::Owned(o) => match String::from_utf8(o) {
            Ok(s) => (Cow::Owned(s), false),
            Err(e) => (
                Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
                true,
            ),
        },
    }
}

/// `http_version` for a `SERVER_PROTOCOL`: `None` for one it does not know (the scope
/// then says `"1.1"`, the default the environ gives a missing `SERVER_PROTOCOL`).
/// `HTTP/0.9` is `"1.0"`: the nearest the ASGI spec has (the front server answers a
/// 0.9 client itself); HTTP/3 is `"3"`, as nginx names it `HTTP/3.0`.
pub fn http_version(protocol: &[u8]) -> Option<&'static str> {
    Some(match protocol {
        b"HTTP/1.1" => "1.1",
        b"HTTP/1.0" | b"HTTP/0.9" => "1.0",
        b"HTTP/2.0" | b"HTTP/2" => "2",
        b"HTTP/3.0" | b"HTTP/3" => "3",
        _ => return None,
    })
}

/// `raw_path` from a `REQUEST_URI`: the bytes before the first `?`, exactly as the
/// client sent them (nginx's `$request_uri`, Apache's too). An absolute-form target
/// (`http://host/p`) loses its scheme and authority: they are not part of the path.
/// `None` for an empty value (nothing was received to report).
pub fn raw_path(request_uri: &[u8]) -> Option<&[u8]> {
    let path = match request_uri.iter().position(|&b| b == b'?') {
        Some(q) => &request_uri[..q],
        None => request_uri,
    };
    if path.first() != Some(&b'/') {
        if let Some(scheme_end) = path.windows(3).position(|w| w == b"://") {
            let authority = &path[scheme_end + 3..];
            let start = authority.iter().position(|&b| b == b'/');
            let cut = scheme_end + 3 + start.unwrap_or(authority.len());
            return Some(&path[cut..]).filter(|p| !p.is_empty());
        }
    }
    (!path.is_empty()).then_some(path)
}

/// A decimal TCP port (`0`–`65535`, digits only).
pub fn parse_port(v: &[u8]) -> Option<u16> {
    if v.is_empty() || v.len() > 5 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter()
        .try_fold(0u32, |n, &d| Some(n * 10 + u32::from(d - b'0')))
        .and_then(|n| u16::try_from(n).ok())
}

/// A header name from its CGI variable name (RFC 3875 §4.1.18 backwards): `HTTP_` cut,
/// ASCII lower case, `_` → `-` (`HTTP_X_FORWARDED_FOR` → `x-forwarded-for`,
/// `CONTENT_TYPE` → `content-type`). The front server turned `-` into `_`, so a header
/// sent with `_` in its name (nginx drops those unless `underscores_in_headers on`)
/// comes back with `-`; other bytes are kept as they are.
pub fn header_name(cgi_name: &[u8]) -> impl ExactSizeIterator<Item = u8> + '_ {
    let name = cgi_name.strip_prefix(HTTP_).unwrap_or(cgi_name);
    name.iter().map(|&b| match b {
        b'_' => b'-',
        b => b.to_ascii_lowercase(),
    })
}

/// Header bytes as text: ASCII as it is, else latin-1 (each byte one char), the text
/// [`response::write_head`](super::response::write_head) turns back into the same bytes.
pub fn latin1_text(b: &[u8]) -> String {
    if b.is_ascii() {
        // ASCII is UTF-8.
        String::from_utf8(b.to_vec()).unwrap_or_default()
    } else {
        b.iter().map(|&c| char::from(c)).collect()
    }
}

/// Checks one `http.response.start` header, given as byte strings (§7), on the bytes
/// themselves: the same verdict and error as
/// [`response::check_header`](super::response::check_header) on the header read as
/// latin-1 text (each byte one char, so nothing is outside latin-1), without making the
/// text. The name must be a token, the value free of ASCII controls (CR, LF, NUL, DEL;
/// a tab is allowed; 0x80-0xFF pass, as obs-text). Returns the name as text (a token is
/// ASCII).
pub fn check_response_header<'n>(
    name: &'n [u8],
    value: &[u8],
) -> Result<&'n str, super::response::HeaderError> {
    use super::response::HeaderError;
    if !super::response::is_token(name) || name.is_empty() {
        return Err(HeaderError::Name(latin1_text(name)));
    }
    // SAFETY: every byte is a token character, ASCII, so the bytes are UTF-8.
    let name_text = unsafe { std::str::from_utf8_unchecked(name) };
    let control = |b: u8| (b < b' ' && b != b'\t') || b == 0x7f;
    if value.iter().any(|&b| control(b)) {
        return Err(HeaderError::Control {
            name: name_text.to_owned(),
        });
    }
    Ok(name_text)
}

#[cfg(test)]
mod tests {
    use super::*;

    // regression: a query sent with raw UTF-8 bytes (`?q=é` from curl) reached the app
    // as is; ASGI's query_string is percent-encoded, and FastAPI read it as latin-1.
    #[test]
    fn query_bytes_outside_printable_ascii_are_percent_encoded() {
        assert_eq!(&*encode_query("q=é".as_bytes()), b"q=%C3%A9");
        assert_eq!(&*encode_query(b"a b\x7f\x00&c=%41"), b"a%20b%7F%00&c=%41");
        assert!(matches!(encode_query(b"q=%C3%A9&x=1"), Cow::Borrowed(_)));
        assert_eq!(&*encode_query(b""), b"");
    }

    #[test]
    fn response_headers_are_checked_on_bytes_as_on_latin1_text() {
        use crate::proto::response::{check_header, HeaderError};
        let cases: &[(&[u8], &[u8])] = &[
            (b"content-type", b"text/plain"),
            (b"x-a", b"tab\there"),
            (b"x-a", b"caf\xe9"),
            (b"x-a", b"a\r\nb"),
            (b"x-a", b"nul\0"),
            (b"x-a", b"del\x7f"),
            (b"x-a", b"c1\x85"),
            (b"x-a", b"\xa0nbsp"),
            (b"", b"v"),
            (b"bad name", b"v"),
            (b"caf\xe9", b"v"),
            (b"x:y", b"v"),
        ];
        for &(n, v) in cases {
            let want = check_header(&latin1_text(n), &latin1_text(v));
            let got = check_response_header(n, v).map(|_| ());
            assert_eq!(got, want, "{n:?}: {v:?}");
        }
        assert_eq!(
            check_response_header(b"x-a", b"a\nb"),
            Err(HeaderError::Control { name: "x-a".into() })
        );
    }

    proptest::proptest! {
        #![proptest_config(crate::proto::props::config(256))]
        #[test]
        fn props_response_header_check_matches_the_text_check(
            n in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8),
            v in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8),
        ) {
            let want = crate::proto::response::check_header(&latin1_text(&n), &latin1_text(&v));
            proptest::prop_assert_eq!(check_response_header(&n, &v).map(|_| ()), want);
        }
    }

    const DEFAULTS: Defaults<'static> = Defaults {
        server_name: b"127.0.0.1",
        server_port: b"3031",
        modifier30: false,
        script_name_is_path: false,
        mounts: &[],
    };

    fn run(pairs: &[(&'static str, &'static [u8])]) -> Scope<'static> {
        run_with(pairs, DEFAULTS)
    }

    fn run_with(pairs: &[(&'static str, &'static [u8])], d: Defaults<'static>) -> Scope<'static> {
        scope(pairs.iter().map(|(k, v)| (k.as_bytes(), *v)), d, false).unwrap()
    }

    fn headers(s: &Scope<'_>) -> Vec<(String, String)> {
        s.headers()
            .map(|h| {
                let name: Vec<u8> = h.name().collect();
                (
                    String::from_utf8(name).unwrap(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect()
    }

    /// What nginx's stock uwsgi_params sends for `GET /app/caf%C3%A9?q=1`.
    const NGINX_UWSGI: &[(&str, &[u8])] = &[
        ("QUERY_STRING", b"q=1"),
        ("REQUEST_METHOD", b"GET"),
        ("CONTENT_TYPE", b""),
        ("CONTENT_LENGTH", b""),
        ("REQUEST_URI", b"/app/caf%C3%A9?q=1"),
        ("PATH_INFO", "/app/café".as_bytes()),
        ("DOCUMENT_ROOT", b"/usr/share/nginx/html"),
        ("SERVER_PROTOCOL", b"HTTP/1.1"),
        ("REQUEST_SCHEME", b"http"),
        ("REMOTE_ADDR", b"127.0.0.1"),
        ("REMOTE_PORT", b"51234"),
        ("SERVER_PORT", b"8080"),
        ("SERVER_NAME", b"example.test"),
        ("HTTP_HOST", b"example.test:8080"),
        ("HTTP_USER_AGENT", b"curl/8"),
        ("HTTP_X_CUSTOM_THING", b"a"),
        ("HTTP_X_CUSTOM_THING", b"b"),
    ];

    #[test]
    fn maps_nginx_uwsgi_params() {
        let s = run(NGINX_UWSGI);
        assert_eq!(s.method, b"GET");
        assert_eq!((s.http_version, s.odd_protocol), ("1.1", false));
        assert_eq!(s.scheme, "http");
        assert_eq!((&*s.root_path, &*s.path), ("", "/app/café"));
        assert_eq!(s.raw_path, Some(&b"/app/caf%C3%A9"[..]));
        assert_eq!(&*s.query_string, b"q=1");
        assert!(matches!(s.query_string, Cow::Borrowed(_)));
        assert_eq!(s.client, Some((&b"127.0.0.1"[..], 51234)));
        assert_eq!(s.server, (&b"example.test"[..], Some(8080)));
        assert_eq!(
            headers(&s),
            [
                ("host".into(), "example.test:8080".into()),
                ("user-agent".into(), "curl/8".into()),
                ("x-custom-thing".into(), "a, b".into()),
            ]
        );
        assert!(!s.lossy_path && !s.is_head && !s.method_missing);
        assert_eq!(s.content_length, None);
    }

    #[test]
    fn a_mount_is_the_root_path_and_stays_in_the_path() {
        static MOUNTS: std::sync::LazyLock<Vec<Vec<u8>>> =
            std::sync::LazyLock::new(|| vec![b"/app".to_vec()]);
        let s = run_with(
            NGINX_UWSGI,
            Defaults {
                mounts: &MOUNTS,
                ..DEFAULTS
            },
        );
        assert_eq!((&*s.root_path, &*s.path), ("/app", "/app/café"));
        assert_eq!(s.raw_path, Some(&b"/app/caf%C3%A9"[..]));
        // A front server's SCRIPT_NAME (FastCGI with the split done by nginx).
        let s = run_with(
            &[
                ("REQUEST_METHOD", b"GET"),
                ("SCRIPT_NAME", b"/app"),
                ("PATH_INFO", b"/x"),
                ("REQUEST_URI", b"/app/x"),
            ],
            Defaults {
                script_name_is_path: true,
                ..DEFAULTS
            },
        );
        assert_eq!((&*s.root_path, &*s.path), ("/app", "/app/x"));
    }

    #[test]
    fn content_headers_appear_once_and_never_empty() {
        // nginx's fastcgi_params on a GET: empty CONTENT_TYPE/CONTENT_LENGTH.
        let s = run(&[
            ("REQUEST_METHOD", b"GET"),
            ("CONTENT_TYPE", b""),
            ("CONTENT_LENGTH", b""),
        ]);
        assert_eq!(headers(&s), []);
        // Both forms (what gunicorn passed twice).
        let s = run(&[
            ("REQUEST_METHOD", b"POST"),
            ("CONTENT_TYPE", b"text/plain"),
            ("CONTENT_LENGTH", b"5"),
            ("HTTP_CONTENT_TYPE", b"text/plain"),
            ("HTTP_CONTENT_LENGTH", b"5"),
        ]);
        assert_eq!(
            headers(&s),
            [
                ("content-type".into(), "text/plain".into()),
                ("content-length".into(), "5".into())
            ]
        );
        assert_eq!(s.content_length, Some(5));
        // Only the HTTP_ form: promoted, once.
        let s = run(&[("REQUEST_METHOD", b"POST"), ("HTTP_CONTENT_LENGTH", b"3")]);
        assert_eq!(headers(&s), [("content-length".into(), "3".into())]);
    }

    #[test]
    fn scgi_framing_length_zero_is_no_header() {
        // nginx's scgi_pass: CONTENT_LENGTH first, always; on a GET "0", and the client
        // sent no Content-Length.
        let get = [
            (&b"CONTENT_LENGTH"[..], &b"0"[..]),
            (b"SCGI", b"1"),
            (b"REQUEST_METHOD", b"GET"),
        ];
        let s = scope(get, DEFAULTS, true).unwrap();
        assert_eq!(headers(&s), []);
        assert_eq!(s.content_length, Some(0));
        // The client's own `Content-Length: 0` (a POST) is a header.
        let post = [
            (&b"CONTENT_LENGTH"[..], &b"0"[..]),
            (b"REQUEST_METHOD", b"POST"),
            (b"HTTP_CONTENT_LENGTH", b"0"),
        ];
        let s = scope(post, DEFAULTS, true).unwrap();
        assert_eq!(headers(&s), [("content-length".into(), "0".into())]);
        // A body: its length is a header.
        let s = scope([(&b"CONTENT_LENGTH"[..], &b"3"[..])], DEFAULTS, true).unwrap();
        assert_eq!(headers(&s), [("content-length".into(), "3".into())]);
        // Over uwsgi and FastCGI a "0" is what the client sent.
        let s = scope(get, DEFAULTS, false).unwrap();
        assert_eq!(headers(&s), [("content-length".into(), "0".into())]);
    }

    #[test]
    fn rejects_conflicting_lengths_like_the_environ() {
        let r = scope(
            [
                (&b"CONTENT_LENGTH"[..], &b"5"[..]),
                (b"CONTENT_LENGTH", b"6"),
            ],
            DEFAULTS,
            false,
        );
        assert!(matches!(r, Err(ProtoError::ConflictingLength { .. })));
    }

    #[test]
    fn a_path_that_is_not_utf8_gets_replacement_characters() {
        // /%FF decoded by nginx into PATH_INFO: one byte 0xFF.
        let s = run(&[
            ("REQUEST_METHOD", b"GET"),
            ("PATH_INFO", b"/\xffx"),
            ("REQUEST_URI", b"/%FFx"),
        ]);
        assert_eq!(&*s.path, "/\u{FFFD}x");
        assert!(s.lossy_path);
        assert_eq!(s.raw_path, Some(&b"/%FFx"[..]));
        // Decoded by postern from REQUEST_URI (no PATH_INFO).
        let s = run(&[("REQUEST_METHOD", b"GET"), ("REQUEST_URI", b"/a%E2%82")]);
        assert_eq!(&*s.path, "/a\u{FFFD}");
    }

    #[test]
    fn a_sequence_split_by_the_mount_keeps_path_starting_with_root_path() {
        // SCRIPT_NAME ends inside "é" (C3 A9): each part is decoded on its own.
        let s = run(&[
            ("REQUEST_METHOD", b"GET"),
            ("SCRIPT_NAME", b"/caf\xc3"),
            ("PATH_INFO", b"\xa9/x"),
        ]);
        assert!(s.path.starts_with(&*s.root_path));
        assert!(s.lossy_path);
    }

    #[test]
    fn maps_server_protocol() {
        // Absent: the environ's default, HTTP/1.1.
        let s = run(&[("REQUEST_METHOD", b"GET")]);
        assert_eq!((s.http_version, s.odd_protocol), ("1.1", false));
        for (sent, want, odd) in [
            (&b"HTTP/1.0"[..], "1.0", false),
            (b"HTTP/1.1", "1.1", false),
            (b"HTTP/2.0", "2", false),
            (b"HTTP/3.0", "3", false),
            (b"HTTP/0.9", "1.0", false),
            (b"SPDY/3", "1.1", true),
            (b"http/1.0", "1.1", true),
        ] {
            let pairs = [
                (&b"REQUEST_METHOD"[..], &b"GET"[..]),
                (b"SERVER_PROTOCOL", sent),
            ];
            let s = scope(pairs, DEFAULTS, false).unwrap();
            assert_eq!((s.http_version, s.odd_protocol), (want, odd), "{sent:?}");
        }
    }

    #[test]
    fn raw_path_is_the_request_uri_before_the_query() {
        assert_eq!(raw_path(b"/a%20b/c?x=%41"), Some(&b"/a%20b/c"[..]));
        assert_eq!(raw_path(b"/a?"), Some(&b"/a"[..]));
        assert_eq!(raw_path(b"/a?b?c"), Some(&b"/a"[..]));
        assert_eq!(raw_path(b"//x//y"), Some(&b"//x//y"[..]));
        assert_eq!(raw_path(b"http://h:1/p?q"), Some(&b"/p"[..]));
        assert_eq!(raw_path(b"http://h"), None);
        assert_eq!(raw_path(b"*"), Some(&b"*"[..]));
        assert_eq!(raw_path(b""), None);
        assert_eq!(raw_path(b"?q"), None);
        // Without REQUEST_URI there is nothing exact to give.
        assert_eq!(
            run(&[("REQUEST_METHOD", b"GET"), ("PATH_INFO", b"/x")]).raw_path,
            None
        );
    }

    #[test]
    fn client_and_server() {
        let s = run(&[("REQUEST_METHOD", b"GET")]);
        assert_eq!(s.client, None);
        // Defaults from the listener when the front server sent no SERVER_*.
        assert_eq!(s.server, (&b"127.0.0.1"[..], Some(3031)));
        // nginx listening on a Unix socket: REMOTE_ADDR "unix:", REMOTE_PORT "".
        let s = run(&[
            ("REQUEST_METHOD", b"GET"),
            ("REMOTE_ADDR", b"unix:"),
            ("REMOTE_PORT", b""),
            ("SERVER_PORT", b"x"),
        ]);
        assert_eq!(s.client, Some((&b"unix:"[..], 0)));
        assert_eq!(s.server.1, None);
        let s = run(&[("REMOTE_ADDR", b"::1"), ("REMOTE_PORT", b"65536")]);
        assert_eq!(s.client, Some((&b"::1"[..], 0)));
        assert!(s.method_missing);
    }

    #[test]
    fn parses_ports() {
        assert_eq!(parse_port(b"0"), Some(0));
        assert_eq!(parse_port(b"65535"), Some(65535));
        assert_eq!(parse_port(b"08080"), Some(8080));
        for bad in [&b""[..], b"65536", b"-1", b"+80", b" 80", b"123456", b"8o"] {
            assert_eq!(parse_port(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn header_names_from_cgi_names() {
        let n = |k: &[u8]| header_name(k).collect::<Vec<u8>>();
        assert_eq!(n(b"HTTP_X_FORWARDED_FOR"), b"x-forwarded-for");
        assert_eq!(n(b"CONTENT_TYPE"), b"content-type");
        assert_eq!(n(b"HTTP_\xc3\x89T\xc3\xa9"), b"\xc3\x89t\xc3\xa9");
        // `HTTP_` alone is no header (an empty name).
        let s = run(&[("REQUEST_METHOD", b"GET"), ("HTTP_", b"v")]);
        assert_eq!(headers(&s), []);
    }

    #[test]
    fn names_in_no_front_server_form_are_not_a_second_header() {
        let s = run(&[
            ("REQUEST_METHOD", b"POST"),
            ("CONTENT_LENGTH", b"5"),
            ("HTTP_Content_Length", b"5"),
            ("HTTP_CONTENT-LENGTH", b"5"),
            ("HTTP_X_A", b"1"),
            ("HTTP_x_a", b"2"),
            ("HTTP_X-A", b"3"),
            ("HTTP_X.B", b"4"),
        ]);
        assert_eq!(
            headers(&s),
            [
                ("x-a".into(), "1".into()),
                ("x.b".into(), "4".into()),
                ("content-length".into(), "5".into())
            ]
        );
    }

    #[test]
    fn https_and_head() {
        let s = run(&[("REQUEST_METHOD", b"HEAD"), ("HTTPS", b"on")]);
        assert_eq!(s.scheme, "https");
        assert!(s.is_head);
    }

    mod props {
        use proptest::collection::vec;
        use proptest::prelude::*;

        use super::super::*;
        use crate::proto::props::{cgi_pairs, config, decoded_path, join, percent_encode, Pairs};

        fn run(
            pairs: &Pairs,
            defaults: Defaults<'_>,
            scgi: bool,
        ) -> Result<Scope<'static>, ProtoError> {
            // Leaked so the borrowed result can outlive the call: tests only, bounded.
            let pairs: &'static Pairs = Box::leak(Box::new(pairs.clone()));
            let defaults = Defaults {
                server_name: Box::leak(defaults.server_name.to_vec().into_boxed_slice()),
                server_port: Box::leak(defaults.server_port.to_vec().into_boxed_slice()),
                mounts: Box::leak(defaults.mounts.to_vec().into_boxed_slice()),
                ..defaults
            };
            scope(pairs.iter().map(|(k, v)| (&k[..], &v[..])), defaults, scgi)
        }

        fn last<'p>(pairs: &'p Pairs, key: &[u8]) -> Option<&'p [u8]> {
            pairs
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| &v[..])
        }

        proptest! {
            #![proptest_config(config(256))]

            /// Any variables: never a panic, only a length error refuses; each header
            /// name once, lower case, without `_`, never empty, and an empty
            /// content-type/content-length is no header; `path` starts with
            /// `root_path`; `raw_path` is the bytes sent, `query_string` too with bytes
            /// outside printable ASCII percent-encoded.
            #[test]
            fn props_scope_any_variables(
                pairs in cgi_pairs(),
                flags in 0u8..16,
            ) {
                static MOUNTS: std::sync::LazyLock<Vec<Vec<u8>>> =
                    std::sync::LazyLock::new(|| vec![b"/app".to_vec(), b"/a".to_vec()]);
                let defaults = Defaults {
                    modifier30: flags & 1 != 0,
                    script_name_is_path: flags & 2 != 0,
                    mounts: if flags & 4 != 0 { &MOUNTS } else { &[] },
                    ..super::DEFAULTS
                };
                let s = match run(&pairs, defaults, flags & 8 != 0) {
                    Ok(s) => s,
                    Err(e) => {
                        let length_error = matches!(
                            e,
                            ProtoError::BadContentLength(_)
                                | ProtoError::ConflictingLength { .. }
                                | ProtoError::AmbiguousPath { .. }
                        );
                        prop_assert!(length_error, "{}", e);
                        return Ok(());
                    }
                };
                let mut names: Vec<Vec<u8>> = Vec::new();
                for h in s.headers() {
                    let name: Vec<u8> = h.name().collect();
                    prop_assert!(!name.is_empty());
                    prop_assert!(!name.iter().any(|b| b.is_ascii_uppercase() || *b == b'_'));
                    if name == b"content-type" || name == b"content-length" {
                        prop_assert!(!h.value.is_empty());
                    }
                    names.push(name);
                }
                prop_assert_eq!(s.header_count(), names.len());
                let n = names.len();
                names.sort();
                names.dedup();
                prop_assert_eq!(n, names.len(), "a header name twice");
                for gone in [&b"proxy"[..], b"transfer-encoding"] {
                    prop_assert!(!names.iter().any(|h| h == gone));
                }
                prop_assert!(s.path.starts_with(&*s.root_path));
                prop_assert!(!s.root_path.ends_with('/'));
                prop_assert_eq!(s.raw_path, last(&pairs, b"REQUEST_URI").and_then(raw_path));
                if let Some(raw) = s.raw_path {
                    prop_assert!(!raw.contains(&b'?'));
                }
                prop_assert_eq!(s.query_string, encode_query(last(&pairs, b"QUERY_STRING").unwrap_or_default()));
                prop_assert_eq!(s.method_missing, s.method.is_empty());
                let port = last(&pairs, b"REMOTE_PORT").and_then(parse_port).unwrap_or(0);
                prop_assert_eq!(
                    s.client,
                    last(&pairs, b"REMOTE_ADDR").filter(|a| !a.is_empty()).map(|a| (a, port))
                );
                prop_assert!(!s.server.0.is_empty());
            }

            /// The path of a request, any bytes (not UTF-8 too), mounted by `--mount` or
            /// not, sent as nginx's uwsgi_params do (decoded PATH_INFO + REQUEST_URI):
            /// `path` is `root_path` + the rest, `root_path` the mount, the decoding
            /// lossless exactly when the bytes are UTF-8, and `raw_path` the bytes of
            /// REQUEST_URI before `?`.
            #[test]
            fn props_scope_path_is_root_path_plus_rest(
                (segments, mount_end) in decoded_path(),
                mounted in any::<bool>(),
                query in vec(any::<u8>().prop_filter("no #", |b| *b != b'#'), 0..8),
            ) {
                let path = join(&segments);
                let k = mount_end.index(segments.len() + 1);
                let mount = join(&segments[..k]);
                let mounts = if mounted && !mount.is_empty() { vec![mount.clone()] } else { vec![] };
                let encoded = percent_encode(&path);
                let mut uri = encoded.clone();
                uri.push(b'?');
                uri.extend_from_slice(&query);
                let pairs: Pairs = vec![
                    (b"REQUEST_METHOD".to_vec(), b"GET".to_vec()),
                    (b"REQUEST_URI".to_vec(), uri),
                    (b"PATH_INFO".to_vec(), path.clone()),
                ];
                let s = run(&pairs, Defaults { mounts: &mounts, ..super::DEFAULTS }, false).unwrap();
                let root = if mounts.is_empty() { &b""[..] } else { &mount[..] };
                prop_assert_eq!(&*s.root_path, &*String::from_utf8_lossy(root));
                prop_assert!(s.path.starts_with(&*s.root_path));
                let rest = &path[root.len()..];
                let want = [String::from_utf8_lossy(root), String::from_utf8_lossy(rest)].concat();
                prop_assert_eq!(&*s.path, &*want);
                let valid = std::str::from_utf8(root).is_ok() && std::str::from_utf8(rest).is_ok();
                prop_assert_eq!(s.lossy_path, !valid);
                if valid {
                    prop_assert_eq!(s.path.as_bytes(), &path[..]);
                }
                let raw = (!encoded.is_empty()).then_some(&encoded[..]);
                prop_assert_eq!(s.raw_path, raw);
            }
        }
    }
}
