"""issue 27, the edge engineer: what `ctx.save_model(preprocessing=, class_names=)` records goes
with the model into the edge bundle's manifest, with the bundle's source (run, model, digest) and
its README; the x86 and the emulated aarch64 rows are judged on the same samples."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from trainer.protocol import MODEL_INFO_ARTIFACT
from trainer.runners.torch import TorchContext
from trainer.spec import JobSpec
from trainer.tracking.runs import client


class NoSession:
    rank, local_rank, world_size = 0, 0, 1

    def restore_dir(self):
        return None


@pytest.fixture
def context(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = client(uri).create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    run_id = client(uri).create_run(exp).info.run_id
    ctx = TorchContext(JobSpec(name="t", framework="torch", entrypoint="t.py:train"), NoSession(),
                       run_id=run_id, tracking_uri=uri)
    yield ctx
    ctx.close()


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 10))


@pytest.mark.parametrize("kwargs, says", [
    ({"preprocessing": {"scale": 1 / 16, "resize": 8}}, "unknown: resize"),
    ({"preprocessing": {"scale": "1/16"}}, "preprocessing scale must be a finite number"),
    ({"preprocessing": {"mean": [0.5, float("nan")]}}, "preprocessing mean must be a finite number"),
    ({"class_names": "0123456789"}, "class_names must be a non-empty list of strings"),
    ({"class_names": [0, 1]}, "class_names must be a non-empty list of strings"),
])
def test_save_model_refuses_bad_preprocessing_or_class_names_at_once(context, kwargs, says):
    with pytest.raises(ValueError, match=says):
        context.save_model(_model(), torch.rand(4, 1, 8, 8), **kwargs)
    assert not client(context._tracking_uri).list_artifacts(context.run_id)   # nothing logged


@pytest.mark.edge
@pytest.mark.slow
def test_save_model_info_reaches_the_bundle_with_its_source(context, tmp_path):
    from converters.api import convert
    from converters.edge.setup import SETUP_HINT, find_qemu, read_stamp

    if find_qemu() is None or read_stamp() is None:
        pytest.skip(f"no arm64 root for edge runs; {SETUP_HINT}")
    rng = np.random.default_rng(0)
    x = rng.random((300, 1, 8, 8), dtype=np.float32)
    names = [f"digit {d}" for d in range(10)]
    context.save_model(_model(), torch.from_numpy(x), labels=rng.integers(0, 10, 300),
                       preprocessing={"scale": 1 / 16}, class_names=names)
    info = json.loads((tmp_path / "art" / context.run_id / "artifacts" / MODEL_INFO_ARTIFACT).read_text())
    assert info == {"preprocessing": {"scale": 0.0625}, "class_names": names}

    report = convert(f"runs:/{context.run_id}/model", None, "onnx", edge=["cortex-a72"], out_dir=tmp_path / "conv",
                     tracking_uri=context._tracking_uri)
    assert report.passed
    # x86 and aarch64 judged on the same samples (was 150 vs 64)
    assert {r.target: r.n_samples for r in report.rows} == {"onnx": 150, "onnx@cortex-a72": 150}
    bundle = tmp_path / "conv" / "edge"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["labels"] == names and manifest["preprocessing"] == {"scale": 0.0625}
    source = manifest["source"]
    assert source["run_id"] == context.run_id and source["model"] == f"runs:/{context.run_id}/model"
    assert source["model_digest"].startswith("sha256:") and len(source["model_digest"]) == 7 + 64
    readme = (bundle / "README.md").read_text()
    assert f"run id `{context.run_id}`" in readme and "--preprocess" in readme
