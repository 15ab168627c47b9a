"""``python -m hpcspec train``: the minibatch gradient, the schedules, the SGD trajectory against a
plain single-process PyTorch loop and across 1, 2 and 3 ranks, the saved files, stop and resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import pytest
import torch
import torch.nn.functional as F

from helpers import REPO, mpirun
from hpcspec.commands import train as tr
from hpcspec.cli import main
from hpcspec.parallel.comm import SingleProcess
from hpcspec.config import TrainConfig
from hpcspec.problem.data import Shard
from hpcspec.problem.losses import get_loss

TRAIN_MODULE = '''
import os, signal, torch

#: forward calls in this process; the one numbered $HPCSPEC_TEST_SIGTERM_AT sends this process SIGTERM
CALLS = [0]

def make_data():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(37, 5, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 3, (37,), generator=gen)

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))

    def forward(self, x):
        CALLS[0] += 1
        if str(CALLS[0]) == os.environ.get("HPCSPEC_TEST_SIGTERM_AT"):
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, caught by hpcspec's handler
        return self.body(x)

def make_model():
    return Net().double()

def bn_model():
    return torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.BatchNorm1d(6), torch.nn.Tanh(),
                               torch.nn.Linear(6, 3)).double()
'''
#: 37 samples in minibatches of 8: 5 steps per epoch (the last of 5 samples), 14 steps cross 3 epochs.
TRAIN = ["train", "--model", "trainmod:make_model", "--data", "trainmod:make_data", "--steps", "14",
         "--batch-size", "8", "--save-every", "5", "--lr", "0.1", "--threads", "1"]
SAVED = [0, 5, 10, 14]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("train")
    (path / "trainmod.py").write_text(TRAIN_MODULE)
    return path


@pytest.fixture
def workdir(folder, monkeypatch):
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    return folder


def _weights(output: Path, step: int) -> dict[str, torch.Tensor]:
    return torch.load(output / tr.step_file(step), weights_only=True)


def _data():
    import trainmod  # the workdir fixture puts it on sys.path

    return trainmod


def test_minibatch_gradient_is_the_minibatch_mean_gradient():
    """Indices spread over the shard, a repeated index, one rank: the reduced gradient equals
    autograd of the mean loss over exactly those samples."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (20,), generator=gen)
    indices = torch.tensor([17, 2, 9, 2, 11, 0])
    for name, targets in (("cross_entropy", y), ("mse", torch.randn(20, 3, generator=gen, dtype=torch.float64))):
        step = tr.DataParallelStep(model, get_loss(name), Shard(x, targets, 0, 20, 20), SingleProcess(),
                                   torch.device("cpu"))
        loss, samples, stopping = step.gradient(indices)
        got = [p.grad.clone() for p in model.parameters()]
        criterion = F.cross_entropy if name == "cross_entropy" else F.mse_loss
        expected_loss = criterion(model(x[indices]), targets[indices])
        expected = torch.autograd.grad(expected_loss, list(model.parameters()))
        assert samples == 6 and not stopping and math.isclose(loss, expected_loss.item(), rel_tol=1e-14)
        for g, e in zip(got, expected):
            assert torch.allclose(g, e, rtol=1e-13, atol=1e-15), name


def test_minibatches_cover_each_epoch_once_and_repeat_with_the_seed():
    train = TrainConfig(batch_size=8)
    per_epoch = tr.steps_per_epoch(train, 37)
    assert per_epoch == 5 and tr.total_steps(TrainConfig(epochs=3, batch_size=8), 37) == 15
    for epoch in range(2):
        batches = [tr.minibatch(train, 4, epoch * per_epoch + i, 37) for i in range(per_epoch)]
        assert [len(b) for b in batches] == [8, 8, 8, 8, 5]
        assert sorted(torch.cat(batches).tolist()) == list(range(37))
    assert torch.equal(tr.minibatch(train, 4, 6, 37), tr.minibatch(train, 4, 6, 37))
    assert not torch.equal(tr.minibatch(train, 4, 0, 37), tr.minibatch(train, 4, 5, 37))  # reshuffled
    assert not torch.equal(tr.minibatch(train, 4, 0, 37), tr.minibatch(train, 5, 0, 37))  # seeded


