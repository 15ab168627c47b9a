"""Layer 4, the Hessian of the mean loss over all shards as a linear operator, its dense float64 reference, and the checks made before a run."""
