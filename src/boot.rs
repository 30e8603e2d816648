//! Starting the app as the configuration says: the listeners a start uses, the
//! environment and working directory for the app, the embedded Python (with the venv),
//! `sys.path`, the import. Used by the single process, each worker (or the master with
//! `--preload`), and `--check`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::asgi::detect::{self, Interface};
use crate::codec::Protocol;
use crate::config::{Config, KeyValue};
use crate::server::listener::{ListenAddr, SocketOptions};
use crate::wsgi::{self, interpreter};

/// One listener a start uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub protocol: Protocol,
    pub addr: ListenAddr,
    /// systemd passed a socket for it (LISTEN_FDS): used as it is, never bound.
    pub inherited: bool,
    /// Passed by systemd, while the listeners configured name other addresses: served
    /// as uwsgi, the default ([`warn_unmatched_passed`]).
    pub unmatched: bool,
}

/// The listeners a start uses, given the addresses of the sockets systemd passed: each
/// configured listener (systemd's socket when it passed one for that address), then
/// every other socket systemd passed (speaking uwsgi). With no listener configured,
/// systemd's sockets replace the default one. `--check` reports this same list.
pub fn listeners(config: &Config, inherited: &[ListenAddr]) -> Vec<Planned> {
    let configured: &[(Protocol, ListenAddr)] = if config.default_listener && !inherited.is_empty()
    {
        &[]
    } else {
        &config.listeners
    };
    let mut plan: Vec<Planned> = configured
        .iter()
        .map(|(protocol, addr)| Planned {
            protocol: *protocol,
            addr: addr.clone(),
            inherited: inherited.contains(addr),
            unmatched: false,
        })
        .collect();
    for addr in inherited {
        if !configured.iter().any(|(_, a)| a == addr) {
            plan.push(Planned {
                protocol: Protocol::default(),
                addr: addr.clone(),
                inherited: true,
                unmatched: !configured.is_empty(),
            });
        }
    }
    plan
}

/// One warning for each socket systemd passed that no configured listener names (the
/// socket unit's `ListenStream=` and the service's `--fastcgi …` disagree, a typo in a
/// path): it is served as uwsgi, the default, so a front server that speaks FastCGI or
/// SCGI to it gets nothing it can read (502), and nothing else would say why.
/// regression (probe 427, MEDIUM): only an INFO line for the one that matched.
pub fn warn_unmatched_passed(plan: &[Planned]) {
    let configured: Vec<String> = plan
        .iter()
        .filter(|p| !p.unmatched)
        .map(|p| format!("--{} {}", p.protocol.name(), p.addr))
        .collect();
    // The example names the protocol configured (one for all), else FastCGI's.
    let mut protocols = plan.iter().filter(|p| !p.unmatched).map(|p| p.protocol);
    let example = match protocols.next() {
        Some(first) if protocols.all(|p| p == first) => first.name(),
        _ => Protocol::FastCgi.name(),
    };
    for p in plan.iter().filter(|p| p.unmatched) {
        tracing::warn!(
            listener = %p.addr,
            "systemd passed the socket {} (LISTEN_FDS), but no listener configured has that address ({}): it is served as uwsgi, the default; if the front server speaks another protocol to it, or the address is a typo, give that socket's own address with its protocol (e.g. --{example} {}), or make the socket unit's ListenStream= the address configured",
            p.addr,
            configured.join(", "),
            p.addr,
        );
    }
}

/// `--socket-mode`, `--socket-owner` and `--listen-backlog`, for binding the listeners.
pub fn socket_options(config: &Config) -> SocketOptions {
    SocketOptions {
        mode: config.opts.socket_mode.map(|m| m.0),
        owner: config.socket_owner,
        backlog: config.opts.listen_backlog,
        uid: config.uid,
    }
}

/// `--env` and `--chdir`, then the cap on malloc's arenas (`cap_malloc_arenas`).
/// Call while the process is single-threaded (no other thread reads the environment
/// yet, and no worker thread has taken an arena). Returns the `--chdir` directory as
/// an absolute path with its symlinks kept (a relative one joined to the start
/// directory), for [`enter_app_dir`].
pub fn apply_env_and_chdir(config: &Config) -> anyhow::Result<Option<PathBuf>> {
    let _ = INHERITED.set(
        config
            .opts
            .env
            .iter()
            .map(|KeyValue(k, _)| (k.clone(), std::env::var_os(k)))
            .collect(),
    );
    for KeyValue(k, v) in &config.opts.env {
        std::env::set_var(k, v);
    }
    let dir = match &config.opts.chdir {
        Some(dir) => {
            // From the start directory by its logical path: a reload's workers enter it
            // again by this path (see `enter_app_dir`).
            let abs = crate::config::from_start_dir(dir);
            // regression (probe 401): the error did not say which file set it, where
            // --venv's does.
            enter_app_dir(&abs, config.chdir_source.as_deref())?;
            Some(abs)
        }
        None => None,
    };
    cap_malloc_arenas(
        std::env::var("MALLOC_ARENA_MAX").ok().as_deref(),
        std::env::var("GLIBC_TUNABLES").ok().as_deref(),
    );
    Ok(dir)
}

/// The values the variables of the start's `--env` had before the master set them
/// (`None`: not set), for a reload that drops one of them ([`apply_env_changes`]).
static INHERITED: std::sync::OnceLock<Vec<(String, Option<std::ffi::OsString>)>> =
    std::sync::OnceLock::new();

/// A worker of a reload whose `--env` differs from the start's: its variables are set,
/// and those the start set that it no longer has go back to what postern inherited
/// (removed if it had none), in `os.environ` (which calls putenv too), before the
/// import. The master set the start's in its own environment before Python started,
/// and Python copies the environment into `os.environ` once, when it starts: the change
/// goes through it. Variables Python itself reads at its start (`PYTHON*`), and
/// `MALLOC_ARENA_MAX`/`GLIBC_TUNABLES` (the master caps malloc's arenas at its start),
/// keep the start's effect.
/// regression: a variable dropped from [env] was removed, though postern had inherited
/// it (systemd's `Environment=`, the shell's): the new workers ran without it.
pub fn apply_env_changes(start: &[KeyValue], now: &[KeyValue]) -> anyhow::Result<()> {
    if start == now {
        return Ok(());
    }
    pyo3::Python::attach(|py| -> pyo3::PyResult<()> {
        use pyo3::types::PyAnyMethods as _;
        use std::os::unix::ffi::OsStrExt as _;
        let os = py.import("os")?;
        let environ = os.getattr("environ")?;
        // Bytes: an inherited value need not be UTF-8 (environb shares environ's data).
        let environb = os.getattr("environb")?;
        let inherited = INHERITED.get().map(Vec::as_slice).unwrap_or_default();
        for KeyValue(k, _) in start {
            if now.iter().any(|KeyValue(n, _)| n == k) {
                continue;
            }
            match inherited
                .iter()
                .find(|(n, _)| n == k)
                .and_then(|(_, v)| v.as_ref())
            {
                Some(v) => environb.set_item(
                    pyo3::types::PyBytes::new(py, k.as_bytes()),
                    pyo3::types::PyBytes::new(py, v.as_bytes()),
                )?,
                None => {
                    environ.call_method1("pop", (k, py.None()))?;
                }
            }
        }
        for KeyValue(k, v) in now {
            environ.set_item(k, v)?;
        }
        // The time module read TZ as the master started Python: it reads it again.
        // regression (review 387): a reload said `env (TZ changed)` applied, and the
        // new workers' time.strftime('%Z') kept the start's zone.
        let tz = |env: &[KeyValue]| {
            env.iter()
                .find(|KeyValue(k, _)| k == "TZ")
                .map(|KeyValue(_, v)| v.clone())
        };
        if tz(start) != tz(now) {
            py.import("time")?.call_method0("tzset")?;
        }
        Ok(())
    })
    .map_err(|e| anyhow::anyhow!("setting the reload's --env in the new worker: {e}"))
}

