//! The sentence of a failed import says where to look: the app's own code when it
//! raised (a SyntaxError, an exception from its module, a module it imports that is
//! not there), the APP argument and the paths when the app's module was not found.
//! regression: a reload into a SyntaxError said to check the APP argument, --chdir,
//! --pythonpath and --venv.

use std::process::Command;

use protocol_tests::harness::*;

/// Starts postern on `app` (a file, or `module:callable` run in `dir`); its stderr.
fn start_err(dir: &std::path::Path, app: &str) -> String {
    let sock = dir.join("b.sock");
    let out = Command::new(postern_bin())
        .arg(app)
        .arg("--uwsgi")
        .arg(format!("unix:{}", sock.display()))
        .arg("--chdir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_import_failure_says_whether_the_apps_code_raised() {
    let dir = tempdir();
    let cases = [
        (
            "syntax.py",
            "def application(environ, start_response)\n    return []\n",
            "(the app's code has a syntax error: see the traceback)",
        ),
        (
            "raises.py",
            "raise RuntimeError('no database')\n",
            "(the app's code raised while it was imported: see the traceback)",
        ),
        (
            "missing_dep.py",
            "import no_such_module_here\n",
            "(the app's code imports `no_such_module_here`, which is not found: check --venv and --pythonpath)",
        ),
    ];
    for (file, source, advice) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, source).unwrap();
        let err = start_err(dir.path(), &path.to_string_lossy());
        assert!(err.contains("could not import the app"), "{err}");
        assert!(err.contains(advice), "{advice} in\n{err}");
    }
    // The app's module itself not found: how it is found.
    let err = start_err(dir.path(), "no_such_app_module:application");
    assert!(
        err.contains("(check the APP argument, --chdir, --pythonpath and --venv)"),
        "{err}"
    );
}
