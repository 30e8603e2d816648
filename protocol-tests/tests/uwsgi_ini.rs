//! uWSGI ini files from Django's, Flask's and uWSGI's own documentation
//! (protocol-tests/ini/, adapted only in paths and ports), each served with
//! `postern --ini` behind a real nginx and converted with `postern migrate`; the ones
//! that make postern an HTTP server are refused in one message that says what to do.
//! Needs nginx and a venv with Flask and Django (`.ci/run` makes `.venv`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use protocol_tests::harness::*;

fn venv() -> Option<PathBuf> {
    if let Some(v) = example_venv() {
        return Some(v);
    }
    if in_ci() {
        panic!("no venv with Flask and Django (.venv or $POSTERN_TEST_VENV), and CI=true");
    }
    eprintln!("\n!!!!! SKIPPING: no venv with Flask and Django (python3 -m venv .venv && .venv/bin/pip install flask django); this test did NOT run !!!!!\n");
    None
}

fn ini(name: &str) -> PathBuf {
    root().join("protocol-tests/ini").join(name)
}

/// What the ini files read with `$(…)`: the test's directory, the venv, two ports.
struct Vars {
    dir: PathBuf,
    venv: PathBuf,
    port: u16,
    stats_port: u16,
}

impl Vars {
    fn new(dir: &Path, venv: &Path) -> Vars {
        Vars {
            dir: dir.to_owned(),
            venv: venv.to_owned(),
            port: free_port(),
            stats_port: free_port(),
        }
    }

    fn apply(&self, cmd: &mut Command) {
        cmd.env("POSTERN_TEST_DIR", &self.dir)
            .env("POSTERN_TEST_VENV", &self.venv)
            .env("POSTERN_TEST_PORT", self.port.to_string())
            .env("POSTERN_TEST_STATS_PORT", self.stats_port.to_string())
            .env_remove("VIRTUAL_ENV")
            .env("RUST_BACKTRACE", "1");
    }
}

/// What a test behind nginx needs: the nginx binary, the venv, the test's directory,
/// what its ini file reads, and the file; `None` where nginx or the venv is missing
/// (outside CI, after saying so).
fn behind_nginx(ini_name: &str) -> Option<(PathBuf, PathBuf, tempfile::TempDir, Vars, PathBuf)> {
    let bin = nginx_bin()?;
    let venv = venv()?;
    let dir = tempdir();
    let vars = Vars::new(dir.path(), &venv);
    Some((bin, venv, dir, vars, ini(ini_name)))
}

fn postern(vars: &Vars, args: &[&str]) -> Command {
    let mut cmd = Command::new(postern_bin());
    cmd.args(args);
    vars.apply(&mut cmd);
    cmd
}

/// `Postern::spawn` in the test's directory.
fn start(cmd: Command, vars: &Vars, addr: Addr, log: Option<PathBuf>) -> Postern {
    Postern::spawn(cmd, addr, &vars.dir, log)
}

/// `start`, then an nginx in the test's directory that passes `/` to `addr` over uwsgi.
fn start_behind_nginx(
    cmd: Command,
    vars: &Vars,
    bin: &Path,
    addr: Addr,
    log: Option<PathBuf>,
) -> (Postern, Nginx) {
    let p = start(cmd, vars, addr.clone(), log);
    let n = Nginx::start(bin, &vars.dir, &uwsgi_location(&addr.nginx()));
    (p, n)
}

/// `postern migrate INI`, with the `$(…)` the files read given as constants (`--var`:
/// migrate reads no variable of its own environment): (stdout, stderr), after checking
/// it succeeded.
fn migrate(vars: &Vars, ini: &Path) -> (String, String) {
    let given = [
        format!("POSTERN_TEST_DIR={}", vars.dir.display()),
        format!("POSTERN_TEST_VENV={}", vars.venv.display()),
        format!("POSTERN_TEST_PORT={}", vars.port),
        format!("POSTERN_TEST_STATS_PORT={}", vars.stats_port),
    ];
    let mut args = vec!["migrate", ini.to_str().unwrap()];
    for g in &given {
        args.extend(["--var", g.as_str()]);
    }
    let out: Output = postern(vars, &args).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    // 3: written, with REFUSED lines; 0: nothing refused.
    let refused = stdout.contains("#   REFUSED");
    assert_eq!(
        out.status.code(),
        Some(if refused { 3 } else { 0 }),
        "postern migrate: {stderr}"
    );
    (stdout, stderr)
}

