"""What a job's MLflow run says at a glance, against a real SQLite store: the experiment typed as
model training (MLflow 3 opens it on training runs, not the GenAI view), the run's description,
a failure in the user's terms as tags and an artifact, the conversion as a few metrics + a table."""
import json

import numpy as np

from converters.parity import ConversionReport, Row, Tolerance, compare
from trainer.spec import load_spec
from trainer.tracking.runs import (EXPERIMENT_KIND_TRAINING, FAILURE_ARTIFACT, TAG_EXPERIMENT_KIND, TAG_NOTE, client,
                                   describe, read_failure, record_job_failure, start_run)

FAILURE = {"type": "ValueError", "message": "bad batch shape (32, 7) at epoch 2", "where": "train.py:12",
           "function": "train", "code": "raise ValueError(...)", "rank": 1, "node": "10.0.0.5 (3f2a9c1b)",
           "epoch": 1, "stage": "training", "traceback": "Traceback ...\nValueError: bad batch shape"}


def _spec(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "train.py").write_text("def train(ctx):\n    pass\n")
    (tmp_path / "job.yaml").write_text("name: story\nframework: torch\nentrypoint: train.py:train\nworkers: 2\n"
                                       "config: {epochs: 3, lr: 0.1}\ntracking: {experiment: story}\n")
    return load_spec(tmp_path / "job.yaml")[0]


def test_experiment_is_model_training_and_the_run_is_described(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = _spec(tmp_path)
    run_id = start_run(spec, "story-1", uri, "http://127.0.0.1:8265", None)
    mlc = client(uri)
    exp = mlc.get_experiment_by_name("story")
    assert exp.tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND_TRAINING == "custom_model_development"
    note = mlc.get_run(run_id).data.tags[TAG_NOTE]
    assert "**story** (job `story-1`): torch, 2 worker(s)" in note and "`epochs=3`" in note and "running" in note
    # An experiment made before (by hand, by an older trainer) gets the kind; a user's own choice stays.
    mlc.create_experiment("older")
    mlc.create_experiment("chosen", tags={TAG_EXPERIMENT_KIND: "genai_development"})
    for name, kind in (("older", EXPERIMENT_KIND_TRAINING), ("chosen", "genai_development")):
        start_run(spec.model_copy(update={"tracking": spec.tracking.model_copy(update={"experiment": name})}),
                  f"{name}-1", uri, "local", None)
        assert mlc.get_experiment_by_name(name).tags[TAG_EXPERIMENT_KIND] == kind


def test_failure_tags_artifact_and_description(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = _spec(tmp_path)
    run_id = start_run(spec, "story-2", uri, "local", None)
    record_job_failure(uri, run_id, FAILURE)
    tags = client(uri).get_run(run_id).data.tags
    assert tags["trainer.failure"] == ("ValueError: bad batch shape (32, 7) at epoch 2 (at train.py:12 in train; "
                                       "rank 1 on node 10.0.0.5 (3f2a9c1b); last epoch 1)")
    assert tags["trainer.failure.where"] == "train.py:12" and tags["trainer.failure.rank"] == "1"
    back = read_failure(uri, run_id)
    assert {k: back[k] for k in ("type", "message", "where", "rank", "epoch", "node")} == \
        {k: FAILURE[k] for k in ("type", "message", "where", "rank", "epoch", "node")}
    local = client(uri).download_artifacts(run_id, FAILURE_ARTIFACT, str(tmp_path))
    assert json.loads(open(local).read())["traceback"].endswith("bad batch shape")
    text = describe(spec, "story-2", outcome="failed", failure=FAILURE,
                    conversion={"status": "PASSED", "targets": [{"target": "onnx", "verdict": "pass",
                                                                 "figure": "max abs diff 2e-06"}]})
    assert "Outcome: **failed**" in text and "train.py:12" in text and "onnx: pass, max abs diff 2e-06" in text


def _report(passed_int8: bool) -> ConversionReport:
    tol = Tolerance()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 10))
    labels = a.argmax(-1)
    rows = []
    noise = 0.01 if passed_int8 else 0.6
    for name, precision, b in (("onnx", "fp32", a + 1e-6), ("onnx-int8", "int8", a + rng.normal(0, noise, a.shape))):
        m = compare(name, precision, a, b, labels, tol)
        rows.append(Row(target=name, precision=precision, artifact=f"{name}/model.onnx", size_bytes=1000,
                        n_samples=64, max_abs_diff=m["max_abs_diff"], max_rel_diff=m["max_rel_diff"],
                        top1_agreement=m["top1_agreement"], accuracy=m["accuracy"], accuracy_delta=m["accuracy_delta"],
                        latency_ms={"b1": 0.1, "b64": 1.0}, passed=m["passed"], criterion=m["criterion"],
                        limit_ratio=m["limit_ratio"]))
    return ConversionReport(model="m.pt2", source="torch", exporter="x", inputs=[], tolerance=tol,
                            native_latency_ms={"b1": 0.2, "b64": 2.0}, native_accuracy=1.0, native_size_bytes=1,
                            rows=rows)


def test_conversion_figures_are_a_few_metrics_judged_by_each_targets_criterion(tmp_path):
    report = _report(passed_int8=True)
    fp32, int8 = report.rows
    # int8 is judged by agreement and accuracy, not the fp32 atol: its max abs diff is far past
    # atol, yet it is within its own limit.
    assert int8.passed and int8.max_abs_diff > report.tolerance.atol and int8.limit_ratio <= 1
    assert fp32.passed and 0 < fp32.limit_ratio < 0.1
    assert set(report.metrics()) == {"parity.passed", "parity.onnx.max_abs_diff", "parity.onnx.size_bytes",
                                     "parity.onnx-int8.top1_agreement", "parity.onnx-int8.accuracy_delta",
                                     "parity.onnx-int8.size_bytes",
                                     "parity.onnx.passed", "parity.onnx-int8.passed"}
    words = report.to_markdown()
    assert "- onnx-int8: int8 criterion: the converted model must pick the native model's top-1 class" in words
    assert "- onnx: fp32 criterion: every output element within 0.0001 + 0.001 x |native|" in words
    assert report.table()["result"] == ["pass", "pass"]
    from converters.parity import plot

    plot(report, tmp_path / "ok.png")
    failing = _report(passed_int8=False)
    assert not failing.rows[1].passed and failing.rows[1].limit_ratio > 1
    plot(failing, tmp_path / "bad.png")
    assert (tmp_path / "ok.png").stat().st_size > 10_000 and (tmp_path / "bad.png").stat().st_size > 10_000
