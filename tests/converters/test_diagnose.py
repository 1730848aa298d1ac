"""Per-layer diagnosis and int8 repair on a model whose one layer wrecks int8.

The broken model is the trained digits CNN with one activation's range blown up (channel 0 of
`head.1`'s output x1000, divided back in `head.3`): the float model answers exactly as before,
per-tensor int8 activations do not. The diagnosis must name `head.1`; the repair must pass the
gate keeping only the few nodes around it in float.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from converters.api import convert
from trainer.errors import ParityError, UsageError


@pytest.fixture(scope="module")
def outlier_cnn(tmp_path_factory, digits_trained, digits_cnn):
    """(path of the broken .pt2, calibration .npz, the broken module)."""
    from _torch_models import save_exported, with_outlier_channel

    _, calib, _ = digits_cnn
    model = copy.deepcopy(digits_trained[0])
    with_outlier_channel(model, model.head[1], model.head[3])
    x = np.load(calib)["x"]
    with torch.no_grad():   # the float model is unchanged: only int8 can break on it
        before = digits_trained[0](torch.from_numpy(x)).numpy()
        after = model(torch.from_numpy(x)).numpy()
    assert np.array_equal(before.argmax(1), after.argmax(1))
    path = save_exported(model, tmp_path_factory.mktemp("outlier") / "outlier.pt2", torch.zeros(4, 1, 8, 8))
    return path, calib, model


def test_int8_diagnosis_names_the_layer_that_wrecks_it(tmp_path, outlier_cnn):
    path, calib, _ = outlier_cnn
    with pytest.raises(ParityError) as caught:
        convert(path, "torch", "onnx,onnx-int8", calib=calib, out_dir=tmp_path / "out", log_to_mlflow=False)
    assert "head.1" in str(caught.value)          # the one-line error names the layer
    report = caught.value.report
    rows = {r.target: r for r in report.rows}
    assert rows["onnx"].passed and rows["onnx"].diagnosis is None   # passing targets are not diagnosed
    d = rows["onnx-int8"].diagnosis
    first = d["first_jump"]
    assert d["sharp"] and first["module"] == "head.1" and first["op_type"] == "Gemm"
    assert first["came_from"] == ["view"]                     # the flattened features it read
    assert first["loss_db"] >= 30 and first["sqnr_db"] < 10
    assert d["ranked"][0]["tensor"] == first["tensor"]
    # No other layer loses anywhere near as much: the diagnosis points at one place.
    assert all(e["loss_db"] < 15 for e in d["ranked"][1:])
    assert "head.1" in report.summary_lines()[0] and "dB" in report.summary_lines()[0]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["rows"][1]["diagnosis"]["first_jump"]["module"] == "head.1"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Diagnosis: onnx-int8" in md and "| head.1 |" in md


def test_int8_repair_passes_the_gate_with_a_few_float_nodes(tmp_path, outlier_cnn, digits_cnn):
    path, calib, model = outlier_cnn
    plain_size = None
    report = convert(path, "torch", "onnx-int8", calib=calib, out_dir=tmp_path / "out", log_to_mlflow=False,
                     int8_repair=True)
    row = report.rows[0]
    assert row.passed and row.repair["passed"]
    rep = row.repair
    assert rep["blamed"][0]["module"] == "head.1"
    assert 1 <= len(rep["excluded_nodes"]) <= 3
    assert rep["float_weight_fraction"] <= 0.5 and rep["size_bytes"] == row.size_bytes
    plain_size = rep["size_before_bytes"]
    assert plain_size < row.size_bytes            # float nodes cost size, and the report says how much
    assert row.diagnosis["of"].startswith("the plain int8 model")
    # The published artifact is the repaired one: recheck its agreement independently.
    artifact = tmp_path / "out" / row.artifact
    graph = onnx.load(str(artifact)).graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)        # still int8 elsewhere
    gemms = [n for n in graph.node if n.op_type == "Gemm"]
    assert gemms and all(not any(i.endswith("_DequantizeLinear_Output") for i in n.input[1:2]) for n in gemms)
    z = np.load(calib)
    held = z["x"][len(z["x"]) // 2:]
    sess = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    q = sess.run(None, {sess.get_inputs()[0].name: held})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(held)).numpy()
    assert float(np.mean(q.argmax(1) == ref.argmax(1))) >= 0.98
    assert "int8 repair kept" in (tmp_path / "out" / "report.md").read_text()
    metrics = report.metrics()
    assert metrics["parity.onnx-int8.repair.float_nodes"] == len(rep["excluded_nodes"])
    assert metrics["parity.onnx-int8.passed"] == 1.0
    assert any("int8 repair kept" in line for line in report.summary_lines())


def test_int8_repair_stops_at_its_float_budget(tmp_path, outlier_cnn):
    path, calib, _ = outlier_cnn
    with pytest.raises(ParityError) as caught:
        convert(path, "torch", "onnx-int8", calib=calib, out_dir=tmp_path / "out", log_to_mlflow=False,
                int8_repair=True, max_float_fraction=0.05)
    row = caught.value.report.rows[0]
    assert not row.passed and not row.repair["passed"]
    assert "over the budget of 5%" in row.repair["stopped"] and row.repair["excluded_nodes"] == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.json", "report.md", "report.png"]


def test_max_float_fraction_out_of_range_is_refused_before_work(tmp_path, outlier_cnn):
    path, calib, _ = outlier_cnn
    with pytest.raises(UsageError, match="max_float_fraction"):
        convert(path, "torch", "onnx-int8", calib=calib, out_dir=tmp_path / "out", int8_repair=True,
                max_float_fraction=0)
    assert not (tmp_path / "out").exists()


def test_passing_conversion_is_diagnosed_only_when_asked(tmp_path, digits_cnn):
    model_path, calib, _ = digits_cnn
    plain = convert(model_path, "torch", "onnx-int8", calib=calib, out_dir=tmp_path / "a", log_to_mlflow=False)
    assert plain.passed and plain.rows[0].diagnosis is None and plain.summary_lines() == []
    asked = convert(model_path, "torch", "onnx-int8", calib=calib, out_dir=tmp_path / "b", log_to_mlflow=False,
                    diagnose=True)
    d = asked.rows[0].diagnosis
    assert asked.passed and d["kind"] == "int8" and d["samples"] > 0 and d["seconds"] > 0
    modules = {e["module"] for e in d["ranked"]}
    assert {"features.0", "features.2", "features.5", "head.1", "head.3"} <= modules
    assert all(e["sqnr_db"] > 15 for e in d["ranked"])   # a healthy int8 model: no tensor wrecked


def test_cli_int8_repair_prints_the_node_and_what_it_kept(tmp_path, outlier_cnn, cli):
    path, calib, _ = outlier_cnn
    result = cli(path, "--from", "torch", "--to", "onnx-int8", "--calib", calib, "--out", tmp_path / "out",
                 "--int8-repair", "--max-float-fraction", "0.5")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "module head.1" in text and "int8 repair kept" in text
    bad = cli(path, "--from", "torch", "--to", "onnx-int8", "--calib", calib, "--out", tmp_path / "o2",
              "--int8-repair", "--max-float-fraction", "0")
    assert bad.exit_code != 0 and "--max-float-fraction" in bad.output
    assert not (tmp_path / "o2").exists()


def test_spec_sets_diagnosis_and_repair():
    from trainer.spec import Convert

    c = Convert.model_validate({"targets": ["onnx-int8"],
                                "parity": {"diagnose": True, "int8_repair": True, "max_float_fraction": 0.25}})
    assert c.parity.diagnose and c.parity.int8_repair and c.parity.max_float_fraction == 0.25
    with pytest.raises(ValueError):
        Convert.model_validate({"targets": ["onnx-int8"], "parity": {"max_float_fraction": 0}})


def test_fp32_diagnosis_names_the_perturbed_onnx_node(tmp_path, digits_cnn, monkeypatch):
    """One weight of `features.5` nudged in the exported ONNX (an exporter that maps a conv
    wrongly looks like this): the diagnosis must name that node and module, not a later one."""
    from _perturb import nudging
    from converters.frontends.torch import TorchFrontend

    model_path, calib, _ = digits_cnn
    monkeypatch.setattr(TorchFrontend, "export", nudging(TorchFrontend.export, lambda i: i.name == "features.5.weight"))
    with pytest.raises(ParityError) as caught:
        convert(model_path, "torch", "onnx", calib=calib, out_dir=tmp_path / "out", log_to_mlflow=False)
    d = caught.value.report.rows[0].diagnosis
    first = d["first_divergence"]
    assert d["kind"] == "fp32" and first["module"] == "features.5" and first["op_type"] == "Conv"
    consumer_of = {e["module"]: e for e in d["layers"]}
    assert consumer_of["features.0"]["passed"] and consumer_of["features.2"]["passed"]   # upstream intact
    assert "features.5" in str(caught.value)
    assert "| features.5 | node_conv2d_2 (Conv)" in (tmp_path / "out" / "report.md").read_text()


def test_fp32_diagnosis_on_request_passes_every_layer(tmp_path, digits_cnn):
    model_path, calib, _ = digits_cnn
    report = convert(model_path, "torch", "onnx", calib=calib, out_dir=tmp_path / "out", log_to_mlflow=False,
                     diagnose=True)
    d = report.rows[0].diagnosis
    assert d["first_divergence"] is None and len(d["layers"]) >= 10 and all(e["passed"] for e in d["layers"])
    assert "every one of" in d["summary"]


def test_output_diagnosis_points_at_the_worst_element():
    from converters.diagnose import output_diagnosis

    a = np.zeros((4, 3), np.float32)
    b = a.copy()
    b[2, 1] = 0.5
    d = output_diagnosis(a, b, 1e-4, 1e-3)
    assert d["worst_index"] == [2, 1] and d["converted"] == 0.5 and abs(d["out_of_tolerance"] - 1 / 12) < 1e-9
    assert "(2, 1)" in d["summary"]


def test_plot_shows_every_targets_bar_and_the_failing_layer(tmp_path, outlier_cnn):
    """A target whose judged figure is 0 (int8 agreeing on every sample) still has a bar; a
    diagnosed target adds an error-per-layer panel with the named layer in red."""
    from dataclasses import replace

    from converters.parity import figure

    path, calib, _ = outlier_cnn
    with pytest.raises(ParityError) as caught:
        convert(path, "torch", "onnx,onnx-int8", calib=calib, out_dir=tmp_path / "out", log_to_mlflow=False)
    report = caught.value.report
    perfect = replace(report.rows[0], target="onnx-int8-perfect", precision="int8", limit_ratio=0.0, passed=True,
                      diagnosis=None)
    report.rows.append(perfect)
    fig = figure(report)
    ax1, layers = fig.axes[0], fig.axes[2]
    left = ax1.get_xlim()[0]
    widths = [p.get_width() for p in ax1.patches]
    assert len(widths) == 3 and all(w >= 5 * left for w in widths)   # every bar visibly long
    red = [p for p in layers.patches if p.get_facecolor()[:3] == (0.8392156862745098, 0.15294117647058825,
                                                                    0.1568627450980392)]
    assert len(red) == 1
    labels = [t.get_text() for t in layers.get_xticklabels()]
    first = report.rows[1].diagnosis["first_jump"]
    red_index = [i for i, p in enumerate(layers.patches) if p in red][0]
    assert labels[red_index] == first["module"] == "head.1"


def test_an_edge_row_that_misses_says_which_output_differs_and_by_how_much():
    """Issue 25 on the edge rows: a model that gives other answers on the emulated ARM CPU is
    diagnosed by its output (the device runs the bundle, no layer to look into): the element that
    differs most, native vs device, and the share out of tolerance. A passing row costs nothing."""
    from converters.api import _edge_row
    from converters.parity import Tolerance

    native = np.random.default_rng(0).standard_normal((8, 10)).astype(np.float32)
    device = native.copy()
    device[3, 7] += 0.5
    row = _edge_row("onnx@cortex-a53", "fp32", native, device, None, Tolerance(), artifact="edge/onnx.onnx",
                    size_bytes=1, note="emulated")
    assert not row.passed and row.diagnosis["worst_index"] == [3, 7]
    assert abs(row.diagnosis["converted"] - row.diagnosis["native"] - 0.5) < 1e-5
    assert "(3, 7)" in row.diagnosis["summary"] and "1.2% of elements" in row.diagnosis["summary"]
    ok = _edge_row("onnx@cortex-a53", "fp32", native, native.copy(), None, Tolerance(), artifact="edge/onnx.onnx",
                   size_bytes=1, note="emulated")
    assert ok.passed and ok.diagnosis is None
