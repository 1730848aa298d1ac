"""MXNet -> MMdnn IR -> ONNX: the MMdnn path for MXNet checkpoints (frontend `mxnet-mmdnn`).

`mxnet` (mx.onnx) is the default; this one exists for the IR it leaves behind, from which
`--to pytorch` writes PyTorch code + weights. Gluon's names are renamed to what MMdnn reads.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from converters.base import ExportResult, Frontend
from converters.frontends import mmdnn_ir
from converters.frontends.mxnet import FRONTEND as MX_FRONTEND
from converters.frontends.mxnet import mx_layer_outputs, resolve_checkpoint
from converters.workers.client import save_array, worker


class MXNetMMdnnFrontend(Frontend):
    name = "mxnet-mmdnn"
    runtime = "mxnet"

    def export(self, model: Path, out_dir: Path, sample: np.ndarray) -> ExportResult:
        symbol, params = resolve_checkpoint(model)
        out_dir = Path(out_dir)
        ir_dir = out_dir / "mmdnn_ir"
        with tempfile.TemporaryDirectory(prefix="trainer-mmdnn-") as tmp:
            sample_path = save_array(tmp, "sample", np.asarray(sample[:1], dtype=np.float32))
            meta = worker(self.runtime).call("mmdnn-ir", who=self.name, src="mxnet", symbol=symbol, params=params,
                                             sample=sample_path, ir=ir_dir)
        return mmdnn_ir.ir_to_onnx(ir_dir, out_dir, self.name, sample, meta["notes"])

    def predict(self, model: Path, inputs: np.ndarray) -> np.ndarray:
        return MX_FRONTEND.predict(model, inputs)

    def layer_scope(self, node) -> str | None:
        """MMdnn names each ONNX node after its IR node, the MXNet node less Gluon's `_fwd`."""
        return node.name or None

    def layer_outputs(self, model: Path, inputs: np.ndarray, names: list[str]):
        return mx_layer_outputs(self.name, model, inputs, names)


FRONTEND = MXNetMMdnnFrontend()
