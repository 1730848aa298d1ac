"""The serve loop every worker runs inside its runtime's interpreter, and the command registry.

Protocol, one JSON object per line:

    request (stdin)             {"cmd": "<name>", "args": {...}}
    answer (protocol stream)    {"ok": true, "result": {...}}
                                {"ok": false, "error": "<one line>", "ops": ["<op>", ...]}

The first line a worker writes is `{"ok": true, "result": {"ready": true, "pid": N, "commands":
[...]}}`. `ops` lists every op the converter could not map (empty otherwise): unsupported ops
travel as data, never inside the message text. The protocol stream is the process's original
stdout; fd 1 is pointed at stderr (the client's log file) so that whatever a framework prints can
never corrupt it. Arrays travel as .npy files whose paths are arguments.

Command modules register with `@command("name")` and import their framework inside the
command, so a worker starts in about the time numpy takes. This module imports only the
standard library at the top.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from typing import Callable, Iterable


class WorkerError(Exception):
    """A failure the user can act on; answered as one line plus the unsupported ops, if any."""

    def __init__(self, message: str, ops: list[str] | None = None):
        super().__init__(message)
        self.ops = sorted(set(ops or []))


def error_line(exc: BaseException) -> str:
    """`Type: first line` of an exception raised by Python code (trainer.errors.first_line)."""
    from trainer.errors import first_line
    line = first_line(exc)
    name = type(exc).__name__
    return name if line == name else f"{name}: {line}"


def native_error_line(exc: BaseException) -> str:
    """The line that says what failed in a message laden with a C++ traceback (MXNet, ONNX's
    converters): skips the `Traceback`/`File`/`[bt]` frames, prefers a last line naming an Error."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("Traceback", "File ", "[bt]", "Stack trace"))]
    if not lines:
        return type(exc).__name__
    line = lines[-1] if len(lines) > 1 and "Error" in lines[-1] else lines[0]
    return line.removeprefix("MXNetError: ")[:300]


# -- the registry -----------------------------------------------------------------------------

COMMANDS: dict[str, Callable[..., dict]] = {}
_NATIVE_ERRORS: set[str] = set()
_DISTRIBUTIONS: list[str] = []


def command(name: str, *, native_errors: bool = False):
    """Register the decorated function as worker command `name` (called with the request's args).

    `native_errors`: an unexpected exception is answered with `native_error_line` (for commands
    whose libraries raise C++-traceback-laden messages) instead of `error_line`.
    """
    def register(fn: Callable[..., dict]) -> Callable[..., dict]:
        if COMMANDS.get(name, fn) is not fn:
            raise RuntimeError(f"worker command {name!r} is registered twice")
        COMMANDS[name] = fn
        if native_errors:
            _NATIVE_ERRORS.add(name)
        return fn
    return register


def report_versions(*distributions: str) -> None:
    """Distributions the built-in `versions` command reports when they are installed."""
    _DISTRIBUTIONS.extend(d for d in distributions if d not in _DISTRIBUTIONS)


@command("versions")
def _versions() -> dict:
    from importlib import metadata
    found = {}
    for dist in _DISTRIBUTIONS:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


# -- answering --------------------------------------------------------------------------------

def handle(request: dict) -> dict:
    """The answer to one request; never raises for a failing command."""
    cmd = request.get("cmd")
    if cmd not in COMMANDS:
        return {"ok": False, "error": f"unknown worker command {cmd!r}; valid: {', '.join(sorted(COMMANDS))}",
                "ops": []}
    args = request.get("args") or {}
    try:
        return {"ok": True, "result": COMMANDS[cmd](**args)}
    except WorkerError as exc:
        return {"ok": False, "error": str(exc), "ops": exc.ops}
    except (Exception, SystemExit) as exc:  # a bug, an unforeseen input, a library's sys.exit()
        traceback.print_exc()               # the log has the traceback; the answer has one line
        if cmd in _NATIVE_ERRORS:
            detail = f"{type(exc).__name__}: {native_error_line(exc)}"
        else:
            detail = error_line(exc)
        return {"ok": False, "error": f"{cmd} failed: {detail}", "ops": []}


def serve(modules: Iterable[str] = ()) -> None:
    """Import the command `modules`, then answer requests from stdin until it closes."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                      # stray prints (C++ and Python) go to the log, not the protocol
    sys.stdout = sys.stderr
    for module in modules:
        importlib.import_module(module)
    proto.write(json.dumps({"ok": True, "result": {"ready": True, "pid": os.getpid(),
                                                   "commands": sorted(COMMANDS)}}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
        except ValueError as exc:
            answer = {"ok": False, "error": f"bad request: {exc}", "ops": []}
        else:
            answer = handle(request)
        sys.stderr.flush()
        proto.write(json.dumps(answer) + "\n")
