"""``module:callable`` specifications for user models and data."""

from __future__ import annotations

import importlib
import os
import re
import sys
import traceback
from typing import Callable, TypeVar

from ..errors import InputError

T = TypeVar("T")
_HERE = os.path.dirname(os.path.abspath(__file__))
_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_callable_spec(spec: str) -> bool:
    """True for text shaped like ``package.module:attribute``."""
    return ":" in spec and not os.path.exists(spec)


def resolve_callable(spec: str, what: str) -> Callable[..., object]:
    """Import ``module:callable`` (the current directory is importable) and return the callable.

    Raises :class:`InputError` with the reason when the text is malformed, the module does not
    import, or the attribute is missing or not callable.
    """
    if not _SPEC.match(spec):
        raise InputError(f"{what} {spec!r} is not of the form module:callable (e.g. mymod:make_{what})")
    module_name, attribute = spec.split(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name.split(".")[0] and exc.name != module_name:
            raise user_code_error(spec, exc, "importing it") from exc  # the module itself imports a missing one
        raise InputError(f"{what} {spec!r}: cannot import module {module_name!r} ({exc})") from None
    except Exception as exc:  # the user's module raised while it was imported
        raise user_code_error(spec, exc, "importing it") from exc
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise InputError(f"{what} {spec!r}: module {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError(f"{what} {spec!r}: {attribute!r} is not callable")
    return obj


def call_user(spec: str, factory: Callable[[], T]) -> T:
    """``factory()`` — the user's ``module:callable`` — with any exception it raises turned into one
    :class:`InputError` line naming the callable, the exception and the user's file and line (the
    original stays chained as ``__cause__``: ``--debug`` prints its traceback)."""
    try:
        return factory()
    except InputError:
        raise
    except Exception as exc:
        raise user_code_error(spec, exc) from exc


def user_code_error(spec: str, exc: BaseException, doing: str = "") -> InputError:
    """``mymod:make_model raised ZeroDivisionError: division by zero (mymod.py:12)``."""
    message = str(exc).splitlines()[0] if str(exc) else ""
    where = _user_frame(exc)
    return InputError(f"{spec} raised {type(exc).__name__}{': ' + message if message else ''}"
                      f"{' while ' + doing if doing else ''}{f' ({where})' if where else ''}; fix that code "
                      "(--debug shows the traceback)")


def _user_frame(exc: BaseException) -> str:
    """``file.py:line`` of the innermost traceback frame in the user's code (not hpcspec's, not an
    installed library's, not the standard library's); for a SyntaxError the offending line."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{os.path.basename(exc.filename)}:{exc.lineno}"
    library = tuple(os.path.abspath(p) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, _HERE})
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        path = os.path.abspath(frame.filename)
        if not frame.filename.startswith("<") and not path.startswith(library):
            return f"{os.path.basename(frame.filename)}:{frame.lineno}"
    return f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""
