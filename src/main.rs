//! `postern`: parse the configuration, start Python and import the app, bind, serve
//! until SIGTERM/SIGINT, drain, exit. Errors become one clear sentence and an exit code.

use std::process::ExitCode;

use anyhow::Context as _;
use postern::config::{Command, Config, Layered};
use postern::server::{self, connection::Limits, listener};
use postern::wsgi::{self, interpreter, Settings};
use postern::{boot, logging, supervisor};

/// Writes `text` to stdout. A reader that closed the pipe early (`postern --version |
/// head -1`) took what it wanted: that is not an error (`print!` would panic on it).
fn out(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("postern: cannot write to standard output: {e}");
        }
    }
}

fn main() -> ExitCode {
    // Before postern opens any file of its own (see the function).
    listener::note_systemd_fds();
    // Before anything else, while this is the only thread: a SIGHUP (a `systemctl
    // reload` right after the start), SIGUSR1, SIGUSR2, SIGTTIN or SIGTTOU waits until
    // its handler is in place instead of killing or stopping the process.
    let held = postern::stop::hold_at_start();
    let (cli, layered) = match Layered::from_command_line() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("postern: {e}");
            return ExitCode::from(2);
        }
    };
    let serves = cli.command.is_none() && !cli.version && !cli.print_config && !cli.check;
    if !serves {
        // A command that does not serve keeps the signals' default actions (a closed
        // terminal's SIGHUP ends `postern status --watch`), and `--check`'s child,
        // which imports the app, starts with the mask postern was started with.
        let _ = postern::stop::release_held();
    } else if let Err(e) = held {
        eprintln!(
            "postern: cannot block SIGHUP and the like until their handlers are in place: {e}"
        );
    }
    if cli.version {
        out(&format!(
            "postern {}\nPython {}\n",
            env!("CARGO_PKG_VERSION"),
            interpreter::loaded_python_version()
        ));
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Status(args)) = &cli.command {
        return match postern::stats::client::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("postern status: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Migrate(args)) = &cli.command {
        if let Some(gunicorn) = postern::config::gunicorn::migrate(&args.ini) {
            return match gunicorn {
                Ok(m) => {
                    out(&m.toml);
                    eprintln!("postern migrate: {}", m.summary);
                    ExitCode::from(m.code)
                }
                Err(e) => {
                    eprintln!("postern migrate: {e}");
                    ExitCode::from(2)
                }
            };
        }
        return match postern::config::migrate_uwsgi(&args.ini, &args.vars) {
            Ok(ini) => {
                out(&ini.to_toml());
                eprintln!("postern migrate: {}", ini.summary());
                ExitCode::from(ini.exit_code())
            }
            Err(e) => {
                eprintln!("postern migrate: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Some(Command::Bench(args)) = &cli.command {
        return match postern::client::bench::run(args) {
            Ok(code) => ExitCode::from(code as u8),
            Err(e) => {
                eprintln!("postern bench: {e}");
                ExitCode::from(e.exit_code() as u8)
            }
        };
    }
    if let Some(Command::Request(args)) = &cli.command {
        return match postern::client::run(args) {
            Ok(code) => ExitCode::from(code as u8),
            Err(e) => {
                // A reader that stopped early (`| head -1`) is not news: quiet, as a
                // program ended by SIGPIPE, and not a success either.
                let closed = matches!(&e, postern::client::ClientError::Output(io)
                    if io.kind() == std::io::ErrorKind::BrokenPipe);
                if !closed {
                    // Not `eprintln!`: a closed stderr must not end it in a panic.
                    let _ = std::io::Write::write_fmt(
                        &mut std::io::stderr().lock(),
                        format_args!("postern request: {e}\n"),
                    );
                }
                ExitCode::from(e.exit_code() as u8)
            }
        };
    }
    let virtual_env = std::env::var_os("VIRTUAL_ENV").map(Into::into);
    let resolved = Config::resolve(&layered, virtual_env);
    if cli.print_config || cli.check {
        for w in [&layered.ini_warnings, &layered.ini_info]
            .into_iter()
            .flatten()
        {
            eprintln!("postern: {w}");
        }
        for w in postern::config::unknown_vars() {
            eprintln!("postern: {w}");
        }
    }
    if let (Ok(c), true) = (&resolved, cli.print_config || cli.check) {
        for w in &c.unused {
            eprintln!("postern: {w}");
        }
    }
    if cli.print_config {
        out(&layered.to_toml(resolved.as_ref().ok()));
        if let Err(e) = &resolved {
            eprintln!("postern: {e}");
            return ExitCode::from(2);
        }
        return ExitCode::SUCCESS;
    }
    let config = match resolved {
        Ok(c) => c,
        Err(e) => {
            eprintln!("postern: {e}");
            return ExitCode::from(2);
        }
    };
    // First, so that everything postern creates takes it: the log files, the pidfile,
    // a Unix socket without --socket-mode (its bind sets its own umask around it and
    // restores this one), and, inherited by the workers, the app's files.
    if let Some(m) = config.opts.umask {
        rustix::process::umask(rustix::fs::Mode::from_bits_truncate(m.0));
    }
    if cli.check {
        return match postern::check::run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("postern --check: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // A start-up error (exit 1, as a socket or a pidfile that cannot be made), not a
    // bad option (2). regression: an unwritable --log-file exited 2.
    if let Err(e) = logging::init(&config.opts.log_options()) {
        eprintln!("postern: {e}");
        return ExitCode::FAILURE;
    }
    // One line where the start was run from: with the log in a file (`--log-file`, an
    // ini's `logto` or `daemonize`), nothing else shows there, and postern stays in the
    // foreground where uWSGI's `daemonize` returned.
    // regression (probe 313): `daemonize = FILE` left the terminal silent, as if hung.
    if let Some(file) = &config.opts.log_options().file {
        eprintln!(
            "postern {} (pid {}) runs in the foreground; its log goes to {}",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            file.display()
        );
    }
    if let Some(w) = config.opts.umask.and_then(|m| boot::umask_warning(m.0)) {
        tracing::warn!("{w}");
    }
    logging::log_panics();
    postern::forked::install();
    for w in postern::config::unknown_vars() {
        tracing::warn!("{w}");
    }
    let empty = postern::config::empty_vars();
    if !empty.is_empty() {
        tracing::info!(
            "{} empty, so taken as not set (the lower layers and the defaults apply)",
            empty.join(", ")
        );
    }
    let python = interpreter::loaded_python_version();
    tracing::info!(
        pid = std::process::id(),
        "postern {} starting: app {}, Python {}, {} worker(s) of {} thread(s)",
        env!("CARGO_PKG_VERSION"),
        config.app,
        python.split_whitespace().next().unwrap_or("?"),
        config.opts.workers,
        config.opts.threads,
    );
    let result = run(config, postern::config::reload::Layers::of(&layered));
    match result {
        Ok(()) => {
            logging::finish();
            ExitCode::SUCCESS
        }
        Err(e) => {
            logging::report_fatal(&supervisor::with_open_files_advice(format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config, layers: postern::config::reload::Layers) -> anyhow::Result<()> {
    if let Some(w) = &config.ini_warnings {
        tracing::warn!("{w}");
    }
    if let Some(i) = &config.ini_info {
        tracing::info!("{i}");
    }
    for w in &config.unused {
        tracing::warn!("{w}");
    }
    // Single-threaded here: no other thread reads the environment yet.
    let app_dir = boot::apply_env_and_chdir(&config)?;

    // Bind first: a taken address is reported at once, and requests that arrive while
    // the app imports wait in the listen queue instead of being refused.
    let opts = boot::socket_options(&config);
    // Sockets passed by systemd are used as they are (never rebound); a configured
    // listener with the same address takes its inherited socket.
    let mut inherited = listener::systemd_listeners();
    let passed: Vec<_> = inherited.iter().map(|b| b.addr.clone()).collect();
    if config.default_listener && passed.is_empty() {
        match config.default_listener_warning() {
            Some(w) => tracing::warn!("{w}"),
            None => tracing::info!(
                "no listener configured; using --uwsgi {}",
                postern::config::DEFAULT_LISTENER
            ),
        }
    }
    let mut bound = Vec::new();
    let planned = boot::listeners(&config, &passed);
    boot::warn_unmatched_passed(&planned);
    for plan in planned {
        let taken = match inherited
            .iter()
            .position(|b| plan.inherited && b.addr == plan.addr)
        {
            Some(i) => {
                tracing::info!(listener = %plan.addr, "using the socket passed by systemd");
                Ok(inherited.remove(i))
            }
            None => listener::bind(&plan.addr, &opts),
        };
        match taken {
            Ok(mut b) => {
                if !b.inherited {
                    boot::warn_if_front_server_locked_out(&config, &b.addr);
                }
                b.info.protocol = plan.protocol;
                bound.push(b)
            }
            // Dropping `bound` removes the socket files bound so far.
            Err(e) => return Err(e.into()),
        }
    }
    // Before Python and the app: see `crash::install`.
    if bound
        .iter()
        .any(|b| b.info.protocol == postern::codec::Protocol::FastCgi)
    {
        postern::server::fastcgi::crash::install();
    }
    // --stats: bound with the listeners (a taken address stops postern now).
    let stats = match config
        .opts
        .stats
        .as_ref()
        .map(|a| postern::stats::server::bind(a, &opts))
    {
        Some(Err(e)) => return Err(e.into()),
        Some(Ok(b)) => Some(b),
        None => None,
    };
    // The pidfile is written before privileges are dropped, as root daemons do: it
    // usually lives in a directory only root may write (/run).
    let started = config
        .opts
        .pidfile
        .as_deref()
        .map_or(Ok(()), boot::write_pidfile)
        .and_then(|()| boot::drop_privileges(&config));
    started?;
    boot::warn_if_root();
    boot::warn_if_pid1_alone(config.supervised);
    if bound.iter().any(|b| !b.inherited) {
        boot::warn_if_backlog_capped(config.opts.listen_backlog);
    }
    // The --stats socket file's guard stays here (removed on return): the listener
    // goes to a thread or helper process that never gives it back.
    let mut stats = stats;
    let _stats_file = stats.as_mut().and_then(|s| s.socket_file.take());
    if !config.supervised {
        let files = bound
            .iter()
            .filter_map(|b| b.socket_file.as_ref())
            .chain(&_stats_file)
            .map(|f| f.path());
        // (--pidfile implies a master.)
        quit_now_cleans_up(files);
    }
    let result = serve(&config, layers, app_dir.as_deref(), bound, stats);
    let cut_off = result
        .as_ref()
        .err()
        .and_then(|e| e.downcast_ref::<CutOff>())
        .map(|c| c.0.clone());
    if let Some(p) = &config.opts.pidfile {
        boot::remove_pidfile(p);
    }
    if let Some(what) = cut_off {
        // Python threads are still busy (one may hold the GIL): leave without touching
        // the interpreter again, once the files above and the --stats socket are gone.
        drop(_stats_file);
        tracing::error!("{what}; exit code 1");
        logging::finish();
        std::process::exit(1)
    }
    result
}

/// A single process: a SIGQUIT the server cannot take (the app still importing, or a
/// stop under way held up by the app's atexit) ends the process as the master's does
/// (it kills its workers): the Unix socket files (those that still name the sockets
/// bound here) are removed, exit code 0, or 1 when it cut a stop short.
/// regression: such a SIGQUIT ended it by a signal, the socket files left behind.
fn quit_now_cleans_up<'a>(files: impl Iterator<Item = &'a std::path::Path>) {
    use std::os::unix::fs::MetadataExt as _;
    let id = |p: &std::path::Path| {
        std::fs::symlink_metadata(p)
            .map(|m| (m.dev(), m.ino()))
            .ok()
    };
    let files: Vec<_> = files.map(|p| (p.to_owned(), id(p))).collect();
    let set = postern::stop::on_quit_now(move |under_way| {
        if under_way {
            tracing::warn!("SIGQUIT during the stop: stopping now; exit code 1");
        } else {
            tracing::info!("SIGQUIT while the app imports: stopping now");
        }
        for (path, bound) in &files {
            if bound.is_some() && id(path) == *bound {
                let _ = std::fs::remove_file(path);
            }
        }
        logging::finish();
        // SAFETY: ends the process without running exit handlers: another thread may be
        // in the app's import or its atexit, holding the GIL or locks exit would take.
        // libc: std has no _exit.
        unsafe { libc::_exit(i32::from(under_way)) }
    });
    if let Err(e) = set {
        // regression: under a low open-file limit this line said EMFILE without the
        // limit and what to change, as every other such line does.
        tracing::warn!(
            "{}",
            supervisor::with_open_files_advice(format!(
                "cannot start the thread that ends the process on SIGQUIT (a SIGQUIT while the app imports will leave the Unix socket files behind): {e}"
            ))
        );
    }
}

/// The single process or the master stopped uncleanly (requests still running at
/// `--graceful-timeout` or a second signal; workers killed), said in this sentence:
/// [`run`] cleans up, then exits without returning through Python.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct CutOff(String);

/// What one generation of workers runs: the start's configuration, then each
/// reload's ([`postern::config::reload::at_reload`]). The master hands it to each
/// worker it forks for that generation.
struct Generation {
    config: Config,
    /// What the layers said for it: the next reload names what it changes.
    layers: postern::config::reload::Layers,
    /// `--chdir` as an absolute path (from the start directory), entered by each
    /// worker before its import; a reload's generation without one enters the start
    /// directory.
    app_dir: Option<std::path::PathBuf>,
    settings: Settings,
    limits: Limits,
}

impl Generation {
    fn new(
        config: Config,
        layers: postern::config::reload::Layers,
        app_dir: Option<std::path::PathBuf>,
    ) -> Generation {
        let settings = Settings {
            threads: config.opts.threads,
            sched_batch: config.opts.sched_batch,
            multiprocess: config.opts.workers > 1,
            monitor: None,
            mounts: config.mounts.clone(),
        };
        let limits = Limits {
            buffer_size: config.opts.buffer_size.0 as usize,
            spool_threshold: config.opts.body_spool_threshold.0,
            max_body: config.opts.max_body.map(|s| s.0),
            head_timeout: config.opts.head_timeout.0,
            read_timeout: config.opts.read_timeout.0,
            fcgi: server::fastcgi::FcgiSettings {
                stderr: !config.opts.no_fastcgi_stderr,
                max_reqs: config.opts.threads * config.opts.workers,
                input: server::admission::InputBudget::new(
                    config.opts.fastcgi_buffer.0 as usize,
                    config.opts.fastcgi_buffer_total.0 as usize,
                ),
            },
            max_connections: config.opts.max_connections,
        };
        Generation {
            config,
            layers,
            app_dir,
            settings,
            limits,
        }
    }

    /// The master's options for this generation's workers; `summary`: what `/status`
    /// shows of its configuration.
    fn master_options(&self, summary: Vec<(String, String)>) -> supervisor::Options {
        let config = &self.config;
        supervisor::Options {
            workers: config.opts.workers,
            threads: config.opts.threads,
            graceful_timeout: config.opts.graceful_timeout.0,
            start_timeout: config.opts.worker_start_timeout.0,
            // An ASGI worker cuts its requests off at --graceful-timeout, then runs its
            // lifespan shutdown: the master waits for that before it kills it.
            past_graceful: match config.opts.interface {
                postern::asgi::InterfaceOption::Wsgi => std::time::Duration::ZERO,
                _ => postern::asgi::stop::past_graceful(
                    config.opts.lifespan,
                    config.opts.lifespan_timeout.0,
                ),
            },
            timeout: config.opts.timeout.map(|s| s.0),
            slow_log: config.opts.slow_log.map(|s| s.0),
            max_lifetime: config.opts.max_lifetime.map(|s| s.0),
            recycles: config.opts.max_requests.is_some() || config.opts.max_rss.is_some(),
            chain_reload: config.opts.chain_reload,
            touch_reload: config.opts.touch_reload.clone(),
            // Python runs in the master: every fork is bracketed for CPython.
            preload: true,
            app_preloaded: config.opts.preload,
            lifespan_timeout_over_start: lifespan_timeout_over_start(config)
                .filter(|_| config.opts.interface == postern::asgi::InterfaceOption::Auto),
            summary,
            log_level: config.opts.log_level.clone(),
            access_log: config.opts.access_log.clone(),
        }
    }

    /// The generation a reload starts, from the configuration read again; `None`:
    /// refused (the configuration is invalid, said in the log).
    fn reloaded(&self, start: &Generation, thread_room: usize) -> Option<(Generation, bool)> {
        use postern::config::reload::{at_reload, Next};
        let Next::Apply {
            config,
            layers,
            changed,
        } = at_reload(
            &self.config,
            &self.layers,
            start.config.opts.preload,
            thread_room,
        )
        else {
            return None;
        };
        // --chdir from the start directory (the master is in the start's --chdir); none
        // (or one removed since): the start directory. Both by their logical paths, so
        // a symlink on them switched since (a new release) leads the import there, as a
        // restart from that directory would. regression: without --chdir the new
        // workers imported from the master's directory, the release it started in.
        let from = postern::config::start_dir();
        let app_dir = match &config.opts.chdir {
            Some(dir) => Some(from.unwrap_or_default().join(dir)),
            None => from,
        };
        Some((Generation::new(*config, layers, app_dir), changed))
    }
}

/// `--lifespan-timeout` when it is not [`postern::asgi::STARTUP_GRACE`] below
/// `--worker-start-timeout` and the app may
/// be ASGI under a master: an ASGI worker is ready only after its lifespan startup, so
/// a start bound at or under the lifespan's own timeout would kill it before that
/// timeout could say what hangs. Only for an app known to be ASGI: with --interface
/// asgi now, with auto once a worker has imported it and says so (the master warns
/// then); a WSGI app has no lifespan.
/// regression: it fired for WSGI apps under --interface auto.
fn lifespan_timeout_over_start(config: &Config) -> Option<std::time::Duration> {
    (config.supervised
        && config.opts.interface != postern::asgi::InterfaceOption::Wsgi
        && config.opts.lifespan != postern::asgi::lifespan::LifespanMode::Off
        && config.opts.lifespan_timeout.0 + postern::asgi::STARTUP_GRACE
            >= config.opts.worker_start_timeout.0)
        .then_some(config.opts.lifespan_timeout.0)
}

fn serve(
    config: &Config,
    layers: postern::config::reload::Layers,
    app_dir: Option<&std::path::Path>,
    bound: Vec<listener::Bound>,
    stats: Option<listener::Bound>,
) -> anyhow::Result<()> {
    let first = Generation::new(config.clone(), layers, app_dir.map(Into::into));
    let settings = first.settings.clone();
    let limits = first.limits.clone();
    wsgi::errors::set_rate(config.opts.errors_rate);
    for b in &bound {
        let (nginx, apache) = listener::front_server_lines(b.info.protocol, &b.addr);
        tracing::info!(
            "listening on {} ({}); nginx: `{nginx}`  Apache: `{apache}`",
            b.addr,
            b.info.protocol.name()
        );
        listener::warn_if_reachable(&b.addr);
    }

    if config.opts.interface == postern::asgi::InterfaceOption::Asgi {
        if let Some(lifespan) = lifespan_timeout_over_start(config) {
            supervisor::warn_lifespan_timeout(lifespan, config.opts.worker_start_timeout.0);
        }
    }
    if config.supervised {
        // The master starts Python once and forks every worker from the initialised
        // interpreter, so the workers share its pages (as uWSGI's do); each worker
        // imports the app itself (lazy mode), unless --preload imported it here.
        let opts = first.master_options(stats_summary(config, &bound));
        // --preload: the master imports the app once; workers share its pages.
        // Before Python starts: any thread it starts here inherits the master's mask.
        supervisor::block_master_signals().context("blocking the master's signals")?;
        let started = boot::start_interpreter(config).and_then(|()| {
            let app = config
                .opts
                .preload
                .then(|| boot::import_app(config, || true))
                .transpose()?;
            interpreter::prepare_for_fork()?;
            // A thread started while Python started (sitecustomize, a .pth file) lives
            // only in the master: the workers, forked from it, do not have it.
            let threads = std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count());
            if threads > 1 && config.opts.preload {
                tracing::warn!(
                    threads,
                    "Python started threads in the master, where --preload imported the app (a thread the app or a library starts at import: a scheduler, an APM agent; or a sitecustomize or .pth file in the venv): they do not run in the workers, which are forked from the master; start them lazily in each worker (at the first request), or run without --preload"
                );
            } else if threads > 1 {
                tracing::warn!(
                    threads,
                    "Python started threads in the master (a sitecustomize or a .pth file in the venv?): they do not run in the workers, which are forked from the master; start such an agent from the app instead"
                );
            }
            Ok(app)
        });
        let preloaded = started?;
        let stats = match stats {
            Some(b) => Some(supervisor::Stats {
                probes: supervisor::report::probes(&bound)?,
                config: stats_summary(config, &bound),
                bound: b,
            }),
            None => None,
        };
        // A reload's workers may run more --threads than the start's, up to the
        // lines a scoreboard slot has (made once, before the first fork).
        let thread_room = config.opts.threads.max(supervisor::scoreboard::TASK_LINES);
        let first: supervisor::GenerationSettings = std::sync::Arc::new(first);
        let start = std::sync::Arc::clone(&first);
        let reread = |serving: &supervisor::GenerationSettings| {
            let (Some(serving), Some(start)) = (
                serving.downcast_ref::<Generation>(),
                start.downcast_ref::<Generation>(),
            ) else {
                return supervisor::Reread::Refused;
            };
            match serving.reloaded(start, thread_room) {
                Some((next, changed)) => {
                    // As at the start (the master warns under `auto` itself).
                    let lifespan = lifespan_timeout_over_start(&next.config);
                    if next.config.opts.interface == postern::asgi::InterfaceOption::Asgi
                        && lifespan.is_some()
                        && lifespan != lifespan_timeout_over_start(&serving.config)
                    {
                        supervisor::warn_lifespan_timeout(
                            next.config.opts.lifespan_timeout.0,
                            next.config.opts.worker_start_timeout.0,
                        );
                    }
                    supervisor::Reread::Next {
                        opts: Box::new(next.master_options(stats_summary(&next.config, &bound))),
                        settings: std::sync::Arc::new(next),
                        changed,
                    }
                }
                None => supervisor::Reread::Refused,
            }
        };
        let result = supervisor::run(opts, first, stats, &bound, reread, |ctx| {
            let mine: Vec<_> = match bound.iter().map(|b| b.try_clone()).collect() {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(error = %e, "cannot take the listeners");
                    return 3;
                }
            };
            let generation = std::sync::Arc::clone(&ctx.settings);
            let Some(generation) = generation.downcast_ref::<Generation>() else {
                tracing::error!("a worker was started without its generation's settings");
                return 3;
            };
            let app = preloaded.as_ref().map(|a| a.clone_ref());
            let code = worker(config, generation, app, mine, ctx);
            logging::finish();
            code
        });
        drop(bound); // removes the socket files (see listener::SocketFile)
        if let Err(supervisor::SupervisorError::CutOff(what)) = result {
            // regression: a master whose stop cut requests off exited 0 (README: 1).
            return Err(CutOff(what.to_string()).into());
        }
        result?;
        tracing::info!("stopped");
        return Ok(());
    }

    // A fork of the app's from here gets no copy of the listeners, --stats's included
    // (see `forked`).
    // regression (review): a child that lived on kept the --stats port after the stop.
    let fds: Vec<_> = bound
        .iter()
        .chain(&stats)
        .map(listener::Bound::fd)
        .collect();
    postern::forked::serving(&fds, &[]);
    drop(fds);
    // --stats answers from now on: /ping says 503 while the app imports.
    let monitor = match stats {
        Some(b) => Some(supervisor::report::start_single(
            b,
            &bound,
            config.opts.threads,
            stats_summary(config, &bound),
        )?),
        None => None,
    };
    // From here a SIGTERM or Ctrl-C is counted and acted on once the server runs: one
    // that comes while the app imports (or its lifespan starts) still lets the listen
    // queue be served and the lifespan shut down; a second one stops at once. A SIGHUP
    // (no reload without the master) is logged and ignored.
    // regression: a SIGTERM during the import killed the process outright (the listen
    // queue was reset), and a Ctrl-C during an ASGI lifespan startup was swallowed.
    // A process that cannot take its stop must not serve: it fails its start.
    postern::stop::install(true)?;
    // Every signal held since main's start has its handler now (SIGUSR1's: logging),
    // and the threads that run the app, started below, must not inherit the mask.
    postern::stop::release_held().context("unblocking SIGHUP and the like")?;
    let loaded = boot::start_python(config)?;
    postern::stop::imported();
    logging::start_background();
    let on_ready = {
        let monitor = monitor.clone();
        let app_name = config.app.to_string();
        let threads = config.opts.threads;
        Box::new(move || {
            if let Some(m) = &monitor {
                m.serving();
            }
            tracing::info!(app = %app_name, threads, pid = std::process::id(), "ready");
        })
    };
    let settings = Settings {
        monitor: monitor.map(|m| m as std::sync::Arc<dyn wsgi::Monitor>),
        ..settings
    };
    if server::run(
        bound,
        loaded.app,
        settings,
        serving_limits(config, limits, loaded.interface),
        config.opts.graceful_timeout.0,
        server::Mode::Single { on_ready },
        asgi_settings(config, loaded.interface),
    )? {
        wsgi::run_atexit();
        tracing::info!("stopped");
        Ok(())
    } else {
        // regression: exiting here skipped run's clean-up (the --pidfile, the --stats
        // socket file stayed behind).
        Err(CutOff("stopped with requests cut off".into()).into())
    }
}

/// `limits` for the interface the app is served with: an ASGI worker runs up to
/// `--max-concurrency` requests at once, not `--threads`, and says so in
/// FCGI_GET_VALUES_RESULT (`FCGI_MAX_CONNS`, `FCGI_MAX_REQS`).
/// regression (probe 347 LOW): an ASGI worker advertised 1 (threads × workers).
fn serving_limits(
    config: &Config,
    mut limits: Limits,
    interface: postern::asgi::detect::Interface,
) -> Limits {
    if let Some(a) = asgi_settings(config, interface) {
        limits.fcgi.max_reqs = a.max_concurrency.saturating_mul(config.opts.workers.max(1));
    }
    limits
}

/// The ASGI loop's settings when the app is served as ASGI (`--interface`).
fn asgi_settings(
    config: &Config,
    interface: postern::asgi::detect::Interface,
) -> Option<postern::asgi::AsgiSettings> {
    (interface == postern::asgi::detect::Interface::Asgi).then_some(postern::asgi::AsgiSettings {
        event_loop: config.opts.r#loop,
        max_concurrency: config.opts.max_concurrency,
        lifespan: config.opts.lifespan,
        lifespan_timeout: config.opts.lifespan_timeout.0,
        // Only a master enforces --timeout.
        timeout: config
            .supervised
            .then_some(config.opts.timeout)
            .flatten()
            .map(|s| s.0),
    })
}

/// What `/status` shows of the configuration.
fn stats_summary(config: &Config, bound: &[listener::Bound]) -> Vec<(String, String)> {
    let o = &config.opts;
    let listeners: Vec<String> = bound
        .iter()
        .map(|b| format!("{} {}", b.info.protocol.name(), b.addr))
        .collect();
    let mut v = vec![
        ("app".to_owned(), config.app.to_string()),
        ("listeners".to_owned(), listeners.join(", ")),
        ("workers".to_owned(), o.workers.to_string()),
        ("threads".to_owned(), o.threads.to_string()),
    ];
    let secs = |d: std::time::Duration| format!("{}s", d.as_secs_f64());
    for (k, d) in [
        ("timeout", o.timeout.map(|s| s.0)),
        ("slow-log", o.slow_log.map(|s| s.0)),
        ("max-lifetime", o.max_lifetime.map(|s| s.0)),
        ("graceful-timeout", Some(o.graceful_timeout.0)),
        (
            "worker-start-timeout",
            config.supervised.then_some(o.worker_start_timeout.0),
        ),
    ] {
        if let Some(d) = d {
            v.push((k.to_owned(), secs(d)));
        }
    }
    if let Some(n) = o.max_requests {
        v.push(("max-requests".to_owned(), n.to_string()));
    }
    if let Some(n) = o.max_rss {
        v.push(("max-rss".to_owned(), format!("{n}MiB")));
    }
    v
}

/// A worker process (forked by the master, Python initialised): import the app, serve,
/// exit code. `start` is the configuration the master started with (and applied to
/// itself: the environment), `generation` what this worker's generation runs.
fn worker(
    start: &Config,
    generation: &Generation,
    preloaded: Option<boot::Loaded>,
    bound: Vec<listener::Bound>,
    ctx: supervisor::WorkerContext,
) -> i32 {
    // Forked by the master: a worker, not a child the app forked (see `forked`).
    // The hand-over channel too: a copy in a child that lives on would keep open what
    // is in flight in it at the final stop.
    let channel = postern::server::fastcgi::handover::Channel::get().map(|c| c.ends());
    postern::forked::serving(
        &bound.iter().map(listener::Bound::fd).collect::<Vec<_>>(),
        channel.as_ref().map_or(&[][..], |ends| &ends[..]),
    );
    let config = &generation.config;
    let app_dir = generation.app_dir.as_deref();
    let (settings, limits) = (generation.settings.clone(), generation.limits.clone());
    // This process serves: its own log writer thread (none crossed the fork).
    logging::start_background();
    wsgi::errors::set_rate(config.opts.errors_rate);
    if let Err(e) = boot::apply_env_changes(&start.opts.env, &config.opts.env) {
        tracing::error!("{e:#}");
        return 3;
    }
    // Python is already initialised (the master forked this process from it). A
    // worker that imports enters --chdir again by its path: a symlink on it switched
    // since the start (a new release) leads this import to the new code. A preloaded
    // app stays in the master's directory, where its code came from.
    let loaded = match preloaded.map(Ok).unwrap_or_else(|| {
        app_dir.map_or(Ok(()), |d| {
            boot::enter_app_dir(d, config.chdir_source.as_deref())
        })?;
        boot::import_app(config, || ctx.board.first_to_warn_interface(ctx.slot))
    }) {
        Ok(loaded) => loaded,
        Err(e) => {
            // Once, in the log; the master then says the workers could not start.
            tracing::error!("{}", supervisor::with_open_files_advice(format!("{e:#}")));
            return 3;
        }
    };
    // Before anything is accepted: the master learns that the import is over, and
    // whether the app's stop runs an ASGI lifespan shutdown (it waits for that
    // before it kills a leaving worker). One it gave up on while it imported (a stop,
    // others serving) leaves without serving.
    let asgi = asgi_settings(config, loaded.interface).map(|a| a.max_concurrency);
    if !supervisor::imported(&ctx, asgi) {
        return 0;
    }
    if let Err(e) = wsgi::stacks::enable() {
        tracing::warn!("{}", supervisor::with_open_files_advice(e.to_string()));
    }
    let monitor = std::sync::Arc::new(supervisor::WorkerMonitor::new(
        &ctx,
        config.opts.max_requests,
        config.opts.max_rss,
        config.opts.worker_start_timeout.0,
        config.opts.timeout.map(|t| t.0),
    ));
    let settings = Settings {
        monitor: Some(std::sync::Arc::clone(&monitor) as _),
        ..settings
    };
    let (ready, board, slot) = (ctx.ready, std::sync::Arc::clone(&ctx.board), ctx.slot);
    let on_ready = Box::new(move || {
        monitor.ready();
        supervisor::announce_ready(ready, &board, slot)
    });
    match server::run(
        bound,
        loaded.app,
        settings,
        serving_limits(config, limits, loaded.interface),
        config.opts.graceful_timeout.0,
        server::Mode::Worker { on_ready },
        asgi_settings(config, loaded.interface),
    ) {
        Ok(true) => {
            wsgi::run_atexit();
            0
        }
        Ok(false) => 1,
        Err(e) => {
            tracing::error!("{}", supervisor::with_open_files_advice(e.to_string()));
            1
        }
    }
}
