//! Starting the app as the configuration says: the listeners a start uses, the
//! environment and working directory for the app, the embedded Python (with the venv),
//! `sys.path`, the import. Used by the single process, each worker (or the master with
//! `--preload`), and `--check`.

use anyhow::Context as _;

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
        })
        .collect();
    for addr in inherited {
        if !configured.iter().any(|(_, a)| a == addr) {
            plan.push(Planned {
                protocol: Protocol::default(),
                addr: addr.clone(),
                inherited: true,
            });
        }
    }
    plan
}

/// `--socket-mode`, `--socket-owner` and `--listen-backlog`, for binding the listeners.
pub fn socket_options(config: &Config) -> SocketOptions {
    SocketOptions {
        mode: config.opts.socket_mode.map(|m| m.0),
        owner: config.socket_owner,
        backlog: config.opts.listen_backlog,
    }
}

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

/// `--uid` / `--gid`: give up root once the listeners are bound (and, in `--check`'s
/// child, before the import, so the app and Python are read as the start reads them).
pub fn drop_privileges(config: &Config) -> anyhow::Result<()> {
    use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
    if let Some(g) = config.gid {
        let _ = setgroups(&[Gid::from_raw(g)]);
        setgid(Gid::from_raw(g)).with_context(|| format!("--gid {g}"))?;
    }
    if let Some(u) = config.uid {
        setuid(Uid::from_raw(u)).with_context(|| format!("--uid {u}"))?;
    }
    if config.uid.is_some() || config.gid.is_some() {
        tracing::info!(uid = ?config.uid, gid = ?config.gid, "dropped privileges");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Layered};
    use clap::{CommandFactory, FromArgMatches};

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
                inherited: true
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
            .map(|p| (p.protocol, p.addr.to_string(), p.inherited))
            .collect();
        assert_eq!(
            plan,
            [
                (Protocol::Uwsgi, "127.0.0.1:9".into(), false),
                (Protocol::FastCgi, "unix:/run/a.sock".into(), true),
                (Protocol::Uwsgi, "unix:/run/extra.sock".into(), true),
            ]
        );
    }
}
