//! Starting the embedded CPython and importing the app.
//!
//! The interpreter is configured through `PyConfig` (PEP 587) with `executable` set to
//! the build's Python, or to `VENV/bin/python` with `--venv`: CPython's own path logic
//! then finds `pyvenv.cfg` and the venv's site-packages exactly as when the venv's
//! `python` runs, and `sys.executable` is a real interpreter (multiprocessing, subprocess).

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use pyo3::prelude::*;
use pyo3::types::{PyList, PyModule};

use super::WsgiError;

/// Python the binary was built against (from build.rs).
pub const BUILD_PYTHON: &str = env!("POSTERN_PYTHON_EXECUTABLE");
/// `major.minor` of that Python.
pub const BUILD_PYTHON_VERSION: &str = env!("POSTERN_PYTHON_VERSION");
/// The real path of that Python's standard library (empty if build.rs could not ask).
const BUILD_PYTHON_STDLIB: &str = env!("POSTERN_PYTHON_STDLIB");

/// The build's libpython directory, which the binary's rpath names (empty if build.rs
/// could not tell).
const BUILD_PYTHON_LIBDIR: &str = env!("POSTERN_PYTHON_LIBDIR");

/// The file the dynamic loader took libpython from.
pub fn loaded_libpython() -> Option<PathBuf> {
    // SAFETY: dladdr only reads the loader's tables for an address of a loaded
    // function; `dli_fname` points into those tables (valid while the library stays
    // loaded: libpython is never unloaded) and is copied before returning.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        let symbol = pyo3::ffi::Py_GetVersion as *const libc::c_void;
        if libc::dladdr(symbol, &mut info) == 0 || info.dli_fname.is_null() {
            return None;
        }
        let name = CStr::from_ptr(info.dli_fname);
        Some(PathBuf::from(std::ffi::OsStr::from_bytes(name.to_bytes())))
    }
}

/// When the libpython loaded is not the build's (the rpath's directory could not be
/// read by this user, e.g. a pyenv Python under /root for a service's own user, and the
/// loader fell back to the system's libpython of the same version): what to say.
/// regression (probe 319): such a start ran on the distribution's Python 3.11.2 with
/// nothing said, and `--check` called it "the build's Python".
pub fn libpython_elsewhere() -> Option<String> {
    if BUILD_PYTHON_LIBDIR.is_empty() {
        return None;
    }
    let loaded = loaded_libpython()?;
    let dir = std::fs::canonicalize(&loaded)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .or_else(|| loaded.parent().map(Path::to_path_buf))?;
    if dir == Path::new(BUILD_PYTHON_LIBDIR) {
        return None;
    }
    let readable = std::fs::read_dir(BUILD_PYTHON_LIBDIR).is_ok();
    let why = if readable {
        "LD_LIBRARY_PATH or the loader's cache pointed elsewhere".to_owned()
    } else {
        format!(
            "that directory cannot be read by this user (uid {}): make it and the directories above it searchable (chmod o+x), or build postern against a Python installed where the service's user can read it (/usr/local, /opt)",
            rustix::process::getuid().as_raw()
        )
    };
    Some(format!(
        "the libpython loaded is {} ({}), not the one postern was built against in {BUILD_PYTHON_LIBDIR}: {why}",
        loaded.display(),
        loaded_python_version()
            .split_whitespace()
            .next()
            .unwrap_or("?"),
    ))
}

/// Version string of the libpython actually loaded; works before initialisation.
pub fn loaded_python_version() -> String {
    // SAFETY: Py_GetVersion returns a static NUL-terminated string and may be called
    // before Py_Initialize (C API docs, "Process-wide parameters").
    let v = unsafe { CStr::from_ptr(pyo3::ffi::Py_GetVersion()) };
    v.to_string_lossy().into_owned()
}

/// What is known once Python is up, for the start-up log.
#[derive(Debug, Clone)]
pub struct PythonInfo {
    pub version: String,
    pub prefix: String,
    pub executable: String,
}

/// Checks a virtualenv before Python starts: it must exist and be made for the same
/// `major.minor` as the embedded Python, or its compiled packages would not load.
fn check_venv(venv: &Path) -> Result<PathBuf, WsgiError> {
    let cfg = venv.join("pyvenv.cfg");
    // regression (probe 401): a directory that does not exist was asked "is it a
    // virtualenv?" about its pyvenv.cfg.
    if !venv.exists() {
        return Err(WsgiError::Venv {
            venv: venv.to_owned(),
            reason:
                "the directory does not exist (create it with python3.11 -m venv, or fix the path)"
                    .into(),
        });
    }
    let text = std::fs::read_to_string(&cfg).map_err(|e| WsgiError::Venv {
        venv: venv.to_owned(),
        reason: format!("cannot read {}: {e}; is it a virtualenv?", cfg.display()),
    })?;
    let version = text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        matches!(k.trim(), "version" | "version_info").then(|| v.trim().to_owned())
    });
    if let Some(v) = version {
        let mm: Vec<&str> = v.split('.').take(2).collect();
        if mm.join(".") != BUILD_PYTHON_VERSION {
            return Err(WsgiError::Venv {
                venv: venv.to_owned(),
                reason: format!(
                    "it was made with Python {v}, but postern embeds Python {BUILD_PYTHON_VERSION}; \
                     recreate it with `{BUILD_PYTHON} -m venv`"
                ),
            });
        }
    }
    let python = venv.join("bin").join("python");
    if let Err(e) = std::fs::metadata(&python) {
        // A venv's python is a link to the interpreter it was made from: one this
        // user cannot reach (a pyenv build under /root, the unit's User= another) or
        // that was removed reads as a link, not as a missing file.
        // regression (probe 394): 'does not exist' for a link into /root/.pyenv, run
        // as nobody.
        // The end of the chain of links as far as it can be followed (python ->
        // python3 -> /root/.pyenv/...).
        let mut target = None;
        let mut at = python.clone();
        for _ in 0..16 {
            let Ok(next) = std::fs::read_link(&at) else {
                break;
            };
            at = at
                .parent()
                .map_or_else(|| next.clone(), |dir| dir.join(&next));
            target = Some(at.clone());
        }
        let reason = match target {
            Some(target) if e.kind() == std::io::ErrorKind::PermissionDenied => format!(
                "{} is a link to {}, which cannot be reached: {e} (running as uid {}: the \
                 Python a venv was made from must be readable by the user postern runs \
                 as; one under another user's home, such as root's pyenv, is not: make \
                 the venv from a Python that user can read)",
                python.display(),
                target.display(),
                rustix::process::geteuid().as_raw()
            ),
            Some(target) => format!(
                "{} is a link to {}: {e} (was that Python removed? recreate the venv)",
                python.display(),
                target.display()
            ),
            None => format!("{}: {e}", python.display()),
        };
        return Err(WsgiError::Venv {
            venv: venv.to_owned(),
            reason,
        });
    }
    Ok(python)
}

