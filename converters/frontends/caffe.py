"""Caffe -> MMdnn IR -> ONNX, in the MXNet runtime (MMdnn reads Caffe without pycaffe).

Caffe has no maintained runtime, so models enter only through conversion. MODEL is a folder
holding one `.prototxt` (the deploy net) and one `.caffemodel`, or the `.caffemodel` with its
prototxt beside it. The parity reference (`predict`) runs the Caffe net layer by layer with
numpy from the prototxt + caffemodel themselves, independently of MMdnn.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from converters.base import ExportResult, Frontend, LayerOutputs
from converters.frontends import mmdnn_ir
from converters.workers.client import save_array, worker
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

    def layer_scope(self, node) -> str | None:
        """MMdnn names each ONNX node after its IR node: the Caffe layer (`fc_0`, `fc_1` when it
        split one in two)."""
        return node.name or None

    def layer_outputs(self, model: Path, inputs: np.ndarray, names: list[str]) -> LayerOutputs | None:
        """The Caffe layers' outputs for the ONNX node names (`caffe-layer-outputs`), from the
        numpy Caffe reference that parity uses, independent of MMdnn; None when no name is a layer's."""
        prototxt, caffemodel = resolve_caffe(model)
        with tempfile.TemporaryDirectory(prefix="trainer-caffe-layers-") as tmp:
            out = Path(tmp) / "layers.npz"
            info = worker(self.runtime).call("caffe-layer-outputs", who=self.name, prototxt=prototxt,
                                             caffemodel=caffemodel, layers=list(names), out=out,
                                             inputs=save_array(tmp, "x", np.asarray(inputs, dtype=np.float32)))
            if not info.get("layers"):
                return None
            with np.load(out) as found:       # arrays only: allow_pickle stays off
                return LayerOutputs({name: found[f"l{i}"] for i, name in enumerate(info["layers"])},
                                    info.get("names"))


FRONTEND = CaffeFrontend()
