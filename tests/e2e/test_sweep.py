"""Sweeps: ``track`` over training checkpoints and ``run --per-block``, against dense float64 Hessians.

A tiny user MLP (``layers.0``, ``layers.2``: 39 parameters) on 40 samples from an HDF5 file. The
checkpoints are state dicts written here with ``torch.save``; every number in ``track.h5`` /
``blocks.h5`` is compared with ``torch.func.hessian`` of that checkpoint's weights
(:func:`helpers.dense_hessian`), the per-block ones with the dense Hessian's diagonal blocks. The
stop-signal test kills a 2-rank ``track`` in its second checkpoint and resumes it; with the exact
(ordered) reduction and replicated vectors the result has the same bits as a 1-rank run, so the
in-process track serves as the uninterrupted reference.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from helpers import REPO, dense_hessian, mpirun_available
import spawn

from hpcspec.cli import main
from hpcspec.config import load_config
from hpcspec.problem.params import ParamLayout

NET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))

    def forward(self, x):
        return self.layers(x)


def make():
    return Net().double()
"""
STEPS = (0, 9, 10)  # 9 < 10 numerically, "step_9" > "step_10" as text: the order must be numeric
TASKS = ["--top-k", "2", "--tol", "1e-12", "--trace", "--trace-matvecs", "24", "--density", "--probes", "2",
         "--steps", "12", "--threads", "1", "--hvp", "double_backward", "--set", "density.plot=false"]
#: The exact reduction with replicated vectors: the same bits on 1 and 2 ranks.
EXACT = ["--set", "hessian.reduction='ordered'", "--set", "hessian.shard_vectors=false"]


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """The model module, the data file, and three checkpoints with a train.toml beside them."""
    root = tmp_path_factory.mktemp("sweep")
    (root / "sweepnet.py").write_text(NET)
    sys.path.insert(0, str(root))
    import sweepnet

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=gen)
    with h5py.File(root / "data.h5", "w") as f:
        f["x"], f["y"] = x.numpy(), y.numpy()
    ckpts = root / "ckpts"
    ckpts.mkdir()
    states = {}
    for step in STEPS:
        torch.manual_seed(step)
        model = sweepnet.make()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.0 + step / 4)  # the spectrum grows along the "training"
        states[step] = {k: v.clone() for k, v in model.state_dict().items()}
        name = f"step_{step}.pt" if step == 9 else f"step_{step:08d}.pt"
        torch.save(states[step], ckpts / name)
    (ckpts / "train.toml").write_text(
        f'seed = 0\n[model]\nspec = "sweepnet:make"\n[data]\nspec = "{root / "data.h5"}"\nbatch_size = 8\n'
        '[hessian]\nloss = "cross_entropy"\ncheck = false\n[train]\nepochs = 1\n')
    yield {"root": root, "ckpts": ckpts, "x": x, "y": y, "states": states, "make": sweepnet.make}
    sys.path.remove(str(root))


def _dense(problem, state) -> torch.Tensor:
    model = problem["make"]()
    model.load_state_dict(state)
    return dense_hessian(model, "cross_entropy", problem["x"], problem["y"])


def _track(problem, output: Path, *extra: str) -> int:
    return main(["--backend", "single", "track", str(problem["ckpts"]), "--output", str(output), *TASKS, *extra])


@pytest.fixture(scope="module")
def tracked(problem):
    output = problem["root"] / "track"
    assert _track(problem, output, *EXACT) == 0
    return output


def test_track_matches_dense_hessian_of_every_checkpoint(problem, tracked):
    with h5py.File(tracked / "track.h5") as f:
        assert f.attrs["kind"] == "track"
        assert list(f["step"][...]) == list(STEPS)
        eigenvalues, trace, stderr = f["eigenvalues"][...], f["trace"][...], f["trace_stderr"][...]
        grid, values = f["density/grid"][...], f["density/values"][...]
        loss = f["loss"][...]
    assert eigenvalues.shape == (3, 2) and values.shape == (3, grid.size)
    for i, step in enumerate(STEPS):
        matrix = _dense(problem, problem["states"][step])
        exact = np.linalg.eigvalsh(matrix.numpy())[::-1]
        assert np.allclose(eigenvalues[i], exact[:2], rtol=1e-8, atol=0), (step, eigenvalues[i], exact[:2])
        exact_trace = float(torch.trace(matrix))
        assert abs(trace[i] - exact_trace) <= 4 * stderr[i] + 1e-8 * abs(exact_trace), (step, trace[i], exact_trace)
        # the common grid holds every step's spectrum; each row is a probability density on it
        assert grid[0] < exact[-1] + 0.05 * (exact[0] - exact[-1]) and grid[-1] > exact[0]
        assert abs(np.trapezoid(values[i], grid) - 1.0) < 1e-3
        model = problem["make"]()
        model.load_state_dict(problem["states"][step])
        direct = torch.nn.functional.cross_entropy(model(problem["x"]), problem["y"]).item()
        assert loss[i] == pytest.approx(direct, rel=1e-12)
    assert eigenvalues[2, 0] > eigenvalues[0, 0]  # the per-step order is the numeric one
    for name in ("track_eigenvalues.png", "track_trace.png", "track_density.png"):
        assert (tracked / name).stat().st_size > 1000, name
    assert (tracked / "steps" / "step_00000009" / "results.h5").is_file()


