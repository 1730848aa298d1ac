"""fp32 per-layer diagnosis for the frontends that reach ONNX out of process: MXNet (mx.onnx and
MMdnn) and Caffe (MMdnn). One weight of a chosen ONNX node is nudged after the frontend's own
export (tests/converters/_perturb.py); the diagnosis must name that node and the native layer it
came from, with every layer before it passing against the native reference run in the MXNet
runtime (MXNet itself for MXNet models, the numpy Caffe reference for Caffe)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import _mxnet_models  # noqa: E402
from _perturb import nudging  # noqa: E402

from converters.api import convert  # noqa: E402
from trainer.errors import ParityError  # noqa: E402

pytestmark = pytest.mark.mxnet


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{kind: (model folder, calibration .npz)} for the MXNet CNN and the Caffe net (digits-sized)."""
    root = tmp_path_factory.mktemp("diagnose-frontends")
    found = {}
    for kind in ("gluon_cnn_bn", "caffe_tiny"):
        folder = _mxnet_models.build(kind, root / kind)
        x = np.random.default_rng(3).normal(size=(48, 1, 8, 8)).astype(np.float32)
        np.savez(root / f"{kind}.npz", x=x)
        found[kind] = (folder, root / f"{kind}.npz")
    return found


def _frontend_class(name: str):
    from converters import registry
    return type(registry.frontend(name))


# (frontend, model, the initializer nudged, the ONNX node it feeds, the native layer it came from,
#  native layers upstream of it that must still pass)
BROKEN = [
    ("mxnet", "gluon_cnn_bn", "hybridsequential0_conv1_weight", "hybridsequential0_conv1_fwd",
     "hybridsequential0_conv1_fwd", ["hybridsequential0_conv0_fwd", "hybridsequential0_batchnorm0_fwd",
                                     "hybridsequential0_pool0_fwd"]),
    ("mxnet-mmdnn", "gluon_cnn_bn", "hybridsequential0_dense0_weight", "hybridsequential0_dense0",
     "hybridsequential0_dense0_fwd", ["hybridsequential0_conv1_fwd", "hybridsequential0_flatten0_flatten0"]),
    # MMdnn folds the Scale layer into the BatchNorm before it: the node is compared after both.
    ("caffe", "caffe_tiny", "bn1_scale", "bn1", "bn1+scale1", ["conv1"]),
]


@pytest.mark.parametrize("frontend,kind,weight,node,layer,upstream", BROKEN, ids=[b[0] for b in BROKEN])
def test_fp32_diagnosis_names_the_perturbed_node_and_its_native_layer(tmp_path, models, monkeypatch, frontend, kind,
                                                                     weight, node, layer, upstream):
    model, calib = models[kind]
    cls = _frontend_class(frontend)
    monkeypatch.setattr(cls, "export", nudging(cls.export, lambda i: i.name == weight))
    with pytest.raises(ParityError) as caught:
        convert(model, frontend, "onnx", calib=calib, out_dir=tmp_path / "out", log_to_mlflow=False)
    report = caught.value.report
    d = report.rows[0].diagnosis
    first = d["first_divergence"]
    assert d["kind"] == "fp32" and first["node"] == node and (first["layer"] or first["module"]) == layer
    assert first["max_abs_diff"] > 1e-3 and first["out_of_tolerance"] > 0
    by_layer = {e["layer"] or e["module"]: e for e in d["layers"]}
    assert all(by_layer[u]["passed"] for u in upstream)              # the layers before it are intact
    line = report.summary_lines()[0]
    assert node in line and layer in line and "max abs diff" in line
    assert node in str(caught.value)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["rows"][0]["diagnosis"]["first_divergence"]["node"] == node


def test_passing_mxnet_and_caffe_conversions_are_diagnosed_only_when_asked(tmp_path, models):
    model, calib = models["gluon_cnn_bn"]
    plain = convert(model, "mxnet", "onnx", calib=calib, out_dir=tmp_path / "a", log_to_mlflow=False)
    assert plain.passed and plain.rows[0].diagnosis is None and plain.summary_lines() == []
    asked = convert(model, "mxnet", "onnx", calib=calib, out_dir=tmp_path / "b", log_to_mlflow=False, diagnose=True)
    d = asked.rows[0].diagnosis
    assert d["first_divergence"] is None and all(e["passed"] for e in d["layers"])
    # Every MXNet node of the net has its ONNX twin compared; mx.onnx's in-between tensors are not.
    assert [e["module"] for e in d["layers"]] == [f"hybridsequential0_{n}" for n in (
        "conv0_fwd", "batchnorm0_fwd", "relu0_fwd", "pool0_fwd", "conv1_fwd", "batchnorm1_fwd", "relu1_fwd",
        "flatten0_flatten0", "dense0_fwd", "dense0_relu_fwd", "dense1_fwd")]

    model, calib = models["caffe_tiny"]
    asked = convert(model, "caffe", "onnx", calib=calib, out_dir=tmp_path / "c", log_to_mlflow=False, diagnose=True)
    d = asked.rows[0].diagnosis
    assert d["first_divergence"] is None and all(e["passed"] for e in d["layers"])
    assert [e["layer"] for e in d["layers"]] == ["conv1", "bn1+scale1", "relu1", "pool1", "conv2", "relu2", "fc"]


def test_cli_prints_the_caffe_node_that_broke(tmp_path, models, monkeypatch, cli):
    model, calib = models["caffe_tiny"]
    cls = _frontend_class("caffe")
    monkeypatch.setattr(cls, "export", nudging(cls.export, lambda i: i.name == "conv2_weight"))
    result = cli(model, "--from", "caffe", "--to", "onnx", "--calib", calib, "--out", tmp_path / "out")
    assert result.exit_code != 0
    text = " ".join(result.output.split())
    assert "first leaves the tolerance at conv2 (Conv, module conv2)" in text, text
