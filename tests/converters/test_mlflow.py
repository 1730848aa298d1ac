"""Converting a model that lives in MLflow: calibration from the run, results logged back."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.integration


@pytest.fixture()
def logged_run(tmp_path, monkeypatch, digits_cnn, digits_trained):
    """A run in a SQLite MLflow holding a pytorch-flavor model (pt2 format, what the torch runner
    logs) and calibration/ artifacts, the model registered as `digits` with alias `staging` - what
    a training job leaves behind."""
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    _, calib, _ = digits_cnn
    model = digits_trained[0]
    z = np.load(calib)
    (tmp_path / "cal").mkdir()
    np.save(tmp_path / "cal" / "inputs.npy", z["x"])
    np.save(tmp_path / "cal" / "labels.npy", z["y"])
    mlflow.set_experiment(experiment_id=mlflow.create_experiment(
        "conversion-test", artifact_location=(tmp_path / "artifacts").as_uri()))
    with mlflow.start_run() as run:
        with torch.no_grad():
            sig = infer_signature(z["x"][:4], model(torch.from_numpy(z["x"][:4])).numpy())
        mlflow.pytorch.log_model(model, name="model", signature=sig, input_example=z["x"][:8],
                                 serialization_format="pt2", pip_requirements=["torch"])
        mlflow.log_artifacts(str(tmp_path / "cal"), "calibration")
    client = MlflowClient()
    mv = mlflow.register_model(f"runs:/{run.info.run_id}/model", "digits")
    client.set_registered_model_alias("digits", "staging", mv.version)
    return run.info.run_id


def test_convert_registered_model_logs_into_its_source_run(cli, tmp_path, logged_run):
    from mlflow.tracking import MlflowClient

    from converters.sources import source_run_id

    import mlflow

    uri = mlflow.get_tracking_uri()
    assert source_run_id("models:/digits@staging", uri) == logged_run
    assert source_run_id(f"runs:/{logged_run}/model", uri) == logged_run

    # No --from (the flavor says torch) and no --calib (the run's calibration/ artifacts).
    result = cli("models:/digits@staging", "--to", "onnx,onnx-int8", "--out", tmp_path / "conv", "--output", "json")
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads(result.stdout)
    assert report["status"] == "PASSED" and report["run_id"] == logged_run and report["source"] == "torch"
    assert any("held-out" in n and "calibration" in n for n in report["notes"])

    client = MlflowClient()
    logged = {f.path for f in client.list_artifacts(logged_run, "conversion")}
    assert {"conversion/onnx", "conversion/onnx-int8", "conversion/report.json", "conversion/report.md",
            "conversion/report.png"} <= logged
    metrics = client.get_run(logged_run).data.metrics
    rows = {r["target"]: r for r in report["rows"]}
    assert metrics["parity.onnx.max_abs_diff"] == pytest.approx(rows["onnx"]["max_abs_diff"])
    assert metrics["parity.onnx-int8.top1_agreement"] == pytest.approx(rows["onnx-int8"]["top1_agreement"])
    assert metrics["parity.passed"] == 1.0


def test_runs_uri_without_calibration_artifacts_needs_calib(cli, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    from _torch_models import DigitsCNN

    # A fresh store (the fluent API's current experiment is gone), artifacts under tmp_path.
    mlflow.set_experiment(experiment_id=mlflow.create_experiment(
        "conversion-test-no-calib", artifact_location=(tmp_path / "artifacts").as_uri()))
    with mlflow.start_run() as run:
        mlflow.pytorch.log_model(DigitsCNN().eval(), name="model", input_example=np.zeros((4, 1, 8, 8), np.float32),
                                 serialization_format="pt2", pip_requirements=["torch"])
    result = cli(f"runs:/{run.info.run_id}/model", "--to", "onnx-int8", "--out", tmp_path / "conv")
    assert result.exit_code == 2, result.output
    assert "--calib" in result.stderr and not (tmp_path / "conv").exists()

    # The training job's path (convert_run) fails the same way, leaving nothing under TRAINER_HOME.
    from converters.api import convert_run
    from trainer.errors import UsageError

    monkeypatch.setenv("TRAINER_HOME", str(tmp_path / "home"))
    with pytest.raises(UsageError, match="--calib"):
        convert_run(run.info.run_id, ["onnx-int8"])
    assert not (tmp_path / "home" / "conversions").exists()


def test_a_pickle_format_model_in_mlflow_needs_trust_pickle(cli, tmp_path, monkeypatch, digits_trained):
    """`models:/x@prod` is as untrusted as a file: a pickle-format MLflow model is refused, and
    converted with --trust-pickle, which the report and the source run's tag record."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from converters.api import TAG_TRUST_PICKLE

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment(experiment_id=mlflow.create_experiment(
        "conversion-test-pickle", artifact_location=(tmp_path / "artifacts").as_uri()))
    x = np.random.default_rng(0).random((32, 1, 8, 8), dtype=np.float32)
    with mlflow.start_run() as run:
        mlflow.pytorch.log_model(digits_trained[0], name="model", serialization_format="pickle",
                                 pip_requirements=["torch"])
    np.save(tmp_path / "x.npy", x)
    args = (f"runs:/{run.info.run_id}/model", "--to", "onnx", "--calib", tmp_path / "x.npy",
            "--out", tmp_path / "conv")

    refused = cli(*args)
    assert refused.exit_code == 7, refused.output
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "pickle serialization format" in lines[0] and "--trust-pickle" in lines[0]
    assert not (tmp_path / "conv").exists()
    assert TAG_TRUST_PICKLE not in MlflowClient().get_run(run.info.run_id).data.tags

    trusted = cli(*args, "--trust-pickle", "--output", "json")
    assert trusted.exit_code == 0, (trusted.output, trusted.exception)
    report = json.loads(trusted.stdout)
    assert report["trust_pickle"] is True and report["status"] == "PASSED"
    assert any("MLflow model in the pickle format" in n for n in report["notes"])
    assert MlflowClient().get_run(run.info.run_id).data.tags[TAG_TRUST_PICKLE] == "true"
