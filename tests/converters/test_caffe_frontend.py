"""Caffe (prototxt + caffemodel, no pycaffe) -> MMdnn IR -> ONNX and -> PyTorch, checked against
a numpy implementation of the tiny hand-built net written here from its blobs."""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import _mxnet_models  # noqa: E402

from converters import registry  # noqa: E402
from converters.frontends import mmdnn_ir  # noqa: E402
from trainer.errors import ConversionError  # noqa: E402

ATOL, RTOL = 1e-4, 1e-3

pytestmark = pytest.mark.mxnet


@pytest.fixture(scope="module")
def caffe_model(tmp_path_factory):
    return _mxnet_models.build("caffe_tiny", tmp_path_factory.mktemp("caffe") / "tiny")


def _conv(x, w, b, pad):
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((n, w.shape[0], h, wd))
    for o in range(w.shape[0]):
        for i in range(h):
            for j in range(wd):
                out[:, o, i, j] = (xp[:, :, i:i + 3, j:j + 3] * w[o]).sum(axis=(1, 2, 3)) + b[o]
    return out


def reference(blobs, x):
    """The tiny net of _mxnet_models._caffe, layer by layer, in float64."""
    g = {k: v.astype(np.float64) for k, v in blobs.items()}
    y = _conv(x.astype(np.float64), g["conv1_0"], g["conv1_1"], pad=1)
    factor = 1.0 / g["bn1_2"][0]
    y = (y - (g["bn1_0"] * factor)[None, :, None, None]) / np.sqrt(g["bn1_1"] * factor + 1e-5)[None, :, None, None]
    y = y * g["scale1_0"][None, :, None, None] + g["scale1_1"][None, :, None, None]
    y = np.maximum(y, 0)
    n, c, h, w = y.shape
    y = y.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
    y = np.maximum(_conv(y, g["conv2_0"], g["conv2_1"], pad=1), 0)
    return y.reshape(n, -1) @ g["fc_0"].T + g["fc_1"]


def test_caffe_to_onnx_and_pytorch_match_the_reference(caffe_model, tmp_path):
    blobs = dict(np.load(caffe_model / "blobs.npz"))
    x = np.random.default_rng(3).normal(size=(12, 1, 8, 8)).astype(np.float32)
    expected = reference(blobs, x)
    frontend = registry.frontend("caffe")

    native = frontend.predict(caffe_model, x)            # the frontend's own numpy Caffe runner
    np.testing.assert_allclose(native, expected, atol=1e-5, rtol=1e-5)

    result = frontend.export(caffe_model, tmp_path / "out", x[:1])
    assert result.inputs[0].layout == "NCHW" and result.inputs[0].shape == (None, 1, 8, 8)
    assert any("(1,1,1,C)" in n for n in result.notes) and any("opset 6 -> 13" in n for n in result.notes)
    import onnxruntime as ort
    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]    # batch 12 (MMdnn wrote batch 1)
    diff = np.abs(got - expected)
    print(f"caffe -> onnx: max abs {diff.max():.3g}, max rel {(diff / (np.abs(expected) + 1e-6)).max():.3g}")
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=RTOL)

    code = mmdnn_ir.to_pytorch(result.extras["mmdnn_ir"], tmp_path / "pytorch")
    torch = pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("mmdnn_kit_caffe", code)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.KitModel(str(code.parent / "weights.npy")).eval()
    with torch.no_grad():
        got_pt = net(torch.from_numpy(x)).numpy()
    print(f"caffe -> pytorch: max abs {np.abs(got_pt - expected).max():.3g}")
    np.testing.assert_allclose(got_pt, expected, atol=ATOL, rtol=RTOL)


def test_corrupt_caffemodel_is_one_clear_line(caffe_model, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(caffe_model, broken)
    weights = broken / "tiny.caffemodel"
    weights.write_bytes(weights.read_bytes()[:-7])
    out = tmp_path / "out"
    frontend = registry.frontend("caffe")
    with pytest.raises(ConversionError) as err:
        frontend.export(broken, out, np.zeros((1, 1, 8, 8), np.float32))
    msg = str(err.value)
    assert "\n" not in msg and "tiny.caffemodel" in msg, msg
    assert not (out / "model.onnx").exists()
    with pytest.raises(ConversionError, match="one .prototxt and one .caffemodel"):
        frontend.export(tmp_path, out, np.zeros((1, 1, 8, 8), np.float32))
