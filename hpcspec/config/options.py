"""Everything derived from the options' metadata (:mod:`hpcspec.config.fields`): the list of keys,
the command-line flags of each flag set, the keys a resumed run may change and the keys that
decide a training run's identity. One declaration per key, read here for every use.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

from ..choices import TASKS
from .fields import Flag, Meta, meta_of
from .schema import Config


@dataclass(frozen=True)
class Option:
    """One config key: its dotted name, field type, default and metadata, with the flags
    ``may_change`` / ``identity`` resolved through its sections."""

    key: str
    kind: Any
    default: Any
    meta: Meta
    may_change: bool
    identity: bool

    @property
    def section(self) -> str:
        """The ``[section]`` it lives in ("" at the top)."""
        return self.key.rpartition(".")[0]


def _walk(cls: type, prefix: str, may_change: bool, identity: bool) -> list[Option]:
    found: list[Option] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = meta_of(f)
        change = may_change if meta.may_change is None else meta.may_change
        ident = identity if meta.identity is None else meta.identity
        if dataclasses.is_dataclass(hints[f.name]):
            found.extend(_walk(hints[f.name], f"{prefix}{f.name}.", change, ident))
        else:
            found.append(Option(prefix + f.name, hints[f.name], f.default, meta, change, ident))
    return found


@lru_cache(maxsize=None)
def options() -> tuple[Option, ...]:
    """Every key of :class:`~hpcspec.config.schema.Config`, in declaration order."""
    return tuple(_walk(Config, "", False, False))


@lru_cache(maxsize=None)
def sections() -> tuple[tuple[str, Meta, type], ...]:
    """The ``[sections]``: name, metadata and dataclass, in declaration order."""
    hints = typing.get_type_hints(Config)
    return tuple((f.name, meta_of(f), hints[f.name]) for f in dataclasses.fields(Config)
                 if dataclasses.is_dataclass(hints[f.name]))


def option_of(key: str) -> Option:
    """The :class:`Option` of a dotted key (KeyError if there is none)."""
    return {option.key: option for option in options()}[key]


def valid_keys() -> list[str]:
    """All dotted keys a config accepts, e.g. ``eigen.top_k``."""
    return [option.key for option in options()]


def may_change_keys() -> tuple[str, ...]:
    """The keys a resumed run may change: where and how fast it runs, not what it computes."""
    return tuple(option.key for option in options() if option.may_change)


def training_identity_keys() -> tuple[str, ...]:
    """The keys that decide ``train``'s weights (a resumed training must match them)."""
    return tuple(option.key for option in options() if option.identity and not option.may_change)


def command_flags(command: str) -> list[tuple[Option, Flag]]:
    """The flags of one flag set (``run`` or ``train``) with the option each sets, in declaration order."""
    return [(option, flag) for option in options() for flag in option.meta.flags if command in flag.commands]


def named_tasks(values: Mapping[str, Any], command: str) -> list[str]:
    """The tasks the command line names through task flags (``--top-k``, ``--trace``, …), in :data:`TASKS` order."""
    named = {flag.task for _, flag in command_flags(command) if flag.task and values.get(flag.dest) is not None}
    return [task for task in TASKS if task in named]


def flag_overrides(values: Mapping[str, Any], command: str) -> dict[str, Any]:
    """The dotted config keys the parsed flags ``values`` (argparse's ``vars(args)``) set; the
    task flags set ``tasks`` to exactly the tasks they name."""
    overrides: dict[str, Any] = {}
    tasks = named_tasks(values, command)
    if tasks:
        overrides["tasks"] = tasks
    for option, flag in command_flags(command):
        if option.key != "tasks" and values.get(flag.dest) is not None:
            overrides[option.key] = values[flag.dest]
    return overrides
