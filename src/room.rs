//! Whether a file descriptor can take bytes now, asked without waiting: the one
//! poll(2) the log writer makes before a line to a stderr pipe or socket (one with no
//! room loses the line rather than block) and the FastCGI lane makes to tell whether a
//! response's write waits for the front server to read. Uses nothing else of postern,
//! so every layer may use it.

use std::os::fd::AsFd;

use rustix::event::{poll, PollFd, PollFlags, Timespec};

/// True when `fd` reports POLLOUT now: a pipe or socket has room (at least a page, or
/// a share of its send buffer, free); a regular file always has. A failed poll counts
/// as no room.
pub fn has_room(fd: impl AsFd) -> bool {
    let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(poll(&mut fds, Some(&now)), Ok(1)) && fds[0].revents().contains(PollFlags::OUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_socket_has_no_room_until_its_peer_reads() {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        assert!(has_room(&a));
        let chunk = [0u8; 4096];
        while std::io::Write::write(&mut &a, &chunk).is_ok() {}
        assert!(!has_room(&a));
        let mut buf = vec![0u8; 1 << 20];
        while !has_room(&a) {
            let _ = std::io::Read::read(&mut b, &mut buf).unwrap();
        }
        assert!(has_room(&a));
    }
}
