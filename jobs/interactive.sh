#!/usr/bin/env bash
# Ctrl-C-safe interactive launch:   jobs/interactive.sh mpirun -n 4 python -m hpcspec run ... [--resume]
#
# Open MPI 5's mpirun answers SIGINT (Ctrl-C) and SIGTERM by killing its ranks: SIGCONT at once,
# SIGTERM 0.25 s later, SIGKILL 0.25 s after that (measured; docs/cluster.md, "Ctrl-C under mpirun"), too soon to commit a
# checkpoint, and the ranks sit in process groups of their own, so the terminal's Ctrl-C never reaches
# them. This script runs the launcher in a session of its own, so Ctrl-C reaches only this script,
# which passes it on as SIGUSR1: mpirun forwards USR1 to every rank, hpcspec finishes the iteration
# in flight, commits a checkpoint and exits 3 (continue with --resume). A second Ctrl-C sends TERM
# (the ranks are killed at once; --resume continues from the last commit).
set -u
if [ "$#" -eq 0 ]; then
    echo "usage: $0 mpirun -n R python -m hpcspec run ..." >&2
    exit 2
fi
setsid "$@" &
pid=$!
asked=0
forward() {
    asked=$((asked + 1))
    if [ "$asked" -eq 1 ]; then
        echo "interactive.sh: stopping at the next iteration boundary (checkpoint, exit 3); Ctrl-C again to kill" >&2
        kill -USR1 "$pid" 2>/dev/null
    else
        kill -TERM "$pid" 2>/dev/null
    fi
}
trap forward INT TERM
code=0
while kill -0 "$pid" 2>/dev/null; do
    wait "$pid"
    code=$?
done
exit "$code"