/// Whether the embedded interpreter has been started in this process.
pub fn is_initialized() -> bool {
    // SAFETY: Py_IsInitialized may be called at any time, even before initialisation.
    unsafe { pyo3::ffi::Py_IsInitialized() != 0 }
}

/// Starts the interpreter for the unit tests: once for the whole test binary, which
/// every test that runs Python calls (a `Once` per module started it twice when tests
/// of two modules ran together: "failed to read thread state").
#[cfg(test)]
pub(crate) fn start_for_tests() {
    static START: std::sync::Once = std::sync::Once::new();
    START.call_once(|| {
        initialize(None).expect("starting the embedded Python");
    });
}

/// Starts the interpreter (once per process) and leaves the GIL released.
pub fn initialize(venv: Option<&Path>) -> Result<PythonInfo, WsgiError> {
    let executable = match venv {
        Some(v) => check_venv(v)?,
        None => PathBuf::from(BUILD_PYTHON),
    };
    check_stdlib_readable()?;
    let exe = CString::new(executable.as_os_str().as_bytes()).map_err(|_| WsgiError::Init {
        reason: "the interpreter path contains a NUL byte".into(),
    })?;
    // SAFETY: the PyConfig API (PEP 587) is used as documented: init, set strings,
    // initialise from it, clear it. This runs once, before any other thread uses Python.
    unsafe {
        use pyo3::ffi;
        let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::zeroed();
        ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
        let config = config.assume_init_mut();
        // postern owns SIGTERM/SIGINT; the app must not get KeyboardInterrupt from them.
        config.install_signal_handlers = 0;
        config.parse_argv = 0;
        let check = |status: ffi::PyStatus, what: &str| -> Result<(), WsgiError> {
            if ffi::PyStatus_Exception(status) != 0 {
                let msg = if status.err_msg.is_null() {
                    "unknown error".to_owned()
                } else {
                    CStr::from_ptr(status.err_msg)
                        .to_string_lossy()
                        .into_owned()
                };
                return Err(WsgiError::Init {
                    reason: format!("{what}: {msg}"),
                });
            }
            Ok(())
        };
        let r = (|| {
            check(
                ffi::PyConfig_SetBytesString(config, &mut config.executable, exe.as_ptr()),
                "setting sys.executable",
            )?;
            check(
                ffi::PyConfig_SetBytesString(config, &mut config.program_name, exe.as_ptr()),
                "setting the program name",
            )?;
            let argv0 = c"postern";
            let mut argv = [argv0.as_ptr()];
            check(
                ffi::PyConfig_SetBytesArgv(config, 1, argv.as_mut_ptr()),
                "setting sys.argv",
            )?;
            check(ffi::Py_InitializeFromConfig(config), "starting Python")
        })();
        ffi::PyConfig_Clear(config);
        r?;
        // Release the GIL taken by initialisation; threads attach when they need it.
        ffi::PyEval_SaveThread();
    }
    // Let pyo3 know (no-op: already initialised).
    Python::initialize();
    Python::attach(|py| -> PyResult<(PythonInfo, String)> {
        py.run(SITE_SNAPSHOT, None, None)?;
        let sys = py.import("sys")?;
        let version_info = sys.getattr("version_info")?;
        let (major, minor): (u32, u32) = (
            version_info.get_item(0)?.extract()?,
            version_info.get_item(1)?.extract()?,
        );
        if format!("{major}.{minor}") != BUILD_PYTHON_VERSION {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
                "loaded Python {major}.{minor}, but postern was built for {BUILD_PYTHON_VERSION}"
            )));
        }
        let stdlib: String = py
            .eval(
                c"__import__('os').path.realpath(__import__('os').path.dirname(__import__('os').__file__))",
                None,
                None,
            )?
            .extract()?;
        Ok((
            PythonInfo {
                version: sys
                    .getattr("version")?
                    .extract::<String>()?
                    .replace('\n', " "),
                prefix: sys.getattr("prefix")?.extract()?,
                executable: sys.getattr("executable")?.extract()?,
            },
            stdlib,
        ))
    })
    .map_err(|e| WsgiError::Init {
        reason: e.to_string(),
    })
    .and_then(|(info, stdlib)| match venv {
        Some(v) => check_stdlib(v, stdlib).map(|()| info),
        None => Ok(info),
    })
}

