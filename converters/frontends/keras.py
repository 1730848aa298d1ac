"""Keras / TensorFlow frontend: a `.keras`/`.h5` file, a SavedModel directory or an MLflow
keras/tensorflow-flavor model folder -> ONNX (dynamic batch, NHWC images), via tf2onnx.

Keras 3 breaks `tf2onnx.convert.from_keras` on Sequential models (KeyError 'keras_tensor_N'),
so the model is wrapped in a `tf.function` with a dynamic-batch input signature and converted
with `tf2onnx.convert.from_function`. TensorFlow never enters this process: the work runs in
the tensorflow runtime (`trainer runtime install tensorflow`) through `TFWorker`, one
long-lived subprocess that answers many requests, since `import tensorflow` alone costs ~20 s.
"""
from __future__ import annotations

import atexit
import json
import os
import selectors
import shutil
import subprocess
import tempfile
import threading
import zipfile
from pathlib import Path

import numpy as np

from converters.base import ExportResult, ModelInput, Frontend
from trainer.errors import ConversionError, UnsupportedOpsError, UsageError
from trainer.home import repo_root

WORKER_MODULE = "converters.frontends._keras_worker"
DEFAULT_TIMEOUT_S = float(os.environ.get("TRAINER_TF_WORKER_TIMEOUT", "900"))
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
LAYOUTS = {2: "NC", 3: "NTC", 4: "NHWC", 5: "NDHWC"}


class WorkerFailed(ConversionError):
    """The tensorflow worker answered a request with an error (one line; `ops` when known)."""

    def __init__(self, message: str, ops: list[str] | None = None):
        super().__init__(message, ops=sorted(set(ops or [])))
        self.ops = sorted(set(ops or []))


