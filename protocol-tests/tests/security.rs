//! The trust model (SECURITY.md), black-box with the real binary: Unix sockets (mode,
//! owner, symbolic links, files in the way, the directory's permissions), the warnings
//! (a listener reachable from other machines, running as root), `--uid` (groups, no way
//! back to root), and that no request variable chooses code, files or options, nor can
//! a client header pass for a variable of the front server. Runs as root for the
//! privilege tests (they say SKIPPED otherwise); the nginx ones fail in CI without nginx.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use protocol_tests::harness::*;
use serde_json::Value;

// ---------------------------------------------------------------------------------
// Helpers

fn security_app() -> PathBuf {
    root().join("protocol-tests/apps/security_app.py")
}

fn is_root() -> bool {
    // SAFETY: a plain system call.
    unsafe { libc::geteuid() == 0 }
}

/// postern serving the security app, not started; the caller adds the listeners.
fn command(app: &Path) -> Command {
    let mut cmd = Command::new(postern_bin());
    cmd.arg(app).env_remove("VIRTUAL_ENV").stdin(Stdio::null());
    cmd
}

/// The security app served over uwsgi, FastCGI and SCGI on Unix sockets in `dir`:
/// the process and the three socket paths.
fn on_three_sockets(dir: &Path) -> (Postern, PathBuf, PathBuf, PathBuf) {
    let app = security_app();
    let u = dir.join("u.sock");
    let f = dir.join("f.sock");
    let s = dir.join("s.sock");
    let mut cmd = command(&app);
    cmd.args(["--socket-mode", "666"])
        .args(["--uwsgi", &format!("unix:{}", u.display())])
        .args(["--fastcgi", &format!("unix:{}", f.display())])
        .args(["--scgi", &format!("unix:{}", s.display())]);
    let p = Postern::spawn(cmd, Addr::Unix(u.clone()), dir, None);
    (p, u, f, s)
}

/// Runs a postern that must fail to start; returns its stderr.
fn refused(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "postern started:\n{err}");
    assert_eq!(err.matches("cannot listen").count(), 1, "said once:\n{err}");
    err
}

/// `vars` as an SCGI netstring (`CONTENT_LENGTH` first), encoded here.
fn scgi_request(vars: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let len = body.len().to_string();
    let mut all: Vec<(&str, &str)> = vec![("CONTENT_LENGTH", &len), ("SCGI", "1")];
    all.extend(vars.iter().filter(|(k, _)| *k != "CONTENT_LENGTH"));
    let mut block = Vec::new();
    for (k, v) in all {
        block.extend_from_slice(k.as_bytes());
        block.push(0);
        block.extend_from_slice(v.as_bytes());
        block.push(0);
    }
    let mut out = format!("{}:", block.len()).into_bytes();
    out.extend_from_slice(&block);
    out.push(b',');
    out.extend_from_slice(body);
    out
}

/// The JSON body of a CGI-style response (FastCGI STDOUT, SCGI).
fn cgi_json(resp: &[u8]) -> Value {
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(resp)));
    let head = String::from_utf8_lossy(&resp[..split]);
    assert!(head.starts_with("Status: 200"), "{head}");
    serde_json::from_slice(&resp[split + 4..]).unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Proto {
    Uwsgi,
    FastCgi,
    Scgi,
}

/// Sends one request straight to the socket; returns the app's report.
fn ask(proto: Proto, addr: &Addr, vars: &[(&str, &str)], body: &[u8]) -> Value {
    match proto {
        Proto::Uwsgi => {
            let mut pkt = uwsgi_packet(vars);
            pkt.extend_from_slice(body);
            let resp = raw(addr, &pkt);
            parse_http(&resp)
                .unwrap_or_else(|| panic!("{:?}", String::from_utf8_lossy(&resp)))
                .json()
        }
        Proto::FastCgi => {
            let mut c = addr.connect().unwrap();
            c.write_all(&fcgi::request(1, false, vars, body)).unwrap();
            let reply = fcgi::read_reply(&mut *c, 1, &mut Vec::new());
            let (status, _, body) = reply.cgi();
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            serde_json::from_slice(&body).unwrap()
        }
        Proto::Scgi => cgi_json(&raw(addr, &scgi_request(vars, body))),
    }
}

fn env<'a>(report: &'a Value, key: &str) -> Option<&'a str> {
    report["environ"][key].as_str()
}

/// The fields of /proc/PID/status named `keys`, e.g. `Uid` → "65534 65534 65534 65534".
fn proc_status(pid: i32) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| {
            (
                k.to_owned(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect()
}

/// Lets `cmd` (postern, started as root, dropping to nobody with `--uid`) read the
/// Python installation when it lives under a directory other users cannot enter (this
/// machine's pyenv under /root, mode 0700): in a mount namespace of the child only, a
/// tmpfs (mode 0755) covers that directory and the installation is bound back at its
/// path. Nothing changes for any other process. Needs root (as `--uid` does).
/// postern serving a copy of the security app in `dir` (the repository may be where
/// nobody cannot read it), dropping to nobody.
fn as_nobody(dir: &Path) -> Command {
    let app = dir.join("security_app.py");
    std::fs::copy(security_app(), &app).unwrap();
    let mut cmd = command(&app);
    cmd.args(["--uid", "nobody"]);
    python_readable_by_nobody(&mut cmd, dir);
    cmd
}

fn python_readable_by_nobody(cmd: &mut Command, scratch: &Path) {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.base_prefix)"])
        .output()
        .unwrap();
    let prefix = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let mut ancestors: Vec<&Path> = prefix.ancestors().skip(1).collect();
    ancestors.reverse();
    let Some(closed) = ancestors
        .into_iter()
        .find(|a| std::fs::metadata(a).is_ok_and(|m| m.mode() & 0o001 == 0))
    else {
        return; // every user can reach it already (Debian's /usr)
    };
    let holder = scratch.join("python-holder");
    std::fs::create_dir_all(&holder).unwrap();
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // Everything the child needs is allocated here, before the fork.
    let chain: Vec<std::ffi::CString> = prefix
        .ancestors()
        .take_while(|a| *a != closed)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(c)
        .collect();
    let (prefix, holder, closed) = (c(&prefix), c(&holder), c(closed));
    let (slash, tmpfs, mode) = (
        c(Path::new("/")),
        c(Path::new("tmpfs")),
        c(Path::new("mode=0755")),
    );
    // SAFETY: only system calls (async-signal-safe) between fork and exec, on strings
    // made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let check = |r: libc::c_int| {
                if r == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            let none: *const libc::c_char = std::ptr::null();
            let no_data: *const libc::c_void = std::ptr::null();
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                none,
                slash.as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                no_data,
            ))?;
            check(libc::mount(
                prefix.as_ptr(),
                holder.as_ptr(),
                none,
                libc::MS_BIND | libc::MS_REC,
                no_data,
            ))?;
            check(libc::mount(
                tmpfs.as_ptr(),
                closed.as_ptr(),
                tmpfs.as_ptr(),
                0,
                mode.as_ptr().cast(),
            ))?;
            for dir in &chain {
                check(libc::mkdir(dir.as_ptr(), 0o755))?;
            }
            check(libc::mount(
                holder.as_ptr(),
                prefix.as_ptr(),
                none,
                libc::MS_BIND | libc::MS_REC,
                no_data,
            ))?;
            Ok(())
        });
    }
}

/// inotify on `dir`: every open or read of it or of a file in it, from now on.
struct Watch(i32);

