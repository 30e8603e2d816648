//! Mapping tests: each uWSGI option, the report, and `postern migrate`'s output.

use super::*;

fn ctx() -> Context {
    Context {
        env: [("APP_ROOT", "/srv/shop")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        cwd: PathBuf::from("/work"),
        hostname: "web1".into(),
        unix_time_micros: 0,
        uid: 0,
        gid: 0,
        user: None,
        group: None,
        cpus: 2,
        migrating: false,
    }
}

fn tr(body: &str) -> Translation {
    let facts = FileFacts {
        given: "/etc/uwsgi/shop.ini".into(),
        absolute: PathBuf::from("/etc/uwsgi/shop.ini"),
        section: None,
        inode: None,
    };
    translate(&format!("[uwsgi]\n{body}\n"), &facts, &ctx()).unwrap()
}

fn get<'t>(t: &'t Translation, key: &str) -> Option<&'t toml::Value> {
    t.table.get(key)
}

fn s(v: &str) -> toml::Value {
    toml::Value::String(v.into())
}

fn strings(v: &[&str]) -> toml::Value {
    toml::Value::Array(v.iter().map(|x| s(x)).collect())
}

/// The outcome of the line whose key is `key` (the first one).
fn outcome<'t>(t: &'t Translation, key: &str) -> &'t Outcome {
    &t.lines.iter().find(|l| l.entry.key == key).unwrap().outcome
}

fn is_carried(o: &Outcome) -> bool {
    matches!(o, Outcome::Carried { .. })
}

#[test]
fn maps_sockets_to_listeners() {
    let t = tr("socket = :3031\nsocket = /run/shop.sock\nuwsgi-socket = 127.0.0.1:4000\nfastcgi-socket = [::1]:9000\nscgi-socket = /run/scgi.sock");
    assert_eq!(
        get(&t, "uwsgi"),
        Some(&strings(&[
            "0.0.0.0:3031",
            "unix:/run/shop.sock",
            "127.0.0.1:4000"
        ]))
    );
    assert_eq!(get(&t, "fastcgi"), Some(&strings(&["[::1]:9000"])));
    assert_eq!(get(&t, "scgi"), Some(&strings(&["unix:/run/scgi.sock"])));
    // ":3031" is every interface in uWSGI: carried as such, and said.
    let Outcome::Carried { note: Some(n), .. } = outcome(&t, "socket") else {
        panic!()
    };
    assert!(n.contains("every interface"), "{n}");
    assert_eq!(t.origin("uwsgi").unwrap(), "/etc/uwsgi/shop.ini:2,3,4");
}

#[test]
fn protocol_applies_to_socket_lines() {
    let t = tr("protocol = fastcgi\nsocket = 127.0.0.1:9000\nuwsgi-socket = /run/u.sock");
    assert_eq!(get(&t, "fastcgi"), Some(&strings(&["127.0.0.1:9000"])));
    assert_eq!(get(&t, "uwsgi"), Some(&strings(&["unix:/run/u.sock"])));
    assert!(is_carried(outcome(&t, "protocol")));
    let t = tr("socket = :8080\nprotocol = http");
    assert!(matches!(outcome(&t, "socket"), Outcome::Refused(_)));
}

#[test]
fn refuses_sockets_postern_cannot_listen_on() {
    let t = tr("socket = @abstract\nsocket = =0\nshared-socket = :443");
    let refused = t
        .lines
        .iter()
        .filter(|l| matches!(l.outcome, Outcome::Refused(_)))
        .count();
    assert_eq!(refused, 3);
    assert!(get(&t, "uwsgi").is_none());
}

#[test]
fn refuses_http_in_one_message_saying_what_to_do() {
    let t = tr("socket = /run/shop.sock\nhttp = :9090\nhttp-socket = 127.0.0.1:8000\nhttps = :443,foo.crt,foo.key\nemperor = /etc/uwsgi/vassals\nhttp-timeout = 30");
    let e = t.check().unwrap_err().to_string();
    // A heading, one line each, then what postern would run without.
    assert_eq!(e.lines().count(), 7, "{e}");
    assert!(e.contains("Once those are fixed, postern runs without these (a warning at start):\n  /etc/uwsgi/shop.ini:7  http-timeout = 30: ignored"), "{e}");
    assert!(
        e.starts_with("postern cannot run these lines of [uwsgi] as written"),
        "{e}"
    );
    assert!(
        e.contains("/etc/uwsgi/shop.ini:3  http = :9090: uWSGI's built-in HTTP router"),
        "{e}"
    );
    assert!(
        e.contains("uwsgi_pass to postern's socket (socket = /run/shop.sock)"),
        "{e}"
    );
    assert!(e.contains("http-socket = 127.0.0.1:8000: postern speaks uwsgi, FastCGI and SCGI, not HTTP: make it socket = 127.0.0.1:8000 and point nginx's uwsgi_pass at it"), "{e}");
    assert!(e.contains("emperor"), "{e}");
    // An HTTP router option is only ignored: refusing `http` already says it.
    assert!(matches!(outcome(&t, "http-timeout"), Outcome::Ignored(_)));
    assert_eq!(get(&t, "uwsgi"), Some(&strings(&["unix:/run/shop.sock"])));
}

#[test]
fn ignores_what_nginx_does_in_one_warning() {
    let t = tr("module = shop.wsgi\nstatic-map = /static=/srv/static\nroute = ^/old redirect:/new\nroute-if = equal:${PATH_INFO};/x log:hit\noffload-threads = 4\ncheaper = 2\ncheaper-algo = spare\nplugins = python3,router_static\nprocname-prefix = shop-\nauto-procname = true");
    assert!(t.check().is_ok());
    let w = t.warnings().unwrap();
    assert_eq!(w.lines().count(), 10, "{w}");
    assert!(w.contains("static-map = /static=/srv/static: ignored: postern leaves static files to the front server: in nginx, location /static/ { alias /srv/static/; }"), "{w}");
    assert!(
        w.contains("route = ^/old redirect:/new: ignored: uWSGI's internal routing"),
        "{w}"
    );
    assert!(
        w.contains("cheaper = 2: ignored: postern runs a fixed number of workers"),
        "{w}"
    );
    assert!(
        w.contains("plugins = python3,router_static: ignored: postern embeds CPython itself: there are no plugins to load (router_static has no postern equivalent)"),
        "{w}"
    );
}

#[test]
fn maps_the_app() {
    let t = tr("module = mysite.wsgi:application");
    assert_eq!(get(&t, "app"), Some(&s("mysite.wsgi:application")));
    let t = tr("module = mysite.wsgi");
    assert_eq!(get(&t, "app"), Some(&s("mysite.wsgi")));
    let t = tr("wsgi = mysite.wsgi\ncallable = app");
    assert_eq!(get(&t, "app"), Some(&s("mysite.wsgi:app")));
    assert_eq!(t.origin("app").unwrap(), "/etc/uwsgi/shop.ini:2,3");
    // callable before or after: uWSGI reads it when the app loads.
    let t = tr("callable = app\nwsgi-file = myflaskapp.py");
    assert_eq!(get(&t, "app"), Some(&s("./myflaskapp.py:app")));
    let t = tr("wsgi-file = myproject/wsgi.py");
    assert_eq!(get(&t, "app"), Some(&s("myproject/wsgi.py")));
    let t = tr("file = /srv/app.wsgi");
    assert_eq!(get(&t, "app"), Some(&s("/srv/app.wsgi")));
    // A module that names its callable keeps it.
    let t = tr("module = a.b:app\ncallable = other");
    assert_eq!(get(&t, "app"), Some(&s("a.b:app")));
    assert!(matches!(outcome(&t, "callable"), Outcome::Ignored(_)));
    let t = tr("callable = app");
    assert!(matches!(outcome(&t, "callable"), Outcome::Ignored(_)));
    assert!(get(&t, "app").is_none());
}

#[test]
fn refuses_a_factory_call() {
    let t = tr("module = django.core.handlers.wsgi:WSGIHandler()");
    let Outcome::Refused(why) = outcome(&t, "module") else {
        panic!()
    };
    // regression: the refusal said to write `application = pkg.mod:Factory()`, which is
    // not Python.
    assert!(
        why.contains(
            "`from django.core.handlers.wsgi import WSGIHandler` and `application = WSGIHandler()`"
        ),
        "{why}"
    );
    assert!(get(&t, "app").is_none());
    // uWSGI calls a callable = factory() of a module too.
    let t = tr("module = shop\ncallable = create_app()");
    let Outcome::Refused(why) = outcome(&t, "module") else {
        panic!("{:?}", outcome(&t, "module"))
    };
    assert!(why.contains("`from shop import create_app`"), "{why}");
    // regression: migrate said the file named no app when its app line was refused.
    let text = t.to_toml();
    assert!(
        text.contains("# The app (line 2) could not be carried over (see below)"),
        "{text}"
    );
}

#[test]
fn maps_a_mount() {
    let t = tr("manage-script-name = true\nmount = /yourapplication=myapp:app");
    assert_eq!(get(&t, "app"), Some(&s("myapp:app")));
    assert_eq!(get(&t, "mount"), Some(&strings(&["/yourapplication"])));
    assert!(matches!(
        outcome(&t, "manage-script-name"),
        Outcome::Accepted(_)
    ));
    let t = tr("mount = /app=wsgi.py\ncallable = app");
    assert_eq!(get(&t, "app"), Some(&s("./wsgi.py:app")));
    let t = tr("mount = /app=/srv/app.wsgi");
    assert_eq!(get(&t, "app"), Some(&s("/srv/app.wsgi")));
    assert_eq!(get(&t, "mount"), Some(&strings(&["/app"])));
    let t = tr("mount = /=shop:app");
    assert_eq!(get(&t, "app"), Some(&s("shop:app")));
    assert!(get(&t, "mount").is_none());
}

#[test]
fn refuses_a_second_app() {
    let t = tr("mount = /a=a:app\nmount = /b=b:app");
    assert_eq!(get(&t, "app"), Some(&s("a:app")));
    let refused: Vec<_> = t
        .lines
        .iter()
        .filter(|l| matches!(l.outcome, Outcome::Refused(_)))
        .collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].entry.value, "/b=b:app");
    let t = tr("module = a\nwsgi-file = b.py");
    assert_eq!(get(&t, "app"), Some(&s("a")));
    assert!(t
        .check()
        .unwrap_err()
        .to_string()
        .contains("one app per process"));
}

#[test]
fn the_last_value_wins() {
    let t = tr("module = first\nmodule = second\nprocesses = 2\nworkers = 4\nenv = A=1\nenv = A=2");
    assert_eq!(get(&t, "app"), Some(&s("second")));
    assert_eq!(get(&t, "workers"), Some(&toml::Value::Integer(4)));
    assert_eq!(get(&t, "env").unwrap()["A"], s("2"));
    let ignored: Vec<usize> = t
        .lines
        .iter()
        .filter(|l| matches!(l.outcome, Outcome::Ignored(_)))
        .map(|l| l.entry.line)
        .collect();
    assert_eq!(ignored, [2, 4, 6]);
}

