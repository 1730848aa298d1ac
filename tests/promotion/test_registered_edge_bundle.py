"""Issue 27, the edge engineer: a registered model's artifact carries the edge bundle the job's
conversion made, and that bundle names the model version (a job converts before registering, so
its bundle could name only the run, the model URI and the digest)."""
import json

import torch

from converters.api import convert
from converters.base import ModelInput
from converters.edge.bundle import load_bundle, write_bundle
from converters.sources import model_digest
from trainer.promotion.registration import artifact_files, client as registration_client, logged_model_id
from trainer.runners.torch import TorchContext
from trainer.spec import JobSpec
from trainer.tracking.runs import client


class NoSession:
    rank, local_rank, world_size = 0, 0, 1

    def restore_dir(self):
        return None


def _run_with_an_edge_conversion(tmp_path) -> tuple[str, str]:
    """A run as a job with `convert: {targets: [onnx], edge: [...]}` leaves it: the model and
    conversion/ with onnx/ and edge/ (the bundle written as the job writes it; the emulated ARM
    runs that judge it are not what this test is about)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = client(uri).create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    run_id = client(uri).create_run(exp).info.run_id
    ctx = TorchContext(JobSpec(name="t", framework="torch", entrypoint="t.py:train"), NoSession(),
                       run_id=run_id, tracking_uri=uri)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    ctx.save_model(model, torch.rand(40, 1, 4, 4), class_names=["a", "b", "c"], preprocessing={"scale": 0.5})
    ctx.close()
    report = convert(f"runs:/{run_id}/model", None, "onnx", out_dir=tmp_path / "conv", tracking_uri=uri)
    bundle = write_bundle(tmp_path / "edge", {"onnx": tmp_path / "conv" / report.rows[0].artifact},
                          [ModelInput(i["name"], tuple(i["shape"]), i["layout"], i["dtype"]) for i in report.inputs],
                          labels=["a", "b", "c"], preprocessing={"scale": 0.5},
                          source={"run_id": run_id, "model": f"runs:/{run_id}/model",
                                  "model_digest": model_digest(tmp_path / "conv" / report.rows[0].artifact)})
    client(uri).log_artifacts(run_id, str(bundle), "conversion/edge")
    return uri, run_id


def test_the_registered_artifact_carries_the_bundle_naming_its_version(tmp_path):
    uri, run_id = _run_with_an_edge_conversion(tmp_path)
    mlc = registration_client(uri)
    model_id = logged_model_id(mlc, mlc.get_run(run_id))
    root = tmp_path / "artifact"
    artifact_files(uri, model_id, run_id, root, "digits-edge", "7")

    assert (root / "model" / "MLmodel").is_file() and (root / "conversion" / "onnx" / "model.onnx").is_file()
    bundle = load_bundle(root / "conversion" / "edge")       # every file checks against the manifest
    source = bundle.manifest["source"]
    assert source["model_version"] == "digits-edge/7" and source["run_id"] == run_id
    assert source["model_digest"].startswith("sha256:")
    assert bundle.labels == ["a", "b", "c"] and bundle.preprocessing == {"scale": 0.5}
    readme = (root / "conversion" / "edge" / "README.md").read_text()
    assert "model version `digits-edge/7`" in readme and f"run id `{run_id}`" in readme
    # the run's own copy is left as the conversion wrote it
    logged = json.loads((tmp_path / "art" / run_id / "artifacts" / "conversion" / "edge" / "manifest.json").read_text())
    assert "model_version" not in logged["source"]