impl Watch {
    fn new(dir: &Path) -> Watch {
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: plain system calls on a NUL-terminated path.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
            assert!(fd >= 0);
            let wd = libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_OPEN | libc::IN_ACCESS);
            assert!(wd >= 0, "{}", std::io::Error::last_os_error());
            Watch(fd)
        }
    }

    /// The names of the files opened or read since [`Watch::new`] ("." for the
    /// directory itself).
    fn touched(&self) -> Vec<String> {
        let mut buf = [0u8; 8192];
        let mut names = Vec::new();
        loop {
            // SAFETY: reading into a buffer we own, of its length.
            let n = unsafe { libc::read(self.0, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return names;
            }
            let mut at = 0;
            while at < n as usize {
                // struct inotify_event: wd i32, mask u32, cookie u32, len u32, name[len]
                let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
                let name = &buf[at + 16..at + 16 + len];
                let name = String::from_utf8_lossy(name)
                    .trim_end_matches('\0')
                    .to_owned();
                names.push(if name.is_empty() { ".".into() } else { name });
                at += 16 + len;
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.0) };
    }
}

// ---------------------------------------------------------------------------------
// Unix sockets

#[test]
fn unix_sockets_get_the_configured_mode_and_owner_else_the_umasks() {
    let dir = tempdir();
    let sock = dir.path().join("app.sock");
    let mut cmd = command(&security_app());
    cmd.arg("--uwsgi")
        .arg(format!("unix:{}", sock.display()))
        .args(["--socket-mode", "660"]);
    if is_root() {
        cmd.args(["--socket-owner", "nobody:65534"]);
    }
    let p = Postern::spawn(cmd, Addr::Unix(sock.clone()), dir.path(), None);
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o7777, 0o660);
    if is_root() {
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    }
    let mut p = p;
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(20).is_some_and(|s| s.success()), "{}", p.logs());
    assert!(!sock.exists());

    // No --socket-mode: 0777 minus the umask (here 027: the owner and its group).
    let sock = dir.path().join("default.sock");
    let mut cmd = command(&security_app());
    cmd.arg("--uwsgi").arg(format!("unix:{}", sock.display()));
    // SAFETY: umask(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o027);
            Ok(())
        });
    }
    let _p = Postern::spawn(cmd, Addr::Unix(sock.clone()), dir.path(), None);
    assert_eq!(
        std::fs::symlink_metadata(&sock).unwrap().mode() & 0o7777,
        0o750
    );
}

// regression (sec M4): with umask 000 and no --socket-mode the socket was born
// srwxrwxrwx, connectable by every local user, and nothing said so. A start warns, and
// --check says the same; an explicit --socket-mode 666 is the operator's choice: no
// warning.
#[test]
fn a_unix_socket_every_user_may_connect_to_by_the_umask_is_warned_about() {
    let dir = tempdir();
    let umask0 = |cmd: &mut Command| {
        // SAFETY: umask(2) is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
    };
    let said = "(from the umask, no --socket-mode): every local user can connect to it";
    let sock = dir.path().join("open.sock");
    let mut cmd = command(&security_app());
    cmd.arg("--uwsgi").arg(format!("unix:{}", sock.display()));
    umask0(&mut cmd);
    let p = Postern::spawn(cmd, Addr::Unix(sock.clone()), dir.path(), None);
    assert_eq!(
        std::fs::symlink_metadata(&sock).unwrap().mode() & 0o777,
        0o777
    );
    assert!(p.wait_log(said, 5), "{}", p.logs());
    assert!(p.logs().contains("mode 777"), "{}", p.logs());
    drop(p);
    // --check says it too.
    let mut cmd = command(&security_app());
    cmd.arg("--check")
        .arg("--uwsgi")
        .arg(format!("unix:{}", dir.path().join("check.sock").display()));
    umask0(&mut cmd);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains(said), "{stdout}");
    // Chosen on purpose: no warning.
    let sock = dir.path().join("chosen.sock");
    let mut cmd = command(&security_app());
    cmd.arg("--uwsgi")
        .arg(format!("unix:{}", sock.display()))
        .args(["--socket-mode", "666"]);
    umask0(&mut cmd);
    let p = Postern::spawn(cmd, Addr::Unix(sock), dir.path(), None);
    assert!(!p.logs().contains(said), "{}", p.logs());
}

#[test]
fn a_symlink_at_the_socket_path_is_refused_never_followed_or_replaced() {
    let dir = tempdir();
    let precious = dir.path().join("precious");
    std::fs::write(&precious, "keep").unwrap();
    std::fs::set_permissions(&precious, std::fs::Permissions::from_mode(0o600)).unwrap();
    let live = dir.path().join("live.sock");
    let _holder = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let targets = [
        precious.clone(),
        live.clone(),
        stale.clone(),
        dir.path().join("nothing-here"),
        dir.path().to_owned(),
    ];
    for (i, target) in targets.iter().enumerate() {
        let link = dir.path().join(format!("link{i}.sock"));
        std::os::unix::fs::symlink(target, &link).unwrap();
        let mut cmd = command(&security_app());
        cmd.arg("--uwsgi")
            .arg(format!("unix:{}", link.display()))
            .args(["--socket-mode", "666"]);
        let err = refused(cmd);
        assert!(
            err.contains(&format!(
                "cannot listen on unix:{}: {} exists and is not a socket (it is a symbolic link to {}; postern never follows one at the socket path); refusing to replace it",
                link.display(),
                link.display(),
                target.display()
            )),
            "{err}"
        );
        assert_eq!(&std::fs::read_link(&link).unwrap(), target, "replaced");
    }
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep");
    let meta = std::fs::metadata(&precious).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid()),
        (0o600, unsafe { libc::geteuid() })
    );
    assert!(
        live.exists() && stale.exists(),
        "a link's target was removed"
    );
    assert!(
        !dir.path().join("nothing-here").exists(),
        "created through the link"
    );
}

// See: sec's audit (HIGH): a root-started postern wrote its pid through a link planted at
// --pidfile (truncating the link's target) and appended its logs through one planted at
// --log-file/--access-log.
#[test]
fn a_link_another_user_planted_at_the_pidfile_or_a_log_is_never_written_through() {
    if !is_root() {
        eprintln!("SKIPPED: a link owned by another user needs root to make (lchown)");
        return;
    }
    let dir = tempdir();
    let d = dir.path();
    let victim = d.join("victim");
    std::fs::write(&victim, "keep").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let plant = |name: &str| {
        let link = d.join(name);
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
        link
    };
    let sock = d.join("u.sock");
    let listen = format!("unix:{}", sock.display());
    for opt in ["--log-file", "--access-log"] {
        let link = plant(&format!("planted{opt}"));
        let mut cmd = command(&security_app());
        cmd.args(["--uwsgi", &listen]).arg(opt).arg(&link);
        let errfile = d.join("stderr");
        cmd.stderr(std::fs::File::create(&errfile).unwrap());
        let mut child = cmd.spawn().unwrap();
        let status = wait_child(&mut child, 30);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let err = std::fs::read_to_string(&errfile).unwrap();
        assert_eq!(status.and_then(|s| s.code()), Some(1), "{opt}: {err}");
        assert!(
            err.contains(&format!(
                ": {} is a symbolic link owned by nobody (uid 65534), not by root or postern's user (uid 0); postern never follows a link another user could have planted",
                link.display()
            )),
            "{opt}: {err}"
        );
    }
    // The pidfile replaces the planted link; root's own link at --access-log and the
    // kernel's /dev/stderr at --log-file (a container's habit) are followed.
    let pidfile = plant("app.pid");
    let access = d.join("real-access.log");
    let access_link = d.join("access.log");
    std::os::unix::fs::symlink(&access, &access_link).unwrap();
    let mut cmd = command(&security_app());
    cmd.args(["--uwsgi", &listen])
        .arg("--pidfile")
        .arg(&pidfile)
        .arg("--access-log")
        .arg(&access_link)
        .args(["--log-file", "/dev/stderr"]);
    let p = Postern::spawn(cmd, Addr::Unix(sock), d, None);
    assert!(
        p.logs().contains("--pidfile was a symbolic link: replaced"),
        "{}",
        p.logs()
    );
    let meta = std::fs::symlink_metadata(&pidfile).unwrap();
    assert!(meta.file_type().is_file(), "{meta:?}");
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{}\n", p.pid())
    );
    p.get("/");
    assert!(wait_until(10, || std::fs::read_to_string(&access)
        .is_ok_and(|a| a.contains("GET"))));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    let meta = std::fs::metadata(&victim).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.len()), (0o600, 4));
}