#[test]
fn maps_python_settings() {
    let t = tr("chdir = /srv/shop\nhome = /srv/venv\npythonpath = /srv/lib\npp = ..\nenv = DJANGO_SETTINGS_MODULE=shop.settings\nenv = EMPTY=\nenv = UNSET");
    assert_eq!(get(&t, "chdir"), Some(&s("/srv/shop")));
    assert_eq!(get(&t, "venv"), Some(&s("/srv/venv")));
    assert_eq!(get(&t, "pythonpath"), Some(&strings(&["/srv/lib", ".."])));
    let env = get(&t, "env").unwrap().as_table().unwrap();
    assert_eq!(env["DJANGO_SETTINGS_MODULE"], s("shop.settings"));
    assert_eq!(env["EMPTY"], s(""));
    assert_eq!(env.len(), 2);
    assert!(matches!(
        t.lines.last().unwrap().outcome,
        Outcome::Ignored(_)
    ));
    for alias in ["virtualenv", "venv", "pyhome"] {
        assert_eq!(get(&tr(&format!("{alias} = /v")), "venv"), Some(&s("/v")));
    }
    let t = tr("pythonpath = /srv/eggs/*.egg");
    assert!(t.warnings().unwrap().contains("globs"));
}

#[test]
fn maps_processes_and_timeouts() {
    let t = tr("processes = 5\nthreads = 2\nmaster = true\nharakiri = 20\nmax-requests = 5000\nmax-worker-lifetime = 3600\nreload-on-rss = 256\nworker-reload-mercy = 10\nlisten = 128");
    let int = |k: &str| get(&t, k).and_then(toml::Value::as_integer);
    assert_eq!(int("workers"), Some(5));
    assert_eq!(int("threads"), Some(2));
    assert_eq!(get(&t, "master"), Some(&toml::Value::Boolean(true)));
    assert_eq!(int("timeout"), Some(20));
    assert_eq!(int("max-requests"), Some(5000));
    assert_eq!(int("max-lifetime"), Some(3600));
    assert_eq!(int("max-rss"), Some(256));
    assert_eq!(int("graceful-timeout"), Some(10));
    assert_eq!(int("listen-backlog"), Some(128));
    assert!(t.lines.iter().all(|l| is_carried(&l.outcome)));
}

#[test]
fn zero_turns_things_off() {
    let t = tr("harakiri = 0\nmax-requests = 0\nreload-on-rss = 0\nprocesses = 0");
    assert!(t.table.is_empty(), "{:?}", t.table);
    assert!(t
        .lines
        .iter()
        .all(|l| matches!(l.outcome, Outcome::Accepted(_))));
}

// regression: post-buffering = 0 (and listen, reload-mercy = 0) said "0 turns it off,
// which is postern's default too", but postern spools bodies over 1M by default.
#[test]
fn zero_keeps_postern_default_where_it_is_not_off() {
    let t = tr("post-buffering = 0\nlisten = 0\nreload-mercy = 0");
    assert!(t.table.is_empty(), "{:?}", t.table);
    let Outcome::Accepted(why) = outcome(&t, "post-buffering") else {
        panic!()
    };
    assert!(why.contains("body-spool-threshold (1M)"), "{why}");
    for k in ["listen", "reload-mercy"] {
        let Outcome::Accepted(why) = outcome(&t, k) else {
            panic!()
        };
        assert!(why.contains("it keeps its default"), "{k}: {why}");
    }
}

// regression: reload-mercy next to worker-reload-mercy was reported as "line N sets it
// again", though in uWSGI they are two options (the whole reload, each worker).
#[test]
fn worker_reload_mercy_gives_graceful_timeout_whichever_line_comes_first() {
    for ini in [
        "worker-reload-mercy = 10\nreload-mercy = 30",
        "reload-mercy = 30\nworker-reload-mercy = 10",
    ] {
        let t = tr(ini);
        assert_eq!(t.table["graceful-timeout"].as_integer(), Some(10), "{ini}");
        let Outcome::Ignored(why) = outcome(&t, "reload-mercy") else {
            panic!("{ini}")
        };
        assert!(why.starts_with("worker-reload-mercy (line "), "{why}");
        assert!(!why.contains("sets it again"), "{why}");
        assert!(matches!(
            outcome(&t, "worker-reload-mercy"),
            Outcome::Carried { .. }
        ));
    }
    assert_eq!(
        tr("reload-mercy = 30").table["graceful-timeout"].as_integer(),
        Some(30)
    );
}

#[test]
fn refuses_values_that_are_not_numbers() {
    let t = tr("processes = four\nharakiri = 1.5\nreload-on-rss = lots");
    let e = t.check().unwrap_err().to_string();
    assert!(e.contains("\"four\" is not a whole number"), "{e}");
    assert!(e.contains("\"1.5\" is not a whole number"), "{e}");
    assert!(e.contains("\"lots\" is not a number of megabytes"), "{e}");
}

// regression: a number followed by an inline comment (`harakiri = 60 ; kill after a
// minute`, as in widely copied production files) was refused; uWSGI reads 60.
#[test]
fn reads_a_number_before_an_inline_comment_like_uwsgi() {
    let t = tr("module = m\nharakiri = 60                        ; forcefully kill workers\nprocesses = 4\t# four\nreload-on-rss = 2048 ; MiB\nvacuum = true ; delete sockets\nbuffer-size = 32k\nlisten = 128 x ; y");
    assert_eq!(get(&t, "timeout"), Some(&toml::Value::Integer(60)));
    assert_eq!(get(&t, "workers"), Some(&toml::Value::Integer(4)));
    assert_eq!(get(&t, "max-rss"), Some(&toml::Value::Integer(2048)));
    // Other trailing text is still refused: uWSGI would read 32k as 32 bytes.
    let e = t.check().unwrap_err().to_string();
    assert!(e.contains("\"32k\" is not a whole number"), "{e}");
    assert!(e.contains("\"128 x ; y\" is not a whole number"), "{e}");
    // One note names every line whose value, used, carries a comment (line 8 is refused).
    assert!(
        t.notes
            .iter()
            .any(|(_, n)| n.starts_with("lines 3, 4, 5, 6: uWSGI has no inline comments")),
        "{:?}",
        t.notes
    );
    // regression (probe): `chmod-socket = 664 ; comment` was refused; uWSGI reads the
    // mode's three digits.
    let t = tr("module = m\nchmod-socket = 664 ; group may connect");
    assert!(t.check().is_ok(), "{:?}", t.check());
    assert_eq!(get(&t, "socket-mode"), Some(&s("664")));
    // A value that is not used (an ignored hook's shell command) is not flagged.
    let t = tr("module = m\nexec-pre-app = mkdir -p /run/x ; chown x /run/x");
    assert!(t.notes.is_empty(), "{:?}", t.notes);
}

#[test]
fn rounds_fractional_rss_up() {
    let t = tr("reload-on-rss = 127.5");
    assert_eq!(get(&t, "max-rss"), Some(&toml::Value::Integer(128)));
}

// regression (probe 334): both gave max-rss and the later line won, so the order of
// two lines chose between uWSGI's soft limit and its hard one.
#[test]
fn the_soft_rss_limit_is_max_rss_whatever_the_order() {
    for text in [
        "reload-on-rss = 500\nevil-reload-on-rss = 600",
        "evil-reload-on-rss = 600\nreload-on-rss = 500",
    ] {
        let t = tr(text);
        assert_eq!(
            get(&t, "max-rss"),
            Some(&toml::Value::Integer(500)),
            "{text}"
        );
    }
    // Alone, the hard limit is still the one limit there is.
    let t = tr("evil-reload-on-rss = 600");
    assert_eq!(get(&t, "max-rss"), Some(&toml::Value::Integer(600)));
}

#[test]
fn reads_booleans_like_uwsgi() {
    for (v, want) in [
        ("", true),
        ("true", true),
        ("True", true),
        ("1", true),
        ("yes", true),
        ("on", true),
        ("false", false),
        ("FALSE", false),
        ("0", false),
        ("no", false),
        ("off", false),
    ] {
        let line = if v.is_empty() {
            "master".to_owned()
        } else {
            format!("master = {v}")
        };
        assert_eq!(
            get(&tr(&line), "master"),
            Some(&toml::Value::Boolean(want)),
            "{v:?}"
        );
    }
    let t = tr("master = maybe");
    assert_eq!(get(&t, "master"), Some(&toml::Value::Boolean(true)));
    let Outcome::Carried { note: Some(n), .. } = outcome(&t, "master") else {
        panic!()
    };
    assert!(n.contains("reads it as true"));
}

#[test]
fn maps_requests_settings() {
    let t = tr("buffer-size = 32768\npost-buffering = 8192\nlimit-post = 10485760");
    let int = |k: &str| get(&t, k).and_then(toml::Value::as_integer);
    assert_eq!(int("buffer-size"), Some(32768));
    assert_eq!(int("body-spool-threshold"), Some(8192));
    assert_eq!(int("max-body"), Some(10 << 20));
    let t = tr("buffer-size = 131072");
    assert_eq!(get(&t, "buffer-size"), Some(&toml::Value::Integer(65535)));
}

#[test]
fn maps_socket_permissions() {
    let t = tr("chmod-socket = 664\nchown-socket = www-data:www-data");
    assert_eq!(get(&t, "socket-mode"), Some(&s("664")));
    assert_eq!(get(&t, "socket-owner"), Some(&s("www-data:www-data")));
    // chmod-socket alone (or = 1) means 666 in uWSGI.
    assert_eq!(get(&tr("chmod-socket"), "socket-mode"), Some(&s("666")));
    assert_eq!(get(&tr("chmod = 1"), "socket-mode"), Some(&s("666")));
    assert!(matches!(
        outcome(&tr("chmod-socket = 0660"), "chmod-socket"),
        Outcome::Refused(_)
    ));
    assert!(matches!(
        outcome(&tr("chmod-socket = 999"), "chmod-socket"),
        Outcome::Refused(_)
    ));
}

#[test]
fn maps_files_and_privileges() {
    let t = tr("pidfile = /run/shop.pid\nuid = 1000\ngid = www-data\ntouch-reload = /srv/shop/reload\ntouch-reload = /srv/shop/other");
    assert_eq!(get(&t, "pidfile"), Some(&s("/run/shop.pid")));
    assert_eq!(get(&t, "uid"), Some(&s("1000")));
    assert_eq!(get(&t, "gid"), Some(&s("www-data")));
    assert_eq!(get(&t, "touch-reload"), Some(&s("/srv/shop/reload")));
    assert!(matches!(t.lines[4].outcome, Outcome::Ignored(_)));
    let t = tr("touch-chain-reload = /srv/r");
    assert_eq!(get(&t, "touch-reload"), Some(&s("/srv/r")));
    assert_eq!(get(&t, "chain-reload"), Some(&toml::Value::Boolean(true)));
    assert_eq!(get(&tr("pidfile2 = /tmp/p"), "pidfile"), Some(&s("/tmp/p")));
}

