"""`--from onnx`: an ONNX file is the native model; ONNX Runtime running it is the reference.

Useful to quantize / bundle / translate a model exported elsewhere, with the same parity gate.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from converters.base import ExportResult, ModelInput, Frontend
from converters.targets.onnx import check_onnx, ort_runner
from trainer.errors import ConversionError, translate

_LAYOUTS = {2: "NC", 3: "NTC", 4: "NCHW", 5: "NCDHW"}


def _graph_input(path: Path):
    import onnx

    with translate(ConversionError, f"onnx: cannot read {path.name} (truncated or corrupt?)"):
        proto = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init]
    if len(inputs) != 1:
        raise ConversionError(f"onnx: {path.name} has {len(inputs)} inputs; conversion handles one-input models")
    return inputs[0]


class OnnxFrontend(Frontend):
    name = "onnx"
    runtime = "torch"

    def _file(self, model: Path) -> Path:
        model = Path(model)
        if model.is_dir():
            found = sorted(model.glob("*.onnx"))
            if len(found) != 1:
                raise ConversionError(f"onnx: {model} should hold exactly one .onnx file, found {len(found)}")
            model = found[0]
        if not model.is_file():
            raise ConversionError(f"onnx: model file not found: {model}")
        return model

    def input_shape(self, model: Path) -> tuple[int | None, ...]:
        dims = _graph_input(self._file(model)).type.tensor_type.shape.dim
        return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)

    def example_input(self, model: Path) -> np.ndarray | None:
        return None

    def export(self, model: Path, out_dir: Path, sample: np.ndarray) -> ExportResult:
        src = self._file(model)
        check_onnx(src)
        out_dir.mkdir(parents=True, exist_ok=True)
        dst = out_dir / "model.onnx"
        shutil.copyfile(src, dst)
        inp = _graph_input(dst)
        shape = (None, *self.input_shape(dst)[1:])
        notes = [] if (self.input_shape(dst) or (None,))[0] is None else \
            ["the ONNX model has a fixed batch size; parity runs it batch by batch"]
        return ExportResult(dst, [ModelInput(inp.name, shape, _LAYOUTS.get(len(shape), "N?"))],
                            "as given (onnx)", notes)

    def predict(self, model: Path, inputs: np.ndarray) -> np.ndarray:
        return self.runner(model)(inputs)

    def runner(self, model: Path) -> Callable[[np.ndarray], np.ndarray]:
        path = self._file(model)
        run = ort_runner(path)
        fixed = self.input_shape(path)[0]
        if fixed is None:
            return run
        return lambda x: np.concatenate([run(x[i:i + fixed]) for i in range(0, len(x), fixed)])
