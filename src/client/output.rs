//! Printing `postern request`'s answer `curl -i` style, and its exit code: a uwsgi
//! answer as it came, a CGI answer (FastCGI, SCGI) turned into HTTP by
//! [`response::cgi_to_http`].

use std::io::{self, Write};

use super::{ClientError, EXIT_5XX, EXIT_CONNECT};
use crate::proto::response;

/// Prints the response (or the GET_VALUES answer) as raw bytes.
pub fn write_stdout(bytes: &[u8]) -> Result<(), ClientError> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(ClientError::Output)
}

/// Prints a uwsgi answer (an HTTP status line and headers) as it is.
pub fn print_http_response(response: &[u8]) -> Result<i32, ClientError> {
    write_stdout(response)?;
    Ok(match response::status_code(response) {
        Some(s) if s >= 500 => EXIT_5XX,
        Some(_) => 0,
        None => {
            eprintln!("postern request: the response has no HTTP status line");
            EXIT_CONNECT
        }
    })
}

/// Prints a CGI response (FastCGI STDOUT, SCGI) as HTTP and picks the exit code.
pub fn print_cgi_response(response: &[u8], label: &str) -> Result<i32, ClientError> {
    let (status, http) =
        response::cgi_to_http(response).map_err(|reason| ClientError::Protocol {
            target: label.to_owned(),
            reason: reason.to_string(),
        })?;
    write_stdout(&http)?;
    Ok(if status >= 500 { EXIT_5XX } else { 0 })
}
