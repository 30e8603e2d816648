//! CGI variables → WSGI environ rules (docs/protocols.md §4), on bytes, before any Python
//! string exists. Shared by every front-end protocol: uwsgi today, FastCGI and SCGI next.

use rustc_hash::FxHashMap as HashMap;
use std::borrow::Cow;

use super::ProtoError;

/// The variables of one request after normalisation, each key once (in arrival order,
/// then the variables this function fills in).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cgi<'a> {
    pub vars: Vec<Var<'a>>,
    /// `wsgi.url_scheme` (§4.4).
    pub scheme: &'static str,
    /// Decoded `CONTENT_LENGTH`; `None` when absent or empty.
    pub content_length: Option<u64>,
    /// `REQUEST_METHOD` was absent or empty: the front server is misconfigured.
    pub method_missing: bool,
    /// `REQUEST_METHOD` is `HEAD`: the response carries headers only.
    pub is_head: bool,
    /// What was repaired or dropped, for a debug line.
    pub notes: Notes,
}

/// What [`normalise`] repaired or dropped: a set of fixed sentences (no allocation on
/// a request's path; nginx's stock `fastcgi_params` makes one of them every request).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Notes(u8);

impl Notes {
    const ALL: [&'static str; 7] = [
        "dropped a wsgi.* or postern.* variable",
        "SCRIPT_NAME without PATH_INFO taken as the whole path",
        "PATH_INFO derived from DOCUMENT_URI or REQUEST_URI",
        "promoted an HTTP_CONTENT_* header",
        "SCRIPT_NAME without PATH_INFO taken as the mount point the path goes on from",
        "SCRIPT_NAME set aside: the request's whole path does not go on from it",
        "PATH_INFO kept: the front server had split SCRIPT_NAME off already",
    ];

    const DROPPED_OWN: u8 = 0;
    const SCRIPT_AS_PATH: u8 = 1;
    const PATH_FROM_URI: u8 = 2;
    const PROMOTED: u8 = 3;
    const SCRIPT_AS_MOUNT: u8 = 4;
    const SCRIPT_NOT_ITS_MOUNT: u8 = 5;
    const SPLIT_ALREADY: u8 = 6;

    /// Adds the sentence `Notes::ALL[i]`.
    fn add(&mut self, i: u8) {
        self.0 |= 1 << i;
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// The sentences, in a fixed order.
    pub fn iter(&self) -> impl Iterator<Item = &'static str> + '_ {
        Self::ALL
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, n)| *n)
    }
}

/// One CGI variable of the environ.
#[derive(Debug, PartialEq, Eq)]
pub struct Var<'a> {
    pub key: &'a [u8],
    /// Its index in [`KNOWN`] (a fixed name the environ builder keeps one `str` for).
    pub known: Option<u8>,
    pub value: Cow<'a, [u8]>,
}

/// Fixed variable names: the environ builder interns one `str` for each (a request
/// choosing arbitrary header names must not grow the intern table), and the first
/// ones (up to [`K_HTTP_COOKIE`]) are the names [`normalise`] acts on.
pub const KNOWN: &[&str] = &[
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "REQUEST_URI",
    "DOCUMENT_URI",
    "UWSGI_SCHEME",
    "HTTPS",
    "REQUEST_SCHEME",
    "HTTP_CONTENT_TYPE",
    "HTTP_CONTENT_LENGTH",
    "HTTP_PROXY",
    "HTTP_TRANSFER_ENCODING",
    "HTTP_HOST",
    "HTTP_COOKIE",
    // Common names with no rule of their own.
    "SERVER_ADDR",
    "SERVER_SOFTWARE",
    "DOCUMENT_ROOT",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "REMOTE_USER",
    "GATEWAY_INTERFACE",
    "HTTP_USER_AGENT",
    "HTTP_ACCEPT",
    "HTTP_ACCEPT_ENCODING",
    "HTTP_ACCEPT_LANGUAGE",
    "HTTP_CONNECTION",
    "HTTP_REFERER",
    "HTTP_ORIGIN",
    "HTTP_AUTHORIZATION",
    "HTTP_CACHE_CONTROL",
    "HTTP_IF_NONE_MATCH",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_REAL_IP",
    "HTTP_X_REQUESTED_WITH",
    "HTTP_X_REQUEST_ID",
    "HTTP_UPGRADE_INSECURE_REQUESTS",
    "HTTP_PRAGMA",
    "HTTP_DNT",
    "HTTP_SEC_FETCH_DEST",
    "HTTP_SEC_FETCH_MODE",
    "HTTP_SEC_FETCH_SITE",
    "HTTP_SEC_FETCH_USER",
    // In nginx's stock fastcgi_params (for PHP's cgi.force_redirect).
    "REDIRECT_STATUS",
];

const K_REQUEST_METHOD: u8 = 0;
const K_SCRIPT_NAME: u8 = 1;
const K_PATH_INFO: u8 = 2;
const K_QUERY_STRING: u8 = 3;
const K_CONTENT_TYPE: u8 = 4;
const K_CONTENT_LENGTH: u8 = 5;
const K_SERVER_NAME: u8 = 6;
const K_SERVER_PORT: u8 = 7;
const K_SERVER_PROTOCOL: u8 = 8;
const K_REQUEST_URI: u8 = 9;
const K_DOCUMENT_URI: u8 = 10;
const K_UWSGI_SCHEME: u8 = 11;
const K_HTTPS: u8 = 12;
const K_REQUEST_SCHEME: u8 = 13;
const K_HTTP_CONTENT_TYPE: u8 = 14;
const K_HTTP_CONTENT_LENGTH: u8 = 15;
const K_HTTP_PROXY: u8 = 16;
const K_HTTP_TRANSFER_ENCODING: u8 = 17;
const K_HTTP_HOST: u8 = 18;
const K_HTTP_COOKIE: u8 = 19;

/// [`KNOWN`] by a hash of each name's length and last 8 bytes (where the names differ:
/// many share a prefix or a length), open addressing with linear probing, built at
/// compile time: slot = index in `KNOWN` + 1, 0 = empty.
static TABLE: [u8; 1 << TABLE_BITS] = {
    let mut table = [0u8; 1 << TABLE_BITS];
    let mut i = 0;
    while i < KNOWN.len() {
        let mut b = bucket_const(KNOWN[i].as_bytes());
        while table[b] != 0 {
            b = (b + 1) & ((1 << TABLE_BITS) - 1);
        }
        table[b] = i as u8 + 1;
        i += 1;
    }
    table
};

const TABLE_BITS: u32 = 8;

/// [`bucket`] as a `const fn` (a byte loop), for building [`TABLE`].
const fn bucket_const(key: &[u8]) -> usize {
    let n = key.len();
    let start = n.saturating_sub(8);
    let mut tail = 0u64;
    let mut i = n;
    while i > start {
        i -= 1;
        tail = tail << 8 | key[i] as u64;
    }
    let h = (tail ^ n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> (64 - TABLE_BITS)) as usize
}

/// The hash of a name: its length and its last 8 bytes (little-endian).
#[inline]
fn bucket(key: &[u8]) -> usize {
    let n = key.len();
    let tail = match n.checked_sub(8) {
        Some(start) => u64::from_le_bytes(key[start..].try_into().unwrap_or_default()),
        None => return bucket_const(key),
    };
    let h = (tail ^ n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> (64 - TABLE_BITS)) as usize
}

/// The index of `key` in [`KNOWN`].
#[inline(never)]
pub fn known(key: &[u8]) -> Option<u8> {
    let mut b = bucket(key);
    loop {
        match TABLE[b] {
            0 => return None,
            i if same(KNOWN[usize::from(i - 1)].as_bytes(), key) => return Some(i - 1),
            _ => b = (b + 1) & ((1 << TABLE_BITS) - 1),
        }
    }
}

/// Names guessed by position ([`known_at`]): the known index each position had in the
/// last request of this thread.
const GUESSES: usize = 64;
const NO_GUESS: u8 = u8::MAX;

thread_local! {
    static LAST_NAMES: std::cell::Cell<[u8; GUESSES]> =
        const { std::cell::Cell::new([NO_GUESS; GUESSES]) };
}

