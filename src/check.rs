//! `postern --check` (like `nginx -t`): everything a start would do short of serving.
//! The options are already parsed and validated (see `config`); this checks the venv and
//! Python and imports the app in a child process (so the check itself never runs app
//! code in this process), binds every listener at once as a start would, then releases
//! them (no socket file is left behind; systemd's sockets are reported, not bound; one
//! in use, by a running server as on a live host before a reload, is a note), and
//! prints what would run. Output goes to stdout; the error returned names every failure
//! (a failed import of the app among them: the check goes on past it).

use std::io::Write as _;
use std::time::Instant;

use crate::config::Config;
use crate::server::listener::{self, ListenAddr};

/// Why the check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("the app cannot be started (see above)")]
    App,
    #[error("the child process importing the app was killed by signal {0} (a crash in a C extension, or the OOM killer?)")]
    Killed(i32),
    #[error("the app did not finish importing within {0}s (does it wait on a database or the network at import time?)")]
    Slow(u64),
    #[error("cannot fork the child that imports the app: {0}")]
    Fork(std::io::Error),
    #[error("cannot wait for the child that imports the app: {0}")]
    Wait(std::io::Error),
    #[error("{0}")]
    Failed(String),
}

/// Runs the check, printing each step. Must run before any thread is started.
pub fn run(config: &Config) -> Result<(), CheckError> {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "postern {} --check", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(
        out,
        "  options: ok (postern --print-config shows each value and its source)"
    );
    let _ = out.flush();
    if let Some(m) = config.opts.umask {
        let _ = writeln!(
            out,
            "  umask: {:03o} (the files and sockets postern and the app create)",
            m.0
        );
        if let Some(w) = crate::boot::umask_warning(m.0) {
            let _ = writeln!(out, "  warning: {w}");
        }
    }
    let started = Instant::now();
    // A failed import does not stop the check: the listeners and files are still
    // tried, so that one run names everything to mend (as `nginx -t` goes on).
    let imported = import_in_child(config);
    match &imported {
        Ok(()) => {
            let _ = writeln!(
                out,
                "  app: {} imported in {:.2}s (in a child process)",
                config.app,
                started.elapsed().as_secs_f64()
            );
        }
        Err(e) => {
            let _ = writeln!(out, "  app: {}: FAILED: {e}", config.app);
        }
    }
    let _ = out.flush();
    // Every listener stays bound until the end, as in a start: two that cannot be
    // bound together (`0.0.0.0:P` and `127.0.0.1:P`) fail here too.
    let opts = crate::boot::socket_options(config);
    let plan = crate::boot::listeners(config, &listener::systemd_addrs());
    let mut held = Vec::new();
    let mut failed = Vec::new();
    let mut in_use = 0;
    let mut all: Vec<(&str, &ListenAddr, bool)> = plan
        .iter()
        .map(|p| (p.protocol.name(), &p.addr, p.inherited))
        .collect();
    if let Some(stats) = &config.opts.stats {
        all.push(("stats (HTTP)", stats, false));
    }
    // The warnings a start would log (a listener others can reach, root without
    // --uid, a socket directory anyone may write in), printed here: --check runs
    // before the log is set up, and tracing would drop them.
    let warnings = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(std::io::stdout)
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_max_level(tracing::Level::WARN)
            .finish(),
    );
    for p in &plan {
        listener::warn_if_reachable(&p.addr);
    }
    crate::boot::warn_unmatched_passed(&plan);
    if plan.iter().all(|p| !p.inherited) {
        if let Some(w) = config.default_listener_warning() {
            tracing::warn!("{w}");
        }
    }
    // regression: --check did not print the non-loopback --stats warning a start logs.
    if let Some(stats) = &config.opts.stats {
        crate::stats::server::warn_if_public(stats);
    }
    if config.uid.is_none_or(|u| u == 0) {
        crate::boot::warn_if_root();
    }
    crate::boot::warn_if_pid1_alone(config.supervised);
    if all.iter().any(|(_, _, inherited)| !inherited) {
        crate::boot::warn_if_backlog_capped(config.opts.listen_backlog);
    }
    for (name, addr, inherited) in all {
        if inherited {
            let _ = writeln!(
                out,
                "  listener {name} {addr}: passed by systemd (LISTEN_FDS)"
            );
            continue;
        }
        match listener::bind(addr, &opts) {
            Ok(b) => {
                crate::boot::warn_if_front_server_locked_out(config, &b.addr);
                held.push(b);
                let _ = writeln!(out, "  listener {name} {addr}: can be bound");
            }
            // A deploy checks the new release on a live host, before its SIGHUP: the
            // running postern holds these (a reload keeps them), so that is no failure.
            // regression: deploy MEDIUM: --check exited 1 there for a good release.
            Err(e) => {
                let holder = match &e {
                    crate::server::ServerError::Bind(
                        listener::BindError::InUse { .. } | listener::BindError::LiveSocket { .. },
                    ) => held_by_postern(addr),
                    _ => None,
                };
                if let Some(pid) = holder {
                    let _ = writeln!(
                        out,
                        "  listener {name} {addr}: in use by a running postern (pid {pid}; this one, if that is the server this configuration is for): not bound; a reload (SIGHUP) keeps it, a start needs it free"
                    );
                    in_use += 1;
                } else {
                    let _ = writeln!(out, "  listener {name} {addr}: FAILED: {e}");
                    failed.push(e.to_string());
                }
            }
        }
    }
    drop(held); // closes them and removes their socket files
    drop(warnings);
    for (what, path) in files_written(config) {
        // As for a listener: a deploy checks the new release beside the running server.
        if what == "pidfile" {
            if let Some(pid) = crate::boot::pidfile_holder(path) {
                let pid = pid.as_raw_nonzero();
                let _ = writeln!(
                    out,
                    "  {what} {}: names a running postern (pid {pid}): a reload (kill -HUP {pid}) keeps it; a start would be refused while that one runs",
                    path.display()
                );
                continue;
            }
        }
        match writable(path) {
            Ok(()) => {
                let _ = writeln!(out, "  {what} {}: can be written", path.display());
            }
            Err(e) => {
                let _ = writeln!(out, "  {what} {}: FAILED: {e}", path.display());
                failed.push(format!("{what} {}: {e}", path.display()));
            }
        }
    }
    let procs = if config.supervised {
        format!(
            "a master and {} worker process{} × {} thread{}",
            config.opts.workers,
            if config.opts.workers == 1 { "" } else { "es" },
            config.opts.threads,
            if config.opts.threads == 1 { "" } else { "s" }
        )
    } else {
        format!(
            "one process × {} thread{} (no master)",
            config.opts.threads,
            if config.opts.threads == 1 { "" } else { "s" }
        )
    };
    let _ = writeln!(out, "  would run: {} with {procs}", config.app);
    for p in &plan {
        let (nginx, apache) = listener::front_server_lines(p.protocol, &p.addr);
        let _ = writeln!(out, "    nginx:  {nginx}");
        let _ = writeln!(out, "    Apache: {apache}");
    }
    match imported {
        Err(e) if failed.is_empty() => return Err(e),
        Err(e) => failed.insert(0, format!("{}: {e}", config.app)),
        Ok(()) => {}
    }
    if !failed.is_empty() {
        return Err(CheckError::Failed(failed.join("; ")));
    }
    if in_use > 0 {
        let _ = writeln!(
            out,
            "postern --check: configuration OK ({in_use} address{} in use by a running postern)",
            if in_use == 1 { "" } else { "es" }
        );
        return Ok(());
    }
    let _ = writeln!(out, "postern --check: configuration OK");
    Ok(())
}

