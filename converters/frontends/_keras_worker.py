"""The half of the Keras frontend and the TFLite target that runs inside the tensorflow runtime.

    <tensorflow runtime python> -m converters.frontends._keras_worker serve
    <tensorflow runtime python> -m converters.frontends._keras_worker <command> '<json args>'

`serve` answers many requests in one process, because `import tensorflow` alone costs ~20 s:
one JSON request per line on stdin (`{"cmd": ..., "args": {...}}`), one JSON answer per line
on the protocol stream (`{"ok": true, "result": {...}}` or `{"ok": false, "error": "<one line>",
"ops": [...]}`). The protocol stream is the process's original stdout; fd 1 is pointed at
stderr so that whatever TensorFlow, tf2onnx or Keras print can never corrupt it.

Arrays cross the runtime boundary as .npy files. This module imports only numpy at the top;
tensorflow is imported by the commands that need it, so a `tflite-predict` (LiteRT only)
starts in about a second.

Commands:
  keras-export     .keras / .h5 / SavedModel dir -> ONNX via tf.function + tf2onnx.from_function
  keras-predict    run the native model (parity reference)
  tflite-build     Keras / SavedModel -> .tflite with TFLiteConverter (fp32 or int8), or
                   ONNX -> .tflite with onnx2tf when that is installed
  tflite-predict   run a .tflite file with ai_edge_litert's interpreter
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

import numpy as np

ONNX_OPSET = 17
PREDICT_BATCH = 256


class WorkerError(Exception):
    """A failure the user can act on; answered as one line (plus the unsupported ops, if any)."""

    def __init__(self, message: str, ops: list[str] | None = None):
        super().__init__(message)
        self.ops = sorted(set(ops or []))


def first_line(exc: BaseException) -> str:
    for line in str(exc).strip().splitlines():
        line = line.strip()
        if line and not line.startswith(("Traceback", "Stack trace")):
            return f"{type(exc).__name__}: {line[:300]}"
    return type(exc).__name__


def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    tf.get_logger().setLevel(logging.ERROR)
    return tf


# -- loading the native model ------------------------------------------------------------------

class NativeModel:
    """A Keras model or a SavedModel signature behind one `__call__(x) -> first output`."""

    def __init__(self, path: Path):
        tf = _quiet_tensorflow()
        self.path = path
        self.kind = "saved_model" if path.is_dir() else "keras"
        if self.kind == "keras":
            import keras
            try:
                self.model = keras.saving.load_model(str(path), compile=False)
            except Exception as exc:  # zip/h5/json errors of a corrupt or foreign file
                raise WorkerError(f"cannot load Keras model {path} (corrupt, truncated or not a "
                                  f".keras/.h5 file): {first_line(exc)}") from exc
            shape = _keras_input_shape(self.model)
            self.input_shape = shape
            self.n_outputs = len(self.model.outputs) if getattr(self.model, "outputs", None) else 1
            self._fn = lambda x: _first(self.model(x, training=False))
        else:
            try:
                loaded = tf.saved_model.load(str(path))
            except Exception as exc:
                raise WorkerError(f"cannot load SavedModel {path} (corrupt or not a SavedModel "
                                  f"directory): {first_line(exc)}") from exc
            self.model = loaded
            sig = _pick_signature(loaded, path)
            args, kwargs = sig.structured_input_signature
            specs = list(kwargs.items()) if kwargs else [(f"arg{i}", s) for i, s in enumerate(args)]
            if len(specs) != 1:
                raise WorkerError(f"SavedModel {path} takes {len(specs)} inputs "
                                  f"({', '.join(n for n, _ in specs)}); one input is supported")
            self.input_key, spec = specs[0]
            self.input_shape = tuple(spec.shape.as_list())
            out_keys = sorted(sig.structured_outputs) if isinstance(sig.structured_outputs, dict) else None
            self.n_outputs = len(out_keys) if out_keys else 1

            def call(x, sig=sig, key=self.input_key, by_name=bool(kwargs), out_keys=out_keys):
                out = sig(**{key: x}) if by_name else sig(x)
                return out[out_keys[0]] if out_keys else _first(out)
            self._fn = call

    def __call__(self, x):
        return self._fn(x)

    def signature(self, sample_shape: tuple[int, ...]):
        """A dynamic-batch TensorSpec that agrees with both the model and the sample."""
        tf = _quiet_tensorflow()
        declared = self.input_shape
        if declared is not None:
            if len(declared) != len(sample_shape) or any(
                    d is not None and d != s for d, s in zip(declared[1:], sample_shape[1:])):
                want = ", ".join("N" if d is None else str(d) for d in declared)
                raise WorkerError(f"sample shape {tuple(sample_shape)} does not fit the model input ({want})")
        return tf.TensorSpec([None, *sample_shape[1:]], tf.float32, name="input")

    def predict(self, x: np.ndarray) -> np.ndarray:
        tf = _quiet_tensorflow()
        outs = [np.asarray(self(tf.constant(x[i:i + PREDICT_BATCH])))
                for i in range(0, len(x), PREDICT_BATCH)]
        return np.concatenate(outs, axis=0) if outs else np.zeros((0,), np.float32)


def _first(out):
    if isinstance(out, dict):
        return out[sorted(out)[0]]
    if isinstance(out, (list, tuple)):
        return out[0]
    return out


def _keras_input_shape(model) -> tuple | None:
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):   # a Sequential model never built on an Input
        return None
    if not inputs:
        return None
    if len(inputs) != 1:
        raise WorkerError(f"the Keras model has {len(inputs)} inputs; one input is supported")
    return tuple(inputs[0].shape)


def _pick_signature(loaded, path: Path):
    sigs = dict(getattr(loaded, "signatures", {}) or {})
    for key in ("serving_default", "serve"):
        if key in sigs:
            return sigs[key]
    if sigs:
        return sigs[sorted(sigs)[0]]
    serve = getattr(loaded, "serve", None)
    if serve is not None and getattr(serve, "concrete_functions", None):
        return serve.concrete_functions[0]
    raise WorkerError(f"SavedModel {path} has no serving signature; export it with "
                      f"model.export(dir) or tf.saved_model.save(..., signatures=...)")


_CACHE: dict[tuple[str, float], NativeModel] = {}


def load_native(path: str) -> NativeModel:
    p = Path(path)
    if not p.exists():
        raise WorkerError(f"model {p} does not exist")
    stamp = max((f.stat().st_mtime for f in p.rglob("*")), default=0.0) if p.is_dir() else p.stat().st_mtime
    key = (str(p.resolve()), stamp)
    if key not in _CACHE:
        _CACHE.clear()          # one model at a time: MobileNet-sized graphs are not free
        _CACHE[key] = NativeModel(p)
    return _CACHE[key]


def model_function(native: NativeModel, spec):
    tf = _quiet_tensorflow()

    @tf.function(input_signature=[spec])
    def serve(x):
        return tf.identity(native(x), name="output")
    return serve


# -- keras-export -------------------------------------------------------------------------------

_UNSUPPORTED = re.compile(r"Tensorflow op \[(?P<node>[^:\]]+): (?P<op>[^\]]+)\] is not supported")
_FAILED = re.compile(r"Failed to convert node '?(?P<node>[^'\s]+)'? \(fct=.*?\)")


class _OpCollector(logging.Handler):
    """Collects every op tf2onnx could not map, instead of stopping at the first."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.unsupported: set[str] = set()
        self.failed: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        m = _UNSUPPORTED.search(msg)
        if m:
            self.unsupported.add(m.group("op"))
        elif msg.startswith("Failed to convert node"):
            self.failed.append(msg.splitlines()[0][:200])