def test_track_rerun_runs_only_new_checkpoints(problem, tracked, tmp_path):
    import shutil

    ckpts = tmp_path / "ckpts"
    shutil.copytree(problem["ckpts"], ckpts)
    (ckpts / "step_00000010.pt").unlink()
    output = tmp_path / "track"
    args = ["--backend", "single", "track", str(ckpts), "--output", str(output), *TASKS]
    assert main(args) == 0
    first = {p.parent.name: p.stat().st_mtime_ns for p in output.glob("steps/*/results.h5")}
    assert sorted(first) == ["step_00000000", "step_00000009"]
    shutil.copy(problem["ckpts"] / "step_00000010.pt", ckpts)
    assert main(args) == 0
    second = {p.parent.name: p.stat().st_mtime_ns for p in output.glob("steps/*/results.h5")}
    assert sorted(second) == ["step_00000000", "step_00000009", "step_00000010"]
    assert all(second[name] == first[name] for name in first), "a finished step was run again"
    with h5py.File(output / "track.h5") as f:
        assert list(f["step"][...]) == list(STEPS)


def test_track_without_train_toml_needs_model_and_data(problem, tmp_path, capsys):
    ckpts = tmp_path / "bare"
    ckpts.mkdir()
    torch.save(problem["states"][0], ckpts / "step_00000000.pt")
    assert main(["--backend", "single", "track", str(ckpts), "--output", str(tmp_path / "o")]) == 2
    assert "has no train.toml" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--backend", "single", "track", str(empty), "--output", str(tmp_path / "o")]) == 2
    assert "no training checkpoints" in capsys.readouterr().err


def test_per_block_top_eigenvalue_is_that_of_the_diagonal_block(problem, tmp_path):
    output = tmp_path / "blocks"
    weights = problem["ckpts"] / "step_00000010.pt"
    code = main(["--backend", "single", "run", "--per-block", "--model", "sweepnet:make", "--data",
                 str(problem["root"] / "data.h5"), "--weights", str(weights), "--top-k", "1", "--tol", "1e-13",
                 "--trace", "--trace-matvecs", "40", "--threads", "1", "--set", "hessian.check=false",
                 "--output", str(output)])
    assert code == 0
    matrix = _dense(problem, problem["states"][10]).numpy()
    layout = ParamLayout.of(problem["make"]())
    with h5py.File(output / "blocks.h5") as f:
        assert f.attrs["kind"] == "blocks"
        blocks = [b.decode() for b in f["block"][...]]
        sizes, top = f["num_params"][...], f["eigenvalues"][:, 0]
        trace, stderr = f["trace"][...], f["trace_stderr"][...]
    assert blocks == ["layers.0", "layers.2"]
    for i, block in enumerate(blocks):
        index = np.concatenate([np.arange(lo, hi) for name, lo, hi in
                                zip(layout.names, layout.offsets[:-1], layout.offsets[1:])
                                if name.startswith(block + ".")])
        sub = matrix[np.ix_(index, index)]
        assert sizes[i] == index.size
        exact = np.linalg.eigvalsh(sub)[-1]
        assert top[i] == pytest.approx(exact, rel=1e-8), (block, top[i], exact)
        assert abs(trace[i] - np.trace(sub)) <= 4 * stderr[i] + 1e-8 * abs(np.trace(sub))
    assert (output / "blocks.png").stat().st_size > 1000
    assert (output / "blocks" / "layers.2" / "results.h5").is_file()