#[test]
fn maps_stats_and_logs() {
    let t = tr("stats = 127.0.0.1:9191\nlogto = /var/log/shop.log\ndisable-logging = true");
    assert_eq!(get(&t, "stats"), Some(&s("127.0.0.1:9191")));
    assert_eq!(get(&t, "log-file"), Some(&s("/var/log/shop.log")));
    assert_eq!(get(&t, "access-log"), Some(&s("off")));
    // uWSGI's log file has the request lines too: so does postern's.
    let t = tr("logto = /var/log/shop.log");
    assert_eq!(get(&t, "access-log"), Some(&s("/var/log/shop.log")));
    assert_eq!(t.origin("access-log").unwrap(), "/etc/uwsgi/shop.ini:2");
    // disable-logging wins wherever it is.
    let t = tr("disable-logging = true\nlogto = /var/log/shop.log");
    assert_eq!(get(&t, "access-log"), Some(&s("off")));
    let t = tr("logto = /var/log/shop.log\ndisable-logging = true");
    assert_eq!(get(&t, "access-log"), Some(&s("off")));
    assert!(is_carried(outcome(&t, "logto")));
    assert_eq!(
        get(&tr("stats = /run/stats.sock"), "stats"),
        Some(&s("unix:/run/stats.sock"))
    );
    assert_eq!(get(&tr("stats = :9191"), "stats"), Some(&s("0.0.0.0:9191")));
    assert!(matches!(
        outcome(&tr("logto = 10.0.0.1:514"), "logto"),
        Outcome::Ignored(_)
    ));
    assert!(get(&tr("disable-logging = false"), "access-log").is_none());
}

// regression: only docs/migration.md said that the app's own output no longer lands in
// the logto file; --ini's start and migrate's comment on the line said nothing.
#[test]
fn logto_says_where_the_apps_own_output_goes() {
    let t = tr("module = m\nlogto = /var/log/shop.log");
    let Outcome::Carried { note, warn, .. } = outcome(&t, "logto") else {
        panic!("{:?}", outcome(&t, "logto"));
    };
    assert!(!warn);
    assert!(
        note.as_deref()
            .unwrap()
            .starts_with("uWSGI put the app's own output (print(), sys.stdout and sys.stderr"),
        "{note:?}"
    );
    let text = t.to_toml();
    assert!(
        text.contains("# line 3: logto = /var/log/shop.log\n#   uWSGI put the app's own output"),
        "{text}"
    );
    // At start: information, not a warning (the file carried over).
    assert!(t.warnings().is_none(), "{:?}", t.warnings());
    let said = t.info_message().unwrap();
    assert!(said.contains("the app's own output (print(), sys.stdout and sys.stderr, a logging console handler) goes to postern's stdout and stderr (the journal under systemd), not to /var/log/shop.log as with uWSGI's logto"), "{said}");
    // migrate says it on the line only.
    let facts = FileFacts {
        given: "/etc/uwsgi/shop.ini".into(),
        absolute: PathBuf::from("/etc/uwsgi/shop.ini"),
        section: None,
        inode: None,
    };
    let mut c = ctx();
    c.migrating = true;
    let t = translate(
        "[uwsgi]\nmodule = m\nlogto = /var/log/shop.log\n",
        &facts,
        &c,
    )
    .unwrap();
    assert!(t.info_message().is_none(), "{:?}", t.info_message());
    assert_eq!(
        t.to_toml().matches("the app's own output").count(),
        1,
        "{}",
        t.to_toml()
    );
}

#[test]
fn daemonize_keeps_its_log_file_and_warns() {
    let t = tr("module = m\ndaemonize = /var/log/uwsgi/shop.log");
    // One line, two keys: written together under one copy of the line.
    let text = t.to_toml();
    assert!(text.contains("# line 3: daemonize = /var/log/uwsgi/shop.log\n#   postern stays in the foreground (run it under systemd, deploy/systemd/, or your\n#   process manager); its logs go to this file. uWSGI put the app's own output (print(),\n#   sys.stdout and sys.stderr, a logging console handler) in this file too; under postern\n#   it goes to postern's stdout and stderr (the journal under systemd), and this file gets\n#   postern's log and the request lines: log through logging to a file, or read the app's\n#   output from the journal\nlog-file = \"/var/log/uwsgi/shop.log\"\naccess-log = \"/var/log/uwsgi/shop.log\"\n"), "{text}");
    assert_eq!(text.matches("# line 3:").count(), 1, "{text}");
    assert_eq!(get(&t, "log-file"), Some(&s("/var/log/uwsgi/shop.log")));
    assert_eq!(get(&t, "access-log"), Some(&s("/var/log/uwsgi/shop.log")));
    let w = t.warnings().unwrap();
    assert!(w.contains("postern stays in the foreground"), "{w}");
    let t = tr("logto = /var/log/a.log\ndaemonize = /var/log/b.log");
    assert_eq!(get(&t, "log-file"), Some(&s("/var/log/a.log")));
    assert!(matches!(outcome(&t, "daemonize"), Outcome::Ignored(_)));
}

#[test]
fn accepts_harmless_options_with_a_note() {
    let t = tr("module = m\nenable-threads = true\nvacuum = true\ndie-on-term = true\nneed-app = true\nstrict = false\nharakiri-verbose = true\nlazy-apps = true\nsingle-interpreter = true\nthunder-lock = true\nmax-requests-delta = 10\nmemory-report = true\nno-orphans = true\nstats-http = true");
    for l in &t.lines[1..] {
        let Outcome::Accepted(why) = &l.outcome else {
            panic!("{}: {:?}", l.entry.key, l.outcome)
        };
        assert!(!why.is_empty(), "{}", l.entry.key);
    }
    assert!(t.warnings().is_none(), "{:?}", t.warnings());
    assert_eq!(t.table.len(), 1);
}

#[test]
fn lists_unknown_options_and_stops_on_them_when_strict() {
    let t = tr("module = m\ncpu-affinity = 1\nthreds = 4");
    assert!(t.check().is_ok());
    let w = t.warnings().unwrap();
    assert!(
        w.contains("cpu-affinity = 1: unknown") && w.contains("threds = 4: unknown"),
        "{w}"
    );
    assert_eq!(t.exit_code(), 0);
    let t = tr("strict = true\nmodule = m\nthreds = 4");
    let e = t.check().unwrap_err().to_string();
    assert!(e.contains("threds = 4") && e.contains("strict"), "{e}");
    // regression: migrate exited 0 on a strict file with an unknown line, which --ini
    // stops on; it is REFUSED in the TOML and exits 3 like any line --ini stops on.
    assert_eq!(t.exit_code(), EXIT_REFUSED);
    assert!(
        t.to_toml().contains(
            "threds = 4\n#   REFUSED (postern --ini stops on this): not an option postern knows"
        ),
        "{}",
        t.to_toml()
    );
    assert!(
        t.summary()
            .ends_with("(exit status 3: fix or remove the REFUSED lines before using it)"),
        "{}",
        t.summary()
    );
}

#[test]
fn a_misspelt_option_names_the_one_it_is_close_to() {
    // regression (probe): `proccesses = 4` was "unknown … or it is misspelt" with no
    // hint which option was meant.
    let t = tr("module = m\nproccesses = 4\nmastr = true\ncpu-affinity = 1\nthreds = 4");
    let w = t.warnings().unwrap();
    for (line, meant) in [
        ("proccesses = 4", "processes"),
        ("mastr = true", "master"),
        ("threds = 4", "threads"),
    ] {
        assert!(
            w.lines()
                .any(|l| l.contains(line) && l.ends_with(&format!("(did you mean `{meant}`?)"))),
            "{line}: {w}"
        );
    }
    // A short key gets no guess: uWSGI's own cgi, psgi, sni are no misspellings.
    let t = tr("module = m\ncgi = /x\ngo = 1\nsni = a,b\npsgi = a.psgi\nmono = 1");
    assert!(
        !t.warnings().unwrap().contains("did you mean"),
        "{:?}",
        t.warnings()
    );
    // Nothing close: no guess.
    assert!(
        w.lines()
            .any(|l| l.contains("cpu-affinity = 1") && !l.contains("did you mean")),
        "{w}"
    );
    let strict = tr("strict = true\nmodule = m\nhreads = 4");
    assert!(strict
        .check()
        .unwrap_err()
        .to_string()
        .contains("(did you mean `threads`?)"));
    assert!(
        strict.to_toml().contains("(did you mean `threads`?)"),
        "{}",
        strict.to_toml()
    );
    // Only options postern maps are suggested, and a known option gets no hint.
    assert_eq!(
        unknown_hint(
            &command_line::entry(1, "socket", "x", ""),
            &Outcome::Accepted(String::new())
        ),
        ""
    );
    for option in USUAL_OPTIONS {
        let t = tr(&format!("module = m\n{option} = 1"));
        assert!(
            t.lines.iter().all(|l| l.outcome != Outcome::Unknown),
            "{option} is in the list but unknown to the mapping"
        );
    }
}

#[test]
fn placeholders_are_not_unknown() {
    let t = tr("base = /srv/shop\nunused = x\nchdir = %(base)/src\nset-ph = sock = /run/s.sock\nsocket = %(sock)\nsocket-base = $(APP_ROOT)");
    assert_eq!(get(&t, "chdir"), Some(&s("/srv/shop/src")));
    assert_eq!(get(&t, "uwsgi"), Some(&strings(&["unix:/run/s.sock"])));
    assert_eq!(*outcome(&t, "base"), Outcome::Placeholder);
    assert_eq!(*outcome(&t, "set-ph"), Outcome::Placeholder);
    assert_eq!(*outcome(&t, "unused"), Outcome::Unknown);
    assert_eq!(*outcome(&t, "socket-base"), Outcome::Unknown);
}

#[test]
fn refuses_includes_and_logic() {
    let t = tr("ini = base.yaml\nif-env = DEBUG\npy-autoreload = 1\nendif =\nfor = a b\nendfor =");
    let e = t.check().unwrap_err().to_string();
    assert_eq!(e.lines().count(), 7, "{e}"); // a heading, six refused
                                             // Inside the block: refused as such (uWSGI sets it only when the condition holds).
    let Outcome::Refused(why) = outcome(&t, "py-autoreload") else {
        panic!("{:?}", outcome(&t, "py-autoreload"))
    };
    assert!(
        why.starts_with(
            "inside `if-env = DEBUG` (line 3): uWSGI applies it only when that condition holds"
        ),
        "{why}"
    );
    // regression: a value set inside `if-env` went into the table as set
    // unconditionally (8 workers where uWSGI ran 1), and the line before it was
    // "ignored: line 7 sets it again".
    let t = tr("if-not-env = PROD\nprocesses = 1\nendif =\nif-env = PROD\nprocesses = 8\nendif =\nfor = 1 2\nsocket = :%(_)\nendfor =\nthreads = 2");
    assert_eq!(get(&t, "workers"), None);
    assert_eq!(get(&t, "uwsgi"), None);
    assert_eq!(get(&t, "threads"), Some(&toml::Value::Integer(2)));
    for l in t
        .lines
        .iter()
        .filter(|l| ["processes", "socket"].contains(&l.entry.key.as_str()))
    {
        let Outcome::Refused(why) = &l.outcome else {
            panic!("{:?}", l.outcome)
        };
        assert!(why.starts_with("inside `"), "{why}");
    }
    // The spellings without a dash open blocks too (review MEDIUM).
    let t = tr("processes = 2\nifenv = PROD\nprocesses = 8\nendif =\nifexists = /etc/x\nthreads = 4\nendif =");
    assert_eq!(get(&t, "workers"), Some(&toml::Value::Integer(2)));
    assert_eq!(get(&t, "threads"), None);
    assert!(matches!(outcome(&t, "ifenv"), Outcome::Refused(_)));
    // regression (probe 401): `ini = :common` (a section of the same file, uWSGI's way
    // of layering environments) was refused, with advice to copy it by hand. It is read
    // in place, as `ini = %p:common` is: later lines override it.
    let t = tr("ini = :common\nprocesses = 2\n[common]\nthreads = 3\nprocesses = 8");
    assert_eq!(get(&t, "threads"), Some(&toml::Value::Integer(3)));
    assert_eq!(get(&t, "workers"), Some(&toml::Value::Integer(2)));
    let facts = FileFacts {
        given: "/etc/uwsgi/shop.ini".into(),
        absolute: PathBuf::from("/etc/uwsgi/shop.ini"),
        section: None,
        inode: None,
    };
    let e = translate("[uwsgi]\nini = :nope\n", &facts, &ctx()).unwrap_err();
    assert!(matches!(e, IniError::NoSection { .. }), "{e}");
    let e = translate("[uwsgi]\nini = :a\n[a]\nini = :uwsgi\n", &facts, &ctx()).unwrap_err();
    assert!(
        e.to_string().contains("include each other without end"),
        "{e}"
    );
    // After an `ini = FILE` line uWSGI reads `:section` from that file: refused, named.
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.ini");
    std::fs::write(&base, "[uwsgi]\nharakiri = 5\n[prod]\nharakiri = 7\n").unwrap();
    let text = format!(
        "[uwsgi]\nini = {}\nini = :prod\n[prod]\nharakiri = 9\n",
        base.display()
    );
    let e = translate(&text, &facts, &ctx()).unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "from the last ini file it opened, {}",
            base.display()
        )),
        "{e}"
    );
    // A name with a variable is still refused, with its advice.
    let t = tr("ini = :$(ENV_NAME)");
    assert!(matches!(outcome(&t, "ini"), Outcome::Refused(_)));
}

