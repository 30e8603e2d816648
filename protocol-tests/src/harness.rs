//! Test harness: start the real `postern` binary (and a private nginx), talk to them
//! over real sockets, and read their logs. Every process is stopped on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The postern binary: `$POSTERN_BIN`, or a debug build made once per test process.
pub fn postern_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("POSTERN_BIN") {
            return PathBuf::from(p);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--bin", "postern"])
            .current_dir(root())
            .status()
            .expect("running cargo build");
        assert!(status.success(), "cargo build --bin postern failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join("target"));
        target.join("debug").join("postern")
    })
    .clone()
}

/// The test app shipped with these tests.
pub fn testapp() -> String {
    root()
        .join("protocol-tests/apps/testapp.py")
        .to_string_lossy()
        .into_owned()
}

/// A venv with the examples' packages (Flask, Django, FastAPI, Starlette):
/// `$POSTERN_TEST_VENV`, else `./.venv`, else one made once under `target/test-venv`
/// from `examples/requirements.txt`.
pub fn example_venv() -> Option<PathBuf> {
    static VENV: OnceLock<Option<PathBuf>> = OnceLock::new();
    VENV.get_or_init(|| {
        if let Some(p) = std::env::var_os("POSTERN_TEST_VENV") {
            let p = PathBuf::from(p);
            return p.join("pyvenv.cfg").exists().then_some(p);
        }
        let dot = root().join(".venv");
        if dot.join("pyvenv.cfg").exists() && has_frameworks(&dot) {
            return Some(dot);
        }
        let made = root().join("target/test-venv");
        if !has_frameworks(&made) {
            eprintln!(
                "creating {} for the example tests (pip install -r examples/requirements.txt)",
                made.display()
            );
            let ok = Command::new("python3")
                .arg("-m")
                .arg("venv")
                .arg(&made)
                .status()
                .is_ok_and(|s| s.success())
                && Command::new(made.join("bin/pip"))
                    .args(["install", "--quiet", "-r"])
                    .arg(root().join("examples/requirements.txt"))
                    .status()
                    .is_ok_and(|s| s.success());
            if !ok {
                return None;
            }
        }
        Some(made)
    })
    .clone()
}

