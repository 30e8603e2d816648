//! A gunicorn operator's habits: gunicorn's options on the command line, its
//! `gunicorn.conf.py` given as the app, to `--config` or to `postern migrate`, and
//! `--timeout 0` to switch a limit off. Each is answered in postern's words (exit 2),
//! never with clap's look-alike suggestion of another meaning.

use std::process::{Command, Output, Stdio};

use protocol_tests::harness::*;

fn postern() -> Command {
    let mut c = Command::new(postern_bin());
    c.env_remove("VIRTUAL_ENV")
        .env_remove("POSTERN_APP")
        .env_remove("POSTERN_TIMEOUT")
        .stdin(Stdio::null());
    c
}

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out: Output = postern().args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `postern migrate FILE`: its exit code and stdout.
fn migrate(file: &std::path::Path) -> (Option<i32>, String) {
    let out = postern().arg("migrate").arg(file).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

// regression: gunicorn's options got clap's look-alike tips (`--reload`: '--preload',
// `--max-requests-jitter 50`: '--max-requests', `--bind`: '--gid'), `-w 4` was read as
// uWSGI's module and `-b HOST:PORT` as uWSGI's buffer size.
#[test]
fn gunicorns_options_are_said_in_posterns_words_with_their_values() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--bind", "unix:/run/app.sock", "-w", "4", "myproj.wsgi"],
            &[
                "`--bind unix:/run/app.sock` is gunicorn's: postern says `--uwsgi unix:/run/app.sock`",
                "uwsgi_pass",
                "`-w 4` is gunicorn's: postern says `--workers 4`",
                "the same with postern: postern --uwsgi unix:/run/app.sock --workers 4 myproj.wsgi\n",
            ],
        ),
        (
            &["-b", "127.0.0.1:8000", "--workers", "3", "app:app"],
            &["the same with postern: postern --uwsgi 127.0.0.1:8000 --workers 3 app:app\n"],
        ),
        (
            &["-k", "uvicorn.workers.UvicornWorker", "main:app"],
            &["--interface auto", "the same with postern: postern main:app\n"],
        ),
        (
            &["-k", "gthread", "--threads", "4", "app:app"],
            &["gthread", "the same with postern: postern --threads 4 app:app\n"],
        ),
        (
            &["--reload", "app:app"],
            &["no file-watch reload", "--touch-reload FILE", "SIGHUP"],
        ),
        (
            &["--max-requests", "1000", "--max-requests-jitter", "50", "app:app"],
            &[
                "`--max-requests-jitter 50` is gunicorn's: postern does not need it: postern jitters by itself",
                "the same with postern: postern --max-requests 1000 app:app\n",
            ],
        ),
        (
            &["--user", "www-data", "--group", "www-data", "app:app"],
            &["the same with postern: postern --uid www-data --gid www-data app:app\n"],
        ),
        (
            &["-w", "2", "-m", "23", "app:app"],
            &[
                "`-m 23` is gunicorn's: postern says `--socket-mode 750`",
                "the same with postern: postern --workers 2 --socket-mode 750 app:app\n",
            ],
        ),
        // regression (review2 LOW): gunicorn's tcp:// and unix:// forms.
        (
            &["-b", "tcp://127.0.0.1:8000", "-b", "unix:///run/a.sock", "app:app"],
            &["the same with postern: postern --uwsgi 127.0.0.1:8000 --uwsgi unix:/run/a.sock app:app\n"],
        ),
        (
            &["--backlog", "2048", "app:app"],
            &["the same with postern: postern --listen-backlog 2048 app:app\n"],
        ),
        (
            &["--access-logfile", "-", "--error-logfile", "/var/log/a.log", "app:app"],
            &["the same with postern: postern --access-log - --log-file /var/log/a.log app:app\n"],
        ),
        (
            &["--pid", "/run/a.pid", "-e", "A=1", "app:app"],
            &["the same with postern: postern --pidfile /run/a.pid --env A=1 app:app\n"],
        ),
        (
            &["--statsd-host", "h:8125", "app:app"],
            &["no StatsD", "--stats"],
        ),
        (
            &["-D", "--forwarded-allow-ips", "*", "--keep-alive", "5", "app:app"],
            &[
                "systemd",
                "REMOTE_ADDR",
                "fastcgi_keep_conn",
                "the same with postern: postern app:app\n",
            ],
        ),
    ];
    for (args, wanted) in cases {
        let (code, err) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        for w in *wanted {
            assert!(err.contains(w), "{args:?}: wanted {w:?} in:\n{err}");
        }
        assert!(!err.contains("similar argument"), "{args:?}: {err}");
        assert!(err.contains("docs/migration.md"), "{args:?}: {err}");
    }
}