/// Before Python starts: its standard library can be read by this process's user. One
/// it cannot (a pyenv build under root's home, postern dropped to `--uid nobody`) made
/// CPython print its whole path configuration to stderr before it failed on its
/// encodings module. regression (probe 427): about 25 lines of it, then the error.
/// (`PYTHONHOME` names another library, and another libpython finds its own: left to
/// CPython.)
fn check_stdlib_readable() -> Result<(), WsgiError> {
    // Another libpython (the loader fell back to the system's) finds its own library.
    if BUILD_PYTHON_STDLIB.is_empty()
        || std::env::var_os("PYTHONHOME").is_some()
        || libpython_elsewhere().is_some()
    {
        return Ok(());
    }
    let probe = Path::new(BUILD_PYTHON_STDLIB)
        .join("encodings")
        .join("__init__.py");
    match std::fs::File::open(&probe) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(WsgiError::Init {
            reason: format!(
                "cannot read Python's standard library ({}: {e}) as uid {}: the Python \
                 postern was built with ({BUILD_PYTHON}) must be readable by the user \
                 postern runs as; one under another user's home, such as root's pyenv, is \
                 not: install Python where that user can read it (e.g. under /opt or \
                 /usr/local) and build postern with it, or run as a user who can read it",
                probe.display(),
                rustix::process::geteuid().as_raw()
            ),
        }),
        _ => Ok(()),
    }
}

/// Checks, once Python is up, that a venv gave it the standard library of the Python
/// postern embeds. A venv made by another install of the same version (`python3 -m venv`
/// with Debian's python3.11 when postern embeds pyenv's) passes [`check_venv`], and
/// CPython then takes that install's library (from `home` in `pyvenv.cfg`), which does
/// not fit the embedded interpreter: the modules Debian builds into its own binary
/// (`_socket`, `math`, `zlib` …) are in neither, so asyncio, ssl or subprocess fail to
/// import later, in the app.
fn check_stdlib(venv: &Path, stdlib: String) -> Result<(), WsgiError> {
    if BUILD_PYTHON_STDLIB.is_empty() || stdlib == BUILD_PYTHON_STDLIB {
        return Ok(());
    }
    let home = std::fs::read_to_string(venv.join("pyvenv.cfg"))
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == "home").then(|| v.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "?".to_owned());
    Err(WsgiError::Venv {
        venv: venv.to_owned(),
        reason: format!(
            "it was made by another Python installation (home = {home} in its pyvenv.cfg), \
             whose standard library ({stdlib}) does not fit the Python postern embeds \
             ({BUILD_PYTHON}, library {BUILD_PYTHON_STDLIB}): the app would miss modules \
             (Debian's lacks _socket, math and zlib, which asyncio, ssl and subprocess \
             need); recreate it with `{BUILD_PYTHON} -m venv`"
        ),
    })
}

/// `module.path:callable` or `path/to/file.py[:callable]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppSpec {
    Module {
        module: String,
        callable: Option<String>,
    },
    File {
        path: PathBuf,
        callable: Option<String>,
    },
}

impl AppSpec {
    pub fn parse(spec: &str) -> Result<Self, String> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err("the APP argument is empty".into());
        }
        // A callable is what follows the last ':' unless it looks like part of a path.
        let (target, callable) = match spec.rsplit_once(':') {
            Some((t, c)) if !c.contains('/') && !c.is_empty() => (t, Some(c.to_owned())),
            Some((t, "")) => (t, None),
            _ => (spec, None),
        };
        if let Some(c) = callable.as_deref().filter(|c| c.contains('(')) {
            // gunicorn's `module:create_app()`: postern calls no factory.
            let factory = c.split('(').next().unwrap_or(c);
            // regression: a file's factory (`shop.py:create_app()`) was told to write
            // `from shop.py import create_app`.
            let module = AppSpec::parse(target)?;
            return Err(format!(
                "{spec:?}: postern calls no app factory ('{c}'); {}",
                wsgi_py_advice(&module, factory)
            ));
        }
        if target.ends_with(".py") || target.contains('/') {
            Ok(AppSpec::File {
                path: PathBuf::from(target),
                callable,
            })
        } else {
            let valid = target
                .split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || c == '_'));
            if !valid {
                return Err(format!(
                    "{spec:?} is neither a module path (pkg.module[:callable]) nor a .py file"
                ));
            }
            Ok(AppSpec::Module {
                module: target.to_owned(),
                callable,
            })
        }
    }
}

impl std::fmt::Display for AppSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (t, c) = match self {
            AppSpec::Module { module, callable } => (module.clone(), callable),
            AppSpec::File { path, callable } => (path.display().to_string(), callable),
        };
        match c {
            Some(c) => write!(f, "{t}:{c}"),
            None => write!(f, "{t}"),
        }
    }
}

