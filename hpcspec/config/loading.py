"""Reading a config: defaults → TOML file → command-line flags → ``--set`` overrides, type checks,
and the TOML text written back into every output file.

Every rank parses the same inputs, so a bad value raises :class:`ConfigError` on every rank before
any collective. Unknown keys are errors that name the closest valid key (a typo in a 64-rank job
should cost seconds, not a queue wait).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ..errors import ConfigError
from .options import valid_keys
from .rules import validate
from .schema import Config


def _unknown_key(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid_keys(), n=1, cutoff=0.5)
    if not close:  # a bare leaf name given without its section, e.g. "top_k"
        close = [k for k in valid_keys() if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]][:1]
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """Check one value against its field type; ints are accepted where floats are expected."""
    origin = typing.get_origin(kind)
    if origin is tuple:
        item = typing.get_args(kind)[0]
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, float) if item is float else item) and not isinstance(v, bool) for v in value
        ):
            noun = {int: "integers", float: "numbers"}.get(item, "strings")
            raise ConfigError(f"config key {key!r} must be a list of {noun}, got {value!r}")
        if item is float:
            values = tuple(float(v) for v in value)
            for number in values:
                _check_finite(key, number)
            return values
        return tuple(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"config key {key!r} must be {kind.__name__}, got {value!r}")
    if kind is float:
        _check_finite(key, value)
    return value


def _check_finite(key: str, value: float) -> None:
    """No config number means anything as NaN or infinity (``--tol nan`` would otherwise run and
    report residuals of 0 as "not converged")."""
    if not math.isfinite(value):
        default = _default_of(key)
        raise ConfigError(f"config key {key!r} must be a finite number, got {value!r}"
                          + (f" (the default is {default!r})" if default is not None else ""))


def _default_of(key: str) -> Any:
    """The default value of a dotted key (None if there is none to show)."""
    node: Any = Config()
    for part in key.split("."):
        node = getattr(node, part, None)
    return node


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise _unknown_key(prefix + key)
    values = {}
    for name in names & set(data):
        kind, value = hints[name], data[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {prefix + name!r} is a section; give it as [{prefix + name}]")
            values[name] = _build(kind, value, f"{prefix}{name}.")
        else:
            values[name] = _coerce(prefix + name, value, kind)
    return cls(**values)


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from ``--set``; the value is read as TOML, and as a bare string otherwise."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    if key not in valid_keys():
        raise _unknown_key(key)
    *sections, leaf = key.split(".")
    node = tree
    for section in sections:
        node = node.setdefault(section, {})
    node[leaf] = value


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None, *,
                text: str | None = None) -> Config:
    """Defaults, then the TOML file at ``path`` (or the TOML ``text``), then dotted ``overrides``
    (later wins)."""
    tree: dict[str, Any] = {}
    if text is not None:
        try:
            tree = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"stored config is not valid TOML: {exc}") from None
    elif path is not None:
        path = Path(path)
        try:
            tree = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    for key, value in (overrides or {}).items():
        _set_dotted(tree, key, value)
    return validate(_build(Config, tree, ""))


def layered_config(path: str | Path | None = None, *, base: Mapping[str, Any] | None = None,
                   flags: Mapping[str, Any] | None = None, sets: Iterable[str] = ()) -> Config:
    """The layering every command uses: defaults → the TOML file at ``path`` → ``base`` (dotted
    keys the command supplies) → ``flags`` (dotted keys the command-line flags set,
    :func:`~hpcspec.config.options.flag_overrides`) → ``--set KEY=VALUE`` items (later wins)."""
    overrides: dict[str, Any] = {**(base or {}), **(flags or {})}
    for item in sets:
        key, value = parse_override(item)
        overrides[key] = value
    return load_config(path, overrides)


def to_toml(cfg: Any, prefix: str = "") -> str:
    """The config as TOML text (stored in every output file for provenance)."""
    scalars, sections = [], []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            sections.append(f"\n[{prefix}{f.name}]\n" + to_toml(value, f"{prefix}{f.name}."))
        else:
            scalars.append(f"{f.name} = {toml_value(value)}")
    return "\n".join(scalars) + "".join(sections) + ("\n" if not prefix else "")


def toml_value(value: Any) -> str:
    """One value as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