/// [`known`], first trying the name `last` had at position `i`: a front server sends its
/// params file's names in the same order every time, so one comparison usually settles
/// it (the answer is the same either way); `last` learns the answer. Inlined: it runs
/// for every variable of every request, and the guess is a handful of instructions.
#[inline(always)]
fn known_at(last: &mut [u8; GUESSES], i: usize, key: &[u8]) -> Option<u8> {
    let Some(slot) = last.get_mut(i) else {
        return known(key);
    };
    let guess = *slot;
    if guess != NO_GUESS && same(KNOWN[usize::from(guess)].as_bytes(), key) {
        return Some(guess);
    }
    let k = known(key);
    *slot = k.unwrap_or(NO_GUESS);
    k
}

/// `a == b` for short names and values, 8 bytes at a time (a slice comparison calls
/// memcmp).
#[inline]
pub fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n < 8 {
        if n >= 4 {
            let word =
                |s: &[u8], i: usize| u32::from_le_bytes(s[i..i + 4].try_into().unwrap_or_default());
            return word(a, 0) == word(b, 0) && word(a, n - 4) == word(b, n - 4);
        }
        return a == b;
    }
    let word = |s: &[u8], i: usize| u64::from_le_bytes(s[i..i + 8].try_into().unwrap_or_default());
    let mut i = 0;
    while i + 8 < n {
        if word(a, i) != word(b, i) {
            return false;
        }
        i += 8;
    }
    word(a, n - 8) == word(b, n - 8)
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

/// Unknown names seen so far, to find a repeat: a short list scanned in full, then a
/// hash map once it grows (the usual request has no unknown name at all).
/// (`few` is an array on the stack: no allocation for the first [`Unknown::FEW`].)
#[derive(Default)]
struct Unknown<'a> {
    few: [(&'a [u8], usize); Unknown::FEW],
    nfew: usize,
    many: HashMap<&'a [u8], usize>,
}

impl<'a> Unknown<'a> {
    const FEW: usize = 8;

    /// The position of `key` in the vars, or records it at `next`.
    fn find_or_insert(&mut self, key: &'a [u8], next: usize) -> Option<usize> {
        if self.many.is_empty() {
            let few = &mut self.few[..self.nfew];
            if let Some(&(_, i)) = few.iter().find(|(k, _)| *k == key) {
                return Some(i);
            }
            if self.nfew < Self::FEW {
                self.few[self.nfew] = (key, next);
                self.nfew += 1;
                return None;
            }
            self.many.extend(self.few.iter().copied());
            self.nfew = 0;
        }
        match self.many.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => Some(*e.get()),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(next);
                None
            }
        }
    }
}

/// Normalises the raw `(key, value)` pairs of one request into the environ's CGI part,
/// in one pass over the pairs (then a fixed amount of work on the names it acts on).
///
/// - A repeated `HTTP_*` key (nginx 1.22 sends one variable per header line) is joined
///   with `", "` (`"; "` for `HTTP_COOKIE`) as RFC 3875 §4.1.18 says; other repeated
///   keys (a `uwsgi_param` overriding a stock one) keep the last value. Host and the
///   content type are unique in HTTP (nginx refuses a request with two Hosts), so a
///   repeat of those is an override too: last wins. `CONTENT_LENGTH` is the
///   exception: a repeat with another value, empty included, is refused
///   ([`content_length_again`], the codecs' rule), an identical one counts once.
/// - `CONTENT_TYPE`/`CONTENT_LENGTH` are never duplicated as `HTTP_*`; when only the
///   `HTTP_` form arrived it is promoted. Empty, they are left out.
/// - `HTTP_PROXY` (httpoxy) and `HTTP_TRANSFER_ENCODING` (hop-by-hop, acted on by the
///   front server) never reach the app (§4.2).
/// - `SCRIPT_NAME` is always present (`""` for a root mount), never ends with `/`, and
///   is cut from the front of `PATH_INFO` when the front server left it there (§4.3).
/// - `PATH_INFO` falls back to `DOCUMENT_URI` (nginx's `$document_uri`, decoded and
///   normalised already), else the decoded path of `REQUEST_URI`;
///   `QUERY_STRING`, `SERVER_NAME`, `SERVER_PORT`, `SERVER_PROTOCOL` always exist.
pub fn normalise<'a>(
    pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    defaults: Defaults<'a>,
) -> Result<Cgi<'a>, ProtoError> {
    normalise_into(pairs, defaults, Vec::new())
}

