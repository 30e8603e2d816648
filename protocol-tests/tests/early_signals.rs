//! Signals that come while postern starts, before its handlers are in place: a
//! `systemctl reload` (SIGHUP) right after `systemctl start`, a config-management run,
//! logrotate's SIGUSR1, a scaling script's SIGTTIN/SIGTTOU, SIGUSR2 out of gunicorn
//! habit. None may kill or stop the process; each is taken as it would be a moment
//! later (the master reloads on the SIGHUP once its first workers serve; a single
//! process logs it and ignores it). And the mask that holds them meanwhile must not
//! reach the app: its threads and the programs it runs get them unblocked.
//!
//! A signal is sent at several delays after postern's `main` has begun (its mask shows
//! the held signals): before that, in the dynamic loader's first millisecond, no code
//! of the process runs and the signal's default action cannot be changed. And, at a
//! moment that does not depend on the machine's speed, while postern waits to read its
//! `--config` file (a FIFO no one writes to yet).

use std::process::Stdio;
use std::time::{Duration, Instant};

use protocol_tests::harness::*;

/// SIGHUP, SIGUSR1, SIGUSR2, SIGTTIN and SIGTTOU as bits of /proc's signal masks.
const HELD: u64 = 1 << (libc::SIGHUP - 1)
    | 1 << (libc::SIGUSR1 - 1)
    | 1 << (libc::SIGUSR2 - 1)
    | 1 << (libc::SIGTTIN - 1)
    | 1 << (libc::SIGTTOU - 1);

/// A WSGI app whose answer is two signal masks (hex, as /proc shows them): the thread
/// that serves the request, and a program it runs.
const APP: &str = r#"
import subprocess

def blocked(status):
    return next(l.split()[1] for l in status.splitlines() if l.startswith("SigBlk:"))

def application(environ, start_response):
    with open("/proc/thread-self/status") as f:
        own = blocked(f.read())
    child = blocked(subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True, check=True).stdout)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("%s %s" % (own, child)).encode()]
"#;

/// `pid`'s field `name` of /proc/PID/status.
fn status_field(pid: i32, name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
}

fn blocked(pid: i32) -> Option<u64> {
    u64::from_str_radix(&status_field(pid, "SigBlk:")?, 16).ok()
}

/// Starts postern (`master`: with 2 workers), sends `signal` `delay` after its main
/// began, and checks that it lives on, is not stopped, and serves with the held
/// signals unblocked in the app's thread and in the program the app runs. Returns the
/// log.
fn signal_at_start(master: bool, signal: i32, delay: Duration) -> String {
    let dir = tempdir();
    let app = dir.path().join("masks.py");
    std::fs::write(&app, APP).unwrap();
    let mut spawn = Spawn::unix(dir.path(), app.to_str().unwrap());
    if master {
        spawn = spawn.args(["--workers", "2"]);
    }
    let addr = spawn.addr().clone();
    let log = dir.path().join("postern.log");
    let mut cmd = spawn.command();
    let file = std::fs::File::create(&log).unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut p = Postern {
        child,
        addr,
        log,
        dir: dir.path().to_owned(),
    };
    // main has begun: the held signals are blocked (a single process unblocks them
    // again once its handlers are in place, which may come before a look sees them).
    let began = Instant::now();
    while blocked(pid).is_some_and(|b| b & HELD != HELD) && began.elapsed() < Duration::from_secs(2)
    {
        std::thread::sleep(Duration::from_micros(100));
    }
    std::thread::sleep(delay);
    p.signal(signal);
    let what = format!(
        "{} {}ms after main began ({})",
        signal_name(signal),
        delay.as_millis(),
        if master { "master" } else { "single process" }
    );
    let served = wait_until(60, || {
        assert!(
            p.child.try_wait().unwrap().is_none(),
            "{what}: postern exited\n{}",
            p.logs()
        );
        let state = status_field(pid, "State:").unwrap_or_default();
        assert!(!state.starts_with('T'), "{what}: postern stopped ({state})");
        p.logs().contains("ready")
            && parse_http(&p.raw(&uwsgi_get("/"))).is_some_and(|r| r.status == 200)
    });
    assert!(served, "{what}: postern did not serve\n{}", p.logs());
    // Twice: under a master, a reload may have replaced the first worker meanwhile.
    for _ in 0..2 {
        let r = parse_http(&p.raw(&uwsgi_get("/"))).unwrap();
        let text = r.text();
        let masks: Vec<u64> = text
            .split_whitespace()
            .map(|m| u64::from_str_radix(m, 16).unwrap())
            .collect();
        assert_eq!(masks.len(), 2, "{text}");
        assert_eq!(masks[0] & HELD, 0, "{what}: the app's thread holds {text}");
        assert_eq!(masks[1] & HELD, 0, "{what}: the app's program holds {text}");
    }
    if let Some(said) = said_for(signal, master) {
        assert!(p.wait_log(&said, 10), "{what}\n{}", p.logs());
    }
    p.logs()
}