/// Changes to the `--chdir` directory by its path as configured. A worker that imports
/// the app calls it again before its import: the master's working directory is the
/// directory the path led to at start, and a symlink on the path switched since (a
/// Capistrano-style `current -> releases/N`) must lead a reload to the new release.
/// `from`: where the value was set when not on the command line (said in the error).
pub fn enter_app_dir(dir: &Path, from: Option<&str>) -> anyhow::Result<()> {
    std::env::set_current_dir(dir).with_context(|| match from {
        Some(from) => format!("--chdir {} (from {from})", dir.display()),
        None => format!("--chdir {}", dir.display()),
    })
}

/// glibc malloc arenas a postern process uses unless told otherwise.
///
/// glibc gives a thread that finds the arenas busy an arena of its own, up to 8 per
/// core, and memory freed in an arena stays there for that arena's later use, so a
/// worker's RSS grows with `--threads` under load. Measured, one worker under 64 KiB
/// and 1 MB uploads at once on 2 cores: `--threads 16`, 68-83 MiB under load -> 44 MiB;
/// `--threads 8`, 39-52 -> 36-37 MiB; no fewer requests a second, no more instructions
/// per request (benches/instructions.py hello, upload).
const MALLOC_ARENAS: i32 = 2;

/// Caps glibc's malloc arenas (`mallopt(M_ARENA_MAX)`) as [`arena_cap`] says, before
/// any worker thread starts (a fork keeps the setting).
fn cap_malloc_arenas(arena_max: Option<&str>, tunables: Option<&str>) {
    let Some(cap) = arena_cap(arena_max, tunables) else {
        return;
    };
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt sets one of malloc's parameters under its own lock; any
        // positive value is valid for M_ARENA_MAX.
        let set = unsafe { libc::mallopt(libc::M_ARENA_MAX, cap) } == 1;
        tracing::debug!(cap, set, "malloc arenas capped (M_ARENA_MAX)");
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = cap;
}

/// The arena cap to set: [`MALLOC_ARENAS`], unless the user chose. `MALLOC_ARENA_MAX`
/// is theirs to set (from the environment or `--env`: glibc only reads the environment
/// it started with, so its value is set again here; one that is not a positive number
/// is left to glibc), as is `glibc.malloc.arena_max` in `GLIBC_TUNABLES` (`tunables`).
fn arena_cap(arena_max: Option<&str>, tunables: Option<&str>) -> Option<i32> {
    match arena_max {
        Some(v) => v.trim().parse::<i32>().ok().filter(|n| *n > 0),
        None if tunables.is_some_and(|t| t.contains("glibc.malloc.arena_max")) => None,
        None => Some(MALLOC_ARENAS),
    }
}

/// `--uid` / `--gid`: give up root once the listeners are bound (and, in `--check`'s
/// child, before the import, so the app and Python are read as the start reads them).
/// `--uid` alone takes the user's primary group and supplementary groups (as `su` and
/// `runuser` do), never staying in root's group; `--gid` alone changes the group only.
pub fn drop_privileges(config: &Config) -> anyhow::Result<()> {
    match Privileges::plan(config)? {
        Some(p) => p.apply(),
        None => Ok(()),
    }
}

/// The process `--pidfile` names when it is a postern that runs: same program name as
/// this one, and not a zombie (a master killed with SIGKILL whose parent has not reaped
/// it yet: a supervisor that waits late, a container's init; it serves nothing, and a
/// new start must not be refused for it). `None` for this process itself.
/// regression (probe 340): a restart right after `kill -9` of the master was refused
/// with "another postern that is running" while the old one was a zombie.
pub fn pidfile_holder(path: &std::path::Path) -> Option<rustix::process::Pid> {
    let own = rustix::process::getpid();
    let pid = read_pidfile(path).filter(|&p| p != own)?;
    let n = pid.as_raw_nonzero().to_string();
    let name = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok();
    let theirs = name(&n);
    let running = theirs.is_some()
        && theirs == name("self")
        && std::fs::read_to_string(format!("/proc/{n}/stat"))
            .ok()
            .is_some_and(|stat| !is_zombie(&stat));
    running.then_some(pid)
}

/// A `/proc/PID/stat` line says the process has exited and waits to be reaped (state
/// `Z`, or `X` as it goes). The state follows the name, which may hold `)`: it is the
/// first field after the last `)`.
fn is_zombie(stat: &str) -> bool {
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| matches!(state, "Z" | "X"))
}

