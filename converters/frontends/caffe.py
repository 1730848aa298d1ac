"""Caffe -> MMdnn IR -> ONNX, in the MXNet runtime (MMdnn reads Caffe without pycaffe).

Caffe has no maintained runtime, so models enter only through conversion. MODEL is a folder
holding one `.prototxt` (the deploy net) and one `.caffemodel`, or the `.caffemodel` with its
prototxt beside it. The parity reference (`predict`) runs the Caffe net layer by layer with
numpy from the prototxt + caffemodel themselves, independently of MMdnn.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from converters.base import ExportResult, Frontend
from converters.frontends import mmdnn_ir
from converters.workers.client import worker
from trainer.errors import ConversionError


def resolve_caffe(model: Path) -> tuple[Path, Path]:
    """(prototxt, caffemodel) of a Caffe model given as a folder or either file."""
    model = Path(model)
    if not model.exists():
        raise ConversionError(f"caffe: model {model} does not exist")
    folder = model if model.is_dir() else model.parent
    protos = [model] if model.suffix == ".prototxt" else sorted(folder.glob("*.prototxt"))
    weights = [model] if model.suffix == ".caffemodel" else sorted(folder.glob("*.caffemodel"))
    if len(protos) > 1:   # prefer the deploy net over train/solver files
        protos = [p for p in protos if "deploy" in p.stem] or [p for p in protos if p.stem == model.stem] or protos
    if len(protos) != 1 or len(weights) != 1:
        raise ConversionError(f"caffe: {model} must give one .prototxt and one .caffemodel "
                              f"(found {len(protos)} and {len(weights)})")
    return protos[0], weights[0]


class CaffeFrontend(Frontend):
    name = "caffe"
    runtime = "mxnet"

    def export(self, model: Path, out_dir: Path, sample: np.ndarray) -> ExportResult:
        prototxt, caffemodel = resolve_caffe(model)
        out_dir = Path(out_dir)
        ir_dir = out_dir / "mmdnn_ir"
        meta = worker(self.runtime).call("mmdnn-ir", who=self.name, src="caffe", prototxt=prototxt,
                                         caffemodel=caffemodel, ir=ir_dir)
        return mmdnn_ir.ir_to_onnx(ir_dir, out_dir, self.name, sample, meta["notes"])

    def predict(self, model: Path, inputs: np.ndarray) -> np.ndarray:
        prototxt, caffemodel = resolve_caffe(model)
        return worker(self.runtime).predict("caffe-predict", np.asarray(inputs, dtype=np.float32), who=self.name,
                                            prototxt=prototxt, caffemodel=caffemodel)


FRONTEND = CaffeFrontend()
