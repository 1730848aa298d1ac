"""What the torch runner logs as the run's model: MLflow's pt2 format (torch.export, no pickled
Python), which `trainer convert runs:/<id>/model` loads without --trust-pickle; a model torch.export
cannot capture is logged pickled, and the job log and the run's tag say so. SQLite MLflow, no Ray."""
from pathlib import Path

import pytest
import torch

from trainer.runners.torch import TAG_MODEL_FORMAT, TorchContext
from trainer.spec import JobSpec
from trainer.tracking.runs import client, global_store


class NoSession:
    rank, local_rank, world_size = 0, 0, 1

    def restore_dir(self):
        return None


@pytest.fixture
def context(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = client(uri).create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    run_id = client(uri).create_run(exp).info.run_id
    spec = JobSpec(name="t", framework="torch", entrypoint="t.py:train")
    ctx = TorchContext(spec, NoSession(), run_id=run_id, tracking_uri=uri)
    yield ctx
    ctx.close()


def model_files(ctx) -> set[str]:
    import mlflow

    # MLflow 3 resolves a runs:/ model URI (a logged model's own artifacts) through the global store.
    with global_store(ctx._tracking_uri):
        local = mlflow.artifacts.download_artifacts(f"runs:/{ctx.run_id}/model", tracking_uri=ctx._tracking_uri)
    return {p.name for p in Path(local, "data").iterdir()}


def test_the_model_is_logged_as_an_exported_program(context, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 10))
    context._log_model(model, torch.rand(32, 1, 8, 8))
    run = client(context._tracking_uri).get_run(context.run_id)
    assert run.data.tags[TAG_MODEL_FORMAT] == "pt2" and run.info.status == "RUNNING"
    assert "model.pt2" in model_files(context)

    from converters.api import convert

    report = convert(f"runs:/{context.run_id}/model", None, "onnx", calib=torch.rand(16, 1, 8, 8).numpy(),
                     out_dir=tmp_path / "conv",
                     tracking_uri=context._tracking_uri)
    assert report.passed and not report.trust_pickle


class DataDependent(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:          # Python control flow on a value: torch.export cannot capture it
            return x * 2
        return x


def test_a_model_torch_export_cannot_capture_is_logged_pickled_and_says_so(context, capsys):
    context._log_model(DataDependent(), torch.rand(8, 4))
    tag = client(context._tracking_uri).get_run(context.run_id).data.tags[TAG_MODEL_FORMAT]
    assert tag.startswith("pickle (torch.export failed: ")
    assert "model.pth" in model_files(context)
    assert "`trainer convert` needs --trust-pickle for it" in capsys.readouterr().out
