"""Run under mpirun by test_comm_collectives.py: every collective of the world communicator
checked against numpy (tests/support/collectives.py), with uneven row bounds and empty shards.

Usage: python mpi_collectives.py OUT.json [BACKEND]. Rank 0 writes the checks that passed and the
world's shape; a failed check prints its traceback and aborts the whole world (exit 1), so that a
rank waiting in a later collective does not hang the test.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from collectives import run_checks  # noqa: E402

from hpcspec.parallel.comm import MPICommunicator, world  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    comm = world(sys.argv[2] if len(sys.argv) > 2 else "auto")
    try:
        done = run_checks(comm, float32_refused=isinstance(comm, MPICommunicator))
    except Exception:
        traceback.print_exc()
        sys.stderr.flush()
        comm.abort(1)
        raise
    if comm.rank == 0:
        out.write_text(json.dumps({"size": comm.size, "checks": done, "backend": type(comm).__name__}))
    close = getattr(comm, "close", None)  # torch.distributed: leave the process group together
    if close is not None:
        close()


if __name__ == "__main__":
    main()
