"""Pipeline stages (model.stages = S over S·D ranks): the stage split, the pipelined exact HVP
against the one-rank operator, the solvers on the staged space, resume, and bad inputs."""

from __future__ import annotations

import json
import os
import socket
import sys

import pytest
import spawn
import torch
from helpers import REPO, mpirun
from torch import nn

from hpcspec.curvature.operator import HessianOperator
from hpcspec.curvature.pipeline import pipelined
from hpcspec.errors import InputError
from hpcspec.parallel.comm import SingleProcess
from hpcspec.parallel.grid import grid_position, grid_shape, launcher_bounds, make_grid
from hpcspec.parallel.vectors import Sharded, stage_bounds
from hpcspec.problem.models.resnet import ResNet
from hpcspec.problem.models.transformer import TransformerLM
from hpcspec.problem.stages import check_stages, partition, split_stages

SCRIPT = str(REPO / "tests" / "mpi" / "mpi_pipeline.py")
BAD = str(REPO / "tests" / "mpi" / "mpi_pipeline_bad.py")


def test_partition_minimises_the_largest_stage():
    assert partition([5, 1, 1, 1, 5], 2) == [0, 2, 5]  # {5,1} | {1,1,5}: largest 7, not 8
    assert partition([1, 1, 1, 1], 4) == [0, 1, 2, 3, 4]
    assert partition([3, 0, 0, 3], 2) == [0, 1, 4]


def test_stages_follow_the_parameter_order_and_balance_a_transformer():
    torch.manual_seed(0)
    model = TransformerLM(11, 8, embed=8, layers=4, heads=2)
    stages = split_stages(model, 3)
    names = [name for stage in stages for name in stage.names]
    assert names == [name for name, _ in model.named_parameters()]
    counts = [sum(p.numel() for p in stage.parameters()) for stage in stages]
    assert max(counts) < sum(counts) / 2  # blocks of ~850 parameters spread, not all on one stage


def test_stage_slices_tile_the_vector_in_rank_order():
    bounds = stage_bounds([0, 7, 7 + 5, 20], 2)
    assert bounds == [(0, 3), (3, 7), (7, 9), (9, 12), (12, 16), (16, 20)]
    with pytest.raises(ValueError, match="do not tile"):
        Sharded(SingleProcess(), 5, [(0, 4)])


def test_bad_splits_are_input_errors():
    with pytest.raises(InputError, match="cannot be split"):
        split_stages(nn.Bilinear(2, 2, 1), 2)
    with pytest.raises(InputError, match="only 2 block"):
        split_stages(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), 3)
    with pytest.raises(InputError, match="no trainable parameter"):
        split_stages(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), 2)
    shared = nn.Linear(2, 2)
    with pytest.raises(InputError, match="tied weights"):
        split_stages(nn.Sequential(shared, nn.Linear(2, 2), shared), 2)
    with pytest.raises(InputError, match="stage 1 cannot take its input of shape"):
        check_stages(split_stages(nn.Sequential(nn.Linear(4, 3), nn.Linear(5, 2)), 2), torch.zeros(1, 4))
    with pytest.raises(InputError, match="does not divide the 4 ranks"):
        grid_shape(4, 3)


@pytest.mark.parametrize("name", ["transformer", "resnet"])
def test_one_stage_is_the_ordinary_operator(name):
    """S = 1: the stage-by-stage forward over reverse equals the whole-model double backward."""
    torch.manual_seed(1)
    if name == "transformer":
        model = TransformerLM(7, 6, embed=8, layers=2, heads=2).double()
        x, y = torch.randint(0, 7, (9, 6)), torch.randint(0, 7, (9, 6))
    else:
        model = ResNet(1, in_channels=2, num_classes=3, width=2).double()
        x, y = torch.randn(7, 2, 5, 5, dtype=torch.float64), torch.randint(0, 3, (7,))
    reference = HessianOperator(model, "cross_entropy", (x, y), batch_size=4, method="double_backward")
    op = pipelined(model, make_grid(SingleProcess(), 1), "cross_entropy", (x, y), batch_size=3)
    v = torch.randn(op.size, 2, dtype=torch.float64)
    exact = reference.apply(v)
    assert float((op.apply(v) - exact).abs().max()) <= 1e-12 * float(exact.abs().max())
    assert abs(op.loss_and_gradient()[0] - reference.loss_and_gradient()[0]) <= 1e-14