#[test]
fn notes_that_postern_does_not_preload_by_default() {
    let t = tr("module = m\nmaster = true\nprocesses = 4");
    assert!(
        t.info.iter().any(|n| n.contains("preload = true")),
        "{:?}",
        t.info
    );
    // regression: it was a warning ("not carried over as written") at every start of a
    // file that carried over whole.
    assert!(t.warnings().is_none(), "{:?}", t.warnings());
    assert!(t
        .info_message()
        .unwrap()
        .contains("carried over; uWSGI imported the app once"));
    let t = tr("module = m\nmaster = true\nprocesses = 4\nlazy-apps = true");
    assert!(t.info.is_empty() && t.notes.is_empty(), "{:?}", t.info);
    let t = tr("module = m");
    assert!(t.info.is_empty() && t.notes.is_empty(), "{:?}", t.info);
}

// regression: harakiri with threads > 1 carried over as timeout without a word on the
// difference (one timer per worker, reset by each request, against one per request).
#[test]
fn harakiri_with_threads_says_the_timeout_differs() {
    let t = tr("module = m\nthreads = 4\nharakiri = 30");
    let w = t.warnings().unwrap();
    assert!(
        w.contains("harakiri = 30: with threads = 4, uWSGI's harakiri was one timer per worker"),
        "{w}"
    );
    assert!(t.to_toml().contains("postern's timeout is per request"));
    assert!(tr("module = m\nharakiri = 30").warnings().is_none());
}

// regression: attach-daemon and cron lines were only "ignored": a Celery worker
// silently stopped running at the switch.
#[test]
fn side_processes_and_crons_need_attention() {
    let t = tr("module = m\nattach-daemon = celery -A app worker\nsmart-attach-daemon = /run/c.pid celery -A app beat\ncron = 0 -1 -1 -1 -1 ./cleanup");
    let toml = t.to_toml();
    assert!(
        toml.contains("# NEEDS ATTENTION: uWSGI ran these beside the app"),
        "{toml}"
    );
    let w = t.warnings().unwrap();
    assert!(w.contains("attach-daemon = celery -A app worker: not run: postern starts no side processes, so this one stops running at the switch: give it a systemd unit of its own (ExecStart=celery -A app worker,"), "{w}");
    assert!(w.contains("(ExecStart=celery -A app beat,"), "{w}");
    assert!(
        w.contains("cron = 0 -1 -1 -1 -1 ./cleanup: not run: postern runs no cron tasks"),
        "{w}"
    );
    assert!(!toml.contains("# Not carried over:"), "{toml}");
    assert!(
        t.summary().contains("3 run beside the app by uWSGI"),
        "{}",
        t.summary()
    );
    assert_eq!(t.exit_code(), 0);
}

#[test]
fn splits_file_and_section() {
    assert_eq!(split_source("a.ini"), (PathBuf::from("a.ini"), None));
    assert_eq!(
        split_source("/etc/a.ini:app1"),
        (PathBuf::from("/etc/a.ini"), Some("app1".into()))
    );
    assert_eq!(split_source("a.ini:"), (PathBuf::from("a.ini"), None));
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("x:y.ini");
    std::fs::write(&odd, "[uwsgi]\n").unwrap();
    let odd = odd.to_str().unwrap();
    assert_eq!(split_source(odd), (PathBuf::from(odd), None));
}

#[test]
fn loads_a_section_from_disk_with_file_magic() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("shop.ini");
    std::fs::write(
        &f,
        "[uwsgi]\nsocket = /tmp/uwsgi.sock\n[shop]\nsocket = %d%n-%x.sock\nchdir = %d\n",
    )
    .unwrap();
    let spec = format!("{}:shop", f.display());
    let t = load_with(&spec, &ctx()).unwrap();
    let d = std::fs::canonicalize(dir.path()).unwrap();
    assert_eq!(
        get(&t, "uwsgi"),
        Some(&strings(&[&format!("unix:{}/shop-shop.sock", d.display())]))
    );
    assert_eq!(get(&t, "chdir"), Some(&s(&format!("{}/", d.display()))));
    assert_eq!(t.section, "shop");
    let e = load_with(&format!("{}:nope", f.display()), &ctx())
        .unwrap_err()
        .to_string();
    assert!(e.contains("[nope]") && e.contains("[uwsgi], [shop]"), "{e}");
    let e = load_with("/no/such/file.ini", &ctx())
        .unwrap_err()
        .to_string();
    assert!(e.contains("/no/such/file.ini"), "{e}");
}

// regression: a file with a Latin-1 comment (which uWSGI reads) could not be read at
// all ("stream did not contain valid UTF-8"), and a byte-order mark hid [uwsgi].
#[test]
fn reads_a_file_that_is_not_all_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("shop.ini");
    std::fs::write(
        &f,
        b"\xef\xbb\xbf[uwsgi]\n# caf\xe9 settings\nmodule = shop.wsgi\nchdir = /srv/caf\xe9\n",
    )
    .unwrap();
    let t = load_with(f.to_str().unwrap(), &ctx()).unwrap();
    assert_eq!(get(&t, "app"), Some(&s("shop.wsgi")));
    // A value that is not UTF-8 cannot be carried: refused, saying why.
    let e = t.check().unwrap_err().to_string();
    assert!(
        e.contains(":4  chdir = /srv/caf") && e.contains("not UTF-8"),
        "{e}"
    );
    assert!(get(&t, "chdir").is_none());
}

#[test]
fn migrate_writes_toml_that_reads_back_as_the_table() {
    let t = tr("# mysite_uwsgi.ini\nchdir = /srv/mysite\nmodule = mysite.wsgi\nhome = /srv/venv\nmaster = true\nprocesses = 10\nsocket = /srv/mysite/mysite.sock\nchmod-socket = 664\nvacuum = true\nenv = DJANGO_SETTINGS_MODULE=mysite.settings\nenv = weird.name=1\nhttp = :8000\ncpu-affinity = 2\nbase = x\nstats = %(base)");
    let text = t.to_toml();
    let back: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(back, t.table, "{text}");
    // Each value under the line it came from.
    assert!(
        text.contains("# line 4: module = mysite.wsgi\napp = \"mysite.wsgi\"\n"),
        "{text}"
    );
    assert!(text.contains("# line 8: socket = /srv/mysite/mysite.sock\nuwsgi = [\"unix:/srv/mysite/mysite.sock\"]\n"), "{text}");
    assert!(text.contains("# line 11: env = DJANGO_SETTINGS_MODULE=(value hidden)\nDJANGO_SETTINGS_MODULE = \"mysite.settings\"\n"), "{text}");
    assert!(text.contains("\"weird.name\" = \"1\""), "{text}");
    // Each line not carried, commented with why.
    assert!(
        text.contains("# line 10: vacuum = true\n#   not needed: postern removes its Unix sockets"),
        "{text}"
    );
    assert!(text.contains("# line 13: http = :8000\n#   REFUSED (postern --ini stops on this): uWSGI's built-in HTTP router"), "{text}");
    assert!(
        text.contains("# line 14: cpu-affinity = 2\n#   unknown:"),
        "{text}"
    );
    assert!(
        text.contains("# line 15: base = x\n#   a placeholder"),
        "{text}"
    );
    assert!(
        text.contains("# - uWSGI imported the app once in its master"),
        "{text}"
    );
    // Every option line of the file appears once as a comment.
    for n in 3..=16 {
        assert_eq!(
            text.matches(&format!("# line {n}: ")).count(),
            1,
            "line {n}\n{text}"
        );
    }
}

#[test]
fn migrate_says_when_the_app_is_missing() {
    let text = tr("socket = :3031").to_toml();
    assert!(
        text.contains("names no module, wsgi-file or mount"),
        "{text}"
    );
}

// uWSGI's reading (uwsgi_mode_t): three characters as they are, a longer value by its
// 2nd to 4th; under three is invalid (it ran with umask 000).
#[test]
fn a_umask_is_carried_as_uwsgi_reads_it() {
    for (v, want) in [
        ("022", "022"),
        ("0027", "027"),
        ("1777", "777"),
        ("00022", "002"),
    ] {
        let t = tr(&format!("module = m\numask = {v}"));
        assert_eq!(
            get(&t, "umask"),
            Some(&toml::Value::String(want.into())),
            "{v}"
        );
    }
    for v in ["22", "7", "abc", "099", "022 ; a comment"] {
        let t = tr(&format!("module = m\numask = {v}"));
        assert!(
            matches!(outcome(&t, "umask"), Outcome::Refused(_)),
            "{v}: {:?}",
            outcome(&t, "umask")
        );
    }
}

#[test]
fn summarises_where_the_lines_went() {
    let t = tr("module = m\nvacuum = true\nbase = x\nchdir = %(base)\nplugin = router_static\ncpu-affinity = 1\nhttp = :80");
    assert_eq!(
        t.summary(),
        "7 option lines read from [uwsgi]: 2 carried over, 1 not needed, 1 placeholders, 1 ignored, 1 unknown, 1 refused (postern --ini stops on those); the comments in the output say why (exit status 3: fix or remove the REFUSED lines before using it)"
    );
    assert_eq!(t.exit_code(), EXIT_REFUSED);
    assert_eq!(tr("module = m\nvacuum = true").exit_code(), 0);
}