/// SIGTERM, and the exit status within 30 s.
fn stop(p: &mut Postern) -> std::process::ExitStatus {
    p.signal(libc::SIGTERM);
    p.wait_exit(30).expect("postern did not stop on SIGTERM")
}

/// `stop`, which must succeed and remove the Unix socket `sock`.
fn stop_and_clean(p: &mut Postern, sock: &Path) {
    assert!(stop(p).success());
    assert!(!sock.exists());
}

/// One HTTP GET to postern's stats endpoint.
fn stats_get(port: u16, path: &str) -> Response {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connecting to --stats");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_http(&buf)
        .unwrap_or_else(|| panic!("bad stats answer {:?}", String::from_utf8_lossy(&buf)))
}

/// Django's own example: no socket in the file (the test gives one, as the docs' command
/// line does), daemonize becomes the log file, the pidfile is written and removed.
#[test]
fn django_docs_ini_behind_nginx() {
    let Some((bin, venv, dir, vars, file)) = behind_nginx("django_docs.ini") else {
        return;
    };
    let sock = dir.path().join("django.sock");
    let addr = Addr::Unix(sock.clone());
    let log = dir.path().join("yourproject.log");
    let pidfile = dir.path().join("project-master.pid");
    let listen = format!("unix:{}", sock.display());
    // The ini file (then the TOML that migrate wrote from it), on this test's socket.
    let with = |option: &str, path: &std::path::Path| {
        postern(
            &vars,
            &[
                option,
                path.to_str().unwrap(),
                "--uwsgi",
                &listen,
                "--venv",
                venv.to_str().unwrap(),
            ],
        )
    };
    let cmd = with("--ini", &file);
    let (mut p, n) = start_behind_nginx(cmd, &vars, &bin, addr.clone(), Some(log.clone()));

    assert_eq!(n.get("/").text(), "Hello from Django\n");
    assert_eq!(n.get("/form/").status, 200);
    // master=True: the process started is the master, and its pid is in the pidfile.
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        p.pid().to_string()
    );
    // daemonize=FILE: postern's log and its access lines go to that file, and the one
    // warning says postern stays in the foreground.
    assert!(p.wait_log("path=/form/", 10), "{}", p.logs());
    assert!(
        p.logs().contains("django_docs.ini:12  daemonize="),
        "{}",
        p.logs()
    );
    assert!(
        p.logs().contains("postern stays in the foreground"),
        "{}",
        p.logs()
    );
    assert!(stop(&mut p).success());
    // vacuum=True: nothing is left behind.
    assert!(!pidfile.exists() && !sock.exists());

    // The same file through postern migrate, then served from the TOML it wrote.
    let (toml, summary) = migrate(&vars, &file);
    for want in [
        "# line 7: module=mysite.wsgi:application\napp = \"mysite.wsgi:application\"\n".to_owned(),
        format!("# line 6: chdir=%d../../examples/django_project\nchdir = \"{}\"\n", {
            // %d keeps the ini's own path, as uWSGI does: ini/../../examples/…
            ini("").join("../../examples/django_project").display()
        }),
        "master = true\n".to_owned(),
        format!("pidfile = \"{}\"\n", pidfile.display()),
        "max-requests = 5000\n".to_owned(),
        format!("log-file = \"{}\"\n", log.display()),
        format!("access-log = \"{}\"\n", log.display()),
        "# line 10: vacuum=True\n#   not needed: postern removes its Unix sockets and pidfile at exit\n".to_owned(),
    ] {
        assert!(toml.contains(&want), "missing {want:?} in:\n{toml}");
    }
    assert!(
        summary.contains("7 option lines read from [uwsgi]: 6 carried over, 1 not needed"),
        "{summary}"
    );
    let conf = dir.path().join("postern.toml");
    std::fs::write(&conf, &toml).unwrap();
    std::fs::remove_file(&log).unwrap();
    let cmd = with("--config", &conf);
    let mut p = start(cmd, &vars, addr, Some(log));
    assert_eq!(n.get("/").text(), "Hello from Django\n");
    assert!(stop(&mut p).success());
}

