"""Bad-input cases shared by the single-process CLI tests and the ``mpirun -n 2`` run.

Each case is (name, argv, text the one-line error must contain). ``prepare`` writes the files the
cases point at; with 2 ranks the NaN sits in rank 1's half only, so rank 0 must learn of it.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

USER_MODULE = '''
import torch

def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).double()

def make_data():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    return x, torch.randn(50, 2, generator=gen, dtype=torch.float64)

def make_wide_data():
    x, y = make_data()
    return torch.cat([x, x], dim=1), y

not_callable = 3

def nan_weights():
    model = make_model()
    with torch.no_grad():
        model[2].weight[1, 3] = float("nan")
    return model

def frozen_model():
    model = make_model()
    model.requires_grad_(False)
    return model

class _AlwaysDropout(torch.nn.Module):
    """Dropout hard-wired on in forward: eval() cannot switch it off, so H·v is random."""

    def __init__(self):
        super().__init__()
        self.inner = make_model()

    def forward(self, x):
        return self.inner(torch.nn.functional.dropout(x, 0.5, training=True))

def noisy_model():
    return _AlwaysDropout()

def _helper():
    return 1 / 0

def raising_model():
    return _helper()

def int_pair():
    return 1, 2

def _labels(index, value):
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = torch.zeros(20, dtype=torch.int64)
    y[index] = value
    return x, y

def huge_labels():
    return _labels(3, 10**12)

def negative_labels():  # in rank 1's half under 2 ranks
    return _labels(15, -5)

def huge_tokens():
    x = torch.randint(0, 8, (20, 5), generator=torch.Generator().manual_seed(3))
    x[2, 4] = 10**12
    return x, torch.randint(0, 8, (20, 5), generator=torch.Generator().manual_seed(4))

def float_huge_labels():
    x, y = _labels(3, 0)
    return x, torch.full((20,), 1e12, dtype=torch.float64)
'''


def prepare(folder: Path) -> None:
    (folder / "usermod.py").write_text(USER_MODULE)
    with h5py.File(folder / "shapes.h5", "w") as f:
        f["x"], f["y"] = np.zeros((10, 3)), np.zeros(7)
    x = np.random.default_rng(0).normal(size=(10, 4))
    x[8, 1] = np.nan
    with h5py.File(folder / "nan.h5", "w") as f:
        f["x"], f["y"] = x, np.zeros(10, dtype=np.int64)
    with h5py.File(folder / "noy.h5", "w") as f:
        f["x"] = np.zeros((10, 3))
    (folder / "badimport.py").write_text("import os\nraise RuntimeError('cannot find the cluster config')\n")
    with h5py.File(folder / "huge.h5", "w") as f:  # a few KiB declaring 1e9 rows (238 GiB of float32)
        f.create_dataset("x", shape=(10**9, 64), dtype="f4", chunks=(1024, 64))
        f.create_dataset("y", shape=(10**9,), dtype="i8", chunks=(1024,))
    (folder / "typo.toml").write_text("[eigen]\ntopk = 3\n")
    (folder / "corrupt.pt").write_bytes(b"\x80\x04 definitely not a checkpoint")


def cases(folder: Path) -> list[tuple[str, list[str], str]]:
    """(name, argv, expected message); each case writes to a folder of its own, so no case meets
    another run's results (a finished run in the folder is itself refused, before other checks)."""
    listed = _listed(folder)
    return [(name, [str(folder / f"out-{i}") if arg == str(folder / "out") else arg for arg in argv], message)
            for i, (name, argv, message) in enumerate(listed)]