class TFWorker:
    """One `python -m converters.frontends._keras_worker serve` in the tensorflow runtime.

    Requests and answers are JSON lines; arrays travel as .npy files. The worker keeps the
    last loaded model, so `export` then `predict` of the same model loads it once. Its stderr
    (TensorFlow's chatter, tracebacks) goes to a log file that error messages point to. A dead
    or hung worker is replaced on the next request.
    """

    def __init__(self, python: Path | None = None):
        self._python = python
        self._proc: subprocess.Popen | None = None
        self._log_path: Path | None = None
        self._lock = threading.Lock()
        self._atexit = False

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def _start(self) -> None:
        python = self._python
        if python is None:
            from trainer.runtimes import python_for
            python = python_for("tensorflow")
        log = tempfile.NamedTemporaryFile(prefix="trainer-tf-worker-", suffix=".log", delete=False)
        self._log_path = Path(log.name)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo_root()),
                                                                          os.environ.get("PYTHONPATH")])),
               "PYTHONNOUSERSITE": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
               "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen([str(python), "-m", WORKER_MODULE, "serve"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=log, env=env, text=True, bufsize=1,
                                      cwd=str(repo_root()))
        log.close()
        if not self._atexit:
            atexit.register(self.close)
            self._atexit = True
        self._read(timeout=120, what="start")

    def _read(self, timeout: float, what: str) -> dict:
        assert self._proc is not None and self._proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self._proc.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                self._kill()
                raise ConversionError(f"tensorflow worker: {what} took over {timeout:.0f} s and was stopped "
                                      f"(set TRAINER_TF_WORKER_TIMEOUT to allow more; log: {self._log_path})")
            line = self._proc.stdout.readline()
        finally:
            sel.close()
        if not line:
            code = self._proc.wait(timeout=10)
            self._proc = None
            raise ConversionError(f"tensorflow worker died (exit code {code}) during {what}: "
                                  f"{self._last_log_line()} (log: {self._log_path})")
        return json.loads(line)

    def _last_log_line(self) -> str:
        try:
            lines = [ln.strip() for ln in self._log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except (OSError, AttributeError):
            return "no log"
        return lines[-1][:300] if lines else "no output"

    def call(self, cmd: str, timeout: float = DEFAULT_TIMEOUT_S, **args) -> dict:
        """Run one worker command; its answer's `result`, or WorkerFailed with its one line."""
        args = {k: (str(v) if isinstance(v, Path) else v) for k, v in args.items()}
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            assert self._proc is not None and self._proc.stdin is not None
            try:
                self._proc.stdin.write(json.dumps({"cmd": cmd, "args": args}) + "\n")
                self._proc.stdin.flush()
            except BrokenPipeError:
                self._proc = None
                raise ConversionError(f"tensorflow worker died before {cmd}: {self._last_log_line()} "
                                      f"(log: {self._log_path})") from None
            answer = self._read(timeout, cmd)
        if not answer.get("ok"):
            raise WorkerFailed(answer.get("error", f"{cmd} failed"), answer.get("ops"))
        return answer["result"]

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def close(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                try:
                    self._proc.stdin.close()
                    self._proc.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    self._kill()
            self._proc = None
            if self._log_path is not None:      # kept only while a worker might still need reading
                self._log_path.unlink(missing_ok=True)


_WORKER: TFWorker | None = None


def tf_worker() -> TFWorker:
    """The process-wide tensorflow worker (started on first use, stopped at exit)."""
    global _WORKER
    if _WORKER is None:
        _WORKER = TFWorker()
    return _WORKER


# -- resolving what the user pointed at ----------------------------------------------------------

def resolve_source(model: Path) -> Path:
    """The loadable native model inside `model`: a .keras/.h5 file or a SavedModel directory.

    An MLflow model folder (an `MLmodel` file with a keras/tensorflow flavor) is resolved to
    the file or directory its flavor names: `data/model.keras` for Keras models, the
    `saved_model_dir` for tf2-module models.
    """
    model = Path(model)
    if not model.exists():
        raise UsageError(f"keras model {model} does not exist")
    if model.is_file():
        if model.suffix not in (".keras", ".h5", ".hdf5"):
            raise ConversionError(f"{model.name}: not a Keras model file (.keras or .h5); for a SavedModel "
                                  f"pass its directory")
        # Checked here, before a ~20 s tensorflow start, and with a clearer word than Keras's
        # "File not found" for a zip it cannot open.
        if model.suffix == ".keras" and not zipfile.is_zipfile(model):
            raise ConversionError(f"{model}: not a valid .keras archive (corrupt or truncated zip); "
                                  f"save the model again with model.save('model.keras')")
        if model.suffix != ".keras" and _head(model) != HDF5_MAGIC:
            raise ConversionError(f"{model}: not a valid HDF5 file (corrupt or truncated); "
                                  f"save the model again with model.save('model.keras')")
        return model
    if (model / "saved_model.pb").is_file():
        return model
    if (model / "MLmodel").is_file():
        return _from_mlflow_folder(model)
    raise ConversionError(f"{model} is neither a SavedModel directory (no saved_model.pb) nor an MLflow "
                          f"model folder (no MLmodel)")


def _from_mlflow_folder(folder: Path) -> Path:
    import yaml
    try:
        meta = yaml.safe_load((folder / "MLmodel").read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConversionError(f"{folder / 'MLmodel'} is not valid YAML: {exc.__class__.__name__}") from None
    flavors = meta.get("flavors") or {}
    conf = flavors.get("tensorflow") or flavors.get("keras")
    if conf is None:
        raise ConversionError(f"MLflow model {folder} has no keras/tensorflow flavor (flavors: "
                              f"{', '.join(sorted(flavors)) or 'none'}); use the matching --from")
    if conf.get("saved_model_dir"):
        found = folder / conf["saved_model_dir"]
        if (found / "saved_model.pb").is_file():
            return found
    data = folder / conf.get("data", "data")
    for candidate in (data / "model.keras", data / "model.h5", data / "model"):
        if candidate.is_file() or (candidate / "saved_model.pb").is_file():
            return candidate
    for pattern in ("*.keras", "*.h5"):
        hits = sorted(data.rglob(pattern)) if data.is_dir() else []
        if hits:
            return hits[0]
    raise ConversionError(f"MLflow model {folder}: no .keras/.h5 file or SavedModel under {data.name}/")


def _head(path: Path, n: int = 8) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def layout_for(rank: int) -> str:
    return LAYOUTS.get(rank, "N" + "?" * (rank - 1))


# -- the frontend ---------------------------------------------------------------------------------

class KerasFrontend(Frontend):
    name = "keras"
    runtime = "tensorflow"

    def __init__(self, worker: TFWorker | None = None):
        self._worker = worker

    @property
    def worker(self) -> TFWorker:
        return self._worker or tf_worker()

    def export(self, model: Path, out_dir: Path, sample: np.ndarray) -> ExportResult:
        source = resolve_source(model)
        sample = _as_batch(sample, "sample")
        out_dir = Path(out_dir)
        created = not out_dir.exists()
        out_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".keras-export-", dir=out_dir))
        try:
            np.save(work / "sample.npy", sample)
            info = self.worker.call("keras-export", model=source, sample=work / "sample.npy",
                                    out=work / "model.onnx")
            target = out_dir / "model.onnx"
            os.replace(work / "model.onnx", target)
        except WorkerFailed as exc:
            _cleanup(work, out_dir if created else None)
            if exc.ops:
                raise UnsupportedOpsError(self.name, exc.ops) from None
            raise ConversionError(f"keras: {exc.message}") from None
        except BaseException:
            _cleanup(work, out_dir if created else None)
            raise
        shutil.rmtree(work, ignore_errors=True)
        notes = [f"tf.function + tf2onnx.convert.from_function (opset {info['opset']}): Keras 3 "
                 f"Sequential models break from_keras"]
        if info["kind"] == "saved_model":
            notes.append("source is a SavedModel: its serving signature was converted")
        if info["n_native_outputs"] > 1:
            notes.append(f"the model has {info['n_native_outputs']} outputs; only the first is exported")
        shape = tuple(info["input_shape"])
        return ExportResult(onnx_path=target,
                            inputs=[ModelInput(info["input"], shape, layout_for(len(shape)))],
                            exporter=info["exporter"], notes=notes,
                            extras={"tf_source": source})

    def predict(self, model: Path, inputs: np.ndarray) -> np.ndarray:
        source = resolve_source(model)
        inputs = _as_batch(inputs, "inputs")
        with tempfile.TemporaryDirectory(prefix="keras-predict-") as tmp:
            np.save(Path(tmp) / "x.npy", inputs)
            try:
                self.worker.call("keras-predict", model=source, inputs=Path(tmp) / "x.npy",
                                 out=Path(tmp) / "y.npy")
            except WorkerFailed as exc:
                raise ConversionError(f"keras: {exc.message}") from None
            return np.load(Path(tmp) / "y.npy")


def _as_batch(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 2 or len(x) == 0:
        raise ConversionError(f"keras: {what} must be a non-empty batch (N, ...); got shape {x.shape}")
    if x.dtype.kind not in "fiub":
        raise ConversionError(f"keras: {what} must be numeric; got dtype {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _cleanup(work: Path, created_dir: Path | None) -> None:
    shutil.rmtree(work, ignore_errors=True)
    if created_dir is not None:
        try:
            created_dir.rmdir()       # only when empty: never remove what someone else put there
        except OSError:
            pass


FRONTEND = KerasFrontend()

__all__ = ["FRONTEND", "KerasFrontend", "TFWorker", "tf_worker", "resolve_source", "WorkerFailed"]
