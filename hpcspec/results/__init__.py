"""Layer 7, what a run leaves behind: results.h5, summary.json, the console summary, plots, provenance."""
