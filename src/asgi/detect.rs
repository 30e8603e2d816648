//! `--interface auto|wsgi|asgi`: is the imported callable a WSGI app or an ASGI 3 app?
//!
//! auto: ASGI when the callable is a coroutine function (`inspect.iscoroutinefunction`,
//! which honours `inspect.markcoroutinefunction`; asgiref's marker on Python < 3.12 too)
//! or an object whose `__call__` is one (Starlette, FastAPI, Quart, Litestar, Django's
//! `ASGIHandler`), looking through `functools.partial`; anything else is WSGI. What
//! cannot work is refused at start-up with a sentence saying what to do, never served
//! as a 500 on every request: an ASGI 2 (double-callable) app, an async app under
//! `--interface wsgi`, a callable that cannot be called the way its interface calls it.
//! The classification itself is a few lines of Python (`detect.py`): `inspect` is the
//! reference for what a coroutine function is.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

pub use super::InterfaceOption;

/// How the app is served.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Interface {
    Wsgi,
    Asgi,
}

impl Interface {
    pub fn name(self) -> &'static str {
        match self {
            Interface::Wsgi => "WSGI",
            Interface::Asgi => "ASGI",
        }
    }
}

/// Said where the callable named may be an app factory (`create_app()`, `create_app(config=None)`):
/// postern calls no factory (APP `module:create_app()` is refused too).
/// regression: only WSGI's and ASGI 2's shapes were named, and a Flask factory user was
/// told to wrap it with asgiref.
const FACTORY: &str = "An app factory (create_app)? postern calls none: name the app it returns, e.g. a wsgi.py with `from myapp import create_app` and `app = create_app()`, then APP wsgi:app";

/// Why an app cannot be served as the configuration says.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error(
        "{why}. postern serves ASGI 3 apps (one `async def app(scope, receive, send)` call per connection): wrap it with asgiref.compatibility.guarantee_single_callable(app), or rewrite it as ASGI 3"
    )]
    Asgi2 { why: String },
    #[error(
        "{why}, so it is an ASGI app, but --interface wsgi was given: every request would fail (the call returns a coroutine, not a response). Drop --interface wsgi (auto serves it as ASGI) or give --interface asgi"
    )]
    AsyncAsWsgi { why: String },
    #[error(
        "{why}, and it takes (environ, start_response), so it is a WSGI app, but --interface asgi was given: drop --interface asgi (auto serves it as WSGI)"
    )]
    WsgiAsAsgi { why: String },
    #[error(
        "{why}, and it cannot be called with three arguments (scope, receive, send), which is how ASGI calls the app; check the APP argument names the ASGI app"
    )]
    NotAsgiCallable { why: String },
    #[error(
        "{why}, and it takes three arguments but not two: if it is an ASGI app whose calls return awaitables, give --interface asgi; a WSGI app takes (environ, start_response)"
    )]
    SyncThreeArguments { why: String },
    #[error(
        "{why}, and it takes one argument: an ASGI 2 app (called with the scope, returning an async callable)? postern serves ASGI 3 apps: wrap it with asgiref.compatibility.guarantee_single_callable(app); a WSGI app takes (environ, start_response). {FACTORY}"
    )]
    OneArgument { why: String },
    #[error(
        "{why}, and it cannot be called with two arguments (environ, start_response), which is how WSGI calls the app; check the APP argument names the app. {FACTORY}"
    )]
    NotWsgiCallable { why: String },
    #[error("cannot inspect the app to choose between WSGI and ASGI: {0}")]
    Python(String),
}

/// What `detect.py` says about a callable.
struct Shape {
    kind: String,
    why: String,
    /// Callable with 1, 2, 3 positional arguments (`None`: its signature is unknown).
    takes: [Option<bool>; 3],
}

/// `detect.py`, compiled once per process.
fn module(py: Python<'_>) -> PyResult<&Py<PyModule>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    MODULE.get_or_try_init(py, || {
        PyModule::from_code(
            py,
            c_str_of(include_str!("detect.py")),
            c"postern/asgi/detect.py",
            c"_postern_detect",
        )
        .map(Bound::unbind)
    })
}

/// Compiles `detect.py` (and imports `inspect`, which it uses) now: the master calls it
/// before forking, so the workers share those pages instead of each loading its own
/// copy when it imports the app.
pub fn load(py: Python<'_>) -> PyResult<()> {
    module(py).map(|_| ())
}

