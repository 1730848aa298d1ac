"""The main process's side of a worker: one long-lived `python -m converters.workers <runtime>`
in that runtime's interpreter, answering many requests (`import tensorflow` alone costs ~20 s).

    result = worker("tensorflow").call("keras-export", who="keras", model=path, sample=npy, out=onnx)

Requests and answers are JSON lines (see `converters.workers.server`); arrays travel as .npy
files (`save_array`, `WorkerClient.predict`). A failed command raises `UnsupportedOpsError(who,
ops)` when the answer lists ops, else a one-line `ConversionError("<who>: <error>")`. The
worker's stderr goes to a log file that errors name. A dead or hung worker (per-call timeout:
`TRAINER_WORKER_TIMEOUT`, for tensorflow also `TRAINER_TF_WORKER_TIMEOUT`, default 900 s) is
killed and replaced on the next call; workers are closed at exit.
"""
from __future__ import annotations

import atexit
import json
import os
import selectors
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from trainer.errors import ConversionError, UnsupportedOpsError
from trainer.home import repo_root

DEFAULT_TIMEOUT_S = 900.0
START_TIMEOUT_S = 120.0
TIMEOUT_VARS = {"tensorflow": "TRAINER_TF_WORKER_TIMEOUT"}     # runtime-specific, wins over the general one
GENERAL_TIMEOUT_VAR = "TRAINER_WORKER_TIMEOUT"

