//! A FastCGI response of one small write ends in a send made with the GIL held when
//! the socket takes it at once, and with the GIL released otherwise: a front server
//! that stops reading gets every response whole and in its own records once it reads
//! again, whether the last send was taken whole, in part, or not at all.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use protocol_tests::harness::fcgi::{self, END_REQUEST, STDOUT};
use protocol_tests::harness::*;

/// A body of `QUERY_STRING` bytes, starting with the request's number.
const APP: &str = r#"
def application(environ, start_response):
    n = environ["QUERY_STRING"]
    body = (n + ":").encode() + b"x" * (15000 - len(n) - 1)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"#;

/// Each request's STDOUT content and its END_REQUEST's protocol status, by id.
fn read_all(s: &mut TcpStream, n: usize) -> Vec<(Vec<u8>, Option<u8>)> {
    let mut out = vec![(Vec::new(), None); n + 1];
    let mut ended = 0;
    let mut head = [0u8; 8];
    while ended < n {
        s.read_exact(&mut head).expect("a record header");
        assert_eq!(head[0], 1, "a FastCGI version 1 record");
        let id = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let len = usize::from(u16::from_be_bytes([head[4], head[5]]));
        let mut content = vec![0u8; len + usize::from(head[6])];
        s.read_exact(&mut content).expect("a record's content");
        content.truncate(len);
        assert!((1..=n).contains(&id), "request id {id} was never sent");
        assert!(
            out[id].1.is_none(),
            "a record of request {id} after its END_REQUEST"
        );
        match head[1] {
            STDOUT => out[id].0.extend_from_slice(&content),
            END_REQUEST => {
                out[id].1 = Some(content.get(4).copied().unwrap_or(u8::MAX));
                ended += 1;
            }
            k => panic!("record type {k} for request {id}"),
        }
    }
    out
}

#[test]
fn responses_left_unread_by_the_front_server_arrive_whole_once_it_reads() {
    let dir = tempdir();
    let app = dir.path().join("end_app.py");
    std::fs::write(&app, APP).unwrap();
    let p = Spawn::tcp(dir.path(), app.to_str().unwrap())
        .protocol("fastcgi")
        .args(["--workers", "1", "--threads", "1"])
        .start();
    let Addr::Tcp(port) = p.addr.clone() else {
        panic!("a TCP listener")
    };
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connecting to postern");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // Requests one at a time (each its own read, served inline), none of the responses
    // read: about 10 MB, more than the socket buffers hold, so the sends of the last
    // ones meet a full buffer.
    let n = 700;
    for i in 1..=n {
        let q = i.to_string();
        let mut vars = fcgi::get_vars("/");
        vars.retain(|(k, _)| *k != "QUERY_STRING");
        vars.push(("QUERY_STRING", q));
        let v: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        s.write_all(&fcgi::request(i as u16, true, &v, b""))
            .expect("sending a request");
        std::thread::sleep(Duration::from_millis(1));
    }
    let got = read_all(&mut s, n);
    let mut whole = 0;
    for (i, (stdout, status)) in got.iter().enumerate().skip(1) {
        // The requests sent while postern waited for the front server to read pile up
        // on the connection; past the lane's limit they are refused (FCGI_OVERLOADED).
        if *status == Some(2) {
            assert!(stdout.is_empty(), "request {i}: refused after some output");
            continue;
        }
        assert_eq!(*status, Some(0), "request {i}: protocol status");
        let text = String::from_utf8_lossy(stdout);
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        assert!(
            text.starts_with("Status: 200 OK"),
            "request {i}: {:.80}",
            text
        );
        assert_eq!(body.len(), 15000, "request {i}'s body");
        assert!(
            body.starts_with(&format!("{i}:")),
            "request {i}: {:.20}",
            body
        );
        whole += 1;
    }
    assert!(whole >= 100, "only {whole} responses of {n} were served");
    // The connection still serves.
    s.write_all(&fcgi::get(1, true, "/")).unwrap();
    let again = read_all(&mut s, 1);
    assert_eq!(again[1].1, Some(0), "END_REQUEST of the request after them");
}
