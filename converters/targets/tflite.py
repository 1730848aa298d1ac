"""TFLite targets: `tflite` (fp32) and `tflite-int8` (full-integer kernels, float32 in/out).

From a Keras/SavedModel source (an export by the keras frontend, which records the native
model in `ExportResult.extras["tf_source"]`): TFLiteConverter on the same dynamic-batch
`tf.function` the ONNX export used, frozen; int8 is calibrated on up to 200 of the calibration
samples (representative dataset) with `TFLITE_BUILTINS_INT8` only. From any other (ONNX-only)
source: onnx2tf, when it is installed in the tensorflow runtime, fp32 only, keeping the
source's input layout (NCHW stays NCHW). Build and run (`ai_edge_litert` interpreter) both
happen in the tensorflow runtime, in the long-lived worker of `converters.workers` (commands in
`converters/workers/tflite.py`), the same process the keras frontend uses.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from converters.base import Built, ExportResult, Target
from converters.workers.client import WorkerClient, save_array, worker
from trainer.errors import ConversionError


class TFLiteTarget(Target):
    """`tflite`: fp32. The registry instantiates it with no arguments."""

    name = "tflite"
    runtime = "tensorflow"
    int8 = False
    precision = "fp32"          # judged by atol/rtol in the parity report

    def __init__(self, worker: WorkerClient | None = None):
        self._worker = worker

    @property
    def worker(self) -> WorkerClient:
        return self._worker or worker(self.runtime)

    def build(self, export: ExportResult, out_dir: Path, calib: np.ndarray | None) -> Built:
        out_dir = Path(out_dir)
        out = out_dir / ("model_int8.tflite" if self.int8 else "model.tflite")
        source = export.extras.get("tf_source")
        if self.int8 and calib is None:
            raise ConversionError(f"{self.name}: int8 needs calibration samples; pass --calib DATA")
        created = not out_dir.exists()
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            with tempfile.TemporaryDirectory(prefix=".tflite-", dir=out_dir) as tmp:
                tmp = Path(tmp)
                args: dict = {"out": tmp / out.name, "int8": self.int8}
                if source is not None:
                    args["source"] = Path(source)
                    args["sample"] = save_array(tmp, "sample", _sample(export, calib))
                    if calib is not None and self.int8:
                        args["calib"] = save_array(tmp, "calib", np.asarray(calib, dtype=np.float32))
                else:
                    args["onnx"] = export.onnx_path
                    if export.inputs:
                        args["input_name"] = export.inputs[0].name
                info = self.worker.call("tflite-build", who=self.name, **args)
                (tmp / out.name).replace(out)
        except BaseException:
            _rmdir_if_created(out_dir, created)
            raise
        notes = [f"{info['via']}" + (f", int8 calibrated on {info['calib_samples']} samples, "
                                          f"float32 input/output" if self.int8 else "")]
        return Built(out, notes)

    def predict(self, artifact: Path, inputs: np.ndarray) -> np.ndarray:
        return self.worker.predict("tflite-predict", np.asarray(inputs, dtype=np.float32), who=self.name,
                                   artifact=Path(artifact))


def _sample(export: ExportResult, calib: np.ndarray | None) -> np.ndarray:
    """One input of the exported shape: fixes the converter's signature (batch stays dynamic)."""
    shape = export.inputs[0].shape if export.inputs else ()
    if shape and all(d is not None for d in shape[1:]):
        return np.zeros((1, *shape[1:]), np.float32)
    if calib is not None:
        return np.ascontiguousarray(np.asarray(calib)[:1], dtype=np.float32)
    raise ConversionError(f"tflite: the exported input shape {shape} is not fixed; pass --calib DATA")


def _rmdir_if_created(out_dir: Path, created: bool) -> None:
    if created:
        try:
            out_dir.rmdir()
        except OSError:
            pass


class TFLiteInt8Target(TFLiteTarget):
    """`tflite-int8`: int8 kernels (TFLITE_BUILTINS_INT8), float32 input/output."""

    name = "tflite-int8"
    int8 = True
    precision = "int8"          # judged by top-1 agreement and accuracy delta


TARGET = TFLiteTarget()
TARGET_INT8 = TFLiteInt8Target()
TARGETS = [TARGET, TARGET_INT8]

__all__ = ["TARGET", "TARGET_INT8", "TARGETS", "TFLiteTarget", "TFLiteInt8Target"]