def test_schedules():
    total = 8
    cosine = [tr.learning_rate(TrainConfig(lr=0.4), s, total) for s in range(total)]
    assert cosine == [0.4 * 0.5 * (1 + math.cos(math.pi * s / 8)) for s in range(8)]
    assert cosine[0] == 0.4 and cosine[4] == pytest.approx(0.2, abs=1e-16)
    step = [tr.learning_rate(TrainConfig(lr=0.4, schedule="step", gamma=0.5), s, total) for s in range(total)]
    assert step == [0.4] * 4 + [0.2] * 2 + [0.1] * 2  # milestones 0.5, 0.75 of 8 steps: steps 4 and 6
    constant = TrainConfig(lr=0.4, schedule="constant", warmup=3)
    assert [tr.learning_rate(constant, s, total) for s in range(5)] == [0.4 / 3, 0.4 * 2 / 3, 0.4, 0.4, 0.4]


def test_trajectory_matches_a_plain_pytorch_loop_and_files_load_with_run(workdir, capsys):
    assert main([*TRAIN, "--output", "single"]) == 0
    out = capsys.readouterr().out
    assert "trained 14 steps on 1 rank" in out
    output = workdir / "single"
    names = sorted(p.name for p in output.iterdir() if not p.name.startswith(".hpcspec-"))  # lock, run marker
    assert names == sorted([tr.step_file(s) for s in SAVED] + ["train.toml", "train_log.json", "train_state.pt"])
    log = json.loads((output / "train_log.json").read_text())
    assert len(log["loss"]) == len(log["lr"]) == 14 and log["saved"] == [tr.step_file(s) for s in SAVED]
    assert "[train]" in (output / "train.toml").read_text() and "steps = 14" in (output / "train.toml").read_text()

    # an independent loop: the same minibatches, torch's mean loss, torch.optim.SGD, the cosine formula
    trainmod = _data()
    x, y = trainmod.make_data()
    torch.manual_seed(0)  # the seed build_model uses
    model = trainmod.make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    train = TrainConfig(batch_size=8)
    states, losses = {0: {k: v.clone() for k, v in model.state_dict().items()}}, []
    for s in range(14):
        for group in optimizer.param_groups:
            group["lr"] = 0.1 * 0.5 * (1 + math.cos(math.pi * s / 14))
        idx = tr.minibatch(train, 0, s, 37)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
        states[s + 1] = {k: v.clone() for k, v in model.state_dict().items()}
    assert log["loss"] == pytest.approx(losses, rel=1e-12)
    for s in SAVED:
        saved = _weights(output, s)
        for key, value in states[s].items():
            assert torch.allclose(saved[key], value, rtol=1e-12, atol=1e-14), (s, key)

    # every saved file is a state dict `run --weights` takes; its loss is the full-data loss of those weights
    for s in (0, 14):
        assert main(["run", "--model", "trainmod:make_model", "--data", "trainmod:make_data", "--weights",
                     str(output / tr.step_file(s)), "--top-k", "2", "--output", f"analysed{s}",
                     "--hvp", "double_backward", "--set", "hessian.check=false"]) == 0
        model.load_state_dict(_weights(output, s))
        with torch.no_grad():
            full = float(F.cross_entropy(model(x), y))
        with h5py.File(workdir / f"analysed{s}" / "results.h5") as f:
            assert f.attrs["loss_value"] == pytest.approx(full, rel=1e-12)
    capsys.readouterr()


def test_sigterm_exits_3_refuses_fresh_start_and_resume_is_bitwise(workdir, capsys, monkeypatch):
    assert main([*TRAIN, "--output", "whole"]) == 0
    trainmod = _data()
    trainmod.CALLS[0] = 0
    monkeypatch.setenv("HPCSPEC_TEST_SIGTERM_AT", "8")  # the 8th forward: some 7 steps in
    assert main([*TRAIN, "--output", "stopped"]) == 3
    monkeypatch.delenv("HPCSPEC_TEST_SIGTERM_AT")
    stopped = workdir / "stopped"
    step = torch.load(stopped / "train_state.pt", weights_only=True)["step"]
    err = capsys.readouterr().err
    assert 5 < step < 10 and f"stopped on SIGTERM after saving stopped/train_state.pt at step {step}; continue " \
                              "with --resume (exit code 3)" in err, err
    assert not (stopped / tr.step_file(10)).exists() and (stopped / tr.step_file(5)).exists()
    assert main([*TRAIN, "--output", "stopped"]) == 2  # a fresh start would lose the progress
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hpcspec: error:")]
    assert len(errors) == 1 and f"unfinished training (step {step} of 14)" in errors[0] and "--resume" in errors[0]
    assert main([*TRAIN, "--output", "stopped", "--resume"]) == 0
    assert "resuming from" in capsys.readouterr().err
    for s in SAVED:
        resumed, whole = _weights(stopped, s), _weights(workdir / "whole", s)
        assert all(torch.equal(resumed[k], whole[k]) for k in whole), s
    assert (json.loads((stopped / "train_log.json").read_text())["loss"]
            == json.loads((workdir / "whole" / "train_log.json").read_text())["loss"])
    assert main([*TRAIN, "--output", "stopped", "--resume"]) == 0  # finished: nothing to do
    assert "already finished" in capsys.readouterr().out
    assert main([*TRAIN, "--output", "stopped", "--resume", "--lr", "0.2"]) == 2
    assert "train.lr: 0.1 there, 0.2 here" in capsys.readouterr().err
    assert main([*TRAIN, "--output", "stopped", "--save-every", "0"]) == 0  # over a finished one: afresh
    assert sorted(p.name for p in stopped.glob("step_*.pt")) == [tr.step_file(0), tr.step_file(14)]