/// Flask's docs: a Unix socket, the app mounted at /yourapplication with
/// manage-script-name, the virtualenv, and `plugin = python3` (not needed: no warning);
/// nginx configured as those docs say.
#[test]
fn flask_docs_ini_mounted_behind_nginx() {
    let Some((bin, venv, dir, vars, file)) = behind_nginx("flask_docs.ini") else {
        return;
    };
    let sock = dir.path().join("yourapplication.sock");
    let mut cmd = postern(&vars, &["--ini", file.to_str().unwrap()]);
    cmd.current_dir(root().join("examples"));
    let mut p = start(cmd, &vars, Addr::Unix(sock.clone()), None);
    // Flask's nginx configuration, with the tests' uwsgi params.
    let site = format!(
        "location = /yourapplication {{ rewrite ^ /yourapplication/; }}\n\
         location /yourapplication {{ try_files $uri @yourapplication; }}\n{}",
        uwsgi_location(&format!("unix:{}", sock.display())).replacen(
            "location / {",
            "location @yourapplication {",
            1
        )
    );
    let n = Nginx::start(&bin, dir.path(), &site);

    assert_eq!(n.get("/yourapplication/").text(), "Hello from Flask\n");
    assert_eq!(n.get("/yourapplication").text(), "Hello from Flask\n");
    // SCRIPT_NAME is the mount point: Flask builds its URLs under it.
    let r = n.get("/yourapplication/redirect");
    assert_eq!(r.status, 302);
    assert!(
        r.header("Location")
            .unwrap()
            .ends_with("/yourapplication/target"),
        "{:?}",
        r.headers
    );
    let r = n.request(
        "POST",
        "/yourapplication/form",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"name=World",
    );
    assert_eq!(r.text(), "Hello, World!\n");
    // regression: `plugin = python3`, in Flask's own file, was a warning at every start.
    assert!(!p.logs().contains("plugin = python3"), "{}", p.logs());
    stop_and_clean(&mut p, &sock);

    let (toml, _) = migrate(&vars, &file);
    for want in [
        "app = \"flask_app:app\"\n".to_owned(),
        "mount = [\"/yourapplication\"]\n".to_owned(),
        format!("uwsgi = [\"unix:{}\"]\n", sock.display()),
        format!("venv = \"{}\"\n", venv.display()),
        "# line 9: manage-script-name = true\n#   not needed: postern splits SCRIPT_NAME"
            .to_owned(),
        "# line 12: plugin = python3\n#   not needed: postern embeds CPython itself".to_owned(),
    ] {
        assert!(toml.contains(&want), "missing {want:?} in:\n{toml}");
    }
}

/// The uWSGI quickstart's Django ini: TCP socket, wsgi-file, 4 processes of 2 threads,
/// and a stats server (postern's speaks HTTP).
#[test]
fn uwsgi_quickstart_django_ini_behind_nginx() {
    let Some((bin, venv, _dir, vars, file)) = behind_nginx("uwsgi_quickstart_django.ini") else {
        return;
    };
    let args = [
        "--ini",
        file.to_str().unwrap(),
        "--venv",
        venv.to_str().unwrap(),
    ];

    // Each value says the ini line it came from.
    let out = postern(&vars, &[&args[..], &["--print-config"]].concat())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    let at = format!("# uWSGI ini {}", file.display());
    for want in [
        format!("workers = 4  {at}:8\n"),
        format!("threads = 2  {at}:9\n"),
        format!("uwsgi = [\"127.0.0.1:{}\"]  {at}:5\n", vars.port),
        format!("app = \"mysite/wsgi.py\"  {at}:7\n"),
    ] {
        assert!(printed.contains(&want), "missing {want:?} in:\n{printed}");
    }

    let (mut p, n) = start_behind_nginx(
        postern(&vars, &args),
        &vars,
        &bin,
        Addr::Tcp(vars.port),
        None,
    );
    for _ in 0..8 {
        assert_eq!(n.get("/").text(), "Hello from Django\n");
    }
    assert!(p.wait_log("all 4 workers ready", 30), "{}", p.logs());
    let metrics = stats_get(vars.stats_port, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text().contains("postern_requests_total"),
        "{}",
        metrics.text()
    );
    assert!(stop(&mut p).success());

    let (toml, _) = migrate(&vars, &file);
    assert!(
        toml.contains(&format!("stats = \"127.0.0.1:{}\"\n", vars.stats_port)),
        "{toml}"
    );
    assert!(
        toml.contains("#   postern's stats endpoint speaks HTTP"),
        "{toml}"
    );
}

