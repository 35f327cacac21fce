#!/usr/bin/env bash
# Training under Slurm (one task per GPU): srun starts the tasks, train.py reads SLURM_* vars.
#   PARTITION=p GPUS=16 bash tools/slurm_train.sh JOB_NAME CONFIG [train.py args...]
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: PARTITION=... GPUS=... $0 JOB_NAME CONFIG [train.py args...]" >&2
  exit 2
fi
JOB_NAME=$1
CONFIG=$2
shift 2
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-8}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
srun -p "${PARTITION:?set PARTITION}" --job-name="$JOB_NAME" --gres=gpu:"$GPUS_PER_NODE" \
  --ntasks="$GPUS" --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK" \
  --kill-on-bad-exit=1 ${SRUN_ARGS:-} \
  python -u "$ROOT/tools/train.py" "$CONFIG" --launcher slurm "$@"
