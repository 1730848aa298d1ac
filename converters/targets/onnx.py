"""`--to onnx`: the exported fp32 ONNX model, validated by `onnx.checker`, run by ONNX Runtime."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from converters.base import Built, ExportResult, Target
from trainer.errors import ConversionError, translate


def check_onnx(path: Path) -> None:
    """`onnx.checker.check_model` with full checks; its failure becomes a one-line error."""
    import onnx

    # onnx raises ValidationError, DecodeError, InferenceError ...
    with translate(ConversionError, f"{path.name} is not a valid ONNX model"):
        onnx.checker.check_model(str(path), full_check=True)


def ort_session(path: Path, threads: int = 0):
    """An ONNX Runtime CPU session (`threads=0`: ORT's default, all cores)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    with translate(ConversionError, f"ONNX Runtime cannot load {path.name}"):
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_runner(path: Path, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """Load once; the returned function gives the model's output on a batch (a dict by output
    name when it has several)."""
    sess = ort_session(path, threads)
    inp = sess.get_inputs()
    if len(inp) != 1:
        raise ConversionError(f"{path.name} has {len(inp)} inputs; conversion handles one-input models")
    name = inp[0].name
    dtype = np.float32 if "float)" in inp[0].type else None

    outputs = [o.name for o in sess.get_outputs()]

    def run(x: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        x = np.ascontiguousarray(x, dtype=dtype) if dtype else x
        got = sess.run(None, {name: x})
        return got[0] if len(got) == 1 else dict(zip(outputs, got))

    return run


class OnnxTarget(Target):
    name = "onnx"
    precision = "fp32"

    def build(self, export: ExportResult, out_dir: Path, calib: np.ndarray | None) -> Built:
        out_dir.mkdir(parents=True, exist_ok=True)
        dst = out_dir / "model.onnx"
        shutil.copyfile(export.onnx_path, dst)
        check_onnx(dst)
        return Built(dst)

    def predict(self, artifact: Path, inputs: np.ndarray) -> np.ndarray:
        return self.runner(artifact)(inputs)

    def runner(self, artifact: Path) -> Callable[[np.ndarray], np.ndarray]:
        return ort_runner(artifact)