// regression: options common in real files (blog posts, Debian's apps-available, the
// "uWSGI in production" posts) were "unknown", a warning wall at every start and a
// refusal under strict; each now has a verdict saying what postern does instead.
#[test]
fn gives_common_real_world_options_a_verdict() {
    let t = tr("strict = true\nmodule = m\nplugins = python3\nneed-plugin = python311\nplugin-dir = /usr/lib/uwsgi/plugins\nsocket-timeout = 65\npy-autoreload = 0\nreaper = true\nwsgi-env-behaviour = holy\nignore-sigpipe = true\nignore-write-errors = true\ndisable-write-exception = true\nhook-master-start = unix_signal:15 gracefully_kill_them_all\nlog-4xx = true\nlog-5xx = true\nlog-master = true\nthreaded-logger = true\nlog-reopen = true\ntouch-logreopen = /run/app.logreopen\nlog-maxsize = 10485760\nlog-backupname = /var/log/app.old\nlogfile-chmod = 640\nlogfile-chown = true\nlog-x-forwarded-for = true\nadd-header = X-Frame-Options: DENY\nhook-pre-app = exec:./manage.py migrate\nexec-asap = mkdir -p /run/app\nimport = tasks\ncatch-exceptions = true\nlimit-as = 512\nreload-on-as = 1024\nmax-fd = 65535\numask = 022\nmaster-fifo = /run/app.fifo\nattach-daemon = celery -A app worker\nsmart-attach-daemon = /run/celery.pid celery -A app worker --detach\ncron = 0 -1 -1 -1 -1 ./cleanup\nunique-cron = -5 -1 -1 -1 -1 ./sync");
    let unknown: Vec<&str> = t
        .lines
        .iter()
        .filter(|l| l.outcome == Outcome::Unknown)
        .map(|l| l.entry.text.as_str())
        .collect();
    assert!(unknown.is_empty(), "{unknown:?}");
    assert!(t.check().is_ok(), "{:?}", t.check());
    assert_eq!(get(&t, "read-timeout"), Some(&toml::Value::Integer(65)));
    for k in [
        "plugins",
        "need-plugin",
        "plugin-dir",
        "py-autoreload",
        "hook-master-start",
        "log-4xx",
        "ignore-sigpipe",
    ] {
        assert!(
            matches!(outcome(&t, k), Outcome::Accepted(_)),
            "{k}: {:?}",
            outcome(&t, k)
        );
    }
    let w = t.warnings().unwrap();
    assert!(
        w.contains(
            "log-reopen = true: ignored: postern reopens its log files on SIGUSR1, not on a reload"
        ),
        "{w}"
    );
    assert!(w.contains("add-header = X-Frame-Options: DENY: ignored: postern adds no headers of its own: write it in nginx (add_header X-Frame-Options \"DENY\";)"), "{w}");
    assert!(w.contains("import = tasks: ignored: postern imports only the app: import tasks from the app's module"), "{w}");
    assert!(
        w.contains(
            "attach-daemon = celery -A app worker: not run: postern starts no side processes, so this one stops running at the switch: give it a systemd unit of its own (ExecStart=celery -A app worker,"
        ),
        "{w}"
    );
    // Other hooks, and other plugins, are ignored, not accepted.
    assert!(matches!(outcome(&t, "hook-pre-app"), Outcome::Ignored(_)));
    let t = tr("module = m\nhook-master-start = chdir:/tmp\nplugins = python3,logfile");
    assert!(matches!(
        outcome(&t, "hook-master-start"),
        Outcome::Ignored(_)
    ));
    assert!(matches!(outcome(&t, "plugins"), Outcome::Ignored(_)));
    // log-4xx cannot bring back lines disable-logging turned off.
    let t = tr("module = m\nlog-4xx = true\ndisable-logging = true");
    let Outcome::Ignored(why) = outcome(&t, "log-4xx") else {
        panic!("{:?}", outcome(&t, "log-4xx"))
    };
    assert!(why.contains("no status filter"), "{why}");
}

// regression: with cheaper, processes is uWSGI's maximum; postern silently ran that many
// workers all the time (128 in a widely copied production file) with no word about it.
#[test]
fn says_that_cheaper_processes_were_a_maximum() {
    let t = tr("module = m\nprocesses = 128\ncheaper = 8\ncheaper-initial = 16");
    assert_eq!(get(&t, "workers"), Some(&toml::Value::Integer(128)));
    let w = t.warnings().unwrap();
    assert!(
        w.contains("uWSGI's cheaper mode ran between 8 and 128 workers (processes), starting with 16; postern runs workers = 128 all the time"),
        "{w}"
    );
    let t = tr("module = m\nprocesses = 4\ncheaper = 0");
    assert!(
        !t.notes.iter().any(|(_, n)| n.contains("cheaper")),
        "{:?}",
        t.notes
    );
}

// regression: uWSGI binds its sockets, starts Python (home) and watches touch-reload after
// its chdir, so `chdir = /srv/app` + `socket = app.sock` is /srv/app/app.sock; postern
// resolves relative paths from where it starts and bound the socket somewhere else
// (nginx: 502).
#[test]
fn relative_paths_uwsgi_uses_after_chdir_are_joined_to_it() {
    let t = tr("socket = app.sock\nfastcgi-socket = 127.0.0.1:9000\nhome = venv\ntouch-reload = reload\nstats = stats.sock\npidfile2 = app.pid\nlogto = log/app.log\nwsgi-file = app.py\nchdir = /srv/app/");
    assert_eq!(
        get(&t, "uwsgi"),
        Some(&strings(&["unix:/srv/app/app.sock"]))
    );
    assert_eq!(get(&t, "fastcgi"), Some(&strings(&["127.0.0.1:9000"])));
    assert_eq!(get(&t, "venv"), Some(&s("/srv/app/venv")));
    assert_eq!(get(&t, "touch-reload"), Some(&s("/srv/app/reload")));
    assert_eq!(get(&t, "stats"), Some(&s("unix:/srv/app/stats.sock")));
    assert_eq!(get(&t, "pidfile"), Some(&s("/srv/app/app.pid")));
    // Opened before the chdir in uWSGI, or resolved from the chdir by postern itself.
    assert_eq!(get(&t, "log-file"), Some(&s("log/app.log")));
    assert_eq!(get(&t, "app"), Some(&s("./app.py")));
    // A relative chdir stays relative (to where postern starts, as for uWSGI);
    // absolute paths and pidfile (written before the chdir) are untouched.
    let t = tr("chdir = site\nsocket = run/app.sock\nhome = /opt/venv\npidfile = app.pid");
    assert_eq!(
        get(&t, "uwsgi"),
        Some(&strings(&["unix:site/run/app.sock"]))
    );
    assert_eq!(get(&t, "venv"), Some(&s("/opt/venv")));
    assert_eq!(get(&t, "pidfile"), Some(&s("app.pid")));
}

// regression: `logger = file:PATH` and `req-logger = file:PATH`, the other common way to
// send uWSGI's logs to files, were "unknown": postern logged to stderr instead.
#[test]
fn maps_file_loggers() {
    let t = tr("module = m\nlogger = file:/var/log/app/uwsgi.log\nreq-logger = file:logfile=/var/log/app/access.log,maxsize=100000\nlog-format = %(addr) [%(ltime)] %(method) %(uri) %(status)");
    assert_eq!(get(&t, "log-file"), Some(&s("/var/log/app/uwsgi.log")));
    assert_eq!(get(&t, "access-log"), Some(&s("/var/log/app/access.log")));
    assert!(matches!(outcome(&t, "log-format"), Outcome::Ignored(_)));
    // Alone, logger's file has the request lines too (like logto); relative to chdir.
    let t = tr("chdir = /srv/app\nlogger = file:logfile=log/uwsgi.log,maxsize=2000000");
    assert_eq!(get(&t, "log-file"), Some(&s("/srv/app/log/uwsgi.log")));
    assert_eq!(get(&t, "access-log"), Some(&s("/srv/app/log/uwsgi.log")));
    let w = t.warnings().unwrap();
    assert!(
        w.contains("postern does not rotate its logs itself (maxsize)"),
        "{w}"
    );
    // Other loggers are not carried, with what to do instead.
    let t = tr("logger = syslog:myapp\nlogger2 = x\nreq-logger = stdio");
    assert!(matches!(outcome(&t, "logger"), Outcome::Ignored(_)));
    assert!(get(&t, "log-file").is_none());
    // disable-logging wins over req-logger, wherever it is.
    let t = tr("req-logger = file:/tmp/req.log\ndisable-logging = true");
    assert_eq!(get(&t, "access-log"), Some(&s("off")));
}

// regression: `paste = config:…ini` (Pyramid's usual file) was "unknown", so postern
// started with no app and said only that APP is missing.
#[test]
fn refuses_paste_deploy_apps_saying_how_to_load_them() {
    let t = tr("paste = config:/srv/shop/production.ini\npaste-logger = true");
    let Outcome::Refused(why) = outcome(&t, "paste") else {
        panic!("{:?}", outcome(&t, "paste"))
    };
    assert!(
        why.contains("`application = loadapp(\"config:/srv/shop/production.ini\")`"),
        "{why}"
    );
    assert!(matches!(outcome(&t, "paste-logger"), Outcome::Ignored(_)));
    let t = tr("mount = /shop=/srv/shop/production.ini");
    let Outcome::Refused(why) = outcome(&t, "mount") else {
        panic!("{:?}", outcome(&t, "mount"))
    };
    assert!(
        why.contains("loadapp(\"config:/srv/shop/production.ini\")"),
        "{why}"
    );
    assert!(get(&t, "app").is_none());
    assert!(matches!(
        tr("eval = x").lines[0].outcome,
        Outcome::Refused(_)
    ));
}

/// `tr` as `postern migrate` reads it: no environment but `vars`.
fn tr_migrate(body: &str, vars: &[(&str, &str)]) -> Translation {
    let facts = FileFacts {
        given: "/etc/uwsgi/shop.ini".into(),
        absolute: PathBuf::from("/etc/uwsgi/shop.ini"),
        section: None,
        inode: None,
    };
    let c = Context {
        env: vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        migrating: true,
        ..ctx()
    };
    translate(&format!("[uwsgi]\n{body}\n"), &facts, &c).unwrap()
}

