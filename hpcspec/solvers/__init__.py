"""Spectral solvers: pure numerics on a linear operator (no files, no printing, no CLI)."""

from .lanczos import LanczosResult, lanczos

__all__ = ["LanczosResult", "lanczos"]