/// [`normalise`], its variables put in `vars` (emptied first): an earlier request's list,
/// whose allocation serves again (a FastCGI request's two dozen variables take over
/// 1 KiB, past the size malloc keeps per thread).
pub fn normalise_into<'a>(
    pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    defaults: Defaults<'a>,
    mut vars: Vec<Var<'a>>,
) -> Result<Cgi<'a>, ProtoError> {
    let pairs = pairs.into_iter();
    vars.clear();
    vars.reserve(pairs.size_hint().0 + 4);
    let mut cgi = Cgi {
        vars,
        ..Cgi::default()
    };
    // Where each known name sits in `vars` (index + 1; 0: not there).
    let mut at = [0u32; KNOWN.len()];
    // Names decided after the pass (last value wins): held aside, not in `vars`.
    let mut aside: [Option<&'a [u8]>; 6] = [None; 6];
    let aside_slot = |k: u8| match k {
        K_CONTENT_TYPE => Some(0),
        K_CONTENT_LENGTH => Some(1),
        K_HTTP_CONTENT_TYPE => Some(2),
        K_HTTP_CONTENT_LENGTH => Some(3),
        K_SCRIPT_NAME => Some(4),
        K_PATH_INFO => Some(5),
        _ => None,
    };
    let mut unknown = Unknown::default();
    // The first CONTENT_LENGTH, to refuse another value ([`content_length_again`]).
    let mut length_seen: Option<&'a [u8]> = None;
    // One copy in and out of the thread's guesses per request, not a lookup per name.
    let mut last = LAST_NAMES.with(std::cell::Cell::get);
    for (pos, (key, value)) in pairs.enumerate() {
        if key.is_empty() {
            continue;
        }
        let k = known_at(&mut last, pos, key);
        let found = match k {
            Some(K_HTTP_PROXY | K_HTTP_TRANSFER_ENCODING) => continue,
            Some(k) => {
                if let Some(slot) = aside_slot(k) {
                    // Two different body lengths: refused, as the codecs do.
                    if k == K_CONTENT_LENGTH {
                        match length_seen {
                            Some(first) => content_length_again(first, value)?,
                            None => length_seen = Some(value),
                        }
                    }
                    aside[slot] = Some(value);
                    continue;
                }
                let slot = &mut at[usize::from(k)];
                if *slot == 0 {
                    *slot = cgi.vars.len() as u32 + 1;
                    None
                } else {
                    Some(*slot as usize - 1)
                }
            }
            // postern's own entries (`wsgi.url_scheme`, `wsgi.input`, `postern.request_id`…)
            // are never a request variable's to replace (§4.5). Only unknown names can be.
            None if matches!(key[0], b'w' | b'p')
                && (key.starts_with(b"wsgi.") || key.starts_with(b"postern.")) =>
            {
                cgi.notes.add(Notes::DROPPED_OWN);
                continue;
            }
            None => unknown.find_or_insert(key, cgi.vars.len()),
        };
        match found {
            None => cgi.vars.push(Var {
                key,
                known: k,
                value: Cow::Borrowed(value),
            }),
            Some(i) if key.starts_with(b"HTTP_") && k != Some(K_HTTP_HOST) => {
                let sep: &[u8] = if k == Some(K_HTTP_COOKIE) {
                    b"; "
                } else {
                    b", "
                };
                let joined = cgi.vars[i].value.to_mut();
                joined.extend_from_slice(sep);
                joined.extend_from_slice(value);
            }
            Some(i) => cgi.vars[i].value = Cow::Borrowed(value),
        }
    }
    LAST_NAMES.with(|l| l.set(last));
    let value = |at: &[u32], k: u8| -> Option<&'a [u8]> {
        match at[usize::from(k)] {
            0 => None,
            i => Some(match &cgi.vars[i as usize - 1].value {
                Cow::Borrowed(v) => *v,
                // Only joined HTTP_* values are owned; none of them is asked for here.
                Cow::Owned(_) => unreachable!("a known non-HTTP name is never joined"),
            }),
        }
    };
    let [ctype, clen, http_ctype, http_clen, script, path] = aside;

    let method = value(&at, K_REQUEST_METHOD);
    cgi.method_missing = method.is_none_or(<[u8]>::is_empty);
    cgi.is_head = method == Some(b"HEAD");
    cgi.scheme = url_scheme(
        value(&at, K_UWSGI_SCHEME),
        value(&at, K_HTTPS),
        value(&at, K_REQUEST_SCHEME),
    );

    // Paths (§4.3, §2.13).
    let (mut script, mut path): (&'a [u8], Option<Cow<'a, [u8]>>) =
        (script.unwrap_or_default(), path.map(Cow::Borrowed));
    // The request's whole path as the front server saw it: DOCUMENT_URI (nginx's
    // normalised, rewritten `$uri`), else REQUEST_URI's path, decoded and normalised.
    let document_uri = value(&at, K_DOCUMENT_URI).filter(|v| !v.is_empty());
    let request_uri = value(&at, K_REQUEST_URI);
    let whole_path = || -> Option<Cow<'a, [u8]>> {
        match document_uri {
            Some(d) => Some(Cow::Borrowed(d)),
            None => request_uri.map(request_path),
        }
    };
    if defaults.script_name_is_path && path.is_none() && !script.is_empty() {
        // nginx's stock params send SCRIPT_NAME = `$fastcgi_script_name`, the request's
        // whole (normalised, rewritten) path, which DOCUMENT_URI (`$document_uri`)
        // repeats. A SCRIPT_NAME the path goes on past, at a `/`, was set by the user
        // (`fastcgi_param SCRIPT_NAME /app;`, `scgi_param …`; or `fastcgi_split_path_info`
        // without PATH_INFO): it is the mount point, as over uwsgi. (A SCRIPT_NAME that
        // ends in `/` never is: nginx's `$uri` of `/a/b//` or `/a/b/.` is `/a/b/`.)
        //
        // With DOCUMENT_URI the stock SCRIPT_NAME is DOCUMENT_URI itself (or, with
        // `fastcgi_index`, DOCUMENT_URI ending in `/` plus the index name), so any other
        // is the admin's: one ending in `/` is a mount point too (its `/` dropped), and
        // so is one that DOCUMENT_URI does not start with at all (the path was rewritten
        // or stripped before it came: `rewrite ^/app(/.*)$ $1 break;`, or a proxy in
        // front that strips the public prefix); the path is then DOCUMENT_URI.
        // But one that DOCUMENT_URI starts with other than at a `/` is not this
        // request's: nginx's `location /app` also matches `/application/x`, which
        // `fastcgi_param SCRIPT_NAME /app;` does not start. Set aside: the path is
        // DOCUMENT_URI, with no mount point. (Without DOCUMENT_URI, REQUEST_URI is the
        // path before any rewrite and cannot tell these apart: the stock rule.)
        let mount = match document_uri {
            Some(_) => trim_slashes(script),
            None => script,
        };
        match whole_path() {
            Some(whole) if *whole != *script && goes_on_past(mount, &whole) => {
                path = Some(whole);
                cgi.notes.add(Notes::SCRIPT_AS_MOUNT);
            }
            Some(whole)
                if document_uri.is_some()
                    && *whole != *script
                    && whole.starts_with(mount)
                    && whole.len() > mount.len() =>
            {
                // Unless REQUEST_URI (the path before any rewrite) goes on past it: a
                // rewrite stripped it (`rewrite ^/app(/.*)$ $1 break;`, a route /apple).
                let before_rewrite = request_uri.map(request_path);
                if !before_rewrite.is_some_and(|u| goes_on_past(mount, &u)) {
                    script = b"";
                    cgi.notes.add(Notes::SCRIPT_NOT_ITS_MOUNT);
                } else {
                    cgi.notes.add(Notes::SCRIPT_AS_MOUNT);
                }
                path = Some(whole);
            }
            Some(whole)
                if document_uri.is_some()
                    && !whole.starts_with(mount)
                    && !script.starts_with(&whole) =>
            {
                path = Some(whole);
                cgi.notes.add(Notes::SCRIPT_AS_MOUNT);
            }
            _ => {
                path = Some(Cow::Borrowed(script));
                script = b"";
                cgi.notes.add(Notes::SCRIPT_AS_PATH);
            }
        }
    }
    if path.is_none() {
        // DOCUMENT_URI first: it is what nginx's uwsgi_params send as PATH_INFO (and its
        // fastcgi_params as SCRIPT_NAME), and its scgi_params send it with no PATH_INFO,
        // so one app behind all three gets one path (`//a/./b` is `/a/b` over each).
        // regression: SCGI took REQUEST_URI's path, decoded but not normalised.
        if let Some(whole) = whole_path() {
            path = Some(whole);
            cgi.notes.add(Notes::PATH_FROM_URI);
        }
    }
    let mut path = path.unwrap_or_default();
    let sent_script = script;
    let (s, rest) = split_script_name(script, &path, defaults.modifier30);
    let (script, mut cut) = (s, path.len() - rest.len());
    // A PATH_INFO that starts with SCRIPT_NAME is the whole path (nginx's uwsgi_params
    // with `uwsgi_param SCRIPT_NAME /app;`), unless the front server split it already
    // (Apache's `ProxyPass /app/ fcgi://…`, `fastcgi_split_path_info`, a regex
    // capture) and the app's own path starts with the mount's name (`/app/app/x`:
    // `/app` + `/app/x`). Cut again, the app got `/x`, a path the front server's access
    // rules for `/app/x` never saw. Kept wrongly, it gets `/app/x` for a request the
    // rules saw as `/app/x` whole. A request that reads either way is refused
    // ([`split_already`]).
    // regression (probe 382): such a request reached `/app/admin` past a `<Location
    // /app/admin>` that denied it.
    if cut > 0 && split_already((request_uri, document_uri), (sent_script, script), &path)? {
        cut = 0;
        cgi.notes.add(Notes::SPLIT_ALREADY);
    }
    let mut script: &'a [u8] = script;
    cut_front(&mut path, cut);
    // Over uwsgi a SCRIPT_NAME beside a PATH_INFO that does not go on from it at a `/`
    // is kept as sent (`location /app` + `uwsgi_param SCRIPT_NAME /app;` and a request
    // for /application/x: the route, PATH_INFO, is right; only URLs the app builds
    // carry /app). It cannot be told from a public prefix a proxy in front stripped
    // (`/public` + a route /publications), which must stay.
    if script.is_empty() {
        if let Some(m) = longest_mount(defaults.mounts, &path) {
            script = m;
            cut_front(&mut path, m.len());
        }
    }
    let push = |vars: &mut Vec<Var<'a>>, k: u8, value: Cow<'a, [u8]>| {
        vars.push(Var {
            key: KNOWN[usize::from(k)].as_bytes(),
            known: Some(k),
            value,
        })
    };
    push(&mut cgi.vars, K_SCRIPT_NAME, Cow::Borrowed(script));
    push(&mut cgi.vars, K_PATH_INFO, path);

    // CONTENT_TYPE/CONTENT_LENGTH: the CGI form, else the HTTP_ form; never empty.
    let non_empty = |v: Option<&'a [u8]>| v.filter(|v| !v.is_empty());
    for (k, cgi_form, http_form) in [
        (K_CONTENT_TYPE, ctype, http_ctype),
        (K_CONTENT_LENGTH, clen, http_clen),
    ] {
        let v = match non_empty(cgi_form) {
            Some(v) => Some(v),
            None => {
                if http_form.is_some() {
                    cgi.notes.add(Notes::PROMOTED);
                }
                non_empty(http_form)
            }
        };
        if let Some(v) = v {
            if k == K_CONTENT_LENGTH {
                cgi.content_length = Some(parse_content_length(v)?);
            }
            push(&mut cgi.vars, k, Cow::Borrowed(v));
        }
    }

    if let Some(i) = (at[usize::from(K_QUERY_STRING)] as usize).checked_sub(1) {
        let v = &mut cgi.vars[i].value;
        if let Cow::Owned(encoded) = encode_query(v) {
            *v = Cow::Owned(encoded);
        }
    }
    for (k, default) in [
        (K_QUERY_STRING, &b""[..]),
        (K_SERVER_NAME, defaults.server_name),
        (K_SERVER_PORT, defaults.server_port),
        (K_SERVER_PROTOCOL, b"HTTP/1.1"),
    ] {
        match at[usize::from(k)] {
            0 => push(&mut cgi.vars, k, Cow::Borrowed(default)),
            i => {
                let v = &mut cgi.vars[i as usize - 1].value;
                if v.is_empty() && k != K_QUERY_STRING {
                    *v = Cow::Borrowed(default);
                }
            }
        }
    }
    Ok(cgi)
}