fn classify(py: Python<'_>, app: &Bound<'_, PyAny>) -> PyResult<Shape> {
    let module = module(py)?;
    type Takes = Option<(Option<bool>, Option<bool>, Option<bool>)>;
    let (kind, why, takes): (String, String, Takes) = module
        .bind(py)
        .call_method1("classify", (app,))?
        .extract()?;
    let takes = takes.map_or([None; 3], |(a, b, c)| [a, b, c]);
    Ok(Shape { kind, why, takes })
}

/// The Python source as a C string (it has no NUL byte: checked by a test).
fn c_str_of(source: &'static str) -> &'static std::ffi::CStr {
    static CACHE: std::sync::OnceLock<std::ffi::CString> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| std::ffi::CString::new(source).expect("detect.py has no NUL byte"))
}

/// The interface chosen for an app, and the sentence that says why.
#[derive(Debug, Clone)]
pub struct Choice {
    pub interface: Interface,
    pub why: String,
}

/// Decides how to serve `app` as `requested` says, and logs the choice and why (one
/// info line); refuses what cannot work.
pub fn choose(
    py: Python<'_>,
    app: &Bound<'_, PyAny>,
    requested: InterfaceOption,
) -> Result<Interface, DetectError> {
    explain(py, app, requested).map(|c| c.interface)
}

/// [`choose`], with the reason.
fn explain(
    py: Python<'_>,
    app: &Bound<'_, PyAny>,
    requested: InterfaceOption,
) -> Result<Choice, DetectError> {
    let shape =
        classify(py, app).map_err(|e| DetectError::Python(crate::wsgi::traceback(py, &e)))?;
    let (interface, why) = decide(shape, requested)?;
    tracing::info!(
        interface = interface.name(),
        "serving the app as {}: {why}",
        interface.name()
    );
    Ok(Choice { interface, why })
}

/// [`choose`] for an imported app, with the reason (`--check` prints it).
pub fn choose_app(
    app: &crate::wsgi::App,
    requested: InterfaceOption,
) -> Result<Choice, DetectError> {
    Python::attach(|py| explain(py, app.0.bind(py), requested))
}

