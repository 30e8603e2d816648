//! `postern migrate` and what uWSGI makes at each start (`$(ENV)`, `@(FILE)`, `%h`,
//! `%k`), and `--ini` with uWSGI's in-process job options. No nginx, no app import.

use std::process::Command;

use protocol_tests::harness::*;

/// `text` written to `ini`, then `postern migrate INI`: (rc, stdout, stderr).
fn migrate_written(ini: &std::path::Path, text: &str) -> (i32, String, String) {
    std::fs::write(ini, text).unwrap();
    migrate(ini, &[], &[])
}

/// `postern --ini INI --check`.
fn ini_check(ini: &std::path::Path) -> std::process::Output {
    Command::new(postern_bin())
        .arg("--ini")
        .arg(ini)
        .arg("--check")
        .output()
        .unwrap()
}

/// `postern migrate INI` with `env` set for it: (rc, stdout, stderr).
fn migrate(ini: &std::path::Path, env: &[(&str, &str)], extra: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(postern_bin());
    cmd.arg("migrate")
        .arg(ini)
        .args(extra)
        .env_remove("APP_SECRET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

// regression: migrate expanded $(VAR) and @(FILE) in the shell that ran it and wrote the
// result into postern.toml: an unset secret became the literal value "$(APP_SECRET)" the
// app ran with (a guessable Django SECRET_KEY), a set one or a file's was written in
// clear, and `processes = $(WORKERS:-4)` lost the per-host override.
#[test]
fn migrate_never_writes_a_value_uwsgi_reads_at_each_start() {
    let dir = tempdir();
    std::fs::write(dir.path().join("sec.txt"), "file-s3cr3t\n").unwrap();
    let ini = dir.path().join("envy.ini");
    std::fs::write(
        &ini,
        "[uwsgi]\nmodule = edge2\nprocesses = $(WORKERS:-4)\nsocket = /run/%h/app.sock\nenv = SECRET=$(APP_SECRET)\nenv = SECRET_KEY=@(%d/sec.txt)\nthreads = %(%k * 2)\n",
    )
    .unwrap();
    for env in [
        &[][..],
        &[("APP_SECRET", "env-s3cr3t"), ("WORKERS", "6")][..],
    ] {
        let (rc, toml, summary) = migrate(&ini, env, &[]);
        assert_eq!(rc, 0, "{summary}");
        assert!(!toml.contains("s3cr3t"), "{toml}");
        for line in toml.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                !line.contains("$(") && !line.contains("@("),
                "{line}\n{toml}"
            );
            assert!(
                !line.starts_with("workers") && !line.starts_with("threads"),
                "{line}"
            );
            assert!(
                !line.starts_with("SECRET") && !line.starts_with("uwsgi"),
                "{line}"
            );
        }
        // The report says why and what to do.
        assert!(toml.contains("# NEEDS ATTENTION"), "{toml}");
        assert!(
            toml.contains("#   uWSGI reads $(APP_SECRET) at each start"),
            "{toml}"
        );
        assert!(
            toml.contains("set SECRET in the environment postern"),
            "{toml}"
        );
        assert!(toml.contains("POSTERN_WORKERS"), "{toml}");
        assert!(
            summary.contains("5 read at each start by uWSGI (not written: see NEEDS ATTENTION)"),
            "{summary}"
        );
    }
    // A value that is the same everywhere is given as a constant.
    let (rc, toml, _) = migrate(&ini, &[], &["--var", "WORKERS=3"]);
    assert_eq!(rc, 0);
    assert!(toml.contains("\nworkers = 3\n"), "{toml}");
}

// regression: migrate exited 0 with REFUSED lines in its output, so a script took the
// file as ready. Now exit status 3, the TOML printed all the same; 0 once they are gone.
#[test]
fn migrate_exits_3_when_a_line_is_refused_and_still_prints_the_toml() {
    let dir = tempdir();
    let ini = dir.path().join("http.ini");
    let (rc, toml, summary) = migrate_written(
        &ini,
        "[uwsgi]\nmodule = edge2\nhttp = :8000\nmules = 2\nprocesses = 3\n",
    );
    assert_eq!(rc, 3, "{summary}");
    assert!(
        toml.contains("app = \"edge2\"\n") && toml.contains("workers = 3\n"),
        "{toml}"
    );
    assert_eq!(toml.matches("#   REFUSED").count(), 2, "{toml}");
    assert!(
        summary.contains("2 refused") && summary.contains("(exit status 3: fix or remove"),
        "{summary}"
    );
    let (rc, _, summary) = migrate_written(&ini, "[uwsgi]\nmodule = edge2\nprocesses = 3\n");
    assert_eq!(rc, 0, "{summary}");
    assert!(!summary.contains("exit status"), "{summary}");
}