fn has_frameworks(venv: &Path) -> bool {
    Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import flask, django, fastapi, starlette, python_multipart",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True in CI (`CI=true`): missing tools fail instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The pids of a process's children (a master's workers, and its stats helper if any).
pub fn children(master: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Whether process `pid` is gone, or a zombie its parent has not reaped yet (a worker
/// whose master died waits for whoever adopted it).
/// Processes held by pidfds (pidfd_open(2)): watched and signalled without their pids,
/// which the kernel may give to another process once they are reaped (orphaned
/// workers are reaped by init, and pid_max is 32768 on small machines: a kill by pid
/// could then hit another test's nginx). Open them while they are certainly not reaped
/// yet (children of a live master).
pub struct Held(Vec<(i32, std::os::fd::OwnedFd)>);

impl Held {
    pub fn new(pids: &[i32]) -> Held {
        use std::os::fd::FromRawFd;
        Held(
            pids.iter()
                .filter_map(|&pid| {
                    // SAFETY: pidfd_open(2): a pid and no flags; a new descriptor or -1.
                    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
                    // Gone already is fine (ESRCH); a kernel without pidfds is not.
                    let e = std::io::Error::last_os_error().raw_os_error();
                    assert!(fd >= 0 || e != Some(libc::ENOSYS), "pidfd_open: {e:?}");
                    // SAFETY: a descriptor pidfd_open just returned, ours alone.
                    (fd >= 0)
                        .then(|| (pid, unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }))
                })
                .collect(),
        )
    }

    /// The ones that have not exited (a zombie has: its pidfd reads ready).
    pub fn left(&self) -> Vec<i32> {
        use std::os::fd::AsRawFd;
        self.0
            .iter()
            .filter(|(_, fd)| {
                let mut p = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one pollfd of ours, no wait.
                let ready = unsafe { libc::poll(&mut p, 1, 0) };
                ready == 0
            })
            .map(|(pid, _)| *pid)
            .collect()
    }

    /// Waits up to `secs` for all to exit, SIGKILLs those still there (through their
    /// pidfds) and returns them.
    pub fn wait_then_kill(&self, secs: u64) -> Vec<i32> {
        use std::os::fd::AsRawFd;
        wait_until(secs, || self.left().is_empty());
        let left = self.left();
        for (pid, fd) in &self.0 {
            if left.contains(pid) {
                // SAFETY: pidfd_send_signal(2) on our pidfd; a process that exited
                // meanwhile gets nothing (ESRCH), never another one.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.as_raw_fd(),
                        libc::SIGKILL,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
            }
        }
        left
    }
}

pub fn gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// A temp dir nginx's workers can traverse (0755).
pub fn tempdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("postern-test-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// A loopback port that was free a moment ago, below the kernel's ephemeral range.
///
/// regression: a port the kernel handed out for `bind(0)` lies in the ephemeral
/// range, which the kernel also uses for the local end of every outgoing connection
/// (the tests' clients, nginx's upstream connections); one of those took the port
/// between this call and postern's `bind`, and postern could not listen (CI, stop 31).
/// Ports below the range are never handed out by the kernel on its own, and each one
/// is handed out once per test process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    // Ports 10000..low; each test process starts at its own place in the span.
    let (first, span) = (10_000, low.saturating_sub(10_000).max(1000));
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let port = first + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port as u16)) {
            return l.local_addr().unwrap().port();
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `sh -c "LISTEN_PID=$$ exec postern ARGS"` with the socket `fd` as fd 3 and
/// LISTEN_FDS=1: postern started as systemd socket activation starts it (`exec` keeps
/// the shell's pid, so LISTEN_PID names postern itself). `args` is shell text.
pub fn socket_activated(fd: std::os::fd::RawFd, args: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "LISTEN_PID=$$ exec {} {args}",
            postern_bin().display()
        ))
        .env_remove("VIRTUAL_ENV")
        .env("LISTEN_FDS", "1")
        .stdin(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself keeps FD_CLOEXEC: clear it explicitly then.
            if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0);
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Where postern listens.
#[derive(Clone, Debug)]
pub enum Addr {
    Tcp(u16),
    Unix(PathBuf),
}

impl Addr {
    pub fn arg(&self) -> String {
        match self {
            Addr::Tcp(p) => format!("127.0.0.1:{p}"),
            Addr::Unix(p) => format!("unix:{}", p.display()),
        }
    }

    /// For nginx's `uwsgi_pass`.
    pub fn nginx(&self) -> String {
        match self {
            Addr::Tcp(p) => format!("127.0.0.1:{p}"),
            Addr::Unix(p) => format!("unix:{}", p.display()),
        }
    }

    pub fn connect(&self) -> std::io::Result<Box<dyn Conn>> {
        Ok(match self {
            Addr::Tcp(p) => {
                let s = TcpStream::connect(("127.0.0.1", *p))?;
                s.set_read_timeout(Some(Duration::from_secs(20)))?;
                Box::new(s)
            }
            Addr::Unix(p) => {
                let s = UnixStream::connect(p)?;
                s.set_read_timeout(Some(Duration::from_secs(20)))?;
                Box::new(s)
            }
        })
    }
}

pub trait Conn: Read + Write {
    fn shutdown_write(&self);
}
impl Conn for TcpStream {
    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}
impl Conn for UnixStream {
    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

/// Writes `source` to `dir/{module}.py`; returns the app argument `{module}:app`.
fn write_module(dir: &Path, module: &str, source: &str) -> String {
    std::fs::write(dir.join(format!("{module}.py")), source).unwrap();
    format!("{module}:app")
}

/// An [`AsgiApp`] prelude for the tests' inline apps: `DIR`, the directory in
/// `$ASGI_TEST_DIR` ([`Spawn::asgi_test_dir`]); `mark(name)` makes an empty file there
/// (the test waits for it: the app got that far); `answer(send, body)` sends a whole
/// 200 response without headers.
/// Python for a test app's prelude: `wrap_tasks()` makes every task the running loop
/// makes from then on run its coroutine inside a wrapper coroutine, as sentry_sdk's
/// task factory does (a request's task then runs the wrapper, not postern's own).
pub const WRAP_TASKS: &str = r#"
def wrap_tasks():
    def factory(loop, coro, **kw):
        async def wrapped():
            return await coro
        return asyncio.Task(wrapped(), loop=loop, **kw)
    asyncio.get_running_loop().set_task_factory(factory)
"#;

pub const ASGI_TEST_PRELUDE: &str = r#"
import asyncio, os, time

DIR = os.environ["ASGI_TEST_DIR"]

def mark(name):
    open(os.path.join(DIR, name), "a").close()

async def answer(send, body):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"#;

/// The source of a test's inline ASGI app module: the `prelude` (imports, helpers),
/// then `async def app(scope, receive, send)`, which acknowledges lifespan startup and
/// shutdown (running the `on_startup` / `on_shutdown` statements first) and runs the
/// `http` statements for every other scope. Each block is Python at any indentation of
/// its own; it is re-indented into place.
#[derive(Clone, Copy, Debug, Default)]
pub struct AsgiApp<'a> {
    prelude: &'a str,
    on_startup: &'a str,
    on_shutdown: &'a str,
}

impl<'a> AsgiApp<'a> {
    pub fn new(prelude: &'a str) -> Self {
        AsgiApp {
            prelude,
            ..AsgiApp::default()
        }
    }

    /// Statements run at `lifespan.startup`, before it is acknowledged.
    pub fn on_startup(self, py: &'a str) -> Self {
        AsgiApp {
            on_startup: py,
            ..self
        }
    }

    /// Statements run at `lifespan.shutdown`, before it is acknowledged.
    pub fn on_shutdown(self, py: &'a str) -> Self {
        AsgiApp {
            on_shutdown: py,
            ..self
        }
    }

    /// The module's source, with `http` as the body of `app` after the lifespan part.
    pub fn http(&self, http: &str) -> String {
        format!(
            r#"{prelude}

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
{startup}                await send({{"type": "lifespan.startup.complete"}})
            else:
{shutdown}                await send({{"type": "lifespan.shutdown.complete"}})
                return
{http}"#,
            prelude = indent(self.prelude, 0),
            startup = indent(self.on_startup, 16),
            shutdown = indent(self.on_shutdown, 16),
            http = indent(http, 4),
        )
    }
}

/// `py` without its leading and trailing blank lines, its common indentation replaced
/// by `n` spaces; each line ends with a newline.
fn indent(py: &str, n: usize) -> String {
    let lines: Vec<&str> = py.lines().skip_while(|l| l.trim().is_empty()).collect();
    let end = lines
        .iter()
        .rposition(|l| !l.trim().is_empty())
        .map_or(0, |i| i + 1);
    let lines = &lines[..end];
    let common = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let pad = " ".repeat(n);
    lines
        .iter()
        .map(|l| {
            if l.trim().is_empty() {
                "\n".to_owned()
            } else {
                format!("{pad}{}\n", &l[common..])
            }
        })
        .collect()
}

/// A running postern.
pub struct Postern {
    pub child: Child,
    pub addr: Addr,
    pub log: PathBuf,
    pub dir: PathBuf,
}

/// Builder for a postern process.
pub struct Spawn {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    dir: PathBuf,
    addr: Addr,
    venv: Option<PathBuf>,
    cwd: Option<PathBuf>,
    protocol: &'static str,
    /// `--log-file`: read by `logs()` and the start-up wait instead of stderr.
    log_file: Option<PathBuf>,
}

impl Spawn {
    /// postern logs to `path` (`--log-file`); `Postern::logs()` reads that file.
    pub fn log_file(mut self, path: &Path) -> Self {
        self.args.push("--log-file".into());
        self.args.push(path.display().to_string());
        self.log_file = Some(path.to_owned());
        self
    }

    /// `logs()` and the start-up wait read `path`, which something else than postern
    /// writes: the reader of a pipe postern logs to, keeping a copy of what it read.
    pub fn log_read_from(mut self, path: &Path) -> Self {
        self.log_file = Some(path.to_owned());
        self
    }

    /// Listen for `fastcgi` or `scgi` instead of uwsgi.
    pub fn protocol(mut self, p: &'static str) -> Self {
        self.protocol = p;
        self
    }

    /// Serves `app` on a new Unix socket (mode 666) in `dir`.
    pub fn unix(dir: &Path, app: &str) -> Spawn {
        let sock = dir.join(format!("postern-{}.sock", free_port()));
        Spawn::new(dir, app, Addr::Unix(sock))
    }

    /// Serves `app` on a free loopback TCP port.
    pub fn tcp(dir: &Path, app: &str) -> Spawn {
        Spawn::new(dir, app, Addr::Tcp(free_port()))
    }

    /// Serves the ASGI app `source` (a module defining `app`, e.g. made by [`AsgiApp`]),
    /// written to `dir/{module}.py`, with `--interface asgi` and `dir` as the working
    /// directory, on a free loopback TCP port.
    pub fn asgi_tcp(dir: &Path, module: &str, source: &str) -> Spawn {
        Spawn::tcp(dir, &write_module(dir, module, source)).asgi(dir)
    }

    /// Like [`Spawn::asgi_tcp`], on a new Unix socket in `dir`.
    pub fn asgi_unix(dir: &Path, module: &str, source: &str) -> Spawn {
        Spawn::unix(dir, &write_module(dir, module, source)).asgi(dir)
    }

    /// An ASGI app over FastCGI on a new Unix socket in `dir`, whose `/gated` streams
    /// 16,000-byte body parts until the file `gate` exists, then queues 14 more without
    /// awaiting them and raises (a response cut while its writer is in the middle of a
    /// batch); anything else answers `ok`.
    pub fn gated_cut(dir: &Path, gate: &Path) -> Spawn {
        let prelude = format!(
            "import asyncio, os\nGATE = {:?}",
            gate.display().to_string()
        );
        let app = AsgiApp::new(&prelude).http(
            r#"
if scope["path"] == "/gated":
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    while not os.path.exists(GATE):
        await send({"type": "http.response.body", "body": b"x" * 16000, "more_body": True})
    # Not awaited: queued at once (14 fit in the writer's queue), so the writer takes
    # more than the socket has room for, and is in the middle of it at the raise.
    for _ in range(14):
        send({"type": "http.response.body", "body": b"y" * 16000, "more_body": True})
    await asyncio.sleep(0.1)
    raise RuntimeError("cut on purpose")
await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
await send({"type": "http.response.body", "body": b"ok\n"})
"#,
        );
        Spawn::asgi_unix(dir, "gated_cut", &app).protocol("fastcgi")
    }

    /// `dir` is the app's `$ASGI_TEST_DIR` ([`ASGI_TEST_PRELUDE`]), and the loop
    /// asyncio's (the same whether uvloop is installed or not).
    pub fn asgi_test_dir(self, dir: &Path) -> Spawn {
        self.env("ASGI_TEST_DIR", dir.to_str().unwrap())
            .args(["--loop", "asyncio"])
    }

    /// `--loop event_loop`; for uvloop, in the examples' venv (which has it). `None`
    /// when uvloop is asked and there is no such venv: a loud skip, a failure in CI.
    pub fn event_loop(self, event_loop: &str) -> Option<Spawn> {
        let spawn = self.args(["--loop", event_loop]);
        if event_loop != "uvloop" {
            return Some(spawn);
        }
        match example_venv() {
            Some(v) => Some(spawn.venv(&v)),
            None => {
                assert!(!in_ci(), "the examples' venv (uvloop) is missing");
                eprintln!("!!!!! SKIPPING uvloop: no examples venv");
                None
            }
        }
    }

    fn asgi(self, dir: &Path) -> Spawn {
        self.cwd(dir).args(["--interface", "asgi"])
    }

    fn new(dir: &Path, app: &str, addr: Addr) -> Spawn {
        Spawn {
            args: vec![app.to_owned()],
            envs: Vec::new(),
            dir: dir.to_owned(),
            addr,
            venv: None,
            cwd: None,
            protocol: "uwsgi",
            log_file: None,
        }
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, a: I) -> Self {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }

    pub fn venv(mut self, v: &Path) -> Self {
        self.venv = Some(v.to_owned());
        self
    }

    pub fn cwd(mut self, d: &Path) -> Self {
        self.cwd = Some(d.to_owned());
        self
    }

    /// Where postern will listen (for a test that starts `command()` itself).
    pub fn addr(&self) -> &Addr {
        &self.addr
    }

    /// The command, not started (for tests that expect a failure).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(postern_bin());
        cmd.args(&self.args)
            .arg(format!("--{}", self.protocol))
            .arg(self.addr.arg())
            .env_remove("VIRTUAL_ENV")
            .env("RUST_BACKTRACE", "1");
        if matches!(self.addr, Addr::Unix(_)) {
            cmd.args(["--socket-mode", "666"]);
        }
        if let Some(v) = &self.venv {
            cmd.arg("--venv").arg(v);
        }
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts postern and waits until it accepts connections.
    pub fn start(self) -> Postern {
        Postern::spawn(self.command(), self.addr, &self.dir, self.log_file)
    }
}

/// Polls `f` every 25 ms for up to `secs`; true as soon as it holds (one last look
/// at the deadline).
pub fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    f()
}

