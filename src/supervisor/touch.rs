//! `--touch-reload FILE`: a reload when the file's mtime changes.
//!
//! The master learns of changes from inotify on the file's directory (which also sees
//! the file created, replaced by a rename or deleted), on the directory of the file a
//! symlink points to, and on the directory holding each symlink along the path (a
//! Capistrano-style `current -> releases/N` swap). An event naming one of these is
//! only a hint: the watches are set up again along the path as it now resolves (a
//! watch follows a directory, not a path), then the mtime is compared as before.
//! Writes are seen when the file is closed: a log file written in the same directory
//! does not wake the master (a writer that keeps the touch file open is seen when it
//! closes it).
//! Where inotify cannot watch (no such directory, out of watches) or would miss
//! changes (a network or FUSE filesystem, where another machine or the host of a
//! container may write), it reads the mtime every 200 ms instead.

use std::ffi::OsString;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::inotify::{self, CreateFlags, WatchFlags};

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
            // The path may resolve elsewhere now (a symlink swapped, a directory
            // replaced): watch where it leads today. Before the stat, so a change
            // made meanwhile is seen by the comparison below.
            self.inotify = match watch(&self.path) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(file = %self.path.display(), error = %e, "cannot watch the --touch-reload file's directory any more; reading its mtime every 200 ms instead");
                    None
                }
            };
        }
        let now = mtime(&self.path);
        if now == self.mtime {
            return false;
        }
        self.mtime = now;
        // A file that went away reloads nothing (as with uWSGI): a clean-up or a
        // release without the file; creating it again does.
        // regression: deleting the file reloaded.
        now.is_some()
    }
}

impl Watch {
    /// Reads every pending event; whether one concerns the file or a symlink on its
    /// way (or the queue overflowed, which could hide one, or a watched directory
    /// itself went: those events name nothing).
    fn named(&self) -> bool {
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut events = inotify::Reader::new(&self.fd, &mut buf);
        let mut named = false;
        while let Ok(e) = events.next() {
            named |= match e.file_name() {
                Some(n) => self.names.iter().any(|m| m.as_bytes() == n.to_bytes()),
                None => true,
            };
        }
        named
    }
}