// regression: each of these alone got clap's tip for an option of another meaning, or
// "to pass '-c' as a value, use '-- -c'".
#[test]
fn no_look_alike_tip_for_a_gunicorn_option() {
    let cases: &[&[&str]] = &[
        &["--reload"],
        &["--max-requests-jitter", "50"],
        &["--bind", "unix:/x.sock"],
        &["--user", "u"],
        &["--group", "g"],
        &["--backlog", "2048"],
        &["--error-logfile", "-"],
        &["--statsd-host", "h:8125"],
        &["-m", "007", "-D"],
        &["-c", "gunicorn.conf.py"],
        &["-e", "A=1"],
        &["-D"],
        &["-u", "www-data"],
        &["-g", "www-data"],
    ];
    for args in cases {
        let (code, err) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains("is gunicorn's"), "{args:?}: {err}");
        for bad in ["tip:", "similar argument", "as a value, use"] {
            assert!(!err.contains(bad), "{args:?}: {bad:?} in:\n{err}");
        }
    }
}

// regression: `-w 4` said "postern says `4` (the app is postern's argument)".
#[test]
fn a_short_flag_of_both_gunicorn_and_uwsgi_is_read_from_its_value() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["-w", "4", "app:app"],
            "`-w 4` is gunicorn's: postern says `--workers 4`",
        ),
        (
            &["-w4", "app:app"],
            "`-w4` is gunicorn's: postern says `--workers 4`",
        ),
        (&["-w", "pkg.mod"], "`-w pkg.mod` is uWSGI's"),
        (
            &["-p", "/run/a.pid", "app:app"],
            "`-p /run/a.pid` is gunicorn's: postern says `--pidfile /run/a.pid`",
        ),
        (
            &["-p", "4", "app:app"],
            "`-p 4` is uWSGI's: postern says `--workers 4`",
        ),
        (
            &["-b", "0.0.0.0:8000", "app:app"],
            "`-b 0.0.0.0:8000` is gunicorn's: postern says `--uwsgi 0.0.0.0:8000`",
        ),
        (
            &["-b", "32768", "app:app"],
            "`-b 32768` is uWSGI's: postern says `--buffer-size 32768`",
        ),
        // With another option only gunicorn has, -t is gunicorn's (and says how it differs).
        (
            &["-w", "2", "-t", "30", "app:app"],
            "`-t 30` is gunicorn's: postern says `--timeout 30`; gunicorn's is a worker heartbeat",
        ),
        // Alone, or beside options of postern's, it is both: said once, for both.
        (
            &["-t", "30", "app:app"],
            "`-t 30` is gunicorn's and uWSGI's: postern says `--timeout 30`",
        ),
        (
            &["-m", "0o027", "app:app"],
            "`-m 0o027` is gunicorn's: postern says `--socket-mode 750`",
        ),
        // Beside another uWSGI option, it is uWSGI's.
        (&["-t", "30", "--processes", "2", "app:app"], "`-t 30` is uWSGI's"),
        // A typo of postern's own beside a gunicorn option keeps clap's suggestion, and
        // its value left behind is not read as a subcommand.
        (
            &["-w", "4", "--workrs", "2", "app:app"],
            "`--workrs` is neither postern's option nor a gunicorn option postern knows; a similar option exists: `--workers`\npostern: postern's options",
        ),
        // --help beside it is postern's, not an error (no help text in the message).
        (
            &["-w", "4", "--help"],
            "`-w 4` is gunicorn's: postern says `--workers 4`\npostern: postern's options",
        ),
        // Mixed: each in its own words, and the line in postern's.
        (
            &["--socket", "/run/a.sock", "-w", "4", "app:app"],
            "the same with postern: postern --uwsgi unix:/run/a.sock --workers 4 app:app\n",
        ),
    ];
    for (args, wanted) in cases {
        let (code, err) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(
            err.contains(wanted),
            "{args:?}: wanted {wanted:?} in:\n{err}"
        );
    }
}

