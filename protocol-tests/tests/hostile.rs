//! Hostile clients against the real binary: a connection flood under
//! `--max-connections` (the worker holds at most that many; the rest wait in the listen
//! queue and are served when connections close), accept out of file descriptors (no
//! busy loop, one log line per second at most, service resumes), and FastCGI
//! multiplexing with large STDIN (bounded memory while nginx's requests go on).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use protocol_tests::harness::*;

/// Sockets `pid` holds open (entries of /proc/PID/fd that are sockets).
fn sockets(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// CPU time `pid` has used, in clock ticks (utime + stime of /proc/PID/stat).
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may hold spaces: fields are counted after its closing paren.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// The socket count once it has stayed the same for 300 ms (5 s at most).
fn settled(pid: i32) -> usize {
    let mut last = sockets(pid);
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let now = sockets(pid);
        if now == last && now == sockets(pid) {
            std::thread::sleep(Duration::from_millis(200));
            if sockets(pid) == now {
                return now;
            }
        }
        last = now;
    }
    last
}

/// Polls `f` every 20 ms for up to `secs`; true once it holds.
fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

fn uwsgi_get(path: &str) -> Vec<u8> {
    uwsgi_packet(&[
        ("REQUEST_METHOD", "GET"),
        ("PATH_INFO", path),
        ("QUERY_STRING", ""),
        ("REQUEST_URI", path),
        ("SERVER_NAME", "test"),
        ("SERVER_PORT", "80"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
    ])
}

/// Sends a GET on an open connection and reads the answer to EOF: its status.
fn served(mut c: TcpStream) -> Option<u16> {
    c.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    c.write_all(&uwsgi_get("/env")).ok()?;
    let mut out = Vec::new();
    c.read_to_end(&mut out).ok()?;
    parse_http(&out).map(|r| r.status)
}

#[test]
fn past_max_connections_new_connections_wait_in_the_listen_queue() {
    let dir = tempdir();
    // Idle connections are not closed by --head-timeout while the test looks.
    let p = Spawn::tcp(dir.path(), &testapp())
        .args(["--max-connections", "10", "--head-timeout", "60"])
        .start();
    let Addr::Tcp(port) = p.addr else {
        unreachable!()
    };
    // The sockets that are not connections (the listener, tokio's signal pipe): what
    // is left once the start-up probe's connection has closed.
    let base = settled(p.pid());
    let conns: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // The worker takes exactly its 10 ...
    assert!(
        eventually(10, || sockets(p.pid()) == base + 10),
        "the worker should hold 10 connections, holds {}",
        sockets(p.pid()) - base
    );
    // ... and no more, however long the other 40 wait.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sockets(p.pid()), base + 10, "more than --max-connections held");
    // Closing the accepted ones (the first 10, in the listen queue's order) lets the
    // queued ones in; each of those is then served.
    let mut conns = conns.into_iter();
    for c in conns.by_ref().take(10) {
        drop(c);
    }
    let waiting: Vec<TcpStream> = conns.collect();
    let handles: Vec<_> = waiting
        .into_iter()
        .map(|c| std::thread::spawn(move || served(c)))
        .collect();
    let statuses: Vec<Option<u16>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        statuses.iter().all(|s| *s == Some(200)),
        "queued connections not all served: {statuses:?}"
    );
    assert!(
        eventually(5, || sockets(p.pid()) == base),
        "connections left open"
    );
    let again = served(TcpStream::connect(("127.0.0.1", port)).unwrap());
    assert_eq!(again, Some(200), "not serving after the flood");
}

#[test]
fn out_of_file_descriptors_accept_neither_spins_nor_floods_the_log() {
    let dir = tempdir();
    let mut cmd = Spawn::tcp(dir.path(), &testapp())
        // Past what the descriptors allow: accept itself meets EMFILE.
        .args(["--max-connections", "10000", "--head-timeout", "60"])
        .command();
    // SAFETY: only setrlimit (async-signal-safe) runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 48,
                rlim_max: 48,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let port = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .find_map(|a| a.strip_prefix("127.0.0.1:").and_then(|p| p.parse::<u16>().ok()))
        .expect("the tcp address among the arguments");
    let p = Postern::spawn(cmd, Addr::Tcp(port), dir.path(), None);
    let pid = p.pid();
    // Far more connections than descriptors: they sit in the listen queue.
    let conns: Vec<TcpStream> = (0..120)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    assert!(
        p.wait_log("out of file descriptors", 10),
        "no log line about the descriptor limit"
    );
    let lines = || {
        p.logs()
            .lines()
            .filter(|l| l.contains("out of file descriptors"))
            .count()
    };
    let (lines0, cpu0, t0) = (lines(), cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let (lines1, cpu1, secs) = (lines(), cpu_ticks(pid), t0.elapsed().as_secs_f64());
    // A spinning accept loop burns a whole core: ~100 ticks a second. Generous: a
    // quarter of that.
    let ticks = cpu1 - cpu0;
    assert!(
        (ticks as f64) < secs * 25.0,
        "{ticks} CPU ticks in {secs:.1} s while out of descriptors: accept spins"
    );
    assert!(
        (lines1 - lines0) as f64 <= secs + 2.0,
        "{} log lines in {secs:.1} s: more than one a second",
        lines1 - lines0
    );
    assert!(
        p.logs().contains("failed="),
        "the line counts the failed accepts"
    );
    // Once the flood goes away, service resumes.
    drop(conns);
    let ok = eventually(20, || {
        TcpStream::connect(("127.0.0.1", port))
            .ok()
            .and_then(served)
            == Some(200)
    });
    assert!(ok, "not serving again after the connections closed");
}
