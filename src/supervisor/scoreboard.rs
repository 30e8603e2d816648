//! The scoreboard: memory shared by the master and its workers (an anonymous
//! `MAP_SHARED` mapping made before the first fork). One slot per worker, one line
//! per Python thread: whether it is busy, since when (CLOCK_MONOTONIC, the same in
//! every process), and which request. Workers write with atomics; the master reads
//! it for `--timeout`, `--slow-log` and recycling. Plain atomics, no locks: a torn
//! read can at worst misname a request in a log line.

use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

/// Longest request description kept (method + path), in bytes.
const DESC: usize = 120;
const DESC_WORDS: usize = DESC / 8;

/// Slot states.
pub const FREE: u32 = 0;
pub const STARTING: u32 = 1;
pub const SERVING: u32 = 2;
/// The worker decided to recycle itself (max requests or RSS): replace it now.
pub const RETIRING: u32 = 3;

#[repr(C)]
pub struct Line {
    /// CLOCK_MONOTONIC nanoseconds when the current request started; 0 = idle.
    pub since: AtomicU64,
    desc_len: AtomicU32,
    _pad: AtomicU32,
    desc: [AtomicU64; DESC_WORDS],
}

#[repr(C)]
pub struct SlotHead {
    pub pid: AtomicI32,
    pub state: AtomicU32,
    pub requests: AtomicU64,
    pub rss_kib: AtomicU64,
}

/// The shared mapping: `slots` slots of a head and `threads` lines each.
pub struct Scoreboard {
    base: *mut u8,
    len: usize,
    pub slots: usize,
    pub threads: usize,
}

// SAFETY: the mapping is only accessed through atomics.
unsafe impl Send for Scoreboard {}
unsafe impl Sync for Scoreboard {}

impl Scoreboard {
    fn slot_size(threads: usize) -> usize {
        std::mem::size_of::<SlotHead>() + threads * std::mem::size_of::<Line>()
    }

    /// Maps a zeroed shared region (before forking).
    pub fn new(slots: usize, threads: usize) -> std::io::Result<Scoreboard> {
        let len = slots * Self::slot_size(threads);
        // SAFETY: an anonymous shared mapping of `len` bytes; checked for failure.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Scoreboard {
            base: base.cast(),
            len,
            slots,
            threads,
        })
    }

    pub fn head(&self, slot: usize) -> &SlotHead {
        assert!(slot < self.slots);
        // SAFETY: in bounds; the region is zero-initialised, which is a valid state
        // for every atomic field; alignment: slot sizes are multiples of 8.
        unsafe { &*(self.base.add(slot * Self::slot_size(self.threads)) as *const SlotHead) }
    }

    pub fn line(&self, slot: usize, thread: usize) -> &Line {
        assert!(slot < self.slots && thread < self.threads);
        // SAFETY: as in `head`.
        unsafe {
            &*(self
                .base
                .add(slot * Self::slot_size(self.threads) + std::mem::size_of::<SlotHead>())
                .cast::<Line>()
                .add(thread))
        }
    }

    /// Clears a slot for a new worker.
    pub fn reset(&self, slot: usize, pid: i32) {
        let h = self.head(slot);
        h.pid.store(pid, Ordering::SeqCst);
        h.state.store(STARTING, Ordering::SeqCst);
        h.requests.store(0, Ordering::SeqCst);
        h.rss_kib.store(0, Ordering::SeqCst);
        for t in 0..self.threads {
            self.line(slot, t).since.store(0, Ordering::SeqCst);
        }
    }
}

impl Drop for Scoreboard {
    fn drop(&mut self) {
        // SAFETY: unmapping the region mapped in `new`.
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}

impl Line {
    /// Marks the thread busy with the request described by `desc`.
    pub fn begin(&self, desc: &[u8]) {
        let n = desc.len().min(DESC);
        for (i, w) in self.desc.iter().enumerate() {
            let mut word = [0u8; 8];
            let start = i * 8;
            if start < n {
                let end = (start + 8).min(n);
                word[..end - start].copy_from_slice(&desc[start..end]);
            }
            w.store(u64::from_ne_bytes(word), Ordering::Relaxed);
        }
        self.desc_len.store(n as u32, Ordering::Relaxed);
        self.since.store(now_ns().max(1), Ordering::Release);
    }

    pub fn end(&self) {
        self.since.store(0, Ordering::Release);
    }

    /// The request description (best effort).
    pub fn desc(&self) -> String {
        let n = (self.desc_len.load(Ordering::Relaxed) as usize).min(DESC);
        let mut bytes = Vec::with_capacity(DESC);
        for w in &self.desc {
            bytes.extend_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
        }
        bytes.truncate(n);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// CLOCK_MONOTONIC in nanoseconds (shared by all processes of the machine).
pub fn now_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_record_requests() {
        let sb = Scoreboard::new(2, 3).unwrap();
        sb.reset(1, 42);
        let l = sb.line(1, 2);
        assert_eq!(l.since.load(Ordering::SeqCst), 0);
        l.begin(b"GET /a/very/long/path?with=query");
        assert!(l.since.load(Ordering::SeqCst) > 0);
        assert_eq!(l.desc(), "GET /a/very/long/path?with=query");
        l.end();
        assert_eq!(l.since.load(Ordering::SeqCst), 0);
        assert_eq!(sb.head(1).pid.load(Ordering::SeqCst), 42);
        let long = vec![b'x'; 500];
        l.begin(&long);
        assert_eq!(l.desc().len(), DESC);
    }
}
