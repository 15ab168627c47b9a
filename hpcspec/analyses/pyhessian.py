"""``hpcspec.hessian``: PyHessian's calls, answered by hpcspec's exact solvers.

PyHessian (Yao et al. 2020, github.com/amirgholami/PyHessian) is driven as::

    h = hessian(model, criterion, dataloader=loader)        # or data=(inputs, targets)
    eigenvalues, eigenvectors = h.eigenvalues(top_n=5)      # power iteration with deflation
    values = h.trace()                                      # Hutchinson terms vᵀHv
    eigen_list_full, weight_list_full = h.density()        # SLQ nodes and weights

:func:`hessian` takes the same arguments and returns the same shapes (lists of floats; eigenvectors
as lists of per-parameter tensors), but computes them with :class:`~hpcspec.curvature.operator.HessianOperator`
and hpcspec's solvers: block Lanczos converged on the Ritz residual for the eigenvalues (not a
relative-change rule), Hutchinson's seeded Rademacher probes for the trace, stochastic Lanczos
quadrature for the density — and runs unchanged under ``mpirun`` (the section "Under MPI" of
:func:`hessian`). What PyHessian leaves in eval mode for good, the operator restores after every
product (:meth:`HessianOperator.modes`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..choices import WHICH, default_tol
from ..curvature.operator import HessianOperator
from ..errors import InputError
from ..parallel.comm import Communicator, world
from ..problem.batches import is_one_pass
from ..problem.data import shard_range
from ..solvers import DensityResult, LanczosResult, TraceResult, block_lanczos, slq
from ..solvers.block_lanczos import DEFAULT_BLOCK_SIZE
from ..solvers.trace.base import make_result
from ..solvers.trace.hutchinson import residual_samples

log = logging.getLogger(__name__)

#: The default world, made on first use (never at import) and reused: a training script that
#: calls :func:`hessian` every N steps must not duplicate the world communicator each time.
_WORLD: list[Communicator] = []
#: The keyword arguments of :class:`HessianOperator` that :func:`hessian` passes on.
OPERATOR_OPTIONS = frozenset(name for name, parameter in inspect.signature(HessianOperator).parameters.items()
                             if parameter.kind is inspect.Parameter.KEYWORD_ONLY)


def default_comm() -> Communicator:
    """:func:`hpcspec.world` (``auto``: MPI under mpirun, a single process in a notebook), made once."""
    if not _WORLD:
        _WORLD.append(world())
    return _WORLD[0]


class RankBatches:
    """The batches ``i`` with ``i % R == rank`` of a loader that every rank iterates whole.

    Every rank reads every batch (the loading is repeated R times) but computes only on its own,
    so the R shares are disjoint and cover the loader exactly once whatever the batch sizes; the
    operator divides the sum of their losses by the count of all of them, so the Hessian is that
    of the whole loader on any rank count. :attr:`batches` counts the last full pass, which lets
    the ranks check that they were handed the same loader.
    """

    def __init__(self, loader: Iterable, rank: int, size: int) -> None:
        self.loader, self.rank, self.size = loader, rank, size
        self.batch_size = getattr(loader, "batch_size", None)
        #: Batches (all ranks' together) of the last complete pass; None before one.
        self.batches: int | None = None

    def __iter__(self) -> Iterator[Any]:
        count = 0
        for index, batch in enumerate(self.loader):
            count += 1
            if index % self.size == self.rank:
                yield batch
        self.batches = count


def _check_loader(loader: Any, comm: Communicator, sharded: bool) -> None:
    """Raise :class:`InputError` for a loader that is not a re-iterable of batches or whose sampler
    would not give every sample exactly once across the ranks."""
    if (not isinstance(loader, Iterable) or isinstance(loader, (torch.Tensor, str, bytes, Mapping))
            or (isinstance(loader, tuple) and len(loader) == 2 and all(isinstance(t, torch.Tensor) for t in loader))):
        raise InputError(f"dataloader must be a DataLoader or another re-iterable of (inputs, targets) batches, "
                         f"got {type(loader).__name__}{' (pass a pair of tensors as data=)' if isinstance(loader, tuple) else ''}")
    if is_one_pass(loader):
        raise InputError(f"dataloader is a one-pass iterator ({type(loader).__name__}): every product is a pass "
                         "over the data, so pass something that can be iterated again (a DataLoader, a list)")
    from torch.utils.data import DistributedSampler, RandomSampler

    sampler = getattr(loader, "sampler", None)
    if comm.size > 1 and not sharded and isinstance(sampler, DistributedSampler):
        raise InputError("dataloader has a DistributedSampler, so each rank holds its own part: pass sharded=True "
                         "(or pass the whole loader without the sampler)")
    if comm.size > 1 and not sharded and isinstance(sampler, RandomSampler):
        raise InputError("dataloader shuffles (shuffle=True), so each rank would see its own order and batch "
                         "i % R would not split the data: use shuffle=False (the Hessian does not depend on the "
                         "order), or shard it yourself and pass sharded=True")
    if sharded and isinstance(sampler, DistributedSampler):
        total, replicas = len(sampler.dataset), sampler.num_replicas  # type: ignore[arg-type]
        if total % replicas:
            raise InputError(f"the DistributedSampler splits {total} samples over {replicas} ranks and "
                             f"{'drops' if sampler.drop_last else 'repeats'} {total % replicas if sampler.drop_last else replicas - total % replicas} "
                             "to make the parts equal, so the mean loss would not be that of the data set: pass the "
                             "whole loader on every rank without the sampler (sharded=False)")


def _check_pair(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``data`` as an ``(inputs, targets)`` pair of tensors of one length, or :class:`InputError`."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)):
        raise InputError(f"data must be an (inputs, targets) pair of tensors, got {type(data).__name__}"
                         f"{f' of {len(data)} items' if isinstance(data, (tuple, list)) else ''} "
                         "(other batches, e.g. dicts: dataloader=[batch, …])")
    inputs, targets = data
    if len(inputs) != len(targets):
        raise InputError(f"data: inputs hold {len(inputs)} samples but targets {len(targets)}")
    return inputs, targets


class Hessian:
    """What :func:`hessian` returns: PyHessian's three methods over one :class:`HessianOperator`.

    Attributes:
        operator: the :class:`~hpcspec.curvature.operator.HessianOperator` (for ``hpcspec.lanczos``,
            ``hpcspec.trace``, ``hpcspec.slq`` and their options).
        seed: seeds every start vector and probe; the same seed gives the same numbers on every
            rank count and every call (PyHessian draws fresh ones each call).
        eigen_result, trace_result, density_result: the hpcspec results behind the last call of
            each method (residuals and ``converged``; the trace's standard error; α, β): None before.
    """

    def __init__(self, operator: HessianOperator, seed: int = 0) -> None:
        self.operator, self.seed = operator, seed
        self.eigen_result: LanczosResult | None = None
        self.trace_result: TraceResult | None = None
        self.density_result: DensityResult | None = None

    @property
    def comm(self) -> Communicator:
        """The operator's ranks (``h.comm.rank == 0``: where to print)."""
        return self.operator.comm

    def eigenvalues(self, maxIter: int = 100, tol: float = 1e-3, top_n: int = 1, *,
                    which: str = "largest_magnitude",
                    block_size: int = DEFAULT_BLOCK_SIZE) -> tuple[list[float], list[list[torch.Tensor]]]:
        """The ``top_n`` eigenvalues of largest magnitude and their eigenvectors, as PyHessian returns them.

        Computed by :func:`~hpcspec.solvers.block_lanczos.block_lanczos` (``which`` as there;
        PyHessian's power iteration finds the largest magnitudes, hence the default).

        Args:
            maxIter: PyHessian's cap of products per eigenvalue: the solver may spend
                ``maxIter · top_n`` products in all (PyHessian's worst case); if they run out
                first, the partial pairs are returned and a warning is logged.
            tol: PyHessian stops when an eigenvalue changes by less than ``tol`` relative. hpcspec
                stops on the Ritz residual instead, which bounds the error (``|θ − λ| ≤ ‖r‖``, and
                about ``‖r‖²/gap``): every residual ≤ ``min(tol, dtype default) · max|θ|``, the
                dtype default being 1e-8 for float64 and 1e-5 for float32
                (:data:`~hpcspec.choices.DEFAULT_TOL`). So a looser ``tol`` than the default does
                not loosen it: Lanczos converges fast enough that this costs few products, and the
                eigenvalues come out exact to rounding instead of to ~``tol``.
            top_n: how many eigenpairs.
            which: ``largest_magnitude`` (default), ``largest``, ``smallest`` or ``both_ends``.
            block_size: vectors per data pass (repeated eigenvalues up to this multiplicity are found).

        Returns:
            ``(eigenvalues, eigenvectors)``: ``top_n`` floats, in descending magnitude for the
            default ``which``; for each, a list of tensors shaped like the parameters that
            require gradients (on their device, in their dtype), unit norm over all of them, its
            sign fixed so that its largest entry is positive. Every rank gets the whole vectors.
        """
        op = self.operator
        _check_count("top_n", top_n, op.size)
        _check_count("maxIter", maxIter)
        _check_tol(tol)
        _check_count("block_size", block_size)
        if which not in WHICH:
            raise InputError(f"which must be one of {', '.join(WHICH)}, got {which!r}")
        strict = min(float(tol), default_tol(op.compute_dtype))
        result = block_lanczos(op, top_n, which=which, tol=strict, block_size=min(block_size, top_n),
                               maxiter=maxIter * top_n, seed=self.seed)
        self.eigen_result = result
        if not result.converged and self.comm.rank == 0:
            log.warning("eigenvalues: %d products (maxIter × top_n) ran out before every residual reached %.1e "
                        "of the largest (worst %.1e): raise maxIter", result.num_matvecs, strict,
                        float(np.max(result.residuals) / max(np.max(np.abs(result.eigenvalues)), 1e-300)))
        vectors = op.space.gather(result.eigenvectors) if result.rows is not None else result.eigenvectors
        values = [float(v) for v in result.eigenvalues]
        return values, [self._per_parameter(vectors[:, j]) for j in range(vectors.shape[1])]

    def _per_parameter(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """A flat float64 vector as tensors shaped like the parameters, on their device and dtype."""
        return [part.to(param.device, param.dtype).clone()
                for part, param in zip(self.operator.layout.split(flat), self.operator.parameters)]

    def trace(self, maxIter: int = 100, tol: float = 1e-3) -> list[float]:
        """PyHessian's Hutchinson trace: the terms ``vᵢᵀ H vᵢ``; their mean estimates ``tr(H)``.

        Probe i is hpcspec's i-th Rademacher trace probe for :attr:`seed` (the same on every rank
        count), one data pass each. As in PyHessian, it stops after probe i ≥ 2 when the running
        mean ``mᵢ`` changes by less than ``tol`` relative (``|mᵢ − mᵢ₋₁| < tol·|mᵢ₋₁|``), or
        after ``maxIter`` probes. That rule says little about the error: ``trace_result`` holds
        the same terms as a :class:`~hpcspec.solvers.trace.TraceResult` with their standard
        error, and ``hpcspec.trace(h.operator, method="krylov", matvecs=100, rtol=0.01)`` gives a
        far lower-variance estimate (Hutch++-style deflation) that stops on its standard error.
        The terms are those of ``hpcspec.trace(h.operator, method="hutchinson", matvecs=n).samples``.

        Returns:
            A list of floats (identical on every rank: rank 0's, broadcast).
        """
        op = self.operator
        _check_count("maxIter", maxIter)
        _check_tol(tol)
        values: list[float] = []
        for index in range(maxIter):
            term = residual_samples(op, None, seed=self.seed, distribution="rademacher",
                                    probes=range(index, index + 1), block_size=0)
            values.append(float(self.comm.bcast_object(float(term[0]))))
            if index >= 1:
                previous, current = float(np.mean(values[:-1])), float(np.mean(values))
                if abs(current - previous) < tol * abs(previous):
                    break
        self.trace_result = make_result("hutchinson", 0.0, values, len(values), True)
        return values

    def density(self, iter: int = 100, n_v: int = 1) -> tuple[list[list[float]], list[list[float]]]:
        """PyHessian's spectral density: ``n_v`` Gauss quadratures of ``iter`` nodes (SLQ).

        :func:`~hpcspec.solvers.density.slq` with ``probes = n_v`` Rademacher start vectors
        (seeded by :attr:`seed`) and ``steps = iter`` Lanczos steps with full reorthogonalisation.

        Returns:
            ``(eigen_list_full, weight_list_full)``: for each probe, its Ritz values (ascending)
            and their weights (summing to 1) as floats — ``iter`` of them, fewer when the probe's
            Krylov space is exhausted first (always when ``iter`` exceeds the parameter count).
            The density estimate is the average of the ``n_v`` weighted measures.
        """
        _check_count("iter", iter)
        _check_count("n_v", n_v)
        result = slq(self.operator, probes=n_v, steps=iter, seed=self.seed)
        self.density_result = result
        nodes = [[float(v) for v in row[:steps]] for row, steps in zip(result.nodes, result.steps)]
        weights = [[float(w) for w in row[:steps]] for row, steps in zip(result.weights, result.steps)]
        return nodes, weights


def _check_count(name: str, value: Any, most: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1 or (most and value > most):
        bound = f" and at most the parameter count {most}" if most else ""
        raise InputError(f"{name} must be an integer ≥ 1{bound}, got {value!r}")


def _check_tol(tol: Any) -> None:
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
        raise InputError(f"tol must be a number > 0, got {tol!r}")


def hessian(model: nn.Module, criterion: Callable | str, data: Any = None, dataloader: Any = None,
            cuda: bool | None = None, *, comm: Communicator | None = None, sharded: bool = False, seed: int = 0,
            **operator_options: Any) -> Hessian:
    """PyHessian's ``hessian(model, criterion, data=… | dataloader=…, cuda=…)``, exact and MPI-ready.

    Args:
        model: the network; its parameters that require gradients span the Hessian, their dtype is
            the compute dtype and their device the compute device. Inside each product it is in
            eval mode; its modes and ``requires_grad`` flags are restored after each.
        criterion: ``criterion(output, target)`` with reduction ``"mean"`` (as in PyHessian) or
            ``"sum"``, e.g. ``nn.CrossEntropyLoss(label_smoothing=0.1)``, or a named loss.
        data: one ``(inputs, targets)`` pair of tensors: the whole data set (evaluated in pieces of
            ``batch_size`` samples, memory only).
        dataloader: a DataLoader or any re-iterable of ``(inputs, targets)`` or dict batches;
            the Hessian is that of the mean loss over all its samples, whatever the batch sizes
            (PyHessian's weighting of batch means by batch size).
        cuda: accepted for PyHessian's signature and ignored: nothing is moved; each batch goes to
            the model's device (put the model on the GPU to compute there).
        comm: the ranks; default :func:`hpcspec.world` (made once and reused): MPI under
            ``mpirun``, a single process in a notebook.
        sharded: False (default): every rank passed the whole data (PyHessian style) and it is
            split inside. True: each rank passed only its own part (e.g. a DataLoader with a
            ``DistributedSampler``); the parts must be disjoint and cover the data set once.
        seed: seeds every start vector and probe (the same numbers on every rank count).
        **operator_options: passed to :class:`HessianOperator` (``batch_size``, ``method``,
            ``bn_mode``, ``graph_budget_mb``, ``shard_vectors``, ``reduction``, ``output_fn``,
            ``target_key``).

    Under MPI, with ``sharded=False``: tensor ``data`` is cut into the contiguous shards of
    :func:`~hpcspec.problem.data.shard_range`; a loader's batch ``i`` goes to rank ``i % R``
    (:class:`RankBatches`: every rank iterates the whole loader, so it must give the same
    batches in the same order on every rank — a shuffling loader is refused, a DistributedSampler
    asks for ``sharded=True``). Either way every sample is counted once, the operator divides
    by the global count, and the numbers agree with one rank's to rounding. The ranks check
    that they hold data of the same size. Collective: every rank calls it, with the same arguments.

    Raises:
        InputError: both or neither of ``data`` and ``dataloader``, or an argument of the wrong type.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not (callable(criterion) or isinstance(criterion, str)):
        raise InputError(f"criterion must be a callable criterion(output, target) or a loss name, "
                         f"got {type(criterion).__name__}")
    if (data is None) == (dataloader is None):
        raise InputError("pass exactly one of data=(inputs, targets) and dataloader=loader"
                         f"{', not both' if data is not None else ''}")
    if cuda is not None and not isinstance(cuda, bool):
        raise InputError(f"cuda must be True, False or None (it moves nothing: the model's device is used), "
                         f"got {cuda!r}")
    if not isinstance(sharded, bool):
        raise InputError(f"sharded must be True or False, got {sharded!r}")
    unknown = sorted(set(operator_options) - OPERATOR_OPTIONS)
    if unknown:
        raise InputError(f"unknown option(s) {', '.join(unknown)}: hessian() passes only "
                         f"{', '.join(sorted(OPERATOR_OPTIONS))} to HessianOperator")
    comm = comm if comm is not None else default_comm()
    if data is not None:
        inputs, targets = _check_pair(data)
        totals = comm.allgather_object(len(targets))
        if not sharded:
            if len(set(totals)) > 1:
                raise InputError(f"data: the ranks hold {totals} samples; with sharded=False every rank passes the "
                                 "whole data set (pass sharded=True if each passes its own part)")
            lo, hi = shard_range(len(targets), comm.rank, comm.size)
            inputs, targets = inputs[lo:hi], targets[lo:hi]
        operator = HessianOperator(model, criterion, (inputs, targets), comm, **operator_options)
        return Hessian(operator, seed)
    _check_loader(dataloader, comm, sharded)
    if sharded:
        return Hessian(HessianOperator(model, criterion, dataloader, comm, **operator_options), seed)
    share = RankBatches(dataloader, comm.rank, comm.size)
    operator = HessianOperator(model, criterion, share, comm, **operator_options)  # its count pass fills share.batches
    counts = comm.allgather_object(share.batches)
    if len(set(counts)) > 1:
        raise InputError(f"dataloader: the ranks' loaders give {counts} batches; with sharded=False every rank "
                         "passes the same whole loader (pass sharded=True if each passes its own part)")
    return Hessian(operator, seed)