// regression: migrate carried over values postern's own checks refuse (`threads = 2000`,
// `processes = 300`, `buffer-size = 2`) without a word and exited 0; the TOML it wrote
// then failed at start ("--threads (from file ...): 2000 is not between 1 and 1024").
// Now they are REFUSED lines with the start-up's message, left out of the TOML.
#[test]
fn migrate_refuses_values_that_postern_would_refuse_at_start() {
    let dir = tempdir();
    let ini = dir.path().join("big.ini");
    let (rc, toml, summary) = migrate_written(&ini, "[uwsgi]\nmodule = edge2\nthreads = 2000\nprocesses = 300\nbuffer-size = 2\nharakiri = 30\n");
    assert_eq!(rc, 3, "{summary}\n{toml}");
    let messages = [
        "2000 is not between 1 and 1024",
        "300 is not between 1 and 256",
        "2 is outside 4..=65535",
    ];
    for (line, key, message) in [
        ("# line 3: threads = 2000", "--threads", messages[0]),
        ("# line 4: processes = 300", "--workers", messages[1]),
        ("# line 5: buffer-size = 2", "--buffer-size", messages[2]),
    ] {
        let at = toml
            .find(line)
            .unwrap_or_else(|| panic!("{line} in {toml}"));
        let said = &toml[at..];
        assert!(
            said.contains(&format!(
                "#   REFUSED (postern --ini stops on this): {key}: {message}"
            )),
            "{toml}"
        );
    }
    for key in ["threads", "workers", "buffer-size"] {
        assert!(!toml.contains(&format!("\n{key} =")), "{key}: {toml}");
    }
    assert!(toml.contains("\ntimeout = 30\n"), "{toml}");
    assert!(summary.contains("3 refused"), "{summary}");
    // The start-up says the same of each.
    for (line, message) in [
        ("threads = 2000", messages[0]),
        ("processes = 300", messages[1]),
        ("buffer-size = 2", messages[2]),
    ] {
        std::fs::write(&ini, format!("[uwsgi]\nmodule = edge2\n{line}\n")).unwrap();
        let out = ini_check(&ini);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(message), "{line}: {err}");
    }
    // What migrate wrote starts.
    let (rc, toml, _) = migrate_written(
        &ini,
        "[uwsgi]\nmodule = edge2\nthreads = 2000\nprocesses = 3\n",
    );
    assert_eq!(rc, 3, "{toml}");
    let conf = dir.path().join("postern.toml");
    std::fs::write(&conf, &toml).unwrap();
    let out = Command::new(postern_bin())
        .arg("--config")
        .arg(&conf)
        .arg("--print-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

// regression: migrate never looked up uid, gid and chown-socket (gunicorn's user and
// group), so a user misspelt in the file was found only by the start on the target host.
// One this host does not have is now listed under NEEDS ATTENTION with the lookup's
// message, and written all the same with the exit status unchanged: the file may be
// converted on another machine than the one postern will run on.
#[test]
fn migrate_names_users_and_groups_this_host_does_not_have_without_failing() {
    let dir = tempdir();
    let ini = dir.path().join("users.ini");
    let (rc, toml, summary) = migrate_written(
        &ini,
        "[uwsgi]\nmodule = edge2\nuid = postern-no-such-user\ngid = root\nchown-socket = root:postern-no-such-group\n",
    );
    let gunicorn = dir.path().join("gunicorn.conf.py");
    std::fs::write(
        &gunicorn,
        "wsgi_app = \"edge2:app\"\nuser = \"postern-no-such-user\"\ngroup = \"root\"\n",
    )
    .unwrap();
    let out = Command::new(postern_bin())
        .arg("migrate")
        .arg(&gunicorn)
        .output()
        .unwrap();
    let g_toml = String::from_utf8_lossy(&out.stdout).into_owned();
    let g_summary = String::from_utf8_lossy(&out.stderr).into_owned();
    for (rc, toml, summary, lines) in [
        (
            rc,
            &toml,
            &summary,
            &[
                (
                    "# line 3: uid = postern-no-such-user",
                    "#   no such user \"postern-no-such-user\" on this host",
                ),
                (
                    "# line 5: chown-socket = root:postern-no-such-group",
                    "#   no such group \"postern-no-such-group\" on this host",
                ),
            ][..],
        ),
        (
            out.status.code().unwrap_or(-1),
            &g_toml,
            &g_summary,
            &[(
                "# line 2: user = \"postern-no-such-user\"",
                "#   no such user \"postern-no-such-user\" on this host",
            )][..],
        ),
    ] {
        assert_eq!(rc, 0, "{summary}\n{toml}");
        let attention = toml
            .split("# NEEDS ATTENTION: these name a user or group this host does not have.")
            .nth(1)
            .and_then(|t| t.split("\n\n").next())
            .unwrap_or_else(|| panic!("{toml}"));
        for (line, why) in lines {
            assert!(
                attention.contains(&format!("{line}\n{why}")),
                "{line}:\n{toml}"
            );
        }
        // A user or group this host has is not listed.
        assert!(!attention.contains("= root\n"), "{toml}");
        assert!(!attention.contains("group = \"root\""), "{toml}");
        assert!(
            toml.contains("\nuid = \"postern-no-such-user\"\n"),
            "{toml}"
        );
        assert!(toml.contains("\ngid = \"root\"\n"), "{toml}");
        assert!(
            summary
                .contains("naming a user or group this host does not have (see NEEDS ATTENTION)"),
            "{summary}"
        );
    }
    assert!(
        toml.contains("\nsocket-owner = \"root:postern-no-such-group\"\n"),
        "{toml}"
    );
    assert!(summary.contains("2 naming a user or group"), "{summary}");
}

// regression: under `strict = true` an unknown line stops `postern --ini`, but migrate
// exited 0 on that file (only REFUSED lines made it 3). Now the two share one rule: exit 3,
// the line marked REFUSED in the TOML; without strict the same file exits 0.
#[test]
fn migrate_exits_3_on_an_unknown_line_under_strict_as_ini_stops_on_it() {
    let dir = tempdir();
    let ini = dir.path().join("strict.ini");
    std::fs::write(
        &ini,
        "[uwsgi]\nstrict = true\nmodule = edge2\nthreds = 4\nprocesses = 3\n",
    )
    .unwrap();
    let out = ini_check(&ini);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("threds = 4"), "{err}");
    let (rc, toml, summary) = migrate(&ini, &[], &[]);
    assert_eq!(rc, 3, "{summary}");
    assert!(toml.contains("workers = 3\n"), "{toml}");
    assert!(
        toml.contains("# line 4: threds = 4\n#   REFUSED (postern --ini stops on this)"),
        "{toml}"
    );
    assert!(
        summary.contains("(exit status 3: fix or remove"),
        "{summary}"
    );

    let (rc, _, summary) = migrate_written(
        &ini,
        "[uwsgi]\nstrict = false\nmodule = edge2\nthreds = 4\nprocesses = 3\n",
    );
    assert_eq!(rc, 0, "{summary}");
    // --ini takes the options (then fails on the import of an app that is not there).
    let out = ini_check(&ini);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("options: ok"), "{said}");
}

