"""matplotlib for the plot modules: imported only when a figure is drawn, on the non-interactive
Agg backend, and every figure saved through :func:`hpcspec.files.atomic.atomic_path` (never a
partial file under the final name; a full disk is one :class:`~hpcspec.files.atomic.WriteFailed`
line). One home for both, so :mod:`~hpcspec.results.plots` and :mod:`~hpcspec.results.sweepplots`
share them instead of one borrowing the other's private helper.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..files.atomic import atomic_path


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend, imported only when a figure is drawn."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib: pip install matplotlib (or, from hpcspec's source folder, "
                          "pip install '.[plots]')") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: Path | str) -> None:
    """Write ``figure`` to ``path`` (format from the suffix, PNG when none) at 150 dpi under a
    temporary name, then rename; the figure is closed whether or not the write succeeds."""
    path = Path(path)
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format=path.suffix.lstrip(".").lower() or "png", dpi=150)
    finally:
        pyplot().close(figure)
