//! ASGI: serving an async app on one asyncio event loop per worker, beside `wsgi`
//! (the second pyo3 user). It reuses the WSGI layer's request seams: a [`Request`]
//! comes from the same [`Source`] (the acceptor), the response leaves through the
//! same [`Sink`], and the same [`Monitor`] watches it.
//!
//! - [`detect`]: `--interface auto|wsgi|asgi`: is the imported callable an ASGI app?
//! - [`run`]: the loop thread ("python-asgi"): `--loop`, the wake-up on the
//!   acceptor's epoll, one task per request, `--max-concurrency`, the stop.
//! - [`dump`]: the tasks' stacks logged at the master's SIGUSR2 (`--timeout`).
//! - [`beat`]: the loop's heartbeat, so that `--timeout` catches a loop blocked with
//!   no request in flight.
//! - [`http`]: one HTTP request's `receive` and `send`, and their small awaitables.
//! - [`scope`]: the HTTP connection scope dict from the CGI variables.
//! - [`lifespan`]: the lifespan protocol (startup before serving, shutdown after).
//! - [`watch`]: every task on the scoreboard (`--timeout`, `/status`, metrics).
//! - [`stop`]: the end of the loop (the cut-off at `--graceful-timeout`, the tasks the
//!   app left running) and asyncio's error reports through `tracing`.
//!
//! [`Request`]: crate::wsgi::Request
//! [`Source`]: crate::wsgi::Source
//! [`Sink`]: crate::wsgi::Sink
//! [`Monitor`]: crate::wsgi::Monitor

pub mod beat;
pub mod detect;
pub mod dump;
pub mod http;
mod io;
pub mod lifespan;
pub mod run;
pub mod scope;
mod serve;
pub mod stop;
pub mod watch;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

pub use run::{start, Running, STARTUP_GRACE};
pub use stop::Stop;

/// `--interface`: which protocol the app speaks.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InterfaceOption {
    /// ASGI when the callable is a coroutine function (or its `__call__` is one), else WSGI.
    #[default]
    Auto,
    Wsgi,
    Asgi,
}

/// `--loop`: the asyncio event loop implementation.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LoopOption {
    /// uvloop when it can be imported, else asyncio's own.
    #[default]
    Auto,
    Asyncio,
    Uvloop,
}

impl LoopOption {
    /// The value as given on the command line (`uvloop`).
    pub fn name(self) -> &'static str {
        match self {
            LoopOption::Auto => "auto",
            LoopOption::Asyncio => "asyncio",
            LoopOption::Uvloop => "uvloop",
        }
    }

    /// The module whose `new_event_loop` makes this option's loop, and the loop's name
    /// as the start-up log and `--check` give it. A worker makes its loop from it; so
    /// `--check` says, without making one, what a worker would get: `--loop uvloop`
    /// without uvloop importable is the error a worker would stop with.
    pub(crate) fn module(
        self,
        py: pyo3::Python<'_>,
    ) -> pyo3::PyResult<(pyo3::Bound<'_, pyo3::types::PyModule>, &'static str)> {
        match self {
            LoopOption::Asyncio => Ok((py.import("asyncio")?, "asyncio")),
            LoopOption::Uvloop => Ok((py.import("uvloop")?, "uvloop")),
            LoopOption::Auto => match py.import("uvloop") {
                Ok(u) => Ok((u, "uvloop")),
                Err(_) => Ok((py.import("asyncio")?, "asyncio (uvloop is not installed)")),
            },
        }
    }

    /// [`LoopOption::module`]'s name, or the error a worker would stop with (`--check`).
    pub fn check(self) -> Result<&'static str, AsgiError> {
        pyo3::Python::attach(|py| {
            self.module(py)
                .map(|(_, name)| name)
                .map_err(|e| AsgiError::Loop {
                    option: self,
                    detail: crate::wsgi::traceback(py, &e),
                })
        })
    }
}

/// `--max-concurrency` when not given: ASGI requests in flight per worker. A task
/// costs a few KiB plus what the app keeps; past this the worker stops accepting and
/// connections wait in the listen queue (the kernel's memory, not ours).
pub const DEFAULT_MAX_CONCURRENCY: usize = 1000;

/// Errors of the ASGI layer; each says what the user can do.
#[derive(Debug, thiserror::Error)]
pub enum AsgiError {
    #[error("cannot start the ASGI event loop thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot set up the event loop (--loop {}):\n{detail}", option.name())]
    Loop { option: LoopOption, detail: String },
    #[error(transparent)]
    Lifespan(#[from] lifespan::LifespanError),
}

/// What the ASGI loop needs besides the WSGI [`Settings`](crate::wsgi::Settings)
/// (whose `threads` sizes the loop's default executor).
#[derive(Clone, Debug)]
pub struct AsgiSettings {
    pub event_loop: LoopOption,
    pub max_concurrency: usize,
    pub lifespan: lifespan::LifespanMode,
    pub lifespan_timeout: std::time::Duration,
    /// `--timeout` when a master enforces it: work past it after a complete
    /// response is warned about (it is not killed).
    pub timeout: Option<std::time::Duration>,
}
