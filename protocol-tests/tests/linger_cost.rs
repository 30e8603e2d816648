//! What the protection of a response under way costs over TCP (uwsgi, SCGI): SO_LINGER
//! 0 is set while a response may still be cut (so that the worker's exit mid-stream is
//! a reset, not a FIN nginx takes for its end), and a response known to be whole at its
//! first write never pays for it: an iterator of one chunk that meets its
//! Content-Length (Flask's and Django's responses), nor an empty body (a redirect). A
//! stream is protected from its first chunk, and so is a one-chunk iterator without a
//! Content-Length (nothing tells it from a stream's first event). Counted with strace
//! (skipped without it, failing under `CI=true`).
use std::process::Command;
use std::time::Duration;

use protocol_tests::harness::{children, in_ci, postern_bin, tempdir, wait_until, Postern, Spawn};

const APP: &str = r#"
def application(env, start_response):
    path = env['PATH_INFO']
    if path == '/iter':
        start_response('200 OK', [('Content-Length', '5')])
        return iter([b'hello'])
    if path == '/iter-no-length':
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return iter([b'hello'])
    if path == '/redirect':
        start_response('302 Found', [('Location', '/x')])
        return [b'']
    if path == '/redirect-iter':
        start_response('302 Found', [('Location', '/x')])
        return iter([b''])
    if path == '/short-first':
        start_response('200 OK', [('Content-Length', '10')])
        return iter([b'abc', b'defghij'])
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return (b'chunk %d\n' % i for i in range(3))
"#;

fn have_strace() -> bool {
    Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_one_write_response_sets_no_so_linger_and_a_stream_does() {
    if !have_strace() {
        assert!(!in_ci(), "strace is missing (CI=true)");
        eprintln!("SKIPPED: strace is missing");
        return;
    }
    let dir = tempdir();
    let app = dir.path().join("linger_app.py");
    std::fs::write(&app, APP).unwrap();
    let trace = dir.path().join("strace.txt");
    let spawn = Spawn::tcp(dir.path(), app.to_str().unwrap()).args(["--threads", "1"]);
    let addr = spawn.addr().arg();
    let inner = spawn.command();
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-e", "trace=setsockopt", "-o"])
        .arg(&trace)
        .arg(inner.get_program())
        .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let p = Postern::spawn(cmd, spawn.addr().clone(), dir.path(), None);
    let lingers = || {
        std::fs::read_to_string(&trace)
            .unwrap_or_default()
            .matches("SO_LINGER")
            .count()
    };
    let mut counts = Vec::new();
    for path in [
        "/iter",
        "/iter-no-length",
        "/redirect",
        "/redirect-iter",
        "/short-first",
        "/stream",
    ] {
        let before = lingers();
        let out = Command::new(postern_bin())
            .args(["request", &format!("uwsgi://{addr}{path}")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{path}: {out:?}");
        // The access line follows the response's end (and its SO_LINGER calls).
        std::thread::sleep(Duration::from_millis(200));
        counts.push((path, lingers() - before));
    }
    for pid in children(p.pid()) {
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    wait_until(10, || children(p.pid()).is_empty());
    let expected = [
        ("/iter", 0),
        // Could be a stream's first event (server-sent events have no length).
        ("/iter-no-length", 2),
        ("/redirect", 0),
        ("/redirect-iter", 0),
        // Set at the write that leaves the Content-Length short, cleared at the end.
        ("/short-first", 2),
        ("/stream", 2),
    ];
    assert_eq!(counts, expected, "SO_LINGER calls per response");
}
