//! Workers killed during a reload: a new one killed by a signal during its import (the
//! OOM killer's SIGKILL) is not the code failing: another starts in its place and the
//! reload goes on, within bounds; an old one is not replaced, and the log says so
//! (README "Workers, reloads and timeouts").

use std::path::Path;

use protocol_tests::harness::*;

/// Once the file `hold` exists beside it, each import takes a numbered ticket (the
/// file `ticketN`, holding its pid) and waits for the file `gate`.
const TICKET_APP: &str = "import os, time\n\nhere = os.path.dirname(__file__)\n\nif os.path.exists(os.path.join(here, 'hold')):\n    n = 0\n    while True:\n        try:\n            fd = os.open(os.path.join(here, 'ticket%d' % n), os.O_CREAT | os.O_EXCL | os.O_WRONLY)\n            break\n        except FileExistsError:\n            n += 1\n    os.write(fd, str(os.getpid()).encode())\n    os.close(fd)\n    while not os.path.exists(os.path.join(here, 'gate')):\n        time.sleep(0.01)\n\ndef application(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [str(os.getpid()).encode()]\n";

/// The pid of the worker that took ticket `n`, once it has written it.
fn ticket(dir: &Path, n: usize) -> i32 {
    let path = dir.join(format!("ticket{n}"));
    let mut pid = None;
    assert!(
        wait_until(30, || {
            pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.parse().ok());
            pid.is_some()
        }),
        "no ticket {n}"
    );
    pid.unwrap()
}

fn kill9(pid: i32) {
    // SAFETY: kill(2) on a worker of the postern this test started.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// The first master line that names `pid` and has `needle`.
fn line(p: &Postern, pid: i32, needle: &str) -> Option<String> {
    let pid = format!("pid={pid} ");
    p.logs()
        .lines()
        .find(|l| {
            l.contains("postern::supervisor::master") && l.contains(&pid) && l.contains(needle)
        })
        .map(str::to_owned)
}

/// Two workers serving; `hold` made; SIGHUP: the reload's two workers wait at their
/// imports (tickets 0 and 1).
fn reload_waiting_at_imports(dir: &Path) -> Postern {
    let app = dir.join("tickets.py");
    std::fs::write(&app, TICKET_APP).unwrap();
    let p = Spawn::unix(dir, &app.to_string_lossy())
        .args(["--master", "--workers", "2"])
        .start();
    assert!(p.wait_log("all 2 workers ready", 30), "{}", p.logs());
    std::fs::write(dir.join("hold"), "").unwrap();
    p.signal(libc::SIGHUP);
    p
}

// regression: one new worker killed with SIGKILL during its import failed the whole
// reload ("the new workers do not start", blaming the code): its healthy sibling
// drained with it, and the previous code served on held as "starts-failed".
#[test]
fn a_new_worker_killed_during_its_import_is_started_again_and_the_reload_completes() {
    let dir = tempdir();
    let p = reload_waiting_at_imports(dir.path());
    let (killed, sibling) = (ticket(dir.path(), 0), ticket(dir.path(), 1));
    kill9(killed);
    assert!(
        wait_until(20, || line(
            &p,
            killed,
            "killed by a signal during its import"
        )
        .is_some()),
        "{}",
        p.logs()
    );
    let l = line(&p, killed, "during its import").unwrap();
    assert!(
        l.contains(" WARN ")
            && l.contains("how=killed by SIGKILL")
            && l.contains("out of memory?")
            && l.contains("another starts in its place"),
        "{l}"
    );
    // Its replacement imports too (ticket 2); then all import.
    let third = ticket(dir.path(), 2);
    std::fs::write(dir.path().join("gate"), "").unwrap();
    assert!(
        p.wait_log_count("all 2 workers ready", 2, 30),
        "{}",
        p.logs()
    );
    let logs = p.logs();
    assert!(!logs.contains("reload failed"), "{logs}");
    let ready = logs
        .lines()
        .rfind(|l| l.contains("all 2 workers ready"))
        .unwrap();
    assert!(
        ready.contains(&sibling.to_string()) && ready.contains(&third.to_string()),
        "the sibling and the replacement serve: {ready}"
    );
    assert_eq!(p.get("/").0, 200);
}

// The one started in place of a killed worker killed too: the reload fails, and says
// how (not "the new workers do not start").
#[test]
fn a_reload_fails_when_the_worker_started_in_place_of_a_killed_one_is_killed_too() {
    let dir = tempdir();
    let p = reload_waiting_at_imports(dir.path());
    kill9(ticket(dir.path(), 0));
    let again = ticket(dir.path(), 2);
    kill9(again);
    assert!(
        wait_until(20, || line(&p, again, "reload failed").is_some()),
        "{}",
        p.logs()
    );
    let l = line(&p, again, "reload failed").unwrap();
    assert!(
        l.contains(" ERROR ")
            && l.contains("killed by signal SIGKILL during its import")
            && l.contains("out of memory?")
            && l.contains("in place of one killed")
            && !l.contains("do not start"),
        "{l}"
    );
    // The previous code serves on.
    std::fs::write(dir.path().join("gate"), "").unwrap();
    assert_eq!(p.get("/").0, 200);
}

// regression: a SIGHUP reload had no line naming its trigger (--touch-reload's has);
// an old worker killed mid-reload was logged "worker died unexpectedly; replacing it",
// and (rightly) nothing replaced it.
#[test]
fn an_old_worker_killed_during_a_reload_is_said_not_replaced() {
    let dir = tempdir();
    let p = reload_waiting_at_imports(dir.path());
    let (a, b) = (ticket(dir.path(), 0), ticket(dir.path(), 1));
    let l = p
        .logs()
        .lines()
        .find(|l| l.contains("SIGHUP: reload asked for"))
        .map(str::to_owned);
    assert!(
        l.as_ref()
            .is_some_and(|l| l.contains(" INFO ") && l.contains("generation=0")),
        "{}",
        p.logs()
    );
    let old = children(p.pid())
        .into_iter()
        .find(|&c| c != a && c != b && p.logs().contains(&format!("pid={c} ")))
        .expect("an old worker");
    kill9(old);
    assert!(
        wait_until(20, || line(&p, old, "died unexpectedly").is_some()),
        "{}",
        p.logs()
    );
    let l = line(&p, old, "died unexpectedly").unwrap();
    assert!(
        l.contains("not replaced: a reload is replacing its generation")
            && l.contains("generation=0")
            && !l.contains("; replacing it"),
        "{l}"
    );
    std::fs::write(dir.path().join("gate"), "").unwrap();
    assert!(
        p.wait_log_count("all 2 workers ready", 2, 30),
        "{}",
        p.logs()
    );
    assert_eq!(p.get("/").0, 200);
}

// An import that calls os._exit(0) ends the worker with no error of its own: the
// master's line says what happened, not "the app's error is logged above".
// regression (probe 385): "see the workers' error above", and none was there.
#[test]
fn an_import_that_exits_0_is_said_for_what_it_is() {
    let dir = tempdir();
    let app = dir.path().join("quits.py");
    std::fs::write(&app, "import os\nos._exit(0)\n").unwrap();
    let out = Spawn::unix(dir.path(), &app.to_string_lossy())
        .args(["--workers", "2"])
        .command()
        .output()
        .unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{logs}");
    assert!(
        logs.contains("worker failed to start: it exited with code 0 during its import, with no error: the app's module (or one it imports) called os._exit(0)"),
        "{logs}"
    );
}
