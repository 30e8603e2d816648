//! The ASGI lifespan protocol. STUB by "core" so the tree compiles; "lifespan" owns
//! this file and replaces it.

use std::time::Duration;

use clap::ValueEnum;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde::{Deserialize, Serialize};

/// `--lifespan`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LifespanMode {
    #[default]
    Auto,
    On,
    Off,
}

/// Why startup failed.
#[derive(Debug, thiserror::Error)]
pub enum LifespanError {
    #[error("the app's lifespan startup failed: {0}")]
    Failed(String),
}

/// A started lifespan: its state, and the shutdown still to run.
pub struct Lifespan {
    state: Option<Py<PyDict>>,
}

/// Runs the startup on `event_loop` (not running yet) before any request (stub: none).
pub fn startup(
    _py: Python<'_>,
    _event_loop: &Bound<'_, PyAny>,
    _app: &Bound<'_, PyAny>,
    _mode: LifespanMode,
    _timeout: Duration,
) -> Result<Lifespan, LifespanError> {
    Ok(Lifespan { state: None })
}

impl Lifespan {
    /// What startup stored in `scope["state"]`; each request gets a shallow copy.
    pub fn state<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyDict>> {
        self.state.as_ref().map(|s| s.bind(py).clone())
    }

    /// Runs the shutdown on `event_loop` (not running any more) after the last request.
    pub fn shutdown(self, _py: Python<'_>, _event_loop: &Bound<'_, PyAny>, _timeout: Duration) {}
}
