#!/usr/bin/env bash
# Multi-process training with torchrun: NCCL on GPUs, gloo on a machine without them.
#   bash tools/dist_train.sh CONFIG NPROC [train.py args...]
# (tools/dist_test.sh runs tools/test.py the same way: RTDMD_TOOL=test.py.)
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR (and MASTER_PORT) on every node.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG NPROC [${RTDMD_TOOL:-train.py} args...]" >&2
  exit 2
fi
CONFIG=$1
NPROC=$2
shift 2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec python -m torch.distributed.run \
  --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$NPROC" \
  --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" \
  "$ROOT/tools/${RTDMD_TOOL:-train.py}" "$CONFIG" --launcher pytorch "$@"