/// The first line of `logs` that contains `needle`; fails, showing the logs, when none
/// does.
pub fn log_line<'a>(logs: &'a str, needle: &str) -> &'a str {
    logs.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?}:\n{logs}"))
}

/// The request ids (`request_id=...`, in a request's span or a field) of the lines of
/// `logs` that contain `needle`, in order.
pub fn log_request_ids(logs: &str, needle: &str) -> Vec<String> {
    logs.lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| {
            l.split("request_id=")
                .nth(1)
                .and_then(|r| r.split(['}', ' ']).next())
                .map(str::to_owned)
        })
        .collect()
}

/// `n` ASGI tasks an immediate stop or a `--timeout` kill cut off, each named once: by
/// the worker's loop (`by_worker`, more than the 16 a scoreboard shows, each with its
/// access line `response incomplete`), or by the master (`by_master`: what a worker
/// still ran as it exited); no task reported destroyed while pending (regression,
/// review 357: the cut-off's own waiter was, at ERROR).
pub fn assert_cut_named_once(logs: &str, by_worker: &[String], by_master: &[String], n: usize) {
    let all: std::collections::HashSet<_> = by_worker.iter().chain(by_master).collect();
    assert_eq!(by_worker.len() + by_master.len(), n, "{logs}");
    assert_eq!(all.len(), n, "each once: {logs}");
    assert!(by_worker.len() > 16, "{logs}");
    assert!(!logs.contains("destroyed but it is pending"), "{logs}");
    assert_eq!(
        logs.matches("response incomplete").count(),
        by_worker.len(),
        "{logs}"
    );
}

