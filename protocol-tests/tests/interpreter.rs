//! The embedded interpreter under a master: Python is initialised once, in the master,
//! and every worker is forked from it (sharing its pages), yet each worker imports the
//! app itself, so a reload runs the new code; the master stays a single thread that
//! Python's own signal handling does not touch.

use std::path::{Path, PathBuf};

use protocol_tests::harness::*;

/// An app that records each import (pid per line in `imports`) and answers with what
/// its Python sees, as `key=value` lines.
fn probing_app(dir: &Path, version: &str) -> PathBuf {
    let app = dir.join("probe.py");
    let imports = dir.join("imports");
    std::fs::write(
        &app,
        format!(
            r#"import _thread, os, sys
VERSION = {version:?}
# The thread that imports the app (the worker's main thread), known without importing
# threading: the first request imports it.
IMPORTED_ON = _thread.get_ident()
with open({imports:?}, "a") as f:
    f.write("%d\n" % os.getpid())

def application(environ, start_response):
    lines = [
        "version=%s" % VERSION,
        "pid=%d" % os.getpid(),
        "ppid=%d" % os.getppid(),
        "appdir_on_path=%s" % (os.path.dirname(os.path.abspath(__file__)) in sys.path),
        "executable=%s" % sys.executable,
        "frozen=%s" % (__import__("gc").get_freeze_count() > 0),
        "asyncio=%s" % ("asyncio" in sys.modules),
        "main_thread=%s" % (__import__("threading").main_thread().ident == IMPORTED_ON),
    ]
    body = ("\n".join(lines) + "\n").encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"#,
            imports = imports.to_string_lossy(),
        ),
    )
    .unwrap();
    app
}

