#!/usr/bin/env bash
# Builds .venv at the repository root from the torch runtime's lock (the same file the torch
# image installs), then this project in editable mode. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] >= (3, 11), "trainer needs Python >= 3.11"'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch==2.13.0 in the lock takes the CPU wheel that ships on developer machines.
.venv/bin/python -m pip install -q -r images/torch/requirements.lock
.venv/bin/python -m pip install -q -e ".[torch,convert,k8s,dev,signing]"
# onnx2torch (the `pytorch` conversion target) declares torchvision, whose PyPI wheel is a CUDA
# build that does not import beside the CPU torch: install it without its dependencies.
.venv/bin/python -m pip install -q --no-deps onnx2torch==1.5.15
.venv/bin/trainer --help >/dev/null
echo "ready: .venv/bin/trainer"