/// Writes this process's pid into `--pidfile`, unless the file names another postern
/// that is running: a second server started with the same pidfile would take it over
/// silently, and the first one's exit would then remove the file that names the
/// second. A pid that is gone, or is now another program (the file outlived a reboot
/// or a crash), is overwritten.
///
/// The pid goes into a new file in the same directory (`O_CREAT | O_EXCL`, a random
/// name: nothing planted there is ever opened), which is then renamed to the path.
/// rename(2) replaces the name, never writes through it: a symbolic link there (one the
/// `--uid` user planted in its own directory, or anyone in a sticky one, to make root
/// overwrite a file of its choice) is replaced by the pidfile, never followed, and a
/// regular file is replaced whole (so a hard link to it elsewhere is left alone).
/// Readers (`kill $(cat app.pid)`, systemd's `PIDFile=`) never see an empty or half
/// written file. Anything else at the path (a directory, a device, a FIFO, a socket) is
/// refused: it is not a stale pidfile.
/// regression (sec's audit, HIGH): `std::fs::write` as root truncated and wrote the
/// target of a link the `--uid` user had planted at the path.
pub fn write_pidfile(path: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::FileTypeExt as _;
    let own = rustix::process::getpid();
    if let Some(pid) = read_pidfile(path).filter(|&p| p != own) {
        if pidfile_holder(path) == Some(pid) {
            anyhow::bail!(
                "--pidfile {} names process {}, another postern that is running: stop it first, or give this one its own --pidfile (a reload of the running one is `kill -HUP {}`)",
                path.display(),
                pid.as_raw_nonzero(),
                pid.as_raw_nonzero()
            );
        }
        tracing::info!(
            pidfile = %path.display(),
            pid = pid.as_raw_nonzero(),
            "the --pidfile named a process that is no longer running postern; overwriting it"
        );
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let Some(name) = path.file_name() else {
        anyhow::bail!("--pidfile {} names no file", path.display());
    };
    let replaced = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => None,
        Ok(m) if m.file_type().is_symlink() => Some(m),
        Ok(m) => {
            let t = m.file_type();
            let what = if t.is_dir() {
                "a directory"
            } else if t.is_fifo() {
                "a FIFO"
            } else if t.is_socket() {
                "a socket"
            } else {
                "a device"
            };
            anyhow::bail!(
                "--pidfile {} is {what}, not a pidfile: postern replaces only a regular file (or a symbolic link) there; give the path of a file",
                path.display()
            );
        }
        Err(_) => None,
    };
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let mut prefix = std::ffi::OsString::from(".");
        prefix.push(name);
        prefix.push(".");
        let mut tmp = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(".tmp")
            .permissions(std::fs::Permissions::from_mode(0o644))
            .tempfile_in(dir)?;
        writeln!(tmp, "{}", own.as_raw_nonzero())?;
        tmp.persist(path).map(drop).map_err(|e| e.error)
    };
    // A pidfile made beforehand for this user in a directory it may not write (a
    // tmpfiles.d `f` line, `touch` + `chown` in an image, a bind-mounted file): written in
    // place, never through a link (O_NOFOLLOW), and only when it is a regular file with
    // one name (a hard link planted to another file is refused).
    // regression: the temporary file + rename refused such a pidfile ("Permission
    // denied" on the directory), which the file written in place used to accept.
    let existing_file = replaced.is_none()
        && std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file());
    write()
        .or_else(|e| {
            if existing_file {
                write_in_place(path, own.as_raw_nonzero().get()).map_err(|_| e)
            } else {
                Err(e)
            }
        })
        .map_err(|e| {
        // regression: a bare "Permission denied", without the uid and directory hint
        // a socket path gets.
        let dir = dir.display();
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "; the directory {dir} does not exist: create it (systemd: `RuntimeDirectory=`)"
            ),
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                format!(
                    "; postern (uid {}) may not write in {dir}: the pidfile is written as this user (before --uid, if given, drops privileges), so make {dir} writable for it (systemd: `RuntimeDirectory=` with `User=`), create the pidfile beforehand as a file this user may write, or choose another path",
                    rustix::process::geteuid().as_raw()
                )
            }
            _ => String::new(),
        };
        anyhow::anyhow!("writing --pidfile {}: {e}{hint}", path.display())
    })?;
    if let Some(link) = replaced {
        use std::os::unix::fs::MetadataExt as _;
        tracing::warn!(
            pidfile = %path.display(),
            link_owner = link.uid(),
            "the --pidfile was a symbolic link: replaced by the pidfile, not followed (postern never writes through a link there)"
        );
    }
    Ok(())
}

/// Writes `pid` into the existing pidfile at `path` in place: for a pidfile made
/// beforehand for this user in a directory it may not write (a tmpfiles.d `f` line,
/// `touch` + `chown` in an image, a bind-mounted file), where the temporary file and
/// rename cannot be made. Never through a link (`O_NOFOLLOW`; `O_NONBLOCK`: a FIFO put
/// there meanwhile cannot hold the start), and only into a regular
/// file with one name (a hard link planted to another file is refused).
/// regression: the temporary file + rename refused such a pidfile ("Permission denied"
/// on the directory), which the file written in place used to accept.
fn write_in_place(path: &std::path::Path, pid: i32) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    use std::io::Write as _;
    let fd = rustix::fs::open(
        path,
        OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile
        || st.st_nlink != 1
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "not a regular file with one name",
        ));
    }
    rustix::fs::ftruncate(&fd, 0)?;
    writeln!(std::fs::File::from(fd), "{pid}")
}

/// Removes `--pidfile` at exit if it still names this process (a file another server
/// took over, or one an operator replaced, is theirs).
pub fn remove_pidfile(path: &std::path::Path) {
    if read_pidfile(path) != Some(rustix::process::getpid()) {
        tracing::debug!(pidfile = %path.display(), "the --pidfile no longer names this process; left as it is");
        return;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => tracing::warn!(
            pidfile = %path.display(),
            error = %e,
            "cannot remove the --pidfile (written before --uid/--gid dropped privileges?): put it in a directory that user owns, e.g. systemd RuntimeDirectory="
        ),
        _ => {}
    }
}

/// The pid in the pidfile: a regular file at the path itself (a link there is not
/// followed, a FIFO not waited on), its first 32 bytes a number.
fn read_pidfile(path: &std::path::Path) -> Option<rustix::process::Pid> {
    use rustix::fs::{FileType, Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return None;
    }
    let mut buf = [0u8; 32];
    let n = rustix::io::read(&fd, &mut buf).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    rustix::process::Pid::from_raw(text.trim().parse().ok()?)
}

/// What is wrong with a `--umask` (the mask `m`) a user may not have meant: one that
/// leaves new files writable by every local user, or that takes the owner's own read
/// or write permission away (postern's log files and pidfile then come out unreadable
/// by their owner). `None` for a usual mask (022, 027, 077).
pub fn umask_warning(m: u32) -> Option<String> {
    if m & 0o002 == 0 {
        Some(format!(
            "--umask {m:03o} lets every local user write to the files postern and the app create (log files, the pidfile, the app's files and a Unix socket without --socket-mode): 022, 027 or 077 keep them to their owner"
        ))
    } else if m & 0o600 != 0 {
        Some(format!(
            "--umask {m:03o} takes read or write permission from the owner of the files postern and the app create (its log files and pidfile come out mode {:03o}): 022, 027 or 077 keep them the owner's",
            0o666 & !m
        ))
    } else {
        None
    }
}

/// Warns when the process is still root once privileges were to be dropped (no
/// `--uid`, or `--uid root`): the app, and whatever a request can make it do, then
/// runs as root.
pub fn warn_if_root() {
    if rustix::process::geteuid().is_root() {
        tracing::warn!(
            "running as root: the app, and anything a request can make it do, runs with every privilege; give --uid USER (with --gid GROUP if needed) to drop to an unprivileged user once the sockets are bound"
        );
    }
}

/// Warns when a single process (no master) is PID 1, as in a container started with
/// postern as its command: processes orphaned in the container (a shell's background
/// job the app ran, a daemon's double fork) are then postern's to reap, and only the
/// master reaps them; a single process cannot tell them from the children its app waits
/// for, so they stay zombies.
/// regression (probe 402): 20 requests running `sh -c 'sleep 0.2 & exit 0'` left 20
/// zombies, with nothing said.
pub fn warn_if_pid1_alone(supervised: bool) {
    if !supervised && rustix::process::getpid().as_raw_nonzero().get() == 1 {
        tracing::warn!(
            "postern runs as PID 1 (a container's command) without a master: processes orphaned in the container are not reaped and stay zombies; run it with --master (or --workers 2 or more), whose master reaps them, or start the container with an init (docker run --init, tini)"
        );
    }
}

