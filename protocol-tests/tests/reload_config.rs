//! A reload (SIGHUP) reads the `--config` file again and the new workers run it, as
//! gunicorn's HUP does: threads, `--timeout`, `--workers`, the app and `[env]` change
//! with the new generation; an invalid file refuses the reload (the workers serve on);
//! a listener is named as needing a restart and not bound; a reload whose workers fail
//! goes back to the old settings.
//! regression: deploy MEDIUM: the new workers ran the start's settings, and one WARN
//! line only named what the file had changed.

use std::path::{Path, PathBuf};

use protocol_tests::harness::*;

/// An app whose answer is `name`; `/sleep` sleeps 30 s.
fn named_app(dir: &Path, name: &str) -> PathBuf {
    let app = dir.join(format!("{name}.py"));
    std::fs::write(
        &app,
        format!(
            "import time\n\ndef application(environ, start_response):\n    if environ['PATH_INFO'] == '/sleep':\n        time.sleep(30)\n    body = {name:?}.encode()\n    start_response('200 OK', [('Content-Type', 'text/plain'), ('Content-Length', str(len(body)))])\n    return [body]\n"
        ),
    )
    .unwrap();
    app
}

/// postern with `--config conf` (and the app named there, not on the command line).
fn with_config(dir: &Path, conf: &Path, extra: &[&str]) -> Postern {
    Spawn::tcp(dir, "--config")
        .arg(conf.to_str().unwrap())
        .args(["--master"])
        .args(extra.iter().copied())
        .start()
}

fn status(addr: &Addr) -> serde_json::Value {
    let resp = raw(
        addr,
        b"GET /status HTTP/1.1\r\nHost: stats\r\nConnection: close\r\n\r\n",
    );
    let r = parse_http(&resp).unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(&resp)));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// The workers `/status` lists as serving: (generation, threads each).
fn serving(addr: &Addr) -> Vec<(i64, usize)> {
    status(addr)["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["state"] == "serving")
        .map(|w| {
            (
                w["generation"].as_i64().unwrap(),
                w["threads"].as_array().unwrap().len(),
            )
        })
        .collect()
}

fn text(p: &Postern, path: &str) -> String {
    let (status, body) = p.get(path);
    assert_eq!(status, 200, "{}", p.logs());
    String::from_utf8_lossy(&body).into_owned()
}

#[test]
fn a_reload_runs_the_changed_threads_workers_timeout_and_env() {
    let dir = tempdir();
    let conf = dir.path().join("postern.toml");
    let app = testapp();
    std::fs::write(
        &conf,
        format!("app = {app:?}\nworkers = 1\nthreads = 1\n[env]\nTESTAPP_ENV = \"one\"\n"),
    )
    .unwrap();
    let stats = Addr::Unix(dir.path().join("stats.sock"));
    let p = with_config(dir.path(), &conf, &["--stats", &stats.arg()]);
    assert!(wait_until(20, || serving(&stats) == [(0, 1)]));
    assert!(
        text(&p, "/sys").contains("\"env\": \"one\""),
        "{}",
        text(&p, "/sys")
    );

    std::fs::write(
        &conf,
        format!(
            "app = {app:?}\nworkers = 2\nthreads = 4\ntimeout = 3\n[env]\nTESTAPP_ENV = \"two\"\n"
        ),
    )
    .unwrap();
    p.signal(libc::SIGHUP);
    assert!(
        p.wait_log("reload: the new workers run the changed configuration", 20),
        "{}",
        p.logs()
    );
    let logs = p.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("the new workers run the changed configuration"))
        .unwrap();
    for change in [
        "env (",
        "threads (1 -> 4)",
        "timeout (not set -> 3)",
        "workers (1 -> 2)",
    ] {
        assert!(line.contains(change), "{change} not in {line}");
    }
    assert!(!logs.contains("a reload does not apply"), "{logs}");
    // Two workers of the new generation, four threads each, and nothing else.
    assert!(
        wait_until(30, || serving(&stats) == [(1, 4), (1, 4)]),
        "{:?}\n{}",
        serving(&stats),
        p.logs()
    );
    // The old worker may take a connection or two until it hears it drains (CI saw
    // /sys answered by it after "all 2 workers ready"): the checks below begin once
    // it has left.
    assert!(
        p.wait_log("how=exit code 0 cause=\"reload\"", 20),
        "{}",
        p.logs()
    );
    assert!(
        text(&p, "/sys").contains("\"env\": \"two\""),
        "{}",
        text(&p, "/sys")
    );
    // /status's configuration summary is the new generation's.
    let config = &status(&stats)["config"];
    assert_eq!(config["threads"], "4", "{config}");
    assert_eq!(config["workers"], "2", "{config}");
    assert_eq!(config["timeout"], "3s", "{config}");
    // The new --timeout kills a request that sleeps past it.
    let addr = p.addr.clone();
    let sleeper = std::thread::spawn(move || raw(&addr, &uwsgi_get("/sleep?s=30")));
    assert!(
        p.wait_log("request passed --timeout 3s", 20),
        "{}",
        p.logs()
    );
    let _ = sleeper.join();
    assert_eq!(p.get("/").0, 200);
}