/// An inotify descriptor watching the directories where a change to `path` shows: its
/// own directory, the directory of each symlink on the way to it (whose swap changes
/// what the path names) and the directory of the file it finally names.
fn watch(path: &Path) -> std::io::Result<Watch> {
    let path = std::path::absolute(path)?;
    // (directory, name in it) pairs; watching a directory twice is one watch.
    let mut places: Vec<(PathBuf, OsString)> = Vec::new();
    let mut prefix = PathBuf::new();
    for part in path.components() {
        prefix.push(part);
        let is_link = std::fs::symlink_metadata(&prefix).is_ok_and(|m| m.is_symlink());
        if is_link || prefix == path {
            if let Some(name) = prefix.file_name() {
                places.push((dir_of(&prefix).to_owned(), name.to_owned()));
            }
        }
    }
    // A symlink: its target's mtime is what counts, and it changes elsewhere.
    if let Ok(target) = std::fs::canonicalize(&path) {
        if let Some(name) = target.file_name() {
            places.push((dir_of(&target).to_owned(), name.to_owned()));
        }
    }
    let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
    // No MODIFY: it comes for every write to every file in the directory (an access
    // log next to the touch file would wake the master once per request), and twice
    // for one editor's save. A write is seen when its file is closed (CLOSE_WRITE), a
    // touch as ATTRIB.
    let flags = WatchFlags::ATTRIB
        | WatchFlags::CLOSE_WRITE
        | WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MOVED_TO
        | WatchFlags::MOVED_FROM
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF;
    let mut names = Vec::new();
    for (dir, name) in places {
        if let Some(kind) = remote(&dir) {
            return Err(std::io::Error::other(format!(
                "{} is on a {kind} filesystem, where inotify misses changes made elsewhere",
                dir.display()
            )));
        }
        inotify::add_watch(&fd, &dir, flags)?;
        names.push(name);
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

    // regression: every write to any file in the directory (an access log next to the
    // touch file) woke the master.
    #[test]
    fn appending_to_an_open_file_in_the_directory_wakes_nothing() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("reload.touch");
        std::fs::write(&file, "").unwrap();
        let mut log = std::fs::File::create(dir.path().join("access.log")).unwrap();
        let mut t = TouchReload::new(file);
        assert!(!t.changed());
        for _ in 0..10 {
            log.write_all(b"a request\n").unwrap();
        }
        let fd = t.fd().unwrap();
        let mut fds = [rustix::event::PollFd::from_borrowed_fd(
            fd,
            rustix::event::PollFlags::IN,
        )];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        assert_eq!(rustix::event::poll(&mut fds, Some(&zero)).unwrap(), 0);
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

    /// Sets `file`'s mtime `secs` seconds from now.
    fn set_mtime(file: &Path, secs: u64) {
        let later = SystemTime::now() + Duration::from_secs(secs);
        std::fs::File::options()
            .write(true)
            .open(file)
            .unwrap()
            .set_modified(later)
            .unwrap();
    }

    /// Points the symlink `link` at `target` the way deploy tools do (a new link
    /// renamed over the old one).
    fn swap_link(target: &Path, link: &Path) {
        let tmp = link.with_extension("new");
        std::os::unix::fs::symlink(target, &tmp).unwrap();
        std::fs::rename(&tmp, link).unwrap();
    }

    // regression: a watch follows the directory it was set on, so after a
    // Capistrano-style `current` swap the file in the new release was never watched.
    #[test]
    fn a_swapped_directory_symlink_on_the_path_is_followed() {
        let root = tempfile::tempdir().unwrap();
        for r in ["1", "2"] {
            std::fs::create_dir_all(root.path().join(r).join("tmp")).unwrap();
            std::fs::write(root.path().join(r).join("tmp/restart.txt"), "").unwrap();
        }
        let current = root.path().join("current");
        std::os::unix::fs::symlink(root.path().join("1"), &current).unwrap();
        let mut t = TouchReload::new(current.join("tmp/restart.txt"));
        assert!(t.fd().is_some());
        set_mtime(&root.path().join("2/tmp/restart.txt"), 5);
        swap_link(&root.path().join("2"), &current);
        assert!(t.changed(), "the swap names another file");
        assert!(!t.changed());
        set_mtime(&root.path().join("2/tmp/restart.txt"), 10);
        assert!(t.changed(), "a touch in the new release");
        // The old release is not watched any more.
        set_mtime(&root.path().join("1/tmp/restart.txt"), 15);
        assert!(!t.changed());
    }

    #[test]
    fn a_retargeted_file_symlink_is_followed() {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let (first, second) = (b.path().join("one"), c.path().join("two"));
        std::fs::write(&first, "").unwrap();
        std::fs::write(&second, "").unwrap();
        let link = a.path().join("reload.touch");
        std::os::unix::fs::symlink(&first, &link).unwrap();
        let mut t = TouchReload::new(link.clone());
        set_mtime(&second, 5);
        swap_link(&second, &link);
        assert!(t.changed());
        set_mtime(&second, 10);
        assert!(t.changed(), "a touch of the new target");
    }

    #[test]
    fn a_deleted_and_recreated_directory_is_watched_again() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("tmp");
        std::fs::create_dir(&dir).unwrap();
        let file = dir.join("restart.txt");
        std::fs::write(&file, "").unwrap();
        let mut t = TouchReload::new(file.clone());
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir(&dir).unwrap();
        // The file is gone: no reload, but the new directory is watched from here.
        assert!(!t.changed(), "the file is gone");
        std::fs::write(&file, "").unwrap();
        // The new directory's events arrive only if it is watched.
        assert!(t.changed(), "the file is back");
        set_mtime(&file, 5);
        assert!(t.changed());
    }

    #[test]
    fn without_a_directory_to_watch_the_mtime_is_polled() {
        let t = TouchReload::new(PathBuf::from("/nonexistent-postern-dir/reload.touch"));
        assert!(t.fd().is_none());
        assert!(t.due().is_some());
    }
}