def test_batchnorm_model_trains_and_saves_its_running_statistics(workdir):
    assert main([*TRAIN, "--model", "trainmod:bn_model", "--output", "bn", "--save-every", "0"]) == 0
    first, last = _weights(workdir / "bn", 0), _weights(workdir / "bn", 14)
    assert int(last["1.num_batches_tracked"]) == 14 and not torch.equal(first["1.running_mean"], last["1.running_mean"])


@pytest.mark.parametrize("extra, message", [
    (["--schedule", "cosin"], "train.schedule = 'cosin' is not one of cosine, step, constant; did you mean 'cosine'?"),
    (["--lr", "-1"], "train.lr must be >= 0"),
    (["--lr", "0"], "train.lr must be > 0 for training"),
    (["--steps", "0"], "train needs train.steps > 0 or train.epochs > 0"),
    (["--momentum", "1.5"], "train.momentum must lie in [0, 1)"),
    (["--set", "train.milestones=[0.8, 0.2]"], "train.milestones must be increasing fractions"),
    (["--data", "trainmod:make_data", "--model", "trainmod:make_model", "--loss", "mse"], "target values per sample"),
])
def test_bad_input_is_one_line_and_exit_2(workdir, capsys, extra, message):
    assert main([*TRAIN, "--output", "bad", *extra]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hpcspec: error:")]
    assert len(errors) == 1 and message in errors[0], errors
    assert not (workdir / "bad" / "train_state.pt").exists()


def _relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-300)) for k in b)


@pytest.mark.mpi
def test_two_and_three_ranks_follow_one_rank_and_a_stopped_two_rank_run_resumes_bitwise(folder, monkeypatch):
    """One mpirun -n 3 (tests/e2e/mpi_train.py): a 3-rank training; on a 2-rank sub-communicator an
    uninterrupted training, one stopped by SIGTERM on rank 1 only, a refused fresh start, the resume;
    a BatchNorm model that must end with the same weights on both ranks."""
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    assert main([*TRAIN, "--output", "ranks1"]) == 0
    done = mpirun(3, [str(REPO / "tests" / "e2e" / "mpi_train.py"), str(folder)], cwd=folder, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads((folder / "mpi_train.json").read_text())
    assert report["ranks3"] == 0 and "trained 14 steps on 3 ranks" in done.stdout
    step = report["stopped_at"][0]
    assert 0 < step < 14 and report["stopped_at"] == [step, step], report  # both ranks stopped together
    assert f"unfinished training (step {step} of 14)" in report["refused"]
    reference = json.loads((folder / "ranks1" / "train_log.json").read_text())
    for name in ("ranks2", "ranks3"):
        log = json.loads((folder / name / "train_log.json").read_text())
        assert log["saved"] == reference["saved"] and log["lr"] == reference["lr"]
        assert log["world_size"] == int(name[-1])
        assert log["loss"] == pytest.approx(reference["loss"], rel=1e-10)
        for s in SAVED:
            error = _relative(_weights(folder / name, s), _weights(folder / "ranks1", s))
            assert error <= 1e-10, (name, s, error)
    for s in SAVED:
        resumed, whole = _weights(folder / "stopped2", s), _weights(folder / "ranks2", s)
        assert all(torch.equal(resumed[k], whole[k]) for k in whole), s
    first, second = report["bn_fingerprints"]
    assert first == second  # BatchNorm running statistics averaged across ranks: identical weights
    assert int(_weights(folder / "bn2", 14)["1.num_batches_tracked"]) == 14
