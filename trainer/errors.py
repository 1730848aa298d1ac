"""One exception hierarchy for everything users can get wrong or run into, and the one seam
that turns foreign exceptions into it.

Every error a user sees is a `TrainerError`: the CLI prints `str(err)` as one red line and
exits with `err.exit_code`; `TRAINER_DEBUG=1` adds the traceback. Every class lives here.
Foreign errors (Ray, MLflow, requests/OCI, Kubernetes, ONNX, subprocesses) are translated at the
boundary where they are caught, through `FOREIGN` (one table: which of ours each becomes, and how
its message is cut to one line) with `translate(...)`, `ours(...)` or `describe(...)`.

Messages below the CLI speak of the spec field or the function's argument (`version`, `ref`);
the CLI names its flags (`--version`).
"""
from __future__ import annotations

import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator


class TrainerError(Exception):
    """Any other failure (a failed subprocess, a promotion that could not be fully undone).

    The base class: `exit_code` is what the CLI exits with; README's exit code table is
    generated from these classes (tests/docs/test_exit_codes.py)."""

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


class GateError(TrainerError):
    """A promotion's checks failed (a gate, the environment order, a missing approval); nothing changed."""

    exit_code = 10


class RegistryError(TrainerError):
    """An OCI registry cannot be reached, refuses a request, or holds something unexpected."""

    exit_code = 11


class ImageError(TrainerError):
    """A runtime image could not be built, run, checked or pushed (buildah, podman, mmdebstrap)."""

    exit_code = 12


class VerifyError(TrainerError):
    """A signature, file digest or provenance claim does not hold (tampered, unsigned, untrusted); nothing changed."""

    exit_code = 13


class ParityError(ConversionError):
    """A converted model does not give the same answers as the native one within tolerance (after a job: it succeeded, its conversion did not).

    A job's `convert:` step that misses its gate leaves the job SUCCEEDED with the conversion
    verdict FAILED; `submit --wait`, `wait` and `run --local` exit with this code for it."""

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


def _innermost_reason(err: BaseException) -> str:
    """requests' messages are long chains (`HTTPConnectionPool(...): Max retries exceeded ... [Errno
    111] Connection refused`); the innermost reason is what a person needs."""
    m = re.search(r"\[Errno -?\d+\] ([^'\")]+)", first_line(err))
    return m.group(1).strip() if m else type(err).__name__


def _api_status(err: BaseException) -> str:
    """`409 Conflict: rayjobs.ray.io "x" already exists` from a Kubernetes ApiException (its str()
    is pages: headers and the whole response body)."""
    import json

    status, reason, body = getattr(err, "status", None), getattr(err, "reason", None), getattr(err, "body", None)
    if status is None:
        return first_line(err)
    message = ""
    try:
        message = json.loads(body or "{}").get("message", "")
    except (ValueError, AttributeError):
        message = first_line(Exception(body)) if body else ""
    return f"{status} {reason or ''}".strip() + (f": {message}" if message else "")


def _process(err: BaseException) -> str:
    """A failed command: its exit code and the last line it wrote to stderr."""
    stderr = getattr(err, "stderr", None) or getattr(err, "output", None) or ""
    if isinstance(stderr, bytes):
        stderr = stderr.decode(errors="replace")
    lines = [line.strip() for line in str(stderr).splitlines() if line.strip()]
    code = getattr(err, "returncode", None)
    head = f"exit code {code}" if code is not None else f"timed out after {getattr(err, 'timeout', '?')}s"
    return head + (f": {lines[-1][:300]}" if lines else "")


@dataclass(frozen=True)
class Foreign:
    """A row of the mapping: a foreign exception class (by its import path: the table imports
    nothing; an exception of a module never imported cannot be raised), the error of ours it
    becomes when the boundary does not say, what it means (`kind`, for a boundary that adds
    context: an `unauthorized` Ray dashboard names where tokens come from), and its one line."""

    path: str
    error: type[TrainerError]
    kind: str
    describe: Callable[[BaseException], str] = first_line

    def cls(self) -> type | None:
        module, _, name = self.path.rpartition(".")
        found = sys.modules.get(module)
        return getattr(found, name, None) if found is not None else None


# Most specific first: the first row whose class the exception is an instance of applies.
FOREIGN: tuple[Foreign, ...] = (
    Foreign("ray.exceptions.AuthenticationError", ClusterError, "unauthorized"),
    Foreign("ray.exceptions.RayError", ClusterError, "ray"),
    Foreign("mlflow.exceptions.MlflowException", TrackingError, "tracking"),
    Foreign("kubernetes.client.exceptions.ApiException", ClusterError, "kubernetes", _api_status),
    Foreign("requests.exceptions.RequestException", ClusterError, "unreachable", _innermost_reason),
    Foreign("onnx.onnx_cpp2py_export.checker.ValidationError", ConversionError, "model"),
    Foreign("google.protobuf.message.DecodeError", ConversionError, "model"),
    Foreign("onnxruntime.capi.onnxruntime_pybind11_state.Fail", ConversionError, "model"),
    Foreign("subprocess.CalledProcessError", TrainerError, "process", _process),
    Foreign("subprocess.TimeoutExpired", TrainerError, "process", _process),
)


def foreign(err: BaseException) -> Foreign | None:
    """The row of `FOREIGN` that `err` falls under, or None."""
    for row in FOREIGN:
        cls = row.cls()
        if isinstance(cls, type) and isinstance(err, cls):
            return row
    return None


def describe(err: BaseException) -> str:
    """`err` in one line, as its row of `FOREIGN` reads it (else its first line)."""
    row = foreign(err)
    return row.describe(err) if row is not None else first_line(err)


def ours(err: BaseException, message: str, error: type[TrainerError] | None = None, *, with_type: bool = False,
         redact: Callable[[str], str] | None = None, **fields) -> TrainerError:
    """The TrainerError for a foreign `err` at a boundary: `error` (else the table's class, else
    TrainerError) with `message: <its line>`. `redact` masks credentials in the text; the foreign
    error stays reachable as `__cause__` (TRAINER_DEBUG=1) unless it would show what was masked."""
    if isinstance(err, TrainerError):
        return err
    row = foreign(err)
    detail = describe(err)
    if with_type:
        detail = f"{type(err).__name__}: {detail}"
    text = f"{message}: {detail}"
    shown = redact(text) if redact is not None else text
    out = (error or (row.error if row is not None else TrainerError))(shown, **fields)
    out.__cause__ = err if shown == text else None
    if out.__cause__ is None:
        out.__suppress_context__ = True
    return out


@contextmanager
def translate(error: type[TrainerError] | None, message: str, *, catch: tuple[type[BaseException], ...] = (Exception,),
              with_type: bool = False, redact: Callable[[str], str] | None = None, **fields) -> Iterator[None]:
    """Turn foreign exceptions raised inside the block into `error(f"{message}: <one line>")`
    (`ours`); `error=None` takes the class `FOREIGN` gives it.

        with translate(ClusterError, f"cannot reach the Ray cluster at {address}"):
            client = JobSubmissionClient(address)

    A TrainerError raised inside passes through unchanged (it already speaks to the user); so do
    exceptions outside `catch` (KeyboardInterrupt, SystemExit). `with_type` prefixes the foreign
    type name.
    """
    try:
        yield
    except TrainerError:
        raise
    except catch as e:
        out = ours(e, message, error, with_type=with_type, redact=redact, **fields)
        raise out from out.__cause__