/// `QUERY_STRING` as the app gets it (the WSGI environ's, the ASGI scope's
/// `query_string`): a URL's query is percent-encoded (RFC 3986 §3.4; ASGI says so of
/// `query_string`), but nginx passes the query as the client sent it, and a client may
/// send raw bytes (UTF-8 text typed into curl). Bytes outside printable ASCII are
/// percent-encoded (`é` → `%C3%A9`), so a framework that percent-decodes it as UTF-8
/// gets the text back and one that builds a URL from it (Django's `get_full_path`, an
/// `APPEND_SLASH` redirect) does not encode the latin-1 reading of those bytes again
/// (`%C3%83%C2%A9`); everything else, `%` escapes included, is kept as sent. Idempotent.
/// Borrows `q` when there is nothing to encode (the usual query).
pub fn encode_query(q: &[u8]) -> Cow<'_, [u8]> {
    let plain = |b: u8| (0x21..=0x7e).contains(&b);
    let Some(first) = q.iter().position(|&b| !plain(b)) else {
        return Cow::Borrowed(q);
    };
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(q.len() + 16);
    out.extend_from_slice(&q[..first]);
    for &b in &q[first..] {
        if plain(b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
    Cow::Owned(out)
}

/// Drops the first `n` bytes of `v` (a borrowed value is re-sliced, not copied).
fn cut_front(v: &mut Cow<'_, [u8]>, n: usize) {
    if n == 0 {
        return;
    }
    match v {
        Cow::Borrowed(b) => *b = &b[n..],
        Cow::Owned(o) => {
            o.drain(..n);
        }
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

/// The one rule for a `CONTENT_LENGTH` sent again, over uwsgi, FastCGI and SCGI alike
/// (the codecs frame the body by it, [`normalise`] gives it to the app): every value must
/// be the first one, byte for byte. An empty value is a value too: `5` then `""` (or
/// `""` then `5`) is two answers to "how long is the body", a request-smuggling shape
/// refused as `5` then `6` (or `5` then `05`) is, whichever one a rule of "the last
/// wins" or "the last non-empty wins" would pick. `""` twice is one (absent) length.
pub fn content_length_again(first: &[u8], again: &[u8]) -> Result<(), ProtoError> {
    if first == again {
        Ok(())
    } else {
        Err(conflicting_length(first, again))
    }
}

/// `CONTENT_LENGTH` came twice, `first` then `then`.
pub fn conflicting_length(first: &[u8], then: &[u8]) -> ProtoError {
    ProtoError::ConflictingLength {
        first: String::from_utf8_lossy(first).into_owned(),
        then: String::from_utf8_lossy(then).into_owned(),
    }
}

/// The largest `CONTENT_LENGTH` taken: 2^63 - 1, the most a signed 64-bit length can
/// say. The app reads the body with `wsgi.input.read(int(CONTENT_LENGTH))`, and CPython
/// takes a size as a `Py_ssize_t`: a larger one raises `OverflowError` there (a 500),
/// after the server has waited for a body no front server could send.
pub const MAX_CONTENT_LENGTH: u64 = i64::MAX as u64;

/// Decimal `CONTENT_LENGTH` (RFC 3875 §4.1.2): digits only, no sign, no spaces, at most
/// [`MAX_CONTENT_LENGTH`] (leading zeros allowed, up to 19 digits in all).
pub fn parse_content_length(v: &[u8]) -> Result<u64, ProtoError> {
    let bad = || ProtoError::BadContentLength(String::from_utf8_lossy(v).into_owned());
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    // 19 digits are below 10^19, which a u64 holds.
    let n = v.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    if n > MAX_CONTENT_LENGTH {
        // regression (sec M2): 2^63 to 10^19 - 1 were taken (19 digits fit a u64).
        return Err(bad());
    }
    Ok(n)
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

/// `path` (a PATH_INFO that starts with `script` and `/`) came with its mount point cut
/// off already: the request's path (REQUEST_URI's, as sent or as a front server reads
/// it) is not `path` itself but `script` (or `sent`, SCRIPT_NAME as it came, a
/// trailing `/` kept) then `path`, or, when it is neither (the front server read it
/// another way than postern: a NoDecode `%2F`, a raw `#`), it starts with `script`
/// twice. Only a path the front server rewrote (`path` is then the rewritten whole
/// path) is none of these: cut, as without REQUEST_URI.
///
/// DOCUMENT_URI (nginx's `$document_uri`, in its stock FastCGI and SCGI params) is the
/// front server's own reading, and settles it. Else REQUEST_URI is read the ways front
/// servers read a path: nginx decodes every escape, then merges `//` (unless
/// `merge_slashes off`) and resolves `.` and `..`; Apache resolves them before it
/// decodes a `%2F` (and merges `//` unless `MergeSlashes Off`; `AllowEncodedSlashes On`
/// resolves them again after). Those readings differ
/// only for a path with `//` or `%2F` next to `..`: `/pf/pf//../admin` is `/pf/admin`
/// merged and `/pf/pf/admin` kept. Split by one reading and whole by another, the
/// request is refused (a 400): kept, the app would get `/pf/admin` behind an nginx
/// whose rules saw `/pf/admin` as the whole path; cut, `/admin` behind one that keeps
/// `//` and saw `/pf/pf/admin`. No client but an attacker's sends such a path.
#[inline(never)]
fn split_already(
    (request_uri, document_uri): (Option<&[u8]>, Option<&[u8]>),
    (sent, script): (&[u8], &[u8]),
    path: &[u8],
) -> Result<bool, ProtoError> {
    let Some(uri) = request_uri else {
        return Ok(false);
    };
    let raw = target_path(uri);
    // The whole path as sent (the usual mounted request): cut, with no work more.
    if raw == path {
        return Ok(false);
    }
    let both = |p: &[u8]| {
        [script, sent]
            .iter()
            .any(|s| p.len() == s.len() + path.len() && p.starts_with(s) && p.ends_with(path))
    };
    if both(raw) {
        return Ok(true);
    }
    if let Some(d) = document_uri {
        if d == path {
            return Ok(false);
        }
        if both(d) {
            return Ok(true);
        }
    }
    let readings = front_readings(raw);
    let whole = readings.iter().any(|r| **r == *path);
    let split = readings.iter().any(|r| both(r));
    if whole && split {
        return Err(ProtoError::AmbiguousPath {
            uri: String::from_utf8_lossy(uri).into_owned(),
        });
    }
    if whole || split {
        return Ok(split);
    }
    let twice = |p: &[u8]| {
        p.strip_prefix(script)
            .and_then(|rest| rest.strip_prefix(script))
            .is_some_and(|rest| rest.is_empty() || rest[0] == b'/')
    };
    Ok(readings.iter().any(|r| twice(r)) || twice(raw))
}

/// The paths front servers make of `raw` (a request target's path, as sent): nginx's
/// default reading ([`request_path`]), then, where they differ from it, the reading with
/// `//` kept (`merge_slashes off`, `MergeSlashes Off`) and Apache's (`.` and `..`
/// resolved before a `%2F` is decoded, and with `AllowEncodedSlashes On` once more
/// after), merged and kept.
fn front_readings(raw: &[u8]) -> Vec<Cow<'_, [u8]>> {
    let decoded = percent_decode_cow(raw);
    let mut out = vec![Cow::Owned(normalise_path(&decoded).into_owned())];
    let slashes_kept = decoded.windows(2).any(|w| w == b"//");
    if slashes_kept {
        out.push(Cow::Owned(
            normalise_path_as(&decoded, Slashes::Kept).into_owned(),
        ));
    }
    let encoded_slash = raw
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'f'));
    if encoded_slash {
        let unreserved = decode_unreserved(raw);
        for slashes in [Slashes::Merged, Slashes::Kept] {
            let p = percent_decode(&normalise_path_as(&unreserved, slashes));
            // With `AllowEncodedSlashes On` Apache resolves them again once decoded.
            out.push(Cow::Owned(normalise_path_as(&p, slashes).into_owned()));
            out.push(Cow::Owned(p));
        }
    }
    out
}

/// `p` with only the escapes of unreserved characters (RFC 3986 §2.3: letters, digits,
/// `-`, `.`, `_`, `~`) decoded, as Apache decodes a path before it resolves `.` and
/// `..` (so `%2E%2E` is `..` there, and `%2F` not a `/`).
pub fn decode_unreserved(p: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        if p[i] == b'%' && i + 2 < p.len() {
            if let (Some(h), Some(l)) = (hex(p[i + 1]), hex(p[i + 2])) {
                let c = h << 4 | l;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(c);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(p[i]);
        i += 1;
    }
    out
}

/// The path part of a request target: up to `?` or `#` (nginx's `$uri` stops at a raw
/// `#` too), an absolute-form target (`http://host/p`) reduced to its path.
fn target_path(uri: &[u8]) -> &[u8] {
    let end = uri
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(uri.len());
    let p = &uri[..end];
    match scheme_and_authority_end(p) {
        Some(after) if after < p.len() => &p[after..],
        Some(_) => b"/",
        None => p,
    }
}

/// The path of a request target as nginx makes `$uri` of it: the query (and a raw
/// `#` with what follows) dropped, an absolute-form target (`http://host/p`) reduced
/// to its path, `%XX` decoded, `//` merged, `.` and `..` segments resolved (a `..` at
/// the root stays there; nginx and Apache refuse such a request before it comes). A
/// path the front server did not normalise itself (REQUEST_URI, as sent) so reads as
/// its own checks read it. Borrows `uri` when there is nothing to change (the usual
/// path).
#[inline(never)]
pub fn request_path(uri: &[u8]) -> Cow<'_, [u8]> {
    request_path_as(uri, Slashes::Merged)
}

/// [`request_path`], with `//` merged or kept.
fn request_path_as(uri: &[u8], slashes: Slashes) -> Cow<'_, [u8]> {
    match percent_decode_cow(target_path(uri)) {
        Cow::Borrowed(p) => normalise_path_as(p, slashes),
        Cow::Owned(p) => Cow::Owned(normalise_path_as(&p, slashes).into_owned()),
    }
}

