#!/bin/bash
# PBS Pro / Torque script for hpcspec. Submit: qsub -v CONFIG=job.toml jobs/pbs.sh
#PBS -N hpcspec
#PBS -l select=2:ncpus=32:mpiprocs=4
#PBS -l walltime=02:00:00
#PBS -j oe
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"

# Site specific: load the MPI that mpi4py was built against, and the Python environment.
# module load openmpi
# source "$HOME/venvs/hpcspec/bin/activate"

CONFIG=${CONFIG:-jobs/example.toml}
RANKS=$(wc -l < "${PBS_NODEFILE:-/dev/null}" || echo 1)
RANKS=${RANKS:-1}
THREADS=${THREADS:-8}
export OMP_NUM_THREADS=$THREADS

status=0
mpirun -n "$RANKS" python -m hpcspec run --config "$CONFIG" --set "threads=$THREADS" || status=$?
case $status in
  0) echo "hpcspec: done" ;;
  2) echo "hpcspec: bad input or configuration; see the error line above" >&2 ;;
  *) echo "hpcspec: crashed with exit code $status" >&2 ;;
esac
exit "$status"
