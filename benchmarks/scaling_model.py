"""Strong and weak scaling of a Lanczos + SLQ job to R = 8 … 1,024 ranks, from measured parts.

What one Hessian-vector product costs on R ranks with sharded vectors (hpcspec's default,
:mod:`hpcspec.parallel.vectors`): every rank gathers the whole vector (``Allgatherv`` of P float64),
multiplies it on its N/R samples, and the partial products are reduce-scattered (P float64); the
Lanczos recurrence adds two small allreduces (the batched reorthogonalisation coefficients and a
norm) and reads its slice of the basis twice (full reorthogonalisation, on average m/2 vectors).

    t_product(R) = t_HVP · N/R  +  T_allgather(8P, R) + T_reduce_scatter(8P, R) + 2 T_allreduce(4m, R)
                   + 2 · 8P / B_staging  +  2 · (m/2) · 8P/R / B_memory

with t_HVP = ratio · 3 · F / rate per sample (a gradient costs three forward passes of FLOPs; the
HVP ÷ gradient ratio is measured) and the α-β model of a collective of b bytes over R ranks
(Thakur, Rabenseifner & Gropp 2005: recursive doubling for latency, ring-like bandwidth):

    T_allgather = T_reduce_scatter = α ⌈log₂R⌉ + β b (R-1)/R,    T_allreduce = 2 α ⌈log₂R⌉ + 2 β b (R-1)/R.

On this machine α, β of each collective are fitted to ``scaling_measure.py``'s mpi4py timings on
2–4 ranks, and the model's time per product is checked against the measured one on 1–3 ranks.
For the cluster, α, β and the FLOP rate are inputs (defaults: a typical InfiniBand HDR GPU
cluster, below). The job: ``--lanczos-steps`` (100) + ``--probes`` × ``--slq-steps`` (10 × 100)
products. Not modelled: the one-off graph build and data loading, checkpoints, stragglers, and
the activations a kept graph holds (memory beyond the Krylov vectors).

Run: ``PYTHONPATH=. python benchmarks/scaling_model.py [--measured benchmarks/results/scaling_measured.json]
[--plot docs/scaling.png] [--latency-us 2] [--link-gbps 24] [--tflops 10] [--staging-gbps 25] …``
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_MEASURED = Path(__file__).resolve().parent / "results" / "scaling_measured.json"
KINDS = ("allreduce", "reduce_scatter", "allgather")
RANKS = tuple(2 ** k for k in range(3, 11))  # 8 … 1,024


@dataclass(frozen=True)
class AlphaBeta:
    """One collective's latency α (s per ⌈log₂R⌉ stage) and inverse bandwidth β (s per byte)."""

    alpha: float
    beta: float


def collective_time(kind: str, nbytes: float, ranks: int, ab: AlphaBeta) -> float:
    """α-β time of one ``kind`` collective of an ``nbytes`` vector over ``ranks`` ranks (0 on one)."""
    if ranks <= 1:
        return 0.0
    stages, share = math.ceil(math.log2(ranks)), (ranks - 1) / ranks
    factor = 2.0 if kind == "allreduce" else 1.0
    return factor * (ab.alpha * stages + ab.beta * nbytes * share)


def fit_alpha_beta(rows: list[dict], kind: str) -> AlphaBeta:
    """Least squares in relative error (small messages count as much as large) of
    :func:`collective_time` to measured ``{collective, ranks, n, seconds}`` rows; α, β ≥ 0."""
    from scipy.optimize import nnls

    mine = [r for r in rows if r["collective"] == kind and r["ranks"] > 1]
    if not mine:
        raise SystemExit(f"no {kind} timings on 2 or more ranks to fit")
    unit_a, unit_b = AlphaBeta(1.0, 0.0), AlphaBeta(0.0, 1.0)
    design = np.array([[collective_time(kind, 8 * r["n"], r["ranks"], unit_a) / r["seconds"],
                        collective_time(kind, 8 * r["n"], r["ranks"], unit_b) / r["seconds"]] for r in mine])
    (alpha, beta), _ = nnls(design, np.ones(len(mine)))
    return AlphaBeta(float(alpha), float(beta))


@dataclass(frozen=True)
class Problem:
    """A model and data set: parameters P, samples N, forward FLOPs per sample F."""

    name: str
    params: float
    samples: float
    forward_flop: float


@dataclass(frozen=True)
class Machine:
    """Where the job runs: per-collective α-β, the effective FLOP rate of one rank's device, the
    host↔device staging bandwidth (0: none, CPU ranks) and the memory bandwidth over the basis."""

    collectives: dict[str, AlphaBeta]
    flop_rate: float
    staging_bps: float
    memory_bps: float


