"""`--from onnx`: an ONNX file is the reference; quantize it and translate it to PyTorch."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from converters.api import convert


def test_onnx_source_to_int8_and_pytorch(tmp_path, digits_cnn, digits_trained):
    _, calib, _ = digits_cnn
    model = digits_trained[0]
    torch.onnx.export(model, (torch.zeros(2, 1, 8, 8),), str(tmp_path / "digits.onnx"), dynamo=False,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}})

    report = convert(tmp_path / "digits.onnx", "onnx", "onnx,onnx-int8,pytorch", calib=calib,
                     out_dir=tmp_path / "out")

    assert report.passed, report.to_markdown()
    rows = {r.target: r for r in report.rows}
    assert report.inputs[0]["name"] == "image" and report.native_latency_ms["b1"] is not None
    z = np.load(calib)
    x = z["x"][len(z["x"]) // 2:]
    ref = ort.InferenceSession(str(tmp_path / "digits.onnx"), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    back = torch.jit.load(str(tmp_path / "out" / rows["pytorch"].artifact))
    with torch.no_grad():
        np.testing.assert_allclose(back(torch.from_numpy(x)).numpy(), ref, atol=1e-4, rtol=1e-3)
    assert rows["onnx-int8"].top1_agreement >= 0.98
    assert rows["onnx-int8"].size_bytes <= 0.4 * rows["onnx"].size_bytes