/// The line the callers look for about `signal` sent at the start, if any.
fn said_for(signal: i32, master: bool) -> Option<String> {
    match (signal, master) {
        (libc::SIGHUP, true) => Some("SIGHUP: reload asked for".to_owned()),
        (libc::SIGHUP, false) => Some("SIGHUP ignored: reloading needs the master".to_owned()),
        (libc::SIGUSR1, _) | (_, true) => None,
        (s, false) => Some(format!("{} ignored: ", signal_name(s))),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGTTIN => "SIGTTIN",
        libc::SIGTTOU => "SIGTTOU",
        _ => "signal",
    }
}

const DELAYS_MS: [u64; 5] = [0, 5, 10, 20, 50];

// regression: a SIGHUP 20 to 50 ms after the exec killed postern (exit 129, a debug
// build) before its handlers were set.
#[test]
fn a_sighup_while_a_single_process_starts_is_logged_and_ignored() {
    for ms in DELAYS_MS {
        let logs = signal_at_start(false, libc::SIGHUP, Duration::from_millis(ms));
        log_line(&logs, "SIGHUP ignored: reloading needs the master");
    }
}

#[test]
fn a_sighup_while_the_master_starts_reloads_once_it_serves() {
    for ms in DELAYS_MS {
        let logs = signal_at_start(true, libc::SIGHUP, Duration::from_millis(ms));
        log_line(&logs, "SIGHUP: reload asked for");
    }
}

// regression: without a master SIGUSR2 killed postern, and SIGTTIN and SIGTTOU stopped
// it (at any time, not only at the start); during the start SIGUSR1 killed it too.
#[test]
fn the_other_held_signals_while_it_starts_harm_nothing() {
    for signal in [libc::SIGUSR1, libc::SIGUSR2, libc::SIGTTIN, libc::SIGTTOU] {
        for ms in [0, 20] {
            let logs = signal_at_start(false, signal, Duration::from_millis(ms));
            if signal != libc::SIGUSR1 {
                log_line(&logs, &format!("{} ignored: ", signal_name(signal)));
            }
        }
        signal_at_start(true, signal, Duration::ZERO);
    }
}

