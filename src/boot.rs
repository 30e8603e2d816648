//! Starting the app as the configuration says: the environment and working directory
//! for the app, the embedded Python (with the venv), `sys.path`, the import. Used by the
//! single process, each worker (or the master with `--preload`), and `--check`.

use anyhow::Context as _;

use crate::config::{Config, KeyValue};
use crate::wsgi::{self, interpreter};

/// `--env` and `--chdir`. Call while the process is single-threaded (no other thread
/// reads the environment yet).
pub fn apply_env_and_chdir(config: &Config) -> anyhow::Result<()> {
    for KeyValue(k, v) in &config.opts.env {
        std::env::set_var(k, v);
    }
    if let Some(dir) = &config.opts.chdir {
        std::env::set_current_dir(dir).with_context(|| format!("--chdir {}", dir.display()))?;
    }
    Ok(())
}

/// Starts Python, sets up sys.path and imports the app. Logs the version and prefix.
pub fn start_python(config: &Config) -> anyhow::Result<wsgi::App> {
    let info = interpreter::initialize(config.venv.as_deref()).map_err(|e| {
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
    if let Some(v) = &config.venv {
        tracing::info!(venv = %v.display(), "using virtualenv");
    }
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
    path.push(cwd);
    let app = interpreter::import(&path, &config.app)?;
    tracing::info!(app = %config.app, "app imported");
    Ok(app)
}
