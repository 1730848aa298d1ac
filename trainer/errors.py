"""One exception hierarchy for everything users can get wrong or run into.

Every error a user sees is a `TrainerError`: the CLI prints `str(err)` as one red line and
exits with `err.exit_code`; `TRAINER_DEBUG=1` adds the traceback. Foreign errors (Ray, MLflow,
ONNX, ...) are translated into these at the boundary where they are caught.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator


class TrainerError(Exception):
    """Base class. `exit_code` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, **fields):
        super().__init__(message)
        self.message = message
        self.fields = fields


class SpecError(TrainerError):
    """The job spec (or a CLI argument that feeds it) is invalid. Nothing was submitted."""

    exit_code = 2

    def __init__(self, message: str, path: str = "", **fields):
        # The message names the field once: a message that already starts with it (the spec's
        # own descriptions do) is not prefixed again (no `name: name: ...`).
        named = not path or re.match(re.escape(path) + r"[:.\[]", message) is not None
        super().__init__(message if named else f"{path}: {message}", path=path, **fields)
        self.path = path


class UsageError(TrainerError):
    """A command was called wrongly (unknown name, bad flag value, missing file)."""

    exit_code = 2


class UnknownNameError(UsageError):
    """A registry lookup failed; the message lists the valid names."""

    def __init__(self, kind: str, name: str, valid: list[str]):
        super().__init__(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}",
                         kind=kind, name=name, valid=sorted(valid))


class PreflightError(TrainerError):
    """The job can never run as asked on this cluster (checked before submitting)."""

    exit_code = 3


class ClusterError(TrainerError):
    """The local cluster could not be started/stopped, or a remote one is unreachable."""

    exit_code = 4


class JobError(TrainerError):
    """A submitted job failed, was cancelled, or cannot be found."""

    exit_code = 5


class RuntimeNotInstalledError(TrainerError):
    """A framework runtime (venv) is missing; the message gives the install command."""

    exit_code = 6


class ConversionError(TrainerError):
    """A model could not be converted (corrupt input, unsupported ops, bad calibration data)."""

    exit_code = 7


class TrackingError(TrainerError):
    """The MLflow store cannot be read or written (unreachable server, bad URI, locked file)."""

    exit_code = 9


class ParityError(ConversionError):
    """A converted model does not give the same answers as the native one within tolerance."""

    exit_code = 8


class UnsupportedOpsError(ConversionError):
    """Every op the exporter could not convert, listed at once."""

    def __init__(self, frontend: str, ops: list[str]):
        ops = sorted(set(ops))
        super().__init__(f"{frontend}: unsupported ops: {', '.join(ops)}", frontend=frontend, ops=ops)
        self.ops = ops


# ---------------------------------------------------------------- the one translation seam

def first_line(err: BaseException, limit: int = 300) -> str:
    """The first meaningful line of an exception's message, or its type name when it has none.

    Foreign errors (Ray, MLflow, ONNX, a subprocess's stderr) often carry pages of text; a user
    sees one line, and `TRAINER_DEBUG=1` shows the rest.
    """
    for line in str(err).strip().splitlines():
        line = line.strip()
        if line and not line.startswith(("Traceback", "Stack trace")):
            return line[:limit]
    return type(err).__name__


@contextmanager
def translate(error: type[TrainerError], message: str, *, catch: tuple[type[BaseException], ...] = (Exception,),
              with_type: bool = False, **fields) -> Iterator[None]:
    """Turn foreign exceptions raised inside the block into `error(f"{message}: <first line>")`.

        with translate(ClusterError, f"cannot reach the Ray cluster at {address}"):
            client = JobSubmissionClient(address)

    A TrainerError raised inside passes through unchanged (it already speaks to the user); so do
    exceptions outside `catch` (KeyboardInterrupt, SystemExit). The foreign error stays reachable
    as `__cause__` for `TRAINER_DEBUG=1`. `with_type` prefixes the foreign type name.
    """
    try:
        yield
    except TrainerError:
        raise
    except catch as e:
        detail = f"{type(e).__name__}: {first_line(e)}" if with_type else first_line(e)
        raise error(f"{message}: {detail}", **fields) from e
