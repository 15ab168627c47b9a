"""SPMD agreement: how a failure on some ranks becomes the same error on every rank, so no rank is
left waiting in a collective the others never reach (the torch DCP ``_DistWrapper`` pattern).

Every set-up step a command runs on all ranks is one of two kinds, and goes through the helper
of its kind:

- :func:`agreed` — a **local step** (no collective inside: reading a file, building a model,
  checking a value). It may fail on any subset of ranks, so one agreement collective follows it
  on every rank, failed or not: an :class:`InputError` anywhere is raised everywhere as
  :class:`AgreedInputError`.
- :func:`collective` — a **collective step** (collectives inside: loading a checkpoint, checking
  the operator). No agreement collective may follow a failure here: a rank that failed half-way
  cannot know whether its peers are past the same point or waiting in the step's next collective,
  and an agreement it entered could be matched against that other collective. So a collective
  step must fail *symmetrically*: every failure it raises is decided on values all ranks share (a
  broadcast verdict, a reduced number) or by an :func:`agreed` step inside it, and raised as
  :class:`AgreedInputError` on every rank at the same point. The helper passes that through
  unchanged. A plain :class:`InputError` escaping a collective step on several ranks is a broken
  contract: it is re-raised as :class:`UnagreedInputError`, which the entry point answers by
  aborting the world (``MPI_Abort``, exit 2) instead of letting the peers hang. On one rank every
  failure is trivially agreed.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

from ..errors import InputError
from .comm import Communicator

T = TypeVar("T")


class AgreedInputError(InputError):
    """An :class:`InputError` every rank raised together: safe to exit without aborting."""


class UnagreedInputError(InputError):
    """An :class:`InputError` a collective step raised without knowing that every rank raised it:
    the peers may wait in a collective this rank will never reach, so the world must be aborted."""


def agree_on_failure(comm: Communicator, error: BaseException | None) -> None:
    """Collectively agree whether any rank hit an :class:`InputError`; if so raise it everywhere.

    Every rank calls this at the same point, failed or not, so no rank is left waiting in a
    collective (the torch DCP ``_DistWrapper`` pattern). The raised message is the lowest failing
    rank's, tagged with that rank unless every rank failed alike.
    """
    message = None if error is None else str(error)
    messages: Sequence[str | None] = comm.allgather_object(message)
    failed = [rank for rank, text in enumerate(messages) if text is not None]
    if failed:
        everywhere = len(failed) == comm.size
        suffix = "" if everywhere else f" (on rank {failed[0]})"
        # this rank's own error stays chained (``--debug`` prints its traceback, user frames included)
        raise AgreedInputError(f"{messages[failed[0]]}{suffix}") from error


def agreed(comm: Communicator, step: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a local step (no collectives inside) on every rank; an :class:`InputError` on any
    rank is raised on all of them as :class:`AgreedInputError` (one agreement collective)."""
    result, error = None, None
    try:
        result = step(*args, **kwargs)
    except InputError as exc:
        error = exc
    agree_on_failure(comm, error)
    return result  # type: ignore[return-value]


def collective(comm: Communicator, step: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a collective step (collectives inside) on every rank; it must fail symmetrically.

    No collective is added. An :class:`AgreedInputError` (every rank raised it together) passes
    through; a plain :class:`InputError` does too on one rank. On several ranks a plain one breaks
    the contract (see the module docstring) and becomes :class:`UnagreedInputError`, which the
    entry point answers by aborting every rank rather than leaving them to hang.
    """
    try:
        return step(*args, **kwargs)
    except AgreedInputError:
        raise
    except InputError as exc:
        if comm.size == 1:
            raise AgreedInputError(str(exc)) from exc
        raise UnagreedInputError(str(exc)) from exc