/// Warns when `--listen-backlog` is over `net.core.somaxconn`: the kernel cuts every
/// listen queue to that silently, so the queue an operator sized to stop 502s under a
/// burst is shorter than asked (the metric `postern_listen_backlog` shows what it is).
/// regression (hostile MEDIUM): nothing was said, at start or by `--check`. Not asked
/// when every listener was passed by systemd (postern sets no backlog then).
pub fn warn_if_backlog_capped(backlog: i32) {
    let Some(cap) = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    if backlog > cap && backlog == crate::config::DEFAULT_LISTEN_BACKLOG {
        // Not the operator's choice (a kernel before 5.4 has 128): said, not warned.
        tracing::info!(
            listen_backlog = backlog,
            somaxconn = cap,
            "the default --listen-backlog {backlog} is over the kernel's net.core.somaxconn {cap}: each listen queue holds {cap} connections at most (raise net.core.somaxconn for a longer queue)"
        );
    } else if backlog > cap {
        tracing::warn!(
            listen_backlog = backlog,
            somaxconn = cap,
            "--listen-backlog {backlog} is over the kernel's net.core.somaxconn {cap}: each listen queue holds {cap} connections at most; raise it (sysctl -w net.core.somaxconn={backlog}, and in /etc/sysctl.d/ to keep it) or lower --listen-backlog"
        );
    }
}

/// The users and groups front servers run as (Debian/Ubuntu, RHEL/Fedora, Arch,
/// Apache's packages, macOS), in the order the advice prefers them.
const FRONT_SERVER_NAMES: [&str; 5] = ["www-data", "nginx", "http", "apache", "_www"];

/// Warns when the Unix socket at `path` is one the front server most likely cannot
/// connect to. Without `--socket-mode`/`--socket-owner`, the umask gave it a mode without
/// write for others (0755, 0775); with `--socket-mode` alone (uWSGI's `chmod-socket =
/// 660` as root: `root:root 0660`), the same can hold. The socket is taken as reachable
/// when others may write, or its owner or group is a front server's (www-data, nginx,
/// ...) with write permission; a group given with `--socket-owner` is the user's choice
/// and is only checked for the write bit. nginx (www-data) otherwise gets EACCES and
/// answers 502: uWSGI's chmod-socket pitfall. The advice names the group this host has.
/// regression: nothing was said; the 502 was the first sign. Then (review): nothing was
/// said either once `--socket-mode` or `--socket-owner` was given, though
/// `--socket-mode 660` as root and `--socket-owner :www-data` on a 0755 socket lock
/// nginx out just the same.
pub fn warn_if_front_server_locked_out(config: &Config, addr: &ListenAddr) {
    use std::os::unix::fs::MetadataExt as _;
    let ListenAddr::Unix(path) = addr else { return };
    warn_if_socket_directory_closed(config, addr, path);
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    let mode = meta.mode() & 0o777;
    let owner = crate::users::user_by_uid(meta.uid())
        .ok()
        .flatten()
        .map(|u| u.name);
    let group = crate::users::group_name(meta.gid()).ok().flatten();
    let front = |name: &Option<String>| {
        name.as_deref()
            .is_some_and(|n| FRONT_SERVER_NAMES.contains(&n))
    };
    let chosen_group = config.socket_owner.is_some_and(|(_, g)| g.is_some());
    if mode & 0o002 != 0
        || (mode & 0o200 != 0 && front(&owner))
        || (mode & 0o020 != 0 && (front(&group) || chosen_group))
    {
        return;
    }
    // A user given alone with --socket-owner is the user's choice too (nginx may run as
    // that user).
    if config
        .socket_owner
        .is_some_and(|(u, g)| u.is_some() && g.is_none())
        && mode & 0o200 != 0
    {
        return;
    }
    let name = |n: Option<String>, id: u32| n.unwrap_or_else(|| id.to_string());
    let here = FRONT_SERVER_NAMES
        .iter()
        .find(|g| crate::users::gid_by_name(g).ok().flatten().is_some());
    let group_hint = here.map_or_else(|| ":GROUP".to_owned(), |g| format!(":{g}"));
    let fix = if chosen_group {
        "--socket-mode 660 (the group needs write permission to connect)".to_owned()
    } else if config.opts.socket_mode.is_some() {
        format!("--socket-owner {group_hint} (the front server's group), or --socket-mode 666 (any local user may connect)")
    } else {
        format!("--socket-mode 660 --socket-owner {group_hint} (the front server's group), or --socket-mode 666 (any local user may connect)")
    };
    let umask = config.opts.umask.map_or_else(
        || "the umask".to_owned(),
        |m| format!("--umask {:03o}", m.0),
    );
    let from = match (
        config.opts.socket_mode.is_some(),
        config.socket_owner.is_some(),
    ) {
        (false, false) => format!("from {umask} (no --socket-mode or --socket-owner)"),
        (true, false) => "from --socket-mode (no --socket-owner)".to_owned(),
        (false, true) => format!("with --socket-owner, the mode from {umask} (no --socket-mode)"),
        (true, true) => "from --socket-mode and --socket-owner".to_owned(),
    };
    tracing::warn!(
        listener = %addr,
        "the socket has mode {mode:04o}, owner {}:{}, {from}: a front server running as another user (nginx as www-data) cannot connect to it (EACCES: a 502, and 'connect() ... failed (13: Permission denied)' in nginx's error log); add {fix}",
        name(owner, meta.uid()),
        name(group, meta.gid()),
    );
}

/// Warns when a directory on the way to the Unix socket at `path` does not let the
/// front server through (no search permission, `x`, for it): connect(2) then fails with
/// EACCES whatever the socket's own mode. The front server is the user named with
/// `--socket-owner` (with or without a group), else the group named alone with it, else
/// the first of [`FRONT_SERVER_NAMES`] this host has; the mode bits are read as the
/// kernel reads them for it (owner, then its groups, then others; a group alone is no
/// directory's owner), so running as root, which passes every directory, changes
/// nothing. A directory with an ACL (not read here) gets "may not" instead of "does
/// not". The warning names the first such directory from `/` down.
/// regression: a socket under a 0700 directory (`/root/app`, a home directory) got no
/// word from a start or `sudo postern --check`, with or without `--socket-mode 666`.
/// regression (review2): `--socket-owner nobody:nogroup` or `:nginx` was checked as
/// www-data, and the advice `chgrp www-data` would have locked the real one out.
fn warn_if_socket_directory_closed(config: &Config, addr: &ListenAddr, path: &Path) {
    use std::os::unix::fs::MetadataExt as _;
    let group_name = |gid: u32| {
        crate::users::group_name(gid)
            .ok()
            .flatten()
            .unwrap_or_else(|| gid.to_string())
    };
    // Who passes: a uid (None: a group alone), its groups, its name in the warning, and
    // the group to give a directory to.
    let (uid, groups, who, chgrp) = match config.socket_owner {
        Some((Some(uid), _)) => {
            let Some(user) = crate::users::user_by_uid(uid).ok().flatten() else {
                return;
            };
            let groups =
                crate::users::group_list(&user.name, user.gid).unwrap_or_else(|_| vec![user.gid]);
            (Some(user.uid), groups, user.name, group_name(user.gid))
        }
        Some((None, Some(gid))) => {
            let name = group_name(gid);
            (None, vec![gid], format!("the group {name}"), name)
        }
        _ => {
            let Some(user) = FRONT_SERVER_NAMES
                .iter()
                .find_map(|n| crate::users::user_by_name(n).ok().flatten())
            else {
                return;
            };
            let groups =
                crate::users::group_list(&user.name, user.gid).unwrap_or_else(|_| vec![user.gid]);
            (Some(user.uid), groups, user.name, group_name(user.gid))
        }
    };
    if uid == Some(0) {
        return;
    }
    let Some(dir) = path.parent().and_then(|d| std::fs::canonicalize(d).ok()) else {
        return;
    };
    let mut ancestors: Vec<&Path> = dir.ancestors().collect();
    ancestors.reverse();
    for d in ancestors {
        let Ok(meta) = std::fs::metadata(d) else {
            return;
        };
        if searchable(meta.mode(), meta.uid(), meta.gid(), uid, &groups) {
            continue;
        }
        let owner = crate::users::user_by_uid(meta.uid())
            .ok()
            .flatten()
            .map_or_else(|| meta.uid().to_string(), |u| u.name);
        let group = group_name(meta.gid());
        // regression (review2 LOW): `setfacl -m u:www-data:x DIR` still got "does not".
        let acl = rustix::fs::getxattr(d, "system.posix_acl_access", &mut [0u8; 0]).is_ok();
        let (does, acl) = if acl {
            ("may not let", " (the directory has an ACL, which postern does not read: `getfacl` shows whether it lets it through)")
        } else {
            ("does not let", "")
        };
        tracing::warn!(
            listener = %addr,
            "the directory {} (mode {:04o}, owner {owner}:{group}) {does} {who} through (no search permission, x){acl}: a front server running as {who} cannot reach the socket in it, whatever the socket's mode (EACCES: a 502, and '(13: Permission denied)' in nginx's error log); give it search permission (chmod o+x {}, or chgrp {chgrp} {} and chmod g+x {}), or put the socket in a directory the front server can reach (e.g. /run/postern, systemd RuntimeDirectory=)",
            d.display(),
            meta.mode() & 0o7777,
            d.display(),
            d.display(),
            d.display(),
        );
        return;
    }
}

