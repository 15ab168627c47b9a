"""Layer 2, the problem: data sets and their shards, models, losses, parameter layouts, user callables."""
