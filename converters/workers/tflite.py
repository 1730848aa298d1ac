"""TFLite build and run, inside the tensorflow runtime: `tflite-build` and `tflite-predict`.

Build: a Keras model or SavedModel goes through `TFLiteConverter.from_concrete_functions` on the
same dynamic-batch `tf.function` the ONNX export uses (fp32, or int8 with a representative
dataset drawn from the calibration samples; inputs and outputs stay float32, so the artifact
takes exactly what the native model takes). An ONNX-only source goes through onnx2tf, when it is
installed in the runtime (fp32 only). Run: `ai_edge_litert.interpreter`, which replaces the
deprecated `tf.lite.Interpreter` and needs no tensorflow import.
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from converters.workers.server import WorkerError, command, error_line, report_versions
from converters.workers.tf_native import PREDICT_BATCH, load_native, model_function, quiet_tensorflow

report_versions("ai-edge-litert", "onnx2tf")

CALIB_MAX = 200          # representative samples fed to the int8 converter
_NOT_BUILTIN = re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op")


@command("tflite-build")
def cmd_tflite_build(out: str, source: str | None = None, onnx: str | None = None,
                     sample: str | None = None, int8: bool = False, calib: str | None = None,
                     input_name: str | None = None) -> dict:
    if source:
        return _from_tf(Path(source), Path(out), sample, int8, calib)
    if onnx:
        return _from_onnx(Path(onnx), Path(out), int8, input_name)
    raise WorkerError("tflite-build needs a Keras/SavedModel source or an ONNX file")


def _from_tf(source: Path, out: Path, sample: str | None, int8: bool, calib: str | None) -> dict:
    tf = quiet_tensorflow()
    native = load_native(str(source))
    if sample is None:
        raise WorkerError("tflite-build needs a sample input to fix the input shape")
    x = np.load(sample).astype(np.float32)
    spec = native.signature(x.shape)
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    # Frozen first: the Keras 3 model's variables are captured by the wrapping tf.function, and
    # left as resource variables the interpreter reads them uninitialised (READ_VARIABLE fails).
    frozen = convert_variables_to_constants_v2(model_function(native, spec).get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    if int8:
        if calib is None:
            raise WorkerError("tflite-int8 needs calibration samples (--calib)")
        data = np.load(calib).astype(np.float32)
        if data.ndim != len(x.shape) or data.shape[1:] != x.shape[1:]:
            raise WorkerError(f"calibration samples have shape {data.shape}; the model takes "
                              f"(N, {', '.join(map(str, x.shape[1:]))})")
        data = data[:CALIB_MAX]

        def representative():
            for i in range(len(data)):
                yield [data[i:i + 1]]
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        blob = converter.convert()
    except Exception as exc:
        ops = _NOT_BUILTIN.findall(str(exc))
        if ops:
            raise WorkerError("TFLiteConverter: ops without a TFLite builtin", ops=ops) from exc
        raise WorkerError(f"TFLiteConverter failed: {error_line(exc)}") from exc
    out.write_bytes(blob)
    return {"path": str(out), "bytes": len(blob), "int8": int8, "via": f"TFLiteConverter (tensorflow {tf.__version__})",
            "calib_samples": int(min(len(np.load(calib)), CALIB_MAX)) if int8 else 0}


def _from_onnx(onnx_path: Path, out: Path, int8: bool, input_name: str | None) -> dict:
    if importlib.util.find_spec("onnx2tf") is None:
        raise WorkerError("tflite from an ONNX-only source needs onnx2tf, which is not installed in the "
                          "tensorflow runtime: convert from the Keras/SavedModel model instead, or install "
                          "it with `<runtime>/bin/pip install --no-deps onnx2tf onnx-graphsurgeon sng4onnx`")
    if int8:
        raise WorkerError("tflite-int8 from an ONNX-only source is not supported; convert from the "
                          "Keras/SavedModel model, or use the onnx-int8 target")
    import onnx2tf
    work = Path(tempfile.mkdtemp(prefix="onnx2tf-", dir=out.parent))
    try:
        kwargs = dict(input_onnx_file_path=str(onnx_path), output_folder_path=str(work), non_verbose=True)
        if input_name:
            # keep the source's input layout (onnx2tf would turn NCHW into NHWC, and misread an NHWC
            # input as NCHW), so the artifact takes what the native model takes
            kwargs["keep_ncw_or_nchw_or_ncdhw_input_names"] = [input_name]
        try:
            onnx2tf.convert(**kwargs)
        except BaseException as exc:  # onnx2tf calls sys.exit() on some failures
            raise WorkerError(f"onnx2tf failed on {onnx_path.name}: {error_line(exc)}") from exc
        found = sorted(work.glob("*_float32.tflite"))
        if not found:
            raise WorkerError(f"onnx2tf wrote no *_float32.tflite for {onnx_path.name}")
        shutil.move(str(found[0]), out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"path": str(out), "bytes": out.stat().st_size, "int8": False,
            "via": f"onnx2tf {getattr(onnx2tf, '__version__', '')}".strip()}


@command("tflite-predict")
def cmd_tflite_predict(artifact: str, inputs: str, out: str, threads: int | None = None) -> dict:
    from ai_edge_litert.interpreter import Interpreter
    x = np.load(inputs).astype(np.float32)
    try:
        it = Interpreter(model_path=artifact, num_threads=threads)
    except Exception as exc:
        raise WorkerError(f"cannot load TFLite model {artifact}: {error_line(exc)}") from exc
    inp = it.get_input_details()[0]
    outp = it.get_output_details()[0]
    sig = list(inp.get("shape_signature", inp["shape"]))
    if len(sig) != x.ndim or any(d not in (-1, s) for d, s in zip(sig[1:], x.shape[1:])):
        raise WorkerError(f"inputs of shape {x.shape} do not fit the TFLite input {tuple(sig)}")
    step = PREDICT_BATCH if sig[0] == -1 else int(sig[0])
    outs, current = [], None
    for i in range(0, len(x), step):
        chunk = x[i:i + step]
        if tuple(chunk.shape) != current:
            it.resize_tensor_input(inp["index"], list(chunk.shape), strict=False)
            it.allocate_tensors()
            current = tuple(chunk.shape)
        it.set_tensor(inp["index"], _quantize(chunk, inp))
        it.invoke()
        outs.append(_dequantize(it.get_tensor(outp["index"]), outp))
    y = np.concatenate(outs, axis=0)
    np.save(out, y)
    return {"shape": list(y.shape), "input_dtype": np.dtype(inp["dtype"]).name}


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if np.dtype(detail["dtype"]).kind == "f":
        return y.astype(np.float32)
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)
