#!/usr/bin/env bash
# The GPU path, run: one script for a machine with one GPU and no internet, under 10 minutes.
#
#   bash benchmarks/gpu_check.sh          (from the repository root; OUT=DIR also writes DIR/gpu_check.txt)
#
# Steps (each under `timeout`; a failure is reported and the script goes on):
#   1. H·v on the device against the CPU float64 product (digits MLP, float64 on both sides)
#   2. the default job: mpirun -n 2 python -m hpcspec, in a temporary folder
#   3. ResNet-20 top-5 + trace + density under mpirun -n 2, both ranks sharing the device
#   4. HVP ÷ gradient of ResNet-20 (batch 256) in float32, bfloat16 and float64, kept graphs
# Without a GPU (no nvidia-smi or torch.cuda unavailable) the same steps run on the CPU, smaller.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
PYTHON=${PYTHON:-python}
SUMMARY=$(mktemp)
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH" "$SUMMARY"' EXIT
started=$SECONDS

say() { echo "$*" | tee -a "$SUMMARY"; }

if command -v nvidia-smi >/dev/null 2>&1 && "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    DEVICE=cuda
    say "device: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
    BATCH=256; WIDTH=16; REPEATS=5; T_JOB=240; T_RESNET=300; T_RATIO=240
    RESNET_SIZES=(--top-k 5 --trace --density --probes 4 --steps 40)
else
    DEVICE=cpu
    say "device: cpu (no nvidia-smi or torch.cuda unavailable): the same steps, smaller"
    BATCH=32; WIDTH=4; REPEATS=3; T_JOB=300; T_RESNET=300; T_RATIO=240
    RESNET_SIZES=(--top-k 5 --trace --density --trace-matvecs 8 --probes 2 --steps 20 --set eigen.maxiter=40)
fi
say "torch $("$PYTHON" -c 'import torch; print(torch.__version__)'), $(mpirun --version 2>/dev/null | head -1)"

# step NAME SECONDS COMMAND...: run it under timeout, keep its output, report its end and time.
step() {
    local name=$1 limit=$2; shift 2
    local log="$SCRATCH/$name.log" t0=$SECONDS rc
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
    rc=$?
    case $rc in
        0) say "[$name] ok in $((SECONDS - t0)) s" ;;
        124|137) say "[$name] FAILED: over its ${limit} s limit"; tail -5 "$log" | sed 's/^/    /' ;;
        *) say "[$name] FAILED: exit $rc after $((SECONDS - t0)) s"; tail -5 "$log" | sed 's/^/    /' ;;
    esac
    return 0
}

step hv 120 "$PYTHON" benchmarks/gpu_check.py hv --device "$DEVICE"
grep -h "max relative difference" "$SCRATCH/hv.log" | sed 's/^/  /' | tee -a "$SUMMARY"

mkdir -p "$SCRATCH/default"
step default_job "$T_JOB" bash -c "cd '$SCRATCH/default' && mpirun --oversubscribe -n 2 '$PYTHON' -m hpcspec"
grep -hE "thread\(s\) per rank|finished in|top eigenvalues|trace" "$SCRATCH/default_job.log" | grep -v "data pass" \
    | sed 's/^/  /' | head -8 | tee -a "$SUMMARY"

step resnet20_job "$T_RESNET" mpirun --oversubscribe -n 2 "$PYTHON" -m hpcspec run --model resnet20 --data digits \
    --set "model.width=$WIDTH" --dtype float32 "${RESNET_SIZES[@]}" --set density.plot=false \
    --output "$SCRATCH/resnet20"
grep -hE "thread\(s\) per rank|model resnet20|finished in" "$SCRATCH/resnet20_job.log" | sed 's/^/  /' | head -6 \
    | tee -a "$SUMMARY"

step hvp_ratio "$T_RATIO" "$PYTHON" benchmarks/gpu_check.py ratio --device "$DEVICE" --batch "$BATCH" --repeats "$REPEATS"
grep -h "HVP / gradient" "$SCRATCH/hvp_ratio.log" | sed 's/^/  /' | tee -a "$SUMMARY"

say "total: $((SECONDS - started)) s on $DEVICE"
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT" && cp "$SUMMARY" "$OUT/gpu_check.txt" && cp "$SCRATCH"/*.log "$OUT/" 2>/dev/null
    echo "summary: $OUT/gpu_check.txt"
fi
