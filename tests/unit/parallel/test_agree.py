"""The two SPMD helpers with a fake communicator: ``agreed`` (a local step, one agreement after it)
and ``collective`` (a collective step: no collective added; only an agreed failure exits cleanly)."""

from __future__ import annotations

import pytest

from hpcspec.errors import InputError
from hpcspec.parallel.agree import (
    AgreedInputError,
    UnagreedInputError,
    agreed,
    collective,
)


class FakeComm:
    """Rank ``rank`` of ``size``; ``allgather_object`` returns what the other ranks "sent"
    (``others``, by rank) around this rank's own object, and counts the calls."""

    def __init__(self, rank: int = 0, size: int = 3, others: dict[int, object] | None = None) -> None:
        self.rank, self.size, self.others, self.gathers = rank, size, others or {}, 0

    def allgather_object(self, obj: object) -> list[object]:
        self.gathers += 1
        return [obj if r == self.rank else self.others.get(r) for r in range(self.size)]


def _fail(message: str = "bad input") -> None:
    raise InputError(message)


def test_agreed_returns_the_result_after_one_agreement():
    comm = FakeComm()
    assert agreed(comm, lambda x: x + 1, 1) == 2
    assert comm.gathers == 1


def test_agreed_raises_a_peers_failure_on_a_rank_that_succeeded():
    comm = FakeComm(rank=0, others={2: "data missing"})
    with pytest.raises(AgreedInputError, match=r"^data missing \(on rank 2\)$"):
        agreed(comm, lambda: None)


def test_agreed_failure_everywhere_is_untagged_and_keeps_the_cause():
    comm = FakeComm(rank=1, others={0: "bad input", 2: "bad input"})
    with pytest.raises(AgreedInputError, match=r"^bad input$") as info:
        agreed(comm, _fail)
    assert isinstance(info.value.__cause__, InputError)


def test_agreed_lets_other_exceptions_through_without_agreeing():
    comm = FakeComm()
    with pytest.raises(ZeroDivisionError):
        agreed(comm, lambda: 1 / 0)
    assert comm.gathers == 0  # a crash aborts the world instead


def test_collective_adds_no_collective():
    comm = FakeComm()
    assert collective(comm, lambda: "done") == "done"
    with pytest.raises(AgreedInputError):
        collective(comm, lambda: (_ for _ in ()).throw(AgreedInputError("verdict")))
    assert comm.gathers == 0


def test_collective_passes_an_agreed_failure_through_unchanged():
    error = AgreedInputError("operator check failed")

    def step() -> None:
        raise error

    with pytest.raises(AgreedInputError) as info:
        collective(FakeComm(), step)
    assert info.value is error


def test_collective_turns_a_plain_failure_on_several_ranks_into_an_unagreed_one():
    comm = FakeComm(size=2)
    with pytest.raises(UnagreedInputError, match="^bad input$") as info:
        collective(comm, _fail)
    assert not isinstance(info.value, AgreedInputError)  # the entry point aborts the world on it
    assert comm.gathers == 0


def test_collective_on_one_rank_agrees_trivially():
    with pytest.raises(AgreedInputError, match="^bad input$"):
        collective(FakeComm(size=1), _fail)


def test_an_agreed_step_inside_a_collective_one_exits_cleanly():
    comm = FakeComm(rank=0, size=2, others={1: "shard empty"})
    with pytest.raises(AgreedInputError, match=r"shard empty \(on rank 1\)"):
        collective(comm, lambda: agreed(comm, lambda: None))