fn answer(p: &Postern) -> std::collections::HashMap<String, String> {
    let (status, body) = p.get("/");
    assert_eq!(status, 200);
    String::from_utf8(body)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn imports(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("imports"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

#[test]
fn the_master_starts_python_once_and_each_worker_imports_the_app() {
    let dir = tempdir();
    let app = probing_app(dir.path(), "v1");
    let mut p = Spawn::tcp(dir.path(), &app.to_string_lossy())
        .args(["--workers", "2"])
        .start();
    assert!(p.wait_log("all 2 workers ready", 10), "{}", p.logs());
    let master = p.pid();
    // Initialised once, by the master (the line carries no worker pid: count it).
    assert_eq!(p.logs().matches("embedded Python started").count(), 1);
    // The app is not imported in the master (lazy mode): once per worker.
    let first = imports(dir.path());
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(!first.contains(&master.to_string()));
    // A worker's Python: its own pid, the master as parent, the app's directory on
    // sys.path, the build's interpreter, the master's objects frozen for the GC.
    let a = answer(&p);
    assert_ne!(a["pid"], master.to_string());
    assert_eq!(a["ppid"], master.to_string());
    assert!(first.contains(&a["pid"]), "{a:?} {first:?}");
    assert_eq!(a["appdir_on_path"], "True", "{a:?}");
    assert!(a["executable"].contains("python"), "{a:?}");
    assert_eq!(a["frozen"], "True");
    // regression: telling WSGI from ASGI imported asyncio (and with it ssl) into every
    // WSGI worker, about 8 MiB each: a WSGI app that never imports it does not get it.
    assert_eq!(a["asyncio"], "False");
    // A request thread that imports threading first must not become its main thread.
    assert_eq!(a["main_thread"], "True");
    // Fork safety: Python started no thread in the master.
    assert_eq!(threads(master), 1);

    // A reload forks new workers from the same master: they import the new code, and
    // Python is not started again.
    // (A longer version string: a stale .pyc of the same size and second cannot hide it.)
    probing_app(dir.path(), "v2, reloaded");
    p.signal(libc::SIGHUP);
    assert!(p.wait_log("new workers ready", 10), "{}", p.logs());
    // The old workers may take one more queued connection until they exit.
    let old_gone = || {
        p.logs()
            .lines()
            .filter(|l| l.contains("worker exited") && l.contains("cause=\"reload\""))
            .count()
            == 2
    };
    for _ in 0..400 {
        if old_gone() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert!(old_gone(), "{}", p.logs());
    assert_eq!(answer(&p)["version"], "v2, reloaded");
    assert_eq!(imports(dir.path()).len(), 4);
    assert_eq!(p.logs().matches("embedded Python started").count(), 1);
    assert_eq!(threads(master), 1);

    // Python installed no SIGINT handler in the master: Ctrl-C is still the master's
    // graceful stop, not a KeyboardInterrupt.
    p.signal(libc::SIGINT);
    let status = p.wait_exit(15).expect("the master stops on SIGINT");
    assert!(status.success(), "{status:?}\n{}", p.logs());
    assert!(!p.logs().contains("KeyboardInterrupt"), "{}", p.logs());
}

#[test]
fn preload_still_imports_the_app_in_the_master_only() {
    let dir = tempdir();
    let app = probing_app(dir.path(), "v1");
    let p = Spawn::tcp(dir.path(), &app.to_string_lossy())
        .args(["--workers", "2", "--preload"])
        .start();
    assert!(p.wait_log("all 2 workers ready", 10), "{}", p.logs());
    assert_eq!(imports(dir.path()), [p.pid().to_string()]);
    assert_eq!(p.logs().matches("embedded Python started").count(), 1);
    let a = answer(&p);
    assert_eq!(a["ppid"], p.pid().to_string());
    assert_eq!(threads(p.pid()), 1);
    // A reload forks from the master that holds the code imported at start: it says so
    // (an operator who deploys and reloads otherwise believes the new code runs).
    assert!(!p.logs().contains("reloading with --preload"));
    p.signal(libc::SIGHUP);
    assert!(p.wait_log("reloading with --preload", 10), "{}", p.logs());
    assert!(p.logs().contains("restart postern"), "{}", p.logs());
}

// regression: a sitecustomize (an APM agent's, say, through PYTHONPATH, or a venv's
// .pth file) that starts a thread now runs in the master, which starts Python; that
// thread did not block the master's signals, so a SIGHUP (reload) reached it and killed
// the master with its default action, and a SIGCHLD could be lost there.
#[test]
fn a_thread_python_starts_in_the_master_does_not_take_its_signals() {
    let dir = tempdir();
    let site = dir.path().join("site");
    std::fs::create_dir(&site).unwrap();
    std::fs::write(
        site.join("sitecustomize.py"),
        "import threading\nthreading.Thread(target=threading.Event().wait, daemon=True).start()\n",
    )
    .unwrap();
    let app = probing_app(dir.path(), "v1");
    let mut p = Spawn::tcp(dir.path(), &app.to_string_lossy())
        .args(["--workers", "2"])
        .env("PYTHONPATH", &site.to_string_lossy())
        .start();
    assert!(p.wait_log("all 2 workers ready", 10), "{}", p.logs());
    let master = p.pid();
    // The thread exists in the master (so the case is real), and it is said.
    assert_eq!(threads(master), 2);
    assert!(p.logs().contains("threads in the master"), "{}", p.logs());
    // A reload is a reload, not the master's death.
    p.signal(libc::SIGHUP);
    assert!(p.wait_log("new workers ready", 10), "{}", p.logs());
    assert_eq!(answer(&p)["ppid"], master.to_string());
    // And a stop is the master's graceful stop.
    p.signal(libc::SIGTERM);
    let status = p.wait_exit(15).expect("the master stops on SIGTERM");
    assert!(status.success(), "{status:?}\n{}", p.logs());
    assert!(p.logs().contains("all workers exited"), "{}", p.logs());
}

/// `--interface asgi`: the master imports asyncio and the event loop before forking, so
/// the workers share those pages (about 8 MiB of PSS per worker otherwise); with `auto`
/// the master cannot know the interface (the app is imported in the workers) and a WSGI
/// worker must not carry asyncio, so it imports nothing more.
#[test]
fn an_asgi_master_imports_asyncio_before_forking_only_when_told() {
    for (interface, in_master) in [("asgi", true), ("auto", false)] {
        let dir = tempdir();
        let app = dir.path().join("async_app.py");
        let source = AsgiApp::new("").http(
            r#"
await send({"type": "http.response.start", "status": 200,
            "headers": [(b"content-type", b"text/plain")]})
await send({"type": "http.response.body", "body": b"async"})
"#,
        );
        std::fs::write(&app, source).unwrap();
        let p = Spawn::tcp(dir.path(), &app.to_string_lossy())
            .args(["--workers", "2", "--interface", interface])
            .start();
        assert!(p.wait_log("all 2 workers ready", 15), "{}", p.logs());
        assert_eq!(p.get("/"), (200, b"async".to_vec()), "{}", p.logs());
        // An extension module shows in the process's mappings once imported.
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", p.pid())).unwrap();
        assert_eq!(
            maps.contains("_asyncio."),
            in_master,
            "--interface {interface}: asyncio in the master's mappings?\n{}",
            p.logs()
        );
        assert_eq!(threads(p.pid()), 1, "the master stays one thread");
    }
}

/// A release of a deploy laid out as `releases/N` with its own venv (made without pip:
/// only its site-packages matter) holding two kinds of editable install: a `.pth` line
/// naming the release's `src` (setuptools' lenient mode, `uv sync`), and a `.pth` whose
/// `import` line installs a finder mapping a module to a file of the release (the strict
/// mode's `__editable___*_finder`: the same `.pth` bytes in every release, the finder's
/// mapping differs).
fn release(root: &Path, n: u32) -> PathBuf {
    let rel = root.join("releases").join(n.to_string());
    std::fs::create_dir_all(rel.join("src")).unwrap();
    std::fs::create_dir_all(rel.join("mapped")).unwrap();
    std::fs::write(rel.join("src/shopcore.py"), format!("VERSION = {n}\n")).unwrap();
    std::fs::write(rel.join("mapped/shopmapped.py"), format!("VERSION = {n}\n")).unwrap();
    std::fs::write(
        rel.join("app.py"),
        r#"import shopcore, shopmapped, tracer

def application(environ, start_response):
    body = ("core=%d %s\nmapped=%d %s\ntraced=%s\n" % (shopcore.VERSION, shopcore.__file__,
                                             shopmapped.VERSION, shopmapped.__file__,
                                             tracer.CONFIGURED)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"#,
    )
    .unwrap();
    let venv = rel.join(".venv");
    let made = std::process::Command::new("python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .status()
        .expect("python3 -m venv");
    assert!(made.success());
    let lib = std::fs::read_dir(venv.join("lib"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("python")
        })
        .expect("the venv's lib/pythonX.Y");
    let site = lib.join("site-packages");
    std::fs::write(
        site.join("__editable__.shopcore.pth"),
        format!("{}\n", rel.join("src").display()),
    )
    .unwrap();
    std::fs::write(
        site.join("_shopfinder.py"),
        format!(
            r#"import importlib.util, sys
MAPPING = {{"shopmapped": {:?}}}

class Finder:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name in MAPPING:
            return importlib.util.spec_from_file_location(name, MAPPING[name])
        return None

def install():
    sys.meta_path.append(Finder)
"#,
            rel.join("mapped/shopmapped.py").display().to_string()
        ),
    )
    .unwrap();
    std::fs::write(
        site.join("__editable__.shopmapped.pth"),
        "import _shopfinder; _shopfinder.install()\n",
    )
    .unwrap();
    // A tracing agent's setup: a sitecustomize that configures a module of the venv.
    // Nothing runs it again in a worker, so what it set up must stay.
    std::fs::write(site.join("tracer.py"), "CONFIGURED = False\n").unwrap();
    std::fs::write(
        site.join("sitecustomize.py"),
        "import tracer\ntracer.CONFIGURED = True\n",
    )
    .unwrap();
    rel
}

fn point_current(root: &Path, n: u32) {
    let tmp = root.join("current.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(root.join("releases").join(n.to_string()), &tmp).unwrap();
    std::fs::rename(&tmp, root.join("current")).unwrap();
}

// regression: with `--venv current/.venv`, the venv's `.pth` files were read once, when
// the master started Python: after a deploy swapped `current` and a SIGHUP, the new
// workers imported the previous release's editable packages (and failed once it was
// deleted).
#[test]
fn a_reload_reads_the_pth_files_of_a_venv_swapped_under_a_link() {
    let dir = tempdir();
    let root = dir.path();
    let r1 = release(root, 1);
    let r2 = release(root, 2);
    point_current(root, 1);
    let current = root.join("current");
    let mut p = Spawn::tcp(root, "app:application")
        .args(["--master", "--workers", "1", "--chdir"])
        .arg(current.display().to_string())
        .venv(&current.join(".venv"))
        .start();
    let body = |p: &Postern| {
        let (status, body) = p.get("/");
        let body = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(status, 200, "{body}\n{}", p.logs());
        body
    };
    let first = body(&p);
    assert!(first.contains("core=1 "), "{first}");
    assert!(first.contains("mapped=1 "), "{first}");
    assert!(first.contains("traced=True"), "{first}");

    point_current(root, 2);
    std::fs::remove_dir_all(&r1).unwrap();
    p.signal(libc::SIGHUP);
    assert!(p.wait_log("new workers ready", 15), "{}", p.logs());
    assert!(
        wait_until(10, || p.logs().lines().any(
            |l| l.contains("worker exited") && l.contains("cause=\"reload\"")
        )),
        "{}",
        p.logs()
    );
    let second = body(&p);
    let r2 = std::fs::canonicalize(&r2).unwrap();
    assert!(
        second.contains(&format!("core=2 {}", r2.join("src/shopcore.py").display())),
        "{second}\n{}",
        p.logs()
    );
    assert!(
        second.contains(&format!(
            "mapped=2 {}",
            r2.join("mapped/shopmapped.py").display()
        )),
        "{second}\n{}",
        p.logs()
    );
    // What the master's sitecustomize set up is kept (it would not run again).
    assert!(second.contains("traced=True"), "{second}\n{}", p.logs());
    let logs = p.logs();
    assert!(
        logs.contains("the venv changed since postern started"),
        "{logs}"
    );
    // The release each generation imported, in its "app imported" line.
    assert!(
        logs.lines()
            .any(|l| l.contains("app imported") && l.contains(&r2.display().to_string())),
        "{logs}"
    );

    // A release whose venv was made for another Python: the reload fails, saying why,
    // and the serving workers go on with release 2.
    let r3 = release(root, 3);
    let cfg = r3.join(".venv/pyvenv.cfg");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("version") {
                "version = 3.10.0".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&cfg, text + "\n").unwrap();
    point_current(root, 3);
    p.signal(libc::SIGHUP);
    assert!(
        p.wait_log("a reload cannot change the Python version", 15),
        "{}",
        p.logs()
    );
    assert!(body(&p).contains("core=2 "), "{}", p.logs());
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(15).is_some());
}

// regression (probe 313): the directory of an app given as a file went first on
// sys.path, so a module beside it hid a package of the same name: a Django project's
// `mysite/wsgi.py` beside `mysite/celery.py` or `mysite/jinja2.py` (Celery's and
// Django's documented layouts) failed to import what uWSGI's `wsgi-file` served.
#[test]
fn a_file_apps_directory_is_on_sys_path_after_what_it_could_hide() {
    let dir = tempdir();
    let site = dir.path().join("mysite");
    std::fs::create_dir(&site).unwrap();
    // A project module named like a stdlib module (as celery.py or jinja2.py are like
    // installed packages).
    std::fs::write(
        site.join("json.py"),
        "raise ImportError(\"the project's json.py hid the json package\")\n",
    )
    .unwrap();
    std::fs::write(site.join("helpers.py"), "WORD = b'sibling'\n").unwrap();
    std::fs::write(
        site.join("wsgi.py"),
        r#"import json
import helpers

def application(environ, start_response):
    body = json.dumps({"word": helpers.WORD.decode()}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
"#,
    )
    .unwrap();
    let p = Spawn::tcp(dir.path(), &site.join("wsgi.py").to_string_lossy()).start();
    let (status, body) = p.get("/");
    assert_eq!(status, 200, "{}", p.logs());
    assert_eq!(body, br#"{"word": "sibling"}"#, "{}", p.logs());
}
