#!/bin/bash
# PBS Pro / Torque script for a restartable hpcspec run.
#
#   qsub -v CONFIG=job.toml jobs/pbs.sh
#   qsub -v CONFIG=job.toml,LEAD=300,HPCSPEC_ARGS="--set eigen.top_k=20" jobs/pbs.sh
#
# The run always passes --resume: it continues from the newest committed checkpoint under
# <output>/checkpoints/ (or starts afresh, or exits 0 at once if the run already finished). PBS has
# no "signal me before the walltime" option, so a timer in this script sends USR1 LEAD seconds
# before the walltime ends; hpcspec then finishes the iteration in flight, commits a checkpoint and
# exits 3, and the job is resubmitted. Exit codes of hpcspec: 0 done; 2 bad input or configuration
# (never resubmitted); 3 stopped after a clean checkpoint (resubmitted); anything else a crash (not
# resubmitted: submit this script again by hand and it resumes from the last checkpoint).
#
# Environment (qsub -v NAME=value,...; values cannot contain commas):
#   CONFIG        job file (default jobs/example.toml)
#   COMMAND       the hpcspec subcommand: run (default), train (SGD, saving step_*.pt) or track
#                 (the estimators on every saved step: put its CKPT_DIR among the extra flags);
#                 each stops on USR1 with a checkpoint (exit 3) and continues with --resume
#   LEAD          seconds before the walltime to stop (default 180). Must exceed the longest
#                 iteration plus one checkpoint's write time (hpcspec logs seconds and bytes of
#                 each checkpoint), with a margin.
#   WALLTIME      override the walltime: seconds or [[DD:]HH:]MM:SS (default: Torque's
#                 PBS_WALLTIME, else Resource_List.walltime from "qstat -f")
#   RANKS         MPI ranks (default: lines of $PBS_NODEFILE, one per mpiprocs slot)
#   THREADS       torch threads per rank (default: NCPUS / ranks per node; 0 = hpcspec decides)
#   LAUNCHER      default "mpirun"; may carry options, e.g. "mpirun --bind-to none"
#   PYTHON        default "python"
#   HPCSPEC_ARGS  extra "hpcspec run" flags, split on spaces
#   RERUN_MODE    "qsub" (default): submit this script again, to start after this job ends;
#                 "qrerun": requeue this very job (most sites allow that to operators only)
#   QSUB_ARGS     extra options for the resubmitting qsub, split on spaces
#   JOB_SCRIPT    script to resubmit (default $0, the copy PBS runs, readable while the job runs)
#   MAX_RESTARTS  resubmit at most this many times (default 20), so a job that cannot make
#                 progress does not loop forever
#   HPCSPEC_RESTARTS  restarts so far; set by the resubmission, not by hand
#
#PBS -N hpcspec
#PBS -l select=2:ncpus=32:mpiprocs=4
#PBS -l walltime=02:00:00
#PBS -j oe
#PBS -r y

# Not "set -e" around the launcher: a non-zero "wait" must be inspected, not end the script.
set -uo pipefail
cd "${PBS_O_WORKDIR:-.}" || exit 2

log() { echo "hpcspec job: $*" >&2; }

# Traps first, so that a stop request during the set-up below is not lost (nor kills this shell).
launcher_pid=
stop_requested=0
signalled=0
# Ask hpcspec to checkpoint and stop. Always as USR1, also when this shell got TERM (qdel, or the
# walltime): Open MPI's mpirun answers TERM by sending TERM to the ranks and SIGKILL about 0.25 s
# later (and exits 1, not the ranks' status), which leaves no time for a checkpoint, while it
# passes USR1 on to every rank unchanged. At the walltime PBS signals mpirun directly too, which
# is why the timer stops the run LEAD seconds earlier.
# shellcheck disable=SC2317  # called from the traps
on_signal() {
  signalled=1
  stop_requested=1
  log "got SIG$1: asking hpcspec to checkpoint and stop"
  if [ -n "$launcher_pid" ]; then
    kill -USR1 "$launcher_pid" 2>/dev/null || true
  fi
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM

# Site specific: load the MPI that mpi4py was built against, and the Python environment.
# module load openmpi
# source "$HOME/venvs/hpcspec/bin/activate"
# On Lustre/NFS without working POSIX locks HDF5 cannot lock its files; switch locking off here
# or with [checkpoint] hdf5_locking = "false" in the job file:
# export HDF5_USE_FILE_LOCKING=FALSE

# The optional variables given to this job, passed on unchanged when it is resubmitted (so RANKS
# and THREADS, unless given, follow the new job's nodes).
given_vars=
for name in WALLTIME RANKS THREADS LAUNCHER PYTHON HPCSPEC_ARGS QSUB_ARGS JOB_SCRIPT; do
  if [ -n "${!name:-}" ]; then
    given_vars+=",$name=${!name}"
  fi
done

CONFIG=${CONFIG:-jobs/example.toml}
COMMAND=${COMMAND:-run}
case "$COMMAND" in
  run|train|track) ;;
  *) log "COMMAND must be run, train or track, not '$COMMAND'"; exit 2 ;;