/// The rule, apart from Python (unit tested).
fn decide(shape: Shape, requested: InterfaceOption) -> Result<(Interface, String), DetectError> {
    let Shape { kind, why, takes } = shape;
    let [one, two, three] = takes;
    match (kind.as_str(), requested) {
        ("asgi2", _) => Err(DetectError::Asgi2 { why }),
        ("asgi", InterfaceOption::Wsgi) => Err(DetectError::AsyncAsWsgi { why }),
        ("asgi", InterfaceOption::Asgi) => Ok((Interface::Asgi, format!("{why} (--interface asgi)"))),
        ("asgi", InterfaceOption::Auto) => Ok((Interface::Asgi, format!("{why} (--interface auto)"))),
        (_, InterfaceOption::Asgi) => match (one, two, three) {
            (_, Some(true), Some(false)) => Err(DetectError::WsgiAsAsgi { why }),
            (Some(true), _, Some(false)) => Err(DetectError::OneArgument { why }),
            (_, _, Some(false)) => Err(DetectError::NotAsgiCallable { why }),
            _ => Ok((
                Interface::Asgi,
                format!("{why}, served as ASGI as --interface asgi says: each call must return an awaitable"),
            )),
        },
        (_, requested) => match (one, two, three) {
            (Some(true), Some(false), Some(false)) => Err(DetectError::OneArgument { why }),
            (_, Some(false), Some(true)) => Err(DetectError::SyncThreeArguments { why }),
            (_, Some(false), _) => Err(DetectError::NotWsgiCallable { why }),
            _ => Ok((
                Interface::Wsgi,
                match requested {
                    InterfaceOption::Wsgi => format!("{why} (--interface wsgi)"),
                    _ => format!("{why} (--interface auto)"),
                },
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python() {
        crate::wsgi::interpreter::start_for_tests();
    }

    /// Runs `code` (which defines `app`) and chooses for it.
    fn choose_for(code: &str, requested: InterfaceOption) -> Result<Interface, String> {
        python();
        Python::attach(|py| {
            let globals = pyo3::types::PyDict::new(py);
            let code = std::ffi::CString::new(code).unwrap();
            py.run(&code, Some(&globals), None).unwrap();
            let app = globals.get_item("app").unwrap().unwrap();
            choose(py, &app, requested).map_err(|e| e.to_string())
        })
    }

    fn auto(code: &str) -> Result<Interface, String> {
        choose_for(code, InterfaceOption::Auto)
    }

    #[test]
    fn detect_py_has_no_nul_byte() {
        assert!(!include_str!("detect.py").contains('\0'));
    }

    #[test]
    fn a_coroutine_function_is_asgi() {
        assert_eq!(
            auto("async def app(scope, receive, send): pass"),
            Ok(Interface::Asgi)
        );
    }

    #[test]
    fn an_instance_with_an_async_call_is_asgi() {
        let code =
            "class App:\n    async def __call__(self, scope, receive, send): pass\napp = App()";
        assert_eq!(auto(code), Ok(Interface::Asgi));
    }

    #[test]
    fn a_bound_async_method_and_partials_are_asgi() {
        let method =
            "class S:\n    async def handle(self, scope, receive, send): pass\napp = S().handle";
        assert_eq!(auto(method), Ok(Interface::Asgi));
        let partial = "import functools\nasync def h(x, scope, receive, send): pass\napp = functools.partial(h, 1)";
        assert_eq!(auto(partial), Ok(Interface::Asgi));
        let of_instance = "import functools\nclass App:\n    async def __call__(self, scope, receive, send): pass\napp = functools.partial(App())";
        assert_eq!(auto(of_instance), Ok(Interface::Asgi));
    }

    #[test]
    fn a_marked_sync_function_is_asgi() {
        // inspect.markcoroutinefunction from Python 3.12; asgiref's marker before.
        let code = "import asyncio, inspect\ndef app(scope, receive, send): return asyncio.sleep(0)\nmark = getattr(inspect, 'markcoroutinefunction', None)\nif mark: app = mark(app)\nelse: app._is_coroutine = asyncio.coroutines._is_coroutine";
        assert_eq!(auto(code), Ok(Interface::Asgi));
    }

    #[test]
    fn wsgi_functions_classes_and_instances_are_wsgi() {
        assert_eq!(
            auto("def app(environ, start_response): return []"),
            Ok(Interface::Wsgi)
        );
        let instance =
            "class App:\n    def __call__(self, environ, start_response): return []\napp = App()";
        assert_eq!(auto(instance), Ok(Interface::Wsgi));
        let class = "class app:\n    def __init__(self, environ, start_response): pass\n    def __iter__(self): return iter([])";
        assert_eq!(auto(class), Ok(Interface::Wsgi));
        assert_eq!(auto("def app(*args, **kw): return []"), Ok(Interface::Wsgi));
    }

    #[test]
    fn a_class_whose_instances_are_awaitable_is_asgi() {
        let code = "class app:\n    def __init__(self, scope, receive, send): pass\n    def __await__(self): return iter([])";
        assert_eq!(auto(code), Ok(Interface::Asgi));
    }

    #[test]
    fn asgi2_is_refused_with_a_way_out() {
        let class = "class app:\n    def __init__(self, scope): pass\n    async def __call__(self, receive, send): pass";
        let e = auto(class).unwrap_err();
        assert!(
            e.contains("ASGI 2") && e.contains("guarantee_single_callable"),
            "{e}"
        );
        let e = choose_for(class, InterfaceOption::Asgi).unwrap_err();
        assert!(e.contains("ASGI 2"), "{e}");
        let function =
            "def app(scope):\n    async def inner(receive, send): pass\n    return inner";
        let e = auto(function).unwrap_err();
        assert!(e.contains("takes one argument"), "{e}");
    }

    #[test]
    fn an_explicit_interface_that_cannot_work_is_refused() {
        let e = choose_for(
            "async def app(scope, receive, send): pass",
            InterfaceOption::Wsgi,
        )
        .unwrap_err();
        assert!(e.contains("--interface wsgi"), "{e}");
        let e = choose_for(
            "def app(environ, start_response): return []",
            InterfaceOption::Asgi,
        )
        .unwrap_err();
        assert!(
            e.contains("WSGI app") && e.contains("drop --interface asgi"),
            "{e}"
        );
    }

    #[test]
    fn a_sync_callable_that_returns_awaitables_is_asgi_when_asked() {
        let code = "import asyncio\nclass App:\n    def __call__(self, scope, receive, send): return asyncio.sleep(0)\napp = App()";
        assert_eq!(choose_for(code, InterfaceOption::Asgi), Ok(Interface::Asgi));
        let e = auto(code).unwrap_err();
        assert!(e.contains("--interface asgi"), "{e}");
    }
}
