//! `--ini` never writes a secret of the file to the log: the lines its warnings and
//! errors quote (at the start, at a reload, in `postern migrate`'s comments) show an
//! `env = NAME=…` line's value, and that of an option or placeholder named like a
//! secret (`*password*`, `*secret*`, `*token*`, `key`), as `(value hidden)`; why a
//! line is not carried over shows a secret placeholder as `%(name)`, and a password in
//! a value's form (a URL's, basicauth's, `PGPASSWORD=…`) hidden.
//! regression: `env = SECRET_KEY=…` was quoted whole, and went to the journal.

use std::process::Command;

use protocol_tests::harness::*;

const SECRETS: [&str; 4] = ["hunter1", "hunter2", "pw-of-db", "tok-of-api"];

/// An ini file serving the test app on `port`, with `extra` lines.
fn ini_text(port: u16, extra: &str) -> String {
    format!(
        "[uwsgi]\nsocket = 127.0.0.1:{port}\nwsgi-file = {}\nmaster = true\nprocesses = 1\nenv = SECRET_KEY=hunter1\nenv = SECRET_KEY=hunter2\ndb_password = pw-of-db\n{extra}",
        testapp()
    )
}

fn assert_hidden(said: &str) {
    for s in SECRETS {
        assert!(!said.contains(s), "{s} in:\n{said}");
    }
}

#[test]
fn start_reload_and_migrate_hide_the_secrets_of_quoted_lines() {
    let dir = tempdir();
    let port = free_port();
    let file = dir.path().join("app.ini");
    std::fs::write(&file, ini_text(port, "")).unwrap();
    let mut cmd = Command::new(postern_bin());
    cmd.arg("--ini").arg(&file).env("RUST_BACKTRACE", "1");
    let p = Postern::spawn(cmd, Addr::Tcp(port), dir.path(), None);
    let logs = p.logs();
    assert!(
        logs.contains(":6  env = SECRET_KEY=(value hidden): ignored: line 7 sets SECRET_KEY again"),
        "{logs}"
    );
    assert!(
        logs.contains(":8  db_password = (value hidden): unknown"),
        "{logs}"
    );
    // A reload that reads other such lines says them again.
    std::fs::write(&file, ini_text(port, "api-token = tok-of-api\n")).unwrap();
    p.signal(libc::SIGHUP);
    assert!(
        p.wait_log(":9  api-token = (value hidden): unknown", 20),
        "{}",
        p.logs()
    );
    assert_hidden(&p.logs());

    // A line postern refuses stops the start: its message lists the others too.
    std::fs::write(&file, ini_text(port, "http = :8000\n")).unwrap();
    let out = Command::new(postern_bin())
        .arg("--ini")
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("env = SECRET_KEY=(value hidden)"), "{err}");
    assert_hidden(&err);

    // migrate: the TOML carries the value (that is the conversion), its comments do not.
    std::fs::write(&file, ini_text(port, "api-token = tok-of-api\n")).unwrap();
    let comments = migrate_hiding(&file);
    assert!(
        comments
            .iter()
            .any(|c| c == "# line 8: db_password = (value hidden)"),
        "{comments:#?}"
    );
}

// The same for `postern migrate gunicorn.conf.py`: its comments quote each statement.
// regression: `raw_env = ["SECRET_KEY=…"]` and `SECRET_KEY = "…"` were quoted whole.
#[test]
fn gunicorn_migrate_comments_hide_raw_env_and_secrets() {
    let dir = tempdir();
    let conf = dir.path().join("gunicorn.conf.py");
    std::fs::write(
        &conf,
        "wsgi_app = \"app:app\"\nraw_env = [\"SECRET_KEY=hunter2\"]\nSECRET_KEY = \"pw-of-db\"\napi_token = os.environ.get(\"X\", \"tok-of-api\")\nimport os\nfrom os import environ as E\nos.putenv(\"SECRET_KEY\", \"hunter1\")\nos.environ.update({\"API_TOKEN\": \"tok-of-api\"})\nE[\"DB_PASSWORD\"] = \"pw-of-db\"\n",
    )
    .unwrap();
    let comments = migrate_hiding(&conf);
    // regression: environment values set by a call were quoted whole, and an aliased
    // os.environ's line was dropped without a word.
    for quoted in [
        "# line 2: raw_env = (value hidden)",
        "# line 3: SECRET_KEY = (value hidden)",
        "# line 4: api_token = (value hidden)",
        "# line 7: os.putenv(\"SECRET_KEY\", (value hidden))",
        "# line 8: os.environ.update({\"API_TOKEN\": (value hidden)})",
        "# line 9: E[\"DB_PASSWORD\"] = (value hidden)",
    ] {
        assert!(
            comments.iter().any(|c| c == quoted),
            "{quoted} not in {comments:#?}"
        );
    }
}

