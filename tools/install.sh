#!/usr/bin/env bash
# Set up .venv from nothing: torch, mmengine, mmcv (built from the sdist with compiled ops,
# cached outside the repo), mmdet, mmsegmentation, timm and this package in editable mode.
#
# Usage: bash tools/install.sh            (idempotent; a second run takes minutes)
# Env:   VENV=.venv  MMDET_L2VIT_CACHE=~/.cache/mmdet_l2vit  MAX_JOBS=2
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
CACHE="${MMDET_L2VIT_CACHE:-$HOME/.cache/mmdet_l2vit}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
export MAX_JOBS="${MAX_JOBS:-2}"

TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=2.1.0

say() { printf '\n[install] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check)

say "installing torch $TORCH_VERSION / torchvision $TORCHVISION_VERSION (several GB on first install)"
"${PIP[@]}" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
say "installing build tools and pinned requirements"
"${PIP[@]}" 'setuptools>=77.0.3,<82' wheel ninja psutil
"${PIP[@]}" -r "$ROOT/requirements/runtime.txt"

if "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" 2>/dev/null; then
    say "mmcv $MMCV_VERSION with compiled ops already installed"
else
    FLAVOUR=cpu
    if command -v nvcc >/dev/null && "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
        FLAVOUR=cuda
        export FORCE_CUDA=1
    fi
    PYTAG="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
    WHEEL_DIR="$CACHE/wheels/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-$PYTAG-$FLAVOUR"
    mkdir -p "$WHEEL_DIR"
    if ! ls "$WHEEL_DIR"/mmcv-*.whl >/dev/null 2>&1; then
        say "building mmcv $MMCV_VERSION ($FLAVOUR ops) from the PyPI sdist: this takes about 20 minutes on 2 cores"
        BUILD_DIR="$(mktemp -d)"
        "$PY" -m pip download --disable-pip-version-check --no-deps --no-binary :all: --no-build-isolation \
            "mmcv==$MMCV_VERSION" -d "$BUILD_DIR"
        tar -xzf "$BUILD_DIR"/mmcv-"$MMCV_VERSION".tar.gz -C "$BUILD_DIR"
        SRC="$BUILD_DIR/mmcv-$MMCV_VERSION"
        # torch 2.14's headers need C++20; mmcv 2.1.0 hard-codes -std=c++17.
        sed -i 's/-std=c++17/-std=c++20/g' "$SRC/setup.py"
        "$PY" -m pip wheel --disable-pip-version-check --no-build-isolation --no-deps \
            -w "$BUILD_DIR/dist" "$SRC"
        cp "$BUILD_DIR"/dist/mmcv-*.whl "$WHEEL_DIR/"
        rm -rf "$BUILD_DIR"
        say "mmcv wheel cached in $WHEEL_DIR"
    else
        say "reusing cached mmcv wheel from $WHEEL_DIR"
    fi
    "${PIP[@]}" --no-deps "$WHEEL_DIR"/mmcv-*.whl
fi

say "installing mmdet, mmsegmentation and mmdet_l2vit (editable)"
"${PIP[@]}" -r "$ROOT/requirements/openmmlab.txt"
"${PIP[@]}" -r "$ROOT/requirements/tests.txt"
"${PIP[@]}" --no-deps --no-build-isolation -e "$ROOT"
"$PY" -c "import mmcv.ops, mmdet, mmseg, mmdet_l2vit; print('mmdet_l2vit', mmdet_l2vit.__version__, 'ready')"
