"""Layer 1, the SPMD machinery: communicators (MPI, torch.distributed, Horovod, one process), the collective watchdog, sharded vector spaces, devices, logging. Knows nothing of networks."""