#[test]
fn only_a_stale_socket_is_replaced() {
    let dir = tempdir();
    let file = dir.path().join("file");
    std::fs::write(&file, "keep").unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let live = dir.path().join("live.sock");
    let holder = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for (path, says) in [
        (
            &file,
            format!(
                "{} exists and is not a socket (it is a regular file)",
                file.display()
            ),
        ),
        (
            &sub,
            format!(
                "{} exists and is not a socket (it is a directory)",
                sub.display()
            ),
        ),
        (
            &fifo,
            format!(
                "{} exists and is not a socket (it is a FIFO)",
                fifo.display()
            ),
        ),
        (
            &live,
            "another server is still answering on this socket".into(),
        ),
    ] {
        let mut cmd = command(&security_app());
        cmd.arg("--fastcgi").arg(format!("unix:{}", path.display()));
        let err = refused(cmd);
        assert!(err.contains(&says), "{err}");
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    assert!(sub.is_dir());
    // The live socket is still the holder's: a connection reaches it.
    let _c = std::os::unix::net::UnixStream::connect(&live).unwrap();
    holder.set_nonblocking(true).unwrap();
    assert!(holder.accept().is_ok(), "the live socket was replaced");

    // Nobody listens on a stale one: replaced, and served.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let mut cmd = command(&security_app());
    cmd.arg("--uwsgi")
        .arg(format!("unix:{}", stale.display()))
        .args(["--socket-mode", "666"]);
    let p = Postern::spawn(cmd, Addr::Unix(stale.clone()), dir.path(), None);
    assert!(p
        .logs()
        .contains("removing a stale Unix socket left by an earlier run"));
    assert_eq!(p.get("/").0, 200);
}

#[test]
fn the_socket_directory_is_checked_with_a_clear_error() {
    let dir = tempdir();
    let cases: Vec<(PathBuf, String)> = {
        let missing = dir.path().join("missing");
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        vec![
            (
                missing.join("s.sock"),
                format!(
                    "the directory {} does not exist; create it",
                    missing.display()
                ),
            ),
            (
                file.join("s.sock"),
                format!("{} is not a directory", file.display()),
            ),
        ]
    };
    for (path, says) in &cases {
        let mut cmd = command(&security_app());
        cmd.arg("--uwsgi").arg(format!("unix:{}", path.display()));
        let err = refused(cmd);
        assert!(err.contains(says), "{err}");
        assert!(!path.exists());
    }
    // World-writable without the sticky bit (a Kubernetes emptyDir): warned about,
    // served. With it (as /tmp): others cannot remove or rename what is not theirs.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    for (mode, warned) in [(0o777, true), (0o1777, false)] {
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(mode)).unwrap();
        let sock = open.join(format!("{mode:o}.sock"));
        let mut cmd = command(&security_app());
        cmd.arg("--uwsgi")
            .arg(format!("unix:{}", sock.display()))
            .args(["--socket-mode", "666"]);
        let p = Postern::spawn(cmd, Addr::Unix(sock), dir.path(), None);
        assert_eq!(p.get("/").0, 200);
        let says = format!(
            "the socket's directory {} is writable by every user and has no sticky bit: anyone who can write there can replace the socket after the start and receive the requests",
            open.display()
        );
        assert_eq!(p.logs().contains(&says), warned, "{mode:o}: {}", p.logs());
    }

    // A directory this user may not write in.
    if !is_root() {
        eprintln!("SKIPPED (the unwritable directory part): needs root to start postern as nobody");
        return;
    }
    let mine = dir.path().join("root-only");
    std::fs::create_dir(&mine).unwrap();
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The binary as nobody can reach it (a copy when the build is under a closed
    // directory, e.g. /root).
    let mut bin = postern_bin();
    if bin
        .ancestors()
        .skip(1)
        .any(|a| std::fs::metadata(a).is_ok_and(|m| m.mode() & 0o001 == 0))
    {
        let copy = dir.path().join("postern");
        std::fs::copy(&bin, &copy).unwrap();
        bin = copy;
    }
    let as_nobody = |sock: &Path| {
        let mut cmd = Command::new(&bin);
        cmd.arg("app.py")
            .arg("--uwsgi")
            .arg(format!("unix:{}", sock.display()))
            .env_remove("VIRTUAL_ENV")
            .uid(65534)
            .gid(65534);
        refused(cmd)
    };
    let err = as_nobody(&mine.join("s.sock"));
    assert!(
        err.contains(&format!(
            "permission denied; postern (uid 65534) may not create files in {}",
            mine.display()
        )),
        "{err}"
    );
    // regression: a socket postern may not connect to was reported as "may not create
    // files in DIR" (the connect's EACCES read as bind's).
    // A socket root left in a shared directory (as /tmp), that nobody may not connect
    // to: whether it is stale is unknown, so it stays.
    let left = open.join("root.sock");
    drop(std::os::unix::net::UnixListener::bind(&left).unwrap());
    std::fs::set_permissions(&left, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = as_nobody(&left);
    assert!(
        err.contains(&format!(
            "{} is a socket postern (uid 65534) may not connect to, so whether a server still answers on it is unknown",
            left.display()
        )),
        "{err}"
    );
    assert!(left.exists());
    // regression: a stale socket of root's, in a sticky directory, that nobody may
    // connect to but not remove, was reported as "may not create files in DIR" (the
    // unlink's EPERM read as bind's).
    std::fs::set_permissions(&left, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = as_nobody(&left);
    assert!(
        err.contains(&format!(
            "{} is a stale socket of uid 0 that postern (uid 65534) may not remove",
            left.display()
        )),
        "{err}"
    );
    assert!(left.exists());
}

// regression: an abstract socket passed by systemd (`ListenStream=@name`) was dropped
// without a word, and postern served on the default 127.0.0.1:3031 instead.
#[test]
fn an_abstract_socket_passed_by_systemd_is_served() {
    use std::io::Read;
    use std::os::linux::net::SocketAddrExt;
    let dir = tempdir();
    let name = format!("postern-security-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    // --stats on a path: what the harness waits on.
    let stats = dir.path().join("st.sock");
    let cmd = socket_activated(
        fd,
        &format!(
            "{} --stats unix:{}",
            security_app().display(),
            stats.display()
        ),
    );
    let p = Postern::spawn(cmd, Addr::Unix(stats), dir.path(), None);
    let logs = p.logs();
    assert!(
        logs.contains(&format!("listening on unix:@{name} (uwsgi)")),
        "{logs}"
    );
    // regression: this looked for "3031" alone, which a timestamp can hold
    // ("03:20:20.303196Z"): the default address as it is written.
    assert!(!logs.contains("127.0.0.1:3031"), "{logs}");
    let mut c = std::os::unix::net::UnixStream::connect_addr(&addr).unwrap();
    c.write_all(&uwsgi_packet(&[
        ("REQUEST_METHOD", "GET"),
        ("PATH_INFO", "/"),
    ]))
    .unwrap();
    let mut resp = Vec::new();
    c.read_to_end(&mut resp).unwrap();
    let r = parse_http(&resp).unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(&resp)));
    assert_eq!(r.status, 200);
    drop(sock);
}

// regression (probe 393): LISTEN_FDS naming more fds than systemd passed made postern
// take its own log file's fd 3 for a passed one; it closed it as no socket, and its
// log lines went to whatever reused fd 3 ('cannot write to ...: Bad file descriptor').
#[test]
fn listen_fds_naming_fds_never_passed_leaves_postern_s_own_files_alone() {
    let dir = tempdir();
    let log = dir.path().join("own.log");
    let sock = dir.path().join("a.sock");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "LISTEN_PID=$$ exec {} {} --log-file {} --uwsgi unix:{}",
            postern_bin().display(),
            security_app().display(),
            log.display(),
            sock.display()
        ))
        .env_remove("VIRTUAL_ENV")
        .env("LISTEN_FDS", "2");
    let p = Postern::spawn(cmd, Addr::Unix(sock), dir.path(), Some(log));
    let (status, _) = p.get("/");
    assert_eq!(status, 200);
    let logs = p.logs();
    for fd in [3, 4] {
        let says = format!("LISTEN_FDS names fd {fd}, but it is not open; ignored");
        assert!(logs.contains(&says), "{logs}");
    }
    assert!(!logs.contains("systemd passed fd"), "{logs}");
    // The log file still takes lines after the listeners were taken (the harness
    // waited for `ready` in it: the base build's never came).
    assert!(logs.contains("INFO postern: ready"), "{logs}");
}