esac
LEAD=${LEAD:-180}
MAX_RESTARTS=${MAX_RESTARTS:-20}
RERUN_MODE=${RERUN_MODE:-qsub}
JOB_SCRIPT=${JOB_SCRIPT:-$0}
python=${PYTHON:-python}
read -r -a launcher <<< "${LAUNCHER:-mpirun}"
read -r -a extra_args <<< "${HPCSPEC_ARGS:-}"
read -r -a qsub_args <<< "${QSUB_ARGS:-}"
# Empty arrays are expanded as ${a[@]+"${a[@]}"} below: bash before 4.4 calls "${a[@]}" unbound.

qstat_f=
if [ -n "${PBS_JOBID:-}" ] && command -v qstat > /dev/null; then
  qstat_f=$(qstat -f "$PBS_JOBID" 2> /dev/null) || qstat_f=
fi
# Value of one "name = value" attribute of "qstat -f", empty if absent.
qstat_field() { awk -v name="$1" '$1 == name && $2 == "=" { print $3; exit }' <<< "$qstat_f"; }

# Seconds from "S", "MM:SS", "HH:MM:SS" or "DD:HH:MM:SS"; empty if malformed.
to_seconds() {
  local IFS=: fields field days=0 total=0
  read -r -a fields <<< "$1"
  [ "${#fields[@]}" -ge 1 ] && [ "${#fields[@]}" -le 4 ] || return 0
  for field in "${fields[@]}"; do
    [[ $field =~ ^[0-9]+$ ]] || return 0
  done
  if [ "${#fields[@]}" -eq 4 ]; then
    days=$((10#${fields[0]}))
    fields=("${fields[@]:1}")
  fi
  for field in "${fields[@]}"; do
    total=$((total * 60 + 10#$field))   # 10#: "08" is decimal, not octal
  done
  echo $((days * 86400 + total))
}

restarts=${HPCSPEC_RESTARTS:-}
if [ -z "$restarts" ]; then
  # qrerun keeps the job id and its environment; PBS Pro counts the runs instead.
  run_count=$(qstat_field run_count)
  restarts=$(( ${run_count:-1} > 0 ? ${run_count:-1} - 1 : 0 ))
fi

if [ -z "${RANKS:-}" ]; then
  RANKS=1
  if [ -r "${PBS_NODEFILE:-}" ]; then
    RANKS=$(wc -l < "$PBS_NODEFILE")
  fi
fi
if [ -z "${THREADS:-}" ]; then
  THREADS=0
  if [ -n "${NCPUS:-}" ] && [ -r "${PBS_NODEFILE:-}" ]; then
    nodes=$(sort -u "$PBS_NODEFILE" | wc -l)
    per_node=$(( (RANKS + nodes - 1) / nodes ))
    THREADS=$(( NCPUS / per_node > 0 ? NCPUS / per_node : 1 ))
  fi
fi
if [ "$THREADS" -gt 0 ]; then
  export OMP_NUM_THREADS=$THREADS
fi

# Walltime left, in seconds (empty: unknown, no timer).
walltime_source=WALLTIME
walltime=${WALLTIME:-}
if [ -z "$walltime" ] && [ -n "${PBS_WALLTIME:-}" ]; then
  walltime=$PBS_WALLTIME walltime_source=PBS_WALLTIME
fi
used=0
if [ -z "$walltime" ]; then
  walltime=$(qstat_field Resource_List.walltime) walltime_source="qstat -f"
  used=$(to_seconds "$(qstat_field resources_used.walltime)")
fi
remaining=
if [ -n "$walltime" ]; then
  seconds=$(to_seconds "$walltime")
  if [ -z "$seconds" ]; then
    log "cannot read walltime '$walltime' from $walltime_source: no stop before the walltime"
  else
    remaining=$((seconds - ${used:-0}))
  fi
else
  log "walltime unknown (set WALLTIME): no stop before the walltime"
fi

timer_pid=
main_pid=$$
if [ -n "$remaining" ] && [ "$stop_requested" -eq 0 ]; then
  delay=$((remaining - LEAD))
  if [ "$delay" -le 0 ]; then
    log "walltime left ${remaining} s is not more than LEAD=${LEAD} s: no stop before the walltime"
  else
    log "walltime ${walltime} (from $walltime_source): stopping in ${delay} s, ${LEAD} s before its end"
    # Signals this shell, whose trap forwards to the launcher; the subshell kills its sleep when
    # stopped, so nothing is left behind, and ignores USR1 (qsig may signal every process).
    # A TERM between starting the sleep and knowing its PID is only noted, then acted on, so the
    # sleep can never outlive the timer (nor hold this job's output open).
    (
      trap '' USR1
      stopped=0
      trap 'stopped=1' TERM
      sleep "$delay" > /dev/null 2>&1 & sleeper=$!
      trap 'kill "$sleeper" 2>/dev/null; wait "$sleeper"; exit 0' TERM
      if [ "$stopped" -eq 1 ]; then
        kill "$sleeper" 2>/dev/null
        wait "$sleeper"
        exit 0
      fi
      wait "$sleeper" || exit 0
      log "walltime ends in ${LEAD} s"
      kill -USR1 "$main_pid" 2>/dev/null
    ) &
    timer_pid=$!
  fi
fi
stop_timer() {
  if [ -n "$timer_pid" ]; then
    kill "$timer_pid" 2>/dev/null
    wait "$timer_pid" 2>/dev/null
    timer_pid=
  fi
  return 0
}
trap stop_timer EXIT

log "job ${PBS_JOBID:-?}, restart $restarts, $RANKS ranks, config $CONFIG, threads $THREADS"
if [ "$stop_requested" -eq 1 ]; then
  # Stopped before hpcspec started (a USR1 then would kill ranks that have no handler yet):
  # nothing changed since the last checkpoint, so this is a clean stop.
  log "stop requested before the start: not starting hpcspec"
  status=3
else
  "${launcher[@]}" -n "$RANKS" "$python" -m hpcspec "$COMMAND" --config "$CONFIG" --resume \
    --set "threads=$THREADS" ${extra_args[@]+"${extra_args[@]}"} &
  launcher_pid=$!
  # A signal in the instant between the launch and knowing its PID: pass it on.
  if [ "$stop_requested" -eq 1 ]; then
    kill -USR1 "$launcher_pid" 2>/dev/null || true
  fi

  # "wait" returns (status > 128) as soon as a trapped signal arrives, while the launcher still
  # runs: wait again until it has really exited, and keep its own exit status.
  while :; do
    signalled=0
    status=0
    wait "$launcher_pid" || status=$?
    if [ "$signalled" -eq 1 ] && [ "$status" -gt 128 ]; then
      continue
    fi
    break
  done
fi
stop_timer
trap - USR1 TERM

restart_by_hand="submit the same script again (qsub -v CONFIG=$CONFIG ... jobs/pbs.sh); it resumes from the last checkpoint"
case $status in
  0)
    log "done"
    exit 0 ;;
  2)
    log "bad input or configuration, not resubmitted; see the error above"
    exit 2 ;;
  3)
    if [ "$restarts" -ge "$MAX_RESTARTS" ]; then
      log "stopped after a checkpoint, but $restarts restarts reached MAX_RESTARTS=$MAX_RESTARTS: not resubmitted; $restart_by_hand"
      exit 3
    fi
    if [ -z "${PBS_JOBID:-}" ]; then
      log "stopped after a checkpoint; not under PBS, so not resubmitted; $restart_by_hand"
      exit 3
    fi
    next=$((restarts + 1))
    if [ "$RERUN_MODE" = qrerun ]; then
      log "stopped after a checkpoint: qrerun $PBS_JOBID (restart $next of at most $MAX_RESTARTS)"
      # PBS ends this job right after the rerun request, so everything worth logging comes before.
      if qrerun "$PBS_JOBID"; then
        exit 0
      fi
      log "qrerun failed; $restart_by_hand"
      exit 3
    fi
    # The same variables again, and the restart counter for the MAX_RESTARTS guard.
    vars="CONFIG=$CONFIG,LEAD=$LEAD,MAX_RESTARTS=$MAX_RESTARTS,RERUN_MODE=$RERUN_MODE,HPCSPEC_RESTARTS=$next$given_vars"
    log "stopped after a checkpoint: resubmitting (restart $next of at most $MAX_RESTARTS)"
    # afterany: the new job starts only once this one has ended, never beside it.
    if new_id=$(qsub -W "depend=afterany:$PBS_JOBID" -v "$vars" ${qsub_args[@]+"${qsub_args[@]}"} "$JOB_SCRIPT"); then
      log "resubmitted as $new_id"
      exit 0
    fi
    log "qsub failed; $restart_by_hand"
    exit 3 ;;
  *)
    log "crashed with exit code $status, not resubmitted; $restart_by_hand"
    exit "$status" ;;
esac