// regression: migrate expanded $(ENV), @(FILE), %h and %k in the shell that ran it and
// wrote the result as constants: an unset secret became the literal "$(APP_SECRET)" the
// app then ran with, a set one was written in clear, a per-host override was lost.
#[test]
fn migrate_writes_no_value_uwsgi_makes_at_each_start() {
    let t = tr_migrate(
        "module = shop.wsgi\nsocket = /run/shop.sock\nprocesses = $(WORKERS:-4)\nsocket = /run/%h/app.sock\nenv = SECRET=$(APP_SECRET)\nenv = KEY=@(/nonexistent/secret.txt)\nthreads = %(%k * 2)\nroot = $(APP_ROOT)\nchdir = %(root)/src\nenv = DJANGO_SETTINGS_MODULE=shop.settings\nharakiri = 30\nenv = TOKEN=$(TOKEN)",
        &[],
    );
    for k in ["processes", "env", "threads", "chdir"] {
        let all: Vec<&Outcome> = t
            .lines
            .iter()
            .filter(|l| l.entry.key == k && !l.entry.reads.is_empty())
            .map(|l| &l.outcome)
            .collect();
        assert!(!all.is_empty(), "{k}");
        for o in all {
            assert!(matches!(o, Outcome::AtStart(_)), "{k}: {o:?}");
        }
    }
    // Only the constants are in the table: the first socket, not the %h one.
    assert_eq!(get(&t, "uwsgi"), Some(&strings(&["unix:/run/shop.sock"])));
    for k in ["workers", "threads", "chdir"] {
        assert!(get(&t, k).is_none(), "{k}: {:?}", get(&t, k));
    }
    let env = get(&t, "env").and_then(toml::Value::as_table).unwrap();
    assert_eq!(env.keys().collect::<Vec<_>>(), ["DJANGO_SETTINGS_MODULE"]);
    assert_eq!(get(&t, "timeout"), Some(&toml::Value::Integer(30)));

    let text = t.to_toml();
    let back: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(back, t.table, "{text}");
    // No value line holds a reference as written, nor anything the host made.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(!l.contains("$(") && !l.contains("@("), "{l}\n{text}");
        assert!(!l.contains("web1"), "{l}\n{text}");
    }
    // Each says why and how to get the same at start.
    let why = |key: &str, n: usize| -> String {
        let l = t
            .lines
            .iter()
            .filter(|l| l.entry.key == key)
            .nth(n)
            .unwrap();
        match &l.outcome {
            Outcome::AtStart(w) => w.clone(),
            o => panic!("{key}: {o:?}"),
        }
    };
    let w = why("processes", 0);
    assert!(
        w.contains("$(WORKERS)") && w.contains("POSTERN_WORKERS") && w.contains("--var WORKERS="),
        "{w}"
    );
    let w = why("env", 0);
    assert!(
        w.contains("$(APP_SECRET)")
            && w.contains("set SECRET in the environment postern starts with"),
        "{w}"
    );
    assert!(why("env", 1).contains("@(/nonexistent/secret.txt)"));
    assert!(why("socket", 1).contains("%h (the host's name)"));
    assert!(why("threads", 0).contains("%k") && why("threads", 0).contains("POSTERN_THREADS"));
    // Through a placeholder too.
    assert!(why("chdir", 0).contains("$(APP_ROOT)"));
    // A variable passed on under its own name needs nothing but the environment.
    assert!(why("env", 3).contains("postern does the same"));
    assert!(text.contains("# NEEDS ATTENTION"), "{text}");
    assert!(
        text.replace("\n# ", " ")
            .contains("postern --ini reads the ini file at each start"),
        "{text}"
    );
    assert!(
        t.summary()
            .contains("7 read at each start by uWSGI (not written"),
        "{}",
        t.summary()
    );
}

#[test]
fn migrate_takes_the_vars_it_is_given_as_constants() {
    let t = tr_migrate(
        "module = m\nprocesses = $(WORKERS:-4)\nenv = SECRET=$(APP_SECRET)\nchdir = $(ROOT)/x",
        &[("WORKERS", "6"), ("ROOT", "/srv")],
    );
    assert_eq!(get(&t, "workers"), Some(&toml::Value::Integer(6)));
    assert_eq!(get(&t, "chdir"), Some(&s("/srv/x")));
    assert!(matches!(outcome(&t, "env"), Outcome::AtStart(_)));
}

#[test]
fn ini_still_expands_at_start() {
    // postern --ini reads the file at each start, as uWSGI does: the values are used.
    let t = tr("module = m\nchdir = $(APP_ROOT)/src\nsocket = /run/%h.sock\nthreads = %(%k * 2)");
    assert_eq!(get(&t, "chdir"), Some(&s("/srv/shop/src")));
    assert_eq!(get(&t, "uwsgi"), Some(&strings(&["unix:/run/web1.sock"])));
    assert_eq!(get(&t, "threads"), Some(&toml::Value::Integer(4)));
}

// regression: spooler, mules, cache2, locks, … were "unknown (misspelt)" and --ini ran
// without them: an app guarding `import uwsgi` silently never ran its jobs.
#[test]
fn refuses_uwsgi_in_process_jobs() {
    let t = tr("module = m\ncache2 = name=default,items=100\nspooler = /tmp/spool\nspooler-processes = 2\nmule = tasks.py\nmules = 2\nshared-import = tasks\nlocks = 4\nsharedarea = 4\nqueue = 10\nsignal = 1\nfarm = f:1,2");
    for (n, l) in t.lines[1..].iter().enumerate() {
        let Outcome::Refused(why) = &l.outcome else {
            panic!("{}: {:?}", l.entry.text, l.outcome);
        };
        // The reason in full once, then pointing at it.
        if n == 0 {
            assert!(
                why.contains("`uwsgi` Python module") && why.contains("task queue"),
                "{why}"
            );
        } else {
            assert!(why.contains("as line 3: the `uwsgi` module"), "{why}");
        }
    }
    assert!(t.check().is_err());
}

#[test]
fn names_postern_analogues_of_logging_and_harakiri_options() {
    let t = tr("module = m\nlog-slow = 2000\nharakiri-graceful-timeout = 5\npy-tracebacker = /tmp/tb\nwsgi-disable-file-wrapper = true");
    let why = |k: &str| match outcome(&t, k) {
        Outcome::Ignored(w) | Outcome::Accepted(w) => w.clone(),
        o => panic!("{k}: {o:?}"),
    };
    assert!(why("log-slow").contains("slow-log"));
    assert!(why("harakiri-graceful-timeout").contains("timeout"));
    assert!(why("py-tracebacker").contains("slow-log"));
    assert!(why("wsgi-disable-file-wrapper").contains("file_wrapper"));
}

#[test]
fn migrate_leaves_out_what_is_joined_to_a_value_made_at_start() {
    // A relative path joins the chdir, the app its callable, a socket its protocol.
    let t = tr_migrate(
        "chdir = $(APP_DIR)\nmodule = shop.wsgi\ncallable = $(CALLABLE)\nprotocol = $(PROTO)\nsocket = app.sock\nuwsgi-socket = /run/abs.sock\nlogger = file:logs/app.log\nhome = venv\ntouch-reload = /srv/reload",
        &[],
    );
    let text = t.to_toml();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(!l.contains("$("), "{l}\n{text}");
    }
    for k in ["chdir", "module", "socket", "logger", "home"] {
        assert!(
            matches!(outcome(&t, k), Outcome::AtStart(_)),
            "{k}: {:?}",
            outcome(&t, k)
        );
    }
    assert!(matches!(outcome(&t, "callable"), Outcome::Accepted(_)));
    assert_eq!(get(&t, "uwsgi"), Some(&strings(&["unix:/run/abs.sock"])));
    assert_eq!(get(&t, "touch-reload"), Some(&s("/srv/reload")));
    // Every option line appears once in the output.
    for n in 2..=10 {
        assert_eq!(
            text.matches(&format!("# line {n}: ")).count(),
            1,
            "line {n}\n{text}"
        );
    }
}

// regression: `-Mp4 -w 4` suggested `--workers 4 --workers 4`: an option postern takes
// once is kept at its last place, with its last value; a repeatable one is left alone.
#[test]
fn last_wins_keeps_an_option_given_once_at_its_last_value() {
    let arity = |name: &str| match name {
        "workers" | "timeout" => Some(Arity {
            takes_value: true,
            repeatable: false,
        }),
        "master" => Some(Arity {
            takes_value: false,
            repeatable: false,
        }),
        "uwsgi" => Some(Arity {
            takes_value: true,
            repeatable: true,
        }),
        _ => None,
    };
    let words = |w: &[&str]| w.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let (kept, again) = last_wins(
        &words(&[
            "postern",
            "--master",
            "--workers 4",
            "--workers",
            "4",
            "app",
        ]),
        arity,
    );
    assert_eq!(
        kept,
        words(&["postern", "--master", "--workers", "4", "app"])
    );
    assert!(again.is_empty(), "{again:?}");
    let (kept, again) = last_wins(
        &words(&[
            "postern",
            "--workers=2",
            "--uwsgi",
            "a",
            "--timeout",
            "5",
            "--uwsgi",
            "b",
            "--workers 8",
            "--master",
            "--master",
        ]),
        arity,
    );
    assert_eq!(
        kept,
        words(&[
            "postern",
            "--uwsgi",
            "a",
            "--timeout",
            "5",
            "--uwsgi",
            "b",
            "--workers 8",
            "--master"
        ])
    );
    assert_eq!(
        again,
        ["`--workers=2` and `--workers 8` set the same option: the last wins (as in uWSGI and gunicorn)"]
    );
}

// regression: a warning (or a refusal, or migrate's comments) quoted an `env` line, or
// a line named like a secret, whole: `env = SECRET_KEY=hunter2` went to the journal.
#[test]
fn quoted_lines_hide_env_values_and_secrets() {
    let t = tr("module = shop.wsgi\nenv = SECRET_KEY=hunter2\nenv = SECRET_KEY=hunter3\nenv=TZ=UTC\nenv = EMPTY=\ndb_password = pw-one\napi-key = pw-two\nAUTH_TOKEN = pw-three\ngevent-monkey-patch = true\nhttp = :8000\nenv = NOVALUE");
    let shown: Vec<String> = t
        .lines
        .iter()
        .map(|l| l.entry.shown().into_owned())
        .collect();
    assert_eq!(
        shown,
        [
            "module = shop.wsgi",
            "env = SECRET_KEY=(value hidden)",
            "env = SECRET_KEY=(value hidden)",
            "env= TZ=(value hidden)",
            "env = EMPTY=",
            "db_password = (value hidden)",
            "api-key = (value hidden)",
            "AUTH_TOKEN = (value hidden)",
            "gevent-monkey-patch = true",
            "http = :8000",
            "env = NOVALUE",
        ]
    );
    let said = format!(
        "{}\n{}\n{}",
        t.check().unwrap_err(),
        t.warnings().unwrap(),
        t.to_toml()
    );
    for secret in ["hunter2", "pw-one", "pw-two", "pw-three"] {
        assert!(!said.contains(secret), "{secret} in:\n{said}");
    }
    assert!(
        said.contains(
            "shop.ini:3  env = SECRET_KEY=(value hidden): ignored: line 4 sets SECRET_KEY again"
        ),
        "{said}"
    );
    // The TOML itself carries the value (that is the point of migrating); only the
    // comments quoting the lines hide it.
    let comments: String = t.to_toml().lines().filter(|l| l.starts_with('#')).collect();
    assert!(!comments.contains("hunter3"), "{comments}");
    assert!(t.to_toml().contains("SECRET_KEY = \"hunter3\""));
}