// regression: a socket directory owned by another user (one an attacker made in /tmp
// before the first start, say) passed without a word, though its owner can replace the
// socket after the start, sticky bit or not.
#[test]
fn a_socket_directory_of_another_user_is_warned_about_of_the_uid_user_not() {
    if !is_root() {
        eprintln!("SKIPPED: needs root (chown)");
        return;
    }
    let dir = tempdir();
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let says = format!(
        "the socket's directory {} belongs to uid 65534, who is neither root nor postern's user: that user can replace the socket after the start",
        theirs.display()
    );
    let sock = theirs.join("a.sock");
    let mut cmd = command(&security_app());
    cmd.args(["--uwsgi", &format!("unix:{}", sock.display())]);
    let p = Postern::spawn(cmd, Addr::Unix(sock.clone()), dir.path(), None);
    assert!(p.logs().contains(&says), "{}", p.logs());
    drop(p);
    // The user postern serves as (--uid) may own it.
    let sock = theirs.join("b.sock");
    let mut cmd = as_nobody(dir.path());
    cmd.args(["--uwsgi", &format!("unix:{}", sock.display())])
        .args(["--socket-mode", "666"]);
    let p = Postern::spawn(cmd, Addr::Unix(sock), dir.path(), None);
    assert!(!p.logs().contains("belongs to uid"), "{}", p.logs());
    // Root's own directories are no warning (the other tests' temp dirs).
    let sock = dir.path().join("c.sock");
    let mut cmd = command(&security_app());
    cmd.args(["--uwsgi", &format!("unix:{}", sock.display())]);
    let p = Postern::spawn(cmd, Addr::Unix(sock), dir.path(), None);
    assert!(!p.logs().contains("belongs to uid"), "{}", p.logs());
}

// regression: a single process stopped with a request still running (a second signal,
// or --graceful-timeout) left its --stats socket file behind: it exited before the
// clean-up.
#[test]
fn a_stop_that_cuts_requests_off_still_removes_the_socket_files() {
    let dir = tempdir();
    let sock = dir.path().join("u.sock");
    let stats = dir.path().join("st.sock");
    let mut cmd = command(&root().join("protocol-tests/apps/testapp.py"));
    cmd.args(["--uwsgi", &format!("unix:{}", sock.display())])
        .args(["--stats", &format!("unix:{}", stats.display())])
        .args(["--graceful-timeout", "1"]);
    let mut p = Postern::spawn(cmd, Addr::Unix(sock.clone()), dir.path(), None);
    assert!(stats.exists());
    let mark = dir.path().join("in-app");
    let query = format!("s=30&mark={}", mark.display());
    let mut c = Addr::Unix(sock.clone()).connect().unwrap();
    c.write_all(&uwsgi_packet(&[
        ("REQUEST_METHOD", "GET"),
        ("PATH_INFO", "/marked-sleep"),
        ("QUERY_STRING", &query),
    ]))
    .unwrap();
    assert!(
        wait_file(&mark, 30),
        "the request never reached the app: {}",
        p.logs()
    );
    p.signal(libc::SIGTERM);
    let status = p.wait_exit(30).expect("postern did not stop");
    assert_eq!(status.code(), Some(1), "{}", p.logs());
    assert!(
        p.logs().contains("stopped with requests cut off"),
        "{}",
        p.logs()
    );
    for f in [&sock, &stats] {
        assert!(!f.exists(), "{} left behind:\n{}", f.display(), p.logs());
    }
}

// ---------------------------------------------------------------------------------
// Warnings

#[test]
fn a_listener_other_machines_can_reach_is_warned_about_loopback_is_not() {
    let dir = tempdir();
    let (local, open) = (free_port(), free_port());
    let mut cmd = command(&security_app());
    cmd.args(["--uwsgi", &format!("127.0.0.1:{local}")])
        .args(["--scgi", &format!("[::1]:{}", free_port())])
        .args(["--fastcgi", &format!("0.0.0.0:{open}")])
        // A master and two workers: said once, not once per process.
        .args(["--workers", "2"]);
    let p = Postern::spawn(cmd, Addr::Tcp(local), dir.path(), None);
    let logs = p.logs();
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("reachable from other machines"))
        .collect();
    assert_eq!(warnings.len(), 1, "{logs}");
    assert!(warnings[0].contains(&format!("0.0.0.0:{open}")), "{logs}");
    assert!(
        warnings[0].contains("uwsgi/FastCGI/SCGI carry no authentication: anyone who can connect to it sends the request variables the app trusts (REMOTE_ADDR, HTTPS"),
        "{logs}"
    );
}

// regression: `[::ffff:127.0.0.1]:PORT` (IPv4 loopback written as IPv6) did not start
// ("Invalid argument"), and as --stats it was warned about as reachable.
#[test]
fn an_ipv4_mapped_loopback_address_is_served_and_not_warned_about() {
    let dir = tempdir();
    let port = free_port();
    let mut cmd = command(&security_app());
    cmd.args(["--uwsgi", &format!("[::ffff:127.0.0.1]:{port}")])
        .args(["--stats", &format!("[::ffff:127.0.0.1]:{}", free_port())]);
    let p = Postern::spawn(cmd, Addr::Tcp(port), dir.path(), None);
    assert_eq!(p.get("/").0, 200);
    let logs = p.logs();
    assert!(!logs.contains("reachable from other machines"), "{logs}");
    assert!(!logs.contains("non-loopback"), "{logs}");
}