def test_per_block_after_training_analyses_the_same_weights_for_every_block(problem, tmp_path):
    """Training before the analysis trains every parameter, whatever ``model.params`` selects: each
    block's Hessian is a diagonal block of one trained network's, not of a network trained per block."""
    common = ["--backend", "single", "run", "--model", "sweepnet:make", "--data", str(problem["root"] / "data.h5"),
              "--train-steps", "5", "--top-k", "1", "--tol", "1e-13", "--threads", "1", "--set", "hessian.check=false"]
    assert main([*common, "--output", str(tmp_path / "whole")]) == 0
    assert main([*common, "--per-block", "--output", str(tmp_path / "blocks")]) == 0
    with h5py.File(tmp_path / "whole" / "results.h5") as f:
        whole_loss = f.attrs["loss_value"]
    with h5py.File(tmp_path / "blocks" / "blocks.h5") as f:
        losses, top = f["loss"][...], f["eigenvalues"][:, 0]
    np.testing.assert_array_equal(losses, whole_loss)  # trained per block, each loss would differ
    assert np.all(np.isfinite(top)) and top[0] != top[1]


def test_per_block_trains_once_not_once_per_block(problem, tmp_path, monkeypatch):
    import hpcspec.commands.blocks as blocks
    import hpcspec.commands.run as run
    from hpcspec.curvature.fullbatch import train_full_batch

    calls = []

    def counted(*args, **kwargs):
        calls.append(args[1])
        return train_full_batch(*args, **kwargs)

    monkeypatch.setattr(blocks, "train_full_batch", counted)
    monkeypatch.setattr(run, "train_full_batch", counted)
    output = tmp_path / "blocks"
    assert main(["--backend", "single", "run", "--model", "sweepnet:make", "--data", str(problem["root"] / "data.h5"),
                 "--train-steps", "5", "--top-k", "1", "--threads", "1", "--set", "hessian.check=false",
                 "--per-block", "--output", str(output)]) == 0
    assert calls == [5]  # once for the network, not once per block (two blocks here)
    assert (output / "trained.pt").is_file()
    for block in ("layers.0", "layers.2"):
        with h5py.File(output / "blocks" / block / "results.h5") as f:
            stored = load_config(text=f.attrs["config"])
        assert stored.train.steps == 0 and stored.model.weights == str(output / "trained.pt")


def _rank_pids(marker: Path) -> list[int]:
    """The hpcspec rank processes (python, not mpirun) whose command line names ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(str(marker).encode() in arg for arg in argv) and Path(argv[0].decode()).name.startswith("python"):
            found.append(int(entry.name))
    return found


@pytest.mark.mpi
@pytest.mark.skipif(not mpirun_available(), reason="needs mpi4py and mpirun")
def test_track_stopped_by_sigterm_resumes_to_the_uninterrupted_result(problem, tracked, tmp_path):
    output = tmp_path / "killed"
    env = spawn.one_thread_env(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe",
               TMPDIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join([str(REPO), str(problem["root"]), os.environ.get("PYTHONPATH", "")]))
    command = ["mpirun", "--oversubscribe", "-n", "2", sys.executable, "-m", "hpcspec", "track",
               str(problem["ckpts"]), "--output", str(output), *TASKS, *EXACT, "--set", "checkpoint.every_iters=4"]
    proc = spawn.popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    latest = output / "steps" / "step_00000009" / "checkpoints" / "LATEST"
    try:
        deadline = time.monotonic() + 60
        while not latest.exists():
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the second checkpoint's run never committed a checkpoint"
            time.sleep(0.01)
        pids = _rank_pids(output)
        assert len(pids) == 2, pids
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        code = proc.poll()
        spawn.kill_session(proc)  # mpirun and any rank left, even when it ended on its own
    assert code == 3, out[-3000:]
    assert "continue with --resume" in out
    assert (output / "steps" / "step_00000000" / "results.h5").is_file()
    assert not (output / "steps" / "step_00000009" / "results.h5").exists()
    assert not (output / "steps" / "step_00000010").exists() and not (output / "track.h5").exists()
    resumed = spawn.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from checkpoint" in resumed.stderr
    with h5py.File(output / "track.h5") as got, h5py.File(tracked / "track.h5") as want:
        names = []
        want.visit(lambda name: names.append(name) if isinstance(want[name], h5py.Dataset) else None)
        for name in names:
            if name in ("loss", "gradient_fraction"):  # from one gradient, reduced in float64 (not ordered)
                assert np.allclose(got[name][...], want[name][...], rtol=1e-12, atol=0), name
            elif want[name].dtype.kind in "fi":
                assert np.array_equal(got[name][...], want[name][...]), name
        assert "eigenvalues" in names and "density/values" in names
