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
/// stdin at import; once `want` of postern and its children are stopped (T), or after
/// 20 s, prints their `ps` lines (pid, state), then the log. Polled, not a fixed wait: a
/// loaded machine may take long to fork the workers and reach the read (review-late).
/// Returns postern's pid, then what the script printed.
fn background_job(dir: &Path, extra: &str, want: usize) -> (String, String) {
    let app = dir.join("reads_stdin.py");
    std::fs::write(
        &app,
        "import sys\nline = sys.stdin.readline()\n\ndef application(environ, start_response):\n    start_response('200 OK', [])\n    return [b'hi']\n",
    )
    .unwrap();
    let log = dir.join("postern.log");
    let sock = dir.join("s.sock");
    let script = format!(
        "set -m\nstty -tostop\n{bin} {app} --uwsgi unix:{sock} --log-file {log} {extra} &\nP=$!\necho $P > {dir}/pid.txt\nfor i in $(seq 200); do\n  ps -o pid=,stat= -p $P --ppid $P > {dir}/ps.txt\n  [ \"$(awk '$2 ~ /^T/' {dir}/ps.txt | wc -l)\" -ge {want} ] && break\n  sleep 0.1\ndone\nkill -9 $P; pkill -9 -P $P 2>/dev/null\nexit 0\n",
        bin = postern_bin().display(),
        app = app.display(),
        sock = sock.display(),
        log = log.display(),
        dir = dir.display(),
    );
    let driver = format!(
        "import os, pty, select, sys, time\npid, fd = pty.fork()\nif pid == 0:\n    os.execvp('bash', ['bash', '-c', {script:?}])\ndeadline = time.time() + 60\ndone = False\nwhile time.time() < deadline and not done:\n    done = os.waitpid(pid, os.WNOHANG)[0] != 0\n    r, _, _ = select.select([fd], [], [], 0.2)\n    if r:\n        try:\n            os.read(fd, 65536)\n        except OSError:\n            pass\nif not done:\n    os.waitpid(pid, 0)\n"
    );
    let status = Command::new("python3")
        .args(["-c", &driver])
        .status()
        .expect("python3");
    assert!(status.success());
    let ps = std::fs::read_to_string(dir.join("ps.txt")).unwrap_or_default();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let pid = std::fs::read_to_string(dir.join("pid.txt")).unwrap_or_default();
    (pid.trim().to_owned(), format!("{ps}\n---\n{log}"))
}

#[test]
fn a_background_read_of_the_terminal_stops_a_single_process() {
    let dir = tempdir();
    let (_, out) = background_job(dir.path(), "", 1);
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
    let (master, out) = background_job(dir.path(), "--workers 2", 2);
    let (ps, log) = out.split_once("\n---\n").unwrap();
    // The workers (every process but the master), stopped at their import's read.
    let workers: Vec<&str> = ps
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let pid = w.next()?;
            (pid != master).then(|| w.next()).flatten()
        })
        .collect();
    assert!(workers.len() >= 2, "{out}");
    assert!(
        workers.iter().all(|s| s.starts_with('T')),
        "the workers stopped:\n{out}"
    );
    assert!(!log.contains("one worker more"), "{out}");
}
