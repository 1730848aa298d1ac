"""Start a worker inside a runtime's interpreter.

    <runtime python> -m converters.workers RUNTIME [--import MODULE]...            serve (JSON lines)
    <runtime python> -m converters.workers RUNTIME [--import MODULE]... CMD [JSON]  one request, then exit

RUNTIME names the command modules to load (`bare`: the built-in commands only); `--import`
adds more (a test's own commands, a tool's). The one-shot form prints the answer on stdout and
exits 0 (ok) or 3 (failed): handy to try a command by hand.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from converters.workers import server

RUNTIME_MODULES: dict[str, tuple[str, ...]] = {
    "tensorflow": ("converters.workers.keras", "converters.workers.tflite"),
    "mxnet": ("converters.workers.mxnet_export", "converters.workers.mmdnn", "converters.workers.caffe_reference"),
    "bare": (),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converters.workers", description=__doc__.split("\n\n")[0])
    parser.add_argument("runtime", choices=sorted(RUNTIME_MODULES))
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE")
    parser.add_argument("cmd", nargs="?")
    parser.add_argument("args", nargs="?", default="{}", help="the command's arguments as a JSON object")
    a = parser.parse_intermixed_args(argv)
    modules = (*RUNTIME_MODULES[a.runtime], *a.imports)
    if a.cmd is None:
        server.serve(modules)
        return 0
    for module in modules:
        importlib.import_module(module)
    answer = server.handle({"cmd": a.cmd, "args": json.loads(a.args)})
    print(json.dumps(answer))
    return 0 if answer["ok"] else 3


if __name__ == "__main__":
    sys.exit(main())
