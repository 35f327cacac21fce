#!/usr/bin/env bash
# Distributed training with torchrun (the OpenMMLab form): NCCL on GPUs, gloo without them.
#   bash tools/dist_train.sh CONFIG GPUS [train.py args...]
# A sweep file (a config holding `sweep = dict(...)`, e.g. configs/ablations/*.py) runs its grid:
# every point on GPUS processes, one point after another, finished points skipped.
# Multi-node: run it on every node with the same NNODES, MASTER_ADDR (node 0's address) and PORT,
# and NODE_RANK = 0 .. NNODES-1. (tools/dist_test.sh runs tools/test.py the same way.)
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: [NNODES=1 NODE_RANK=0 MASTER_ADDR=127.0.0.1 PORT=29500] $0 CONFIG GPUS" \
       "[${RTDMD_TOOL:-train.py} args...]" >&2
  exit 2
fi
CONFIG=$1
GPUS=$2
shift 2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-${MASTER_PORT:-29500}}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ "${RTDMD_TOOL:-train.py}" = train.py ] && grep -qE '^sweep *=' "$CONFIG" 2>/dev/null; then
  # tools/sweep.py starts torchrun per point with these same variables
  NNODES=$NNODES NODE_RANK=$NODE_RANK MASTER_ADDR=$MASTER_ADDR PORT=$PORT \
    exec python "$ROOT/tools/sweep.py" "$CONFIG" --gpus "$GPUS" "$@"
fi
exec python -m torch.distributed.run \
  --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$GPUS" \
  --master_addr="$MASTER_ADDR" --master_port="$PORT" \
  "$ROOT/tools/${RTDMD_TOOL:-train.py}" "$CONFIG" --launcher pytorch "$@"