// regression: the lines hid a secret, but the reasons quoted it (an attach-daemon's
// ExecStart= with a secret placeholder expanded, a cron job's crontab line), and a
// secret in a value's form (a URL's password, basicauth, PGPASSWORD=..., mysqldump
// -p...) or in a set-placeholder line was quoted whole.
// regression (probe 313): rules that guarded paths (a password, a refusal, a security
// header) were dropped with a warning, and the paths served to anyone; a realm with a
// space showed the password.
#[test]
fn routes_that_guard_paths_are_refused_and_a_spaced_realm_hides_its_password() {
    for (line, what) in [
        (
            "route = ^/admin basicauth:Admin Area,admin:hunter10",
            "asks for a password",
        ),
        (
            "route-uri = ^/private ldapauth:Staff,ldap://ldap/",
            "asks for a password",
        ),
        (
            "route = ^/internal/ break:403 Forbidden",
            "refuses requests",
        ),
        (
            "route-remote-addr = ^(?!127\\.0\\.0\\.1$) break:",
            "refuses requests",
        ),
        ("route = ^/old return:410", "refuses requests"),
        (
            "route = .* addheader:Strict-Transport-Security: max-age=31536000",
            "adds a security header",
        ),
        ("route-run = break:403", "refuses requests"),
        (
            "route-run = basicauth:Admin,admin:hunter10",
            "asks for a password",
        ),
        (
            "route-run = addheader:X-Frame-Options: DENY",
            "adds a security header",
        ),
    ] {
        let t = tr(&format!("module = shop.wsgi\n{line}"));
        let e = t.check().expect_err(line).to_string();
        assert!(e.contains(what) && e.contains("auth_basic"), "{line}: {e}");
        assert!(!e.contains("hunter10"), "{e}");
    }
    for benign in [
        "route = ^/old redirect:/new",
        "route = ^/x rewrite:/y",
        "route = ^/health return:200",
        "route = .* addheader:X-Served-By: shop",
        "route = ^/x log:hit",
    ] {
        let t = tr(&format!("module = shop.wsgi\n{benign}"));
        assert!(t.check().is_ok(), "{benign}");
        assert!(
            t.warnings().unwrap().contains("internal routing"),
            "{benign}"
        );
    }
    let t = tr("module = shop.wsgi\nroute = ^/admin basicauth:Admin Area,admin:hunter11");
    let said = format!("{}\n{}", t.check().unwrap_err(), t.to_toml());
    assert!(!said.contains("hunter11"), "{said}");
    assert!(
        said.contains("basicauth:Admin Area,admin:(value hidden)"),
        "{said}"
    );
}

// regression (probe 313): real uWSGI options were "unknown … or misspelt", and under
// `strict = true` (production configs set it) postern refused to start; confinement
// options were dropped with that generic warning.
#[test]
fn real_uwsgi_options_are_known_under_strict_and_confinement_is_refused() {
    let t = tr("strict = true\nmodule = shop.wsgi\npy-call-osafterfork = true\npy-call-uwsgi-fork-hooks = true\nskip-atexit = true\nreload-on-exception = false\nso-keepalive = true\ntcp-nodelay = true\nreuse-port = true\npyargv = --debug\nenable-metrics = true\nlog-micros = true\ndisable-sendfile = true\nmin-worker-lifetime = 60\ntouch-workers-reload = /srv/shop/reload");
    assert!(t.check().is_ok(), "{:?}", t.check());
    let w = t.warnings().unwrap_or_default();
    assert!(!w.contains("unknown") && !w.contains("misspelt"), "{w}");
    assert!(!w.contains("did you mean"), "{w}");
    assert_eq!(
        get(&t, "touch-reload").and_then(|v| v.as_str()),
        Some("/srv/shop/reload")
    );
    for line in [
        "chroot = /srv/jail",
        "cap = setgid,setuid",
        "unshare = net,ipc",
    ] {
        let t = tr(&format!("module = shop.wsgi\n{line}"));
        let e = t.check().expect_err(line).to_string();
        assert!(
            e.contains("does not confine itself") && e.contains("RootDirectory="),
            "{e}"
        );
    }
}

#[test]
fn reasons_and_values_hide_secrets_too() {
    let t = tr("module = shop.wsgi\nredis_password = hunter1\nattach-daemon = celery worker --broker redis://:%(redis_password)@localhost/0\nroute = ^/admin basicauth:Admin,admin:hunter2\ncron = -1 -1 -1 -1 -1 mysqldump -u root -phunter3 db\nset-placeholder = db_password=hunter4\nenv = =hunter5\ncron = -1 -1 -1 -1 -1 PGPASSWORD=hunter6 pg_dump --api-key=hunter7 postgres://u:hunter8@db/x\nset-ph = db_token=hunter9\nattach-daemon = worker %(db_token) %(db_password)");
    let said = format!(
        "{}\n{}\n{}",
        t.warnings().unwrap(),
        t.to_toml(),
        t.info_message().unwrap_or_default()
    );
    for n in 1..=9 {
        let secret = format!("hunter{n}");
        assert!(!said.contains(&secret), "{secret} in:\n{said}");
    }
    for shown in [
        "ExecStart=celery worker --broker redis://:%(redis_password)@localhost/0",
        "route = ^/admin basicauth:Admin,admin:(value hidden)",
        "mysqldump -u root -p(value hidden) db",
        "set-placeholder = db_password=(value hidden)",
        "PGPASSWORD=(value hidden) pg_dump --api-key=(value hidden) postgres://u:(value hidden)@db/x",
        "worker %(db_token) %(db_password)",
        "env = =(value hidden): ignored: it names no variable",
    ] {
        assert!(said.contains(shown), "{shown} not in:\n{said}");
    }
    // Not a secret: left as it is.
    assert_eq!(
        super::hide_by_form("mysql -p db; https://example.com:8443/x user@host --port=5 KEYS=3"),
        "mysql -p db; https://example.com:8443/x user@host --port=5 KEYS=3"
    );
}

// regression: a secret glued to what precedes it was shown: an attach-daemon reason's
// `(ExecStart=PGPASSWORD=…` (the word split at its first `=` only) and
// `(ExecStart=mysqldump … -p…` (the MySQL test looked at the part after the last `/`
// only), and in the lines themselves `exec:mysqladmin -p…` and `sh -c "mysql -p…"`.
#[test]
fn secrets_glued_to_a_prefix_or_a_quote_are_hidden() {
    for line in [
        "attach-daemon = PGPASSWORD=hunter-a pg_dump db",
        "attach-daemon = mysqldump -u root -phunter-b db",
        "hook-as-user = exec:mysqladmin -phunter-c",
        "attach-daemon = sh -c \"mysql -phunter-d\"",
        "smart-attach-daemon = /tmp/x.pid env MYSQL_PWD=hunter-e mysqldump db",
        "attach-daemon = sh -c 'REDIS_PASS=hunter-f exec:DB_PASSWORD=hunter-g x'",
    ] {
        let t = tr(&format!("module = shop.wsgi\n{line}"));
        let said = format!(
            "{}\n{}\n{}\n{}",
            t.warnings().unwrap_or_default(),
            t.to_toml(),
            t.info_message().unwrap_or_default(),
            t.check().err().map(|e| e.to_string()).unwrap_or_default()
        );
        assert!(!said.contains("hunter-"), "{line}:\n{said}");
        assert!(said.contains("(value hidden)"), "{line}:\n{said}");
    }
    for (text, shown) in [
        (
            "(ExecStart=PGPASSWORD=hunter pg_dump db, with",
            "(ExecStart=PGPASSWORD=(value hidden) pg_dump db, with",
        ),
        (
            "(ExecStart=mysqldump -u root -phunter db, with",
            "(ExecStart=mysqldump -u root -p(value hidden) db, with",
        ),
        (
            "exec:mysqladmin -phunter",
            "exec:mysqladmin -p(value hidden)",
        ),
        ("sh -c \"mysql -phunter\"", "sh -c \"mysql -p(value hidden)"),
        (
            "sh -c \"mysql '-phunter'\"",
            "sh -c \"mysql '-p(value hidden)",
        ),
        (
            "exec:/usr/bin/mariadb -phunter",
            "exec:/usr/bin/mariadb -p(value hidden)",
        ),
        ("\"API_TOKEN=hunter\"", "\"API_TOKEN=(value hidden)"),
        ("X=--api-key=hunter", "X=--api-key=(value hidden)"),
        (
            "DB=postgres://u:hunter@h/x?password=hunter2",
            "DB=postgres://u:(value hidden)@h/x?password=(value hidden)",
        ),
        ("«TOKEN=hunter", "«TOKEN=(value hidden)"),
        (
            "curl -u admin:hunter -H \"Authorization: Bearer hunter\" x",
            "curl -u admin:(value hidden) -H \"Authorization: Bearer (value hidden) x",
        ),
        (
            "curl --user=admin:hunter -uroot:hunter -H 'X-Api-Key: hunter' x",
            "curl --user=admin:(value hidden) -uroot:(value hidden) -H 'X-Api-Key: (value hidden) x",
        ),
        ("curl --user admin:hunter x", "curl --user admin:(value hidden) x"),
        (
            "wget --header=Authorization:hunter",
            "wget --header=Authorization:(value hidden)",
        ),
        // regression: glued to the header's name, the scheme word was hidden and the
        // token shown, a secret-named header's value shown whole; --oauth2-bearer's shown.
        (
            "curl -H \"Authorization:Bearer hunter\" x",
            "curl -H \"Authorization:Bearer (value hidden) x",
        ),
        (
            "curl -H 'X-Api-Key:hunter' --header=X-Auth-Token:hunter -HAuthorization:hunter x",
            "curl -H 'X-Api-Key:(value hidden) --header=X-Auth-Token:(value hidden) -HAuthorization:(value hidden) x",
        ),
        (
            "curl --oauth2-bearer hunter --oauth2-bearer=hunter --proxy-user u:hunter x",
            "curl --oauth2-bearer (value hidden) --oauth2-bearer=(value hidden) --proxy-user u:(value hidden) x",
        ),
        (
            "curl -H Proxy-Authorization:Basic hunter x",
            "curl -H Proxy-Authorization:Basic (value hidden) x",
        ),
        ("sudo -u www-data uwsgi", "sudo -u www-data uwsgi"),
        (
            "curl -H 'Accept:text/html' -H X-Api-Key:%(api_key) x",
            "curl -H 'Accept:text/html' -H X-Api-Key:%(api_key) x",
        ),
        // Not secrets: left as they are.
        (
            "PWD=/srv/app OLDPWD=/ KEYS=3",
            "PWD=/srv/app OLDPWD=/ KEYS=3",
        ),
        (
            "ExecStart=pg_dump -p 5432 db",
            "ExecStart=pg_dump -p 5432 db",
        ),
        ("sh -c \"pg_dump -p5432\"", "sh -c \"pg_dump -p5432\""),
        (
            "exec:DB_PASSWORD=%(db_password)",
            "exec:DB_PASSWORD=%(db_password)",
        ),
    ] {
        assert_eq!(super::hide_by_form(text), shown, "{text}");
    }
}

// regression (probe 427): a value from an included file's line 3 and one from the
// given file's line 3 were written together under the first one's comment only.
#[test]
fn migrate_names_the_line_of_each_value_from_an_included_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("b2.ini"),
        "[uwsgi]\nmaster = true\nprocesses = 3\n",
    )
    .unwrap();
    let app = dir.path().join("s4.ini");
    std::fs::write(
        &app,
        "[uwsgi]\ninclude = %db2.ini\nthreads = 4\nmodule = shop.wsgi\n",
    )
    .unwrap();
    let out = migrate(app.to_str().unwrap()).unwrap();
    assert!(
        out.contains("# line 3: threads = 4\nthreads = 4\n"),
        "{out}"
    );
    assert!(
        out.contains("b2.ini:3: processes = 3\nworkers = 3\n"),
        "{out}"
    );
    // A message about an included line names its file too (review 428).
    std::fs::write(
        dir.path().join("b3.ini"),
        "[uwsgi]\nmaster = true\nmodule = other.wsgi\n",
    )
    .unwrap();
    let app = dir.path().join("s5.ini");
    std::fs::write(
        &app,
        "[uwsgi]\ninclude = %db3.ini\nthreads = 4\nwsgi-file = shop.py\n",
    )
    .unwrap();
    let out = migrate(app.to_str().unwrap()).unwrap();
    assert!(out.contains("b3.ini:3 already names the"), "{out}");
}

