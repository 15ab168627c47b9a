"""Checks of every collective of the Communicator protocol against numpy, for any communicator.

Shared by the in-process test on :class:`~hpcspec.parallel.comm.SingleProcess`
(tests/unit/parallel/test_comm_collectives.py) and the launch script that runs them under mpirun
with 1–3 ranks (tests/mpi/mpi_collectives.py). Every rank's contribution is a pure function of
(rank, case), so each rank computes the expected answer for the whole world with numpy and checks
its own result; the row collectives use uneven row bounds, including empty shards, in 1-D and 2-D.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from hpcspec.parallel.comm import Communicator

Bounds = list[tuple[int, int]]
#: Dtypes the reductions are checked in (int64: the exact "ordered" reduction's fixed-point sums).
REDUCE_DTYPES = (torch.float64, torch.float32, torch.int64)
#: Trailing shapes of a row: 1-D tensors (P,) and 2-D blocks (P, k).
TAILS: tuple[tuple[int, ...], ...] = ((), (3,))


def bounds_cases(size: int) -> list[Bounds]:
    """Row bounds for ``size`` ranks: even, uneven, an empty first shard, an empty last shard, and
    (with more than one rank) every shard but one empty."""
    def from_counts(counts: Sequence[int]) -> Bounds:
        edges = np.concatenate([[0], np.cumsum(counts)]).astype(int).tolist()
        return list(zip(edges[:-1], edges[1:]))

    cases = [from_counts([3] * size), from_counts([2 * r + 1 for r in range(size)]),
             from_counts([0] + [4] * (size - 1)) if size > 1 else from_counts([0]),
             from_counts([5] * (size - 1) + [0]) if size > 1 else from_counts([5])]
    if size > 1:
        cases.append(from_counts([0] * (size - 1) + [6]))
    return cases


def contribution(rank: int, shape: tuple[int, ...], dtype: torch.dtype, case: int) -> torch.Tensor:
    """Rank ``rank``'s input tensor of a case: the same numbers on every rank that computes it."""
    gen = np.random.default_rng(1000 * case + rank)
    if dtype == torch.int64:
        return torch.from_numpy(gen.integers(-2**40, 2**40, size=shape, dtype=np.int64))
    return torch.from_numpy(gen.standard_normal(shape)).to(dtype)