#[test]
fn an_invalid_config_file_at_reload_is_refused_and_the_workers_serve_on() {
    let dir = tempdir();
    let conf = dir.path().join("postern.toml");
    std::fs::write(&conf, format!("app = {:?}\nthreads = 2\n", testapp())).unwrap();
    let p = with_config(dir.path(), &conf, &[]);
    let workers = children(p.pid());
    assert_eq!(workers.len(), 1);

    std::fs::write(&conf, format!("app = {:?}\nthreads = 0\n", testapp())).unwrap();
    p.signal(libc::SIGHUP);
    let refused = "reload refused: the configuration is invalid; the workers serve on with the settings they run, nothing changes";
    assert!(p.wait_log(refused, 20), "{}", p.logs());
    let said = format!(
        "--threads (from file {}): 0 is not between 1 and 1024",
        conf.display()
    );
    assert!(p.logs().contains(&said), "{}", p.logs());
    std::fs::write(&conf, "threads = [\n").unwrap();
    p.signal(libc::SIGHUP);
    assert!(p.wait_log_count(refused, 2, 20), "{}", p.logs());
    assert!(
        p.logs().contains(&format!(
            "--config {}: line 1, column 12: unclosed array",
            conf.display()
        )),
        "{}",
        p.logs()
    );
    // Nothing changed: no new generation, the same worker serves.
    assert!(
        !p.logs().contains("reloading: new workers start"),
        "{}",
        p.logs()
    );
    assert_eq!(p.get("/").0, 200);
    assert_eq!(children(p.pid()), workers);

    // Fixed (and another app): the next reload runs it.
    let other = named_app(dir.path(), "second");
    std::fs::write(&conf, format!("app = {other:?}\nthreads = 3\n")).unwrap();
    p.signal(libc::SIGHUP);
    assert!(
        p.wait_log("reload: the new workers run the changed configuration", 20),
        "{}",
        p.logs()
    );
    assert!(p.logs().contains("threads (2 -> 3)"), "{}", p.logs());
    assert!(wait_until(30, || p.get("/").1 == b"second"), "{}", p.logs());
}

// regression: `log-level = ""` (or `,`, or `20`, Python's INFO) was taken at a reload
// as a tracing filter that logs nothing: the master and the new workers went silent,
// errors included. The reload is refused with the reason; the workers serve on and
// the log goes on at the level it had.
#[test]
fn a_reload_to_a_log_level_that_would_log_nothing_is_refused() {
    let dir = tempdir();
    let conf = dir.path().join("postern.toml");
    let app = testapp();
    let write = |level: &str| {
        std::fs::write(
            &conf,
            format!("app = {app:?}\nworkers = 1\nlog-level = {level:?}\n"),
        )
        .unwrap()
    };
    write("info");
    let p = with_config(dir.path(), &conf, &[]);
    let workers = children(p.pid());
    let refused = "reload refused: the configuration is invalid";
    for (n, (level, said)) in [
        ("", "empty: use error, warn, info"),
        (
            ",",
            "\",\" has no level nor filter in it; use error, warn, info",
        ),
        ("20", "\"20\" is not a level (Python's number for info)"),
    ]
    .into_iter()
    .enumerate()
    {
        write(level);
        p.signal(libc::SIGHUP);
        assert!(p.wait_log_count(refused, n + 1, 20), "{}", p.logs());
        let said = format!("--log-level (from file {}): {said}", conf.display());
        assert!(p.logs().contains(&said), "{said}\n{}", p.logs());
    }
    assert!(
        !p.logs().contains("reloading: new workers start"),
        "{}",
        p.logs()
    );
    assert_eq!(p.get("/").0, 200);
    assert_eq!(children(p.pid()), workers);
    // Still at info: the next reload's INFO line is written.
    write("info");
    p.signal(libc::SIGHUP);
    assert!(
        p.wait_log("reloading: new workers start", 20),
        "{}",
        p.logs()
    );
}

