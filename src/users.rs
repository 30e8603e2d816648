//! The user and group database (`--uid`, `--gid`, `--socket-owner`, uWSGI's `%U`/`%G`).
//!
//! Through libc, not rustix: the database is whatever NSS serves (/etc/passwd, LDAP,
//! systemd's dynamic users...), and only libc's `getpwnam_r` and friends ask NSS. These
//! lookups may take locks and load modules, so they are made before any fork, never in
//! a child forked from a threaded process.

use std::ffi::{CStr, CString};
use std::io;

/// An entry of the user database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    /// The user's primary group.
    pub gid: u32,
}

/// The user called `name`, if there is one.
pub fn user_by_name(name: &str) -> io::Result<Option<User>> {
    let Ok(c) = CString::new(name) else {
        return Ok(None);
    };
    // SAFETY: `c` is NUL-terminated; the other pointers come from `lookup`.
    lookup(
        |pw, buf, len, out| unsafe { libc::getpwnam_r(c.as_ptr(), pw, buf, len, out) },
        user,
    )
}

/// The user with id `uid`, if the database has one.
pub fn user_by_uid(uid: u32) -> io::Result<Option<User>> {
    // SAFETY: the pointers come from `lookup`.
    lookup(
        |pw, buf, len, out| unsafe { libc::getpwuid_r(uid, pw, buf, len, out) },
        user,
    )
}

/// The id of the group called `name`, if there is one.
pub fn gid_by_name(name: &str) -> io::Result<Option<u32>> {
    let Ok(c) = CString::new(name) else {
        return Ok(None);
    };
    // SAFETY: `c` is NUL-terminated; the other pointers come from `lookup`.
    lookup(
        |gr, buf, len, out| unsafe { libc::getgrnam_r(c.as_ptr(), gr, buf, len, out) },
        |g: &libc::group| g.gr_gid,
    )
}

/// The name of group `gid`, if the database has one.
pub fn group_name(gid: u32) -> io::Result<Option<String>> {
    // SAFETY: the pointers come from `lookup`.
    lookup(
        |gr, buf, len, out| unsafe { libc::getgrgid_r(gid, gr, buf, len, out) },
        // SAFETY: `lookup` passes an entry whose strings are valid (see there).
        |g: &libc::group| unsafe { string(g.gr_name) },
    )
}

/// The groups `user` is a member of, `gid` included (for setgroups(2) when dropping
/// root).
pub fn group_list(user: &str, gid: u32) -> io::Result<Vec<u32>> {
    let c = CString::new(user).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut n: libc::c_int = 32;
    loop {
        let asked = n;
        let mut groups = vec![0 as libc::gid_t; asked as usize];
        // SAFETY: `groups` holds `n` entries; getgrouplist writes at most that many and
        // sets `n` to the number the user has.
        let r = unsafe { libc::getgrouplist(c.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if r >= 0 {
            groups.truncate(n as usize);
            return Ok(groups);
        }
        // Too few entries: `n` now says how many are needed (glibc); at least double.
        n = n.max(asked * 2);
        if n > 1 << 16 {
            return Err(io::Error::other("more than 65536 supplementary groups"));
        }
    }
}

/// Calls a `get*_r` function with a buffer that grows while it says ERANGE, and
/// converts the entry with `convert` while the buffer its strings point into is alive.
/// `Ok(None)`: no such entry.
fn lookup<E, T>(
    call: impl Fn(*mut E, *mut libc::c_char, libc::size_t, *mut *mut E) -> libc::c_int,
    convert: impl FnOnce(&E) -> T,
) -> io::Result<Option<T>> {
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    loop {
        let mut entry = std::mem::MaybeUninit::<E>::uninit();
        let mut found: *mut E = std::ptr::null_mut();
        let r = call(entry.as_mut_ptr(), buf.as_mut_ptr(), buf.len(), &mut found);
        match r {
            0 if found.is_null() => return Ok(None),
            // SAFETY: on success `found` points to `entry`, filled in, whose strings
            // point into `buf` (alive until the end of this function).
            0 => return Ok(Some(convert(unsafe { &*found }))),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            // "Not found" as glibc may report it for some NSS modules.
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// A user entry from [`lookup`] (whose strings are valid) as a [`User`].
fn user(pw: &libc::passwd) -> User {
    User {
        // SAFETY: `lookup` passes an entry whose strings are valid.
        name: unsafe { string(pw.pw_name) },
        uid: pw.pw_uid,
        gid: pw.pw_gid,
    }
}

/// # Safety
/// `p` is a valid NUL-terminated string.
unsafe fn string(p: *const libc::c_char) -> String {
    // SAFETY: as the caller promises.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_root_and_misses_unknown_names() {
        let root = user_by_name("root").unwrap().expect("root exists");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(user_by_uid(0).unwrap(), Some(root));
        assert_eq!(gid_by_name("root").unwrap(), Some(0));
        assert_eq!(group_name(0).unwrap().as_deref(), Some("root"));
        assert!(group_list("root", 0).unwrap().contains(&0));
        assert_eq!(user_by_name("no-such-user-here").unwrap(), None);
        assert_eq!(gid_by_name("no-such-group-here").unwrap(), None);
        assert_eq!(user_by_name("nul\0inside").unwrap(), None);
    }
}
