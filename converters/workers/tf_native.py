"""The tensorflow runtime's native-model loader, shared by the keras and tflite commands.

A .keras/.h5 file or a SavedModel directory behind one `__call__(x) -> first output`, cached
(one model at a time) so that `keras-export` then `keras-predict` or `tflite-build` of the same
model load it once; `model_function` wraps it in the dynamic-batch `tf.function` that both the
ONNX export and the TFLite converter start from. Runs inside the tensorflow runtime; imports
only numpy at the top.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from converters.workers.server import WorkerError, error_line

PREDICT_BATCH = 256


def quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    tf.get_logger().setLevel(logging.ERROR)
    return tf


# -- loading the native model ------------------------------------------------------------------

class NativeModel:
    """A Keras model or a SavedModel signature behind one `__call__(x) -> first output`."""

    def __init__(self, path: Path):
        tf = quiet_tensorflow()
        self.path = path
        self.kind = "saved_model" if path.is_dir() else "keras"
        if self.kind == "keras":
            import keras
            try:
                # safe_mode: a Lambda layer's marshalled Python bytecode is refused, not loaded
                # (Keras 3 applies it to .keras and .h5 alike); said explicitly, not left to a default.
                self.model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
            except Exception as exc:  # zip/h5/json errors of a corrupt or foreign file
                if "safe_mode" in str(exc):
                    raise WorkerError(f"refused to load Keras model {path}: it holds Python code (a Lambda "
                                      f"layer), which conversion never loads (Keras safe_mode); use built-in "
                                      f"or registered layers instead") from exc
                raise WorkerError(f"cannot load Keras model {path} (corrupt, truncated or not a "
                                  f".keras/.h5 file): {error_line(exc)}") from exc
            shape = _keras_input_shape(self.model)
            self.input_shape = shape
            self.n_outputs = len(self.model.outputs) if getattr(self.model, "outputs", None) else 1
            self._fn = lambda x: _first(self.model(x, training=False))
        else:
            try:
                loaded = tf.saved_model.load(str(path))
            except Exception as exc:
                raise WorkerError(f"cannot load SavedModel {path} (corrupt or not a SavedModel "
                                  f"directory): {error_line(exc)}") from exc
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
        tf = quiet_tensorflow()
        declared = self.input_shape
        if declared is not None:
            if len(declared) != len(sample_shape) or any(
                    d is not None and d != s for d, s in zip(declared[1:], sample_shape[1:])):
                want = ", ".join("N" if d is None else str(d) for d in declared)
                raise WorkerError(f"sample shape {tuple(sample_shape)} does not fit the model input ({want})")
        return tf.TensorSpec([None, *sample_shape[1:]], tf.float32, name="input")

    def predict(self, x: np.ndarray) -> np.ndarray:
        tf = quiet_tensorflow()
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
    tf = quiet_tensorflow()

    @tf.function(input_signature=[spec])
    def serve(x):
        return tf.identity(native(x), name="output")
    return serve

