# postern's interface detection (src/asgi/detect.rs): what kind of callable the app is,
# and a sentence saying why. Run once per import; speed does not matter, clarity does.
import functools
import inspect
import sys

# asgiref.sync.markcoroutinefunction marks functions with asyncio's own marker on
# Python < 3.12 (inspect.markcoroutinefunction only exists from 3.12 on). Only an app
# that imported asyncio can carry that marker, so asyncio is looked up, not imported:
# importing it costs a WSGI worker about 8 MiB (it loads ssl) for nothing.
# Looked up at each call: the app is imported after this file runs.
def _asyncio_marked(f):
    mark = getattr(getattr(sys.modules.get("asyncio"), "coroutines", None), "_is_coroutine", None)
    return mark is not None and getattr(f, "_is_coroutine", None) is mark


def _marked(f):
    return getattr(f, "_is_coroutine_marker", None) is not None or _asyncio_marked(f)


def _is_async(f):
    if f is None:
        return False
    try:
        if inspect.iscoroutinefunction(f):
            return True
    except Exception:
        return False
    return _asyncio_marked(f)


def _name(obj):
    if inspect.ismethod(obj):
        owner = obj.__self__ if inspect.isclass(obj.__self__) else type(obj.__self__)
        return f"the method {owner.__module__}.{owner.__qualname__}.{obj.__func__.__name__}"
    if inspect.isclass(obj):
        return f"{obj.__module__}.{obj.__qualname__}"
    qualname = getattr(obj, "__qualname__", None)
    if isinstance(qualname, str) and (inspect.isfunction(obj) or inspect.isbuiltin(obj)):
        return f"{getattr(obj, '__module__', '?')}.{qualname}"
    cls = type(obj)
    return f"an instance of {cls.__module__}.{cls.__qualname__}"


def _takes(f, n):
    """True/False: `f` can be called with `n` positional arguments; None: unknown."""
    try:
        sig = inspect.signature(f)
    except (TypeError, ValueError):
        return None
    try:
        sig.bind(*([None] * n))
    except TypeError:
        return False
    return True


def _why_async(obj, f):
    how = "marked as a coroutine function" if _marked(f) else "a coroutine function"
    if inspect.ismethod(obj) or inspect.isfunction(obj) or obj is f:
        return f"{_name(obj)} is {how}"
    return f"{_name(obj)}, whose __call__ is {how}"


def classify(app):
    """(kind, why, takes): kind is "asgi" (ASGI 3), "asgi2", or "sync" (a plain callable:
    WSGI, unless the configuration says ASGI); `why` names the callable and its shape;
    `takes` is, for a sync callable, whether it can be called with 1, 2 and 3 positional
    arguments (each True, False, or None when its signature cannot be read)."""
    target = app
    wrapped = []
    while isinstance(target, functools.partial):
        wrapped.append("functools.partial of ")
        target = target.func
    prefix = "".join(wrapped)
    if _is_async(app) or _is_async(target):
        return "asgi", prefix + _why_async(target, target), None
    if inspect.isclass(target) and hasattr(target, "__await__"):
        # Calling the class with (scope, receive, send) makes an awaitable (Starlette's
        # HTTPEndpoint): an ASGI 3 app.
        return "asgi", prefix + f"{_name(target)} is a class whose instances are awaitable", None
    if inspect.isclass(target):
        # ASGI 2: the class is called with the scope, the instance with (receive, send).
        if _is_async(getattr(target, "__call__", None)):
            return (
                "asgi2",
                prefix + f"{_name(target)} is a class whose instances' __call__ is a "
                "coroutine function: an ASGI 2 (double-callable) app",
                None,
            )
    elif not (inspect.isfunction(target) or inspect.ismethod(target) or inspect.isbuiltin(target)):
        call = getattr(target, "__call__", None)
        if _is_async(call):
            return "asgi", prefix + _why_async(target, call), None
    takes = (_takes(app, 1), _takes(app, 2), _takes(app, 3))
    if inspect.isclass(target):
        shape = f"{_name(target)} is a class, not a coroutine function"
    elif inspect.isfunction(target) or inspect.ismethod(target) or inspect.isbuiltin(target):
        shape = f"{_name(target)} is a plain (not async) function"
    else:
        shape = f"{_name(target)}, whose __call__ is a plain (not async) method"
    return "sync", prefix + shape, takes
