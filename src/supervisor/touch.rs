//! `--touch-reload FILE`: a reload when the file's mtime changes.
//!
//! The master learns of changes from inotify on the file's directory (which also sees
//! the file created, replaced by a rename or deleted), and on the directory of the
//! file a symlink points to. An event naming the file is only a hint to compare the
//! mtime, as before; writes to other files there cost no stat.
//! Where inotify cannot watch (no such directory, out of watches) or would miss
//! changes (a network or FUSE filesystem, where another machine or the host of a
//! container may write), it reads the mtime every 200 ms instead.

use std::ffi::OsString;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};

/// How often the mtime is read where inotify cannot watch.
const POLL: Duration = Duration::from_millis(200);

pub struct TouchReload {
    path: PathBuf,
    mtime: Option<SystemTime>,
    /// None: read the mtime every [`POLL`].
    inotify: Option<Watch>,
}

/// An inotify descriptor, and the names in the watched directories that matter.
struct Watch {
    fd: OwnedFd,
    names: Vec<OsString>,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The directory holding `p` ("." for a bare file name).
fn dir_of(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

impl TouchReload {
    pub fn new(path: PathBuf) -> TouchReload {
        let inotify = match watch(&path) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot watch the --touch-reload file's directory; reading its mtime every 200 ms instead");
                None
            }
        };
        TouchReload {
            mtime: mtime(&path),
            path,
            inotify,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The descriptor to wait on, if inotify watches.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.inotify.as_ref().map(|w| w.fd.as_fd())
    }

    /// When to read the mtime again without an event (only where inotify cannot watch).
    pub fn due(&self) -> Option<Instant> {
        self.inotify.is_none().then(|| Instant::now() + POLL)
    }

    /// Whether the file's mtime changed since the last call (reading the pending
    /// events first).
    pub fn changed(&mut self) -> bool {
        if let Some(w) = &self.inotify {
            if !w.named() {
                return false;
            }
        }
        let now = mtime(&self.path);
        if now == self.mtime {
            return false;
        }
        self.mtime = now;
        true
    }
}

impl Watch {
    /// Reads every pending event; whether one concerns the file (or the queue
    /// overflowed, which could hide one).
    fn named(&self) -> bool {
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut events = inotify::Reader::new(&self.fd, &mut buf);
        let mut named = false;
        while let Ok(e) = events.next() {
            named |= e.events().contains(ReadFlags::QUEUE_OVERFLOW)
                || e.file_name()
                    .is_some_and(|n| self.names.iter().any(|m| m.as_bytes() == n.to_bytes()));
        }
        named
    }
}

/// An inotify descriptor watching the directories where a change to `path` shows.
fn watch(path: &Path) -> std::io::Result<Watch> {
    let dir = dir_of(path);
    if let Some(kind) = remote(dir) {
        return Err(std::io::Error::other(format!(
            "it is on a {kind} filesystem, where inotify misses changes made elsewhere"
        )));
    }
    let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
    let flags = WatchFlags::ATTRIB
        | WatchFlags::MODIFY
        | WatchFlags::CLOSE_WRITE
        | WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MOVED_TO
        | WatchFlags::MOVED_FROM;
    inotify::add_watch(&fd, dir, flags)?;
    let mut names: Vec<OsString> = path.file_name().map(|n| n.to_owned()).into_iter().collect();
    // A symlink: its target's mtime is what counts, and it changes elsewhere.
    if let Ok(target) = std::fs::canonicalize(path) {
        let target_dir = dir_of(&target);
        if target_dir != dir {
            if let Some(kind) = remote(target_dir) {
                return Err(std::io::Error::other(format!(
                    "its symlink's target is on a {kind} filesystem, where inotify misses changes made elsewhere"
                )));
            }
            inotify::add_watch(&fd, target_dir, flags)?;
        }
        names.extend(target.file_name().map(|n| n.to_owned()));
    }
    Ok(Watch { fd, names })
}

/// The kind of filesystem `dir` is on when changes to it may come from elsewhere
/// without an inotify event (statfs(2) magic numbers, linux/magic.h).
fn remote(dir: &Path) -> Option<&'static str> {
    let kind = rustix::fs::statfs(dir).ok()?.f_type as u64;
    Some(match kind {
        0x6969 => "NFS",
        0xFF53_4D42 | 0xFE53_4D42 | 0x517B => "SMB",
        0x6573_5546 => "FUSE",
        0x0102_1997 => "9P",
        0x00C3_6400 => "Ceph",
        0x0BD0_0BD0 => "Lustre",
        0x4750_4653 => "GPFS",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_mtime_is_a_change_and_is_seen_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("reload.touch");
        std::fs::write(&file, "").unwrap();
        let mut t = TouchReload::new(file.clone());
        assert!(t.fd().is_some(), "inotify watches a temporary directory");
        assert!(!t.changed());
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(t.changed());
        assert!(!t.changed());
    }

    #[test]
    fn a_file_created_later_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("reload.touch");
        let mut t = TouchReload::new(file.clone());
        assert!(!t.changed());
        std::fs::write(&file, "").unwrap();
        assert!(t.changed());
    }

    #[test]
    fn other_files_in_the_directory_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("reload.touch");
        std::fs::write(&file, "").unwrap();
        let mut t = TouchReload::new(file);
        std::fs::write(dir.path().join("other"), "x").unwrap();
        assert!(!t.changed());
    }

    #[test]
    fn touching_a_symlinks_target_elsewhere_is_a_change() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let target = b.path().join("deployed");
        std::fs::write(&target, "").unwrap();
        let link = a.path().join("reload.touch");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let mut t = TouchReload::new(link);
        assert!(!t.changed());
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&target)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(t.changed());
    }

    #[test]
    fn without_a_directory_to_watch_the_mtime_is_polled() {
        let t = TouchReload::new(PathBuf::from("/nonexistent-postern-dir/reload.touch"));
        assert!(t.fd().is_none());
        assert!(t.due().is_some());
    }
}
