#!/usr/bin/env bash
# The one install path: `make setup`, CI and the Docker image all run this script.
#   VENV=.venv (default) creates/uses a virtual environment; VENV=none installs into $PYTHON's environment.
#   TORCH_SPEC / TORCH_PIP_ARGS pick the torch build (CPU wheel by default; a CUDA index for GPU images).
#   EXTRAS lists the optional dependency groups; EDITABLE=1 installs the sources in place (development).
#   STEP=deps installs torch and the dependencies only (a cacheable image layer), STEP=package the
#   package itself without dependencies, STEP=all (default) both.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-s3,cluster,tracking,eval,dev}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCH_PIP_ARGS=${TORCH_PIP_ARGS:-}
STEP=${STEP:-all}
EDITABLE=${EDITABLE:-}

if [ "$VENV" = "none" ]; then
    PY=$PYTHON
else
    test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
    PY=$VENV/bin/python
fi
pip_install() { "$PY" -m pip install -q "$@"; }

if [ "$STEP" = "deps" ] || [ "$STEP" = "all" ]; then
    pip_install --upgrade "pip>=24"
    # torch first, pinned: a bare requirement could pull a multi-GB CUDA build onto a CPU machine
    # shellcheck disable=SC2086
    pip_install "$TORCH_SPEC" $TORCH_PIP_ARGS
    pip_install ${EDITABLE:+-e} ".[${EXTRAS}]"
fi
if [ "$STEP" = "package" ]; then
    pip_install --no-deps ${EDITABLE:+-e} .
fi
if [ "$STEP" = "package" ] || [ "$STEP" = "all" ]; then
    # DeepSpeed compiles its CPU communication op on first use (40 s to minutes): once, here
    "$PY" -m cluster.warmup
fi
