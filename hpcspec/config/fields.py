"""How a config key describes itself: the metadata every option carries, from which the command-line
flags, the value checks, the resume whitelist, the training identity and the generated docs are
derived (:mod:`hpcspec.config.options`).

An option is a dataclass field made by :func:`option` (a section by :func:`section`); its
:class:`Meta` says what the key may hold (choices, bounds), its help text, which flags set it on
which commands, and whether it may change when a run resumes or decides a training run's identity.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: The flag sets of the command line: ``run`` (shared by run, validate and track) and ``train``.
RUN, TRAIN = "run", "train"
COMMANDS = (RUN, TRAIN)
#: The argparse group of the flags that name tasks.
TASKS_GROUP = "tasks (any combination; with none named, the config's tasks, default top-k)"
#: ``example`` value of an option shown in jobs/example.toml at its default.
SHOW = "<default>"
_KEY = "hpcspec"


@dataclass(frozen=True)
class Flag:
    """A command-line flag that sets an option.

    ``task``: naming the flag on the command line also runs that task (the tasks named are then
    exactly the ones run). A flag on a boolean or on ``tasks`` takes no value (present: true).
    """

    name: str
    commands: tuple[str, ...] = (RUN,)
    help: str | None = None
    task: str | None = None

    @property
    def dest(self) -> str:
        """The argparse attribute the flag's value lands in (``--top-k`` → ``top_k``)."""
        return self.name.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Meta:
    """What one option (or a section, for its keys) declares about itself."""

    help: str
    choices: tuple[str, ...] = ()
    #: (lowest, lowest allowed?) and (highest, highest allowed?); None: unbounded on that side.
    low: tuple[float, bool] | None = None
    high: tuple[float, bool] | None = None
    #: The error of a value out of bounds, formatted with ``key`` and ``value`` (None: a generic one).
    message: str | None = None
    flags: tuple[Flag, ...] = ()
    #: None: as the enclosing section says (False at the top).
    may_change: bool | None = None
    identity: bool | None = None
    example: Any = None

    def bounds_text(self) -> str:
        """The bounds as a user reads them (``> 0``, ``in [0, 1)``), or ""."""
        if self.low is not None and self.high is not None:
            return (f"in {'[' if self.low[1] else '('}{_number(self.low[0])}, "
                    f"{_number(self.high[0])}{']' if self.high[1] else ')'}")
        if self.low is not None:
            return f"{'>=' if self.low[1] else '>'} {_number(self.low[0])}"
        if self.high is not None:
            return f"{'<=' if self.high[1] else '<'} {_number(self.high[0])}"
        return ""

    def in_bounds(self, value: float) -> bool:
        """Whether ``value`` lies within the bounds (NaN never does)."""
        if self.low is not None and not (value >= self.low[0] if self.low[1] else value > self.low[0]):
            return False
        if self.high is not None and not (value <= self.high[0] if self.high[1] else value < self.high[0]):
            return False
        return True


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def option(default: Any, help: str, *, choices: tuple[str, ...] = (), low: tuple[float, bool] | None = None,
           high: tuple[float, bool] | None = None, message: str | None = None, flags: tuple[Flag, ...] = (),
           may_change: bool | None = None, identity: bool | None = None, example: Any = None) -> Any:
    """A config field with its :class:`Meta` (``example``: its value in jobs/example.toml, :data:`SHOW`
    for its default; None leaves it commented out there)."""
    meta = Meta(help, choices, low, high, message, flags, may_change, identity, example)
    return field(default=default, metadata={_KEY: meta})


def positive(default: Any, help: str, **kwargs: Any) -> Any:
    """An option that must be > 0."""
    return option(default, help, low=(0, False), **kwargs)


def non_negative(default: Any, help: str, **kwargs: Any) -> Any:
    """An option that must be >= 0."""
    return option(default, help, low=(0, True), **kwargs)


def section(cls: type, help: str, *, may_change: bool = False, identity: bool = False) -> Any:
    """A ``[section]`` of the config; its keys inherit ``may_change`` and ``identity``."""
    return field(default_factory=cls, metadata={_KEY: Meta(help, may_change=may_change, identity=identity)})


def meta_of(f: dataclasses.Field) -> Meta:
    """The :class:`Meta` of a field made by :func:`option` or :func:`section`."""
    try:
        return f.metadata[_KEY]
    except KeyError:
        raise TypeError(f"config field {f.name!r} was not declared with option() or section()") from None
