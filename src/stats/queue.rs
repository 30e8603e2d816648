//! How many connections wait in a listening socket's accept queue, and the queue's
//! limit (the listen backlog): the number that rises just before nginx logs 502s.
//!
//! - TCP: `TCP_INFO` on the listening socket; for a listener Linux reports the queue
//!   length in `tcpi_unacked` and the backlog in `tcpi_sacked` (tcp(7), tcp_diag).
//! - Unix: a sock_diag request (`NETLINK_SOCK_DIAG`, sock_diag(7)) for the socket's
//!   inode with `UDIAG_SHOW_RQLEN`; for a listener, `UNIX_DIAG_RQLEN` carries the same
//!   two numbers.
//!
//! Best effort: `None` when the kernel does not say (no `unix_diag` support, say).

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_sock_diag::unix::{ShowFlags, StateFlags, UnixRequest};
use netlink_packet_sock_diag::SockDiagMessage;
use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

/// `TCP_LISTEN` in `tcpi_state` (include/net/tcp_states.h).
const TCP_LISTEN: u8 = 10;

/// `(queued, backlog)` of the listening socket `fd`.
pub fn depth(fd: BorrowedFd<'_>, tcp: bool) -> Option<(u32, u32)> {
    if tcp {
        tcp_depth(fd)
    } else {
        unix_depth(fd)
    }
}

fn tcp_depth(fd: BorrowedFd<'_>) -> Option<(u32, u32)> {
    // Through libc: neither rustix nor socket2 reads TCP_INFO.
    // SAFETY: tcp_info is a plain C struct; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which is that large.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (r == 0 && info.tcpi_state == TCP_LISTEN).then_some((info.tcpi_unacked, info.tcpi_sacked))
}

fn unix_depth(fd: BorrowedFd<'_>) -> Option<(u32, u32)> {
    let inode = u32::try_from(rustix::fs::fstat(fd).ok()?.st_ino).ok()?;
    let sock = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::SOCK_DIAG),
    )
    .ok()?;
    // Never wait long on the kernel: this runs while a scrape waits.
    rustix::net::sockopt::set_socket_timeout(
        &sock,
        rustix::net::sockopt::Timeout::Recv,
        Some(Duration::from_secs(1)),
    )
    .ok()?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    // One socket by inode; the all-ones cookie means "any" (INET_DIAG_NOCOOKIE).
    let mut msg = NetlinkMessage::new(
        header,
        SockDiagMessage::UnixRequest(UnixRequest {
            state_flags: StateFlags::LISTEN,
            inode,
            show_flags: ShowFlags::RQLEN,
            cookie: [0xff; 8],
        })
        .into(),
    );
    msg.finalize();
    let mut out = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut out);
    rustix::net::sendto(
        &sock,
        &out,
        SendFlags::empty(),
        &SocketAddrNetlink::new(0, 0),
    )
    .ok()?;
    let mut buf = vec![0u8; 8192];
    let (n, _) = rustix::net::recv(&sock, &mut buf[..], RecvFlags::empty()).ok()?;
    let reply = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[..n]).ok()?;
    match reply.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::UnixResponse(r))
            if r.header.inode == inode =>
        {
            r.nlas.iter().find_map(|nla| match nla {
                netlink_packet_sock_diag::unix::nlas::Nla::ReceiveQueueLength(q, max) => {
                    Some((*q, *max))
                }
                _ => None,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn counts_waiting_connections_on_tcp_and_unix() {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(
                &"127.0.0.1:0"
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            )
            .unwrap();
        socket.listen(16).unwrap();
        let tcp: std::net::TcpListener = socket.into();
        assert_eq!(depth(tcp.as_fd(), true), Some((0, 16)));
        let addr = tcp.local_addr().unwrap();
        let _a = std::net::TcpStream::connect(addr).unwrap();
        let _b = std::net::TcpStream::connect(addr).unwrap();
        assert_eq!(depth(tcp.as_fd(), true), Some((2, 16)));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.sock");
        let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let Some((0, backlog)) = depth(unix.as_fd(), false) else {
            // Kernels without unix_diag cannot say; the metric is then left out.
            eprintln!("sock_diag for Unix sockets is not available here; skipping that half");
            return;
        };
        assert!(backlog > 0);
        let _c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        assert_eq!(depth(unix.as_fd(), false), Some((1, backlog)));
    }
}