def _close(found: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert found.dtype == expected.dtype, f"{what}: dtype {found.dtype}, expected {expected.dtype}"
    assert tuple(found.shape) == tuple(expected.shape), f"{what}: shape {tuple(found.shape)} != {tuple(expected.shape)}"
    if expected.dtype == torch.int64:
        assert torch.equal(found, expected), what
    else:
        tol = 1e-12 if expected.dtype == torch.float64 else 1e-5
        assert torch.allclose(found, expected, rtol=tol, atol=tol), what


def _same_on_every_rank(comm: Communicator, tensor: torch.Tensor, what: str) -> None:
    """Every rank's result has the same bits (the collectives must not differ between ranks)."""
    mine = tensor.contiguous().numpy().tobytes()
    assert all(other == mine for other in comm.allgather_object(mine)), f"{what}: ranks disagree"


def check_allreduce(comm: Communicator) -> None:
    for case, (dtype, tail) in enumerate((d, t) for d in REDUCE_DTYPES for t in TAILS):
        shape = (7, *tail)
        tensor = contribution(comm.rank, shape, dtype, case)
        expected = sum(contribution(r, shape, dtype, case) for r in range(comm.size))
        result = comm.allreduce_sum_(tensor)
        assert result is tensor, "allreduce_sum_ must reduce in place and return its argument"
        _close(result, expected, f"allreduce_sum_ {dtype} {shape}")
        _same_on_every_rank(comm, result, f"allreduce_sum_ {dtype} {shape}")


def check_reduce_scatter(comm: Communicator) -> None:
    for number, bounds in enumerate(bounds_cases(comm.size)):
        total = bounds[-1][1]
        lo, hi = bounds[comm.rank]
        for dtype in REDUCE_DTYPES:
            for tail in TAILS:
                case = 100 + 10 * number + len(tail)
                shape = (total, *tail)
                tensor = contribution(comm.rank, shape, dtype, case)
                original = tensor.clone()
                expected = sum(contribution(r, shape, dtype, case) for r in range(comm.size))[lo:hi]
                _close(comm.reduce_scatter_rows(tensor, bounds), expected,
                       f"reduce_scatter_rows {dtype} {shape} bounds {bounds}")
                if comm.size > 1:  # one rank may hand back its input; more must leave it alone
                    assert torch.equal(tensor, original), "reduce_scatter_rows changed its input"


def _rows(rank: int, bounds: Bounds, tail: tuple[int, ...], dtype: torch.dtype, case: int) -> torch.Tensor:
    lo, hi = bounds[rank]
    return contribution(rank, (hi - lo, *tail), dtype, case)


def check_gathers(comm: Communicator) -> None:
    """``allgather_rows`` on every rank and ``gather_rows`` on the first and the last rank as root."""
    for number, bounds in enumerate(bounds_cases(comm.size)):
        for tail in TAILS:
            case = 200 + 10 * number + len(tail)
            rows = _rows(comm.rank, bounds, tail, torch.float64, case)
            expected = torch.cat([_rows(r, bounds, tail, torch.float64, case) for r in range(comm.size)])
            what = f"bounds {bounds}, tail {tail}"
            _close(comm.allgather_rows(rows.contiguous(), bounds), expected, f"allgather_rows {what}")
            for root in sorted({0, comm.size - 1}):
                found = comm.gather_rows(rows.contiguous(), bounds, root=root)
                if comm.rank == root:
                    assert found is not None, f"gather_rows gave root {root} nothing ({what})"
                    _close(found, expected, f"gather_rows to {root} {what}")
                else:
                    assert found is None, f"gather_rows gave rank {comm.rank} rows though root is {root}"


def check_float32_rows(comm: Communicator, *, refused: bool) -> None:
    """Row gathers of float32 rows: refused with ValueError (``refused``: the MPI backend moves
    float64 only), or passed through unchanged (a single process, torch.distributed)."""
    bounds = bounds_cases(comm.size)[1]
    rows = _rows(comm.rank, bounds, (2,), torch.float32, 300)
    for name, gather in (("allgather_rows", lambda: comm.allgather_rows(rows, bounds)),
                         ("gather_rows", lambda: comm.gather_rows(rows, bounds, root=0))):
        if refused:
            try:
                gather()
            except ValueError:
                continue
            raise AssertionError(f"{name} accepted float32 rows")
        expected = torch.cat([_rows(r, bounds, (2,), torch.float32, 300) for r in range(comm.size)])
        found = gather()
        if found is not None or name == "allgather_rows" or comm.rank == 0:  # gather_rows: the root's only
            _close(found, expected, f"{name} float32")


def check_objects(comm: Communicator) -> None:
    """``bcast_object`` from the first and the last rank, ``allgather_object`` of uneven objects."""
    for root in sorted({0, comm.size - 1}):
        sent = {"root": root, "payload": list(range(root + 3)), "text": "é" * 5} if comm.rank == root else None
        assert comm.bcast_object(sent, root=root) == {"root": root, "payload": list(range(root + 3)), "text": "é" * 5}
    mine = None if comm.rank % 2 else {"rank": comm.rank, "bytes": b"x" * (10 * comm.rank + 1)}
    expected = [None if r % 2 else {"rank": r, "bytes": b"x" * (10 * r + 1)} for r in range(comm.size)]
    assert comm.allgather_object(mine) == expected
    array = np.arange(comm.rank + 1, dtype=np.float64)
    gathered = comm.allgather_object(array)
    assert [len(a) for a in gathered] == [r + 1 for r in range(comm.size)]


def check_world(comm: Communicator) -> None:
    """Ranks, sizes and description: a world every rank sees the same way."""
    assert isinstance(comm, Communicator)
    assert 0 <= comm.rank < comm.size and 0 <= comm.local_rank < comm.local_size <= comm.size
    assert comm.allgather_object(comm.rank) == list(range(comm.size))
    assert comm.allgather_object(comm.size) == [comm.size] * comm.size
    assert isinstance(comm.description, str) and comm.description


def check_messages(comm: Communicator) -> None:
    """Point-to-point tensors in every wire dtype (bfloat16 and float16 as their bits) from rank 0
    to rank 1 and back, exact; a single rank has no one to send to."""
    from hpcspec.parallel.comm.wire import WIRE_DTYPES

    if comm.size < 2:
        return
    for dtype in WIRE_DTYPES:
        values = torch.arange(-6, 6, dtype=torch.float64).reshape(3, 2, 2) / 3
        sent = values > 0 if dtype == torch.bool else values.to(dtype)
        if comm.rank == 0:
            comm.send_tensor(sent, 1)
            back = comm.recv_tensor(1)
            assert back.dtype == dtype and torch.equal(back, sent * 2 if dtype != torch.bool else ~sent), dtype
        elif comm.rank == 1:
            got = comm.recv_tensor(0)
            assert got.dtype == dtype and got.shape == sent.shape and torch.equal(got, sent), dtype
            comm.send_tensor(got * 2 if dtype != torch.bool else ~got, 0)


#: Every check, in the order all ranks run them (the same collectives in the same order).
CHECKS: dict[str, Callable[[Communicator], None]] = {
    "world": check_world, "allreduce_sum_": check_allreduce, "reduce_scatter_rows": check_reduce_scatter,
    "allgather_rows+gather_rows": check_gathers, "bcast_object+allgather_object": check_objects,
    "send_tensor+recv_tensor": check_messages,
}


def run_checks(comm: Communicator, *, float32_refused: bool) -> list[str]:
    """Run every check on ``comm``; return their names (an AssertionError names the one that failed)."""
    done = []
    for name, check in CHECKS.items():
        check(comm)
        done.append(name)
    check_float32_rows(comm, refused=float32_refused)
    done.append("float32 rows")
    return done