// regression: spooler, mules, cache2, locks, sharedarea, queue, signal and shared-import
// were "unknown: misspelt", and --ini started without them: an app that guards
// `import uwsgi` silently never ran its spooled, mule or cron jobs.
#[test]
fn ini_with_uwsgi_in_process_jobs_is_refused_saying_why() {
    let dir = tempdir();
    let ini = dir.path().join("jobs.ini");
    std::fs::write(
        &ini,
        "[uwsgi]\nmodule = edge2\nspooler = /tmp/spool\nmules = 2\ncache2 = name=default,items=100\n",
    )
    .unwrap();
    let out = Command::new(postern_bin())
        .arg("--ini")
        .arg(&ini)
        .arg("--check")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for line in ["spooler = /tmp/spool", "mules = 2", "cache2 = name=default"] {
        assert!(err.contains(line), "{line}: {err}");
    }
    assert!(err.contains("`uwsgi` Python module"), "{err}");
    assert!(err.contains("task queue"), "{err}");
    assert!(!err.contains("misspelt"), "{err}");
}

// regression: an app that imports uWSGI's `uwsgi` module stopped postern with a bare
// "No module named 'uwsgi'"; the message now says what to do.
#[test]
fn an_app_importing_the_uwsgi_module_is_told_it_does_not_exist() {
    let dir = tempdir();
    let app = dir.path().join("useuwsgi.py");
    std::fs::write(
        &app,
        "from uwsgidecorators import spool\n\ndef application(e, s):\n    s('200 OK', [])\n    return [b'x']\n",
    )
    .unwrap();
    let out = Command::new(postern_bin())
        .arg(&app)
        .arg("--check")
        .env_remove("VIRTUAL_ENV")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("No module named 'uwsgidecorators'"), "{err}");
    assert!(err.contains("postern has no `uwsgi` module"), "{err}");
    assert!(err.contains("task queue or a systemd timer"), "{err}");
}