/// How a front server reads `//` in a path before it resolves `.` and `..`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Slashes {
    /// Merged into one first (nginx's `merge_slashes on` and Apache's `MergeSlashes
    /// On`, both the default): `/a//../b` is `/b`.
    Merged,
    /// Kept, each `//` an empty segment that a `..` takes away (`merge_slashes off`,
    /// `MergeSlashes Off`): `/a//../b` is `/a/b`, `/a//./b` is `/a//b`.
    Kept,
}

/// Where the path of an absolute-form target (`scheme://authority/path`) starts: the
/// length of `scheme://authority`. None for any other target (`/p`, `*`).
fn scheme_and_authority_end(t: &[u8]) -> Option<usize> {
    let colon = t.iter().position(|&b| b == b':')?;
    let scheme = &t[..colon];
    let valid = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !valid || !t[colon..].starts_with(b"://") {
        return None;
    }
    let authority = colon + 3;
    Some(
        t[authority..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(t.len(), |i| authority + i),
    )
}

/// `p` (a path starting with `/`) with `//` merged and `.` and `..` segments resolved;
/// a path that ended in a `/`, `.` or `..` segment still ends in `/`. Anything else is
/// returned as it is.
pub fn normalise_path(p: &[u8]) -> Cow<'_, [u8]> {
    normalise_path_as(p, Slashes::Merged)
}

/// [`normalise_path`], with `//` merged or kept as `slashes` says.
pub fn normalise_path_as(p: &[u8], slashes: Slashes) -> Cow<'_, [u8]> {
    let merge = slashes == Slashes::Merged;
    let odd = |s: &[u8]| (merge && s.is_empty()) || s == b"." || s == b"..";
    let Some(rest) = p.strip_prefix(b"/") else {
        return Cow::Borrowed(p);
    };
    let segments = || rest.split(|&b| b == b'/');
    let n = segments().count();
    // The last segment may be empty: a trailing `/`.
    if !segments()
        .enumerate()
        .any(|(i, s)| odd(s) && !(s.is_empty() && i + 1 == n))
    {
        return Cow::Borrowed(p);
    }
    let mut out = Vec::with_capacity(p.len());
    let mut trailing = false;
    for s in segments() {
        trailing = odd(s);
        match s {
            b"" if merge => {}
            b"." => {}
            b".." => {
                let keep = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
                out.truncate(keep);
            }
            _ => {
                out.push(b'/');
                out.extend_from_slice(s);
            }
        }
    }
    if trailing || out.is_empty() {
        out.push(b'/');
    }
    Cow::Owned(out)
}

/// `s` without its trailing `/`s.
fn trim_slashes(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b'/'] = s {
        s = rest;
    }
    s
}

/// `path` is `script` followed by more path at a `/` (and `script` does not end in `/`).
fn goes_on_past(script: &[u8], path: &[u8]) -> bool {
    !script.ends_with(b"/")
        && path.len() > script.len()
        && path.starts_with(script)
        && path[script.len()] == b'/'
}

/// Splits the mount point from the path (§4.3): SCRIPT_NAME loses a trailing `/`
/// (a root mount is `""`), and is cut from the front of PATH_INFO when PATH_INFO
/// still starts with it (nginx with `uwsgi_param SCRIPT_NAME /app`, or modifier1 30).
/// Returns the two as sub-slices of the arguments (the path's is always a suffix).
pub fn split_script_name<'s, 'p>(
    script: &'s [u8],
    path: &'p [u8],
    modifier30: bool,
) -> (&'s [u8], &'p [u8]) {
    let mut script = script;
    while let [rest @ .., b'/'] = script {
        script = rest;
    }
    if script.is_empty() {
        return (script, path);
    }
    if let Some(rest) = path.strip_prefix(script) {
        if rest.is_empty() || rest[0] == b'/' {
            return (script, rest);
        }
    }
    if modifier30 {
        // uWSGI's rule: drop len(SCRIPT_NAME) bytes whatever they are.
        let cut = script.len().min(path.len());
        return (script, &path[cut..]);
    }
    (script, path)
}

/// Decodes `%XX` escapes; a malformed escape is kept as it is.
pub fn percent_decode(s: &[u8]) -> Vec<u8> {
    percent_decode_cow(s).into_owned()
}

