//! `postern status ADDR`: prints a running postern's `/status` as a table (the
//! endpoint renders it: `?format=text`), once or, with `--watch`, redrawn every
//! `--interval` seconds like uwsgitop.

use std::io::{IsTerminal, Write};
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::StatsError;
use crate::server::listener::ListenAddr;

/// `postern status` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// The --stats address of a running postern: HOST:PORT or unix:PATH.
    #[arg(value_name = "ADDR")]
    pub addr: String,
    /// Redraw the table every --interval seconds until interrupted (uwsgitop style).
    #[arg(short, long)]
    pub watch: bool,
    /// Seconds between redraws with --watch (0.1 to 3600: a value outside is taken as
    /// the nearest).
    #[arg(long, value_name = "SECS", default_value_t = 1.0,
          value_parser = crate::client::seconds_arg)]
    pub interval: f64,
    /// With --watch: stop after this many redraws.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Print /status as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Gives up on an endpoint that does not answer in this time.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `postern status`. Without `--watch`, an unreachable endpoint is an error; with
/// it, the error is shown and the next redraw tries again.
pub fn run(args: &StatusArgs) -> Result<(), StatsError> {
    let addr =
        ListenAddr::from_str(&args.addr).map_err(|_| StatsError::Address(args.addr.clone()))?;
    let path = if args.json {
        "/status"
    } else {
        "/status?format=text"
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StatsError::Runtime)?;
    if !args.watch {
        let body = rt.block_on(get(&addr, path))?;
        // A reader that closed the pipe early (`| head`) took what it wanted.
        let mut stdout = std::io::stdout().lock();
        let _ = stdout
            .write_all(body.as_bytes())
            .and_then(|()| stdout.flush());
        return Ok(());
    }
    let interval = Duration::from_secs_f64(args.interval.clamp(0.1, 3600.0));
    let clear = std::io::stdout().is_terminal();
    let mut drawn = 0u64;
    loop {
        let shown = match rt.block_on(get(&addr, path)) {
            Ok(body) => body,
            Err(e) => format!("{e}\n"),
        };
        let mut out = std::io::stdout().lock();
        if clear {
            // Home the cursor and clear the screen.
            let _ = write!(out, "\x1b[H\x1b[2J");
        } else if drawn > 0 {
            let _ = writeln!(out);
        }
        let _ = write!(out, "{shown}");
        let _ = out.flush();
        drawn += 1;
        if args.count.is_some_and(|n| drawn >= n) {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

/// GET `path` from the endpoint at `addr`; the body of a 200, else an error.
pub async fn get(addr: &ListenAddr, path: &str) -> Result<String, StatsError> {
    let shown = addr.to_string();
    let connect_err = |source| StatsError::Connect {
        addr: shown.clone(),
        source,
    };
    let fetched = tokio::time::timeout(TIMEOUT, async {
        match addr {
            ListenAddr::Tcp(a) => {
                let s = tokio::net::TcpStream::connect(a)
                    .await
                    .map_err(connect_err)?;
                fetch(s, &shown, path).await
            }
            ListenAddr::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p)
                    .await
                    .map_err(connect_err)?;
                fetch(s, &shown, path).await
            }
        }
    })
    .await;
    fetched.unwrap_or_else(|_| {
        Err(StatsError::Http {
            addr: shown.clone(),
            reason: format!("no answer in {}s", TIMEOUT.as_secs()),
        })
    })
}

async fn fetch<S>(stream: S, addr: &str, path: &str) -> Result<String, StatsError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = |e: hyper::Error| StatsError::Http {
        addr: addr.to_owned(),
        reason: e.to_string(),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(hyper::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .expect("a constant request is valid");
    let resp = sender.send_request(req).await.map_err(http)?;
    let ours = resp
        .headers()
        .get(hyper::header::SERVER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("postern/"));
    if !ours {
        return Err(StatsError::Http {
            addr: addr.to_owned(),
            reason: format!(
                "this is not a postern --stats endpoint (it answered {} without `Server: postern/…`); is ADDR the --stats address, not the app's or nginx's?",
                resp.status()
            ),
        });
    }
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| StatsError::Http {
            addr: addr.to_owned(),
            reason: format!("{path}: {e} (more than {} MiB)", MAX_BODY >> 20),
        })?
        .to_bytes();
    let body = printable(&String::from_utf8_lossy(&body));
    if status != StatusCode::OK {
        return Err(StatsError::Http {
            addr: addr.to_owned(),
            reason: format!("{path} answered {status}: {}", body.trim()),
        });
    }
    Ok(body)
}

/// The most of an answer read: postern's own are a few KiB (a `/status` of 512 workers
/// under 1 MiB); what claims to be postern and sends more is not read further.
const MAX_BODY: usize = 16 << 20;

/// `text` as it may go to a terminal (newlines kept; see
/// [`crate::logging::unsafe_in_a_line`]): postern's own answers never need it (JSON
/// escapes them), what claims to be postern may.
fn printable(text: &str) -> String {
    crate::logging::escape_unsafe(text, true).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_cannot_reach_the_terminal() {
        // regression: `postern status` printed an endpoint's ESC bytes raw.
        assert_eq!(
            printable("ok\n\tworker 1\x1b[2J\r\u{9b}1m é"),
            "ok\n\tworker 1\\x1B[2J\\x0D\\x9B1m é"
        );
    }
}