#[test]
fn a_gunicorn_option_postern_cannot_do_suggests_no_command() {
    for args in [
        &["-k", "gevent", "app:app"][..],
        &["-c", "gunicorn.conf.py", "app:app"],
        &["--paste", "dev.ini"],
    ] {
        let (code, err) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains("postern cannot do it"), "{args:?}: {err}");
        assert!(!err.contains("the same with postern"), "{args:?}: {err}");
    }
    let (_, err) = run(&["-c", "gunicorn.conf.py"]);
    assert!(err.contains("postern migrate gunicorn.conf.py"), "{err}");
}

const CONF: &str = r#"import multiprocessing
import os

# a Django site
wsgi_app = "mysite.wsgi:application"
bind = ["unix:/run/app.sock", "127.0.0.1:8000"]
workers = 3
worker_class = "gthread"
threads = 4
timeout = 30
max_requests = 1000
max_requests_jitter = 50
preload_app = False
reload = True
accesslog = "-"
errorlog = '/var/log/app/error.log'
loglevel = "info"
raw_env = [
    "DJANGO_SETTINGS_MODULE=mysite.settings",  # settings
]
user = "www-data"
helper = 3
"#;

// regression: a gunicorn.conf.py given as the app was imported after the socket was
// bound ("has no attribute 'application'"); given to --config it was a TOML parse
// error or "unknown key bind".
#[test]
fn a_gunicorn_config_file_given_as_the_app_or_to_config_is_named() {
    let dir = tempdir();
    let conf = dir.path().join("gunicorn.conf.py");
    std::fs::write(&conf, CONF).unwrap();
    let conf = conf.to_str().unwrap();
    let sock = dir.path().join("a.sock");
    let uwsgi = format!("unix:{}", sock.display());
    let (code, err) = run(&[conf, "--uwsgi", &uwsgi]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(
            "is not an app: this is a gunicorn config file (Python); postern's config file is TOML"
        ),
        "{err}"
    );
    assert!(err.contains("postern migrate"), "{err}");
    assert!(err.contains("`postern mysite.wsgi:application`"), "{err}");
    assert!(!err.contains("listening"), "{err}");
    assert!(!sock.exists());

    let (code, err) = run(&["--config", conf, "app:app"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("this is a gunicorn config file (Python); postern's config file is TOML"),
        "{err}"
    );
    assert!(!err.contains("TOML parse error"), "{err}");

    // Beside a gunicorn option, no command is suggested with that --config.
    let (code, err) = run(&["--config", conf, "-w", "4", "app:app"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("`-w 4` is gunicorn's"), "{err}");
    assert!(err.contains("this is a gunicorn config file"), "{err}");
    assert!(!err.contains("the same with postern"), "{err}");

    // Without the .py name: what it assigns tells.
    let plain = dir.path().join("gunicorn.conf");
    std::fs::write(&plain, "bind = \"127.0.0.1:8000\"\nworkers = 3\n").unwrap();
    let (code, err) = run(&["--config", plain.to_str().unwrap(), "app:app"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("this is a gunicorn config file"), "{err}");

    // A TOML file with a gunicorn name or two: a hint for each key.
    let toml = dir.path().join("postern.toml");
    std::fs::write(
        &toml,
        "workers = 2\naccesslog = \"-\"\nbind = \"127.0.0.1:8000\"\n",
    )
    .unwrap();
    let (code, err) = run(&["--config", toml.to_str().unwrap(), "app:app"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("accesslog (gunicorn's accesslog: postern's key is access-log)"),
        "{err}"
    );
    assert!(
        err.contains("bind (gunicorn's bind: postern's key is uwsgi)"),
        "{err}"
    );
}

// regression (review2 HIGH, f5cc0ab): an app file that imports its app and sets a
// name gunicorn also uses (`loglevel`, `bind`) was refused at start as "a gunicorn
// config file", so a working deployment stopped.
#[test]
fn an_app_file_that_imports_its_app_and_sets_a_gunicorn_name_is_served() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("main.py"),
        "def app(e, s):\n    s('200 OK', []); return [b'ok']\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("wsgi.py"),
        "import logging\nloglevel = logging.INFO\nlogging.basicConfig(level=loglevel)\nfrom main import app\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("wsgi3.py"),
        "from main import app as application\nbind = None  # unused\nuser = 'me'\n",
    )
    .unwrap();
    for file in ["wsgi.py", "wsgi3.py"] {
        let app = dir.path().join(file);
        let (code, err) = run(&[app.to_str().unwrap(), "--check"]);
        assert_eq!(code, Some(0), "{file}: {err}");
        let p = Spawn::unix(dir.path(), app.to_str().unwrap()).start();
        let (status, body) = p.get("/");
        assert_eq!((status, body.as_slice()), (200, &b"ok"[..]), "{file}");
    }
    // A file that only looks like one (loglevel, no bind) is imported, and the "no
    // callable" error carries the hint.
    let weak = dir.path().join("settings.py");
    std::fs::write(&weak, "loglevel = 'info'\nuser = 'www-data'\n").unwrap();
    let sock = format!("unix:{}", dir.path().join("w.sock").display());
    let (code, err) = run(&[weak.to_str().unwrap(), "--uwsgi", &sock]);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("if "), "{err}");
    assert!(err.contains("is a gunicorn config file"), "{err}");
    assert!(err.contains("postern migrate"), "{err}");
}

#[test]
fn migrate_reads_a_gunicorn_config_without_running_it() {
    let dir = tempdir();
    let ran = dir.path().join("ran");
    let conf = dir.path().join("gunicorn.conf.py");
    std::fs::write(
        &conf,
        format!("{CONF}os.mkdir({:?})\n", ran.to_str().unwrap()),
    )
    .unwrap();
    let out = postern()
        .args(["migrate", conf.to_str().unwrap()])
        .output()
        .unwrap();
    let toml = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}\n{toml}");
    assert!(!ran.exists(), "the file was run");
    for want in [
        "app = \"mysite.wsgi:application\"",
        "uwsgi = [\"unix:/run/app.sock\", \"127.0.0.1:8000\"]",
        "workers = 3",
        "threads = 4",
        "timeout = 30",
        "max-requests = 1000",
        "log-file = \"/var/log/app/error.log\"",
        "env.DJANGO_SETTINGS_MODULE = \"mysite.settings\"",
        "uid = \"www-data\"",
        "# Not carried over:",
        "# line 14: reload = True",
        "jitters by itself",
    ] {
        assert!(toml.contains(want), "wanted {want:?} in:\n{toml}");
    }
    assert!(err.contains("carried over"), "{err}");

    // The TOML is postern's: --print-config reads it back.
    let file = dir.path().join("postern.toml");
    std::fs::write(&file, toml.as_bytes()).unwrap();
    let out = postern()
        .args(["--config", file.to_str().unwrap(), "--print-config"])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("workers = 3"), "{printed}");
    assert!(printed.contains("DJANGO_SETTINGS_MODULE"), "{printed}");

    // A value it would have to run the file for, and a server hook: exit 3, listed first.
    std::fs::write(
        &conf,
        "import multiprocessing\nworkers = multiprocessing.cpu_count() * 2 + 1\nbind = \"127.0.0.1:8000\"\n\ndef post_fork(server, worker):\n    pass\n",
    )
    .unwrap();
    let (code, toml) = migrate(&conf);
    assert_eq!(code, Some(3), "{toml}");
    assert!(toml.contains("# NEEDS ATTENTION:"), "{toml}");
    assert!(
        toml.contains("# line 2: workers = multiprocessing.cpu_count() * 2 + 1"),
        "{toml}"
    );
    assert!(toml.contains("post_fork()"), "{toml}");
    assert!(toml.contains("uwsgi = [\"127.0.0.1:8000\"]"), "{toml}");
}