def cmd_keras_export(model: str, sample: str, out: str) -> dict:
    tf = _quiet_tensorflow()
    import onnx
    import tf2onnx

    native = load_native(model)
    x = np.load(sample).astype(np.float32)
    spec = native.signature(x.shape)
    serve = model_function(native, spec)

    collector = _OpCollector()
    tf2onnx_logger = logging.getLogger("tf2onnx")
    tf2onnx_logger.addHandler(collector)
    try:
        try:
            proto, _ = tf2onnx.convert.from_function(serve, input_signature=[spec], opset=ONNX_OPSET)
        except Exception as exc:
            if collector.unsupported:
                raise WorkerError("tf2onnx cannot convert", ops=sorted(collector.unsupported)) from exc
            raise WorkerError(f"tf2onnx failed on {Path(model).name}: {first_line(exc)}") from exc
    finally:
        tf2onnx_logger.removeHandler(collector)
    # tf2onnx leaves unmapped TF ops in the graph and only logs them; an ONNX runtime would
    # reject the file later with the first one. Report them all now.
    leftover = {n.op_type for n in proto.graph.node
                if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)}
    if collector.unsupported or leftover:
        raise WorkerError("tf2onnx cannot convert", ops=sorted(collector.unsupported | leftover))
    onnx.checker.check_model(proto)
    onnx.save(proto, out)
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    return {
        "input": proto.graph.input[0].name,
        "input_shape": [None, *x.shape[1:]],
        "outputs": [o.name for o in proto.graph.output],
        "n_native_outputs": native.n_outputs,
        "dynamic_batch": bool(dim0.dim_param) or not dim0.HasField("dim_value"),
        "opset": ONNX_OPSET,
        "kind": native.kind,
        "exporter": f"tf2onnx {tf2onnx.__version__} (tf.function, tensorflow {tf.__version__})",
    }