/// Whether a user (`uid`, member of `groups`; `None`: any member of `groups`, who owns
/// nothing) may search (pass through) a directory of `mode` owned by `owner`:`group`:
/// the owner's bits for its owner, the group's for a member, the others' otherwise, as
/// the kernel checks them (root passes).
fn searchable(mode: u32, owner: u32, group: u32, uid: Option<u32>, groups: &[u32]) -> bool {
    let bit = if uid == Some(0) {
        return true;
    } else if uid == Some(owner) {
        0o100
    } else if groups.contains(&group) {
        0o010
    } else {
        0o001
    };
    mode & bit != 0
}

/// What `--uid`/`--gid` become: the user database is read here ([`Privileges::plan`]),
/// and [`Privileges::apply`] only makes system calls (so it is also safe in a child
/// just forked from a threaded process).
#[derive(Debug)]
pub struct Privileges {
    /// Supplementary groups; `None` when this process may not change them (not root).
    groups: Option<Vec<u32>>,
    gid: Option<u32>,
    uid: Option<u32>,
}

impl Privileges {
    /// `None` when neither `--uid` nor `--gid` is given, or when postern does not run
    /// as root and already runs as them.
    pub fn plan(config: &Config) -> anyhow::Result<Option<Privileges>> {
        let me = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        Self::plan_as(config, me, id_capabilities())
    }

    /// [`Privileges::plan`] for a process whose effective ids are `me` (uid, gid), and
    /// which may change its user and its groups (`caps`: CAP_SETUID, CAP_SETGID).
    ///
    /// Not root, `--uid`/`--gid` naming the ids it runs with change nothing (its group
    /// stays, as uWSGI leaves it without `gid`: a systemd unit's `User=app`
    /// `Group=www-data` with a migrated `uid = app`), and any other id is refused with
    /// what to do, unless the process holds the capability to change it (systemd's
    /// `AmbientCapabilities=CAP_SETUID CAP_SETGID`).
    /// regression (probe 334, MEDIUM): already that user, in another group, `--uid`
    /// alone failed with `--gid 65534: Operation not permitted` (its primary group),
    /// an option the user never gave; as another user, the same words.
    fn plan_as(
        config: &Config,
        me: (u32, u32),
        caps: (bool, bool),
    ) -> anyhow::Result<Option<Privileges>> {
        if config.uid.is_none() && config.gid.is_none() {
            return Ok(None);
        }
        let (euid, egid) = me;
        let (set_uid, set_gid) = caps;
        if euid != 0 {
            let same = config.uid.is_none_or(|u| u == euid) && config.gid.is_none_or(|g| g == egid);
            if same {
                tracing::debug!(
                    uid = euid,
                    gid = egid,
                    "--uid/--gid name the ids postern already runs as: nothing to change"
                );
                return Ok(None);
            }
            let named = |uid: u32| match crate::users::user_by_uid(uid) {
                Ok(Some(u)) => format!("{} ({uid})", u.name),
                _ => uid.to_string(),
            };
            if let Some(uid) = config.uid.filter(|&u| u != euid && !set_uid) {
                anyhow::bail!(
                    "--uid {}: changing the user needs root (or CAP_SETUID), and postern runs as {}: start it as root (it binds the listeners, then runs as --uid), or leave --uid out",
                    named(uid),
                    named(euid)
                );
            }
            if let Some(gid) = config.gid.filter(|&g| g != egid && !set_gid) {
                let group = |gid: u32| match crate::users::group_name(gid) {
                    Ok(Some(n)) => format!("{n} ({gid})"),
                    _ => gid.to_string(),
                };
                anyhow::bail!(
                    "--gid {}: changing the group needs root (or CAP_SETGID), and postern runs in group {}: start it as root, or in that group (systemd: Group=), or leave --gid out",
                    group(gid),
                    group(egid)
                );
            }
            if !set_gid {
                // Only the user changes (CAP_SETUID alone): the group stays.
                return Ok(Some(Privileges {
                    groups: None,
                    gid: None,
                    uid: config.uid,
                }));
            }
        }
        let user = config
            .uid
            .map(crate::users::user_by_uid)
            .transpose()
            .context("--uid: looking up the user")?
            .flatten();
        let gid = config.gid.or(user.as_ref().map(|u| u.gid));
        let Some(gid) = gid else {
            anyhow::bail!(
                "--uid {} has no entry in the user database, so its group is unknown: give --gid too",
                config.uid.unwrap_or_default()
            );
        };
        // Only root (or CAP_SETGID) may set supplementary groups; anyone else keeps theirs
        // (and can only "drop" to the ids it already has).
        let groups = if euid == 0 || set_gid {
            Some(match &user {
                // The user's own groups (/etc/group), with `gid` as the primary one.
                Some(u) => crate::users::group_list(&u.name, gid)
                    .with_context(|| format!("--uid {}: reading its groups", u.name))?,
                None => vec![gid],
            })
        } else {
            None
        };
        Ok(Some(Privileges {
            groups,
            gid: Some(gid),
            uid: config.uid,
        }))
    }

    /// Groups, then group, then user (the order in which each is still allowed).
    pub fn apply(&self) -> anyhow::Result<()> {
        // libc: rustix has only the per-thread system calls; glibc's setgroups, setgid
        // and setuid change every thread of the process.
        let check = |r: libc::c_int| {
            if r == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        if let Some(groups) = &self.groups {
            // SAFETY: the pointer and length describe `groups`.
            check(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })
                .context("--uid/--gid: setting the supplementary groups")?;
        }
        if let Some(g) = self.gid {
            // SAFETY: a plain system call.
            check(unsafe { libc::setgid(g) }).with_context(|| format!("--gid {g}"))?;
        }
        if let Some(u) = self.uid {
            // SAFETY: a plain system call.
            check(unsafe { libc::setuid(u) }).with_context(|| format!("--uid {u}"))?;
        }
        // The ids the process runs with now (a field left unchanged says its own):
        // regression (probe 319): the line read `uid=Some(33) gid=Some(33)`.
        tracing::info!(
            uid = rustix::process::getuid().as_raw(),
            gid = rustix::process::getgid().as_raw(),
            "dropped privileges"
        );
        Ok(())
    }
}