#[test]
fn running_as_root_without_uid_is_warned_about() {
    if !is_root() {
        eprintln!("SKIPPED: needs root");
        return;
    }
    let dir = tempdir();
    let root = Spawn::unix(dir.path(), &security_app().to_string_lossy())
        .args(["--workers", "2"])
        .start();
    assert_eq!(root.logs().matches("running as root: the app, and anything a request can make it do, runs with every privilege; give --uid USER").count(), 1, "{}", root.logs());
    let sock = dir.path().join("u.sock");
    let mut cmd = as_nobody(dir.path());
    cmd.args(["--uwsgi", &format!("unix:{}", sock.display())])
        .args(["--socket-mode", "666"]);
    let mut dropped = Postern::spawn(cmd, Addr::Unix(sock.clone()), dir.path(), None);
    assert!(
        !dropped.logs().contains("running as root"),
        "{}",
        dropped.logs()
    );
    // regression: at the stop, nobody may not remove its socket from root's directory;
    // the warning said only "cannot remove the Unix socket file: Permission denied".
    dropped.signal(libc::SIGTERM);
    assert!(dropped.wait_exit(30).is_some(), "{}", dropped.logs());
    assert!(
        dropped.logs().contains("cannot remove the Unix socket file: postern's user (uid 65534) may not write in its directory; the next start removes it as a stale socket"),
        "{}",
        dropped.logs()
    );
    assert!(sock.exists());
    // And the next start does.
    let mut cmd = command(&security_app());
    cmd.args(["--uwsgi", &format!("unix:{}", sock.display())]);
    let next = Postern::spawn(cmd, Addr::Unix(sock), dir.path(), None);
    assert!(
        next.logs().contains("removing a stale Unix socket"),
        "{}",
        next.logs()
    );
    assert_eq!(next.get("/").0, 200);
}

// ---------------------------------------------------------------------------------
// --uid

#[test]
fn after_uid_the_workers_have_the_users_ids_no_capability_and_no_way_back() {
    if !is_root() {
        eprintln!("SKIPPED: needs root");
        return;
    }
    let dir = tempdir();
    // The user's own groups: nobody's primary group only (it is in no other).
    let sock = dir.path().join("u.sock");
    let mut cmd = as_nobody(dir.path());
    cmd.args(["--uwsgi", &format!("unix:{}", sock.display())])
        .args(["--socket-mode", "666", "--workers", "2"]);
    let p = Postern::spawn(cmd, Addr::Unix(sock), dir.path(), None);
    let resp = parse_http(&p.uwsgi(
        &[("REQUEST_METHOD", "GET"), ("PATH_INFO", "/regain-root")],
        b"",
    ))
    .unwrap()
    .json();
    let worker = resp["pid"].as_i64().unwrap() as i32;
    assert_ne!(worker, p.pid(), "answered by a worker");
    for name in [
        "setuid",
        "seteuid",
        "setresuid",
        "setgid",
        "setegid",
        "setgroups",
    ] {
        assert_eq!(resp[name], "PermissionError errno 1", "{name}: {resp}");
    }
    assert_eq!(resp["uid"], serde_json::json!([65534, 65534]), "{resp}");
    assert_eq!(resp["gid"], serde_json::json!([65534, 65534]), "{resp}");
    for pid in [p.pid(), worker] {
        let s = proc_status(pid);
        assert_eq!(s["Uid"], "65534 65534 65534 65534", "{pid}: {s:?}");
        assert_eq!(s["Gid"], "65534 65534 65534 65534", "{pid}: {s:?}");
        assert!(
            s["Groups"].is_empty() || s["Groups"] == "65534",
            "root's groups kept: {s:?}"
        );
        for cap in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
            assert_eq!(s[cap], "0000000000000000", "{pid} {cap}: {s:?}");
        }
    }
}

// ---------------------------------------------------------------------------------
// No request variable chooses code, files or options

const EVIL: &str = "import os\nopen(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'IMPORTED-' + __name__.replace('.', '-')), 'w').close()\ndef application(e, s):\n    s('200 OK', [])\n    return [b'evil']\nevil_app = application\n";

/// An app directory with evil.py beside the app (importable by name), and an `evil`
/// directory full of code a uWSGI would load (a script, a package, a pyhome's
/// sitecustomize); each writes a marker file next to its directory when imported.
struct Evil {
    dir: tempfile::TempDir,
}

impl Evil {
    fn new() -> Evil {
        let dir = tempdir();
        let app = dir.path().join("app");
        let evil = dir.path().join("app/evil");
        std::fs::create_dir_all(evil.join("lib/site-packages")).unwrap();
        std::fs::copy(security_app(), app.join("security_app.py")).unwrap();
        for f in [
            app.join("evil.py"),
            evil.join("evil.py"),
            evil.join("__init__.py"),
            evil.join("wsgi.py"),
            evil.join("lib/site-packages/sitecustomize.py"),
        ] {
            std::fs::write(f, EVIL).unwrap();
        }
        std::fs::write(evil.join("touch-me"), "").unwrap();
        Evil { dir }
    }

    fn app_dir(&self) -> PathBuf {
        self.dir.path().join("app")
    }

    fn evil_dir(&self) -> PathBuf {
        self.dir.path().join("app/evil")
    }

    /// uWSGI's magic variables (and their CGI cousin), all pointing at the evil code.
    fn vars(&self) -> Vec<(&'static str, String)> {
        let e = self.evil_dir().display().to_string();
        vec![
            ("UWSGI_FILE", format!("{e}/evil.py")),
            ("UWSGI_SCRIPT", "evil:evil_app".into()),
            ("UWSGI_MODULE", "evil".into()),
            ("UWSGI_CALLABLE", "evil_app".into()),
            ("UWSGI_CHDIR", e.clone()),
            ("UWSGI_SETENV", "EVIL=1".into()),
            ("UWSGI_PYHOME", e.clone()),
            ("UWSGI_APPID", "evil".into()),
            ("UWSGI_TOUCH_RELOAD", format!("{e}/touch-me")),
            ("UWSGI_PYTHONPATH", e.clone()),
            ("SCRIPT_FILENAME", format!("{e}/wsgi.py")),
        ]
    }

    /// The report shows the configured app, unchanged, with the variables as plain
    /// environ entries; nothing was imported or opened.
    fn assert_untouched(&self, report: &Value, watch: &Watch, how: &str) {
        assert_eq!(report["app"], "security_app", "{how}: {report}");
        for (k, v) in self.vars() {
            assert_eq!(
                env(report, k),
                Some(v.as_str()),
                "{how}: {k} as sent: {report}"
            );
        }
        assert_eq!(
            report["cwd"].as_str().map(PathBuf::from),
            Some(self.app_dir().canonicalize().unwrap()),
            "{how}: cwd"
        );
        assert!(
            report["os_environ"].get("EVIL").is_none(),
            "{how}: {report}"
        );
        assert!(
            !report["os_environ"]
                .as_object()
                .unwrap()
                .keys()
                .any(|k| k.starts_with("UWSGI")),
            "{how}: {report}"
        );
        assert_eq!(
            report["evil_modules"],
            serde_json::json!([]),
            "{how}: {report}"
        );
        let path = report["sys_path"].to_string();
        assert!(!path.contains("/evil"), "{how}: sys.path {path}");
        let markers: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .chain(std::fs::read_dir(self.app_dir()).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("IMPORTED-"))
            .collect();
        assert!(markers.is_empty(), "{how}: imported: {markers:?}");
        assert_eq!(
            watch.touched(),
            Vec::<String>::new(),
            "{how}: opened in the evil dir"
        );
    }
}

