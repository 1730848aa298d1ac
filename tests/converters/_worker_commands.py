"""Commands for tests/converters/test_worker_protocol.py: loaded into a real worker with
`--import _worker_commands` (no framework needed)."""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from converters.workers.server import WorkerError, command


@command("echo")
def echo(**args) -> dict:
    return args


@command("double")
def double(inputs: str, out: str) -> dict:
    y = np.load(inputs) * 2
    np.save(out, y)
    return {"shape": list(y.shape)}


@command("fail")
def fail(ops: list[str] | None = None) -> dict:
    raise WorkerError("it failed on purpose", ops=ops)


@command("boom")
def boom() -> dict:
    raise ValueError("the first line\nand a second one")


@command("noisy")
def noisy() -> dict:
    print("a library printing on stdout")
    os.write(1, b"C code writing to fd 1\n")
    sys.stdout.flush()
    return {"quiet": True}


@command("sleep")
def sleep(seconds: float) -> dict:
    time.sleep(seconds)
    return {"slept": seconds}


@command("die")
def die(code: int) -> dict:
    os._exit(code)
