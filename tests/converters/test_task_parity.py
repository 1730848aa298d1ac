"""Task-aware parity: int8 judged by what the model is for (classification, regression,
embedding), every threshold settable and printed as applied; ctx.save_model checks its arguments."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from converters.api import convert
from converters.parity import Tolerance, compare, criterion_words
from trainer.errors import ParityError, UsageError


@pytest.fixture(scope="module")
def regressor(tmp_path_factory):
    """(a trained digit-value regressor as .pt2, calibration .npz with FLOAT targets, test RMSE)."""
    from _torch_models import digits, save_exported, train_digits_regressor

    model, rmse = train_digits_regressor()
    assert rmse < 1.5   # it learned something: the digit values span 0-9
    d = tmp_path_factory.mktemp("regressor")
    save_exported(model, d / "reg.pt2", torch.zeros(4, 1, 8, 8))
    (xtr, ytr), (xte, yte) = digits()
    n = len(xte)
    np.savez(d / "calib.npz", x=np.concatenate([xtr[:n], xte]),
             y=np.concatenate([ytr[:n], yte]).astype(np.float32))
    return d / "reg.pt2", d / "calib.npz", rmse


def test_regression_with_float_labels_is_judged_by_rmse_change(tmp_path, regressor):
    path, calib, _ = regressor
    report = convert(path, "torch", "onnx,onnx-int8", calib=calib, out_dir=tmp_path / "out", log_to_mlflow=False)
    assert report.task == "regression" and "float labels" in report.task_how
    row = {r.target: r for r in report.rows}["onnx-int8"]
    tm = row.task_metrics
    assert row.task == "regression" and row.passed
    # Recompute against the labels: RMSE of both models, and the output error relative to it.
    z = np.load(calib)
    assert tm["rmse_native"] > 0 and abs(tm["rmse_change"]) <= 0.02 and tm["error_ratio"] <= 0.25
    assert tm["rmse_change"] == pytest.approx((tm["rmse"] - tm["rmse_native"]) / tm["rmse_native"])
    assert len(z["y"]) // 2 <= 2 * row.n_samples
    assert "RMSE" in row.criterion and "native RMSE" in row.criterion
    words = criterion_words(row, report.tolerance)
    assert "regression criterion" in words and "top-1" not in words
    md = (tmp_path / "out" / "report.md").read_text()
    tol_line = next(line for line in md.splitlines() if line.startswith("- tolerance:"))
    assert "RMSE and MAE increase <= 0.02" in tol_line and "top-1" not in tol_line
    assert "- task: regression (inferred: float labels)" in md
    assert report.metrics()["parity.onnx-int8.error_ratio"] == pytest.approx(tm["error_ratio"])


def test_regression_thresholds_are_settable_and_fail_when_tightened(tmp_path, regressor):
    path, calib, _ = regressor
    with pytest.raises(ParityError) as caught:
        convert(path, "torch", "onnx-int8", calib=calib, out_dir=tmp_path / "out", log_to_mlflow=False,
                max_error_ratio=1e-6)
    row = caught.value.report.rows[0]
    assert not row.passed and "> 1e-06 x native RMSE" in row.criterion
    assert row.diagnosis is not None and row.diagnosis["kind"] == "int8"   # failing: diagnosed


def test_regression_without_labels_uses_the_explicit_scale_tolerance(tmp_path, regressor):
    path, calib, _ = regressor
    x = np.load(calib)["x"]
    report = convert(path, "torch", "onnx-int8", calib=x, out_dir=tmp_path / "a", log_to_mlflow=False,
                     int8_scale_tol=0.3)
    row = report.rows[0]
    assert report.task == "regression" and "no labels" in report.task_how
    assert "<= 0.3 * max|a|" in row.criterion
    assert "max abs diff <= 0.3 x max|a| (without)" in (tmp_path / "a" / "report.md").read_text()
    assert "without labels" in criterion_words(row, report.tolerance)
    with pytest.raises(ParityError):
        convert(path, "torch", "onnx-int8", calib=x, out_dir=tmp_path / "b", log_to_mlflow=False,
                int8_scale_tol=1e-6)


def test_classifier_task_set_to_embedding_is_judged_by_cosine(tmp_path, digits_cnn):
    model_path, calib, _ = digits_cnn
    report = convert(model_path, "torch", "onnx-int8", calib=calib, out_dir=tmp_path / "out", log_to_mlflow=False,
                     task="embedding", min_cosine=0.9)
    row = report.rows[0]
    assert report.task == "embedding" and report.task_how == "set"
    assert row.task == "embedding" and 0.9 <= row.task_metrics["min_cosine"] <= 1.0
    assert "cosine similarity" in row.criterion and ">= 0.9" in row.criterion
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["task"] == "embedding" and saved["rows"][0]["task_metrics"]["min_cosine"] == row.task_metrics["min_cosine"]


def test_unknown_task_is_refused(tmp_path, digits_cnn):
    model_path, calib, _ = digits_cnn
    with pytest.raises(UsageError, match="task"):
        convert(model_path, "torch", "onnx-int8", calib=calib, out_dir=tmp_path / "out", task="ranking")


def test_embedding_cosine_and_classification_unchanged_by_compare():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 16))
    b = a + 0.01 * rng.standard_normal((50, 16))
    m = compare("onnx-int8", "int8", a, b, None, Tolerance(task="embedding"))
    assert m["passed"] and m["task_metrics"]["min_cosine"] > 0.99
    b[3] = -a[3]
    m = compare("onnx-int8", "int8", a, b, None, Tolerance(task="embedding"))
    assert not m["passed"] and m["task_metrics"]["min_cosine"] == pytest.approx(-1.0)
    m = compare("onnx-int8", "int8", a, a, np.arange(50) % 16, Tolerance())
    assert m["task"] == "classification" and m["top1_agreement"] == 1.0 and m["passed"]


def test_float_labels_load_as_regression_targets(tmp_path):
    from converters.sources import load_calibration

    np.savez(tmp_path / "c.npz", x=np.zeros((4, 3), np.float32), y=np.array([0.5, 1.5, 2.0, 3.25]))
    assert load_calibration(tmp_path / "c.npz").y.dtype.kind == "f"
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 3), np.float32), y=np.array([0.5, np.nan, 2.0, 3.25]))
    with pytest.raises(UsageError, match="finite float"):
        load_calibration(tmp_path / "bad.npz")


def test_save_model_checks_its_arguments_when_called(tmp_path):
    from trainer.context import LocalSession
    from trainer.runners.torch import TorchContext
    from trainer.spec import JobSpec

    spec = JobSpec(name="t", framework="torch", entrypoint="t.py:train")
    ctx = TorchContext(spec, LocalSession(tmp_path / "ck", keep=1))
    model, x = torch.nn.Linear(3, 1), torch.zeros(8, 3)
    ctx.save_model(model, x, labels=torch.linspace(0, 1, 8))        # float targets: a regression model
    ctx.save_model(model, x, labels=torch.arange(8))
    with pytest.raises(ValueError, match="one entry per example_input sample"):
        ctx.save_model(model, x, labels=torch.arange(5))
    with pytest.raises(TypeError, match="finite float"):
        ctx.save_model(model, x, labels=torch.tensor([float("nan")] * 8))
    with pytest.raises(TypeError, match="numeric batch"):
        ctx.save_model(model, torch.zeros(3), labels=None)