/// A production file of the kind blog posts copy around: every option in it is common in
/// real files, and each gets a verdict. It runs behind nginx with one warning that lists
/// only what postern really runs without (log-reopen) and the end-of-line comments.
// regression: such a file was a wall of "unknown" lines at every start (plugins,
// socket-timeout, log-reopen, the write-error options), and `harakiri = 20 ; seconds`
// stopped postern.
#[test]
fn production_blog_post_ini_behind_nginx() {
    let Some((bin, _, dir, vars, file)) = behind_nginx("production_blog_post.ini") else {
        return;
    };
    std::fs::write(dir.path().join("reload"), "").unwrap();
    let args = ["--ini", file.to_str().unwrap()];

    let out = postern(&vars, &[&args[..], &["--print-config"]].concat())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    let at = format!("# uWSGI ini {}", file.display());
    for want in [
        format!("workers = 2  {at}:16\n"),
        format!("timeout = 20  {at}:31\n"),
        format!("read-timeout = 30  {at}:29\n"),
        format!("listen-backlog = 128  {at}:28\n"),
        format!("body-spool-threshold = 4096  {at}:36\n"),
        format!("socket-mode = \"664\"  {at}:25\n"),
    ] {
        assert!(printed.contains(&want), "missing {want:?} in:\n{printed}");
    }
    let warning = String::from_utf8_lossy(&out.stderr);
    let m = file.display();
    assert_eq!(
        warning.trim_end(),
        format!(
            "postern: {m} [uwsgi]: not carried over as written:\n  {m}:31  harakiri = 20                ; seconds: with threads = 2, uWSGI's harakiri was one timer per worker that each new request reset; postern's timeout is per request, so it can kill a request that used to finish (README 'Workers, reloads and timeouts')\n  {m}:41  log-reopen = true: ignored: postern reopens its log files on SIGUSR1, not on a reload: make logrotate's postrotate send SIGUSR1 to the master (deploy/logrotate/postern)\n  {m}: lines 16, 31: uWSGI has no inline comments, so the `; …` or `# …` after a value is part of it: uWSGI (and postern) still read a number before it, but a path or a name keeps the comment, and a boolean is true whatever it says. Put each comment on a line of its own\npostern: {m} [uwsgi]: carried over; the app's own output (print(), sys.stdout and sys.stderr, a logging console handler) goes to postern's stdout and stderr (the journal under systemd), not to {log} as with uWSGI's logto: {log} gets postern's log and the request lines",
            log = dir.path().join("production_blog_post.log").display(),
        )
    );

    let sock = dir.path().join("production_blog_post.sock");
    let log = dir.path().join("production_blog_post.log");
    let (mut p, n) = start_behind_nginx(
        postern(&vars, &args),
        &vars,
        &bin,
        Addr::Unix(sock.clone()),
        Some(log.clone()),
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o664
    );
    for _ in 0..4 {
        assert_eq!(n.get("/").text(), "Hello from Django\n");
    }
    assert_eq!(stats_get(vars.stats_port, "/ping").text(), "pong\n");
    assert!(p.wait_log("path=/", 10), "{}", p.logs());
    stop_and_clean(&mut p, &sock);
}

