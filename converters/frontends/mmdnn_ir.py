"""MMdnn's intermediate representation (IR), shared by the `caffe` and `mxnet-mmdnn` frontends.

An IR folder holds `ir.pb` (graph), `ir.json` (the same, readable) and `ir.npy` (weights),
written in the MXNet runtime (MMdnn 0.3.1 runs there: Python <= 3.11, protobuf 3.20). The IR
is NHWC with batch 1; the ONNX written from it is repaired to take NCHW with a dynamic batch,
like the native model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from converters.base import ExportResult, ModelInput
from converters.workers.client import worker
from trainer.errors import ConversionError

MMDNN_VERSION = "0.3.1"


def ir_to_onnx(ir_dir: Path, out_dir: Path, frontend: str, sample: np.ndarray, notes: list[str]) -> ExportResult:
    """Write `out_dir/model.onnx` from the IR (opset 13, NCHW input, dynamic batch)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    meta = worker("mxnet").call("ir-onnx", who=frontend, ir=ir_dir, out=onnx_path)
    return ExportResult(
        onnx_path=onnx_path,
        inputs=[ModelInput(meta["input"], (None, *sample.shape[1:]), _layout(sample.ndim))],
        exporter=meta["exporter"],
        notes=notes + meta["notes"],
        extras={"mmdnn_ir": Path(ir_dir)},
    )


def to_pytorch(ir_dir: Path, out_dir: Path) -> Path:
    """MMdnn IR -> PyTorch: writes `out_dir/model.py` (class `KitModel(weight_file)`) and
    `out_dir/weights.npy`; returns the path of model.py.

    The module takes NCHW input like the native model; load it with
    `module = <import model.py>.KitModel(str(out_dir / "weights.npy")).eval()`.
    """
    ir_dir, out_dir = Path(ir_dir), Path(out_dir)
    if not (ir_dir / "ir.pb").is_file():
        raise ConversionError(f"pytorch: {ir_dir} is not an MMdnn IR folder (no ir.pb); "
                              f"convert from caffe or mxnet-mmdnn to get one")
    meta = worker("mxnet").call("ir-pytorch", who="pytorch", ir=ir_dir, out=out_dir)
    return Path(meta["code"])


def _layout(ndim: int) -> str:
    return {4: "NCHW", 3: "NCW", 2: "NC"}.get(ndim, "N" + "?" * (ndim - 1))
