"""An exporter that maps one layer wrongly, for the fp32 diagnosis tests: the frontend's own
export, then one weight of a chosen initializer nudged in the ONNX file it wrote."""
from __future__ import annotations

from typing import Callable


def nudging(export: Callable, pick: Callable, by: float = 0.05) -> Callable:
    """`export` (a Frontend.export) followed by `+by` on the first row of the first initializer
    `pick(initializer)` accepts; to monkeypatch in as the frontend's export."""
    import onnx
    from onnx import numpy_helper

    def perturbed(self, model, out_dir, sample):
        result = export(self, model, out_dir, sample)
        m = onnx.load(str(result.onnx_path))
        init = next(i for i in m.graph.initializer if pick(i))
        w = numpy_helper.to_array(init).copy()
        w[0] += by
        init.CopyFrom(numpy_helper.from_array(w, init.name))
        onnx.save(m, str(result.onnx_path))
        return result
    return perturbed
