//! A gunicorn operator's habits: `--timeout 0` to switch a limit off.

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
    let set = |toml: &str, key: &str| toml.lines().any(|l| l.starts_with(&format!("{key} = ")));
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
        assert!(set(&after, "slow-log"), "{extra:?} {env:?}: {after}");
    }
    let after = print(&["--slow-log", "off", "--max-lifetime", "0"], None);
    assert!(
        !set(&after, "slow-log") && !set(&after, "max-lifetime"),
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
}
