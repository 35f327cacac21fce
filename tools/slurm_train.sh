#!/usr/bin/env bash
# Training under Slurm (the OpenMMLab form): srun starts one task per GPU, train.py reads SLURM_*.
#   [GPUS=8 GPUS_PER_NODE=8 CPUS_PER_TASK=8 SRUN_ARGS=...] \
#     bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG [WORK_DIR] [train.py args...]
# A sweep file (`sweep = dict(...)`) submits its grid as one job array instead (tools/sweep.py
# --slurm): one array task per point, each on GPUS GPUs in its own work dir; add --dry-run to
# print the sbatch command and the points' commands without submitting.
# Nothing site-specific is set here: pass NCCL variables through the environment, accounts,
# QoS or constraints through SRUN_ARGS.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: [GPUS=8 GPUS_PER_NODE=8 CPUS_PER_TASK=8 SRUN_ARGS=...] $0 PARTITION JOB_NAME" \
       "CONFIG [WORK_DIR] [train.py args...]" >&2
  exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
shift 3
WORK_DIR=
if [ $# -gt 0 ] && [[ $1 != -* ]]; then
  WORK_DIR=$1
  shift
fi
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-$(( GPUS < 8 ? GPUS : 8 ))}
CPUS_PER_TASK=${CPUS_PER_TASK:-8}
SRUN_ARGS=${SRUN_ARGS:-}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if grep -qE '^sweep *=' "$CONFIG" 2>/dev/null; then
  exec python "$ROOT/tools/sweep.py" "$CONFIG" --slurm "$PARTITION" --job-name "$JOB_NAME" \
    --gpus "$GPUS" --gpus-per-node "$GPUS_PER_NODE" --cpus-per-task "$CPUS_PER_TASK" \
    --srun-args="$SRUN_ARGS" ${WORK_DIR:+--work-dir "$WORK_DIR"} "$@"
fi
# shellcheck disable=SC2086  # SRUN_ARGS is a list of options
srun -p "$PARTITION" --job-name="$JOB_NAME" --gres=gpu:"$GPUS_PER_NODE" \
  --ntasks="$GPUS" --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK" \
  --kill-on-bad-exit=1 $SRUN_ARGS \
  python -u "$ROOT/tools/train.py" "$CONFIG" --launcher slurm ${WORK_DIR:+--work-dir "$WORK_DIR"} "$@"
