#!/usr/bin/env bash
# Distributed training with torchrun (DDP): one process per GPU, or per CPU worker without a GPU
# (the gloo backend is then selected automatically).
#
# Usage: bash tools/dist_train.sh CONFIG NPROC [tools/train.py args...]
# Env:   NNODES=1 NODE_RANK=0 PORT=29500 MASTER_ADDR=127.0.0.1 PYTHON=.venv/bin/python (if present)
set -euo pipefail
CONFIG=$1
NPROC=$2
shift 2
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python)}"
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}

PYTHONPATH="$ROOT:${PYTHONPATH:-}" \
"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$NPROC" \
    --master_port="$PORT" \
    "$ROOT/tools/train.py" "$CONFIG" --launcher pytorch "$@"