/// The uWSGI quickstart's Flask command line as an ini: wsgi-file with callable = app.
#[test]
fn uwsgi_quickstart_flask_ini_behind_nginx() {
    let Some((bin, venv, _dir, vars, file)) = behind_nginx("uwsgi_quickstart_flask.ini") else {
        return;
    };
    let cmd = postern(
        &vars,
        &[
            "--ini",
            file.to_str().unwrap(),
            "--venv",
            venv.to_str().unwrap(),
        ],
    );
    let (mut p, n) = start_behind_nginx(cmd, &vars, &bin, Addr::Tcp(vars.port), None);

    assert_eq!(n.get("/").text(), "Hello from Flask\n");
    let r = n.request(
        "POST",
        "/api/items",
        &[("Content-Type", "application/json")],
        br#"{"name": "pen", "price": 2.5}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["name"], "pen");
    let ping = stats_get(vars.stats_port, "/ping");
    assert_eq!((ping.status, ping.text().trim()), (200, "pong"));
    assert!(stop(&mut p).success());

    let (toml, _) = migrate(&vars, &file);
    let app = ini("").join("../../examples/flask_app.py:app");
    assert!(
        toml.contains(&format!("# line 7: wsgi-file = %d../../examples/flask_app.py\n# line 8: callable = app\napp = \"{}\"\n", app.display())),
        "{toml}"
    );
}

/// The uWSGI docs' Django and nginx tutorial: its mysite_uwsgi.ini (10 processes, a Unix
/// socket, the virtualenv as home) and its nginx site (an upstream, static files served
/// by nginx).
#[test]
fn uwsgi_django_nginx_tutorial_ini() {
    let Some((bin, _, dir, vars, file)) = behind_nginx("uwsgi_django_nginx_tutorial.ini") else {
        return;
    };
    let sock = dir.path().join("mysite.sock");
    let mut p = start(
        postern(&vars, &["--ini", file.to_str().unwrap()]),
        &vars,
        Addr::Unix(sock.clone()),
        None,
    );
    assert!(p.wait_log("all 10 workers ready", 60), "{}", p.logs());
    let project = root().join("examples/django_project");
    let site = format!(
        r#"upstream django {{
        server unix:{sock};
    }}
    server {{
        listen 127.0.0.1:{{{{PORT}}}};
        server_name localhost;
        charset utf-8;
        client_max_body_size 75M;
        location /static {{
            alias {static};
        }}
        {location}
    }}"#,
        sock = sock.display(),
        static = project.join("static").display(),
        location = uwsgi_location("django"),
    );
    let n = Nginx::start_site(&bin, dir.path(), &site);

    assert_eq!(n.get("/").text(), "Hello from Django\n");
    let css = n.get("/static/style.css");
    assert_eq!(css.status, 200);
    assert_eq!(
        css.body,
        std::fs::read(project.join("static/style.css")).unwrap()
    );
    assert!(
        !p.logs().contains("path=/static"),
        "nginx serves static files, not postern"
    );
    stop_and_clean(&mut p, &sock);

    let (toml, summary) = migrate(&vars, &file);
    assert!(
        toml.contains("# line 11: module          = mysite.wsgi\napp = \"mysite.wsgi\"\n"),
        "{toml}"
    );
    assert!(toml.contains("workers = 10\n"), "{toml}");
    assert!(
        summary.contains("7 option lines read from [uwsgi]: 6 carried over, 1 not needed"),
        "{summary}"
    );
}

