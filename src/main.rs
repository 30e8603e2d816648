//! `postern`: parse the configuration, start Python and import the app, bind, serve
//! until SIGTERM/SIGINT, drain, exit. Errors become one clear sentence and an exit code.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use pyo3::prelude::PyAnyMethods;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use postern::config::{Cli, Command, Config, LogFormat};
use postern::server::{self, connection::Limits, listener};
use postern::wsgi::{self, interpreter, pool::Pool, Settings};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.version {
        println!("postern {}", env!("CARGO_PKG_VERSION"));
        println!("Python {}", interpreter::loaded_python_version());
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Request(args)) = &cli.command {
        return match postern::client::run(args) {
            Ok(code) => ExitCode::from(code as u8),
            Err(e) => {
                eprintln!("postern request: {e}");
                ExitCode::from(e.exit_code() as u8)
            }
        };
    }
    let config = match Config::resolve(cli, std::env::var_os("VIRTUAL_ENV").map(Into::into)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("postern: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("postern: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|e| {
        eprintln!(
            "postern: --log-level {:?} is not valid ({e}); using info",
            config.log_level
        );
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    for (k, v) in &config.env {
        // Single-threaded here: no other thread reads the environment yet.
        std::env::set_var(k, v);
    }
    if let Some(dir) = &config.chdir {
        std::env::set_current_dir(dir).with_context(|| format!("--chdir {}", dir.display()))?;
    }
    if config.default_listener {
        tracing::info!(
            "no listener configured; using --uwsgi {}",
            postern::config::DEFAULT_LISTENER
        );
    }

    // Bind first: a taken address is reported at once, and requests that arrive while
    // the app imports wait in the listen queue instead of being refused.
    let opts = listener::SocketOptions {
        mode: config.socket_mode,
        owner: config.socket_owner,
        backlog: config.listen_backlog,
    };
    let mut bound = Vec::new();
    for addr in &config.listeners {
        match listener::bind(addr, &opts) {
            Ok(b) => bound.push(b),
            Err(e) => {
                server::remove_unix_sockets(&bound);
                return Err(e.into());
            }
        }
    }

    let app = match start_python(&config) {
        Ok(app) => app,
        Err(e) => {
            server::remove_unix_sockets(&bound);
            return Err(e);
        }
    };
    let settings = Settings {
        threads: config.threads,
        multiprocess: config.workers > 1,
    };
    let (pool, threads) = Pool::start(app, settings).context("starting the Python threads")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("postern-io")
        .enable_all()
        .build()
        .map_err(server::ServerError::Runtime)?;
    let limits = Limits {
        buffer_size: config.buffer_size,
        spool_threshold: config.body_spool_threshold,
        max_body: config.max_body,
        head_timeout: config.head_timeout,
        read_timeout: config.read_timeout,
    };
    for b in &bound {
        tracing::info!(listener = %b.addr, protocol = "uwsgi", "listening");
    }
    tracing::info!(
        app = %config.app,
        threads = config.threads,
        pid = std::process::id(),
        "ready"
    );
    let graceful = config.graceful_timeout;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signal(shutdown.clone()));
        server::serve(bound, pool, limits, shutdown, graceful).await
    })?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    threads.join();
    run_atexit();
    tracing::info!("stopped");
    Ok(())
}

/// Starts Python, sets up sys.path and imports the app. Logs the version and prefix.
fn start_python(config: &Config) -> anyhow::Result<pyo3::Py<pyo3::PyAny>> {
    let info = interpreter::initialize(config.venv.as_deref())?;
    tracing::info!(
        python = %info.version,
        prefix = %info.prefix,
        executable = %info.executable,
        "embedded Python started"
    );
    if let Some(v) = &config.venv {
        tracing::info!(venv = %v.display(), "using virtualenv");
    }
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let mut path: Vec<_> = config
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
    path.push(cwd);
    pyo3::Python::attach(|py| -> anyhow::Result<_> {
        interpreter::prepend_sys_path(py, &path)
            .map_err(|e| anyhow::anyhow!("setting sys.path: {e}"))?;
        let app = interpreter::load_app(py, &config.app)?;
        tracing::info!(app = %config.app, "app imported");
        Ok(app)
    })
}

/// Runs the app's `atexit` handlers (the interpreter is not finalised: daemon threads
/// of the app may still hold it).
fn run_atexit() {
    pyo3::Python::attach(|py| {
        if let Err(e) = py
            .import("atexit")
            .and_then(|m| m.call_method0("_run_exitfuncs"))
        {
            tracing::warn!(detail = %wsgi::traceback(py, &e), "an atexit handler failed");
        }
    });
}

async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop postern with SIGKILL");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(
        signal = name,
        "stopping: no new connections, letting in-flight requests finish"
    );
    shutdown.cancel();
}
