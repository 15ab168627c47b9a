#!/usr/bin/env bash
# The default job (python -m hpcspec) under mpirun -n 2, in a fresh empty folder: time the two
# cases as whole processes, alternating (e.g. /usr/bin/time, several runs each), to compare the
# thread default with every rank taking all cores (docs/performance.md, "Threads, measured").
# usage: threads_default.sh default   -> OMP_NUM_THREADS unset: the new default (cores / ranks per node)
#        threads_default.sh all       -> OMP_NUM_THREADS=2: every rank takes both cores (the old default)
set -eu
unset OMP_NUM_THREADS MKL_NUM_THREADS
[ "$1" = all ] && export OMP_NUM_THREADS=2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
dir=$(mktemp -d /tmp/thr.XXXX); cd "$dir"
mpirun --oversubscribe -n 2 python -m hpcspec > out.txt 2> err.txt
grep -m1 'thread(s) per rank' err.txt | sed 's/.*;//' >&2 || true
cd /; rm -rf "$dir"