/// Whether this process may change its user and its groups: CAP_SETUID and
/// CAP_SETGID in its effective set (`CapEff` in /proc/self/status).
fn id_capabilities() -> (bool, bool) {
    const CAP_SETGID: u32 = 6;
    const CAP_SETUID: u32 = 7;
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_owned();
            u64::from_str_radix(&hex, 16).ok()
        })
        .unwrap_or(0);
    (eff >> CAP_SETUID & 1 == 1, eff >> CAP_SETGID & 1 == 1)
}

/// The imported app and the interface it is served with (`--interface`).
pub struct Loaded {
    pub app: wsgi::App,
    pub interface: Interface,
    /// Why that interface (what the callable is), for `--check`.
    pub why: String,
}

impl Loaded {
    /// Another reference to the same app (a preloaded app, for each worker).
    pub fn clone_ref(&self) -> Loaded {
        Loaded {
            app: self.app.clone_ref(),
            interface: self.interface,
            why: self.why.clone(),
        }
    }
}

/// Starts Python and imports the app (the single process, `--check`).
pub fn start_python(config: &Config) -> anyhow::Result<Loaded> {
    start_interpreter(config)?;
    import_app(config, || true)
}

/// Starts the embedded Python (with the venv) without importing the app, and logs its
/// version and prefix. A master does this once and forks its workers from the
/// initialised interpreter, so they share its memory; each worker then imports the app
/// ([`import_app`]), which is why a reload runs new code.
pub fn start_interpreter(config: &Config) -> anyhow::Result<()> {
    let info = interpreter::initialize(config.venv.as_deref()).map_err(|e| {
        // regression: a stale $VIRTUAL_ENV read as "--venv /x: cannot read", an option
        // the user never gave.
        if let (wsgi::WsgiError::Venv { venv, reason }, true) = (&e, config.venv_from_env) {
            return anyhow::anyhow!(
                "VIRTUAL_ENV={} (from the environment; no --venv given): {reason} (deactivate that venv, unset VIRTUAL_ENV, or give --venv DIR)",
                venv.display()
            );
        }
        // regression (probe 319): an ini's `home = /x` failed as "--venv /x: ...", an
        // option the user never wrote.
        if let (wsgi::WsgiError::Venv { venv, reason }, Some(from)) = (&e, &config.venv_source) {
            let as_user = if config.uid.is_some() || config.gid.is_some() {
                " (postern runs as --uid/--gid now: can that user read the venv?)"
            } else {
                ""
            };
            return anyhow::anyhow!(
                "--venv {} (from {from}): {reason}{as_user}",
                venv.display()
            );
        }
        if config.uid.is_some() || config.gid.is_some() {
            anyhow::anyhow!(
                "{e} (postern runs as --uid/--gid now: can that user read the Python installation {} and the venv?)",
                interpreter::BUILD_PYTHON
            )
        } else {
            e.into()
        }
    })?;
    tracing::info!(
        python = %info.version,
        prefix = %info.prefix,
        executable = %info.executable,
        "embedded Python started"
    );
    if let Some(elsewhere) = crate::wsgi::interpreter::libpython_elsewhere() {
        tracing::warn!("{elsewhere}");
    }
    if let Some(v) = &config.venv {
        tracing::info!(venv = %v.display(), "using virtualenv");
    }
    // On the process's main thread, before the master forks: `threading` is imported
    // here so that `threading.main_thread()` is this thread (a module first imported by
    // a request thread or the ASGI loop thread would take that one for the main thread;
    // after a fork CPython makes the forking thread the child's main thread), and the
    // workers share the interface detection code (see detect::load).
    pyo3::Python::attach(|py| {
        py.import("threading")?;
        detect::load(py)
    })
    .map_err(|e| anyhow::anyhow!("loading postern's interface detection: {e}"))?;
    preload_event_loop(config);
    Ok(())
}

/// With `--interface asgi` the master imports asyncio (which loads `ssl`) and the event
/// loop's module before forking, so the workers share those pages instead of each
/// importing its own copy (about 9 MiB of PSS per worker). Not with `auto`: the master
/// does not import the app, so it cannot know, and a WSGI worker must not carry asyncio.
/// A failure is left for the worker, which reports it where the loop is made.
fn preload_event_loop(config: &Config) {
    use crate::asgi::{InterfaceOption, LoopOption};
    if config.opts.interface != InterfaceOption::Asgi {
        return;
    }
    pyo3::Python::attach(|py| {
        if py.import("asyncio").is_err() {
            return;
        }
        if config.opts.r#loop != LoopOption::Asyncio {
            // `--loop auto` without uvloop installed: ImportError, the worker says so.
            let _ = py.import("uvloop");
        }
    });
}

/// Puts `--pythonpath` and the working directory at the front of `sys.path`, imports
/// the app (after [`start_interpreter`]) and chooses its interface (`--interface`; one
/// info line says which and why, and an app that cannot be served so is refused here,
/// before any request).
/// An app file with no callable that reads as a gunicorn config file gets told so
/// (here, not in `wsgi`: the Python layer does not know the config layer).
fn gunicorn_hint(e: wsgi::WsgiError, spec: &interpreter::AppSpec) -> wsgi::WsgiError {
    match (e, spec) {
        (
            wsgi::WsgiError::NoCallable {
                app,
                tried,
                hint,
                advice,
            },
            interpreter::AppSpec::File { path, .. },
        ) if advice == interpreter::NO_CALLABLE_ADVICE => {
            let advice = match crate::config::gunicorn::no_callable_hint(path) {
                Some(g) => format!("{advice}; {g}"),
                None => advice,
            };
            wsgi::WsgiError::NoCallable {
                app,
                tried,
                hint,
                advice,
            }
        }
        (e, _) => e,
    }
}

/// An app that sets SIGPIPE back to its default action when imported (a command-line
/// idiom, `signal.signal(signal.SIGPIPE, signal.SIG_DFL)`) would have this process
/// killed by the first write to a front server that has gone away mid-response, with
/// every request it was serving: sendfile(2) cannot say MSG_NOSIGNAL. It is ignored
/// again (through Python's `signal.signal`, so that `signal.getsignal` tells the
/// truth), and said by the first worker of a generation (`warn`). Python allows
/// `signal.signal` in its main thread only, which runs no request and no ASGI loop, so
/// the import is the app's one chance; native code (ctypes) can still change it later,
/// and that is not looked at. libc, not rustix: rustix has no sigaction outside its
/// `runtime` module.
// regression (review 399): a wsgi.file_wrapper response to a client that left killed
// the worker silently under such an app.
fn keep_sigpipe_ignored(warn: bool) {
    // SAFETY: sigaction(2) reads one signal's action into a zeroed struct (plain data).
    let default = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_DFL
    };
    if !default {
        return;
    }
    // SAFETY: SIG_IGN for a valid signal number.
    if !interpreter::ignore_signal(libc::SIGPIPE)
        && unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) } == libc::SIG_ERR
    {
        return;
    }
    let said = "the app set SIGPIPE to its default action (signal.signal(signal.SIGPIPE, signal.SIG_DFL)), which would kill this process whenever a front server goes away in the middle of a response: postern ignores SIGPIPE again (such a write fails with EPIPE instead, and the request is logged as the client's going)";
    if warn {
        tracing::warn!("{said}");
    } else {
        tracing::debug!("{said}");
    }
}