def test_placements_number_the_launcher_ranks_pipe_or_stage_major():
    """pipe: rank d·S + s (a data shard's stages consecutive); stage: s·D + d. Either way the
    store's slices, indexed by launcher rank, are the stage-major space's slices permuted."""
    assert [grid_position(r, 2, 3, "pipe") for r in range(6)] == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    assert [grid_position(r, 2, 3, "stage") for r in range(6)] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    bounds = stage_bounds([0, 7, 12], 3)  # stage-major: (s, d) = (0,0) (0,1) (0,2) (1,0) (1,1) (1,2)
    assert launcher_bounds(bounds, 2, 3, "stage") == bounds
    assert launcher_bounds(bounds, 2, 3, "pipe") == [bounds[0], bounds[3], bounds[1], bounds[4], bounds[2], bounds[5]]
    with pytest.raises(InputError, match="model.placement must be one of pipe, stage"):
        grid_position(0, 2, 2, "node")


@pytest.mark.mpi
@pytest.mark.parametrize("ranks,stages,placement", [(2, 2, "pipe"), (4, 2, "pipe"), (4, 2, "stage"), (3, 3, "pipe")])
def test_pipelined_products_and_estimates_equal_one_rank(tmp_path, ranks, stages, placement):
    done = mpirun(ranks, [SCRIPT, str(tmp_path / "out.json"), f"{stages}:{placement}"], tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads((tmp_path / "out.json").read_text())
    shards = ranks // stages
    assert [(r["stage"], r["shard"]) for r in records] == [grid_position(r, stages, shards, placement)
                                                           for r in range(ranks)]
    assert [r["order"] for r in records] == [s * shards + d for s, d in ((r["stage"], r["shard"]) for r in records)]
    records.sort(key=lambda r: r["order"])  # the space's (stage-major) rank order
    for record in records:
        for name in ("mlp", "transformer", "resnet"):
            for what in ("hv", "block", "whole", "gradient"):
                assert record[f"{name}_{what}"] <= 1e-12, (name, what, record)
            assert record[f"{name}_loss"] <= 1e-12
            assert 0.0 <= record[f"{name}_bubble"] < 1.0
        assert record["top_k"] <= 1e-10 and record["trace"] <= 1e-10
        assert record["slq_alpha"] <= 1e-10 and record["slq_beta"] <= 1e-10
    slices = [tuple(r["slice"]) for r in records]
    assert slices[0][0] == 0 and all(a[1] == b[0] for a, b in zip(slices, slices[1:]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 4])
def test_pipelined_products_on_torch_distributed_gloo(tmp_path, ranks):
    """torchrun, gloo on CPU, S = 2 (D = 1 and 2): the stage and pipe groups (``new_group``) and the
    activations' ``send``/``recv`` give the one-rank products and solvers (MLP and transformer)."""
    env = spawn.one_thread_env(PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_addr",
               "127.0.0.1", "--master_port", str(_free_port()), SCRIPT, str(tmp_path / "out.json"), "2", "torch"]
    done = spawn.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads((tmp_path / "out.json").read_text())
    assert [(r["stage"], r["shard"]) for r in records] == [grid_position(r, 2, ranks // 2) for r in range(ranks)]
    for record in records:
        assert record["communicator"].startswith("torch.distributed gloo"), record["communicator"]
        for name in ("mlp", "transformer"):
            for what in ("hv", "block", "whole", "gradient", "loss"):
                assert record[f"{name}_{what}"] <= 1e-12, (name, what, record)
        assert record["top_k"] <= 1e-10 and record["trace"] <= 1e-10
        assert record["slq_alpha"] <= 1e-10 and record["slq_beta"] <= 1e-10


@pytest.mark.mpi
def test_pipelined_lanczos_resumes_bitwise_on_the_same_grid(tmp_path):
    store = tmp_path / "checkpoints"
    first = mpirun(2, [SCRIPT, str(tmp_path / "a.json"), "2", "save", str(store)], tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    second = mpirun(2, [SCRIPT, str(tmp_path / "b.json"), "2", "load", str(store)], tmp_path, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    uninterrupted, resumed = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    for a, b in zip(uninterrupted, resumed):
        assert a["values"] == b["values"] and a["alpha"] == b["alpha"]


BAD_MODELS = '''
from torch import nn

class Opaque(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(3, 2)

    def forward(self, x):
        return self.b(self.a(x))

def opaque():
    return Opaque()

def mismatched():
    return [nn.Linear(4, 3), nn.Linear(5, 2)]
'''


@pytest.mark.mpi
def test_bad_pipelined_inputs_exit_2_on_every_rank(tmp_path):
    (tmp_path / "badstages.py").write_text(BAD_MODELS)
    done = mpirun(2, [BAD, str(tmp_path)], tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    per_rank = json.loads((tmp_path / "bad.json").read_text())
    expected = {"not_dividing": "does not divide the 2 ranks", "cannot_split": "Opaque cannot be split into pipeline stages",
                "too_few_blocks": "only 1 block(s)", "mismatched": "stage 1 cannot take its input of shape (1, 3)"}
    for name, text in expected.items():
        assert [records[name]["code"] for records in per_rank] == [2, 2], name
        lines = [line for line in per_rank[0][name]["stderr"].splitlines() if line.startswith("hpcspec: error:")]
        assert len(lines) == 1 and text in lines[0], (name, per_rank[0][name]["stderr"])
        assert "hpcspec: error:" not in per_rank[1][name]["stderr"], name


def test_the_staged_data_line_is_logged(caplog):
    """The start-up line of a pipelined run formats (it once took the thread count as an int)."""
    from hpcspec.commands.stages import build_staged_workload
    from hpcspec.config import load_config
    from hpcspec.parallel.device import Threads

    cfg = load_config(overrides={"data.spec": "synthetic", "data.samples": 6, "data.features": 3, "data.classes": 2,
                                 "model.hidden": [4]})
    with caplog.at_level("INFO", logger="hpcspec.commands.stages"):
        build_staged_workload(cfg, SingleProcess(), Threads(1, "OMP_NUM_THREADS=1"))
    assert ("pipeline of 1 stages × 1 data shards, this rank is stage 0 of shard 0, holding samples [0, 6); "
            "1 thread(s) per rank (OMP_NUM_THREADS=1)") in caplog.text


def test_the_memory_plan_counts_each_stages_messages_per_product():
    """An MLP 3 → 4 → 2 cut into two stages (16 | 10 parameters) over D = 3 shards, 6 samples,
    k = 1, float64: stage 0 sends its 4 outputs and their tangents (2·4·6·8 bytes) and stage 1 the
    cotangent of its 4 inputs and its tangent, likewise; each rank sends (D − 1)/D of its stage's
    block in the reduce-scatter."""
    from hpcspec.commands.stages import Staged, build_staged_workload, memory_plan
    from hpcspec.config import load_config
    from hpcspec.parallel.grid import Grid

    cfg = load_config(overrides={"data.spec": "synthetic", "data.samples": 6, "data.features": 3, "data.classes": 2,
                                 "model.hidden": [4], "eigen.method": "lanczos"})
    work, _ = build_staged_workload(cfg, SingleProcess())
    one = SingleProcess()
    staged = Staged(Grid(one, 2, 3, 0, 0, one, one), split_stages(work.model, 2), [0, 16, 26])
    plan = memory_plan(cfg, staged, work.shard, 8)
    assert [row["parameters"] for row in plan] == [16, 10]
    assert [row["pipe_bytes"] for row in plan] == [2 * 4 * 6 * 8, 2 * 4 * 6 * 8]
    assert [row["stage_bytes"] for row in plan] == [16 * 8 * 2 // 3, 10 * 8 * 2 // 3]
