"""Keras / TensorFlow -> ONNX, inside the tensorflow runtime: `keras-export`, `keras-predict` and
`keras-layer-outputs` (the fp32 diagnosis' per-layer reference).

The native model (tf_native) is wrapped in a dynamic-batch `tf.function` and converted with
`tf2onnx.convert.from_function` (Keras 3 breaks `from_keras` on Sequential models); every op
tf2onnx cannot map is collected and answered as `ops`, not just the first.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from converters.workers.server import WorkerError, command, error_line, report_versions
from converters.workers.tf_native import PREDICT_BATCH, load_native, model_function, quiet_tensorflow

ONNX_OPSET = 17

report_versions("tensorflow-cpu", "tensorflow", "keras", "tf2onnx", "onnx")


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


@command("keras-export")
def cmd_keras_export(model: str, sample: str, out: str) -> dict:
    tf = quiet_tensorflow()
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
            raise WorkerError(f"tf2onnx failed on {Path(model).name}: {error_line(exc)}") from exc
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


@command("keras-predict")
def cmd_keras_predict(model: str, inputs: str, out: str) -> dict:
    native = load_native(model)
    x = np.load(inputs).astype(np.float32)
    native.signature(x.shape)           # the same shape check the exporter does
    y = native.predict(x)
    np.save(out, y)
    return {"shape": list(y.shape)}



@command("keras-layer-outputs")
def cmd_keras_layer_outputs(model: str, inputs: str, layers: list, out: str) -> dict:
    """The outputs of the layers named by tf2onnx scopes (`sequential_1/conv2d_1_2`, in graph
    order) on `inputs`, written to `out` (.npz, `l<i>` for the i-th scope answered in `layers`,
    with `names`: the Keras layer of each). TensorFlow makes scope names unique with `_<n>`
    suffixes, so a scope is matched to a layer by order among the layers of the same base name
    (`conv2d_1_2` is the second `conv2d*` scope: the second `conv2d*` layer). Only a top-level
    layer of a Keras model is matched (not a nested model's, nor a SavedModel: no layers)."""
    import keras

    native = load_native(model)
    x = np.load(inputs).astype(np.float32)
    by_base: dict[str, list] = {}
    for layer in getattr(native.model, "layers", []) if native.kind == "keras" else []:
        by_base.setdefault(_base_name(layer.name), []).append(layer)
    found, seen = {}, {}
    for scope in layers:
        parts = scope.split("/")
        if len(parts) != 2:
            continue
        base = _base_name(parts[1])
        k = seen[base] = seen.get(base, -1) + 1
        if k < len(by_base.get(base, [])):
            found[scope] = by_base[base][k]
    if not found:
        np.savez(out)
        return {"layers": []}
    probe = keras.Model(inputs=native.model.inputs, outputs=[layer.output for layer in found.values()])
    ys = probe.predict(x, batch_size=PREDICT_BATCH, verbose=0)
    ys = ys if isinstance(ys, (list, tuple)) else [ys]
    np.savez(out, **{f"l{i}": np.asarray(y, np.float32) for i, y in enumerate(ys)})
    return {"layers": list(found), "names": {scope: layer.name for scope, layer in found.items()}}


def _base_name(name: str) -> str:
    """A layer or scope name without the `_<n>` suffixes that make it unique (`conv2d_1_2` -> `conv2d`)."""
    return re.sub(r"(_\d+)+$", "", name)
