//! postern: a WSGI application container that sits behind nginx or Apache and speaks
//! uwsgi, FastCGI or SCGI to them, running the app on an embedded CPython.
//!
//! Dependencies point one way: `proto ← codec ← wsgi ← asgi ← server ← main`.
//!
//! ```text
//! config/   every option declared once (clap + serde): defaults < ini < file < env <
//!           command line, each value with its source → Config
//! proto/    PURE: uwsgi packets, FastCGI records + per-connection state machine, SCGI
//!           netstrings, CGI → environ rules, response-head checks (no I/O)
//! codec/    tokio-util Decoder over proto (uwsgi, SCGI): head then body frames, limits
//! wsgi/     the first pyo3 user: interpreter, app import, pool threads, environ,
//!           wsgi.input/errors, start_response/write/iteration, file_wrapper
//! asgi/     the second pyo3 user: one asyncio loop thread per worker, woken by the
//!           acceptor's epoll; scope, receive/send, lifespan, --interface detection
//! server/   serving: fast path on the Python threads, tokio slow lane, graceful stop
//! stats/    --stats: /metrics (Prometheus), /status, /ping over HTTP; `postern status`
//! supervisor/ the master: forks workers, reaps, respawns, reloads (--workers > 1)
//! boot      start the app as the config says (env, chdir, Python, sys.path, import)
//! check     `postern --check`: import in a child, bind and release each listener
//! logging   postern's log and the access log: non-blocking writers, SIGUSR1 reopen,
//!           request ids
//! users     the user/group database (NSS, through libc): --uid, --socket-owner, %U
//! forked    a process the app forked that returns into postern: ended, not serving
//! room      whether a pipe or socket can take bytes now (poll POLLOUT, no wait)
//! size      sizes and durations as typed (`64k`, `10M`, `30s`): config's and clients'
//! stop      what asks the process to stop (SIGTERM/SIGINT counted by one handler,
//!           a worker's own recycling) and the server's wait for it
//! client/   `postern request`: one uwsgi/FastCGI/SCGI request, printed -i style;
//!           `postern bench`: the same request in a loop on N connections (load test)
//! ```

pub mod asgi;
pub mod boot;
pub mod check;
pub mod client;
pub mod codec;
pub mod config;
pub mod forked;
#[doc(hidden)]
pub mod fuzzing;
pub mod logging;
pub mod proto;
pub mod room;
pub mod server;
pub mod shared_mem;
pub mod sigpipe;
pub mod size;
pub mod stats;
pub mod stop;
pub mod supervisor;
pub mod users;
pub mod uwsgi_ini;
pub mod wsgi;
