"""Layer 5, the analyses: the task runner (eigen, trace, density) and what follows the eigenpairs (gradient overlap, loss landscape), and validation against a dense Hessian."""
