"""The package version: one place, read by setup.cfg, the provenance of every output file and ``info``."""

__version__ = "0.1.0"