// regression (probe 385): `capture_output = True` was "not carried over" with a note
// saying the logging module's output went to postern's log: it goes to stderr, and the
// app's log lines left the errorlog file their operator watched without a word.
#[test]
fn migrate_lists_capture_output_as_needing_attention() {
    let dir = tempdir();
    let conf = dir.path().join("gunicorn.conf.py");
    std::fs::write(
        &conf,
        "capture_output = True\nerrorlog = \"/var/log/app/error.log\"\n",
    )
    .unwrap();
    let (code, toml) = migrate(&conf);
    assert_eq!(code, Some(3), "{toml}");
    let attention = toml
        .split("# NEEDS ATTENTION:")
        .nth(1)
        .and_then(|t| t.split("\n\n").next())
        .unwrap_or_else(|| panic!("{toml}"));
    assert!(
        attention.contains("# line 1: capture_output = True"),
        "{toml}"
    );
    assert!(attention.contains("go to postern's stderr"), "{toml}");
    assert!(
        toml.contains("log-file = \"/var/log/app/error.log\""),
        "{toml}"
    );
    // On a command line it is said, and the rest runs.
    let out = postern()
        .args(["--capture-output", "app.py", "--check"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("postern has no such option; postern does not capture"),
        "{err}"
    );
    // gunicorn's default access_log_format is Apache's combined: postern's combined.
    // regression (probe 385): "no equivalent".
    std::fs::write(
        &conf,
        "access_log_format = '%(h)s %(l)s %(u)s %(t)s \"%(r)s\" %(s)s %(b)s \"%(f)s\" \"%(a)s\"'\n",
    )
    .unwrap();
    let (code, toml) = migrate(&conf);
    assert_eq!(code, Some(0), "{toml}");
    assert!(toml.contains("access-log-format = \"combined\""), "{toml}");
}

// regression: `workers = ++4` (an expression: ast.literal_eval refuses it) was read as
// the literal 4 and carried over without a word. It now needs attention as any other
// value migrate would have to run the file for, with its line and the same advice.
#[test]
fn migrate_reads_one_sign_as_a_literal_and_two_as_an_expression() {
    let dir = tempdir();
    let conf = dir.path().join("gunicorn.conf.py");
    std::fs::write(&conf, "workers = ++4\nthreads = 2 * 4\ntimeout = +30\n").unwrap();
    let (code, toml) = migrate(&conf);
    assert_eq!(code, Some(3), "{toml}");
    let attention = toml
        .split("# NEEDS ATTENTION:")
        .nth(1)
        .and_then(|t| t.split("\n\n").next())
        .unwrap_or_else(|| panic!("{toml}"));
    for line in ["# line 1: workers = ++4", "# line 2: threads = 2 * 4"] {
        assert!(attention.contains(line), "{line}:\n{toml}");
    }
    let advice = |setting: &str| {
        format!("not a literal value, and migrate does not run the file: work it out and write postern's option here ({setting} = …)")
    };
    let joined = attention
        .lines()
        .map(|l| l.trim_start_matches('#').trim())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(joined.contains(&advice("workers")), "{toml}");
    assert!(joined.contains(&advice("threads")), "{toml}");
    assert!(!toml.lines().any(|l| l.starts_with("workers =")), "{toml}");
    assert!(toml.contains("\ntimeout = 30\n"), "{toml}");
}

// regression (review2 MEDIUM 2): migrate wrote values that start-up refuses
// (`loglevel = "warning"`, `threads = 2000`, `timeout = 1e400`) with exit 0.
#[test]
fn migrate_maps_gunicorns_level_names_and_lists_values_start_up_refuses() {
    let dir = tempdir();
    let conf = dir.path().join("gunicorn.conf.py");
    let migrate = |text: &str| {
        std::fs::write(&conf, text).unwrap();
        let out = postern()
            .current_dir(dir.path())
            .args(["migrate", conf.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, toml) =
        migrate("bind = \"unix:/run/app.sock\"\nloglevel = \"WARNING\"\nworkers = 3\n");
    assert_eq!(code, Some(0), "{toml}");
    assert!(toml.contains("log-level = \"warn\""), "{toml}");
    let file = dir.path().join("p.toml");
    std::fs::write(&file, &toml).unwrap();
    let (code, err) = run(&[
        "--config",
        file.to_str().unwrap(),
        "--print-config",
        "app:app",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (_, toml) = migrate("bind = \"127.0.0.1:8000\"\nloglevel = 'critical'\n");
    assert!(toml.contains("log-level = \"error\""), "{toml}");

    let (code, toml) =
        migrate("bind = \"127.0.0.1:8000\"\nworkers = 2\nthreads = 2000\ntimeout = 1e400\n");
    assert_eq!(code, Some(3), "{toml}");
    let attention = toml.split("\n\n").next().unwrap();
    for want in [
        "# line 3: threads = 2000",
        "# line 4: timeout = 1e400",
        "start-up refuses",
    ] {
        assert!(attention.contains(want), "wanted {want:?} in:\n{toml}");
    }
    assert!(!toml.contains("\nthreads ="), "{toml}");
    assert!(!toml.contains("\ntimeout ="), "{toml}");
    assert!(toml.contains("\nworkers = 2"), "{toml}");
}

// regression (review2 MEDIUM 3 and 4): settings inside a top-level `if`, after `;`,
// annotated or behind a BOM were dropped with exit 0, hooks set by assignment were
// called the file's own variables, and string values came out altered.
#[test]
fn migrate_drops_no_setting_silently_and_keeps_strings_exact() {
    let dir = tempdir();
    let conf = dir.path().join("g.py");
    let migrate = |text: &[u8]| {
        std::fs::write(&conf, text).unwrap();
        let out = postern()
            .args(["migrate", conf.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, toml) = migrate(b"import os\nbind = \"127.0.0.1:8000\"\nif os.environ.get(\"PROD\"):\n    workers = 8\n    bind = \"unix:/run/app.sock\"\n");
    assert_eq!(code, Some(3), "{toml}");
    assert!(
        toml.contains("# line 3: if os.environ.get(\"PROD\"):"),
        "{toml}"
    );
    assert!(
        toml.contains("workers, bind set inside a top-level `if` block"),
        "{toml}"
    );

    let (code, toml) =
        migrate(b"bind = \"127.0.0.1:8000\"\nx = 1; threads = 4\nworkers: int = 4\n");
    assert_eq!(code, Some(0), "{toml}");
    assert!(toml.contains("\nthreads = 4"), "{toml}");
    assert!(toml.contains("\nworkers = 4"), "{toml}");

    let (code, toml) = migrate(b"\xef\xbb\xbfbind = \"127.0.0.1:8000\"\nworkers = 4\n");
    assert_eq!(code, Some(0), "{toml}");
    assert!(toml.contains("uwsgi = [\"127.0.0.1:8000\"]"), "{toml}");

    let (code, toml) = migrate(b"from hooks import on_start\nbind = \"127.0.0.1:8000\"\nwhen_ready = on_start\npost_fork = lambda s, w: None\nworkers += 1\n");
    assert_eq!(code, Some(3), "{toml}");
    assert!(toml.contains("gunicorn's server hook when_ready"), "{toml}");
    assert!(toml.contains("gunicorn's server hook post_fork"), "{toml}");
    assert!(
        toml.contains("sets workers in a way migrate does not read"),
        "{toml}"
    );
    assert!(!toml.contains("file's own"), "{toml}");

    let (code, toml) = migrate(b"bind = \"unix:/run/\\\napp.sock\"\npidfile = \"/run/\\x61pp.pid\"\nraw_env = [\"=x\"]\nsecure_scheme_headers = {\"X-FORWARDED-PROTO\": \"https\"}\n");
    assert!(toml.contains("uwsgi = [\"unix:/run/app.sock\"]"), "{toml}");
    assert!(toml.contains("pidfile = \"/run/app.pid\""), "{toml}");
    assert!(!toml.contains("env. ="), "{toml}");
    assert!(toml.contains("# line 5: secure_scheme_headers"), "{toml}");
    assert!(toml.contains("not an environment variable name"), "{toml}");
    let file = dir.path().join("p.toml");
    std::fs::write(&file, &toml).unwrap();
    let out = postern()
        .args([
            "--config",
            file.to_str().unwrap(),
            "--print-config",
            "app:app",
        ])
        .output()
        .unwrap();
    // The TOML is postern's (the empty variable name was listed, not written).
    assert!(
        out.status.success(),
        "{code:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// regression (finding 8 of a gunicorn operator's report): `--timeout 0` was "not a
// positive number of seconds" and `off` "not a duration", so a --config file's timeout
// could not be removed on the command line or with POSTERN_TIMEOUT.
#[test]
fn a_timeout_from_the_config_file_is_switched_off_with_0_or_off() {
    let dir = tempdir();
    let file = dir.path().join("postern.toml");
    std::fs::write(
        &file,
        "app = \"app:app\"\ntimeout = 30\nslow-log = 5\nmax-lifetime = 3600\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let print = |extra: &[&str], env: Option<&str>| {
        let mut c = postern();
        c.args(["--config", file, "--print-config"]).args(extra);
        if let Some(v) = env {
            c.env("POSTERN_TIMEOUT", v);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // A limit switched off is printed `key = "off"` with its source (not "not set").
    let set = |toml: &str, key: &str| {
        toml.lines().any(|l| {
            l.starts_with(&format!("{key} = ")) && !l.starts_with(&format!("{key} = \"off\""))
        })
    };
    let off = |toml: &str, key: &str| {
        toml.lines()
            .any(|l| l.starts_with(&format!("{key} = \"off\"  # ")))
    };
    let before = print(&[], None);
    assert!(
        set(&before, "timeout") && set(&before, "slow-log"),
        "{before}"
    );
    for (extra, env) in [
        (&["--timeout", "0"][..], None),
        (&["--timeout", "off"], None),
        (&["--timeout=0s"], None),
        (&[], Some("off")),
        (&[], Some("0")),
    ] {
        let after = print(extra, env);
        assert!(!set(&after, "timeout"), "{extra:?} {env:?}: {after}");
        assert!(off(&after, "timeout"), "{extra:?} {env:?}: {after}");
        assert!(set(&after, "slow-log"), "{extra:?} {env:?}: {after}");
    }
    let after = print(&["--slow-log", "off", "--max-lifetime", "0"], None);
    assert!(
        !set(&after, "slow-log") && !set(&after, "max-lifetime"),
        "{after}"
    );
    assert!(
        off(&after, "slow-log") && off(&after, "max-lifetime"),
        "{after}"
    );
    assert!(set(&after, "timeout"), "{after}");
    // Nothing left to supervise: no master is implied by them any more.
    let after = print(
        &["--timeout", "0", "--slow-log", "0", "--max-lifetime", "0"],
        None,
    );
    assert!(!after.contains("implied by a supervisor option"), "{after}");

    // A bad value says how to switch it off; other durations keep their positive bound.
    let (code, err) = run(&["--timeout", "soon", "app:app"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("0 or off: no limit"), "{err}");
    let (code, err) = run(&["--head-timeout", "0", "app:app"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not a positive number of seconds"), "{err}");
    // regression (review2 LOW): --help did not say 0 or off switches them off.
    let help = postern().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for want in [
        "(0 or off: no limit)",
        "(0 or off: none)",
        "(0 or off: never)",
    ] {
        assert!(help.contains(want), "{want}: {help}");
    }
}

// regression: `--log-file -` (gunicorn's habit for stderr) wrote postern's log to a file
// named `-` in the working directory.
#[test]
fn log_file_dash_is_stderr() {
    let dir = tempdir();
    let sock = format!("unix:{}", dir.path().join("a.sock").display());
    let out = postern()
        .current_dir(dir.path())
        .args(["--log-file", "-", "no_such_module_here", "--uwsgi", &sock])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no_such_module_here"), "{err}");
    assert!(!dir.path().join("-").exists(), "a file named - was written");
}

// regression (review-misc2): an augmented or several-target assignment of raw_env (or
// of a name like a secret's) was quoted whole in migrate's comments, under NEEDS
// ATTENTION, where its value appears nowhere else.
#[test]
fn migrate_hides_raw_env_in_augmented_and_tuple_assignments() {
    let dir = tempdir();
    let conf = dir.path().join("gunicorn.conf.py");
    std::fs::write(
        &conf,
        "wsgi_app = \"app:app\"\nraw_env = []\nraw_env += [\"API_TOKEN=plainhunter2\"]\nbind, raw_env = \"127.0.0.1:8000\", [\"DB_PASSWORD=plainhunter4\"]\nworkers, db_password = 2, \"plainhunter5\"\n",
    )
    .unwrap();
    let (_, out) = migrate(&conf);
    for secret in ["plainhunter2", "plainhunter4", "plainhunter5"] {
        assert!(!out.contains(secret), "{secret} quoted in:\n{out}");
    }
    for quoted in [
        "raw_env += (value hidden)",
        "bind, raw_env = (value hidden)",
        "workers, db_password = (value hidden)",
    ] {
        assert!(out.contains(quoted), "{quoted:?} not in:\n{out}");
    }
}

// regression (review-final): environment set by a call or through os.environ vanished
// from migrate's output without a line (exit 0), and passwords in a value's form (a
// URL's, NAME=VALUE) were quoted in its comments.
#[test]
fn migrate_lists_environment_it_cannot_read_and_hides_passwords_by_form() {
    let dir = tempdir();
    let conf = dir.path().join("gunicorn.conf.py");
    std::fs::write(
        &conf,
        "import os\nwsgi_app = \"app:app\"\nraw_env = [\"A=1\"]\nraw_env.append(\"DB_PASSWORD=plainhunter6\")\nos.environ[\"DJANGO_SETTINGS_MODULE\"] = \"mysite.settings.prod\"\nos.environ.setdefault(\"TZ\", \"UTC\")\nbroker_url = \"redis://:plainhunter13@localhost/0\"\n",
    )
    .unwrap();
    let (code, out) = migrate(&conf);
    assert_eq!(code, Some(3), "{out}");
    for line in [
        "# line 4: raw_env.append(",
        "# line 5: os.environ[\"DJANGO_SETTINGS_MODULE\"]",
        "# line 6: os.environ.setdefault(",
    ] {
        assert!(out.contains(line), "{line:?} not in:\n{out}");
    }
    assert!(
        out.contains("sets the environment in a way migrate does not read"),
        "{out}"
    );
    for secret in ["plainhunter6", "plainhunter13"] {
        assert!(!out.contains(secret), "{secret} quoted in:\n{out}");
    }
}
