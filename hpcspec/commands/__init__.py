"""Layer 8, one module per command of the CLI (run, train, track, report, demo), over the library."""
