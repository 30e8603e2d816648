//! A worker of the serving generation that dies during a reload is not started again
//! with the reload's settings (reported, unverified: "forked with the reload's log
//! level"). The master replaces nobody of a generation a reload is replacing; workers
//! it starts during the reload are the reload's own (its settings, by design); and
//! once a failed reload rolls back, the one it starts in the dead worker's place runs
//! the serving generation's settings (here: logs at info, not at the reload's debug).
//! Verified: no such bug (passes on 414dbea).

use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol_tests::harness::*;

/// An app whose import waits while the file `$GATE` exists (having made `$ARRIVED`),
/// then fails when `$FAIL` is set.
fn gated_app(dir: &Path) -> PathBuf {
    let app = dir.join("gated.py");
    std::fs::write(
        &app,
        "import os, time\n\
         gate = os.environ.get('GATE')\n\
         if gate:\n    open(os.environ['ARRIVED'], 'w').close()\n\
         while gate and os.path.exists(gate):\n    time.sleep(0.05)\n\
         if os.environ.get('FAIL'):\n    raise ImportError('broken on purpose')\n\
         def application(environ, start_response):\n    start_response('200 OK', [('Content-Length', '2')])\n    return [b'ok']\n",
    )
    .unwrap();
    app
}

/// Logged at debug only, by the worker that accepted a connection closed with no
/// request.
const DEBUG_LINE: &str = "connection closed before sending a request";

#[test]
fn a_worker_that_dies_during_a_failing_reload_comes_back_with_the_serving_settings() {
    let dir = tempdir();
    let conf = dir.path().join("postern.toml");
    let app = gated_app(dir.path());
    let (gate, arrived) = (dir.path().join("gate"), dir.path().join("arrived"));
    std::fs::write(
        &conf,
        format!("app = {app:?}\nworkers = 2\nlog-level = \"info\"\n"),
    )
    .unwrap();
    let p = Spawn::tcp(dir.path(), "--config")
        .arg(conf.to_str().unwrap())
        .start();
    assert!(p.wait_log("all 2 workers ready", 30), "{}", p.logs());
    let old = children(p.pid());
    assert_eq!(old.len(), 2, "{}", p.logs());
    // The reload: debug, its workers held in their import, then failing.
    std::fs::write(&gate, "").unwrap();
    std::fs::write(
        &conf,
        format!(
            "app = {app:?}\nworkers = 2\nlog-level = \"debug\"\n[env]\nGATE = {gate:?}\nARRIVED = {arrived:?}\nFAIL = \"1\"\n"
        ),
    )
    .unwrap();
    p.signal(libc::SIGHUP);
    assert!(wait_file(&arrived, 30), "{}", p.logs());
    unsafe { libc::kill(old[0], libc::SIGKILL) };
    let said = format!(
        "worker died unexpectedly; not replaced: a reload is replacing its generation pid={}",
        old[0]
    );
    assert!(p.wait_log(&said, 20), "{}", p.logs());
    // Nothing is started for generation 0 while the reload runs.
    std::thread::sleep(Duration::from_millis(500));
    let during = p.logs();
    let after_kill = &during[during.find(&said).unwrap()..];
    assert!(
        !after_kill.contains("worker started"),
        "a worker started during the reload:\n{during}"
    );
    // The reload fails: the master goes back to generation 0 and starts the missing
    // worker, at generation 0's info.
    std::fs::remove_file(&gate).unwrap();
    assert!(
        p.wait_log("the failed reload's settings are dropped", 30),
        "{}",
        p.logs()
    );
    // Started after the failed workers' backoff; the reload's workers gone.
    let back = || {
        let logs = p.logs();
        let from = logs
            .find("the failed reload's settings are dropped")
            .unwrap();
        logs[from..]
            .lines()
            .find(|l| l.contains("worker started"))
            .map(str::to_owned)
    };
    assert!(
        wait_until(30, || back().is_some()
            && children(p.pid()).len() == 2
            && !children(p.pid()).contains(&old[0])),
        "{:?}\n{}",
        children(p.pid()),
        p.logs()
    );
    let logs = p.logs();
    let started = back().unwrap();
    assert!(started.contains("generation=0"), "{started}\n{logs}");
    let replacement = children(p.pid())
        .into_iter()
        .find(|&c| c != old[1])
        .unwrap();
    assert!(
        started.contains(&format!("pid={replacement}")),
        "{started}\n{logs}"
    );
    assert!(wait_until(30, || p.get("/").0 == 200), "{}", p.logs());
    // Request-less connections to both workers (the kernel picks which accepts):
    // at debug, each would log DEBUG_LINE.
    assert!(
        p.wait_log(&format!("worker ready pid={replacement}"), 30),
        "{}",
        p.logs()
    );
    let before = p.logs().len();
    for _ in 0..20 {
        drop(p.addr.connect().unwrap());
        assert_eq!(p.get("/").0, 200);
    }
    std::thread::sleep(Duration::from_secs(1));
    let after = p.logs();
    let new: Vec<&str> = after[before..]
        .lines()
        .filter(|l| l.contains(DEBUG_LINE) || l.contains(" DEBUG "))
        .collect();
    assert!(
        new.is_empty(),
        "a worker after the rollback logs at the failed reload's debug:\n{new:#?}\n{after}"
    );
}