#[test]
fn uwsgi_magic_variables_are_plain_environ_entries_on_every_protocol() {
    let evil = Evil::new();
    let sock = |name: &str| evil.dir.path().join(format!("{name}.sock"));
    let app = evil.app_dir().join("security_app.py");
    let mut cmd = command(&app);
    // A master (it could reload), serving from the app's directory.
    cmd.current_dir(evil.app_dir())
        .args(["--socket-mode", "666", "--master"])
        .args(["--uwsgi", &format!("unix:{}", sock("u").display())])
        .args(["--fastcgi", &format!("unix:{}", sock("f").display())])
        .args(["--scgi", &format!("unix:{}", sock("s").display())]);
    let p = Postern::spawn(cmd, Addr::Unix(sock("u")), evil.dir.path(), None);
    let watch = Watch::new(&evil.evil_dir());
    let magic = evil.vars();
    let mut vars: Vec<(&str, &str)> = vec![
        ("REQUEST_METHOD", "POST"),
        ("PATH_INFO", "/"),
        ("SERVER_NAME", "localhost"),
        ("SERVER_PORT", "80"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("CONTENT_LENGTH", "4"),
    ];
    vars.extend(magic.iter().map(|(k, v)| (*k, v.as_str())));
    for (proto, addr) in [
        (Proto::Uwsgi, Addr::Unix(sock("u"))),
        (Proto::FastCgi, Addr::Unix(sock("f"))),
        (Proto::Scgi, Addr::Unix(sock("s"))),
    ] {
        let report = ask(proto, &addr, &vars, b"body");
        assert_eq!(report["body"], "body", "{proto:?}");
        evil.assert_untouched(&report, &watch, &format!("{proto:?}"));
    }
    // The touch-reload file named by a request is not watched: touched, and given
    // longer than --touch-reload's mtime poll (200 ms) to act, the same worker answers.
    let before = ask(Proto::Uwsgi, &Addr::Unix(sock("u")), &vars, b"body")["pid"].clone();
    std::fs::write(evil.evil_dir().join("touch-me"), "now").unwrap();
    let _ = watch.touched();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let report = ask(Proto::Uwsgi, &Addr::Unix(sock("u")), &vars, b"body");
    evil.assert_untouched(&report, &watch, "after touching UWSGI_TOUCH_RELOAD's file");
    assert_eq!(
        report["pid"],
        before,
        "the worker was replaced: {}",
        p.logs()
    );
    assert!(!p.logs().contains("reload"), "{}", p.logs());
    // The watch does see an open in the evil directory.
    std::fs::read(evil.evil_dir().join("evil.py")).unwrap();
    assert!(watch.touched().contains(&"evil.py".to_owned()));
}

#[test]
fn uwsgi_magic_variables_from_nginx_params_are_plain_environ_entries() {
    let Some(nginx) = nginx_bin() else { return };
    let evil = Evil::new();
    let app = evil.app_dir().join("security_app.py");
    let u = evil.dir.path().join("u.sock");
    let f = evil.dir.path().join("f.sock");
    let mut cmd = command(&app);
    cmd.current_dir(evil.app_dir())
        .args(["--socket-mode", "666"])
        .args(["--uwsgi", &format!("unix:{}", u.display())])
        .args(["--fastcgi", &format!("unix:{}", f.display())]);
    let _p = Postern::spawn(cmd, Addr::Unix(u.clone()), evil.dir.path(), None);
    let params = |directive: &str| -> String {
        evil.vars()
            .iter()
            .map(|(k, v)| format!("{directive} {k} {v};\n"))
            .collect()
    };
    let uwsgi = uwsgi_location(&format!("unix:{}", u.display())).replacen(
        "location / {",
        &format!("location / {{\n{}", params("uwsgi_param")),
        1,
    );
    let fastcgi = fastcgi_location(&format!("unix:{}", f.display()), &params("fastcgi_param"))
        .replacen("location / {", "location /fcgi/ {", 1);
    let n = Nginx::start(&nginx, evil.dir.path(), &format!("{uwsgi}\n{fastcgi}"));
    let watch = Watch::new(&evil.evil_dir());
    for target in ["/", "/fcgi/"] {
        let r = n.request("POST", target, &[], b"body");
        assert_eq!(r.status, 200, "{target}: {}\n{}", r.text(), n.error_log());
        let report = r.json();
        assert_eq!(report["body"], "body");
        evil.assert_untouched(&report, &watch, &format!("nginx {target}"));
    }
}

/// What a client sends as headers, trying to pass for the front server's variables.
const SMUGGLED: &[(&str, &str)] = &[
    ("Remote-Addr", "6.6.6.6"),
    ("Https", "on"),
    ("Script-Name", "/evil"),
    ("Path-Info", "/evil"),
    ("Request-Method", "DELETE"),
    ("Uwsgi-Scheme", "https"),
    ("Request-Scheme", "https"),
    ("Server-Name", "evil.example"),
    ("X-Forwarded-Proto", "https"),
    // nginx drops a header with an underscore (underscores_in_headers off).
    ("Remote_Addr", "7.7.7.7"),
];

fn assert_not_smuggled(report: &Value, how: &str) {
    assert_eq!(
        env(report, "REMOTE_ADDR"),
        Some("127.0.0.1"),
        "{how}: {report}"
    );
    assert_eq!(env(report, "HTTPS"), None, "{how}: {report}");
    assert_eq!(env(report, "SCRIPT_NAME"), Some(""), "{how}: {report}");
    assert_eq!(env(report, "REQUEST_METHOD"), Some("GET"), "{how}");
    assert_eq!(env(report, "SERVER_NAME"), Some("localhost"), "{how}");
    assert_eq!(report["url_scheme"], "http", "{how}: {report}");
    assert_eq!(
        env(report, "HTTP_REMOTE_ADDR"),
        Some("6.6.6.6"),
        "{how}: {report}"
    );
    assert_eq!(env(report, "HTTP_HTTPS"), Some("on"), "{how}");
    assert_eq!(env(report, "HTTP_SCRIPT_NAME"), Some("/evil"), "{how}");
    assert_eq!(env(report, "HTTP_UWSGI_SCHEME"), Some("https"), "{how}");
    assert_eq!(
        env(report, "HTTP_X_FORWARDED_PROTO"),
        Some("https"),
        "{how}"
    );
}

#[test]
fn a_client_header_never_becomes_a_front_server_variable_through_nginx() {
    let Some(nginx) = nginx_bin() else { return };
    let dir = tempdir();
    let app = security_app().to_string_lossy().into_owned();
    let u = Spawn::unix(dir.path(), &app).start();
    let f = Spawn::unix(dir.path(), &app).protocol("fastcgi").start();
    let s = Spawn::unix(dir.path(), &app).protocol("scgi").start();
    // SCGI: the variables nginx's stock scgi_params sends that matter here.
    let scgi = format!(
        "location /s/ {{ scgi_param REQUEST_METHOD $request_method; scgi_param REMOTE_ADDR $remote_addr; scgi_param SERVER_NAME $server_name; scgi_param SERVER_PORT $server_port; scgi_param SERVER_PROTOCOL $server_protocol; scgi_param QUERY_STRING $query_string; scgi_param PATH_INFO $document_uri; scgi_pass {}; }}",
        s.addr.nginx()
    );
    let n = Nginx::start(
        &nginx,
        dir.path(),
        &format!(
            "{}\n{}\n{scgi}",
            uwsgi_location(&u.addr.nginx()),
            fastcgi_location(&f.addr.nginx(), "").replacen("location / {", "location /f/ {", 1)
        ),
    );
    for target in ["/", "/s/"] {
        let r = n.request("GET", target, SMUGGLED, b"");
        assert_eq!(r.status, 200, "{target}: {}\n{}", r.text(), n.error_log());
        let report = r.json();
        assert_not_smuggled(&report, target);
        assert!(
            report["environ"]
                .as_object()
                .unwrap()
                .values()
                .all(|v| v != "7.7.7.7"),
            "{target}: a header with an underscore went through: {report}"
        );
    }
    // FastCGI: nginx's stock params send SCRIPT_NAME = the path (postern makes it PATH_INFO).
    let r = n.request("GET", "/f/", SMUGGLED, b"");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), n.error_log());
    let report = r.json();
    assert_eq!(env(&report, "PATH_INFO"), Some("/f/"), "{report}");
    let mut report = report;
    report["environ"]["SCRIPT_NAME"] = "".into();
    assert_not_smuggled(&report, "fastcgi");
}

