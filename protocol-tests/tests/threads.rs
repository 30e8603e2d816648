//! How one worker's Python threads share the work: a request that blocks in the app
//! lets the other threads take and serve the next connections.

use protocol_tests::harness::*;

// A request that blocks (here: waits in the app with the GIL released until the test
// arrives) must not keep the connections that come meanwhile from being served by the
// other thread. (It guarded a lazy accept token tried this session and reverted: the
// token was let go without waking a sleeping thread.)
#[test]
fn a_blocked_request_does_not_stop_the_next_connections() {
    let dir = tempdir();
    let p = Spawn::tcp(dir.path(), &testapp())
        .args(["--threads", "2"])
        .start();
    let meet = Rendezvous::new(dir.path());
    let blocked = {
        let addr = p.addr.clone();
        let target = meet.target(2, "r0");
        std::thread::spawn(move || {
            let (path, query) = target.split_once('?').unwrap();
            let pkt = uwsgi_packet(&[
                ("REQUEST_METHOD", "GET"),
                ("PATH_INFO", path),
                ("QUERY_STRING", query),
            ]);
            raw(&addr, &pkt)
        })
    };
    assert!(
        meet.wait_arrived("r0", 10),
        "the first request never reached the app\n{}",
        p.logs()
    );
    // r0 waits in the app until the test arrives: each of these is served by the other
    // thread meanwhile, or waits for r0's bound and r0 answers 504.
    for i in 0..5 {
        let (status, body) = p.get("/hello");
        assert_eq!(
            (status, body.as_slice()),
            (200, &b"hello\n"[..]),
            "request {i} while r0 blocks\n{}",
            p.logs()
        );
    }
    meet.arrive("test");
    let r = parse_http(&blocked.join().unwrap()).unwrap();
    assert_eq!(
        (r.status, r.text()),
        (200, Rendezvous::met(2)),
        "the other requests waited for the blocked one\n{}",
        p.logs()
    );
}

/// A WSGI app answering the scheduling policy of the thread that serves it.
fn policy_app(dir: &std::path::Path) -> String {
    let app = dir.join("policy_app.py");
    std::fs::write(
        &app,
        "import os\n\
         def application(environ, start_response):\n    \
             body = str(os.sched_getscheduler(0)).encode()\n    \
             start_response('200 OK', [('Content-Length', str(len(body)))])\n    \
             return [body]\n",
    )
    .unwrap();
    app.to_string_lossy().into_owned()
}

// --sched-batch starts the WSGI threads under SCHED_BATCH (a woken thread does not
// preempt nginx between its connect and its write); without it they keep the default
// policy (an app's I/O waits end sooner on busy CPUs).
#[test]
fn the_wsgi_threads_run_under_sched_batch_only_when_told() {
    const SCHED_OTHER: &str = "0";
    const SCHED_BATCH: &str = "3";
    let dir = tempdir();
    let app = policy_app(dir.path());
    for (args, want) in [
        (&[][..], SCHED_OTHER),
        (&["--sched-batch"][..], SCHED_BATCH),
        (&["--workers", "2"][..], SCHED_OTHER),
        (&["--workers", "2", "--sched-batch"][..], SCHED_BATCH),
    ] {
        let p = Spawn::tcp(dir.path(), &app)
            .args(["--threads", "2"])
            .args(args.iter().copied())
            .start();
        let (status, body) = p.get("/");
        assert_eq!(
            (status, String::from_utf8_lossy(&body).into_owned()),
            (200, want.to_owned()),
            "{args:?}\n{}",
            p.logs()
        );
    }
}