/// What the site-packages directories gave this interpreter at start, kept (as
/// `sys._postern_site`) so that a worker forked for a reload can tell whether they
/// changed since: `site` reads the `.pth` files once, when Python starts (in the
/// master), and a worker forked later inherits the paths and import hooks they set up.
/// A deploy that swaps a `current -> releases/N` link under `--venv current/.venv`
/// changes what those files say (an editable install's source directory, its import
/// finder's mapping) without changing the paths `sys.path` holds.
///
/// Kept: each site directory on `sys.path` (as written there, through any link), its
/// real path, the names and bytes of its `.pth` files; the `sys.path` entries after the
/// first site directory that are not site directories themselves (what `.pth` lines
/// and the code they run appended); the modules loaded by then from those places (what
/// `.pth` `import` lines ran: an editable install's finder, setuptools' distutils shim).
const SITE_SNAPSHOT: &std::ffi::CStr = c"
def _postern_site_snapshot():
    import os, site, sys
    dirs = []
    for d in list(site.getsitepackages()) + [site.getusersitepackages()]:
        if d in sys.path and d not in dirs:
            dirs.append(d)
    def state(dirs):
        real, pth = {}, {}
        for d in dirs:
            real[d] = os.path.realpath(d)
            files = []
            try:
                names = sorted(n for n in os.listdir(d) if n.endswith('.pth'))
            except OSError:
                names = []
            for n in names:
                try:
                    with open(os.path.join(d, n), 'rb') as f:
                        files.append((n, f.read()))
                except OSError:
                    pass
            pth[d] = files
        return real, pth
    real, pth = state(dirs)
    first = min((sys.path.index(d) for d in dirs), default=len(sys.path))
    added = [p for p in sys.path[first:] if p not in dirs]
    places = [real[d] for d in dirs] + [os.path.realpath(p) for p in added if os.path.isabs(p)]
    # Only what the .pth files' import lines name (and their submodules), and only when
    # loaded from those places: what a sitecustomize imported (a tracing agent's setup)
    # is left alone, since nothing would run it again.
    named = set()
    for files in pth.values():
        for _, data in files:
            for line in data.decode('utf-8', 'replace').splitlines():
                if line.startswith(('import ', 'import' + chr(9))):
                    # Every name on the line: those not loaded from these places are
                    # left out below.
                    named.update(''.join(c if c.isalnum() or c in '_.' else ' '
                                         for c in line).split())
    tops = {n.split('.')[0] for n in named}
    modules = []
    for name, m in list(sys.modules.items()):
        if name.split('.')[0] not in tops:
            continue
        f = getattr(m, '__file__', None)
        if not isinstance(f, str):
            continue
        rf = os.path.realpath(f)
        if any(rf == p or rf.startswith(p.rstrip(os.sep) + os.sep) for p in places):
            modules.append(name)
    sys._postern_site = {'dirs': dirs, 'real': real, 'pth': pth, 'added': added,
                         'modules': modules, 'state': state}
try:
    _postern_site_snapshot()
except Exception as e:
    # Only a worker's refresh at a reload depends on it: never stop Python's start.
    import sys
    sys._postern_site = None
    sys._postern_site_error = repr(e)
del _postern_site_snapshot
";

/// In a worker, before the app's import: when a site directory's real path or its
/// `.pth` files differ from what [`SITE_SNAPSHOT`] kept in the master, undoes what the
/// old files set up (their `sys.path` entries, the modules their `import` lines loaded
/// and the import hooks those installed) and lets `site` read the directories again.
/// Returns what changed, for the log; `None` when nothing did (the usual case: a few
/// `stat`s and small reads per worker start).
fn refresh_site(py: Python<'_>) -> PyResult<Refresh> {
    let globals = pyo3::types::PyDict::new(py);
    py.run(SITE_REFRESH, Some(&globals), None)?;
    let outcome: Option<(String, String)> = match globals.get_item("outcome")? {
        Some(o) if !o.is_none() => Some(o.extract()?),
        _ => None,
    };
    Ok(match outcome {
        None => Refresh::Same,
        Some((kind, text)) if kind == "refuse" => Refresh::Refuse(text),
        Some((_, text)) => Refresh::Changed(text),
    })
}

/// What [`refresh_site`] found.
enum Refresh {
    /// The venv is as the master found it at start.
    Same,
    /// It changed, and this worker read its `.pth` files again: what changed.
    Changed(String),
    /// It changed in a way a reload cannot follow (another Python version): why.
    Refuse(String),
}

const SITE_REFRESH: &std::ffi::CStr = c"
def _postern_site_refresh():
    import importlib, os, site, sys
    snap = getattr(sys, '_postern_site', None)
    if not snap:
        return None
    real, pth = snap['state'](snap['dirs'])
    if real == snap['real'] and pth == snap['pth']:
        return None
    # A venv made for another Python: its site-packages is not where this one looks.
    if sys.prefix != sys.base_prefix:
        try:
            with open(os.path.join(sys.prefix, 'pyvenv.cfg')) as f:
                for line in f:
                    key, _, value = line.partition('=')
                    if key.strip() in ('version', 'version_info'):
                        want = '%d.%d' % sys.version_info[:2]
                        if not value.strip().startswith(want + '.') and value.strip() != want:
                            return ('refuse',
                                'the venv at %s was made for Python %s, and this postern embeds '
                                'Python %s: a reload cannot change the Python version; restart '
                                'postern (or recreate the venv with Python %s)'
                                % (sys.prefix, value.strip(), want, want))
                        break
        except OSError:
            pass
    gone = set(snap['modules'])
    for name in gone:
        sys.modules.pop(name, None)
    keep = lambda hook: getattr(hook, '__module__', None) not in gone
    sys.meta_path[:] = [f for f in sys.meta_path if keep(f)]
    sys.path_hooks[:] = [h for h in sys.path_hooks if keep(h)]
    added = set(snap['added'])
    sys.path[:] = [p for p in sys.path if p not in added]
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()
    for d in snap['dirs']:
        site.addsitedir(d)
    moved = ['%s -> %s' % (snap['real'][d], real[d]) for d in snap['dirs'] if real[d] != snap['real'][d]]
    return ('changed', ', '.join(moved) or '.pth files changed in ' + ', '.join(
        d for d in snap['dirs'] if pth[d] != snap['pth'][d]))
