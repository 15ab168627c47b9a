"""``module:callable`` specifications for user models and data."""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Callable

from .errors import InputError

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
    except ImportError as exc:
        raise InputError(f"{what} {spec!r}: cannot import module {module_name!r} ({exc})") from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise InputError(f"{what} {spec!r}: module {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError(f"{what} {spec!r}: {attribute!r} is not callable")
    return obj
