"""What keeping a first-order graph costs: the bytes autograd saves for backward.

:class:`~hpcspec.curvature.operator.HessianOperator` keeps the shard's first-order graphs between
products when they fit its ``graph_budget_mb`` (each product then costs only the second
backward); :class:`SavedBytes` measures them.
"""

from __future__ import annotations

from typing import Sequence

import torch


class SavedBytes:
    """Within ``with``: the bytes of the tensors autograd saves for backward, each counted once
    (with the gradients themselves, :meth:`add_gradients`: what keeping a graph costs)."""

    def __init__(self) -> None:
        self.total = 0
        self._seen: set[tuple[int, int, torch.dtype]] = set()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        tag = (tensor.data_ptr(), tensor.numel(), tensor.dtype)
        if tag not in self._seen:
            self._seen.add(tag)
            self.total += tensor.numel() * tensor.element_size()
        return tensor

    def add_gradients(self, grads: Sequence[torch.Tensor | None]) -> None:
        self.total += sum(g.numel() * g.element_size() for g in grads if g is not None)

    def __enter__(self) -> "SavedBytes":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)
