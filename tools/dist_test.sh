#!/usr/bin/env bash
# Distributed evaluation with torchrun (the OpenMMLab form), e.g. the benchmarks on 8 GPUs:
#   bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py args...]
#   bash tools/dist_test.sh CONFIG GPUS [test.py args...]    (--benchmarks, --checkpoint ...)
# Same multi-node variables as tools/dist_train.sh (NNODES, NODE_RANK, MASTER_ADDR, PORT).
set -euo pipefail
if [ $# -ge 3 ] && ! [[ $2 =~ ^[0-9]+$ ]] && [[ $3 =~ ^[0-9]+$ ]]; then
  CONFIG=$1 CHECKPOINT=$2 GPUS=$3
  shift 3
  set -- "$CONFIG" "$GPUS" --checkpoint "$CHECKPOINT" "$@"
elif [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG CHECKPOINT GPUS [test.py args...]" >&2
  exit 2
fi
RTDMD_TOOL=test.py exec bash "$(dirname "$0")/dist_train.sh" "$@"
