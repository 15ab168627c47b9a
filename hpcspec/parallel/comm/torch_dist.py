"""The ``torch.distributed`` backend (gloo on CPU tensors, NCCL when every rank has a GPU).

Named ``torch_dist`` so that it cannot shadow the ``torch`` package.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch

from ...errors import InputError
from .launch import launcher_local_rank_and_size, launcher_rank_and_size
from .wire import HEADER, header_of, payload, receive_buffer, restored


class TorchDistributedCommunicator:
    """``torch.distributed``: gloo on CPU tensors, NCCL when every rank has a GPU.

    Launched by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``,
    ``LOCAL_RANK``), or by ``mpirun`` with ``MASTER_ADDR``/``MASTER_PORT`` exported: the rank and
    world size are then read from the MPI launcher's variables. Reductions run on the tensor's own
    device with NCCL (GPU-resident, no host staging) and on the host with gloo.
    """

    def __init__(self, group: Any = None, ranks: Sequence[int] | None = None) -> None:
        import torch.distributed as dist

        self._dist = dist
        #: The process group (None: the world) and its members' global ranks, in group-rank order.
        self._group = group
        if group is not None:
            self._ranks = list(ranks or ())
            self.rank, self.size = self._ranks.index(dist.get_rank()), len(self._ranks)
            # torch numbers a group's members in global-rank order (new_group sorts them), this
            # communicator in split-key order: where member i's piece is in a gather over the group
            self._order = [sorted(self._ranks).index(g) for g in self._ranks]
            self.local_rank, self.local_size = launcher_local_rank_and_size(dist.get_rank(), dist.get_world_size())
            self._nccl = dist.get_backend() == "nccl"
            return
        if not dist.is_initialized():
            rank, size = launcher_rank_and_size()
            backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
            try:
                dist.init_process_group(backend=backend, rank=rank, world_size=size)
            except (ValueError, RuntimeError) as exc:  # e.g. MASTER_ADDR unset, port taken, peer gone
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise InputError(f"torch.distributed ({backend}) could not start: {first}") from None
        self.rank: int = dist.get_rank()
        self.size: int = dist.get_world_size()
        self._ranks = list(range(self.size))
        self._order = list(range(self.size))
        self.local_rank, self.local_size = launcher_local_rank_and_size(self.rank, self.size)
        self._nccl = dist.get_backend() == "nccl"

    def allreduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return tensor
        wire = self._on_wire(tensor)
        self._dist.all_reduce(wire, op=self._dist.ReduceOp.SUM, group=self._group)
        return tensor if wire is tensor else tensor.copy_(wire)

    def _on_wire(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor itself when the backend can move it where it is, else a copy where it can:
        NCCL moves only GPU tensors, gloo host ones."""
        if self._nccl and tensor.device.type != "cuda":
            return tensor.to(torch.device("cuda", torch.cuda.current_device()))
        if not self._nccl and tensor.device.type != "cpu":
            return tensor.cpu()
        return tensor

    def reduce_scatter_rows(self, tensor: torch.Tensor, bounds: Sequence[tuple[int, int]]) -> torch.Tensor:
        # gloo has no uneven reduce-scatter: reduce everything, keep this rank's rows, in row-major
        # strides as MPI's are (a (P, 1) tensor may carry column strides that a BLAS product reads
        # as transposed, adding in another order: the bits would depend on the backend)
        lo, hi = bounds[self.rank]
        return self.allreduce_sum_(tensor.clone())[lo:hi].clone(memory_format=torch.contiguous_format)

    def allgather_rows(self, rows: torch.Tensor, bounds: Sequence[tuple[int, int]]) -> torch.Tensor:
        widest = max(hi - lo for lo, hi in bounds)
        padded = self._on_wire(torch.zeros((widest, *rows.shape[1:]), dtype=rows.dtype))
        padded[: len(rows)] = rows
        pieces = [torch.empty_like(padded) for _ in bounds]
        self._dist.all_gather(pieces, padded, group=self._group)
        return torch.cat([pieces[self._order[i]][: hi - lo] for i, (lo, hi) in enumerate(bounds)]).to(rows.device)

    def gather_rows(self, rows: torch.Tensor, bounds: Sequence[tuple[int, int]], root: int = 0) -> torch.Tensor | None:
        full = self.allgather_rows(rows, bounds)
        return full if self.rank == root else None

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        box = [obj]
        self._dist.broadcast_object_list(box, src=self._ranks[root], group=self._group)
        return box[0]

    def allgather_object(self, obj: Any) -> list[Any]:
        found: list[Any] = [None] * self.size
        self._dist.all_gather_object(found, obj, group=self._group)
        return [found[position] for position in self._order]

    def split(self, color: int, key: int) -> "TorchDistributedCommunicator":
        # new_group is collective over the world: every rank creates every group, in one order
        members = self.allgather_object((color, key, self._dist.get_rank()))
        mine = None
        for group_color in sorted({c for c, _, _ in members}):
            ranks = [g for k, g in sorted((k, g) for c, k, g in members if c == group_color)]
            group = self._dist.new_group(ranks)
            if group_color == color:
                mine = (group, ranks)
        return TorchDistributedCommunicator(*mine)  # type: ignore[misc]  # this rank's color is in members

    def send_tensor(self, tensor: torch.Tensor, dest: int) -> None:
        header = self._on_wire(torch.tensor(header_of(tensor), dtype=torch.int64))
        wire = self._on_wire(payload(tensor))
        self._dist.send(header, dst=self._ranks[dest])
        self._dist.send(wire, dst=self._ranks[dest])

    def recv_tensor(self, source: int) -> torch.Tensor:
        header = self._on_wire(torch.empty(HEADER, dtype=torch.int64))
        self._dist.recv(header, src=self._ranks[source])
        buffer, dtype = receive_buffer(header.cpu().tolist())
        out = self._on_wire(buffer)
        self._dist.recv(out, src=self._ranks[source])
        return restored(out.cpu(), dtype)

    def close(self) -> None:
        """Leave the process group together (every rank, at a normal exit): a gloo group torn
        down by interpreter shutdown while a peer still works can kill the process (SIGABRT)."""
        self._dist.barrier()
        self._dist.destroy_process_group()

    def abort(self, code: int = 1) -> None:
        # torch.distributed has no abort: exiting breaks every peer's pending collective, and a
        # torchrun launcher then stops the other workers.
        os._exit(code)

    @property
    def description(self) -> str:
        return f"torch.distributed {self._dist.get_backend()} (torch {torch.__version__})"