outcome = _postern_site_refresh()
";

/// Sets `signal` to be ignored through Python's `signal.signal` (on the main thread
/// only, as Python requires), so that `signal.getsignal` says so too: false when it
/// could not.
pub fn ignore_signal(signal: i32) -> bool {
    Python::attach(|py| {
        let module = py.import("signal")?;
        module
            .call_method1("signal", (signal, module.getattr("SIG_IGN")?))
            .map(drop)
    })
    .is_ok()
}

/// Puts `dirs` at the front of `sys.path`, first one first.
pub fn prepend_sys_path(py: Python<'_>, dirs: &[PathBuf]) -> PyResult<()> {
    let path = py.import("sys")?.getattr("path")?.cast_into::<PyList>()?;
    for dir in dirs.iter().rev() {
        let d = dir.to_string_lossy().into_owned();
        // Keep one entry per directory, at the front.
        while path.contains(&d)? {
            let i = path.index(&d)?;
            path.del_item(i)?;
        }
        path.insert(0, d)?;
    }
    Ok(())
}

/// Puts `dir` at the end of `sys.path`, unless it is on it already.
fn append_sys_path(py: Python<'_>, dir: &Path) -> PyResult<()> {
    let path = py.import("sys")?.getattr("path")?.cast_into::<PyList>()?;
    let d = dir.to_string_lossy().into_owned();
    if !path.contains(&d)? {
        path.append(d)?;
    }
    Ok(())
}

/// Imports the app and returns the WSGI callable.
pub fn load_app(py: Python<'_>, spec: &AppSpec) -> Result<Py<PyAny>, WsgiError> {
    let fail = |e: PyErr| {
        let mut traceback = super::traceback(py, &e);
        // Apps moved from uWSGI import its `uwsgi` module, which postern does not provide.
        if e.is_instance_of::<pyo3::exceptions::PyModuleNotFoundError>(py) {
            let name = e.value(py).getattr("name").ok();
            let name: Option<String> = name.and_then(|n| n.extract().ok());
            if matches!(name.as_deref(), Some("uwsgi" | "uwsgidecorators")) {
                traceback.push_str("postern has no `uwsgi` module: uWSGI's spooler, mules, cache, locks, signals and timers do not exist under postern; move those jobs to a task queue or a systemd timer (docs/migration.md, \"The uwsgi module\")\n");
            }
            // `lit.app` for the callable `app` of module `lit`: the module imports, its
            // "submodule" does not.
            if let AppSpec::Module {
                module,
                callable: None,
            } = spec
            {
                if let Some((parent, last)) = module.rsplit_once('.') {
                    if name.as_deref() == Some(module.as_str()) {
                        traceback.push_str(&format!(
                            "if `{last}` is the callable in module `{parent}`, write {parent}:{last} (MODULE:CALLABLE)\n"
                        ));
                    }
                }
            }
        }
        WsgiError::Import {
            app: spec.to_string(),
            advice: import_advice(py, &e, spec),
            traceback,
        }
    };
    let (module, callable) = match spec {
        AppSpec::Module { module, callable } => {
            (py.import(module.as_str()).map_err(fail)?, callable)
        }
        AppSpec::File { path, callable } => {
            let path = std::fs::canonicalize(path).map_err(|e| WsgiError::Import {
                app: spec.to_string(),
                advice: FIND_ADVICE.to_owned(),
                traceback: format!("cannot open {}: {e}\n", path.display()),
            })?;
            // The file's directory goes at the end of `sys.path` (unless it is there
            // already), so that its siblings import by name but never hide a package
            // of the same name: a Django project's `mysite/wsgi.py` sits beside
            // `mysite/celery.py` (Celery's documented layout) and `mysite/jinja2.py`
            // (Django's), whose own `from celery import Celery` must find the package.
            // uWSGI's `wsgi-file` and mod_wsgi's scripts add nothing; `python FILE`
            // puts it first, which is what hid them.
            // regression (probe 313): it was put first, and a Django project with
            // `mysite/jinja2.py` answered 500 (`cannot import name 'Environment' from
            // partially initialized module 'jinja2'`) where uWSGI served.
            if let Some(dir) = path.parent() {
                append_sys_path(py, dir).map_err(fail)?;
            }
            (import_file(py, &path).map_err(fail)?, callable)
        }
    };
    let names: Vec<&str> = match callable {
        Some(c) => vec![c.as_str()],
        None => vec!["application", "app"],
    };
    for name in &names {
        let mut obj = module.clone().into_any();
        let mut found = true;
        for part in name.split('.') {
            match obj.getattr(part) {
                Ok(o) => obj = o,
                Err(_) => {
                    found = false;
                    break;
                }
            }
        }
        if found {
            if !obj.is_callable() {
                return Err(WsgiError::NotCallable {
                    app: spec.to_string(),
                    name: (*name).to_owned(),
                    kind: obj
                        .get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default(),
                });
            }
            return Ok(obj.unbind());
        }
    }
    let hint = close_callable(&module, &names);
    let advice = match (&hint, factory_in(&module)) {
        (None, Some(f)) => format!(
            "it has {f}(), an app factory? postern calls none: {}",
            wsgi_py_advice(spec, &f)
        ),
        // (boot adds a hint when the file is a gunicorn config: NO_CALLABLE_ADVICE)
        _ => NO_CALLABLE_ADVICE.to_owned(),
    };
    Err(WsgiError::NoCallable {
        app: spec.to_string(),
        tried: names.join("' or '"),
        hint: hint.map_or_else(String::new, |c| format!(" (did you mean '{c}'?)")),
        advice,
    })
}

