"""Issue 27: the job summary (submit, run --local, retrain; and their --output json) names the
model version the run registered, its registry reference and digest: the next CI stage needs them."""

from trainer.api import run_summary
from trainer.cli._output import Printer
from trainer.cli.jobs import render_summary
from trainer.home import default_tracking_uri
from trainer.promotion.registration import TAG_DATA, tag_digest, tag_ref
from trainer.tracking.runs import client

DIGEST = "sha256:" + "ab" * 32


def _run_with_version(tmp_path, *, pushed: bool) -> str:
    uri = default_tracking_uri()
    mlc = client(uri)
    exp = mlc.create_experiment(f"reg-{pushed}")
    run = mlc.create_run(exp)
    mlc.set_terminated(run.info.run_id, "FINISHED")
    mlc.create_registered_model(f"m-{pushed}")
    (tmp_path / "model").mkdir(exist_ok=True)
    tags = {TAG_DATA: "x"}
    if pushed:
        tags.update({tag_digest("dev"): DIGEST, tag_ref("dev"): "127.0.0.1:5050/dev/m-True:v1"})
    mlc.create_model_version(f"m-{pushed}", source=(tmp_path / "model").as_uri(), run_id=run.info.run_id, tags=tags)
    return run.info.run_id


def test_the_summary_names_the_registered_version_reference_and_digest(isolated_home, tmp_path, capsys):
    run_id = _run_with_version(tmp_path, pushed=True)
    summary = run_summary(default_tracking_uri(), run_id)
    assert summary["registered"] == {"model": "m-True", "version": "1",
                                     "reference": "127.0.0.1:5050/dev/m-True:v1", "digest": DIGEST}
    render_summary(Printer("table"), {"run_id": run_id, "status": "SUCCEEDED", **summary})
    assert f"registered: m-True version 1 127.0.0.1:5050/dev/m-True:v1 {DIGEST}" in capsys.readouterr().out


def test_a_version_in_mlflow_only_and_a_run_that_registered_nothing(isolated_home, tmp_path):
    run_id = _run_with_version(tmp_path, pushed=False)
    summary = run_summary(default_tracking_uri(), run_id)
    assert summary["registered"] == {"model": "m-False", "version": "1", "reference": None, "digest": None}
    mlc = client(default_tracking_uri())
    other = mlc.create_run(mlc.create_experiment("none")).info.run_id
    assert "registered" not in run_summary(default_tracking_uri(), other)
    assert "registered" not in run_summary(default_tracking_uri(), "x' OR name != '")    # not a run id
