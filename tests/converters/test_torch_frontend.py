"""torch frontend: real architectures exported with torch.onnx, checked against ONNX Runtime.

The models come in as torch.export .pt2 files (the code-free format loaded by default); the
TorchScript case needs --trust-pickle (a TorchScript archive runs code when it loads)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from _torch_models import GRUClassifier, LSTMClassifier, ResidualCNN, randomize_bn, save_exported

from converters.api import convert
from trainer.errors import ConversionError

ATOL, RTOL = 1e-4, 1e-3


def _ort(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _native(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_residual_cnn_dynamo_export_matches_onnxruntime(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(ResidualCNN(in_ch=3))
    x = np.random.default_rng(0).standard_normal((48, 3, 16, 16)).astype(np.float32)
    save_exported(model, tmp_path / "resnet.pt2", torch.from_numpy(x[:4]))
    np.save(tmp_path / "calib.npy", x)

    report = convert(tmp_path / "resnet.pt2", "torch", ["onnx", "pytorch"], calib=tmp_path / "calib.npy",
                     out_dir=tmp_path / "out", atol=ATOL, rtol=RTOL)

    assert report.passed and "dynamo" in report.exporter
    onnx_path = tmp_path / "out" / "onnx" / "model.onnx"
    proto = onnx.load(str(onnx_path))
    assert not list(tmp_path.glob("out/onnx/*.data")), "external data must be off for small models"
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value"), "batch must be dynamic"
    # Independent check, every batch size, including ones never seen at export time.
    for n in (1, 5, 48):
        np.testing.assert_allclose(_ort(onnx_path, x[:n]), _native(model, x[:n]), atol=ATOL, rtol=RTOL)
    row = {r.target: r for r in report.rows}
    assert row["onnx"].max_abs_diff < ATOL and row["onnx"].top1_agreement == 1.0
    # ONNX -> PyTorch (onnx2torch, TorchScript) gives the native answers back.
    back = torch.jit.load(str(tmp_path / "out" / row["pytorch"].artifact))
    with torch.no_grad():
        np.testing.assert_allclose(back(torch.from_numpy(x)).numpy(), _native(model, x), atol=ATOL, rtol=RTOL)
    assert {"report.json", "report.md", "report.png"} <= {p.name for p in (tmp_path / "out").iterdir()}


@pytest.mark.parametrize("arch", [GRUClassifier, LSTMClassifier])
def test_recurrent_nets_export_matches_onnxruntime(tmp_path, arch):
    torch.manual_seed(1)
    model = arch().eval()
    x = np.random.default_rng(1).standard_normal((40, 8, 8)).astype(np.float32)  # (N, T, C)
    save_exported(model, tmp_path / "rnn.pt2", torch.from_numpy(x[:4]))

    report = convert(tmp_path / "rnn.pt2", "torch", "onnx", calib=x, out_dir=tmp_path / "out")

    assert report.passed, report.to_markdown()
    assert report.inputs[0]["layout"] == "NTC"
    onnx_path = tmp_path / "out" / "onnx" / "model.onnx"
    for n in (1, 7, 40):
        np.testing.assert_allclose(_ort(onnx_path, x[:n]), _native(model, x[:n]), atol=ATOL, rtol=RTOL)


def test_torchscript_input_falls_back_to_the_torchscript_exporter_with_reason(tmp_path):
    torch.manual_seed(2)
    model = randomize_bn(ResidualCNN())
    torch.jit.script(model).save(str(tmp_path / "scripted.pt"))
    x = np.random.default_rng(2).standard_normal((24, 1, 8, 8)).astype(np.float32)

    with pytest.raises(ConversionError, match=r"scripted.pt is a TorchScript archive: .* --trust-pickle"):
        convert(tmp_path / "scripted.pt", "torch", "onnx", calib=x, out_dir=tmp_path / "out")
    report = convert(tmp_path / "scripted.pt", "torch", "onnx", calib=x, out_dir=tmp_path / "out",
                     trust_pickle=True)

    assert report.trust_pickle and any("--trust-pickle: loaded a TorchScript archive" in n for n in report.notes)
    assert report.exporter.endswith("(TorchScript)")
    assert any("dynamo exporter failed" in n and "TorchScript exporter" in n for n in report.notes)
    np.testing.assert_allclose(_ort(tmp_path / "out" / "onnx" / "model.onnx", x), _native(model, x),
                               atol=ATOL, rtol=RTOL)


def test_exported_program_pt2_declares_its_input_shape(tmp_path):
    torch.manual_seed(3)
    model = randomize_bn(ResidualCNN())
    x = np.random.default_rng(3).standard_normal((24, 1, 8, 8)).astype(np.float32)
    ep = torch.export.export(model, (torch.from_numpy(x[:4]),),
                             dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, str(tmp_path / "model.pt2"))

    report = convert(tmp_path / "model.pt2", "torch", "onnx", calib=x, out_dir=tmp_path / "out")

    assert report.passed and "dynamo" in report.exporter
    np.testing.assert_allclose(_ort(tmp_path / "out" / "onnx" / "model.onnx", x), _native(model, x),
                               atol=ATOL, rtol=RTOL)