// regression (probe 313): `ini = %d/base.ini` (a shared base file and one file per
// app, a common layout) was refused: "postern reads one file".
#[test]
fn an_included_ini_file_is_read_in_place_and_later_lines_override_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("base.ini"),
        "[uwsgi]\nmaster = true\nprocesses = 4\nharakiri = 30\nsocket = %d%n.sock\n[other]\nthreads = 9\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("extra.ini"),
        "[uwsgi]\nini = %dbase.ini:other\n",
    )
    .unwrap();
    let app = dir.path().join("app.ini");
    std::fs::write(
        &app,
        "[uwsgi]\nini = %d/base.ini\nmodule = shop.wsgi\nprocesses = 2\ninclude = %dextra.ini\n",
    )
    .unwrap();
    let t = load_with(app.to_str().unwrap(), &ctx()).unwrap();
    assert!(t.check().is_ok(), "{:?}", t.check());
    assert_eq!(get(&t, "workers"), Some(&toml::Value::Integer(2)));
    assert_eq!(get(&t, "timeout"), Some(&toml::Value::Integer(30)));
    assert_eq!(get(&t, "threads"), Some(&toml::Value::Integer(9)));
    // %d and %n in the included file are its own.
    let sock = format!("unix:{}/base.sock", dir.path().display());
    assert_eq!(get(&t, "uwsgi"), Some(&strings(&[sock.as_str()])));
    // Where a value came from names the included file's line.
    let origin = t.origin("timeout").unwrap();
    assert!(origin.ends_with("base.ini:4"), "{origin}");
    // An include loop is refused, not followed.
    std::fs::write(dir.path().join("a.ini"), "[uwsgi]\nini = %db.ini\n").unwrap();
    std::fs::write(dir.path().join("b.ini"), "[uwsgi]\nini = %da.ini\n").unwrap();
    let e = load_with(dir.path().join("a.ini").to_str().unwrap(), &ctx())
        .expect_err("a loop")
        .to_string();
    assert!(e.contains("include each other without end"), "{e}");
    // A missing included file is an error naming it.
    std::fs::write(dir.path().join("c.ini"), "[uwsgi]\nini = %dnope.ini\n").unwrap();
    let e = load_with(dir.path().join("c.ini").to_str().unwrap(), &ctx())
        .expect_err("missing")
        .to_string();
    assert!(
        e.contains("nope.ini") && e.contains("line 2: ini = "),
        "{e}"
    );
    // A note about an included file's line names that file and its line.
    std::fs::write(
        dir.path().join("d.ini"),
        "[uwsgi]\nsocket = /run/%(nothing).sock\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("e.ini"),
        "[uwsgi]\nmodule = shop.wsgi\nini = %dd.ini\n",
    )
    .unwrap();
    let t = load_with(dir.path().join("e.ini").to_str().unwrap(), &ctx()).unwrap();
    let w = t.warnings().unwrap_or_default();
    assert!(w.contains("d.ini:2: %(nothing) refers to no option"), "{w}");
}

// regression (probe 313): a `%(name)` that refers to nothing was kept as written with no
// word (a misspelt placeholder bound a socket of that literal name).
#[test]
fn a_placeholder_that_refers_to_nothing_is_warned_about() {
    let t = tr("module = shop.wsgi\nappname = shop\nsocket = /run/%(apname).sock");
    let w = t.warnings().unwrap_or_default();
    assert!(w.contains("%(apname) refers to no option"), "{w}");
    let t = tr("module = shop.wsgi\nappname = shop\nsocket = /run/%(appname).sock");
    assert!(!t
        .warnings()
        .unwrap_or_default()
        .contains("refers to no option"));
}

// regression (probe 319): a log-format's `%(addr)`, `%(status)`... (uWSGI's log
// variables) were each warned about as a misspelt placeholder, twice; a misspelt
// placeholder elsewhere is warned about once.
#[test]
fn a_log_formats_variables_are_not_misspelt_placeholders() {
    let t = tr("module = shop.wsgi\nlog-format = %(addr) - %(user) [%(ltime)] \"%(method) %(uri)\" %(status)\nsocket = /run/%(apname)-%(apname).sock");
    let w = t.warnings().unwrap_or_default();
    assert!(!w.contains("%(addr) refers"), "{w}");
    assert!(!w.contains("%(status) refers"), "{w}");
    assert_eq!(w.matches("%(apname) refers to no option").count(), 1, "{w}");
}

// regression (probe 319): `--ini base.ini --ini app.ini` (uWSGI reads each in turn) was
// a clap error, "cannot be used multiple times".
#[test]
fn several_ini_files_are_read_in_turn_as_uwsgi_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("base.ini"),
        "[uwsgi]\nmodule = shop.wsgi\nprocesses = 2\nenv = A=1\nharakiri = 30\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("app.ini"),
        "[uwsgi]\nprocesses = 3\nenv = B=2\n[big]\nprocesses = 8\n",
    )
    .unwrap();
    let mut c = ctx();
    c.cwd = dir.path().to_owned();
    let specs = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let t = load_many_with(&specs(&["base.ini", "app.ini"]), &c).unwrap();
    assert!(t.check().is_ok(), "{:?}", t.check());
    // A later file's single value wins; lists add up.
    assert_eq!(get(&t, "workers"), Some(&toml::Value::Integer(3)));
    assert_eq!(get(&t, "timeout"), Some(&toml::Value::Integer(30)));
    let env = get(&t, "env").and_then(|e| e.as_table()).unwrap();
    assert_eq!(env.get("A"), Some(&toml::Value::String("1".into())));
    assert_eq!(env.get("B"), Some(&toml::Value::String("2".into())));
    assert!(t.origin("workers").unwrap().ends_with("app.ini:2"));
    // A section of one of them.
    let t = load_many_with(&specs(&["base.ini", "app.ini:big"]), &c).unwrap();
    assert_eq!(get(&t, "workers"), Some(&toml::Value::Integer(8)));
    // A missing one is named as the file it is, not as a line.
    let e = load_many_with(&specs(&["base.ini", "nope.ini"]), &c).expect_err("missing");
    assert!(
        matches!(&e, IniError::Read { path, .. } if path.ends_with("nope.ini")),
        "{e}"
    );
    let e = load_many_with(&specs(&["base.ini", "u.yaml"]), &c).expect_err("yaml");
    assert!(matches!(e, IniError::NotIni { .. }), "{e}");
    // The first file's section missing is said as for one file.
    let e = load_many_with(&specs(&["app.ini:nope", "base.ini"]), &c)
        .expect_err("no section")
        .to_string();
    assert!(e.contains("there is no [nope] section"), "{e}");
}

// regression (probe 401, HIGH): a later `X = 0` was accepted as "postern's default too"
// while the earlier line's value stayed in force (a 30 s timeout uWSGI would not apply,
// a 10 MiB body limit), and `disable-logging = true` then `= false` left the access
// log off; uWSGI takes the last line.
#[test]
fn a_later_zero_or_false_takes_back_an_earlier_value() {
    let t = tr("harakiri = 30\nlimit-post = 10485760\nmax-requests = 500\nreload-on-rss = 512\nmax-worker-lifetime = 3600\nharakiri = 0\nlimit-post = 0\nmax-requests = 0\nreload-on-rss = 0\nmax-worker-lifetime = 0");
    for key in [
        "timeout",
        "max-body",
        "max-requests",
        "max-rss",
        "max-lifetime",
    ] {
        assert_eq!(get(&t, key), None, "{key}: {:?}", t.table);
    }
    let Outcome::Ignored(why) = &t.lines[0].outcome else {
        panic!("{:?}", t.lines[0].outcome)
    };
    assert!(why.contains("line 7 sets it back to 0"), "{why}");
    let toml = t.to_toml();
    assert!(!toml.contains("timeout = 30"), "{toml}");
    // A zero before the value: the value stands.
    let t = tr("harakiri = 0\nharakiri = 30");
    assert_eq!(get(&t, "timeout"), Some(&toml::Value::Integer(30)));
    // The last disable-logging wins, whichever comes first.
    let t = tr("logto = /var/log/app.log\ndisable-logging = true\ndisable-logging = false");
    assert_eq!(get(&t, "access-log"), Some(&s("/var/log/app.log")));
    let t = tr("disable-logging = false\ndisable-logging = true\nlogto = /var/log/app.log");
    assert_eq!(get(&t, "access-log"), Some(&s("off")));
    let Outcome::Ignored(why) = outcome(&t, "disable-logging") else {
        panic!()
    };
    assert!(why.contains("line 3 sets it again"), "{why}");
}

// regression (probe 401): `socket: PATH` (no `=`) was only "unknown", with no hint, and
// postern listened on its default address instead.
#[test]
fn an_option_written_without_its_equals_sign_is_pointed_out() {
    let t = tr("module = wsgi\nsocket: /run/app.sock\nprocesses 4");
    let w = t.warnings().unwrap();
    assert!(
        w.contains("did you mean `socket = /run/app.sock`? an option takes its value after `=`"),
        "{w}"
    );
    assert!(w.contains("did you mean `processes = 4`?"), "{w}");
    assert_eq!(get(&t, "uwsgi"), None);
}

// regression (review 403): `reload-on-rss = 0` took back the max-rss that
// `evil-reload-on-rss` (another uWSGI option) had given, and with an earlier
// reload-on-rss above 0 the evil line was ignored though the last reload-on-rss is 0.
#[test]
fn a_zero_takes_back_only_its_own_options_value() {
    let t = tr("evil-reload-on-rss = 1024\nreload-on-rss = 0");
    assert_eq!(get(&t, "max-rss"), Some(&toml::Value::Integer(1024)));
    let t = tr("reload-on-rss = 512\nevil-reload-on-rss = 1024\nreload-on-rss = 0");
    assert_eq!(get(&t, "max-rss"), Some(&toml::Value::Integer(1024)));
    let t = tr("reload-on-rss = 512\nevil-reload-on-rss = 1024");
    assert_eq!(get(&t, "max-rss"), Some(&toml::Value::Integer(512)));
}

// regression (review 403): the hint was built from the key, which ends at the line's
// first `=`: `env: NAME=value` was told `env = NAME`, `harakiri : 30` `harakiri = : 30`.
#[test]
fn the_missing_equals_hint_keeps_the_value_as_written() {
    let w = tr("env: DJANGO_SETTINGS_MODULE=prod\nharakiri : 30")
        .warnings()
        .unwrap();
    assert!(
        w.contains("did you mean `env = DJANGO_SETTINGS_MODULE=prod`?"),
        "{w}"
    );
    assert!(w.contains("did you mean `harakiri = 30`?"), "{w}");
}

// regression (probe 401): `master = false` beside `processes = 3` was carried over
// without a word, and postern runs a master for them anyway.
#[test]
fn master_false_with_several_workers_is_noted() {
    let t = tr("module = m\nmaster = false\nprocesses = 3");
    let toml = t.to_toml();
    assert!(
        toml.contains("postern runs a master whenever there is more than one worker"),
        "{toml}"
    );
    let t = tr("module = m\nmaster = false\nprocesses = 1");
    assert!(!t.to_toml().contains("postern runs a master whenever"));
}