impl Postern {
    /// Runs `cmd` with stdout and stderr to a new file in `dir`, and waits until `addr`
    /// accepts connections and the log (`log`, or that file when `None`) says `ready`.
    pub fn spawn(mut cmd: Command, addr: Addr, dir: &Path, log: Option<PathBuf>) -> Postern {
        let out = dir.join(format!("postern-{}.log", free_port()));
        let file = std::fs::File::create(&out).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("starting postern");
        let mut p = Postern {
            child,
            addr,
            log: log.unwrap_or_else(|| out.clone()),
            dir: dir.to_owned(),
        };
        p.wait_ready(&out);
        p
    }

    /// `out`: the process's stdout and stderr, shown too when the log is elsewhere.
    fn wait_ready(&mut self, out: &Path) {
        let shown = |p: &Postern| {
            let mut s = p.logs();
            if out != p.log {
                s = format!("{}\n{s}", std::fs::read_to_string(out).unwrap_or_default());
            }
            s
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("postern exited early ({status}):\n{}", shown(self));
            }
            // A probe connection that sends nothing is logged at debug level only.
            if self.addr.connect().is_ok() && self.logs().contains("ready") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postern did not start:\n{}",
                shown(self)
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Everything postern has logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `secs` for `needle` to appear in the log.
    pub fn wait_log(&self, needle: &str, secs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if self.logs().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    /// Whether a worker killed for `--timeout` has exited within `secs`: its exit line
    /// (`worker exited … cause="timeout"`). The master asks it to stop at once after its
    /// stack dump, so it exits by itself (`how=exit code 1`) or is killed 1.5 s later
    /// (`how=killed by SIGKILL`).
    pub fn wait_timeout_exit(&self, secs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if self
                .logs()
                .lines()
                .any(|l| l.contains("worker exited") && l.contains("cause=\"timeout\""))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    /// The pids of the workers that logged `worker ready`, in the order they did.
    pub fn ready_worker_pids(&self) -> Vec<i32> {
        self.logs()
            .split("worker ready pid=")
            .skip(1)
            .filter_map(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .collect()
    }

    /// Waits up to `secs` for `needle` to appear at least `n` times in the log.
    pub fn wait_log_count(&self, needle: &str, n: usize, secs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if self.logs().matches(needle).count() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits up to 30 s until a uwsgi GET of `target` answers 200: a worker serves (the
    /// first one, or a replacement).
    pub fn wait_serving(&self, target: &str) -> bool {
        wait_until(30, || {
            parse_http(&self.raw(&uwsgi_get(target))).is_some_and(|r| r.status == 200)
        })
    }

    /// Waits for the process to exit, up to `secs`.
    pub fn wait_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        wait_child(&mut self.child, secs)
    }

    /// Sends one raw request and returns everything until EOF.
    pub fn raw(&self, bytes: &[u8]) -> Vec<u8> {
        raw(&self.addr, bytes)
    }

    /// Sends a uwsgi request built from `vars` and `body`; returns the raw response.
    pub fn uwsgi(&self, vars: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        let mut pkt = uwsgi_packet(vars);
        pkt.extend_from_slice(body);
        self.raw(&pkt)
    }

    /// A plain GET over uwsgi; returns (status, body).
    pub fn get(&self, path: &str) -> (u16, Vec<u8>) {
        let resp = self.raw(&uwsgi_get(path));
        let r = parse_http(&resp)
            .unwrap_or_else(|| panic!("bad response {:?}", String::from_utf8_lossy(&resp)));
        (r.status, r.body)
    }
}

impl Drop for Postern {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
        if std::env::var_os("POSTERN_TEST_SHOW_LOGS").is_some() || std::thread::panicking() {
            eprintln!(
                "---- postern log ({}) ----\n{}",
                self.log.display(),
                self.logs()
            );
        }
    }
}

/// A meeting point for the test app's `/rendezvous` requests: a fresh empty directory
/// each request marks on arrival. A request answers 200 once `n` have arrived, so `n`
/// requests that all answer 200 ran at the same time: concurrency checked by the order
/// of events, not by a duration.
pub struct Rendezvous {
    dir: PathBuf,
}

impl Rendezvous {
    /// A new meeting point under `parent`.
    pub fn new(parent: &Path) -> Rendezvous {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let i = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = parent.join(format!("rendezvous-{}-{i}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        Rendezvous { dir }
    }

    /// The target of one of `n` requests that wait for each other (PATH_INFO and query).
    pub fn target(&self, n: usize, name: &str) -> String {
        format!(
            "/rendezvous?n={n}&name={}&dir={}",
            query_escape(name),
            query_escape(&self.dir.to_string_lossy())
        )
    }

    /// Waits up to `secs` (a bound against a hang, not a measure) until the request
    /// named `name` has arrived in the app.
    pub fn wait_arrived(&self, name: &str, secs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if self.dir.join(name).exists() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// The test itself arrives as `name`: one of the `n` is the test, which lets the
    /// app's requests go on when it is ready (a gate opened by an event, not a delay).
    pub fn arrive(&self, name: &str) {
        std::fs::write(self.dir.join(name), "").unwrap();
    }

    /// The answer's body when all `n` met (the app answers 504 naming who was missing
    /// when they did not).
    pub fn met(n: usize) -> String {
        format!("met {n}\n")
    }
}

/// The target of the test app's `/gated-stream`: "chunk 0", then nothing until the
/// file `gate` exists, then chunks 1..n-1.
pub fn gated_stream(gate: &Path, n: usize) -> String {
    format!(
        "/gated-stream?n={n}&gate={}",
        query_escape(&gate.to_string_lossy())
    )
}

/// What a client that got chunk 0 of [`gated_stream`] and then opened the gate receives.
pub fn gated_stream_body(n: usize) -> String {
    (0..n).map(|i| format!("chunk {i}\n")).collect()
}

/// Percent-encodes what would change meaning in a query string value.
fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Waits up to `secs` (a bound against a hang, not a measure) until `path` exists,
/// e.g. the mark of the test app's `/marked-sleep` or `/marked-regex-hog`: the request
/// is in the app.
pub fn wait_file(path: &Path, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// The SHA-256 of `data` in hex, computed by python3's hashlib (an independent
/// reference for what an app reports; no crypto crate in the tests).
pub fn sha256_hex(data: &[u8]) -> String {
    let dir = tempdir();
    let f = dir.path().join("data");
    std::fs::write(&f, data).unwrap();
    let out = Command::new("python3")
        .args([
            "-c",
            "import hashlib,sys;print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())",
        ])
        .arg(&f)
        .output()
        .expect("running python3 for a SHA-256");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Waits up to `secs` for `child` to exit; its status, or None if it still runs.
pub fn wait_child(child: &mut Child, secs: u64) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Sends bytes, reads to EOF (or error).
pub fn raw(addr: &Addr, bytes: &[u8]) -> Vec<u8> {
    let mut s = addr.connect().expect("connecting to postern");
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// A uwsgi `GET /marked-sleep?s=SECS&mark=MARK` (the test app writes MARK as it starts,
/// then sleeps) sent on a thread of its own: its raw answer.
pub fn marked_sleep_on_thread(
    addr: &Addr,
    secs: u64,
    mark: &Path,
) -> std::thread::JoinHandle<Vec<u8>> {
    let addr = addr.clone();
    let query = format!("s={secs}&mark={}", mark.display());
    std::thread::spawn(move || {
        raw(
            &addr,
            &uwsgi_packet(&[
                ("REQUEST_METHOD", "GET"),
                ("PATH_INFO", "/marked-sleep"),
                ("QUERY_STRING", &query),
            ]),
        )
    })
}

/// A uwsgi `GET /` over a Unix socket, connected and written now (so it takes its place
/// in the listen queue in the caller's order), its answer read on a thread of its own.
pub fn queued_get(path: &Path) -> std::thread::JoinHandle<Vec<u8>> {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&uwsgi_packet(&[
        ("REQUEST_METHOD", "GET"),
        ("PATH_INFO", "/"),
    ]))
    .unwrap();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    })
}

/// Sends bytes, half-closes (EOF), reads to EOF (or error).
pub fn raw_eof(addr: &Addr, bytes: &[u8]) -> Vec<u8> {
    let mut s = addr.connect().expect("connecting to postern");
    let _ = s.write_all(bytes);
    s.shutdown_write();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// A whole uwsgi GET of `target` (path and query) as nginx's uwsgi_params send it.
pub fn uwsgi_get(target: &str) -> Vec<u8> {
    uwsgi_get_with(target, &[])
}

/// [`uwsgi_get`] with the variables `extra` after nginx's (request headers:
/// `HTTP_X_REQUEST_ID`…).
pub fn uwsgi_get_with(target: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let (p, q) = target.split_once('?').unwrap_or((target, ""));
    let mut vars = vec![
        ("REQUEST_METHOD", "GET"),
        ("PATH_INFO", p),
        ("QUERY_STRING", q),
        ("REQUEST_URI", target),
        ("SERVER_NAME", "test"),
        ("SERVER_PORT", "80"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
    ];
    vars.extend_from_slice(extra);
    uwsgi_packet(&vars)
}

/// Asserts, twice (the second time from postern's checked-headers caches), that the
/// app behind `p` answering `/204` with `Content-Length: 5` and `X-A: 1` sends no
/// Content-Length, and that its `/ok` 200 with the same headers and body `hello` does.
pub fn assert_204_drops_content_length(p: &Postern) {
    for _ in 0..2 {
        let raw = p.raw(&uwsgi_get("/204"));
        let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 204"), "{text}");
        assert!(!text.contains("content-length"), "{text}");
        assert!(
            text.contains("x-a: 1") && text.ends_with("\r\n\r\n"),
            "{text}"
        );
        let raw = p.raw(&uwsgi_get("/ok"));
        let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
        assert!(text.contains("content-length: 5\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nhello"), "{text}");
    }
}

/// An app's Content-Length set twice: the same value goes out once (`/cl-same`, after
/// `/cl-pos1` so that a kept check of an earlier response meets the second one too);
/// different values answer 500, and the log names both (`/cl-differ`). The app
/// answers `hello` with `Content-Length: 5` on each: `/cl-pos1` after another header,
/// `/cl-same` twice, `/cl-differ` as 5 then 6.
pub fn assert_one_content_length_for_one_value(p: &Postern) {
    for _ in 0..2 {
        for path in ["/cl-pos1", "/cl-same"] {
            let raw = p.raw(&uwsgi_get(path));
            let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
            assert!(
                text.starts_with("http/1.1 200"),
                "{path}: {text}\n{}",
                p.logs()
            );
            assert_eq!(text.matches("content-length").count(), 1, "{path}: {text}");
            assert!(text.contains("content-length: 5\r\n"), "{path}: {text}");
            assert!(text.ends_with("\r\n\r\nhello"), "{path}: {text}");
        }
        let raw = p.raw(&uwsgi_get("/cl-differ"));
        assert!(raw.starts_with(b"HTTP/1.1 500"), "{}", p.logs());
    }
    assert!(
        p.wait_log(
            "Content-Length is set twice with different values (5, then 6)",
            5
        ),
        "{}",
        p.logs()
    );
}

/// Encodes a uwsgi packet (written independently of postern's own codec).
pub fn uwsgi_packet(vars: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (k, v) in vars {
        for s in [k.as_bytes(), v.as_bytes()] {
            block.extend_from_slice(&(s.len() as u16).to_le_bytes());
            block.extend_from_slice(s);
        }
    }
    let mut pkt = vec![0u8];
    pkt.extend_from_slice(&(block.len() as u16).to_le_bytes());
    pkt.push(0);
    pkt.extend_from_slice(&block);
    pkt
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Parses a complete HTTP/1.x response (Content-Length, chunked, or until EOF).
pub fn parse_http(resp: &[u8]) -> Option<Response> {
    let end = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&resp[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let rest = &resp[end + 4..];
    let r = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let body = if r
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        dechunk(rest)?
    } else if let Some(cl) = r.header("content-length") {
        let n: usize = cl.parse().ok()?;
        if rest.len() < n {
            return None;
        }
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    Some(Response { body, ..r })
}

/// Decodes a chunked body; None if it is incomplete (no terminating chunk).
pub fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&b[..nl]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        b = &b[nl + 2..];
        if size == 0 {
            return Some(out);
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Where nginx is, if installed. In CI a missing nginx fails the test; locally it
/// skips with a loud message.
pub fn nginx_bin() -> Option<PathBuf> {
    for p in ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).exists() {
            return Some(PathBuf::from(p));
        }
    }
    if in_ci() {
        panic!("nginx is not installed, and CI=true: tests that need nginx must not skip (install it in .ci/run)");
    }
    eprintln!("\n!!!!! SKIPPING: nginx is not installed (apt-get install nginx); this test did NOT run !!!!!\n");
    None
}

/// The `Host` of the harness's readiness check ([`Nginx::start_site`]).
const READY_HOST: &str = "postern-harness-ready.invalid";

/// A private nginx: `nginx -p DIR -c DIR/nginx.conf`, stopped by pid on drop.
pub struct Nginx {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl Nginx {
    /// Starts nginx with `server_body` inside its `server {}` block (the listen
    /// directive is added). `{{DIR}}` in the body is replaced by nginx's directory.
    pub fn start(bin: &Path, parent: &Path, server_body: &str) -> Nginx {
        Self::start_with_http(bin, parent, "", server_body)
    }

    /// Like [`Nginx::start`], with extra directives at `http {}` level.
    pub fn start_with_http(
        bin: &Path,
        parent: &Path,
        http_extra: &str,
        server_body: &str,
    ) -> Nginx {
        let server = format!(
            r#"server {{
        listen 127.0.0.1:{{{{PORT}}}};
        server_name localhost;
        {server_body}
    }}"#
        );
        Self::start_site(bin, parent, &format!("{http_extra}\n{server}"))
    }

    /// Starts nginx with `site` at `http {}` level: upstreams and a `server {}` that
    /// listens on `{{PORT}}` (replaced by a free port; `{{DIR}}` by nginx's directory).
    pub fn start_site(bin: &Path, parent: &Path, site: &str) -> Nginx {
        // The free port is released before nginx binds it, so another process may take
        // it in between: nginx then exits with "Address already in use", and a new
        // port is tried (a few times, then the test fails with nginx's words).
        for _ in 0..4 {
            if let Some(n) = Self::try_start_site(bin, parent, site, false) {
                return n;
            }
        }
        Self::try_start_site(bin, parent, site, true).expect("the last try panics")
    }

    /// [`Nginx::start_site`] on one free port; `None` when nginx could not bind it
    /// (unless it is the `last` try: then the test fails with what nginx said).
    fn try_start_site(bin: &Path, parent: &Path, site: &str, last: bool) -> Option<Nginx> {
        let port = free_port();
        let dir = parent.join(format!("nginx-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = dir.display().to_string();
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root;"
        } else {
            ""
        };
        // What only this nginx answers (not its directory: a `$` in TMPDIR would be
        // read as a variable in `return`).
        let token = format!(
            "{port}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |t| t.as_nanos())
        );
        let conf = format!(
            r#"{user}
daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_max_body_size 100m;
    {site}
    # The harness's readiness check (last: the site's own server stays the port's
    # default): the answer proves the port is this nginx's and its worker serves.
    server {{
        listen 127.0.0.1:{port};
        server_name {READY_HOST};
        location = /__harness_ready {{ return 200 "{token}"; }}
    }}
}}
"#,
            site = site
                .replace("{{DIR}}", &d)
                .replace("{{PORT}}", &port.to_string()),
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new(bin)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting nginx");
        let mut n = Nginx { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        // Not a bare connect: one to a port some other process listens on (nginx then
        // fails to bind it and exits) or to a master whose worker never serves passed
        // for ready, and the test's first request was reset.
        while !n.answers_ready(&token) {
            if let Ok(Some(s)) = n.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = n.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                let log = n.error_log();
                if [&err, &log]
                    .iter()
                    .any(|t| t.contains("Address already in use"))
                    && !last
                {
                    eprintln!("nginx could not bind port {port} (taken meanwhile): another port");
                    return None;
                }
                panic!("nginx exited ({s}): {err}\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                n.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(n)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Whether this nginx answers its readiness location with its own `token`.
    fn answers_ready(&self, token: &str) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let req = format!(
            "GET /__harness_ready HTTP/1.1\r\nHost: {READY_HOST}\r\nConnection: close\r\n\r\n"
        );
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        parse_http(&out).is_some_and(|r| r.status == 200 && r.body == token.as_bytes())
    }

    /// Sends a raw HTTP request and returns the raw response.
    pub fn raw(&self, req: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(req).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    }

    /// One HTTP/1.1 request (`Connection: close`); headers are sent as given.
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let mut req =
            format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        let resp = self.raw(&bytes);
        parse_http(&resp).unwrap_or_else(|| {
            panic!(
                "incomplete HTTP response from nginx: {:?}\nnginx error log:\n{}",
                String::from_utf8_lossy(&resp),
                self.error_log()
            )
        })
    }

    pub fn get(&self, target: &str) -> Response {
        self.request("GET", target, &[], b"")
    }

    /// [`Nginx::get`] to the nginx on `port` (for a client thread, which cannot borrow
    /// the `Nginx`).
    pub fn get_on(port: u16, target: &str) -> Response {
        let req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        parse_http(&out).unwrap_or_else(|| {
            panic!(
                "incomplete HTTP response from nginx: {:?}",
                String::from_utf8_lossy(&out)
            )
        })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Already reaped (it exited at start): its pid may be another process's now.
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill(2) on our own child, not reaped yet.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGQUIT);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The uwsgi location block tests use (its own params, not relying on Debian's file,
/// plus the stock file's variables).
pub fn uwsgi_location(pass: &str) -> String {
    format!(
        r#"location / {{
            uwsgi_param QUERY_STRING $query_string;
            uwsgi_param REQUEST_METHOD $request_method;
            uwsgi_param CONTENT_TYPE $content_type;
            uwsgi_param CONTENT_LENGTH $content_length;
            uwsgi_param REQUEST_URI $request_uri;
            uwsgi_param PATH_INFO $document_uri;
            uwsgi_param DOCUMENT_ROOT $document_root;
            uwsgi_param SERVER_PROTOCOL $server_protocol;
            uwsgi_param REQUEST_SCHEME $scheme;
            uwsgi_param HTTPS $https if_not_empty;
            uwsgi_param REMOTE_ADDR $remote_addr;
            uwsgi_param REMOTE_PORT $remote_port;
            uwsgi_param SERVER_PORT $server_port;
            uwsgi_param SERVER_NAME $server_name;
            uwsgi_pass {pass};
        }}"#
    )
}

/// The FastCGI location block tests use: nginx's stock `fastcgi_params` variables
/// (SCRIPT_NAME is the whole path, no PATH_INFO: postern's job to split), plus
/// `extra` directives (e.g. `fastcgi_keep_conn on;`).
pub fn fastcgi_location(pass: &str, extra: &str) -> String {
    format!(
        r#"location / {{
            include {params};
            {extra}
            fastcgi_pass {pass};
        }}"#,
        params = fastcgi_params_file().display()
    )
}

/// deploy/nginx's copy of nginx's stock `fastcgi_params`, so tests do not depend on
/// the distribution's file.
pub fn fastcgi_params_file() -> PathBuf {
    root().join("deploy/nginx/fastcgi_params")
}

/// A FastCGI client for raw tests: records are encoded here, independently of
/// postern's own codec.
pub mod fcgi {
    use std::io::Read;

    pub const BEGIN_REQUEST: u8 = 1;
    pub const ABORT_REQUEST: u8 = 2;
    pub const END_REQUEST: u8 = 3;
    pub const PARAMS: u8 = 4;
    pub const STDIN: u8 = 5;
    pub const STDOUT: u8 = 6;
    pub const STDERR: u8 = 7;
    pub const GET_VALUES: u8 = 9;
    pub const GET_VALUES_RESULT: u8 = 10;
    pub const UNKNOWN_TYPE: u8 = 11;

    /// One record, padded to 8 bytes like nginx does.
    pub fn record(kind: u8, id: u16, content: &[u8]) -> Vec<u8> {
        assert!(content.len() <= 65535);
        let pad = (8 - content.len() % 8) % 8;
        let mut out = vec![1, kind];
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&(content.len() as u16).to_be_bytes());
        out.push(pad as u8);
        out.push(0);
        out.extend_from_slice(content);
        out.extend(std::iter::repeat_n(0u8, pad));
        out
    }

    pub fn begin(id: u16, role: u16, keep_conn: bool) -> Vec<u8> {
        let mut body = role.to_be_bytes().to_vec();
        body.push(keep_conn as u8);
        body.extend_from_slice(&[0; 5]);
        record(BEGIN_REQUEST, id, &body)
    }

    fn len(out: &mut Vec<u8>, n: usize) {
        if n < 128 {
            out.push(n as u8);
        } else {
            out.extend_from_slice(&((n as u32) | 0x8000_0000).to_be_bytes());
        }
    }

    pub fn pairs(vars: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in vars {
            len(&mut out, k.len());
            len(&mut out, v.len());
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        out
    }

    /// A request's head as nginx sends it: BEGIN, PARAMS, empty PARAMS (STDIN to
    /// follow).
    pub fn head(id: u16, keep_conn: bool, vars: &[(&str, &str)]) -> Vec<u8> {
        let mut out = begin(id, 1, keep_conn);
        out.extend(record(PARAMS, id, &pairs(vars)));
        out.extend(record(PARAMS, id, b""));
        out
    }

    /// A whole request as nginx sends it: [`head`], STDIN records, empty STDIN.
    pub fn request(id: u16, keep_conn: bool, vars: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        let mut out = head(id, keep_conn, vars);
        for chunk in body.chunks(32 * 1024) {
            out.extend(record(STDIN, id, chunk));
        }
        out.extend(record(STDIN, id, b""));
        out
    }

    /// GET `path` with the variables nginx's stock params send.
    pub fn get_vars(path: &str) -> Vec<(&'static str, String)> {
        let (p, q) = path.split_once('?').unwrap_or((path, ""));
        vec![
            ("REQUEST_METHOD", "GET".into()),
            ("SCRIPT_NAME", p.into()),
            ("REQUEST_URI", path.into()),
            ("QUERY_STRING", q.into()),
            ("SERVER_PROTOCOL", "HTTP/1.1".into()),
            ("SERVER_NAME", "localhost".into()),
            ("SERVER_PORT", "80".into()),
        ]
    }

    pub fn get(id: u16, keep_conn: bool, path: &str) -> Vec<u8> {
        let vars = get_vars(path);
        let v: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        request(id, keep_conn, &v, b"")
    }

    /// One record as read: (type, request id, content).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Rec {
        pub kind: u8,
        pub id: u16,
        pub content: Vec<u8>,
    }

    /// Reads one record; `None` at EOF (or a read error).
    pub fn read(c: &mut dyn Read) -> Option<Rec> {
        let mut h = [0u8; 8];
        c.read_exact(&mut h).ok()?;
        assert_eq!(h[0], 1, "version byte");
        let n = u16::from_be_bytes([h[4], h[5]]) as usize;
        let mut content = vec![0u8; n + h[6] as usize];
        c.read_exact(&mut content).ok()?;
        content.truncate(n);
        Some(Rec {
            kind: h[1],
            id: u16::from_be_bytes([h[2], h[3]]),
            content,
        })
    }

    /// One keep-conn GET of `path` (request id 1) on `c`, and its answer: (status,
    /// body), or `None` when none came (the connection closed, or nothing within its
    /// read timeout).
    pub fn kept_get<C: std::io::Read + std::io::Write>(
        c: &mut C,
        path: &str,
    ) -> Option<(u16, String)> {
        c.write_all(&get(1, true, path)).ok()?;
        let mut reply = Reply::default();
        loop {
            let rec = read(c)?;
            match rec.kind {
                STDOUT => reply.stdout.extend_from_slice(&rec.content),
                END_REQUEST => break,
                _ => {}
            }
        }
        let (status, _, body) = reply.cgi();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// What came back for one request id.
    #[derive(Debug, Default)]
    pub struct Reply {
        pub stdout: Vec<u8>,
        pub stderr: Vec<u8>,
        /// (appStatus, protocolStatus) of END_REQUEST.
        pub end: Option<(u32, u8)>,
        /// The empty STDOUT record arrived.
        pub stdout_closed: bool,
    }

    impl Reply {
        /// The CGI response: status code, header lines, body.
        pub fn cgi(&self) -> (u16, Vec<(String, String)>, Vec<u8>) {
            let split = self
                .stdout
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("a CGI head");
            let head = String::from_utf8_lossy(&self.stdout[..split]).to_string();
            let mut status = 200;
            let mut headers = Vec::new();
            for line in head.split("\r\n") {
                let (k, v) = line.split_once(": ").expect("header line");
                if k == "Status" {
                    status = v[..3].parse().unwrap();
                } else {
                    headers.push((k.to_owned(), v.to_owned()));
                }
            }
            (status, headers, self.stdout[split + 4..].to_vec())
        }
    }

    /// Reads records from `c` until an END_REQUEST (one request at a time on the
    /// connection): the CGI status, or `None` when the connection closed (or was reset)
    /// first.
    pub fn status(c: &mut dyn Read) -> Option<u16> {
        let mut reply = Reply::default();
        loop {
            let rec = read(c)?;
            match rec.kind {
                STDOUT => reply.stdout.extend_from_slice(&rec.content),
                END_REQUEST => return Some(reply.cgi().0),
                _ => {}
            }
        }
    }

    /// Reads records until END_REQUEST for `id`; other ids' records are returned in
    /// `others`. Panics on EOF before END_REQUEST.
    pub fn read_reply(c: &mut dyn Read, id: u16, others: &mut Vec<Rec>) -> Reply {
        let mut r = Reply::default();
        loop {
            let rec = read(c).expect("connection closed before END_REQUEST");
            if rec.id != id {
                others.push(rec);
                continue;
            }
            match rec.kind {
                STDOUT if rec.content.is_empty() => r.stdout_closed = true,
                STDOUT => {
                    assert!(!r.stdout_closed, "STDOUT after its end");
                    r.stdout.extend_from_slice(&rec.content)
                }
                STDERR => r.stderr.extend_from_slice(&rec.content),
                END_REQUEST => {
                    let c = &rec.content;
                    r.end = Some((u32::from_be_bytes([c[0], c[1], c[2], c[3]]), c[4]));
                    return r;
                }
                k => panic!("unexpected record type {k} for request {id}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AsgiApp;

    #[test]
    fn an_inline_asgi_app_has_its_blocks_reindented_into_place() {
        let src = AsgiApp::new("\n    import os\n")
            .on_shutdown("\n        os.getpid()\n        if True:\n            pass\n")
            .http("\nawait send(1)\n\nif scope:\n    pass\n\n");
        assert_eq!(
            src,
            r#"import os


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                os.getpid()
                if True:
                    pass
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send(1)

    if scope:
        pass
"#
        );
    }
}