/// [`percent_decode`], borrowing `s` when it has nothing to decode (the usual path).
pub fn percent_decode_cow(s: &[u8]) -> Cow<'_, [u8]> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let Some(first) = s.iter().position(|&b| b == b'%') else {
        return Cow::Borrowed(s);
    };
    let mut out = Vec::with_capacity(s.len());
    out.extend_from_slice(&s[..first]);
    let mut i = first;
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
    Cow::Owned(out)
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

    #[test]
    fn normalising_into_an_earlier_list_gives_what_a_fresh_one_gives() {
        let pairs = [
            ("REQUEST_METHOD", "POST"),
            ("HTTP_ACCEPT", "a"),
            ("HTTP_ACCEPT", "b"),
            ("CONTENT_LENGTH", "3"),
            ("REQUEST_URI", "/x?y"),
        ];
        let earlier = run(&[("REQUEST_METHOD", "GET"), ("HTTP_X", "stale")]).vars;
        let capacity = earlier.capacity();
        let into = normalise_into(
            pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
            Defaults {
                server_name: b"fallback",
                server_port: b"3031",
                ..Defaults::default()
            },
            earlier,
        )
        .unwrap();
        assert_eq!(into, run(&pairs));
        assert!(into.vars.capacity() >= capacity, "the list's room is kept");
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
        assert_eq!(
            cgi.notes.iter().collect::<Vec<_>>(),
            ["SCRIPT_NAME without PATH_INFO taken as the whole path"]
        );
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

    // regression: nginx `include fastcgi_params; fastcgi_param SCRIPT_NAME /app;` (or
    // `scgi_param SCRIPT_NAME /app;`) sent every URL under /app to the app as
    // PATH_INFO=/app: the user's SCRIPT_NAME was taken for the stock whole path.
    #[test]
    fn a_script_name_the_path_goes_on_past_is_a_mount_point() {
        let user = |doc: Option<&'static str>, uri: &'static str| {
            let mut v = vec![
                ("REQUEST_METHOD", "GET"),
                ("SCRIPT_NAME", "/app/x/y"),
                ("REQUEST_URI", uri),
                ("SCRIPT_NAME", "/app"),
            ];
            if let Some(d) = doc {
                v.push(("DOCUMENT_URI", d));
            }
            run_with(&v, true, &[])
        };
        let cgi = user(Some("/app/x/y"), "/app/x/y?q=1");
        assert_eq!(paths(&cgi), ("/app".into(), "/x/y".into()));
        assert_eq!(
            cgi.notes.iter().collect::<Vec<_>>(),
            ["SCRIPT_NAME without PATH_INFO taken as the mount point the path goes on from"]
        );
        // No DOCUMENT_URI (SCGI without it, Apache): REQUEST_URI's path, decoded.
        assert_eq!(
            paths(&user(None, "/app/caf%C3%A9?q")),
            ("/app".into(), "/café".into())
        );
        // The mount itself, and a path only sharing its first letters: the whole path.
        assert_eq!(
            paths(&user(Some("/app"), "/app")),
            ("".into(), "/app".into())
        );
        // regression: a path only sharing the mount's first letters (`location /app`
        // matches /apple/x) went to the app as PATH_INFO=/app, another route.
        assert_eq!(
            paths(&user(Some("/apple/x"), "/apple/x")),
            ("".into(), "/apple/x".into())
        );
        assert_eq!(
            user(Some("/apple/x"), "/apple/x")
                .notes
                .iter()
                .collect::<Vec<_>>(),
            ["SCRIPT_NAME set aside: the request's whole path does not go on from it"]
        );
        // regression (review of the fix above): a public prefix whose path was
        // stripped before it came (`rewrite ^/app(/.*)$ $1 break;`, or a proxy in front)
        // lost its SCRIPT_NAME: DOCUMENT_URI that does not start with it at all leaves it
        // the mount point.
        assert_eq!(
            paths(&user(Some("/x"), "/app/x")),
            ("/app".into(), "/x".into())
        );
        // regression (review): a stripped route that starts like the prefix (/app/apple
        // rewritten to /apple) lost it: REQUEST_URI, before the rewrite, goes on past it.
        assert_eq!(
            paths(&user(Some("/apple"), "/app/apple")),
            ("/app".into(), "/apple".into())
        );
        // The stock SCRIPT_NAME of a path ending in `/` is the whole path, noted so.
        let cgi = run_with(
            &[
                ("REQUEST_METHOD", "GET"),
                ("SCRIPT_NAME", "/a/"),
                ("REQUEST_URI", "/a/"),
                ("DOCUMENT_URI", "/a/"),
            ],
            true,
            &[],
        );
        assert_eq!(paths(&cgi), ("".into(), "/a/".into()));
        assert_eq!(
            cgi.notes.iter().collect::<Vec<_>>(),
            ["SCRIPT_NAME without PATH_INFO taken as the whole path"]
        );
        // A SCRIPT_NAME ending in `/` set by the admin is a mount point too.
        let mut v = vec![
            ("REQUEST_METHOD", "GET"),
            ("SCRIPT_NAME", "/ftr/"),
            ("DOCUMENT_URI", "/ftr/x"),
        ];
        assert_eq!(
            paths(&run_with(&v, true, &[])),
            ("/ftr".into(), "/x".into())
        );
        // fastcgi_index: SCRIPT_NAME is DOCUMENT_URI plus the index name (stock).
        v[1] = ("SCRIPT_NAME", "/fidx/index.py");
        v[2] = ("DOCUMENT_URI", "/fidx/");
        assert_eq!(
            paths(&run_with(&v, true, &[])),
            ("".into(), "/fidx/index.py".into())
        );
        // Without DOCUMENT_URI a rewritten stock SCRIPT_NAME cannot be told from it:
        // SCRIPT_NAME stays the whole path.
        assert_eq!(paths(&user(None, "/apple/x")), ("".into(), "/app".into()));
        // Stock params: SCRIPT_NAME = DOCUMENT_URI = $uri, whatever REQUEST_URI was
        // before a rewrite (`rewrite ^(.*)/extra$ $1;`): still the whole path.
        let stock = |script: &'static str, doc: &'static str, uri: &'static str| {
            paths(&run_with(
                &[
                    ("REQUEST_METHOD", "GET"),
                    ("SCRIPT_NAME", script),
                    ("REQUEST_URI", uri),
                    ("DOCUMENT_URI", doc),
                ],
                true,
                &[],
            ))
        };
        assert_eq!(
            stock("/a/b", "/a/b", "/a/b/extra"),
            ("".into(), "/a/b".into())
        );
        // nginx's $uri of /a/b// is /a/b/: never a mount.
        assert_eq!(
            stock("/a/b/", "/a/b/", "/a/b//"),
            ("".into(), "/a/b/".into())
        );
        // fastcgi_split_path_info without a PATH_INFO param: CGI's split.
        assert_eq!(
            stock("/index.py", "/index.py/p/q", "/index.py/p/q"),
            ("/index.py".into(), "/p/q".into())
        );
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

    // regression (probe 382): a path the front server had split already (Apache's
    // `ProxyPass /pf/ fcgi://…` with `proxy-fcgi-pathinfo`, mod_proxy_uwsgi, nginx's
    // `fastcgi_split_path_info` or a regex capture) whose own part starts with the mount's
    // name was cut again: `/pf/pf/admin/users` reached the app as `/admin/users`, past
    // a `<Location /pf/admin>` that denied `/pf/admin/users`.
    #[test]
    fn a_path_the_front_server_split_already_is_not_cut_again() {
        let split = |pairs: &[(&'static str, &'static str)], script_name_is_path: bool| {
            let mut all = vec![("REQUEST_METHOD", "GET")];
            all.extend_from_slice(pairs);
            let cgi = run_with(&all, script_name_is_path, &[]);
            paths(&cgi)
        };
        let p = |s: &str, i: &str| (s.to_owned(), i.to_owned());
        // Apache (FastCGI and uwsgi alike): SCRIPT_NAME, the rest, the URI as sent.
        for uri in [
            "/pf/pf/admin/users",
            "/pf/pf/admin/users?x=1",
            "//pf//pf/admin/./users",
        ] {
            let pairs = [
                ("SCRIPT_NAME", "/pf"),
                ("PATH_INFO", "/pf/admin/users"),
                ("REQUEST_URI", uri),
            ];
            assert_eq!(split(&pairs, false), p("/pf", "/pf/admin/users"), "{uri}");
            assert_eq!(split(&pairs, true), p("/pf", "/pf/admin/users"), "{uri}");
        }
        // A path that is split by one front server's reading of REQUEST_URI and whole
        // by another's is refused (review 417: `/pf/pf//../admin/users` is `/pf/pf/admin/
        // users` behind `merge_slashes off`, split as `/pf` + `/pf/admin/users`, and cut
        // again the app got `/admin/users`; review 418: kept for that, the same request
        // sent whole by a default nginx as `/pf/admin/users` reached the app's
        // `/pf/admin/users`; Apache resolves `..` before it decodes `%2F`, nginx after).
        let refused = |pairs: &[(&'static str, &'static str)]| {
            let mut all = vec![("REQUEST_METHOD", "GET")];
            all.extend_from_slice(pairs);
            let got = normalise(
                all.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
                Defaults::default(),
            );
            matches!(got, Err(ProtoError::AmbiguousPath { .. }))
        };
        for (script, uri, path_info) in [
            ("/pf", "/pf/pf//../admin/users", "/pf/admin/users"),
            ("/wf", "/wf/wf//../admin", "/wf/admin"),
            ("/pf", "/pf/pf/a%2F../../admin/users", "/pf/admin/users"),
            ("/pf", "/pf/pf/%2F/%2E.", "/pf/"),
            // Apache with `AllowEncodedSlashes On` resolves `..` again once `%2F` is
            // decoded: `/pf/pf/admin` there (review 419).
            ("/pf", "/pf/x%2F../../pf/pf%2F..%2Fadmin", "/pf/admin"),
            ("/pf/", "/pf//x//../../pf/admin", "/pf/admin"),
        ] {
            let pairs = [
                ("SCRIPT_NAME", script),
                ("PATH_INFO", path_info),
                ("REQUEST_URI", uri),
            ];
            assert!(refused(&pairs), "{uri}");
        }
        // Split by every reading (or whole by every one): no doubt.
        for (uri, path_info, want) in [
            ("/pf/pf/x//..//../admin", "/pf/x/admin", "/pf/x/admin"),
            ("/pf/pf/x//..//../admin", "/pf/admin", "/admin"),
            // A PATH_INFO with `//` comes from a front server that keeps them.
            (
                "/pf/pf//../admin//users",
                "/pf/admin//users",
                "/pf/admin//users",
            ),
            ("/pf/pf/a%2Fb/../admin", "/pf/pf/admin", "/pf/admin"),
            ("/pf/pf/a%2Fb/../admin", "/pf/a/admin", "/pf/a/admin"),
        ] {
            let pairs = [
                ("SCRIPT_NAME", "/pf"),
                ("PATH_INFO", path_info),
                ("REQUEST_URI", uri),
            ];
            assert_eq!(split(&pairs, false), p("/pf", want), "{uri}");
        }
        // DOCUMENT_URI, nginx's own reading, settles it.
        let with_document_uri = |document_uri| {
            split(
                &[
                    ("SCRIPT_NAME", "/pf"),
                    ("PATH_INFO", "/pf/admin/users"),
                    ("REQUEST_URI", "/pf/pf//../admin/users"),
                    ("DOCUMENT_URI", document_uri),
                ],
                false,
            )
        };
        assert_eq!(
            with_document_uri("/pf/admin/users"),
            p("/pf", "/admin/users")
        );
        assert_eq!(
            with_document_uri("/pf/pf/admin/users"),
            p("/pf", "/pf/admin/users")
        );
        assert_eq!(
            split(
                &[
                    ("SCRIPT_NAME", "/pf"),
                    ("PATH_INFO", "/pf"),
                    ("REQUEST_URI", "/pf/pf")
                ],
                false
            ),
            p("/pf", "/pf")
        );
        // nginx's uwsgi_params with `uwsgi_param SCRIPT_NAME /app;`: PATH_INFO is the
        // whole path, cut as before, `/app/app/x` too.
        for (uri, path_info, rest) in [
            ("/app/x", "/app/x", "/x"),
            ("/app/app/x", "/app/app/x", "/app/x"),
            ("/app//x", "/app/x", "/x"),
            ("/app", "/app", ""),
        ] {
            let pairs = [
                ("SCRIPT_NAME", "/app"),
                ("PATH_INFO", path_info),
                ("REQUEST_URI", uri),
            ];
            assert_eq!(split(&pairs, false), p("/app", rest), "{uri}");
        }
        // `rewrite ^/rw(/.*)$ $1 break;` + `fastcgi_param SCRIPT_NAME /rw;` (the stock
        // SCRIPT_NAME, `$fastcgi_script_name`, before it): the rewrite stripped the mount.
        let rewritten = |uri, document_uri| {
            [
                ("SCRIPT_NAME", document_uri),
                ("REQUEST_URI", uri),
                ("DOCUMENT_URI", document_uri),
                ("SCRIPT_NAME", "/rw"),
            ]
        };
        assert_eq!(
            split(&rewritten("/rw/rw/x", "/rw/x"), true),
            p("/rw", "/rw/x")
        );
        // Its SCRIPT_NAME then equals DOCUMENT_URI, the stock value: the whole path, as
        // for any stock request (a client never chooses SCRIPT_NAME: review 383).
        assert_eq!(split(&rewritten("/rw/rw", "/rw"), true), p("", "/rw"));
        // The front server and postern read the target apart: `#` (nginx's `$uri` stops
        // there, REQUEST_URI goes on), a `%2F` Apache's `AllowEncodedSlashes NoDecode`
        // keeps in PATH_INFO (review 383: both were cut again).
        for (uri, path_info) in [
            ("/fs/fs/admin#x", "/fs/admin"),
            ("/fs/fs/admin#/../../y", "/fs/admin"),
            ("/fs/fs/admin/users%2Fx", "/fs/admin/users%2Fx"),
            ("/fs/fs/%61dmin/users%2Fx", "/fs/admin/users%2Fx"),
        ] {
            let pairs = [
                ("SCRIPT_NAME", "/fs"),
                ("PATH_INFO", path_info),
                ("REQUEST_URI", uri),
            ];
            assert_eq!(split(&pairs, false), p("/fs", path_info), "{uri}");
        }
        // The whole path whatever follows a `#`: cut.
        let pairs = [
            ("SCRIPT_NAME", "/app"),
            ("PATH_INFO", "/app/x"),
            ("REQUEST_URI", "/app/x#/../../app/app/x"),
        ];
        assert_eq!(split(&pairs, false), p("/app", "/x"));
        // nginx's stock params on a root location: `#` and `..` after it choose
        // nothing (review 383: `/evil#/../../evil/evil` gave SCRIPT_NAME /evil).
        let stock = [
            ("SCRIPT_NAME", "/evil"),
            ("REQUEST_URI", "/evil#/../../evil/evil"),
            ("DOCUMENT_URI", "/evil"),
        ];
        assert_eq!(split(&stock, true), p("", "/evil"));
        // A rewrite in front of uwsgi_params' whole path (`/app/old/x` to `/app/new/x`):
        // cut as before.
        let pairs = [
            ("SCRIPT_NAME", "/app"),
            ("PATH_INFO", "/app/new/x"),
            ("REQUEST_URI", "/app/old/x"),
        ];
        assert_eq!(split(&pairs, false), p("/app", "/new/x"));
        // The stock params alone, no rewrite: as before.
        let stock = [
            ("SCRIPT_NAME", "/rw/x"),
            ("REQUEST_URI", "/rw/x"),
            ("DOCUMENT_URI", "/rw/x"),
        ];
        assert_eq!(split(&stock, true), p("", "/rw/x"));
    }

    // regression (probe 382): without DOCUMENT_URI (Apache, SCGI) the path taken from
    // REQUEST_URI was only decoded: `/a%2F..%2Fb` gave `/a/../b` where nginx's `$uri` is
    // `/b`, `//pfe/a` and an absolute-form target (`http://host/pfe/a`) went to `/pfe`.
    #[test]
    fn a_path_from_request_uri_is_normalised_as_nginx_normalises_uri() {
        let cases: [(&str, &str); 17] = [
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/", "/"),
            ("", ""),
            ("*", "*"),
            ("/a/b?x=/../y", "/a/b"),
            ("/a%2F..%2Fb", "/b"),
            ("/..%2F..%2Fetc%2Fpasswd", "/etc/passwd"),
            ("/a/../b", "/b"),
            ("/a/./b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("//a//b", "/a/b"),
            ("/a/%2e%2e/b", "/b"),
            ("http://h:80/pfe/a/b?x=1", "/pfe/a/b"),
            ("https://h", "/"),
            ("/x%20y/", "/x y/"),
            ("/a/b#/../../c", "/a/b"),
        ];
        for (uri, want) in cases {
            assert_eq!(&request_path(uri.as_bytes())[..], want.as_bytes(), "{uri}");
        }
        assert!(matches!(request_path(b"/a/b/?q"), Cow::Borrowed(_)));
        // With `//` kept, as nginx 1.22's `$uri` under `merge_slashes off` reads them.
        let kept = [
            ("/pf/pf//../admin/users", "/pf/pf/admin/users"),
            ("/a//../b", "/a/b"),
            ("/a///../../b", "/a/b"),
            ("/a/%2e%2e/b", "/b"),
            ("/a//%2E%2E/b", "/a/b"),
            ("/a//./b", "/a//b"),
            ("/a//b//", "/a//b//"),
            ("/a//..", "/a/"),
            ("/a/./", "/a/"),
            ("/..", "/"),
        ];
        for (uri, want) in kept {
            let got = request_path_as(uri.as_bytes(), Slashes::Kept);
            assert_eq!(&got[..], want.as_bytes(), "{uri}");
        }
        assert!(matches!(
            request_path_as(b"//a//b/", Slashes::Kept),
            Cow::Borrowed(_)
        ));
        let cgi = run_with(
            &[
                ("REQUEST_METHOD", "GET"),
                ("SCRIPT_NAME", "/pfe"),
                ("REQUEST_URI", "//pfe/a/b"),
            ],
            true,
            &[],
        );
        assert_eq!(paths(&cgi), ("/pfe".into(), "/a/b".into()));
        let cgi = run_with(
            &[
                ("REQUEST_METHOD", "GET"),
                ("SCRIPT_NAME", "/pfe"),
                ("REQUEST_URI", "/pfe/a%2F..%2Fb"),
            ],
            true,
            &[],
        );
        assert_eq!(paths(&cgi), ("/pfe".into(), "/b".into()));
        // Climbing out of the mount: no `..` reaches the app (the stock rule then
        // takes SCRIPT_NAME for the whole path).
        let cgi = run_with(
            &[
                ("REQUEST_METHOD", "GET"),
                ("SCRIPT_NAME", "/pfe"),
                ("REQUEST_URI", "/pfe/..%2F..%2Fetc%2Fpasswd"),
            ],
            true,
            &[],
        );
        assert_eq!(paths(&cgi), ("".into(), "/pfe".into()));
    }

    // Over uwsgi SCRIPT_NAME and PATH_INFO come as the front server split them: a
    // SCRIPT_NAME PATH_INFO does not go on from is kept (it cannot be told from a public
    // prefix a proxy in front stripped: review of 81c5f84, /public + /publications).
    #[test]
    fn over_uwsgi_a_script_name_beside_a_path_it_does_not_start_is_kept() {
        let uwsgi = |path_info: &'static str, uri: &'static str, modifier30: bool| {
            let cgi = normalise(
                [
                    ("REQUEST_METHOD", "GET"),
                    ("SCRIPT_NAME", "/app"),
                    ("PATH_INFO", path_info),
                    ("REQUEST_URI", uri),
                ]
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_bytes())),
                Defaults {
                    modifier30,
                    ..Defaults::default()
                },
            )
            .unwrap();
            (paths(&cgi), cgi.notes.iter().count())
        };
        assert_eq!(
            uwsgi("/application/x", "/application/x?q=1", false),
            (("/app".into(), "/application/x".into()), 0)
        );
        assert_eq!(
            uwsgi("/appé", "/app%C3%A9", false),
            (("/app".into(), "/appé".into()), 0)
        );
        assert_eq!(
            uwsgi("/app/x", "/app/x", false),
            (("/app".into(), "/x".into()), 0)
        );
        // A PATH_INFO that is not the whole path (a rewrite, or the front server's own
        // split) is the front server's word: kept with its SCRIPT_NAME.
        assert_eq!(
            uwsgi("/other", "/application/x", false),
            (("/app".into(), "/other".into()), 0)
        );
        // The public prefix of a path stripped before it came (a proxy in front:
        // `proxy_pass http://inner/;`), whether or not the route starts like it.
        assert_eq!(uwsgi("/x", "/x", false), (("/app".into(), "/x".into()), 0));
        assert_eq!(
            uwsgi("/apple", "/apple", false),
            (("/app".into(), "/apple".into()), 0)
        );
        // modifier1 30 cuts len(SCRIPT_NAME) bytes whatever they are (uWSGI's rule).
        assert_eq!(
            uwsgi("/application/x", "/application/x", true),
            (("/app".into(), "lication/x".into()), 0)
        );
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
            .find(|v| v.key == key.as_bytes())
            .map(|v| &*v.value)
    }

    #[test]
    fn both_hashes_agree() {
        for k in KNOWN
            .iter()
            .map(|k| k.as_bytes())
            .chain([&b""[..], b"A", b"HTTP_X_ANYTHING"])
        {
            assert_eq!(bucket(k), bucket_const(k), "{k:?}");
        }
    }

    #[test]
    fn finds_every_known_name_and_nothing_else() {
        for (i, k) in KNOWN.iter().enumerate() {
            assert_eq!(known(k.as_bytes()), Some(i as u8), "{k}");
        }
        for k in [
            "",
            "HTTP_X",
            "REQUEST_METHOd",
            "XREQUEST_METHOD",
            "HTTP_HOST_",
        ] {
            assert_eq!(known(k.as_bytes()), None, "{k}");
        }
        // Probes stay short: no run of occupied slots longer than 4.
        let longest = TABLE.split(|&s| s == 0).map(<[u8]>::len).max().unwrap_or(0);
        assert!(longest <= 4, "a run of {longest} occupied slots");
    }

    #[test]
    fn the_guess_by_position_never_changes_the_answer() {
        let names: Vec<&[u8]> = KNOWN
            .iter()
            .map(|k| k.as_bytes())
            .chain([&b"HTTP_X"[..], b"SERVER_NAMe", b"AB", b"ABCDE", b""])
            .collect();
        // The same position asked with every name in turn (each a miss after the
        // previous one), then again (each a hit), and the same word lengths that differ.
        let mut last = [NO_GUESS; GUESSES];
        for round in 0..2 {
            for (i, k) in names.iter().enumerate() {
                for pos in [0, i, 63, 64, 200] {
                    assert_eq!(known_at(&mut last, pos, k), known(k), "{round} {pos} {k:?}");
                }
            }
        }
        assert!(same(b"ABCDE", b"ABCDE") && !same(b"ABCDE", b"ABCDF") && !same(b"ABCD", b"XBCD"));
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
                .filter(|v| v.key.starts_with(b"HTTP_X_"))
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

    // regression: docs/protocols.md §4.2 said HTTP_CONNECTION was dropped; it is passed
    // through (as uWSGI and gunicorn do), and the doc now says so: this pins it.
    #[test]
    fn passes_http_connection_through() {
        let cgi = run(&[("REQUEST_METHOD", "GET"), ("HTTP_CONNECTION", "keep-alive")]);
        assert_eq!(val(&cgi, "HTTP_CONNECTION"), Some(&b"keep-alive"[..]));
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
        for bad in [
            "-1",
            "1e3",
            " 5",
            "99999999999999999999",
            "0x10",
            // regression (sec M2): 19 digits at or past 2^63 were taken.
            "9223372036854775808",
            "18446744073709551615",
            "9999999999999999999",
        ] {
            let r = normalise(
                [(&b"CONTENT_LENGTH"[..], bad.as_bytes())],
                Defaults::default(),
            );
            assert!(matches!(r, Err(ProtoError::BadContentLength(_))), "{bad}");
        }
    }

    #[test]
    fn accepts_a_content_length_up_to_2_pow_63_less_1() {
        for (v, n) in [
            ("0", 0),
            ("0000000000000000005", 5),
            ("9223372036854775807", i64::MAX as u64),
        ] {
            assert_eq!(parse_content_length(v.as_bytes()), Ok(n), "{v}");
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

    // regression: nginx's scgi_params send DOCUMENT_URI (`$document_uri`, normalised:
    // `//` merged, `.` and `..` resolved, decoded) and no PATH_INFO; the path came from
    // REQUEST_URI instead, so an app behind uwsgi_pass (PATH_INFO = `$document_uri`)
    // and scgi_pass saw two paths for one URL.
    #[test]
    fn derives_path_info_from_document_uri_before_request_uri() {
        let cgi = run(&[
            ("REQUEST_METHOD", "GET"),
            ("REQUEST_URI", "/a//b/./c/../d%2520e?x=1"),
            ("DOCUMENT_URI", "/a/b/d%20e"),
        ]);
        // Taken as it is: nginx decoded it once already.
        assert_eq!(val(&cgi, "PATH_INFO"), Some(&b"/a/b/d%20e"[..]));
        // An empty one says nothing: REQUEST_URI's path, decoded.
        let cgi = run(&[
            ("REQUEST_METHOD", "GET"),
            ("REQUEST_URI", "/a%20b?x"),
            ("DOCUMENT_URI", ""),
        ]);
        assert_eq!(val(&cgi, "PATH_INFO"), Some(&b"/a b"[..]));
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
        assert_eq!((s, p), (&b"/app"[..], &b"/application"[..]));
        let (s, p) = split_script_name(b"/", b"/x", false);
        assert_eq!((s, p), (&b""[..], &b"/x"[..]));
        let (s, p) = split_script_name(b"/app", b"/app", false);
        assert_eq!((s, p), (&b"/app"[..], &b""[..]));
        let (_, p) = split_script_name(b"/ab", b"/xyz/q", true);
        assert_eq!(p, b"z/q");
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