#[test]
fn an_http_variable_never_overrides_a_cgi_variable_on_the_socket() {
    let dir = tempdir();
    let (_p, u, f, s) = on_three_sockets(dir.path());
    let cgi: &[(&str, &str)] = &[
        ("REQUEST_METHOD", "GET"),
        ("PATH_INFO", "/"),
        ("SCRIPT_NAME", ""),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("SERVER_NAME", "localhost"),
        ("SERVER_PORT", "80"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("CONTENT_LENGTH", "4"),
    ];
    let http: &[(&str, &str)] = &[
        ("HTTP_REMOTE_ADDR", "6.6.6.6"),
        ("HTTP_HTTPS", "on"),
        ("HTTP_SCRIPT_NAME", "/evil"),
        ("HTTP_PATH_INFO", "/evil"),
        ("HTTP_REQUEST_METHOD", "DELETE"),
        ("HTTP_UWSGI_SCHEME", "https"),
        ("HTTP_SERVER_NAME", "evil.example"),
        ("HTTP_X_FORWARDED_PROTO", "https"),
        ("HTTP_CONTENT_LENGTH", "2"),
    ];
    for (proto, addr) in [
        (Proto::Uwsgi, Addr::Unix(u.clone())),
        (Proto::FastCgi, Addr::Unix(f.clone())),
        (Proto::Scgi, Addr::Unix(s.clone())),
    ] {
        // The HTTP_ forms before and after the CGI ones: neither order lets them win.
        for http_first in [true, false] {
            let vars: Vec<(&str, &str)> = if http_first {
                http.iter().chain(cgi).copied().collect()
            } else {
                cgi.iter().chain(http).copied().collect()
            };
            let how = format!("{proto:?}, HTTP_ first: {http_first}");
            let report = ask(proto, &addr, &vars, b"body");
            assert_not_smuggled(&report, &how);
            assert_eq!(env(&report, "PATH_INFO"), Some("/"), "{how}");
            assert_eq!(env(&report, "CONTENT_LENGTH"), Some("4"), "{how}: {report}");
            assert_eq!(
                report["body"], "body",
                "{how}: the body's length is CONTENT_LENGTH's"
            );
            assert_eq!(env(&report, "HTTP_CONTENT_LENGTH"), None, "{how}: {report}");
        }
    }
}

#[test]
fn a_request_variable_never_replaces_posterns_own_entries() {
    let dir = tempdir();
    let (_p, u, f, s) = on_three_sockets(dir.path());
    let vars: &[(&str, &str)] = &[
        ("REQUEST_METHOD", "POST"),
        ("PATH_INFO", "/"),
        ("SERVER_NAME", "localhost"),
        ("SERVER_PORT", "80"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("CONTENT_LENGTH", "4"),
        ("wsgi.url_scheme", "https"),
        ("wsgi.input", "evil"),
        ("wsgi.errors", "evil"),
        ("wsgi.multithread", "evil"),
        ("postern.request_id", "evil"),
    ];
    for (proto, addr) in [
        (Proto::Uwsgi, Addr::Unix(u.clone())),
        (Proto::FastCgi, Addr::Unix(f.clone())),
        (Proto::Scgi, Addr::Unix(s.clone())),
    ] {
        let report = ask(proto, &addr, vars, b"body");
        assert_eq!(report["url_scheme"], "http", "{proto:?}: {report}");
        assert_eq!(report["body"], "body", "{proto:?}: wsgi.input");
        let environ = report["environ"].as_object().unwrap();
        for (k, v) in environ {
            assert!(
                v != "evil" && !(k == "wsgi.url_scheme" && v == "https"),
                "{proto:?}: {k} = {v}"
            );
        }
        assert_ne!(
            env(&report, "postern.request_id"),
            Some("evil"),
            "{proto:?}"
        );
    }
}

#[test]
fn a_variable_sent_twice_counts_once_the_last_on_every_protocol() {
    let dir = tempdir();
    let (_p, u, f, s) = on_three_sockets(dir.path());
    let vars: &[(&str, &str)] = &[
        ("REQUEST_METHOD", "POST"),
        ("PATH_INFO", "/"),
        ("SERVER_NAME", "localhost"),
        ("SERVER_PORT", "80"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("CONTENT_LENGTH", "4"),
        ("REMOTE_ADDR", "10.0.0.1"),
        ("HTTPS", "on"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("HTTPS", "off"),
        // nginx's stock params send CONTENT_TYPE "" for a request without one: that
        // counts as absent, and the client's Content-Type (the same header) stands in.
        ("CONTENT_TYPE", ""),
        ("HTTP_CONTENT_TYPE", "text/plain"),
    ];
    for (proto, addr) in [
        (Proto::Uwsgi, Addr::Unix(u.clone())),
        (Proto::FastCgi, Addr::Unix(f.clone())),
        (Proto::Scgi, Addr::Unix(s.clone())),
    ] {
        let report = ask(proto, &addr, vars, b"body");
        assert_eq!(
            env(&report, "REMOTE_ADDR"),
            Some("127.0.0.1"),
            "{proto:?}: {report}"
        );
        assert_eq!(env(&report, "HTTPS"), Some("off"), "{proto:?}: {report}");
        assert_eq!(report["url_scheme"], "http", "{proto:?}: {report}");
        assert_eq!(
            env(&report, "CONTENT_TYPE"),
            Some("text/plain"),
            "{proto:?}"
        );
        assert_eq!(report["body"], "body", "{proto:?}");
        // A non-empty CONTENT_TYPE wins over HTTP_CONTENT_TYPE, in either order.
        for both in [
            [
                ("CONTENT_TYPE", "text/good"),
                ("HTTP_CONTENT_TYPE", "text/evil"),
            ],
            [
                ("HTTP_CONTENT_TYPE", "text/evil"),
                ("CONTENT_TYPE", "text/good"),
            ],
        ] {
            let mut v = vars[..6].to_vec();
            v.extend(both);
            let report = ask(proto, &addr, &v, b"body");
            assert_eq!(
                env(&report, "CONTENT_TYPE"),
                Some("text/good"),
                "{proto:?}: {report}"
            );
        }
    }
}

/// The status postern answers `vars` (in this order, CONTENT_LENGTH included as given)
/// and `body` with, straight on the socket; `None`: closed without an answer.
fn status_of(proto: Proto, addr: &Addr, vars: &[(&str, &str)], body: &[u8]) -> Option<u16> {
    let cgi_status = |resp: &[u8]| {
        let head = String::from_utf8_lossy(resp);
        head.strip_prefix("Status: ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
    };
    match proto {
        Proto::Uwsgi => {
            let mut pkt = uwsgi_packet(vars);
            pkt.extend_from_slice(body);
            parse_http(&raw(addr, &pkt)).map(|r| r.status)
        }
        Proto::FastCgi => {
            let mut c = addr.connect().unwrap();
            c.write_all(&fcgi::request(1, false, vars, body)).unwrap();
            fcgi::status(&mut *c)
        }
        Proto::Scgi => {
            let mut block = Vec::new();
            for (k, v) in vars {
                for part in [k, v] {
                    block.extend_from_slice(part.as_bytes());
                    block.push(0);
                }
            }
            let mut out = format!("{}:", block.len()).into_bytes();
            out.extend_from_slice(&block);
            out.push(b',');
            out.extend_from_slice(body);
            cgi_status(&raw(addr, &out))
        }
    }
}

// regression (sec M1): CONTENT_LENGTH "5" and "" in one request was no body over uwsgi
// (the last won: the 5 bytes dropped), a body of 5 over FastCGI (in either order) and a
// 400 over SCGI. One rule now (proto::cgi::content_length_again): a repeat with another
// value, empty included, is refused on all three, with a 400 and a log line naming the
// peer and the reason; the app is not called.
#[test]
fn a_content_length_repeated_empty_is_refused_on_every_protocol() {
    let dir = tempdir();
    let (p, u, f, s) = on_three_sockets(dir.path());
    let head = [
        ("REQUEST_METHOD", "POST"),
        ("PATH_INFO", "/"),
        ("SERVER_NAME", "localhost"),
        ("SERVER_PORT", "80"),
    ];
    for (proto, addr) in [
        (Proto::Uwsgi, Addr::Unix(u)),
        (Proto::FastCgi, Addr::Unix(f)),
        (Proto::Scgi, Addr::Unix(s)),
    ] {
        // SCGI wants a non-empty CONTENT_LENGTH first: "" first is refused as no length.
        for lengths in [["5", ""], ["", "5"]] {
            let mut vars = vec![("CONTENT_LENGTH", lengths[0])];
            vars.extend(head);
            vars.push(("CONTENT_LENGTH", lengths[1]));
            let got = status_of(proto, &addr, &vars, b"hello");
            assert_eq!(got, Some(400), "{proto:?} {lengths:?}\n{}", p.logs());
        }
        // The same value twice, empty or not, is one length: served.
        for (same, body) in [("5", &b"hello"[..]), ("", b"")] {
            if matches!(proto, Proto::Scgi) && same.is_empty() {
                continue;
            }
            let mut vars = vec![("CONTENT_LENGTH", same)];
            vars.extend(head);
            vars.push(("CONTENT_LENGTH", same));
            let got = status_of(proto, &addr, &vars, body);
            assert_eq!(got, Some(200), "{proto:?} {same:?}\n{}", p.logs());
        }
    }
    let said = r#"CONTENT_LENGTH sent twice with different values ("5", then "")"#;
    assert!(p.wait_log_count(said, 3, 5), "{}", p.logs());
    let said = r#"("", then "5")"#;
    assert!(p.wait_log_count(said, 2, 5), "{}", p.logs());
    for line in p.logs().lines().filter(|l| l.contains("sent twice")) {
        assert!(line.contains("peer="), "{line}");
    }
}

// regression (sec M2): a CONTENT_LENGTH from 2^63 up to 19 nines was taken (19 digits fit
// a u64): uwsgi and SCGI waited for that body, and FastCGI (whose app runs while STDIN
// still streams) called the app, whose wsgi.input.read(int(CONTENT_LENGTH)) raised
// OverflowError: a 500. Past 2^63 - 1 it is no length (as SECURITY.md says): 400 on
// all three, before the app, with a log line naming the peer and the value.
#[test]
fn a_content_length_past_2_pow_63_is_refused_on_every_protocol() {
    let dir = tempdir();
    let (p, u, f, s) = on_three_sockets(dir.path());
    for cl in ["9223372036854775808", "9999999999999999999"] {
        let vars = [
            ("CONTENT_LENGTH", cl),
            ("REQUEST_METHOD", "POST"),
            ("PATH_INFO", "/"),
        ];
        for (proto, addr) in [
            (Proto::Uwsgi, Addr::Unix(u.clone())),
            (Proto::Scgi, Addr::Unix(s.clone())),
        ] {
            let got = status_of(proto, &addr, &vars, b"hello");
            assert_eq!(got, Some(400), "{proto:?} {cl}\n{}", p.logs());
        }
        // FastCGI: STDIN begun, not ended (the body still "coming").
        let mut c = Addr::Unix(f.clone()).connect().unwrap();
        let mut req = fcgi::head(1, false, &vars);
        req.extend(fcgi::record(fcgi::STDIN, 1, b"hello"));
        c.write_all(&req).unwrap();
        assert_eq!(fcgi::status(&mut *c), Some(400), "{cl}\n{}", p.logs());
        let said = format!("CONTENT_LENGTH \"{cl}\" is not a valid length");
        assert!(p.wait_log_count(&said, 3, 5), "{cl}\n{}", p.logs());
    }
    for line in p
        .logs()
        .lines()
        .filter(|l| l.contains("is not a valid length"))
    {
        assert!(line.contains("peer="), "{line}");
    }
    // 2^63 - 1 is a length (no body that long comes: the app is not called here).
    let max = [
        ("CONTENT_LENGTH", "9223372036854775807"),
        ("REQUEST_METHOD", "POST"),
        ("PATH_INFO", "/"),
    ];
    // One byte, then the end: a body cut short (an end before any byte is no body
    // passed, which the app would be called for).
    let mut c = Addr::Unix(f).connect().unwrap();
    let mut req = fcgi::head(1, false, &max);
    req.extend(fcgi::record(fcgi::STDIN, 1, b"x"));
    req.extend(fcgi::record(fcgi::STDIN, 1, b""));
    c.write_all(&req).unwrap();
    assert_eq!(fcgi::status(&mut *c), Some(400), "{}", p.logs());
    assert!(
        p.wait_log("STDIN ended before CONTENT_LENGTH bytes", 5),
        "{}",
        p.logs()
    );
}

// regression: --check printed none of the warnings a start logs (a listener on 0.0.0.0,
// root without --uid, a world-writable socket directory): it runs before the log is set
// up, and they went nowhere.
#[test]
fn check_prints_the_warnings_a_start_would_log() {
    let dir = tempdir();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let sock = open.join("c.sock");
    let out = command(&security_app())
        .arg("--check")
        .args(["--uwsgi", &format!("0.0.0.0:{}", free_port())])
        .args(["--fastcgi", &format!("unix:{}", sock.display())])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("reachable from other machines"), "{stdout}");
    assert!(stdout.contains("has no sticky bit"), "{stdout}");
    assert_eq!(stdout.contains("running as root"), is_root(), "{stdout}");
    assert!(!sock.exists());
    let quiet = command(&security_app())
        .arg("--check")
        .args(["--uwsgi", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&quiet.stdout);
    assert!(quiet.status.success(), "{stdout}");
    assert!(!stdout.contains("reachable"), "{stdout}");
}
