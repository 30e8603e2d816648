//! Property tests of the environ as Python sees it (issue 10 §1), run by `cargo test
//! props` on the embedded interpreter: nothing but latin-1 `str` values reaches the app,
//! each the exact bytes the front server sent (after the rules of `proto::cgi`), postern's
//! own `wsgi.*` entries are never replaced by a request variable, and an environ built by
//! a thread that has served other requests (its caches of strings and dict shapes warm)
//! equals one built from scratch.

use std::sync::Arc;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use super::environ::{build, Keys};
use super::{ListenerInfo, Settings};
use crate::codec::{Head, Protocol};
use crate::logging::RequestId;
use crate::proto::cgi;
use crate::proto::props::{config, Pairs};

fn python() {
    super::interpreter::start_for_tests();
}

fn settings() -> Settings {
    Settings {
        threads: 1,
        sched_batch: crate::server::sched::SchedBatch::Off,
        multiprocess: false,
        monitor: None,
        mounts: vec![b"/app".to_vec()],
    }
}

fn listener(protocol: Protocol) -> ListenerInfo {
    ListenerInfo {
        protocol,
        server_name: Arc::from(&b"fallback.example"[..]),
        server_port: Arc::from(&b"3031"[..]),
    }
}

fn head(pairs: &Pairs) -> Head {
    let mut head = Head {
        buf: bytes::Bytes::new(),
        vars: Vec::new(),
        modifier30: false,
        content_length: 0,
    };
    for (k, v) in pairs {
        head.push_var(k, v);
    }
    head
}

/// The environ's entries in order: key, and the latin-1 bytes of a `str` value (`None`
/// for other values). Leaves out the per-request objects (input, errors, request id).
type Entries = Vec<(String, Option<Vec<u8>>)>;

fn entries(env: &Bound<'_, PyDict>) -> PyResult<Entries> {
    let mut out = Vec::new();
    for (k, v) in env.iter() {
        let key: String = k.extract()?;
        if matches!(
            &key[..],
            "wsgi.input" | "wsgi.errors" | "postern.request_id"
        ) {
            continue;
        }
        let value = match v.cast::<PyString>() {
            // Fails for any code point above U+00FF: the test fails with it.
            Ok(s) => Some(
                s.call_method1("encode", ("latin-1",))?
                    .extract::<Vec<u8>>()?,
            ),
            Err(_) => None,
        };
        out.push((key, value));
    }
    Ok(out)
}

/// Builds the environ of `pairs` with `keys`; `None` when the request is refused (a
/// CONTENT_LENGTH that is not a number).
fn environ(py: Python<'_>, keys: &Keys, pairs: &Pairs, protocol: Protocol) -> Option<Entries> {
    let head = head(pairs);
    let id = RequestId::for_head(&head);
    let built = build(
        py,
        keys,
        &head,
        &listener(protocol),
        &settings(),
        &id,
        None,
        None,
    )
    .ok()?;
    Some(entries(&built.environ).expect("reading the environ back"))
}

/// Names the rules act on, header names, unknown names, and names that look like
/// postern's own entries.
fn name() -> impl Strategy<Value = Vec<u8>> {
    let fixed: Vec<Vec<u8>> = cgi::KNOWN
        .iter()
        .map(|k| k.as_bytes().to_vec())
        .chain([
            b"HTTP_X_A".to_vec(),
            b"X_CUSTOM".to_vec(),
            b"wsgi.url_scheme".to_vec(),
            b"wsgi.input".to_vec(),
            b"wsgi.version".to_vec(),
            b"postern.request_id".to_vec(),
        ])
        .collect();
    // The scheme names often: a scheme that changes while the names stay the same is
    // what a cached dict shape must notice.
    let scheme: Vec<Vec<u8>> = ["HTTPS", "UWSGI_SCHEME", "REQUEST_SCHEME"]
        .iter()
        .map(|k| k.as_bytes().to_vec())
        .collect();
    prop_oneof![
        6 => proptest::sample::select(fixed),
        2 => proptest::sample::select(scheme),
        2 => vec(any::<u8>(), 1..10),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => Just(Vec::new()),
        2 => proptest::sample::select(vec![b"https".to_vec(), b"http".to_vec(), b"on".to_vec()]),
        2 => (0u64..1000).prop_map(|n| n.to_string().into_bytes()),
        4 => vec(any::<u8>(), 0..12),
    ]
}

/// Requests a front server sends one after the other on a thread: the same names in the
/// same order (its params file), different values, now and then a name left out.
fn requests() -> impl Strategy<Value = Vec<Pairs>> {
    (
        vec(name(), 0..16),
        vec(
            (vec(value(), 16), proptest::option::of(any::<Index>())),
            1..8,
        ),
    )
        .prop_map(|(names, requests)| {
            requests
                .into_iter()
                .map(|(values, drop)| {
                    let mut pairs: Pairs = names.iter().cloned().zip(values).collect();
                    if let Some(i) = drop.filter(|_| !pairs.is_empty()) {
                        pairs.remove(i.index(pairs.len()));
                    }
                    pairs
                })
                .collect()
        })
}

proptest! {
    #![proptest_config(config(128))]

    /// For each request of a sequence on one thread: the environ equals one built by a
    /// fresh thread state, key for key in the same order; every CGI value is a `str` whose
    /// latin-1 encoding is the bytes the rules give; `wsgi.url_scheme` is the scheme they
    /// chose, `wsgi.version` is (1, 0): no request variable replaces postern's entries.
    #[test]
    fn props_environ_is_latin1_and_the_same_whatever_came_before(
        requests in requests(),
        fastcgi in any::<bool>(),
    ) {
        python();
        let protocol = if fastcgi { Protocol::FastCgi } else { Protocol::Uwsgi };
        Python::attach(|py| -> Result<(), TestCaseError> {
            let warm = Keys::new(py, &settings());
            for pairs in &requests {
                let got = environ(py, &warm, pairs, protocol);
                let fresh = environ(py, &Keys::new(py, &settings()), pairs, protocol);
                prop_assert_eq!(&got, &fresh);
                let Some(got) = got else { continue };

                let head = head(pairs);
                let mounts = settings().mounts;
                let rules = cgi::normalise(head.pairs(), cgi::Defaults {
                    server_name: b"fallback.example",
                    server_port: b"3031",
                    modifier30: false,
                    script_name_is_path: fastcgi,
                    mounts: &mounts,
                }).unwrap();
                let get = |key: &str| got.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
                for var in &rules.vars {
                    let key: String = var.key.iter().map(|&b| char::from(b)).collect();
                    if key.starts_with("wsgi.") || key.starts_with("postern.") {
                        continue;
                    }
                    prop_assert_eq!(get(&key), Some(Some(var.value.to_vec())), "{}", key);
                }
                prop_assert_eq!(get("wsgi.url_scheme"), Some(Some(rules.scheme.as_bytes().to_vec())));
                prop_assert_eq!(get("wsgi.version"), Some(None));
            }
            Ok(())
        })?;
    }
}