@dataclass(frozen=True)
class Job:
    """Lanczos steps, SLQ probes × steps, and the HVP ÷ gradient ratio of the model."""

    lanczos_steps: int = 100
    probes: int = 10
    slq_steps: int = 100
    hvp_ratio: float = 2.5

    @property
    def products(self) -> int:
        return self.lanczos_steps + self.probes * self.slq_steps

    @property
    def mean_basis(self) -> float:
        """Mean basis length a product's reorthogonalisation reads (m/2 over a run of m steps)."""
        steps = self.lanczos_steps * [self.lanczos_steps] + self.probes * self.slq_steps * [self.slq_steps]
        return sum(steps) / len(steps) / 2


def product_time(problem: Problem, machine: Machine, job: Job, ranks: int,
                 samples_per_rank: float | None = None) -> dict[str, float]:
    """Seconds of one product on ``ranks`` ranks, split into compute (HVP + local
    reorthogonalisation) and communication (collectives + staging)."""
    per_rank = problem.samples / ranks if samples_per_rank is None else samples_per_rank
    hvp = job.hvp_ratio * 3 * problem.forward_flop * per_rank / machine.flop_rate
    vector = 8 * problem.params
    reorth = 2 * job.mean_basis * vector / ranks / machine.memory_bps
    collectives = (collective_time("allgather", vector, ranks, machine.collectives["allgather"])
                   + collective_time("reduce_scatter", vector, ranks, machine.collectives["reduce_scatter"])
                   + 2 * collective_time("allreduce", 8 * job.mean_basis, ranks, machine.collectives["allreduce"]))
    staging = 2 * vector / machine.staging_bps if machine.staging_bps > 0 and ranks > 1 else 0.0
    compute, comm = hvp + reorth, collectives + staging
    return {"compute": compute, "comm": comm, "total": compute + comm, "samples_per_rank": per_rank}


def scaling_table(problem: Problem, machine: Machine, job: Job, ranks: tuple[int, ...] = RANKS,
                  weak: bool = False) -> list[dict[str, float]]:
    """One row per R: time per product and its split, efficiency against the smallest R (strong:
    R₀ T(R₀) / (R T(R)); weak, N/R_max samples per rank: T(R₀) / T(R)), the sharded Krylov basis
    per rank (Lanczos steps · 8P / R) and the whole job's hours."""
    per_rank = problem.samples / max(ranks) if weak else None
    rows = []
    for r in ranks:
        t = product_time(problem, machine, job, r, per_rank)
        rows.append({"ranks": r, **t, "basis_gib": job.lanczos_steps * 8 * problem.params / r / 2 ** 30,
                     "job_hours": job.products * t["total"] / 3600})
    base = rows[0]
    for row in rows:
        row["efficiency"] = (base["total"] / row["total"] if weak else
                             base["ranks"] * base["total"] / (row["ranks"] * row["total"]))
    return rows


def print_table(title: str, rows: list[dict[str, float]]) -> None:
    print(f"\n{title}")
    print(f"{'R':>6}{'samples/rank':>14}{'ms/product':>12}{'compute %':>11}{'comm %':>8}{'efficiency':>12}"
          f"{'basis GiB/rank':>16}{'job h':>8}")
    for row in rows:
        print(f"{row['ranks']:>6}{row['samples_per_rank']:>14,.0f}{1e3 * row['total']:>12.2f}"
              f"{100 * row['compute'] / row['total']:>11.1f}{100 * row['comm'] / row['total']:>8.1f}"
              f"{100 * row['efficiency']:>11.1f}%{row['basis_gib']:>16.2f}{row['job_hours']:>8.2f}")


def local_check(measured: dict, fitted: dict[str, AlphaBeta], cores: int) -> float:
    """Predicted vs measured time per product on this machine's 1–3 ranks; returns the measured
    HVP ÷ gradient ratio. Ranks beyond the cores time-share them: compute × max(1, R / cores)."""
    one = next(p for p in measured["products"] if p["ranks"] == 1)
    per_sample = one["compute_s"] / one["samples"]
    ratio = one["compute_s"] / one["gradient_s"]
    rate = 3 * one["forward_flop"] * one["samples"] / one["gradient_s"]
    print(f"\nthis machine, MLP 64-480-480-10 on digits (P = {one['params']:,}, N = {one['samples']:,}, float32, "
          f"kept graphs, 1 thread/rank): HVP {1e3 * one['compute_s']:.1f} ms = {ratio:.2f} gradients; "
          f"{1e6 * per_sample:.2f} µs per sample; gradient at {rate / 1e9:.2f} GFLOP/s")
    print("fitted α-β (mpi4py, 2–4 ranks): " + ", ".join(
        f"{k} α = {1e6 * ab.alpha:.2f} µs, 1/β = {1e-9 / ab.beta if ab.beta else math.inf:.2f} GB/s"
        for k, ab in fitted.items()))
    print(f"{'R':>4}{'measured ms':>13}{'predicted ms':>14}{'pred/meas':>11}{'measured compute ms':>21}")
    for p in sorted(measured["products"], key=lambda p: p["ranks"]):
        r = p["ranks"]
        vector = 8 * p["params"]
        comm = (collective_time("allgather", vector, r, fitted["allgather"])
                + collective_time("reduce_scatter", vector, r, fitted["reduce_scatter"]))
        predicted = per_sample * math.ceil(p["samples"] / r) * max(1.0, r / cores) + comm
        print(f"{r:>4}{1e3 * p['product_s']:>13.1f}{1e3 * predicted:>14.1f}{predicted / p['product_s']:>11.2f}"
              f"{1e3 * p['compute_s']:>21.1f}")
    return ratio


