#!/usr/bin/env bash
# PyHessian's architecture study (Yao, Gholami, Keutzer & Mahoney 2020, §4): ResNet-20 and ResNet-56,
# with and without BatchNorm, trained on CIFAR-10; for each trained model the top Hessian
# eigenvalue (Lanczos, with its residual as error bar), the trace (with its standard error) and the
# eigenvalue density (SLQ, density.png), then one comparison table.
#
#   CIFAR=/path/to/cifar-10-batches-py bash jobs/reproduce_pyhessian.sh
#
# Inside a batch allocation set LAUNCH to the site's launcher ("srun", "mpirun -n 64"). Every step
# runs with --resume, so rerunning the script after a walltime kill carries on where it stopped:
# finished trainings and analyses are skipped, an interrupted one continues from its checkpoint.
#
# Environment:
#   CIFAR        folder with CIFAR-10's "python version" batches (data_batch_1..5, test_batch); required
#                unless DATA names another data set (e.g. DATA=digits: the built-in 8×8 digits, for a quick look)
#   OUT          output folder (default pyhessian-out): OUT/<model>-<bn|nobn>/{train,analysis}, OUT/comparison.md
#   LAUNCH       launcher prefix (default "mpirun -n $RANKS", RANKS default 2)
#   PYTHON       default "python"
#   MODELS       default "resnet20 resnet56" (any zoo ResNet: resnet20/32/38/56)
#   EPOCHS       training epochs (default 180, as PyHessian); STEPS > 0 trains that many steps instead
#   LR           initial learning rate (default 0.1; SGD, momentum 0.9, weight decay 5e-4, step schedule)
#   MODEL_ARGS   flags both training and analysis take (e.g. "--set model.width=16")
#   TRAIN_ARGS   extra flags for "hpcspec train"; RUN_ARGS extra flags for "hpcspec run"
#                (default analysis: --top-k 1 --trace --density, i.e. 100 + 4×80 products)
set -euo pipefail

if [ -z "${DATA:-}" ]; then
  if [ -z "${CIFAR:-}" ]; then
    echo "reproduce_pyhessian: set CIFAR to the folder holding the CIFAR-10 python batches (or DATA=digits)" >&2
    exit 2
  fi
  if [ ! -d "$CIFAR" ]; then
    echo "reproduce_pyhessian: CIFAR folder '$CIFAR' does not exist" >&2
    exit 2
  fi
  DATA=cifar10:$CIFAR
fi
OUT=${OUT:-pyhessian-out}
RANKS=${RANKS:-2}
LAUNCH=${LAUNCH:-mpirun -n $RANKS}
PYTHON=${PYTHON:-python}
MODELS=${MODELS:-resnet20 resnet56}
EPOCHS=${EPOCHS:-180}
STEPS=${STEPS:-0}
LR=${LR:-0.1}
MODEL_ARGS=${MODEL_ARGS:-}
TRAIN_ARGS=${TRAIN_ARGS:-}
RUN_ARGS=${RUN_ARGS:-}

if [ "$STEPS" -gt 0 ]; then length=(--steps "$STEPS"); else length=(--epochs "$EPOCHS"); fi

results=()
for model in $MODELS; do
  for bn in true false; do
    if [ "$bn" = true ]; then name=$model-bn; else name=$model-nobn; fi
    echo "reproduce_pyhessian: $name: training" >&2
    # shellcheck disable=SC2086  # LAUNCH and the *_ARGS are word lists on purpose
    $LAUNCH $PYTHON -m hpcspec train --model "$model" --data "$DATA" --set "model.batchnorm=$bn" \
      $MODEL_ARGS "${length[@]}" --lr "$LR" --set train.schedule=step --output "$OUT/$name/train" --resume \
      $TRAIN_ARGS
    weights=$(find "$OUT/$name/train" -maxdepth 1 -name 'step_*.pt' | sort | tail -n 1)
    if [ -z "$weights" ]; then
      echo "reproduce_pyhessian: training $name saved no weights in $OUT/$name/train" >&2
      exit 1
    fi
    echo "reproduce_pyhessian: $name: analysing $weights" >&2
    # shellcheck disable=SC2086
    $LAUNCH $PYTHON -m hpcspec run --model "$model" --data "$DATA" --set "model.batchnorm=$bn" \
      $MODEL_ARGS --weights "$weights" --top-k 1 --trace --density --output "$OUT/$name/analysis" --resume \
      $RUN_ARGS
    results+=("$OUT/$name/analysis/results.h5")
  done
done

$PYTHON -m hpcspec report "${results[@]}" --table "$OUT/comparison.md"
echo "reproduce_pyhessian: table in $OUT/comparison.md; density plots in $OUT/*/analysis/density.png" >&2