/// Whether `pid` waits in an open(2) (of a FIFO no one writes to), twice 20 ms apart.
fn waits_in_open(pid: i32) -> bool {
    let in_open = || {
        std::fs::read_to_string(format!("/proc/{pid}/syscall"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<i64>().ok())
            == Some(libc::SYS_openat)
    };
    in_open() && {
        std::thread::sleep(Duration::from_millis(20));
        in_open()
    }
}

// regression: a SIGHUP (or SIGUSR1, SIGUSR2) while postern read its configuration
// killed it, SIGTTIN or SIGTTOU stopped it. Here the moment is certain: postern waits
// to open its --config file, a FIFO, when the signal comes.
#[test]
fn a_signal_while_the_config_is_read_waits_for_its_handler() {
    use std::os::unix::fs::OpenOptionsExt as _;
    for master in [false, true] {
        for signal in [
            libc::SIGHUP,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGTTIN,
            libc::SIGTTOU,
        ] {
            let what = format!(
                "{} while the config is read ({})",
                signal_name(signal),
                if master { "master" } else { "single process" }
            );
            let dir = tempdir();
            let app = dir.path().join("masks.py");
            std::fs::write(&app, APP).unwrap();
            let fifo = dir.path().join("postern.toml");
            let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            let config = if master {
                "workers = 2\n"
            } else {
                "threads = 1\n"
            };
            let spawn = Spawn::unix(dir.path(), app.to_str().unwrap())
                .arg("--config")
                .arg(fifo.to_str().unwrap());
            let addr = spawn.addr().clone();
            let log = dir.path().join("postern.log");
            let file = std::fs::File::create(&log).unwrap();
            let child = spawn
                .command()
                .stdin(Stdio::null())
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .unwrap();
            let pid = child.id() as i32;
            let mut p = Postern {
                child,
                addr,
                log,
                dir: dir.path().to_owned(),
            };
            assert!(
                wait_until(30, || waits_in_open(pid)),
                "{what}: never waited"
            );
            p.signal(signal);
            std::thread::sleep(Duration::from_millis(100));
            assert!(
                p.child.try_wait().unwrap().is_none(),
                "{what}: postern exited\n{}",
                p.logs()
            );
            let state = status_field(pid, "State:").unwrap_or_default();
            assert!(!state.starts_with('T'), "{what}: postern stopped ({state})");
            // Non-blocking: with no reader left this fails (ENXIO) instead of waiting.
            let mut w = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
                .unwrap_or_else(|e| panic!("{what}: postern no longer reads: {e}"));
            std::io::Write::write_all(&mut w, config.as_bytes()).unwrap();
            drop(w);
            // A reload reads the file again: a plain one from now on.
            let plain = dir.path().join("plain.toml");
            std::fs::write(&plain, config).unwrap();
            std::fs::rename(&plain, &fifo).unwrap();
            let served = wait_until(60, || {
                assert!(
                    p.child.try_wait().unwrap().is_none(),
                    "{what}: postern exited\n{}",
                    p.logs()
                );
                p.logs().contains("ready")
                    && parse_http(&p.raw(&uwsgi_get("/"))).is_some_and(|r| r.status == 200)
            });
            assert!(served, "{what}: postern did not serve\n{}", p.logs());
            if let Some(said) = said_for(signal, master) {
                assert!(p.wait_log(&said, 10), "{what}\n{}", p.logs());
            }
            let logs = p.logs();
            match (signal, master) {
                (libc::SIGHUP, true) => {
                    log_line(&logs, "SIGHUP: reload asked for");
                }
                (libc::SIGHUP, false) => {
                    log_line(&logs, "SIGHUP ignored: reloading needs the master");
                }
                (libc::SIGUSR1, _) => {}
                (s, false) => {
                    log_line(&logs, &format!("{} ignored: ", signal_name(s)));
                }
                _ => {}
            }
        }
    }
}

// A single process leaves alone a SIGUSR2 handler the app set at its import (here
// faulthandler's stack dump): postern's, which only keeps SIGUSR2 from killing the
// process, is for the default action alone.
#[test]
fn a_single_process_keeps_the_app_s_own_sigusr2_handler() {
    let dir = tempdir();
    let app = dir.path().join("dumps.py");
    std::fs::write(
        &app,
        format!("import faulthandler, signal, sys\nfaulthandler.register(signal.SIGUSR2, file=sys.stderr, all_threads=True)\n{APP}"),
    )
    .unwrap();
    let p = Spawn::unix(dir.path(), app.to_str().unwrap()).start();
    p.signal(libc::SIGUSR2);
    assert!(p.wait_log("most recent call first", 20), "{}", p.logs());
    let (status, _) = p.get("/");
    assert_eq!(status, 200, "{}", p.logs());
    assert!(!p.logs().contains("SIGUSR2 ignored"), "{}", p.logs());
}