def _listed(folder: Path) -> list[tuple[str, list[str], str]]:
    out = ["--output", str(folder / "out")]
    user = ["--model", "usermod:make_model", "--data", "usermod:make_data", "--loss", "mse", *out]
    return [
        ("unknown model", ["run", "--model", "resnet9000", *out], "unknown model 'resnet9000'"),
        ("unknown data", ["run", "--data", "imagenet", *out], "unknown data 'imagenet'"),
        ("unknown loss", ["run", "--loss", "hinge", *out], "hessian.loss = 'hinge' is not one of"),
        ("missing data file", ["run", "--data", str(folder / "missing.h5"), *out], "does not exist"),
        ("hdf5 wrong shapes", ["run", "--data", str(folder / "shapes.h5"), *out], "'y' has shape (7,)"),
        ("hdf5 without y", ["run", "--data", str(folder / "noy.h5"), *out], "no dataset 'y'"),
        ("hdf5 with NaN", ["run", "--data", str(folder / "nan.h5"), *out], "NaN or infinite values (first at sample 8)"),
        ("malformed callable", ["run", "--model", "usermod:", *out], "not of the form module:callable"),
        ("module missing", ["run", "--model", "nosuchmod:make", *out], "cannot import module 'nosuchmod'"),
        ("attribute missing", ["run", "--model", "usermod:nope", *out], "has no attribute 'nope'"),
        ("not callable", ["run", "--model", "usermod:not_callable", *out], "is not callable"),
        ("all parameters frozen", ["run", "--model", "usermod:frozen_model", "--data", "usermod:make_data",
                                   "--loss", "mse", *out], "no parameters that require gradients"),
        ("config typo", ["run", "--config", str(folder / "typo.toml"), *out], "did you mean 'eigen.top_k'"),
        ("set typo", ["run", "--set", "eigen.tolerance=1e-3", *out], "did you mean 'eigen.tol'"),
        ("missing config", ["run", "--config", str(folder / "nope.toml"), *out], "does not exist"),
        ("missing weights", ["run", "--weights", str(folder / "nope.pt"), *out], "weights file"),
        ("corrupt weights", ["run", "--weights", str(folder / "corrupt.pt"), *out], "cannot be loaded safely"),
        ("float labels for cross_entropy", ["run", "--model", "usermod:make_model", "--data", "usermod:make_data",
                                            *out], "integer class labels"),
        ("input width mismatch", ["run", "--model", "usermod:make_model", "--data", "usermod:make_wide_data",
                                  "--loss", "mse", "--output", str(folder / "wide")],
         "cannot process a data sample of shape (8,)"),
        ("top_k too large", ["run", *user, "--top-k", "45"], "exceeds the number of parameters"),
        ("bad flag value", ["run", "--top-k", "many", *out], "invalid int value"),
        ("unknown flag", ["run", "--topk", "3", *out], "unrecognized arguments"),
        ("unknown task", ["run", "--set", 'tasks=["eigen", "spectrum"]', *out], "tasks = 'spectrum' is not one of"),
        ("unknown trace method", ["run", "--trace", "--trace-method", "hutch", *out],
         "trace.method = 'hutch' is not one of"),
        ("power iteration for the smallest end", ["run", "--eigen-method", "power", "--which", "smallest", *out],
         "needs eigen.method = 'lanczos'"),
        ("Lanczos steps below k", ["run", "--top-k", "5", "--maxiter", "3", *out], "eigen.maxiter = 3 is below"),
        ("trace budget too small", ["run", "--trace", "--trace-matvecs", "3", *out], "trace.matvecs = 3 is too small"),
        ("xtrace cannot stop early", ["run", "--trace", "--trace-method", "xtrace", "--set", "trace.rtol=0.01", *out],
         "trace.rtol needs a method that can stop early"),
        ("density width out of range", ["run", "--density", "--set", "density.sigma=2", *out],
         "density.sigma is a fraction"),
        ("non-deterministic model", ["run", "--model", "usermod:noisy_model", "--data", "usermod:make_data",
                                     "--loss", "mse", *out], "not repeatable"),
        ("validate a model too large", ["validate", *user, "--max-params", "10"], "more than --max-params 10"),
        ("factory raises", ["run", "--model", "usermod:raising_model", *out],
         "usermod:raising_model raised ZeroDivisionError: division by zero (usermod.py:"),
        ("module raises on import", ["run", "--model", "badimport:make", *out],
         "badimport:make raised RuntimeError: cannot find the cluster config while importing it (badimport.py:2)"),
        ("data callable returns (1, 2)", ["run", "--data", "usermod:int_pair", *out], "got (int, int)"),
        ("labels of 1e12", ["run", "--data", "usermod:huge_labels", *out], "found labels in [0, 1,000,000,000,000]"),
        ("negative labels", ["run", "--data", "usermod:negative_labels", *out], "found labels in [-5, 0]"),
        ("token inputs of 1e12", ["run", "--model", "transformer", "--data", "usermod:huge_tokens", *out],
         "found tokens in [0, 1,000,000,000,000]"),
        ("float labels of 1e12", ["run", "--data", "usermod:float_huge_labels", *out], "needs integer class labels"),
        ("hdf5 declaring 1e9 rows", ["run", "--data", str(folder / "huge.h5"), "--set", "data.max_gb=4", *out],
         "declares 1,000,000,000 samples"),
        ("hdf5 declaring 1e9 rows, free memory", ["run", "--data", str(folder / "huge.h5"), *out],
         "allowed (data.max_gb, or the rank's free memory"),
        ("one SLQ step", ["run", "--density", "--steps", "1", *out], "density.steps = 1 is too few"),
        ("tolerance nan", ["run", "--tol", "nan", *out], "'eigen.tol' must be a finite number, got nan"),
        ("NaN weights", ["run", "--model", "usermod:nan_weights", "--data", "usermod:make_data", "--loss", "mse",
                         *out], "parameter '2.weight' holds 1 NaN or infinite value(s) of 12"),
        ("NaN weights, unchecked", ["run", "--model", "usermod:nan_weights", "--data", "usermod:make_data", "--loss",
                                    "mse", "--set", "hessian.check=false", *out],
         "every Hessian-vector product at these weights is NaN"),
        ("tolerance 1e300", ["run", "--top-k", "2", "--tol", "1e300", *out], "eigen.tol = 1e+300 is outside [0, 0.02]"),
        ("tolerance 0.5", ["run", "--tol", "0.5", *out], "eigen.tol = 0.5 is outside [0, 0.02]"),
        ("tolerance just too loose", ["run", "--tol", "0.021", *out], "certifies nothing"),
        ("power tolerance 0.5", ["run", "--eigen-method", "power", "--which", "largest_magnitude", "--tol", "0.5",
                                 *out], "eigen.tol = 0.5 is outside"),
        ("negative tolerance", ["run", "--tol=-1e-9", *out], "eigen.tol = -1e-09 is outside [0, 0.02]"),
        ("trace rtol inf", ["run", "--trace", "--set", "trace.rtol=inf", *out], "'trace.rtol' must be a finite number"),
        ("learning rate nan", ["run", "--set", "train.lr=nan", *out], "'train.lr' must be a finite number"),
        ("watchdog timeout 0", ["run", "--set", "comm.timeout_s=0", *out], "comm.timeout_s must be > 0"),
        ("unknown backend", ["--backend", "bogus", "run", *out], "unknown communication backend 'bogus'"),
    ]
