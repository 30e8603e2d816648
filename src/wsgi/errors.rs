//! `wsgi.errors`: a text stream whose lines go to postern's log (target `wsgi.errors`,
//! level warn) inside the request's span, so each line names its request; over
//! FastCGI also to the front server as FCGI_STDERR (unless `--no-fastcgi-stderr`).

use pyo3::prelude::*;

use super::ErrorsForward;

#[pyclass(module = "postern", name = "Errors")]
pub struct Errors {
    line: String,
    forward: Option<ErrorsForward>,
}

impl Errors {
    pub fn new(forward: Option<ErrorsForward>) -> Self {
        Errors {
            line: String::new(),
            forward,
        }
    }

    fn emit(&self, line: &str) {
        let line = line.trim_end_matches('\r');
        tracing::warn!(target: "wsgi.errors", "{}", line);
        if let Some(f) = &self.forward {
            let mut bytes = Vec::with_capacity(line.len() + 1);
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
            // The front server may be slow to read: never wait with the GIL held.
            Python::attach(|py| py.detach(|| f(&bytes)));
        }
    }
}

impl Default for Errors {
    fn default() -> Self {
        Self::new(None)
    }
}

#[pymethods]
impl Errors {
    fn write(&mut self, text: &Bound<'_, pyo3::types::PyString>) -> usize {
        // Any str is accepted (PEP 3333), lone surrogates included.
        let text = text.to_string_lossy();
        let mut rest: &str = &text;
        while let Some(i) = rest.find('\n') {
            self.line.push_str(&rest[..i]);
            self.emit(&self.line);
            self.line.clear();
            rest = &rest[i + 1..];
        }
        self.line.push_str(rest);
        // Bound a line that never ends.
        if self.line.len() > 64 * 1024 {
            self.flush();
        }
        text.chars().count()
    }

    fn writelines(&mut self, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        for line in lines.try_iter()? {
            let line = line?;
            self.write(line.cast::<pyo3::types::PyString>()?);
        }
        Ok(())
    }

    pub fn flush(&mut self) {
        if !self.line.is_empty() {
            self.emit(&self.line);
            self.line.clear();
        }
    }

    fn writable(&self) -> bool {
        true
    }

    fn isatty(&self) -> bool {
        false
    }
}

impl Drop for Errors {
    fn drop(&mut self) {
        self.flush();
    }
}