/// What to check when the app's module was not found.
const FIND_ADVICE: &str = "check the APP argument, --chdir, --pythonpath and --venv";

/// What to check for an import that failed with `e`: the app's own code when it
/// raised (a SyntaxError, or a traceback with a frame in a file: the app's module
/// ran), else how the app is found.
// regression: a reload into a SyntaxError said to check the APP argument, --chdir,
// --pythonpath and --venv.
fn import_advice(py: Python<'_>, e: &PyErr, spec: &AppSpec) -> String {
    if e.is_instance_of::<pyo3::exceptions::PySyntaxError>(py) {
        return "the app's code has a syntax error: see the traceback".to_owned();
    }
    // Frames in files (not importlib's frozen ones): code of the app's ran and raised.
    let mut in_code = false;
    let mut tb = e.traceback(py).map(|t| t.into_any());
    while let Some(t) = tb {
        let file: Option<String> = t
            .getattr("tb_frame")
            .and_then(|f| f.getattr("f_code"))
            .and_then(|c| c.getattr("co_filename"))
            .and_then(|n| n.extract())
            .ok();
        if file.is_some_and(|f| !f.starts_with('<')) {
            in_code = true;
            break;
        }
        tb = t.getattr("tb_next").ok().filter(|n| !n.is_none());
    }
    if !in_code {
        return FIND_ADVICE.to_owned();
    }
    if e.is_instance_of::<pyo3::exceptions::PyModuleNotFoundError>(py) {
        let name: Option<String> = e
            .value(py)
            .getattr("name")
            .ok()
            .and_then(|n| n.extract().ok());
        // The app's module (or its package) itself: how it is found.
        if let (AppSpec::Module { module, .. }, Some(n)) = (spec, &name) {
            if module == n || module.starts_with(&format!("{n}.")) {
                return FIND_ADVICE.to_owned();
            }
        }
        return format!(
            "the app's code imports {}, which is not found: check --venv and --pythonpath",
            name.map_or_else(|| "a module".to_owned(), |n| format!("`{n}`"))
        );
    }
    "the app's code raised while it was imported: see the traceback".to_owned()
}

/// The names an app factory goes by (Flask's, Starlette's and others' docs).
const FACTORY_NAMES: &[&str] = &[
    "create_app",
    "make_app",
    "get_app",
    "build_app",
    "app_factory",
    "create_application",
    "make_application",
    "get_application",
];

/// The module's function named as an app factory, if it has one.
fn factory_in(module: &Bound<'_, PyModule>) -> Option<String> {
    FACTORY_NAMES
        .iter()
        .find(|n| module.getattr(**n).is_ok_and(|o| o.is_callable()))
        .map(|n| (*n).to_owned())
}

/// What to write for an app made by `factory` in `spec`'s module: postern calls no
/// factory. The advice that works for every APP is `app = create_app()` in the same
/// file, then that file's `:app`; a separate wsgi.py is offered too where it can import
/// the module by name.
/// regression: an app file with only `create_app()` was told to "name the callable as
/// MODULE:CALLABLE", and naming the factory is refused.
/// regression (review2): the wsgi.py advice failed when followed for `my-shop.py` (no
/// module name), `legacy.wsgi` (not importable) and a module named `wsgi` (overwritten).
fn wsgi_py_advice(spec: &AppSpec, factory: &str) -> String {
    let identifier = |m: &str| {
        m.split('.').all(|p| {
            !p.is_empty()
                && !p.starts_with(|c: char| c.is_ascii_digit())
                && p.chars().all(|c| c.is_alphanumeric() || c == '_')
        })
    };
    let (place, give, module, beside, wsgi) = match spec {
        AppSpec::Module { module, .. } => (
            format!("the module {module}'s file"),
            format!("{module}:app"),
            Some(module.clone()),
            String::new(),
            "wsgi:app".to_owned(),
        ),
        AppSpec::File { path, .. } => {
            let py = path.extension().is_some_and(|e| e == "py");
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .filter(|s| py && identifier(s) && !s.contains('.'));
            (
                path.display().to_string(),
                format!("{}:app", path.display()),
                stem,
                format!(" beside {}", path.display()),
                format!("{}:app", path.with_file_name("wsgi.py").display()),
            )
        }
    };
    let mut advice = format!("add `app = {factory}()` at the end of {place}, then give {give}");
    // A wsgi.py of its own, where it can import the module and is not the module.
    if let Some(m) = module.filter(|m| identifier(m) && m != "wsgi" && !m.ends_with(".wsgi")) {
        advice.push_str(&format!(
            " (or write a wsgi.py{beside} with `from {m} import {factory}` and `app = {factory}()`, then give {wsgi})"
        ));
    }
    advice
}

/// The module's public callable closest to one of `names` (difflib's measure), if any
/// is close. regression: a typo'd callable (`create_ap`) got no suggestion.
fn close_callable(module: &Bound<'_, PyModule>, names: &[&str]) -> Option<String> {
    let py = module.py();
    let candidates: Vec<String> = module
        .dir()
        .ok()?
        .iter()
        .filter_map(|n| n.extract::<String>().ok())
        .filter(|n| !n.starts_with('_'))
        .filter(|n| module.getattr(n.as_str()).is_ok_and(|o| o.is_callable()))
        .collect();
    let difflib = py.import("difflib").ok()?;
    names
        .iter()
        .find_map(|name| {
            let found = difflib
                .call_method1("get_close_matches", (*name, candidates.clone(), 1, 0.7))
                .ok()?;
            found.get_item(0).ok()?.extract::<String>().ok()
        })
        // `flask_app:application` where the module has `app` (Flask's and FastAPI's
        // usual name) or the other way round: the names postern tries by default.
        .or_else(|| {
            ["application", "app"]
                .into_iter()
                .find(|d| candidates.iter().any(|c| c == d))
                .map(str::to_owned)
        })
}