/// Ini files that make uWSGI an HTTP server: postern stops with one message naming each
/// such line and what to do instead; `postern migrate` still converts the rest.
#[test]
fn http_ini_files_are_refused_saying_what_to_do() {
    let dir = tempdir();
    // No app is imported: neither nginx nor the venv is needed.
    let vars = Vars::new(dir.path(), Path::new("/nonexistent"));

    let file = ini("flask_docs_http.ini");
    let out = postern(&vars, &["--ini", file.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "postern cannot run this line of [uwsgi] as written (fix the file, or run `postern migrate {0}` and edit the result):\n  {0}:7  http = 127.0.0.1:8000: uWSGI's built-in HTTP router has no postern equivalent: let nginx listen on 127.0.0.1:8000 and uwsgi_pass to postern's socket (add one, e.g. socket = 127.0.0.1:3031)",
            file.display()
        )),
        "{err}"
    );
    let (toml, summary) = migrate(&vars, &file);
    assert!(
        toml.contains("app = \"flask_app:app\"\n") && toml.contains("workers = 4\n"),
        "{toml}"
    );
    assert!(
        toml.contains("# line 7: http = 127.0.0.1:8000\n#   REFUSED (postern --ini stops on this): uWSGI's built-in HTTP router"),
        "{toml}"
    );
    assert!(summary.contains("1 refused"), "{summary}");

    let file = ini("uwsgi_quickstart_http_socket.ini");
    // (--uwsgi-ini is the same option.)
    let out = postern(&vars, &["--uwsgi-ini", file.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{}:6  http-socket = 127.0.0.1:3031: postern speaks uwsgi, FastCGI and SCGI, not HTTP: make it socket = 127.0.0.1:3031 and point nginx's uwsgi_pass at it", file.display())),
        "{err}"
    );

    // Everything a front server does instead, in one message: what stops postern, then
    // what it would run without.
    let mixed = dir.path().join("mixed.ini");
    std::fs::write(
        &mixed,
        "[uwsgi]\nhttp-socket = :8080\nmodule = shop.wsgi\nemperor = /etc/uwsgi/vassals\nstatic-map = /static=/srv/static\noffload-threads = 2\nroute = ^/old redirect:/new\ncheaper = 2\nplugins = python3,router_cache\n",
    )
    .unwrap();
    let out = postern(&vars, &["--ini", mixed.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let m = mixed.display();
    for want in [
        "postern cannot run these lines of [uwsgi] as written".to_owned(),
        format!("{m}:2  http-socket = :8080: postern speaks uwsgi, FastCGI and SCGI, not HTTP"),
        format!("{m}:4  emperor = /etc/uwsgi/vassals: postern runs one app, not an Emperor"),
        "Once those are fixed, postern runs without these (a warning at start):".to_owned(),
        format!("{m}:5  static-map = /static=/srv/static: ignored: postern leaves static files to the front server"),
        format!("{m}:6  offload-threads = 2: ignored"),
        format!("{m}:7  route = ^/old redirect:/new: ignored: uWSGI's internal routing"),
        format!("{m}:8  cheaper = 2: ignored: postern runs a fixed number of workers"),
        format!("{m}:9  plugins = python3,router_cache: ignored: postern embeds CPython itself: there are no plugins to load (router_cache has no postern equivalent)"),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    assert_eq!(err.matches("postern cannot run").count(), 1, "{err}");
}

/// A mounted `app.wsgi` file (mod_wsgi's suffix, common in uWSGI setups), with `%d` and
/// `%x` from a section picked with FILE:section.
#[test]
fn mounted_wsgi_file_from_a_section() {
    let dir = tempdir();
    let vars = Vars::new(dir.path(), Path::new("/nonexistent"));
    std::fs::write(
        dir.path().join("app.wsgi"),
        "def application(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [(environ['SCRIPT_NAME'] + ' ' + environ['PATH_INFO'] + ' from app.wsgi\\n').encode()]\n",
    )
    .unwrap();
    let file = dir.path().join("sites.ini");
    std::fs::write(
        &file,
        "[uwsgi]\nsocket = %dother.sock\n\n[shop]\nsocket = %d%x.sock\nchdir = %d\nmount = /%x=app.wsgi\nmanage-script-name\n",
    )
    .unwrap();
    let spec = format!("{}:shop", file.display());
    let sock = dir.path().join("shop.sock");
    let mut p = start(
        postern(&vars, &["--ini", &spec]),
        &vars,
        Addr::Unix(sock.clone()),
        None,
    );
    assert_eq!(
        p.get("/shop/cart"),
        (200, b"/shop /cart from app.wsgi\n".to_vec())
    );
    assert!(!dir.path().join("other.sock").exists());
    stop_and_clean(&mut p, &sock);
}
