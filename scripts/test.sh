#!/usr/bin/env bash
# Installs what the tests need beyond .venv (the Debian packages the suite uses, the tensorflow and
# mxnet runtimes, the emulated aarch64 root; each idempotent, the runtimes cached under
# ~/.trainer/runtimes), then runs the suite.
set -uo pipefail
cd "$(dirname "$0")/.."
set -e
bash scripts/system-deps.sh
.venv/bin/trainer runtime install tensorflow
.venv/bin/trainer runtime install mxnet
.venv/bin/trainer edge setup --tflite
set +e
.venv/bin/python -m pytest -p no:cacheprovider --durations=30 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "error: pytest collected no tests" >&2
    exit 1
fi
exit "$rc"
