"""SPMD agreement: how a failure on some ranks becomes the same error on every rank, so no rank is
left waiting in a collective the others never reach (the torch DCP ``_DistWrapper`` pattern)."""

from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

from ..errors import InputError
from .comm import Communicator

T = TypeVar("T")


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


class AgreedInputError(InputError):
    """An :class:`InputError` every rank raised together: safe to exit without aborting."""


def agreed(comm: Communicator, step: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a local step (no collectives inside) on every rank; an :class:`InputError` on any
    rank is raised on all of them as :class:`AgreedInputError`."""
    result, error = None, None
    try:
        result = step(*args, **kwargs)
    except InputError as exc:
        error = exc
    agree_on_failure(comm, error)
    return result  # type: ignore[return-value]