# Per runtime: variables set in the worker's environment (forced, and defaults the caller may override).
RUNTIME_ENV: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "tensorflow": ({"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}, {}),
    "mxnet": ({}, {"OMP_NUM_THREADS": "1", "MXNET_ENGINE_TYPE": "NaiveEngine", "MXNET_SUBGRAPH_VERBOSE": "0"}),
}


def call_timeout(runtime: str) -> tuple[float, str]:
    """(seconds, the variable that sets it) for one call to a `runtime` worker."""
    for var in (TIMEOUT_VARS.get(runtime), GENERAL_TIMEOUT_VAR):
        if var and os.environ.get(var):
            return float(os.environ[var]), var
    return DEFAULT_TIMEOUT_S, GENERAL_TIMEOUT_VAR


def save_array(folder: str | Path, name: str, array: np.ndarray) -> Path:
    """`folder/<name>.npy`, to hand an array to a worker."""
    path = Path(folder) / f"{name}.npy"
    np.save(path, np.ascontiguousarray(array))
    return path


class WorkerClient:
    """One worker process for `runtime`, started on the first call.

    `python` overrides the runtime's interpreter (default `trainer.runtimes.python_for(runtime)`,
    checked on every call, so a removed or outdated runtime is reported and a reinstalled one is
    picked up); `imports` adds command modules (`--import`); `log_dir` is where the worker's
    stderr log goes (default: the system temp folder).
    """

    def __init__(self, runtime: str, python: Path | None = None, imports: tuple[str, ...] = (),
                 log_dir: Path | None = None):
        self.runtime = runtime
        self._python = python
        self._imports = tuple(imports)
        self._log_dir = log_dir
        self._proc: subprocess.Popen | None = None
        self._proc_python: Path | None = None
        self._log_path: Path | None = None
        self._keep_log = False          # an error named the log: it outlives the worker
        self._lock = threading.Lock()
        self._atexit = False

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _interpreter(self) -> Path:
        if self._python is not None:
            return Path(self._python)
        from trainer.runtimes import python_for      # RuntimeNotInstalledError names the install command
        return python_for(self.runtime)

    def _env(self) -> dict[str, str]:
        forced, defaults = RUNTIME_ENV.get(self.runtime, ({}, {}))
        env = {**defaults, **os.environ, **forced}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo_root()), os.environ.get("PYTHONPATH")]))
        env["PYTHONNOUSERSITE"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _start(self, python: Path) -> None:
        self._drop_log()
        log = tempfile.NamedTemporaryFile(prefix=f"trainer-{self.runtime}-worker-", suffix=".log", delete=False,
                                          dir=self._log_dir)
        self._log_path, self._keep_log = Path(log.name), False
        argv = [str(python), "-m", "converters.workers", self.runtime]
        for module in self._imports:
            argv += ["--import", module]
        # cwd: the repo root, so no `converters` package in the caller's folder shadows this one
        # (`-m` puts the cwd first on sys.path); paths in requests are made absolute for it.
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                      env=self._env(), text=True, bufsize=1, cwd=str(repo_root()))
        self._proc_python = python
        log.close()
        if not self._atexit:
            atexit.register(self.close)
            self._atexit = True
        self._read(START_TIMEOUT_S, "start", GENERAL_TIMEOUT_VAR)

    def _fail(self, message: str) -> ConversionError:
        self._keep_log = True
        return ConversionError(f"{message} (log: {self._log_path})", runtime=self.runtime,
                               log=str(self._log_path))

    def _read(self, timeout: float, what: str, var: str) -> dict:
        assert self._proc is not None and self._proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self._proc.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                self._kill()
                raise self._fail(f"{self.runtime} worker: {what} took over {timeout:.0f} s and was stopped; "
                                 f"set {var} to allow more")
            line = self._proc.stdout.readline()
        finally:
            sel.close()
        if not line:
            code = self._proc.wait(timeout=10)
            self._proc = None
            raise self._fail(f"{self.runtime} worker died (exit code {code}) during {what}: {self._last_log_line()}")
        return json.loads(line)

    def _last_log_line(self) -> str:
        try:
            lines = [ln.strip() for ln in self._log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except (OSError, AttributeError):
            return "no log"
        return lines[-1][:300] if lines else "no output"

    def call(self, cmd: str, /, *, who: str | None = None, timeout: float | None = None, **args) -> dict:
        """Run one command; its answer's `result`.

        Failures raise UnsupportedOpsError(who, ops) when the worker listed ops, else a
        ConversionError whose one line starts with `who: ` (when given).
        """
        prefix = f"{who}: " if who else ""
        if timeout is None:
            timeout, var = call_timeout(self.runtime)
        else:
            var = GENERAL_TIMEOUT_VAR
        args = {k: (str(Path(v).absolute()) if isinstance(v, Path) else v) for k, v in args.items()}
        python = self._interpreter()
        with self._lock:
            try:
                if self._proc is not None and (self._proc.poll() is not None or self._proc_python != python):
                    self._stop()
                if self._proc is None:
                    self._start(python)
                assert self._proc is not None and self._proc.stdin is not None
                try:
                    self._proc.stdin.write(json.dumps({"cmd": cmd, "args": args}) + "\n")
                    self._proc.stdin.flush()
                except BrokenPipeError:
                    self._proc = None
                    raise self._fail(f"{self.runtime} worker died before {cmd}: {self._last_log_line()}") from None
                answer = self._read(timeout, cmd, var)
            except ConversionError as exc:
                if prefix:
                    raise ConversionError(prefix + exc.message, **exc.fields) from None
                raise
        if answer.get("ok"):
            return answer["result"]
        ops = answer.get("ops") or []
        if ops:
            raise UnsupportedOpsError(who or self.runtime, ops)
        raise ConversionError(prefix + answer.get("error", f"{cmd} failed"), runtime=self.runtime, command=cmd)

    def predict(self, cmd: str, inputs: np.ndarray, /, *, who: str | None = None, **args) -> np.ndarray:
        """`cmd` with `inputs=<inputs as .npy>` and `out=<.npy>`; the array the worker wrote."""
        with tempfile.TemporaryDirectory(prefix=f"trainer-{self.runtime}-") as tmp:
            x, y = save_array(tmp, "x", inputs), Path(tmp) / "y.npy"
            self.call(cmd, who=who, inputs=x, out=y, **args)
            return np.load(y)

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def _stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                self._proc.stdin.close()
                self._proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._kill()
        self._proc = None

    def _drop_log(self) -> None:
        if self._log_path is not None and not self._keep_log:
            self._log_path.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop the worker (stdin closed: it exits after its current request); its log goes too,
        unless an error named it."""
        with self._lock:
            self._stop()
            self._drop_log()


_WORKERS: dict[str, WorkerClient] = {}
_WORKERS_LOCK = threading.Lock()


def worker(runtime: str) -> WorkerClient:
    """The process-wide worker of `runtime` (started on first use, stopped at exit)."""
    with _WORKERS_LOCK:
        if runtime not in _WORKERS:
            _WORKERS[runtime] = WorkerClient(runtime)
        return _WORKERS[runtime]


__all__ = ["WorkerClient", "worker", "save_array", "call_timeout", "DEFAULT_TIMEOUT_S"]
