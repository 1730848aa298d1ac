"""Keras / TensorFlow -> ONNX, inside the tensorflow runtime: `keras-export` and `keras-predict`.

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
from converters.workers.tf_native import load_native, model_function, quiet_tensorflow

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