/// Runs a `.py` file as a module named after its stem, registered in `sys.modules`.
fn import_file<'py>(py: Python<'py>, path: &Path) -> PyResult<Bound<'py, PyModule>> {
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().replace(['-', '.', ' '], "_"))
        .unwrap_or_else(|| "wsgi_app".into());
    let util = py.import("importlib.util")?;
    // An explicit source loader: without it only a `.py` suffix is loadable, and uWSGI's
    // and mod_wsgi's apps are often `app.wsgi` files.
    let file = path.to_string_lossy();
    let loader = py
        .import("importlib.machinery")?
        .getattr("SourceFileLoader")?
        .call1((&name, &file))?;
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("loader", loader)?;
    let spec = util.call_method("spec_from_file_location", (&name, &file), Some(&kwargs))?;
    if spec.is_none() {
        return Err(pyo3::exceptions::PyImportError::new_err(format!(
            "cannot load {} as a Python module",
            path.display()
        )));
    }
    let module = util.call_method1("module_from_spec", (&spec,))?;
    let modules = py.import("sys")?.getattr("modules")?;
    modules.set_item(&name, &module)?;
    if let Err(e) = spec
        .getattr("loader")?
        .call_method1("exec_module", (&module,))
    {
        let _ = modules.del_item(&name);
        return Err(e);
    }
    module.cast_into::<PyModule>().map_err(Into::into)
}

/// Puts `path` at the front of `sys.path` and imports the app (after [`initialize`]).
/// The advice of [`WsgiError::NoCallable`] when the module has no factory either.
pub const NO_CALLABLE_ADVICE: &str = "name the callable as MODULE:CALLABLE";

pub fn import(path: &[PathBuf], spec: &AppSpec) -> Result<super::App, WsgiError> {
    Python::attach(|py| {
        match refresh_site(py) {
            Ok(Refresh::Refuse(reason)) => return Err(WsgiError::Init { reason }),
            Ok(Refresh::Changed(changed)) => tracing::info!(
                changed = %changed,
                "the venv changed since postern started (its real path or its .pth files): this worker read its .pth files again, so it imports from the new one; modules the master imported before forking keep their code (restart postern to update those)"
            ),
            Ok(Refresh::Same) => {}
            Err(e) => {
                tracing::warn!(error = %e, "checking whether the venv's .pth files changed since postern started failed; this worker keeps the paths they gave at start")
            }
        }
        prepend_sys_path(py, path).map_err(|e| WsgiError::Init {
            reason: format!("setting sys.path: {e}"),
        })?;
        let guarded = py.run(GUARD_SIGTERM, None, None).is_ok();
        let app = load_app(py, spec);
        crate::logging::take_back_sigusr1();
        if gevent_patched_threading(py) {
            // regression (probe): with --preload --threads 4 a worker deadlocked in
            // gevent's patched locks, in silence.
            tracing::warn!("the app patched threading with gevent (gevent.monkey.patch_all()) at its import: postern runs requests on OS threads, which gevent's patched locks, queues and sleeps do not expect, and a worker can deadlock (seen with --preload and --threads above 1); postern has no gevent worker: serve such an app with gunicorn -k gevent, or leave threading unpatched (patch_all(thread=False, ...))");
        }
        if guarded {
            let refused = unguard_sigterm(py).unwrap_or_default();
            for (signal, at) in refused {
                tracing::warn!(at = %at, "the app set a {signal} handler of its own while it was imported (signal.signal): refused, since postern owns SIGTERM, SIGINT and SIGHUP (a stop taken by the app's handler would never reach the server); put stop work in atexit or, for ASGI, the lifespan shutdown");
            }
        }
        Ok(super::App(app?))
    })
}

/// Whether gevent's monkey-patching replaced `threading` in this interpreter.
fn gevent_patched_threading(py: Python<'_>) -> bool {
    let Ok(modules) = py.import("sys").and_then(|s| s.getattr("modules")) else {
        return false;
    };
    modules
        .get_item("gevent.monkey")
        .and_then(|m| m.call_method1("is_module_patched", ("threading",)))
        .and_then(|r| r.is_truthy())
        .unwrap_or(false)
}

/// For the app's import: `signal.signal` for SIGTERM, SIGINT or SIGHUP leaves
/// postern's handler in place (it counts the master's stop: crate::stop) and notes
/// where the call came from. An app's own handler set at import would otherwise take a
/// SIGTERM that came before the server put postern's back, and the worker would never
/// stop (or, for SIGINT/SIGHUP at the default action, a terminal's signal to the whole
/// group would kill it).
/// regression: a stop sent to a worker while an app that set such a handler was still
/// importing was lost (the master waited --graceful-timeout, then killed it).
const GUARD_SIGTERM: &std::ffi::CStr = c"
import signal as _signal
def _postern_guard(module=_signal):
    real = module.signal
    refused = []
    def signal(signalnum, handler):
        if signalnum in (module.SIGTERM, module.SIGINT, module.SIGHUP):
            import sys
            frame = sys._getframe(1)
            where = '%s:%d' % (frame.f_code.co_filename, frame.f_lineno)
            refused.append((module.Signals(signalnum).name, where))
            return module.getsignal(signalnum)
        return real(signalnum, handler)
    signal.__doc__ = real.__doc__
    signal._postern_real = real
    signal._postern_refused = refused
    module.signal = signal
