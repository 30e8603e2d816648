//! postern as a background job of a job-control shell on a terminal (a pty): a read of
//! the terminal from the background (an app's `breakpoint()` or `input()` at import)
//! stops the process, as without postern ('Stopped (tty input)'; `fg` continues it),
//! and the terminal's SIGTTIN reaching the master is not an operator's request for one
//! worker more.
//! regression (review-small, session 10): the SIGTTIN/SIGTTOU handler counted the
//! terminal's signals too: the read restarted, the kernel signalled again, a busy loop
//! of thousands of failed reads a second; and a master took each worker's as 'SIGTTIN:
//! one worker more'.

use std::path::Path;
use std::process::Command;

use protocol_tests::harness::{postern_bin, tempdir};

/// Runs postern with `extra` as a background job of `bash -m` on a pty, its app reading
/// stdin at import; after 3 s prints `ps` lines (pid, state) of postern and its
/// children, then the log. Returns what the script printed.
fn background_job(dir: &Path, extra: &str) -> String {
    let app = dir.join("reads_stdin.py");
    std::fs::write(
        &app,
        "import sys\nline = sys.stdin.readline()\n\ndef application(environ, start_response):\n    start_response('200 OK', [])\n    return [b'hi']\n",
    )
    .unwrap();
    let log = dir.join("postern.log");
    let sock = dir.join("s.sock");
    let script = format!(
        "set -m\nstty -tostop\n{bin} {app} --uwsgi unix:{sock} --log-file {log} {extra} &\nP=$!\nsleep 3\nps -o pid=,stat= -p $P --ppid $P > {dir}/ps.txt\nkill -9 $P; pkill -9 -P $P 2>/dev/null\nexit 0\n",
        bin = postern_bin().display(),
        app = app.display(),
        sock = sock.display(),
        log = log.display(),
        dir = dir.display(),
    );
    let driver = format!(
        "import os, pty, select, sys, time\npid, fd = pty.fork()\nif pid == 0:\n    os.execvp('bash', ['bash', '-c', {script:?}])\ndeadline = time.time() + 20\nwhile time.time() < deadline:\n    r, _, _ = select.select([fd], [], [], 0.5)\n    if r:\n        try:\n            if not os.read(fd, 65536): break\n        except OSError:\n            break\nos.waitpid(pid, 0)\n"
    );
    let status = Command::new("python3")
        .args(["-c", &driver])
        .status()
        .expect("python3");
    assert!(status.success());
    let ps = std::fs::read_to_string(dir.join("ps.txt")).unwrap_or_default();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    format!("{ps}\n---\n{log}")
}

#[test]
fn a_background_read_of_the_terminal_stops_a_single_process() {
    let dir = tempdir();
    let out = background_job(dir.path(), "");
    let (ps, _) = out.split_once("\n---\n").unwrap();
    let states: Vec<&str> = ps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert!(
        !states.is_empty() && states.iter().all(|s| s.starts_with('T')),
        "stopped (T), not spinning:\n{out}"
    );
}

#[test]
fn a_workers_background_read_stops_it_and_does_not_scale_the_master() {
    let dir = tempdir();
    let out = background_job(dir.path(), "--workers 2");
    let (ps, log) = out.split_once("\n---\n").unwrap();
    let states: Vec<&str> = ps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    // The master, and its workers stopped at their import's read.
    assert!(states.len() >= 3, "{out}");
    assert!(
        states.iter().skip(1).all(|s| s.starts_with('T')),
        "the workers stopped:\n{out}"
    );
    assert!(!log.contains("one worker more"), "{out}");
}
