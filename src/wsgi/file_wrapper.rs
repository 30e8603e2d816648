//! `wsgi.file_wrapper(filelike, blksize=8192)` (PEP 3333 "Optional Platform-Specific
//! File Handling", docs/protocols.md §5.7). Iterating it reads blocks; when the app returns
//! it and the object is a regular file with a usable `fileno()`, the response module
//! sends it with sendfile(2) from the file's current offset instead.

use std::os::fd::{AsRawFd, BorrowedFd};

use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// `blksize`'s default (PEP 3333's example uses 8192).
const DEFAULT_BLOCK: usize = 8192;
/// The largest block read at a time.
const MAX_BLOCK: usize = 1 << 20;

#[pyclass(module = "postern", name = "FileWrapper")]
pub struct FileWrapper {
    pub filelike: Py<PyAny>,
    pub blksize: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize=None))]
    fn new(filelike: Py<PyAny>, blksize: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        // A size of 0 or less (`-1`, as `read(-1)` takes it) or None is no size: the
        // default; one over MAX_BLOCK is MAX_BLOCK (postern calls `read(blksize)`, and
        // a pipe's read allocates all it is asked for).
        // regression (hostile LOW): -1 raised OverflowError, answered 500 (gunicorn
        // takes any int); 2**62 on a pipe raised MemoryError.
        let blksize = match blksize.filter(|b| !b.is_none()) {
            None => DEFAULT_BLOCK,
            Some(b) => match b.extract::<i64>() {
                Ok(n) if n > 0 => usize::try_from(n).unwrap_or(MAX_BLOCK).min(MAX_BLOCK),
                Ok(_) => DEFAULT_BLOCK,
                // An int past i64: as large as allowed, or no size when negative.
                Err(_) if b.is_instance_of::<pyo3::types::PyInt>() => {
                    if b.gt(0)? {
                        MAX_BLOCK
                    } else {
                        DEFAULT_BLOCK
                    }
                }
                Err(e) => return Err(e),
            },
        };
        Ok(FileWrapper { filelike, blksize })
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let data = self
            .filelike
            .bind(py)
            .call_method1("read", (self.blksize,))?;
        let empty = match data.cast::<PyBytes>() {
            Ok(b) => b.as_bytes().is_empty(),
            Err(_) => data.len()? == 0,
        };
        Ok((!empty).then_some(data))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let f = self.filelike.bind(py);
        if f.hasattr("close")? {
            f.call_method0("close")?;
        }
        Ok(())
    }
}

/// A regular file region ready for sendfile: a dup of the fd, the start offset, the
/// bytes left.
pub struct SendfileSource {
    pub file: std::fs::File,
    pub offset: u64,
    pub len: u64,
}

impl FileWrapper {
    /// Returns the file region when the wrapped object is a regular file with a real
    /// fd; `None` means iterate instead (BytesIO, sockets, pipes, anything odd).
    pub fn sendfile_source(&self, py: Python<'_>) -> Option<SendfileSource> {
        let f = self.filelike.bind(py);
        // Python buffered files may hold read-ahead: tell() is the logical position.
        // Asked first: it is the app's code too, and must not run between fileno()
        // and the dup (it could close the fd, and another file reuse its number).
        let offset: u64 = match f.call_method0("tell") {
            Ok(t) => t.extract().ok()?,
            Err(_) => return None,
        };
        let fd: i32 = f.call_method0("fileno").ok()?.extract().ok()?;
        if fd < 0 {
            return None;
        }
        // SAFETY: only borrowed to dup it, with no code of the object's run since
        // fileno() returned it (the GIL held throughout; an int subclass's __index__,
        // run by the extraction, is the app's own doing), so it is the fd named, or
        // (an app's fileno() may return any number) another fd of this process that
        // is open: dup fails with EBADF on one that is not. What an app could name
        // this way it could read itself; the dup is then checked to be a regular file.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let owned = borrowed.try_clone_to_owned().ok()?;
        let file = std::fs::File::from(owned);
        let meta = file.metadata().ok()?;
        // A size of 0 may be a file whose content is made when read (/proc, /sys,
        // some FUSE files): iterated, it is sent whole (an empty file, as empty).
        if !meta.is_file() || meta.len() == 0 {
            return None;
        }
        debug_assert!(file.as_raw_fd() != fd);
        Some(SendfileSource {
            file,
            offset,
            len: meta.len().saturating_sub(offset),
        })
    }
}