/// regression: a refused reload's ERROR line quoted the offending source line (toml's
/// Display), so a duplicate `[env]` secret reached the log, over 4-5 lines; the start's
/// error too.
#[test]
fn a_refused_reload_names_the_line_not_the_env_secret_on_it() {
    let dir = tempdir();
    let conf = dir.path().join("postern.toml");
    let head = format!(
        "app = {:?}\n[env]\nSECRET_KEY = \"old-hunter2\"\n",
        testapp()
    );
    std::fs::write(&conf, &head).unwrap();
    let p = with_config(dir.path(), &conf, &[]);
    let refused = "reload refused: the configuration is invalid";
    std::fs::write(&conf, format!("{head}SECRET_KEY = \"new-hunter3\"\n")).unwrap();
    p.signal(libc::SIGHUP);
    assert!(p.wait_log(refused, 20), "{}", p.logs());
    // A syntax error on an [env] line, and a list value: refused, the value unsaid too.
    std::fs::write(&conf, format!("{head}TOKEN = \"tok-hunter4\" x\n")).unwrap();
    p.signal(libc::SIGHUP);
    assert!(p.wait_log_count(refused, 2, 20), "{}", p.logs());
    std::fs::write(&conf, format!("{head}LIST = [\"list-hunter5\"]\n")).unwrap();
    p.signal(libc::SIGHUP);
    assert!(p.wait_log_count(refused, 3, 20), "{}", p.logs());
    let logs = p.logs();
    for secret in ["new-hunter3", "tok-hunter4", "list-hunter5"] {
        assert!(!logs.contains(secret), "{secret}: {logs}");
    }
    let line = logs
        .lines()
        .find(|l| l.contains(refused))
        .unwrap_or_default();
    assert!(
        line.contains(&format!("--config {}: line 4, column 1: ", conf.display()))
            && line.contains("SECRET_KEY"),
        "{logs}"
    );
    assert!(!logs.contains(" | "), "{logs}");
    assert!(
        logs.contains("LIST is an array: an environment variable is a string"),
        "{logs}"
    );
    assert!(!logs.contains("reloading: new workers start"), "{logs}");
    assert_eq!(p.get("/").0, 200);
    drop(p);

    // The start says it in one line without the value too.
    std::fs::write(&conf, format!("{head}SECRET_KEY = \"new-hunter3\"\n")).unwrap();
    let out = std::process::Command::new(postern_bin())
        .args(["--config", conf.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        !err.contains("new-hunter3") && !err.contains(" | "),
        "{err}"
    );
    assert!(err.contains("line 4, column 1: "), "{err}");
}

#[test]
fn a_listener_added_at_reload_is_named_and_not_bound() {
    let dir = tempdir();
    let conf = dir.path().join("postern.toml");
    std::fs::write(&conf, format!("app = {:?}\nthreads = 1\n", testapp())).unwrap();
    let p = with_config(dir.path(), &conf, &[]);
    // A socket path of this test's own (a TCP port from free_port may be bound by
    // another test meanwhile).
    let sock = dir.path().join("added.sock");
    let added = format!("unix:{}", sock.display());
    std::fs::write(
        &conf,
        format!("app = {:?}\nthreads = 2\nfastcgi = {added:?}\n", testapp()),
    )
    .unwrap();
    p.signal(libc::SIGHUP);
    assert!(
        p.wait_log("in settings a reload does not apply", 20),
        "{}",
        p.logs()
    );
    let logs = p.logs();
    assert!(
        logs.contains(&format!("fastcgi (not set -> {added:?})")),
        "{logs}"
    );
    assert!(logs.contains("restart postern to apply these"), "{logs}");
    assert!(logs.contains("threads (1 -> 2)"), "{logs}");
    assert!(p.wait_log("all 1 workers ready", 30));
    assert!(wait_until(30, || p
        .logs()
        .matches("all 1 workers ready")
        .count()
        == 2));
    assert!(!sock.exists(), "{}", p.logs());
    assert_eq!(p.get("/").0, 200);

    // More --threads than a scoreboard slot has lines for (16, made at the start):
    // named, not applied; the listener, still not bound, is named again.
    std::fs::write(
        &conf,
        format!("app = {:?}\nthreads = 20\nfastcgi = {added:?}\n", testapp()),
    )
    .unwrap();
    p.signal(libc::SIGHUP);
    assert!(
        p.wait_log_count("in settings a reload does not apply", 2, 20),
        "{}",
        p.logs()
    );
    let logs = p.logs();
    let line = logs
        .lines()
        .filter(|l| l.contains("in settings a reload does not apply"))
        .nth(1)
        .unwrap();
    assert!(
        line.contains(&format!("fastcgi (not set -> {added:?})"))
            && line.contains(
                "threads (2 -> 20: over the 16 a worker's scoreboard slot was made for at the start)"
            ),
        "{line}"
    );
}

#[test]
fn a_reload_whose_workers_fail_goes_back_to_the_old_settings() {
    let dir = tempdir();
    let conf = dir.path().join("postern.toml");
    let first = named_app(dir.path(), "first");
    std::fs::write(&conf, format!("app = {first:?}\nworkers = 1\n")).unwrap();
    let p = with_config(dir.path(), &conf, &[]);
    let broken = dir.path().join("broken.py");
    std::fs::write(&broken, "raise ImportError('broken on purpose')\n").unwrap();
    std::fs::write(&conf, format!("app = {broken:?}\nworkers = 2\n")).unwrap();
    p.signal(libc::SIGHUP);
    assert!(
        p.wait_log("reload failed: the new workers do not start", 30),
        "{}",
        p.logs()
    );
    assert!(
        p.wait_log("the failed reload's settings are dropped", 5),
        "{}",
        p.logs()
    );
    // Back to generation 0's one worker of the first app (not the failed two).
    let logs = p.logs();
    let dropped = log_line(&logs, "the failed reload's settings are dropped");
    assert!(
        dropped.contains("generation=0") && dropped.contains("workers=1"),
        "{dropped}"
    );
    assert!(
        wait_until(20, || children(p.pid()).len() == 1),
        "{:?}\n{}",
        children(p.pid()),
        p.logs()
    );
    assert_eq!(text(&p, "/"), "first");
}

// regression: the INFO line of the applied changes (and, with --preload, the WARN line
// of the restart-only ones) printed the whole [env] table, secrets and all.
#[test]
fn a_reload_names_the_changed_env_variables_not_their_values() {
    for preload in [false, true] {
        let dir = tempdir();
        let conf = dir.path().join("postern.toml");
        let app = testapp();
        std::fs::write(
            &conf,
            format!("app = {app:?}\n[env]\nSECRET_KEY = \"hunter2-start\"\nTZ = \"UTC\"\n"),
        )
        .unwrap();
        let extra: &[&str] = if preload { &["--preload"] } else { &[] };
        let p = with_config(dir.path(), &conf, extra);
        std::fs::write(
            &conf,
            format!("app = {app:?}\n[env]\nSECRET_KEY = \"hunter3-rotated\"\nDEBUG = \"0\"\n"),
        )
        .unwrap();
        p.signal(libc::SIGHUP);
        let (needle, other) = if preload {
            (
                "in settings a reload does not apply",
                "the new workers run the changed configuration",
            )
        } else {
            (
                "the new workers run the changed configuration",
                "in settings a reload does not apply",
            )
        };
        assert!(p.wait_log(needle, 20), "{}", p.logs());
        assert!(p.wait_log_count("workers ready", 2, 30), "{}", p.logs());
        let logs = p.logs();
        assert!(
            log_line(&logs, needle).contains("env (SECRET_KEY changed, DEBUG added, TZ removed)"),
            "preload {preload}: {logs}"
        );
        assert!(!logs.contains(other), "preload {preload}: {logs}");
        for value in ["hunter2-start", "hunter3-rotated", "UTC"] {
            assert!(
                !logs.contains(value),
                "preload {preload}: {value} in {logs}"
            );
        }
    }
}

// A Capistrano-style deploy: postern started in `current` (a symlink to releases/1)
// with a relative --config; `current` is switched to releases/2 and a reload reads
// releases/2's file and imports its app, as a restart from `current` would.
// regression: the start directory was kept with its links resolved (getcwd), so the
// reload read releases/1's file again (and, without --chdir, imported its code).
#[test]
fn a_reload_reads_a_relative_config_through_the_switched_symlink() {
    for chdir in [&[][..], &["--chdir", "."][..]] {
        let dir = tempdir();
        for (n, threads) in [("1", 1), ("2", 2)] {
            let release = dir.path().join("releases").join(n);
            std::fs::create_dir_all(&release).unwrap();
            // The same module name in each release: app.py answers its release.
            let app = named_app(&release, &format!("release {n}"));
            std::fs::rename(app, release.join("app.py")).unwrap();
            std::fs::write(
                release.join("postern.toml"),
                format!("app = \"app.py\"\nthreads = {threads}\n"),
            )
            .unwrap();
        }
        let current = dir.path().join("current");
        std::os::unix::fs::symlink("releases/1", &current).unwrap();
        // As a shell's `cd current` leaves it: $PWD names `current`. systemd's
        // WorkingDirectory= sets no $PWD (postern then sees only releases/1): a unit needs
        // Environment=PWD=… beside it (README, deploy/systemd/postern.service).
        let p = Spawn::tcp(dir.path(), "--config")
            .arg("postern.toml")
            .args(["--master"])
            .args(chdir.iter().copied())
            .cwd(&current)
            .env("PWD", current.to_str().unwrap())
            .start();
        assert_eq!(text(&p, "/"), "release 1", "{}", p.logs());
        let new = dir.path().join("current.new");
        std::os::unix::fs::symlink("releases/2", &new).unwrap();
        std::fs::rename(&new, &current).unwrap();
        p.signal(libc::SIGHUP);
        assert!(
            p.wait_log("reload: the new workers run the changed configuration", 20),
            "{chdir:?}: {}",
            p.logs()
        );
        assert!(p.logs().contains("threads (1 -> 2)"), "{}", p.logs());
        assert!(
            wait_until(30, || p.get("/").1 == b"release 2"),
            "{chdir:?}: {}",
            p.logs()
        );
    }
}

// regression: a variable dropped from [env] at a reload was removed from the new
// workers' environment, though postern had inherited it (systemd's Environment=).
#[test]
fn a_variable_dropped_from_env_goes_back_to_the_inherited_value() {
    let dir = tempdir();
    let conf = dir.path().join("postern.toml");
    let app = testapp();
    std::fs::write(
        &conf,
        format!("app = {app:?}\n[env]\nTESTAPP_ENV = \"from-the-file\"\n"),
    )
    .unwrap();
    let p = Spawn::tcp(dir.path(), "--config")
        .arg(conf.to_str().unwrap())
        .args(["--master"])
        .env("TESTAPP_ENV", "inherited")
        .start();
    assert!(
        text(&p, "/sys").contains("\"env\": \"from-the-file\""),
        "{}",
        text(&p, "/sys")
    );
    std::fs::write(&conf, format!("app = {app:?}\nthreads = 2\n")).unwrap();
    p.signal(libc::SIGHUP);
    assert!(p.wait_log("env (TESTAPP_ENV removed)", 20), "{}", p.logs());
    assert!(p.wait_log_count("workers ready", 2, 30), "{}", p.logs());
    assert!(
        wait_until(10, || text(&p, "/sys").contains("\"env\": \"inherited\"")),
        "{}\n{}",
        text(&p, "/sys"),
        p.logs()
    );
}

// regression: a reload parsed POSTERN_* from the master's environment as it is now:
// [env]'s POSTERN_THREADS = "8" (set in the master's environment at the start) became
// `threads (2 -> 8)` at a reload of the unchanged file. The start's own POSTERN_*
// (POSTERN_MAX_REQUESTS here) still count.
#[test]
fn a_reload_reads_postern_variables_as_postern_was_started_with() {
    let dir = tempdir();
    let conf = dir.path().join("postern.toml");
    std::fs::write(
        &conf,
        format!(
            "app = {:?}\nthreads = 2\n[env]\nPOSTERN_THREADS = \"8\"\nPOSTERN_MAX_REQUESTS = \"5\"\n",
            testapp()
        ),
    )
    .unwrap();
    let p = Spawn::tcp(dir.path(), "--config")
        .arg(conf.to_str().unwrap())
        .args(["--master"])
        .env("POSTERN_MAX_REQUESTS", "1000")
        .start();
    p.signal(libc::SIGHUP);
    assert!(
        p.wait_log("reloading: new workers start", 20),
        "{}",
        p.logs()
    );
    assert!(p.wait_log_count("workers ready", 2, 30), "{}", p.logs());
    let logs = p.logs();
    assert!(
        !logs.contains("the new workers run the changed configuration"),
        "{logs}"
    );
    assert!(!logs.contains("a reload does not apply"), "{logs}");
}

// regression: a reload read the --ini file again and said nothing of the lines postern
// runs without, which the start warns of.
#[test]
fn a_reload_warns_of_the_ini_lines_postern_runs_without() {
    let dir = tempdir();
    let ini = dir.path().join("app.ini");
    let app = testapp();
    std::fs::write(&ini, format!("[uwsgi]\nwsgi-file = {app}\nthreads = 1\n")).unwrap();
    let p = Spawn::tcp(dir.path(), "--ini")
        .arg(ini.to_str().unwrap())
        .args(["--master"])
        .start();
    let unknown = "frobnicate-postern-test";
    std::fs::write(
        &ini,
        format!("[uwsgi]\nwsgi-file = {app}\nthreads = 2\n{unknown} = 1\n"),
    )
    .unwrap();
    p.signal(libc::SIGHUP);
    assert!(
        p.wait_log("the new workers run the changed configuration", 20),
        "{}",
        p.logs()
    );
    assert!(p.wait_log(unknown, 5), "{}", p.logs());
    assert!(
        p.logs().contains("not carried over as written"),
        "{}",
        p.logs()
    );
}

// regression (probe 407): an unchanged --ini named by a relative path had its lines
// warned of again at the first reload, by their absolute path.
#[test]
fn a_reload_of_an_unchanged_ini_named_relatively_says_its_lines_once() {
    let dir = tempdir();
    let ini = dir.path().join("app.ini");
    let app = testapp();
    std::fs::write(
        &ini,
        format!("[uwsgi]\nwsgi-file = {app}\nthreads = 1\nauto-procname = true\nenv = CONF=%o\n"),
    )
    .unwrap();
    let p = Spawn::tcp(dir.path(), "--ini")
        .arg("app.ini")
        .args(["--master"])
        .cwd(dir.path())
        .start();
    assert!(
        p.wait_log("not carried over as written", 10),
        "{}",
        p.logs()
    );
    p.signal(libc::SIGHUP);
    assert!(
        p.wait_log("new workers ready; old workers finish", 20),
        "{}",
        p.logs()
    );
    let logs = p.logs();
    assert_eq!(
        logs.matches("not carried over as written").count(),
        1,
        "{logs}"
    );
    assert!(logs.contains("app.ini:4  auto-procname"), "{logs}");
    // `%o`, the file as given, is the same at the reload (review 409).
    assert!(!logs.contains("CONF changed"), "{logs}");
}

// regression: a reload expanded the ini's `$(VAR)` from the master's environment as it
// is now, where the ini's own `env =` line had set it: an unchanged file started with
// 1 thread and a reload said `threads (1 -> 4)` and ran 4.
#[test]
fn a_reload_expands_the_ini_as_the_start_did() {
    let dir = tempdir();
    let ini = dir.path().join("app.ini");
    let app = testapp();
    std::fs::write(
        &ini,
        format!("[uwsgi]\nwsgi-file = {app}\nenv = MYTHREADS_R3=4\nthreads = $(MYTHREADS_R3:-1)\n"),
    )
    .unwrap();
    let stats = Addr::Unix(dir.path().join("stats.sock"));
    let p = Spawn::tcp(dir.path(), "--ini")
        .arg(ini.to_str().unwrap())
        .args(["--master", "--stats", &stats.arg()])
        .start();
    assert!(
        wait_until(20, || serving(&stats) == [(0, 1)]),
        "{}",
        p.logs()
    );
    p.signal(libc::SIGHUP);
    assert!(
        p.wait_log("reloading: new workers start", 20),
        "{}",
        p.logs()
    );
    assert!(p.wait_log_count("workers ready", 2, 30), "{}", p.logs());
    let logs = p.logs();
    assert!(!logs.contains("threads (1 -> 4)"), "{logs}");
    assert!(
        !logs.contains("the new workers run the changed configuration"),
        "{logs}"
    );
    assert!(
        wait_until(20, || serving(&stats) == [(1, 1)]),
        "{}",
        p.logs()
    );
}

/// Connects to `p` and closes without a request (logged at debug level only).
fn probe(p: &Postern) {
    drop(p.addr.connect().unwrap());
}

// regression: --log-level was restart-only ("the logs are opened once"): turning on
// debug logging for a while needed a restart. A reload applies it to the master and
// the new workers, in both directions, and the INFO line of the changes names it.
#[test]
fn a_reload_applies_a_changed_log_level() {
    let dir = tempdir();
    let conf = dir.path().join("postern.toml");
    let app = testapp();
    let write = |level: &str| {
        std::fs::write(
            &conf,
            format!("app = {app:?}\nworkers = 1\nlog-level = {level:?}\n"),
        )
        .unwrap()
    };
    write("info");
    let stats = Addr::Unix(dir.path().join("stats.sock"));
    let p = with_config(dir.path(), &conf, &["--stats", &stats.arg()]);
    const DEBUG_LINE: &str = "connection closed before sending a request";
    probe(&p);
    write("debug");
    p.signal(libc::SIGHUP);
    assert!(
        p.wait_log("reload: the new workers run the changed configuration", 20),
        "{}",
        p.logs()
    );
    let logs = p.logs();
    let line = log_line(&logs, "the new workers run the changed configuration");
    assert!(line.contains("log-level (\"info\" -> \"debug\")"), "{line}");
    assert!(!logs.contains("a reload does not apply"), "{logs}");
    assert!(
        wait_until(30, || serving(&stats) == [(1, 1)]),
        "{}",
        p.logs()
    );
    // A request-less connection: a debug line of the new worker.
    assert!(!p.logs().contains(DEBUG_LINE), "{}", p.logs());
    probe(&p);
    assert!(p.wait_log(DEBUG_LINE, 10), "{}", p.logs());

    // Back to warn: the line naming it is still written (before the switch), then
    // nothing under warn, from the master or the new worker.
    write("warn");
    p.signal(libc::SIGHUP);
    assert!(
        p.wait_log("log-level (\"debug\" -> \"warn\")", 20),
        "{}",
        p.logs()
    );
    assert!(
        wait_until(30, || serving(&stats) == [(2, 1)]),
        "{}",
        p.logs()
    );
    // The old worker (at debug) gone: the stats helper and the new worker are left.
    // Its exit (INFO) is not logged by the master any more either.
    assert!(
        wait_until(30, || children(p.pid()).len() == 2),
        "{:?}\n{}",
        children(p.pid()),
        p.logs()
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before = p.logs();
    probe(&p);
    assert_eq!(p.get("/").0, 200);
    p.signal(libc::SIGHUP);
    assert!(
        wait_until(30, || serving(&stats) == [(3, 1)]),
        "{}",
        p.logs()
    );
    probe(&p);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let after = p.logs();
    // (Access lines are not postern's log: --log-level never hides them.)
    let new: Vec<&str> = after[before.len()..]
        .lines()
        .filter(|l| !l.contains("postern::access"))
        .collect();
    assert!(
        !new.iter()
            .any(|l| l.contains(" INFO ") || l.contains(" DEBUG ")),
        "lines under warn after the switch:\n{new:#?}"
    );
}

// regression: a SIGTTIN during a reload that changed --workers was lost when the reload
// failed: the rollback went back to the serving generation's number as it was before.
#[test]
fn a_sigttin_during_a_failing_reload_counts_after_the_rollback() {
    signal_during_a_failing_reload(libc::SIGTTIN, (1, 3), "SIGTTIN: one worker more", 2);
}

// regression: the mirror: a SIGTTOU during a reload to one worker was ignored ("one
// worker is the least"), and the rollback went back to the serving generation's 3.
#[test]
fn a_sigttou_during_a_failing_reload_to_one_worker_counts_after_the_rollback() {
    signal_during_a_failing_reload(
        libc::SIGTTOU,
        (3, 1),
        "SIGTTOU: the reload's generation runs one worker",
        2,
    );
}

/// Serving `workers.0` workers, a reload to `workers.1` whose import fails once the
/// test has seen `said` (the log line of `sig`, sent during it): the rollback runs
/// `after` workers.
fn signal_during_a_failing_reload(sig: i32, workers: (usize, usize), said: &str, after: usize) {
    let dir = tempdir();
    let conf = dir.path().join("postern.toml");
    let first = named_app(dir.path(), "first");
    std::fs::write(&conf, format!("app = {first:?}\nworkers = {}\n", workers.0)).unwrap();
    let p = with_config(dir.path(), &conf, &[]);
    assert!(
        wait_until(30, || children(p.pid()).len() == workers.0),
        "{}",
        p.logs()
    );
    // Fails once the gate is gone (the test deletes it after the signal's line): the
    // signal comes during the reload, however slow the machine.
    let gate = dir.path().join("gate");
    std::fs::write(&gate, "").unwrap();
    let broken = dir.path().join("gated_broken.py");
    std::fs::write(
        &broken,
        format!(
            "import os, time\ndeadline = time.time() + 60\nwhile os.path.exists({gate:?}) and time.time() < deadline:\n    time.sleep(0.05)\nraise ImportError('broken on purpose')\n"
        ),
    )
    .unwrap();
    std::fs::write(
        &conf,
        format!("app = {broken:?}\nworkers = {}\n", workers.1),
    )
    .unwrap();
    p.signal(libc::SIGHUP);
    assert!(
        p.wait_log("reloading: new workers start", 20),
        "{}",
        p.logs()
    );
    p.signal(sig);
    assert!(p.wait_log(said, 10), "{}", p.logs());
    std::fs::remove_file(&gate).unwrap();
    assert!(
        p.wait_log("reload failed: the new workers do not start", 30),
        "{}",
        p.logs()
    );
    assert!(
        p.wait_log("the failed reload's settings are dropped", 5),
        "{}",
        p.logs()
    );
    let logs = p.logs();
    let dropped = log_line(&logs, "the failed reload's settings are dropped");
    assert!(
        dropped.contains("generation=0") && dropped.contains(&format!("workers={after}")),
        "{} with the signal: {dropped}",
        workers.0
    );
    assert!(
        wait_until(30, || children(p.pid()).len() == after),
        "{:?}\n{}",
        children(p.pid()),
        p.logs()
    );
    assert_eq!(text(&p, "/"), "first");
}

// A reload turns the access log off, and on again to the file opened at the start;
// another file needs a restart (the logs are opened once, before --uid).
// regression: every --access-log change was restart-only.
#[test]
fn a_reload_turns_the_access_log_off_and_on_again() {
    let dir = tempdir();
    let conf = dir.path().join("postern.toml");
    let access = dir.path().join("access.log");
    let other = dir.path().join("other.log");
    let app = testapp();
    let write = |value: &str| {
        std::fs::write(
            &conf,
            format!("app = {app:?}\nworkers = 1\naccess-log = {value:?}\n"),
        )
        .unwrap()
    };
    write(access.to_str().unwrap());
    let stats = Addr::Unix(dir.path().join("stats.sock"));
    let p = with_config(dir.path(), &conf, &["--stats", &stats.arg()]);
    let lines = || {
        std::fs::read_to_string(&access)
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert_eq!(p.get("/").0, 200);
    assert!(wait_until(10, || lines() == 1), "{}", p.logs());

    let reload = |generation: i64| {
        p.signal(libc::SIGHUP);
        assert!(
            wait_until(30, || serving(&stats) == [(generation, 1)]),
            "{}",
            p.logs()
        );
    };
    write("off");
    reload(1);
    // The old worker is told to drain once the new one serves: until it has heard it,
    // it may still take a connection, and it logs with the access log on (a CI flake).
    assert!(
        wait_until(30, || status(&stats)["workers"]
            .as_array()
            .is_some_and(|w| w.iter().all(|w| w["generation"] == 1))),
        "{}",
        p.logs()
    );
    let logs = p.logs();
    let line = log_line(&logs, "the new workers run the changed configuration");
    assert!(line.contains("access-log ("), "{line}");
    assert!(line.contains(" -> \"off\")"), "{line}");
    assert_eq!(p.get("/").0, 200);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(lines(), 1, "a line written with the access log off");

    write(access.to_str().unwrap());
    reload(2);
    assert_eq!(p.get("/").0, 200);
    assert!(wait_until(10, || lines() == 2), "{}", p.logs());

    // Another file: a restart opens it; the lines go on to the first one.
    write(other.to_str().unwrap());
    reload(3);
    assert!(p.wait_log("a reload does not apply", 10), "{}", p.logs());
    let logs = p.logs();
    let warn = log_line(&logs, "a reload does not apply");
    assert!(warn.contains("changed=access-log ("), "{warn}");
    assert_eq!(p.get("/").0, 200);
    assert!(wait_until(10, || lines() == 3), "{}", p.logs());
    assert!(!other.exists());
}

/// An app whose import waits while the file `$GATE` exists (having made `$ARRIVED`),
/// and fails when `$FAIL` is set.
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

/// A reload A (debug, --access-log off) held in its import, then a reload B back to
/// info and the access log, which serves (`fail`: fails, and the master goes back to
/// generation 0): the workers started from then on log at info, and write access lines.
fn held_debug_then_info(fail: bool) {
    let dir = tempdir();
    let conf = dir.path().join("postern.toml");
    let app = gated_app(dir.path());
    let (gate, arrived) = (dir.path().join("gate"), dir.path().join("arrived"));
    std::fs::write(&gate, "").unwrap();
    let write = |level: &str, env: &str| {
        std::fs::write(
            &conf,
            format!("app = {app:?}\nworkers = 1\nlog-level = {level:?}\n[env]\n{env}"),
        )
        .unwrap()
    };
    write("info", "");
    let p = with_config(dir.path(), &conf, &[]);
    const DEBUG_LINE: &str = "connection closed before sending a request";
    // A also turns the access log off (B turns it on again).
    std::fs::write(
        &conf,
        format!(
            "app = {app:?}\nworkers = 1\nlog-level = \"debug\"\naccess-log = \"off\"\n[env]\nGATE = {gate:?}\nARRIVED = {arrived:?}\n"
        ),
    )
    .unwrap();
    p.signal(libc::SIGHUP);
    assert!(wait_file(&arrived, 30), "{}", p.logs());
    write("info", if fail { "FAIL = \"1\"\n" } else { "" });
    // Read before B's reload: its worker may be forked before a read after the signal.
    // regression: read after it, B's worker was among them now and then (a flake).
    let first = children(p.pid());
    p.signal(libc::SIGHUP);
    if fail {
        assert!(
            p.wait_log("the failed reload's settings are dropped", 30),
            "{}",
            p.logs()
        );
        // A worker the master starts from now on: generation 0's, at info.
        assert!(
            wait_until(30, || children(p.pid()).len() == 1),
            "{:?}\n{}",
            children(p.pid()),
            p.logs()
        );
        let old = children(p.pid())[0];
        unsafe { libc::kill(old, libc::SIGKILL) };
        assert!(wait_until(30, || gone(old)), "{}", p.logs());
    } else {
        assert!(
            p.wait_log(
                "new workers ready; old workers finish their requests and exit",
                30
            ),
            "{}",
            p.logs()
        );
    }
    // Only the newest worker is left (generation 0's and A's are gone).
    assert!(
        wait_until(30, || {
            let now = children(p.pid());
            now.len() == 1 && !first.contains(&now[0])
        }),
        "{:?} {:?}\n{}",
        first,
        children(p.pid()),
        p.logs()
    );
    assert!(wait_until(30, || p.get("/").0 == 200), "{}", p.logs());
    let before = p.logs();
    probe(&p);
    assert_eq!(p.get("/").0, 200);
    assert!(
        wait_until(10, || p.logs()[before.len()..].contains("postern::access")),
        "the worker started after the reload back to the access log writes none:\n{}",
        p.logs()
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
    let _ = std::fs::remove_file(&gate);
    let after = p.logs();
    let new: Vec<&str> = after[before.len()..]
        .lines()
        .filter(|l| !l.contains("postern::access"))
        .collect();
    assert!(
        !new.iter()
            .any(|l| l.contains(DEBUG_LINE) || l.contains(" DEBUG ")),
        "the worker started after the reload back to info logs at debug:\n{new:#?}\n{after}"
    );
}

// regression: a reload back to info during a reload to debug still importing (A ->
// B) compared B's info with the serving generation's info, so nothing switched the
// master back: B's workers (and the master) logged at debug for good.
#[test]
fn a_reload_during_a_reload_leaves_the_log_at_its_level() {
    held_debug_then_info(false);
}

// regression: the same, B failing: the rollback compared generation 0's info with B's
// info and stayed at A's debug.
#[test]
fn a_rollback_during_a_reload_leaves_the_log_at_the_serving_level() {
    held_debug_then_info(true);
}

// A bare level and a filter of directives are two kinds of filter in postern's log (a
// bare level costs nothing per span callback): a reload switches between them, and
// the workers it starts log as the new one says.
#[test]
fn a_reload_switches_between_a_filter_and_a_level() {
    let dir = tempdir();
    let conf = dir.path().join("postern.toml");
    let app = testapp();
    let write = |level: &str| {
        std::fs::write(
            &conf,
            format!("app = {app:?}\nworkers = 1\nlog-level = {level:?}\n"),
        )
        .unwrap()
    };
    const DEBUG_LINE: &str = "connection closed before sending a request";
    // The debug lines of a request-less connection, once a worker other than `last`
    // serves alone (at warn, "worker ready" is not logged).
    let debug_lines = |p: &Postern, last: &mut i32| {
        assert!(
            wait_until(30, || {
                let now = children(p.pid());
                now.len() == 1 && now[0] != *last
            }),
            "{}",
            p.logs()
        );
        *last = children(p.pid())[0];
        assert!(wait_until(30, || p.get("/").0 == 200), "{}", p.logs());
        let before = p.logs().matches(DEBUG_LINE).count();
        probe(p);
        assert_eq!(p.get("/").0, 200);
        wait_until(3, || p.logs().matches(DEBUG_LINE).count() > before);
        p.logs().matches(DEBUG_LINE).count() - before
    };
    let mut last = 0;
    // At least the probe's line under the filter (a connection the harness or an
    // earlier request left may close in the same moment and add its own), none at warn.
    write("info,postern::server=debug");
    let p = with_config(dir.path(), &conf, &[]);
    assert!(debug_lines(&p, &mut last) >= 1, "{}", p.logs());
    write("warning");
    p.signal(libc::SIGHUP);
    assert_eq!(debug_lines(&p, &mut last), 0, "{}", p.logs());
    write("info,postern::server::acceptor=debug,postern::server::connection=debug");
    p.signal(libc::SIGHUP);
    assert!(debug_lines(&p, &mut last) >= 1, "{}", p.logs());
}

// regression: `%(…)` placeholders that each repeat the one before twice double at
// every line, and nothing bounded them: 27 lines took the master a minute and 1.8 GB,
// at the start and again at each reload. Now a value over 64 KiB stops the start
// (exit 2) and refuses a reload, naming the line; the workers serve on.
#[test]
fn an_ini_whose_placeholders_blow_up_is_refused_at_start_and_at_reload() {
    let dir = tempdir();
    let ini = dir.path().join("app.ini");
    let app = testapp();
    let mut bomb = format!("[uwsgi]\nwsgi-file = {app}\nv0 = ab\n");
    for n in 1..=40 {
        bomb += &format!("v{n} = %(v{})%(v{})\n", n - 1, n - 1);
    }
    bomb += "env = X=%(v40)\n";
    let said = "line 19: v16's value is over 64 KiB once its %(…), $(…) and @(…) are expanded";

    std::fs::write(&ini, &bomb).unwrap();
    let out = std::process::Command::new(postern_bin())
        .args(["--ini", ini.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(said), "{err}");

    std::fs::write(&ini, format!("[uwsgi]\nwsgi-file = {app}\n")).unwrap();
    let p = Spawn::tcp(dir.path(), "--ini")
        .arg(ini.to_str().unwrap())
        .args(["--master"])
        .start();
    let workers = children(p.pid());
    std::fs::write(&ini, &bomb).unwrap();
    p.signal(libc::SIGHUP);
    let refused = "reload refused: the configuration is invalid; the workers serve on";
    assert!(p.wait_log(refused, 20), "{}", p.logs());
    assert!(p.logs().contains(said), "{}", p.logs());
    assert_eq!(p.get("/").0, 200);
    assert_eq!(children(p.pid()), workers);
}

// A Unix socket file deleted while postern runs (by hand, a tmp cleaner) is said at the
// next reload, as an ERROR naming the listener and what to do: nothing can connect by
// the path any more, and a reload does not bind it again.
// regression (probe 385): the outage went unsaid (a reload, /ping and /status as if
// all were well).
#[test]
fn a_reload_says_a_unix_socket_file_that_was_deleted() {
    let dir = tempdir();
    let app = named_app(dir.path(), "v1");
    let p = Spawn::unix(dir.path(), &app.to_string_lossy())
        .args(["--workers", "2"])
        .start();
    assert!(p.wait_log("all 2 workers ready", 20), "{}", p.logs());
    let Addr::Unix(path) = p.addr.clone() else {
        panic!("a Unix listener")
    };
    p.signal(libc::SIGHUP);
    assert!(p.wait_log("reload asked for", 10), "{}", p.logs());
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !p.logs().contains("socket file is no longer there"),
        "{}",
        p.logs()
    );
    std::fs::rename(&path, dir.path().join("moved.sock")).unwrap();
    p.signal(libc::SIGHUP);
    assert!(
        p.wait_log(
            "the listener's socket file is no longer there (it was deleted)",
            10
        ),
        "{}",
        p.logs()
    );
    let line = log_line(&p.logs(), "socket file is no longer there").to_owned();
    assert!(line.contains(" ERROR "), "{line}");
    assert!(
        line.contains(&format!("listener=unix:{}", path.display())),
        "{line}"
    );
}

// A reload's [env] reaches the new workers as the log says: TZ as the time module
// reads it (time.tzset), an app's own PYTHON_ENV applied, and PYTHONPATH (read by
// Python once, as the master starts) said to need a restart and kept as at the start.
// regression (probe 385, review 387): `applied=env (PYTHONPATH added)` with a sys.path
// without it; `TZ changed` with time.strftime('%Z') in the start's zone; then every
// PYTHON* name taken for Python's.
#[test]
fn a_reload_applies_env_as_it_says() {
    let dir = tempdir();
    let app = dir.path().join("envapp.py");
    let lib = dir.path().join("lib");
    std::fs::create_dir(&lib).unwrap();
    std::fs::write(
        &app,
        format!(
            "import os, sys, time\n\ndef application(environ, start_response):\n    body = ' '.join([time.strftime('%Z'), str(os.environ.get('PYTHON_ENV')), str(os.environ.get('PYTHONPATH')), str({:?} in sys.path)]).encode()\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [body]\n",
            lib.to_string_lossy()
        ),
    )
    .unwrap();
    let conf = dir.path().join("postern.toml");
    let write = |env: &str| {
        std::fs::write(
            &conf,
            format!(
                "app = {:?}\nworkers = 1\n[env]\n{env}",
                app.to_string_lossy()
            ),
        )
        .unwrap()
    };
    write("TZ = \"UTC0\"\nPYTHON_ENV = \"one\"\n");
    let p = with_config(dir.path(), &conf, &[]);
    assert!(p.wait_log("all 1 workers ready", 20), "{}", p.logs());
    assert_eq!(text(&p, "/"), "UTC one None False");
    write(&format!(
        "TZ = \"JST-9\"\nPYTHON_ENV = \"two\"\nPYTHONPATH = {:?}\n",
        lib.to_string_lossy()
    ));
    p.signal(libc::SIGHUP);
    assert!(
        p.wait_log("how=exit code 0 cause=\"reload\"", 20),
        "{}",
        p.logs()
    );
    assert_eq!(text(&p, "/"), "JST two None False", "{}", p.logs());
    let logs = p.logs();
    assert!(
        log_line(&logs, "the new workers run the changed configuration")
            .contains("env (PYTHON_ENV changed, TZ changed)"),
        "{logs}"
    );
    let kept = log_line(&logs, "restart postern to apply these");
    assert!(kept.contains(" WARN "), "{kept}");
    assert!(kept.contains("env (PYTHONPATH added)"), "{kept}");
}