// regression (newcomer review): `postern migrate x.yaml` read YAML as an ini file ("no
// [uwsgi] section"); attach-daemon/cron lines were only "ignored" (a Celery worker
// silently stopped running at the switch); `%d/app.sock` became `DIR//app.sock`; and
// `--ini` warned "not carried over as written" at every start of a file that carried
// over whole (the note that postern imports the app in each worker).
#[test]
fn migrate_says_what_to_do_about_yaml_side_processes_and_paths() {
    let dir = tempdir();
    let yaml = dir.path().join("vassal.yaml");
    std::fs::write(&yaml, "uwsgi:\n  module: app\n").unwrap();
    let (rc, _, err) = migrate(&yaml, &[], &[]);
    assert_eq!(rc, 2, "{err}");
    assert!(
        err.contains("postern reads uWSGI ini files, not YAML ones"),
        "{err}"
    );

    let ini = dir.path().join("app.ini");
    let (rc, out, err) = migrate_written(&ini, "[uwsgi]\nmodule = app\nmaster = true\nprocesses = 2\nsocket = %d/app.sock\nattach-daemon = celery -A app worker\n");
    assert_eq!(rc, 0, "{err}");
    assert!(
        out.contains("# NEEDS ATTENTION: uWSGI ran these beside the app"),
        "{out}"
    );
    assert!(out.contains("ExecStart=celery -A app worker"), "{out}");
    let sock = format!("uwsgi = [\"unix:{}/app.sock\"]", dir.path().display());
    assert!(out.contains(&sock), "{out}");
    assert!(!out.contains("//app.sock"), "{out}");

    let whole = dir.path().join("whole.ini");
    std::fs::write(
        &whole,
        "[uwsgi]\nmodule = app\nmaster = true\nprocesses = 2\n",
    )
    .unwrap();
    let out = Command::new(postern_bin())
        .arg("--ini")
        .arg(&whole)
        .arg("--print-config")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("not carried over as written"), "{err}");
    assert!(
        err.contains("[uwsgi]: carried over; uWSGI imported the app once"),
        "{err}"
    );
}

// regression: a [uwsgi] section with no option lines (or only comments) was refused as
// missing, contradicting itself ("there is no [uwsgi] section (it has [uwsgi]: …)"),
// even with the app on the command line; uWSGI starts on it.
#[test]
fn an_empty_uwsgi_section_is_no_options_not_a_missing_section() {
    let dir = tempdir();
    let ini = dir.path().join("empty.ini");
    let note = "empty.ini:2: [uwsgi] has no option lines: nothing to carry over";
    std::fs::write(&ini, "; a comment\n[uwsgi]\n# only comments\n").unwrap();
    let out = Command::new(postern_bin())
        .arg("--ini")
        .arg(&ini)
        .arg(testapp())
        .arg("--print-config")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains(note), "{err}");
    assert!(!err.contains("there is no"), "{err}");
    let (rc, toml, err) = migrate(&ini, &[], &[]);
    assert_eq!(rc, 0, "{err}");
    assert!(!err.contains("there is no"), "{err}");
    assert!(toml.contains("[uwsgi] has no option lines"), "{toml}");
}

// regression: with `logto = FILE` the app's own output (print(), sys.stderr, a logging
// console handler) no longer lands in FILE, and only docs/migration.md said so: neither
// --ini's start message nor migrate's comment on the line.
#[test]
fn logto_says_at_start_and_in_migrate_where_the_apps_output_goes() {
    let dir = tempdir();
    let ini = dir.path().join("app.ini");
    let log = dir.path().join("uwsgi.log");
    std::fs::write(
        &ini,
        format!("[uwsgi]\nmodule = app\nlogto = {}\n", log.display()),
    )
    .unwrap();
    let out = Command::new(postern_bin())
        .arg("--ini")
        .arg(&ini)
        .arg("--print-config")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let said = format!("goes to postern's stdout and stderr (the journal under systemd), not to {} as with uWSGI's logto", log.display());
    assert!(err.contains(&said), "{err}");
    assert!(!err.contains("not carried over as written"), "{err}");
    let (rc, toml, err) = migrate(&ini, &[], &[]);
    assert_eq!(rc, 0, "{err}");
    let line = format!(
        "# line 3: logto = {}\n#   uWSGI put the app's own output",
        log.display()
    );
    assert!(toml.contains(&line), "{toml}");
}