/// The pid of a running postern (a process of this program's name) that holds a
/// listening socket at `addr` (any listening TCP socket on its port, or a Unix socket
/// bound at its path), read from /proc; None when there is none, or it cannot be told
/// (another user's /proc entries).
fn held_by_postern(addr: &ListenAddr) -> Option<u32> {
    let mut inodes = std::collections::HashSet::new();
    match addr {
        ListenAddr::Tcp(a) => {
            let port = format!(":{:04X}", a.port());
            for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
                let text = std::fs::read_to_string(table).unwrap_or_default();
                for line in text.lines().skip(1) {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    // local_address, st (0A: LISTEN), inode.
                    if f.len() > 9 && f[1].ends_with(&port) && f[3] == "0A" {
                        inodes.insert(f[9].to_owned());
                    }
                }
            }
        }
        ListenAddr::Unix(path) => {
            let text = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
            for line in text.lines().skip(1) {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() > 7 && std::path::Path::new(f[7]) == path.as_path() {
                    inodes.insert(f[6].to_owned());
                }
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let ours = std::fs::read_to_string("/proc/self/comm").ok()?;
    let own = std::process::id();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own
            || std::fs::read_to_string(entry.path().join("comm"))
                .ok()
                .as_ref()
                != Some(&ours)
        {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let link = link.to_string_lossy();
            if let Some(inode) = link
                .strip_prefix("socket:[")
                .and_then(|l| l.strip_suffix(']'))
            {
                if inodes.contains(inode) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// Files postern writes at start: the pidfile and log files.
fn files_written(config: &Config) -> Vec<(&'static str, &std::path::Path)> {
    let mut files = Vec::new();
    if let Some(p) = &config.opts.pidfile {
        files.push(("pidfile", p.as_path()));
    }
    if let Some(p) = &config.opts.log_file {
        files.push(("log file", p.as_path()));
    }
    if !matches!(config.opts.access_log.as_str(), "-" | "off") {
        files.push(("access log", std::path::Path::new(&config.opts.access_log)));
    }
    files
}

/// Whether `path` can be opened for writing (an existing file), or created (its
/// directory exists and is writable), without creating or changing anything.
fn writable(path: &std::path::Path) -> Result<(), String> {
    use rustix::fs::{access, Access};
    if path.exists() {
        if path.is_dir() {
            return Err("is a directory".into());
        }
        return access(path, Access::WRITE_OK).map_err(|e| e.to_string());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "the directory {} does not exist (create it, e.g. systemd RuntimeDirectory= or LogsDirectory=)",
            dir.display()
        ));
    }
    access(dir, Access::WRITE_OK)
        .map_err(|e| format!("cannot create a file in {}: {e}", dir.display()))
}

/// How long the app's import may take in `--check`: a deploy script must not hang.
const IMPORT_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Starts Python and imports the app in a forked child, which prints what it found.
fn import_in_child(config: &Config) -> Result<(), CheckError> {
    let _ = std::io::stdout().flush();
    use rustix::process::{kill_process, waitpid, Pid, Signal, WaitOptions};
    // SAFETY: called before this process has started any thread (main runs the check
    // first), so the child may run arbitrary code. Through libc: rustix has no fork.
    match unsafe { libc::fork() } {
        -1 => Err(CheckError::Fork(std::io::Error::last_os_error())),
        0 => {
            let code = match crate::boot::apply_env_and_chdir(config)
                .and_then(|_| crate::boot::drop_privileges(config))
                .and_then(|()| crate::boot::start_python(config))
            {
                Ok(loaded) => {
                    let info = crate::wsgi::interpreter::loaded_python_version();
                    println!("  python: {info}");
                    let elsewhere = crate::wsgi::interpreter::libpython_elsewhere();
                    if let Some(e) = &elsewhere {
                        println!("  warning: {e}");
                    }
                    println!(
                        "  interface: {}, as {}",
                        loaded.interface.name(),
                        loaded.why
                    );
                    // regression (probe 368): `--loop uvloop` without uvloop passed the
                    // check, and every worker then failed to start.
                    let event_loop = (loaded.interface == crate::asgi::detect::Interface::Asgi)
                        .then(|| config.opts.r#loop.check());
                    match &event_loop {
                        Some(Ok(name)) => println!("  event loop: {name}"),
                        Some(Err(e)) => eprintln!("postern --check: {e}"),
                        None => {}
                    }
                    if loaded.interface == crate::asgi::detect::Interface::Wsgi
                        && config.opts.interface == crate::asgi::InterfaceOption::Auto
                        && !config.asgi_options_set.is_empty()
                    {
                        println!(
                            "  {}: {}",
                            if crate::config::asgi_options_warn(&config.asgi_options_set) {
                                "warning"
                            } else {
                                "note"
                            },
                            crate::config::asgi_options_unused(
                                &config.asgi_options_set,
                                "the app is a WSGI callable"
                            )
                        );
                    }
                    match &config.venv {
                        Some(v) => println!("  venv: {}", v.display()),
                        None if elsewhere.is_some() => {
                            println!("  venv: none (the Python loaded, above)")
                        }
                        None => println!("  venv: none (the build's Python)"),
                    }
                    if matches!(event_loop, Some(Err(_))) {
                        1
                    } else {
                        0
                    }
                }
                Err(e) => {
                    eprintln!("postern --check: {e:#}");
                    1
                }
            };
            if crate::wsgi::interpreter::is_initialized() {
                crate::wsgi::flush_std_streams();
            }
            let _ = std::io::stdout().flush();
            // SAFETY: ending the child without running the parent's atexit/destructors.
            // Through libc: rustix has no _exit outside its experimental runtime module.
            unsafe { libc::_exit(code) }
        }
        pid => {
            let pid = Pid::from_raw(pid).expect("fork returned a positive pid");
            let deadline = Instant::now() + IMPORT_LIMIT;
            let status = loop {
                match waitpid(Some(pid), WaitOptions::NOHANG) {
                    Ok(Some((_, status))) => break status,
                    Ok(None) => {}
                    Err(e) => return Err(CheckError::Wait(e.into())),
                }
                if Instant::now() >= deadline {
                    let _ = kill_process(pid, Signal::KILL);
                    let _ = waitpid(Some(pid), WaitOptions::empty());
                    return Err(CheckError::Slow(IMPORT_LIMIT.as_secs()));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            };
            match (status.terminating_signal(), status.exit_status()) {
                (Some(sig), _) => Err(CheckError::Killed(sig)),
                (None, Some(0)) => Ok(()),
                _ => Err(CheckError::App),
            }
        }
    }
}
