"""MXNet -> ONNX with the official exporter, `mx.onnx.export_model`, in the MXNet runtime.

The native model is a symbol + params pair, as `HybridBlock.export(prefix)` or
`mx.model.save_checkpoint` write them: `<prefix>-symbol.json` and `<prefix>-<epoch>.params`.
MODEL may be that folder, the symbol file or the params file.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np

from converters.base import ExportResult, Frontend, LayerOutputs, ModelInput
from converters.workers.client import save_array, worker
from trainer.errors import ConversionError


def resolve_checkpoint(model: Path) -> tuple[Path, Path]:
    """(symbol.json, params) of an MXNet checkpoint given as a folder, symbol or params file."""
    model = Path(model)
    if not model.exists():
        raise ConversionError(f"mxnet: model {model} does not exist")
    if model.is_dir():
        symbols = sorted(model.glob("*-symbol.json"))
        if len(symbols) != 1:
            raise ConversionError(f"mxnet: {model} must hold exactly one *-symbol.json, found {len(symbols)}")
        symbol = symbols[0]
    elif model.name.endswith("-symbol.json"):
        symbol = model
    elif model.suffix == ".params":
        prefix = re.sub(r"-\d+$", "", model.stem)
        symbol = model.with_name(f"{prefix}-symbol.json")
        if not symbol.is_file():
            raise ConversionError(f"mxnet: no symbol file {symbol.name} next to {model.name}")
        return symbol, model
    else:
        raise ConversionError(f"mxnet: {model} is not an MXNet checkpoint (want <prefix>-symbol.json "
                              f"+ <prefix>-NNNN.params, or their folder)")
    prefix = symbol.name[: -len("-symbol.json")]
    params = sorted(symbol.parent.glob(f"{prefix}-*.params"),
                    key=lambda p: int(m.group(1)) if (m := re.search(r"-(\d+)\.params$", p.name)) else -1)
    if not params:
        raise ConversionError(f"mxnet: no {prefix}-NNNN.params next to {symbol.name}")
    return symbol, params[-1]     # the newest epoch


class MXNetFrontend(Frontend):
    name = "mxnet"
    runtime = "mxnet"

    def export(self, model: Path, out_dir: Path, sample: np.ndarray) -> ExportResult:
        symbol, params = resolve_checkpoint(model)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        onnx_path = out_dir / "model.onnx"
        with tempfile.TemporaryDirectory(prefix="trainer-mxnet-") as tmp:
            sample_path = save_array(tmp, "sample", np.asarray(sample[:1], dtype=np.float32))
            meta = worker(self.runtime).call("mx-export", who=self.name, symbol=symbol, params=params,
                                             sample=sample_path, out=onnx_path)
        return ExportResult(
            onnx_path=onnx_path,
            inputs=[ModelInput(meta["input"], (None, *sample.shape[1:]), _layout(sample.ndim))],
            exporter=meta["exporter"],
            notes=[f"opset {meta['opset']} (mx.onnx stamps the installed onnx's newest opset)"],
        )

    def predict(self, model: Path, inputs: np.ndarray) -> np.ndarray:
        symbol, params = resolve_checkpoint(model)
        return worker(self.runtime).predict("mx-predict", np.asarray(inputs, dtype=np.float32), who=self.name,
                                            symbol=symbol, params=params)

    def layer_scope(self, node) -> str | None:
        """mx.onnx names the last ONNX tensor of each MXNet op after the MXNet node (`..._conv0_fwd`);
        the tensors it adds in between (`..._data_flattened`) are no node's and are skipped."""
        return node.output[0] if node.output else None

    def layer_outputs(self, model: Path, inputs: np.ndarray, names: list[str]) -> LayerOutputs | None:
        return mx_layer_outputs(self.name, model, inputs, names)


def mx_layer_outputs(who: str, model: Path, inputs: np.ndarray, names: list[str]) -> LayerOutputs | None:
    """The MXNet nodes' outputs for the ONNX tensors `names` (see `mx-layer-outputs`), run by
    MXNet itself in the MXNet runtime; None when no name is an MXNet node's."""
    symbol, params = resolve_checkpoint(model)
    with tempfile.TemporaryDirectory(prefix="trainer-mxnet-layers-") as tmp:
        out = Path(tmp) / "layers.npz"
        info = worker("mxnet").call("mx-layer-outputs", who=who, symbol=symbol, params=params, layers=list(names),
                                    inputs=save_array(tmp, "x", np.asarray(inputs, dtype=np.float32)), out=out)
        if not info.get("layers"):
            return None
        with np.load(out) as found:       # arrays only: allow_pickle stays off
            return LayerOutputs({name: found[f"l{i}"] for i, name in enumerate(info["layers"])}, info.get("names"))


def _layout(ndim: int) -> str:
    return {4: "NCHW", 3: "NCW", 2: "NC"}.get(ndim, "N" + "?" * (ndim - 1))


FRONTEND = MXNetFrontend()
