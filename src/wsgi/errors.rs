//! `wsgi.errors`: a text stream whose lines go to postern's log (target `wsgi.errors`,
//! level warn) inside the request's span, so each line names its request.

use pyo3::prelude::*;

#[pyclass(module = "postern", name = "Errors")]
pub struct Errors {
    line: String,
}

impl Errors {
    pub fn new() -> Self {
        Errors {
            line: String::new(),
        }
    }

    fn emit(line: &str) {
        tracing::warn!(target: "wsgi.errors", "{}", line.trim_end_matches('\r'));
    }
}

impl Default for Errors {
    fn default() -> Self {
        Self::new()
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
            Self::emit(&self.line);
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

    fn flush(&mut self) {
        if !self.line.is_empty() {
            Self::emit(&self.line);
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