_postern_guard()
del _postern_guard, _signal
";

/// Puts `signal.signal` back after the import; returns which handlers were refused,
/// and where the calls came from.
fn unguard_sigterm(py: Python<'_>) -> PyResult<Vec<(String, String)>> {
    let signal = py.import("signal")?;
    let guard = signal.getattr("signal")?;
    let Ok(real) = guard.getattr("_postern_real") else {
        return Ok(Vec::new());
    };
    signal.setattr("signal", real)?;
    guard.getattr("_postern_refused")?.extract()
}

/// Readies the master's interpreter for forking workers from it: imports the modules
/// every worker needs whatever the app (the app-file loader, the SIGUSR2 stack dumps,
/// atexit), so they are loaded once and shared, then moves every object into the
/// collector's permanent generation (`gc.freeze()`): a worker's collections never walk
/// (and so never write to) the master's objects, whose pages then stay shared instead
/// of being copied into every worker.
pub fn prepare_for_fork() -> Result<(), WsgiError> {
    Python::attach(|py| {
        py.run(
            c"import atexit, faulthandler, signal, importlib.machinery, importlib.util, gc\ngc.freeze()",
            None,
            None,
        )
        .map_err(|e| WsgiError::Init {
            reason: format!("preparing the interpreter for the workers: {e}"),
        })
    })
}

/// Forks a process in which Python is initialised (the master), bracketing the fork as
/// CPython requires (PyOS_BeforeFork / PyOS_AfterFork_Parent / _Child, with the GIL
/// held). Returns 0 in the child, the child's pid in the parent.
///
/// # Safety
/// The caller must be the process's only thread (no runtime, no app thread), as for
/// any fork whose child goes on running Rust and Python code.
pub unsafe fn fork_with_python() -> std::io::Result<i32> {
    Python::attach(|_py| {
        // SAFETY: the GIL is held (attach); the CPython API is used as documented.
        // libc: rustix's only fork (`runtime::kernel_fork`) skips glibc's fork
        // handlers, which keep malloc and stdio usable in the child.
        unsafe {
            pyo3::ffi::PyOS_BeforeFork();
            let pid = libc::fork();
            if pid == 0 {
                pyo3::ffi::PyOS_AfterFork_Child();
            } else {
                pyo3::ffi::PyOS_AfterFork_Parent();
            }
            if pid < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(pid)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // regression (probe 394): a venv whose python links to an interpreter gone (or out
    // of the user's reach) said 'bin/python does not exist'.
    #[test]
    fn a_venv_s_python_that_links_nowhere_is_named_as_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let version = format!("version = {BUILD_PYTHON_VERSION}.0\n");
        std::fs::write(dir.path().join("pyvenv.cfg"), version).unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        let gone = dir.path().join("gone").join("python3");
        std::os::unix::fs::symlink("python3", dir.path().join("bin/python")).unwrap();
        std::os::unix::fs::symlink(&gone, dir.path().join("bin/python3")).unwrap();
        let Err(WsgiError::Venv { reason, .. }) = check_venv(dir.path()) else {
            panic!("accepted");
        };
        let says = format!("bin/python is a link to {}: ", gone.display());
        assert!(reason.contains(&says), "{reason}");
        assert!(reason.contains("recreate the venv"), "{reason}");
    }

    #[test]
    fn parses_app_specs() {
        assert_eq!(
            AppSpec::parse("myproject.wsgi:application"),
            Ok(AppSpec::Module {
                module: "myproject.wsgi".into(),
                callable: Some("application".into())
            })
        );
        assert_eq!(
            AppSpec::parse("hello"),
            Ok(AppSpec::Module {
                module: "hello".into(),
                callable: None
            })
        );
        assert_eq!(
            AppSpec::parse("examples/hello.py"),
            Ok(AppSpec::File {
                path: "examples/hello.py".into(),
                callable: None
            })
        );
        assert_eq!(
            AppSpec::parse("app.py:make"),
            Ok(AppSpec::File {
                path: "app.py".into(),
                callable: Some("make".into())
            })
        );
        assert!(AppSpec::parse("not a module").is_err());
        assert!(AppSpec::parse("").is_err());
        // gunicorn's factory call: refused with what to write instead.
        let e = AppSpec::parse("flask_app:create_app()").unwrap_err();
        assert!(e.contains("postern calls no app factory"), "{e}");
        assert!(
            e.contains("add `app = create_app()` at the end of the module flask_app's file, then give flask_app:app (or write a wsgi.py with `from flask_app import create_app` and `app = create_app()`, then give wsgi:app)"),
            "{e}"
        );
        // regression (review2): advice that failed when followed.
        for (app, wsgi_py) in [
            ("my-shop.py:create_app()", false),
            ("./legacy.wsgi:create_app()", false),
            ("wsgi.py:create_app()", false),
            ("wsgi:create_app()", false),
            ("shop.py:create_app()", true),
        ] {
            let e = AppSpec::parse(app).unwrap_err();
            let file = app.split(':').next().unwrap();
            let want = if file.ends_with(".py") || file.contains('/') {
                format!("add `app = create_app()` at the end of {file}, then give {file}:app")
            } else {
                format!("at the end of the module {file}'s file, then give {file}:app")
            };
            assert!(e.contains(&want), "{app}: {e}");
            assert_eq!(e.contains("write a wsgi.py"), wsgi_py, "{app}: {e}");
        }
    }
}
