#!/usr/bin/env bash
# Installs what the tests need beyond .venv (the Debian packages the suite uses, the tensorflow and
# mxnet runtimes, the emulated aarch64 root; each idempotent, the runtimes cached under
# ~/.trainer/runtimes), then runs the suite.
#
# The installs overlap: the two runtimes are pip installs into venvs of their own (one core each,
# ~2 min apiece from a warm cache), apt installs the Debian packages meanwhile, and the arm64 root
# comes after those (it runs apt-get too, and apt takes one process at a time). Each one's output
# is printed whole when it ends, in this order, so the log reads as if they ran one by one.
#
# With no arguments (CI's run, the README's command) the quick tier runs as soon as the Debian
# packages are in, beside the runtime installs: it needs no cluster, no other runtime and no qemu
# (tests/conftest.py). The integration tier follows once every install is done. With arguments,
# they go to one pytest run after the installs.
set -uo pipefail
cd "$(dirname "$0")/.."
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
declare -A pids

start() {   # start NAME COMMAND...: run it in the background, its output to $logs/NAME
    local name=$1
    shift
    "$@" >"$logs/$name" 2>&1 &
    pids[$name]=$!
}

finish() {  # finish NAME...: wait for each in turn, print its output; fail the script if one failed
    local name rc
    for name in "$@"; do
        rc=0
        wait "${pids[$name]}" || rc=$?
        cat "$logs/$name"
        if [ "$rc" -ne 0 ]; then
            echo "error: $name failed (exit $rc); nothing was tested" >&2
            wait
            exit 1
        fi
    done
}

tests() {   # tests PYTEST-ARGS...: one pytest run; exit 5 (nothing collected) is a failure
    .venv/bin/python -m pytest -p no:cacheprovider --durations=30 "$@"
    local rc=$?
    if [ "$rc" -eq 5 ]; then
        echo "error: pytest collected no tests ($*)" >&2
        rc=1
    fi
    return "$rc"
}

start tensorflow .venv/bin/trainer runtime install tensorflow
start mxnet .venv/bin/trainer runtime install mxnet
start system-deps bash scripts/system-deps.sh
finish system-deps
start edge .venv/bin/trainer edge setup --tflite
if [ $# -eq 0 ]; then
    tests -m "not integration"
    quick=$?
    finish tensorflow mxnet edge
    tests -m integration
    rest=$?
    [ "$quick" -eq 0 ] || echo "error: the quick tier failed (its report is above the installs' output)" >&2
    [ "$quick" -eq 0 ] && [ "$rest" -eq 0 ]
    exit $?
fi
finish tensorflow mxnet edge
tests "$@"