// regression: the lines were hidden, but the reasons quoted the values expanded: an
// attach-daemon's `ExecStart=` with `%(redis_password)` replaced by the password, and a
// password in a value's form (a URL's, basicauth's, `PGPASSWORD=`, `env = =VALUE`).
#[test]
fn reasons_hide_secret_placeholders_and_passwords_in_values() {
    const MORE: [&str; 4] = ["rd-pw-one", "route-pw-two", "cron-pw-three", "env-pw-four"];
    let dir = tempdir();
    let port = free_port();
    let file = dir.path().join("app.ini");
    std::fs::write(
        &file,
        ini_text(
            port,
            "redis_password = rd-pw-one\nattach-daemon = celery worker --broker redis://:%(redis_password)@localhost/0\nroute = ^/old redirect:https://user:route-pw-two@backup.example/\ncron = -1 -1 -1 -1 -1 PGPASSWORD=cron-pw-three pg_dump db\nenv = =env-pw-four\n",
        ),
    )
    .unwrap();
    let hidden = |said: &str| {
        for s in MORE {
            assert!(!said.contains(s), "{s} in:\n{said}");
        }
    };
    let mut cmd = Command::new(postern_bin());
    cmd.arg("--ini").arg(&file);
    let p = Postern::spawn(cmd, Addr::Tcp(port), dir.path(), None);
    let logs = p.logs();
    for shown in [
        "ExecStart=celery worker --broker redis://:%(redis_password)@localhost/0,",
        // (A basicauth route is refused now: src/uwsgi_ini/tests.rs hides its password.)
        "route = ^/old redirect:https://user:(value hidden)@backup.example/: ignored",
        "PGPASSWORD=(value hidden) pg_dump db",
        "env = =(value hidden): ignored: it names no variable",
    ] {
        assert!(logs.contains(shown), "{shown} not in:\n{logs}");
    }
    assert_hidden(&logs);
    hidden(&logs);

    // migrate: none of these is carried into the TOML, so none is anywhere.
    let out = Command::new(postern_bin())
        .arg("migrate")
        .arg(&file)
        .output()
        .unwrap();
    let toml = String::from_utf8_lossy(&out.stdout);
    assert!(
        toml.contains("redis://:%(redis_password)@localhost/0"),
        "{toml}"
    );
    hidden(&toml);
    hidden(&String::from_utf8_lossy(&out.stderr));
}

// regression: a secret glued to what precedes it was shown by --check, the start and
// migrate: an attach-daemon reason's `(ExecStart=PGPASSWORD=…` and
// `(ExecStart=mysqldump … -p…`, and in the quoted lines `exec:mysqladmin -p…` and
// `sh -c "mysql -p…"`; and curl's header credential glued to its name
// (`"Authorization:Bearer TOKEN"` showed the token, `'X-Api-Key:KEY'` the key) and
// `--oauth2-bearer TOKEN`.
#[test]
fn secrets_glued_to_a_prefix_or_a_quote_are_hidden() {
    const GLUED: [&str; 10] = [
        "pg-pw-a",
        "my-pw-b",
        "my-pw-c",
        "my-pw-d",
        "my-pw-e",
        "curl-pw-f",
        "curl-tok-g",
        "curl-tok-h",
        "curl-key-i",
        "curl-tok-j",
    ];
    let dir = tempdir();
    let file = dir.path().join("app.ini");
    std::fs::write(
        &file,
        ini_text(
            free_port(),
            "attach-daemon = PGPASSWORD=pg-pw-a pg_dump db\nattach-daemon = mysqldump -u root -pmy-pw-b db\nhook-as-user = exec:mysqladmin -pmy-pw-c\nsmart-attach-daemon = /tmp/x.pid sh -c \"mysql -pmy-pw-d\"\nattach-daemon = env MYSQL_PWD=my-pw-e mysqldump db\ncron = -1 -1 -1 -1 -1 curl -u admin:curl-pw-f -H \"Authorization: Bearer curl-tok-g\" https://x/\ncron = -1 -1 -1 -1 -1 curl -H \"Authorization:Bearer curl-tok-h\" -H 'X-Api-Key:curl-key-i' --oauth2-bearer curl-tok-j https://y/\n",
        ),
    )
    .unwrap();
    let hidden = |said: &str| {
        for s in GLUED {
            assert!(!said.contains(s), "{s} in:\n{said}");
        }
        assert_hidden(said);
    };
    let out = Command::new(postern_bin())
        .arg("--ini")
        .arg(&file)
        .arg("--check")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    for shown in [
        "(ExecStart=PGPASSWORD=(value hidden) pg_dump db,",
        "(ExecStart=mysqldump -u root -p(value hidden) db,",
        "hook-as-user = exec:mysqladmin -p(value hidden):",
        "sh -c \"mysql -p(value hidden)",
        "MYSQL_PWD=(value hidden) mysqldump db",
        "curl -u admin:(value hidden) -H \"Authorization: Bearer (value hidden) https://x/",
        "curl -H \"Authorization:Bearer (value hidden) -H 'X-Api-Key:(value hidden) --oauth2-bearer (value hidden) https://y/",
    ] {
        assert!(err.contains(shown), "{shown} not in:\n{err}");
    }
    hidden(&err);
    // migrate: its comments (none of these lines is carried over as a value).
    hidden(&migrate_hiding(&file).join("\n"));
}

/// `postern migrate FILE`: its TOML carries `SECRET_KEY = "hunter2"` (the conversion),
/// while its comments and its stderr show no secret; returns its comment lines.
fn migrate_hiding(file: &std::path::Path) -> Vec<String> {
    let out = Command::new(postern_bin())
        .arg("migrate")
        .arg(file)
        .output()
        .unwrap();
    let toml = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(toml.contains("SECRET_KEY = \"hunter2\""), "{toml}");
    let comments: Vec<String> = toml
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    assert_hidden(&comments.join("\n"));
    assert_hidden(&String::from_utf8_lossy(&out.stderr));
    comments
}
