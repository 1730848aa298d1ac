"""onnx-int8: static QDQ quantization calibrated on real digits, judged on held-out digits."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import torch

from converters.api import convert


def test_int8_is_small_and_agrees_on_held_out_digits(tmp_path, digits_cnn, digits_trained):
    model_path, calib, native_acc = digits_cnn
    assert native_acc > 0.9  # the test means nothing on an untrained model

    report = convert(model_path, "torch", "onnx,onnx-int8", calib=calib, out_dir=tmp_path / "out")

    rows = {r.target: r for r in report.rows}
    fp32, int8 = tmp_path / "out" / rows["onnx"].artifact, tmp_path / "out" / rows["onnx-int8"].artifact
    assert int8.stat().st_size <= 0.4 * fp32.stat().st_size
    # Recompute agreement independently on the held-out half (the report's eval split).
    z = np.load(calib)
    held_x, held_y = z["x"][len(z["x"]) // 2:], z["y"][len(z["y"]) // 2:]
    sess = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    q = sess.run(None, {sess.get_inputs()[0].name: held_x})[0]
    with torch.no_grad():
        ref = digits_trained[0](torch.from_numpy(held_x)).numpy()
    agreement = float(np.mean(q.argmax(1) == ref.argmax(1)))
    assert agreement >= 0.98
    assert float(np.mean(q.argmax(1) == held_y)) - float(np.mean(ref.argmax(1) == held_y)) >= -0.01
    assert abs(rows["onnx-int8"].top1_agreement - agreement) < 1e-9
    assert rows["onnx-int8"].n_samples == len(held_x)
    assert any(op.op_type == "QuantizeLinear" for op in __import__("onnx").load(str(int8)).graph.node)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["status"] == "PASSED" and saved["rows"][1]["accuracy_delta"] is not None
    assert (tmp_path / "out" / "report.png").stat().st_size > 1000