def cmd_keras_predict(model: str, inputs: str, out: str) -> dict:
    native = load_native(model)
    x = np.load(inputs).astype(np.float32)
    native.signature(x.shape)           # the same shape check the exporter does
    y = native.predict(x)
    np.save(out, y)
    return {"shape": list(y.shape)}


# -- dispatch -----------------------------------------------------------------------------------

def _commands():
    from converters.targets import _tflite_worker
    return {
        "keras-export": cmd_keras_export,
        "keras-predict": cmd_keras_predict,
        "tflite-build": _tflite_worker.cmd_tflite_build,
        "tflite-predict": _tflite_worker.cmd_tflite_predict,
        "versions": _versions,
    }


def _versions() -> dict:
    from importlib import metadata
    found = {}
    for dist in ("tensorflow-cpu", "tensorflow", "keras", "tf2onnx", "onnx", "ai-edge-litert", "onnx2tf"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


def handle(request: dict) -> dict:
    cmd = request.get("cmd")
    commands = _commands()
    if cmd not in commands:
        return {"ok": False, "error": f"unknown worker command {cmd!r}; valid: {', '.join(sorted(commands))}"}
    try:
        return {"ok": True, "result": commands[cmd](**request.get("args", {}))}
    except WorkerError as exc:
        return {"ok": False, "error": str(exc), "ops": exc.ops}
    except Exception as exc:  # anything else still answers one line; the log has the traceback
        import traceback
        traceback.print_exc()
        return {"ok": False, "error": f"{cmd} failed: {first_line(exc)}"}


def serve() -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                      # stray prints from TF/tf2onnx go to the log, not the protocol
    sys.stdout = sys.stderr
    proto.write(json.dumps({"ok": True, "result": {"ready": True, "pid": os.getpid()}}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except ValueError as exc:
            answer = {"ok": False, "error": f"bad request: {exc}"}
        else:
            answer = handle(request)
        proto.write(json.dumps(answer) + "\n")
        sys.stderr.flush()


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        serve()
        return 0
    if len(argv) not in (1, 2):
        print(__doc__, file=sys.stderr)
        return 2
    answer = handle({"cmd": argv[0], "args": json.loads(argv[1]) if len(argv) == 2 else {}})
    print(json.dumps(answer))
    return 0 if answer["ok"] else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
