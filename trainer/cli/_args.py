"""Checks of command-line values that the type alone does not make: a finite number in its range,
an input that is a regular file. Each failure is a UsageError naming the flag (one line, exit 2),
raised while the command line is parsed, before anything is loaded, started or written."""
from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Callable, Optional

from trainer.errors import UsageError
from trainer.spec import file_kind


def number(flag: str, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, why: str = "") -> Callable:
    """A typer callback: the value (when given) is a finite number in [low, high] (or (low, high]
    with `low_open`). click's own ranges let `nan` and `inf` through."""
    def check(value):
        if value is None:
            return value
        if not math.isfinite(value):
            raise UsageError(f"{flag} must be a finite number, got {value}")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and value > high
        if too_low or too_high:
            lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
            hi = "" if high is None else f"<= {high:g}"
            rule = " and ".join(x for x in (lo, hi) if x)
            raise UsageError(f"{flag} must be {rule}{f' ({why})' if why else ''}, got {value:g}")
        return value
    return check


def regular_file(flag: str, path: Optional[Path], suffixes: tuple[str, ...] = ()) -> Optional[Path]:
    """`path` exists and is a regular file (a symlink to one counts): never a folder, a FIFO or a
    device, which would fail late or block forever when read."""
    if path is None:
        return None
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UsageError(f"{flag} {path}: no such file") from None
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot read it: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise UsageError(f"{flag} {path}: is {file_kind(mode)}, not a file")
    if suffixes and Path(path).suffix not in suffixes:
        raise UsageError(f"{flag} {path}: must be a {' or '.join(suffixes)} file")
    return path


def file_or_folder(what: str, path: Path) -> Path:
    """`path` exists and is a regular file or a folder (a model: a file, or a saved-model folder)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return path     # the command's own "not found" message says what may be given instead
    except OSError as e:
        raise UsageError(f"{what} {path}: cannot read it: {e.strerror}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise UsageError(f"{what} {path}: is {file_kind(mode)}, not a file or a folder")
    return path
