#!/usr/bin/env bash
# Multi-process evaluation with torchrun, e.g. the benchmark harness on 8 GPUs:
#   bash tools/dist_test.sh CONFIG 8 --benchmarks --checkpoint CKPT
# Same launcher and multi-node variables as tools/dist_train.sh.
RTDMD_TOOL=test.py exec bash "$(dirname "$0")/dist_train.sh" "$@"