/// `first_to_warn`: whether this process says what the configuration sets for nothing
/// (a worker: the first of its generation, not every worker a recycle starts).
pub fn import_app(config: &Config, first_to_warn: impl FnOnce() -> bool) -> anyhow::Result<Loaded> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let mut path: Vec<_> = config
        .opts
        .pythonpath
        .iter()
        .map(|p| {
            if p.is_absolute() {
                p.clone()
            } else {
                cwd.join(p)
            }
        })
        .collect();
    path.push(cwd.clone());
    let app = interpreter::import(&path, &config.app).map_err(|e| gunicorn_hint(e, &config.app))?;
    // Asked once, for both warnings below.
    let mut first_to_warn = Some(first_to_warn);
    let mut first: Option<bool> = None;
    let mut is_first = || *first.get_or_insert_with(|| first_to_warn.take().is_some_and(|f| f()));
    keep_sigpipe_ignored(is_first());
    // The directory with its links resolved (getcwd): after a deploy that swaps a
    // `current` link, the release this worker imported.
    tracing::info!(app = %config.app, dir = %cwd.display(), "app imported");
    let detect::Choice { interface, why } = detect::choose_app(&app, config.opts.interface)?;
    // `--interface wsgi` with one of them set was said at start, once.
    // regression (review 341): said by every worker a recycle started.
    if interface == Interface::Wsgi
        && config.opts.interface == crate::asgi::InterfaceOption::Auto
        && !config.asgi_options_set.is_empty()
        && is_first()
    {
        let said = crate::config::asgi_options_unused(
            &config.asgi_options_set,
            "the app is a WSGI callable",
        );
        if crate::config::asgi_options_warn(&config.asgi_options_set) {
            tracing::warn!("{said}");
        } else {
            tracing::info!("{said}");
        }
    }
    Ok(Loaded {
        app,
        interface,
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Layered};
    use clap::{CommandFactory, FromArgMatches};

    #[test]
    fn a_directory_is_searched_with_the_owner_then_group_then_other_bits() {
        // www-data (33, groups 33) through directories of root (0), group 0 or 33.
        let www = |mode, group| searchable(mode, 0, group, Some(33), &[33]);
        assert!(!www(0o700, 0));
        assert!(!www(0o750, 0));
        assert!(www(0o750, 33));
        assert!(
            !www(0o705, 33),
            "the group's bits apply to a member, not others'"
        );
        assert!(www(0o701, 0));
        assert!(www(0o711, 0));
        assert!(searchable(0o700, 33, 0, Some(33), &[33]), "its owner");
        assert!(
            !searchable(0o077, 33, 33, Some(33), &[33]),
            "the owner's bits only"
        );
        assert!(searchable(0o000, 5, 5, Some(0), &[0]), "root passes");
        // A group alone: its bits when the directory is its, never the owner's.
        assert!(searchable(0o710, 0, 33, None, &[33]));
        assert!(!searchable(0o700, 33, 0, None, &[33]));
    }

    #[test]
    fn a_zombie_is_told_by_its_stat_line() {
        assert!(is_zombie("4242 (postern) Z 1 4242 4242 0 -1 4194560"));
        assert!(!is_zombie("4242 (postern) S 1 4242 4242 0 -1 4194560"));
        // A name with ") Z" in it: the state is after the last parenthesis.
        assert!(!is_zombie("4242 (a) Z (b) R 1 4242"));
        assert!(!is_zombie(""));
        // This process is running.
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(!is_zombie(&own));
    }

    #[test]
    fn a_pidfile_written_in_place_is_a_regular_file_with_one_name() {
        let dir = tempfile::tempdir().unwrap();
        let pid = dir.path().join("app.pid");
        std::fs::write(&pid, "12345678\n").unwrap();
        write_in_place(&pid, 42).unwrap();
        assert_eq!(std::fs::read_to_string(&pid).unwrap(), "42\n");
        // Never through a link, never into a file with a second name.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let link = dir.path().join("link.pid");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(write_in_place(&link, 42).is_err());
        let hard = dir.path().join("hard.pid");
        std::fs::hard_link(&victim, &hard).unwrap();
        assert!(write_in_place(&hard, 42).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        // Nothing is created.
        assert!(write_in_place(&dir.path().join("none.pid"), 42).is_err());
    }

    #[test]
    fn caps_malloc_arenas_unless_the_user_chose() {
        assert_eq!(arena_cap(None, None), Some(MALLOC_ARENAS));
        assert_eq!(
            arena_cap(None, Some("glibc.malloc.tcache_count=0")),
            Some(MALLOC_ARENAS)
        );
        // The user's MALLOC_ARENA_MAX, set again (it may have come from --env).
        assert_eq!(arena_cap(Some("8"), None), Some(8));
        assert_eq!(arena_cap(Some(" 1 "), None), Some(1));
        // Theirs, left to glibc: not a positive number, or a tunable.
        assert_eq!(arena_cap(Some("0"), None), None);
        assert_eq!(arena_cap(Some("lots"), None), None);
        assert_eq!(arena_cap(None, Some("glibc.malloc.arena_max=4")), None);
    }

    fn config(args: &[&str]) -> Config {
        let mut all = vec!["postern", "app"];
        all.extend_from_slice(args);
        let m = Cli::command().try_get_matches_from(all).unwrap();
        let cli = Cli::from_arg_matches(&m).unwrap();
        Config::resolve(&Layered::merge(&cli, &m).unwrap(), None).unwrap()
    }

    fn addr(s: &str) -> ListenAddr {
        s.parse().unwrap()
    }

    // regression: with systemd's sockets and no listener configured, --check bound and
    // reported 127.0.0.1:3031, which a start does not use.
    #[test]
    fn systemd_sockets_replace_the_default_listener() {
        let sd = [addr("unix:/run/a.sock")];
        assert_eq!(
            listeners(&config(&[]), &sd),
            [Planned {
                protocol: Protocol::Uwsgi,
                addr: sd[0].clone(),
                inherited: true,
                unmatched: false,
            }]
        );
        assert_eq!(listeners(&config(&[]), &[])[0].addr, addr("127.0.0.1:3031"));
    }

    #[test]
    fn configured_listeners_take_systemd_sockets_of_their_address() {
        let c = config(&["--fastcgi", "unix:/run/a.sock", "--uwsgi", "127.0.0.1:9"]);
        let sd = [addr("unix:/run/a.sock"), addr("unix:/run/extra.sock")];
        let plan: Vec<_> = listeners(&c, &sd)
            .into_iter()
            .map(|p| (p.protocol, p.addr.to_string(), p.inherited, p.unmatched))
            .collect();
        // The extra one is named unmatched: served as uwsgi, with a warning.
        assert_eq!(
            plan,
            [
                (Protocol::Uwsgi, "127.0.0.1:9".into(), false, false),
                (Protocol::FastCgi, "unix:/run/a.sock".into(), true, false),
                (Protocol::Uwsgi, "unix:/run/extra.sock".into(), true, true),
            ]
        );
    }

    /// Runs `drop_privileges` in a forked child; returns what the child then is:
    /// (uid, gid, supplementary groups), or the error text.
    fn dropped_in_child(config: &Config) -> Result<(u32, u32, Vec<u32>), String> {
        // The user database is read here, in the (threaded) test process; the forked
        // child only makes system calls (a lookup there could deadlock on a lock
        // another test thread held at the fork).
        let plan = match Privileges::plan(config) {
            Ok(p) => p.expect("--uid or --gid given"),
            Err(e) => return Err(format!("err {e:#}")),
        };
        let (mut r, w) = std::io::pipe().unwrap();
        // SAFETY: the child makes system calls, formats a line (glibc's fork leaves
        // malloc usable in the child), writes it to a pipe and exits; it takes no lock
        // another test thread may have held at the fork (no user-database lookup).
        // libc: rustix's only fork skips glibc's fork handlers.
        match unsafe { libc::fork() } {
            0 => {
                drop(r);
                let text = match plan.apply() {
                    Ok(()) => {
                        let groups: Vec<String> = rustix::process::getgroups()
                            .unwrap_or_default()
                            .iter()
                            .map(|g| g.as_raw().to_string())
                            .collect();
                        format!(
                            "ok {} {} {}",
                            rustix::process::getuid().as_raw(),
                            rustix::process::getgid().as_raw(),
                            groups.join(",")
                        )
                    }
                    Err(e) => format!("err {e:#}"),
                };
                let mut w = w;
                let _ = std::io::Write::write_all(&mut w, text.as_bytes());
                // SAFETY: leave the forked test process without running destructors.
                // libc: rustix has no _exit outside its experimental runtime module.
                unsafe { libc::_exit(0) }
            }
            pid => {
                drop(w);
                let mut out = String::new();
                std::io::Read::read_to_string(&mut r, &mut out).unwrap();
                let _ = rustix::process::waitpid(
                    rustix::process::Pid::from_raw(pid),
                    rustix::process::WaitOptions::empty(),
                );
                let out = out.trim();
                match out.strip_prefix("ok ") {
                    Some(rest) => {
                        let mut parts = rest.splitn(3, ' ');
                        let uid = parts.next().unwrap().parse().unwrap();
                        let gid = parts.next().unwrap().parse().unwrap();
                        let groups = parts
                            .next()
                            .unwrap_or("")
                            .split(',')
                            .filter(|g| !g.is_empty())
                            .map(|g| g.parse().unwrap())
                            .collect();
                        Ok((uid, gid, groups))
                    }
                    None => Err(out.to_owned()),
                }
            }
        }
    }

    // See: sec's audit, HIGH: a root-started postern truncated and wrote the target of
    // a link planted at --pidfile (by the --uid user, in its own directory).
    #[test]
    fn the_pidfile_replaces_a_link_never_writes_through_it() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep\n").unwrap();
        let pidfile = dir.path().join("app.pid");
        std::os::unix::fs::symlink(&victim, &pidfile).unwrap();
        let own = format!("{}\n", std::process::id());
        write_pidfile(&pidfile).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep\n");
        let meta = std::fs::symlink_metadata(&pidfile).unwrap();
        assert!(meta.file_type().is_file(), "{meta:?}");
        assert_eq!(meta.permissions().mode() & 0o7022, 0);
        assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), own);
        // Again over its own file (a restart), then no temporary file is left.
        write_pidfile(&pidfile).unwrap();
        assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), own);
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["app.pid", "victim"]);
        // A link naming our own pid's file is not read as a pidfile either.
        let link = dir.path().join("link.pid");
        std::os::unix::fs::symlink(&pidfile, &link).unwrap();
        assert_eq!(read_pidfile(&link), None);
        assert!(read_pidfile(&pidfile).is_some());
        // Not a pidfile: refused, left alone.
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let err = write_pidfile(&sub).unwrap_err().to_string();
        assert!(err.contains("is a directory, not a pidfile"), "{err}");
        assert!(sub.is_dir());
        let err = write_pidfile(&dir.path().join("nowhere/app.pid"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist: create it"), "{err}");
    }

    // regression: --uid without --gid kept gid 0 and root's supplementary groups.
    #[test]
    fn uid_alone_takes_the_users_own_groups() {
        if !rustix::process::getuid().is_root() {
            eprintln!("SKIPPED: dropping privileges needs root");
            return;
        }
        let nobody = crate::users::user_by_name("nobody").unwrap().unwrap();
        let (uid, gid, groups) = dropped_in_child(&config(&["--uid", "nobody"])).unwrap();
        assert_eq!(uid, nobody.uid);
        assert_eq!(gid, nobody.gid);
        assert!(!groups.contains(&0), "still in root's group: {groups:?}");
        let (_, gid, groups) = dropped_in_child(&config(&["--gid", "65534"])).unwrap();
        assert_eq!((gid, groups), (65534, vec![65534]));
        let e = dropped_in_child(&config(&["--uid", "54321"])).unwrap_err();
        assert!(e.contains("give --gid too"), "{e}");
    }

    // regression (probe 334, MEDIUM): not root, `--uid` naming the user postern runs
    // as failed on its primary group (`--gid 65534: Operation not permitted`, an
    // option never given) when it ran in another group (systemd's Group=).
    #[test]
    fn not_root_the_ids_it_runs_as_change_nothing_and_others_are_refused_by_name() {
        let me = (65534, 33);
        let plan = |args: &[&str]| Privileges::plan_as(&config(args), me, (false, false));
        assert!(plan(&["--uid", "65534"]).unwrap().is_none());
        assert!(plan(&["--uid", "65534", "--gid", "33"]).unwrap().is_none());
        assert!(plan(&["--gid", "33"]).unwrap().is_none());
        let e = format!("{:#}", plan(&["--uid", "0"]).unwrap_err());
        assert!(
            e.starts_with(
                "--uid root (0): changing the user needs root (or CAP_SETUID), and postern runs as nobody (65534)"
            ),
            "{e}"
        );
        let e = format!("{:#}", plan(&["--uid", "65534", "--gid", "0"]).unwrap_err());
        assert!(
            e.starts_with(
                "--gid root (0): changing the group needs root (or CAP_SETGID), and postern runs in group "
            ) && e.contains("33"),
            "{e}"
        );
        // Root plans as before; so does a process that holds CAP_SETUID and CAP_SETGID.
        for (who, caps) in [((0, 0), (true, true)), ((1000, 1000), (true, true))] {
            let p = Privileges::plan_as(&config(&["--uid", "65534"]), who, caps)
                .unwrap()
                .unwrap();
            assert_eq!((p.uid, p.gid), (Some(65534), Some(65534)));
        }
        // CAP_SETUID alone: the user changes, the group stays.
        let p = Privileges::plan_as(&config(&["--uid", "65534"]), (1000, 1000), (true, false))
            .unwrap()
            .unwrap();
        assert_eq!((p.uid, p.gid, p.groups), (Some(65534), None, None));
    }
}
