"""MXNet -> ONNX, by mx.onnx (`mxnet`) and by MMdnn (`mxnet-mmdnn`), parity-checked against the
native MXNet model run in the MXNet runtime. Also MMdnn IR -> PyTorch code + weights."""
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
from trainer.errors import ConversionError, RuntimeNotInstalledError  # noqa: E402

ATOL, RTOL = 1e-4, 1e-3          # fp32 end to end: measured diffs are ~1e-6


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("mxnet-models")
    return {kind: _mxnet_models.build(kind, root / kind) for kind in ("gluon_cnn_bn", "gluon_resnet")}


def _inputs(model_dir: Path, batch: int = 16) -> np.ndarray:
    shape = tuple(int(d) for d in np.load(model_dir / "shape.npy"))
    return np.random.default_rng(7).normal(size=(batch, *shape[1:])).astype(np.float32)


def _ort(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _assert_parity(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert got.shape == ref.shape, f"{what}: shape {got.shape} vs native {ref.shape}"
    diff = np.abs(got - ref)
    print(f"{what}: max abs {diff.max():.3g}, max rel {(diff / (np.abs(ref) + 1e-6)).max():.3g}")
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=RTOL, err_msg=what)
    assert (got.argmax(1) == ref.argmax(1)).all(), f"{what}: top-1 differs"


@pytest.mark.mxnet
@pytest.mark.parametrize("kind", ["gluon_cnn_bn", "gluon_resnet"])
def test_mx_onnx_export_matches_native_mxnet(models, kind, tmp_path):
    frontend = registry.frontend("mxnet")
    x = _inputs(models[kind])
    result = frontend.export(models[kind], tmp_path / "out", x[:1])
    assert result.onnx_path == tmp_path / "out" / "model.onnx"
    assert result.inputs[0].shape == (None, *x.shape[1:]) and result.inputs[0].layout == "NCHW"
    native = frontend.predict(models[kind], x)
    assert native.shape == (16, 10)
    _assert_parity(_ort(result.onnx_path, x), native, f"mxnet/{kind}")     # batch 16: dynamic batch


@pytest.mark.mxnet
def test_mmdnn_path_matches_native_and_writes_pytorch(models, tmp_path):
    """Gluon names, the 1-channel conv mis-tagged depthwise and the opset-6 graph are all hit
    by this model (its first conv reads one channel)."""
    model = models["gluon_cnn_bn"]
    frontend = registry.frontend("mxnet-mmdnn")
    x = _inputs(model, batch=8)
    result = frontend.export(model, tmp_path / "out", x[:1])
    notes = " | ".join(result.notes)
    assert "Gluon" in notes and "DepthwiseConv" in notes and "opset 6 -> 13" in notes
    assert result.inputs[0].layout == "NCHW"        # MMdnn's NHWC input transpose was folded away
    native = frontend.predict(model, x)
    _assert_parity(_ort(result.onnx_path, x), native, "mxnet-mmdnn/gluon_cnn_bn")

    code = mmdnn_ir.to_pytorch(result.extras["mmdnn_ir"], tmp_path / "pytorch")
    torch = pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("mmdnn_kit_mxnet", code)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.KitModel(str(code.parent / "weights.npy")).eval()
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    _assert_parity(got, native, "mxnet-mmdnn -> pytorch")


@pytest.mark.mxnet
def test_corrupt_params_is_one_clear_line(models, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(models["gluon_cnn_bn"], broken)
    params = broken / "model-0000.params"
    params.write_bytes(params.read_bytes()[:300])
    out = tmp_path / "out"
    for name in ("mxnet", "mxnet-mmdnn"):
        with pytest.raises(ConversionError) as err:
            registry.frontend(name).export(broken, out, _inputs(broken, 1))
        msg = str(err.value)
        assert "\n" not in msg and "model-0000.params" in msg and "corrupt" in msg, msg
    assert not (out / "model.onnx").exists()


def test_not_a_checkpoint_and_missing_runtime_are_clear(tmp_path, monkeypatch):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ConversionError, match="not an MXNet checkpoint"):
        registry.frontend("mxnet").export(tmp_path / "weights.bin", tmp_path / "out", np.zeros((1, 4)))
    (tmp_path / "m-symbol.json").write_text("{}")
    (tmp_path / "m-0000.params").write_bytes(b"x")
    monkeypatch.setenv("TRAINER_RUNTIMES", str(tmp_path / "no-runtimes"))
    with pytest.raises(RuntimeNotInstalledError, match="run: trainer runtime install mxnet"):
        registry.frontend("mxnet").export(tmp_path, tmp_path / "out", np.zeros((1, 4), np.float32))