def plot(path: Path, tables: dict[str, list[dict[str, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=80)
    for label, rows in tables.items():
        ranks = [r["ranks"] for r in rows]
        style = "--" if "weak" in label else "-"
        left.loglog(ranks, [1e3 * r["total"] for r in rows], style, marker="o", ms=3, label=label)
        right.semilogx(ranks, [100 * r["efficiency"] for r in rows], style, marker="o", ms=3, label=label)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("ranks R")
        ax.grid(True, which="both", alpha=0.3)
    left.set_ylabel("ms per Hessian-vector product")
    right.set_ylabel("parallel efficiency %")
    right.set_ylim(0, 105)
    right.legend(fontsize=7, loc="lower left")
    fig.suptitle("Lanczos + SLQ, sharded vectors: α-β model", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(f"\nplot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measured", type=Path, default=DEFAULT_MEASURED,
                        help="scaling_measure.py's JSON: fits this machine and checks the model")
    parser.add_argument("--cores", type=int, default=2, help="cores of the machine that measured")
    parser.add_argument("--latency-us", type=float, default=2.0, help="α per collective stage (µs); HDR: ~1–2")
    parser.add_argument("--link-gbps", type=float, default=24.0, help="GB/s per link; HDR 200 Gb/s = 25 raw")
    parser.add_argument("--tflops", type=float, default=10.0,
                        help="effective FLOP rate per rank (TFLOP/s); A100-class GPU, float32, ~half of 19.5 peak")
    parser.add_argument("--staging-gbps", type=float, default=25.0,
                        help="host↔device GB/s (CUDA vectors go through host memory); 0 for CPU ranks")
    parser.add_argument("--memory-gbps", type=float, default=100.0, help="memory GB/s over the basis slice")
    parser.add_argument("--hvp-ratio", type=float, help="HVP ÷ gradient (default: measured here)")
    parser.add_argument("--lanczos-steps", type=int, default=100)
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--slq-steps", type=int, default=100)
    parser.add_argument("--resnet-gflop", type=float, default=8.2,
                        help="ResNet-50 forward GFLOP per 224² image (4.1 G multiply-adds)")
    parser.add_argument("--tokens", type=int, default=1024, help="transformer sequence length")
    parser.add_argument("--sequences", type=float, default=131072, help="transformer samples (sequences)")
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()

    ratio = args.hvp_ratio
    if args.measured.is_file():
        measured = json.loads(args.measured.read_text())
        fitted = {kind: fit_alpha_beta(measured["collectives"], kind) for kind in KINDS}
        here = local_check(measured, fitted, args.cores)
        ratio = ratio if ratio is not None else here
    elif ratio is None:
        raise SystemExit(f"no {args.measured}: run benchmarks/scaling_measure.py first, or give --hvp-ratio")
    link = AlphaBeta(args.latency_us * 1e-6, 1 / (args.link_gbps * 1e9))
    machine = Machine({kind: link for kind in KINDS}, args.tflops * 1e12, args.staging_gbps * 1e9,
                      args.memory_gbps * 1e9)
    job = Job(args.lanczos_steps, args.probes, args.slq_steps, ratio)
    layers, width = 24, 2048  # a GPT-style 1.2 B: 12 · layers · width² parameters
    transformer_flop = args.tokens * (2 * 1e9 + 2 * layers * args.tokens * width)  # Kaplan et al. 2020
    problems = [Problem("ResNet-50 / ImageNet", 25.6e6, 1.281167e6, args.resnet_gflop * 1e9),
                Problem(f"1 B transformer, {args.tokens} tokens", 1e9, args.sequences, transformer_flop)]
    print(f"\ncluster: α = {args.latency_us} µs/stage, {args.link_gbps} GB/s per link, {args.tflops} TFLOP/s per "
          f"rank, staging {args.staging_gbps} GB/s, memory {args.memory_gbps} GB/s; job = {job.products} products "
          f"({job.lanczos_steps} Lanczos + {job.probes} × {job.slq_steps} SLQ), HVP = {ratio:.2f} gradients")
    tables = {}
    for problem in problems:
        for weak in (False, True):
            rows = scaling_table(problem, machine, job, weak=weak)
            label = f"{problem.name}, {'weak' if weak else 'strong'}"
            print_table(f"{label}: P = {problem.params:,.0f}, "
                        f"{'N/R = ' + format(rows[0]['samples_per_rank'], ',.0f') if weak else f'N = {problem.samples:,.0f}'}, "
                        f"F = {problem.forward_flop / 1e9:,.1f} GFLOP/sample", rows)
            tables[label] = rows
    if args.plot:
        plot(args.plot, tables)


if __name__ == "__main__":
    main()
