"""Promotion against a real docker-registry and a real MLflow store, on one tiny trained model
(run_local of the digits example: 1 epoch, width 4, ONNX conversion) shared by every test."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import trainer
from trainer import api
from trainer.promotion.registration import register_run, tag_digest
from trainer.errors import GateError
from trainer.registry import serve
from trainer.registry.client import Registry
from trainer.spec import load_spec

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
TRAINER = str(Path(sys.executable).parent / "trainer")
MODEL = "digits-promo"
OK_GATES = {"staging": {"accuracy": ">=0.1", "parity": "passed"}, "production": {"parity.onnx.passed": "==1"}}
SET = ["config.epochs=1", "config.width=4", "workers=1", "convert.targets=[onnx]", "tracking.experiment=promo"]


@pytest.fixture(scope="module")
def trained(oci_registry):
    """One run, registered as version 1 by the job driver's own register: step (pushed to dev/)."""
    run = trainer.run_local(REPO / "examples/digits/torch.yaml",
                            set=SET + [f"register={json.dumps({'model': MODEL, 'gates': OK_GATES})}"])
    return run


def _register(run, gates) -> str:
    spec, _ = load_spec(REPO / "examples/digits/torch.yaml", SET + [f"register={json.dumps({'model': MODEL, 'gates': gates})}"])
    return register_run(spec, run.run_id, run.tracking_uri, echo=lambda _: None)["version"]


def _state(run, reg):
    """Everything a promotion may change: every repository's tags and digests, every version's
    tags and the model's aliases. (Blobs mounted by a promotion that then failed are untagged and
    invisible; the registry may list their repository with no tags, so empty ones are left out.)"""
    from trainer.tracking.runs import client

    mlc = client(run.tracking_uri)
    tags = {repo: {t: reg.manifest_digest(repo, t) for t in reg.tags(repo)} for repo in reg.catalog()}
    tags = {repo: found for repo, found in tags.items() if found}
    versions = {mv.version: dict(mv.tags) for mv in mlc.search_model_versions(f"name = '{MODEL}'")}
    return tags, versions, dict(mlc.get_registered_model(MODEL).aliases)


def test_registration_pushes_one_modelpack_artifact_to_dev(trained, oci_registry):
    from trainer.tracking.runs import client

    mv = client(trained.tracking_uri).get_model_version_by_alias(MODEL, "dev")
    digest = mv.tags[tag_digest("dev")]
    reg = Registry(oci_registry["address"])
    manifest = reg.get_manifest(f"dev/{MODEL}", f"v{mv.version}").json
    assert reg.manifest_digest(f"dev/{MODEL}", f"v{mv.version}") == digest
    assert manifest["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
    paths = {layer["annotations"]["org.cncf.model.filepath"] for layer in manifest["layers"]}
    assert "model/MLmodel" in paths and any(p.endswith(".onnx") for p in paths)
    assert f"models:/{manifest['annotations']['io.trainer.mlflow.model_id']}" == mv.source
    assert manifest["annotations"]["io.trainer.data.sha256"] == mv.tags["trainer.data.sha256"]
    assert mv.tags["trainer.parity"] == "passed"


def test_promotion_keeps_digests_and_production_needs_approval(trained, oci_registry):
    reg = Registry(oci_registry["address"])
    record = api.promote(MODEL, "staging")
    dev_digest = reg.manifest_digest(f"dev/{MODEL}", f"v{record['version']}")
    assert record["digest"] == dev_digest == reg.manifest_digest(f"staging/{MODEL}", f"v{record['version']}")
    with pytest.raises(GateError, match="--approve"):
        api.promote(MODEL, "production")
    record = api.promote(MODEL, "production", approve=True)
    assert reg.manifest_digest(f"prod/{MODEL}", f"v{record['version']}") == dev_digest
    assert record["registry"].startswith("referrers tag schema")


def test_a_failed_gate_leaves_registry_and_mlflow_unchanged(trained, oci_registry):
    version = _register(trained, {"staging": {"accuracy": ">=1.01"}})
    reg = Registry(oci_registry["address"])
    before = _state(trained, reg)
    done = subprocess.run([TRAINER, "promote", MODEL, "--version", version, "--to", "staging"],
                          capture_output=True, text=True)
    assert done.returncode == 10, done.stderr
    assert "accuracy >=1.01" in done.stderr and "FAILED" in done.stderr and "nothing was changed" in done.stderr
    assert _state(trained, reg) == before


def test_registry_stopped_between_blob_and_manifest_then_retry(trained, oci_registry, monkeypatch):
    version = _register(trained, OK_GATES)
    reg = Registry(oci_registry["address"])
    before = _state(trained, reg)
    real_put = Registry.put_manifest
    stopped = []

    def stop_first(self, repo, ref, body, media_type):
        if repo.startswith("staging/") and not stopped:   # the blobs are mounted: now the registry goes away
            stopped.append(serve.stop())
        return real_put(self, repo, ref, body, media_type)
    monkeypatch.setattr(Registry, "put_manifest", stop_first)
    with pytest.raises(trainer.TrainerError, match="cannot reach the registry"):
        api.promote(MODEL, "staging", version)
    assert stopped == [True]
    monkeypatch.setattr(Registry, "put_manifest", real_put)
    port = int(oci_registry["address"].rsplit(":", 1)[1])
    serve.start(port=port)
    assert _state(trained, Registry(oci_registry["address"])) == before    # nothing half-promoted
    record = api.promote(MODEL, "staging", version)
    assert Registry(oci_registry["address"]).manifest_digest(f"staging/{MODEL}", f"v{version}") == record["digest"]


def test_mlflow_failure_after_the_registry_commit_is_undone(trained, oci_registry):
    from trainer.promotion.transaction import promote

    version = _register(trained, OK_GATES)
    reg = Registry(oci_registry["address"])
    before = _state(trained, reg)
    with pytest.raises(trainer.TrainerError, match="injected"):
        promote(MODEL, "staging", version, _fail_after="mlflow")
    assert _state(trained, reg) == before


def test_history_lists_every_promotion_in_order(trained, oci_registry):
    done = subprocess.run([TRAINER, "promote", "history", MODEL, "-o", "json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout)
    assert [(r["to"], r["version"]) for r in records][:2] == [("staging", "1"), ("production", "1")]
    assert [r["at"] for r in records] == sorted(r["at"] for r in records)
    assert all(r["in_registry"] is True for r in records) and all(r["gates"] for r in records)
    assert records[-1]["to"] == "staging" and records[-1]["version"] != "1"
    table = subprocess.run([TRAINER, "promote", "history", MODEL], capture_output=True, text=True,
                           env={**__import__("os").environ, "COLUMNS": "80"})
    assert table.returncode == 0 and "production" in table.stdout


def test_the_registry_password_is_nowhere_in_mlflow_or_output(trained, oci_registry, trainer_home):
    import base64

    from trainer.tracking.runs import client

    auth = json.loads((trainer_home / "registry" / "config.json").read_text())["auths"][oci_registry["address"]]["auth"]
    password = base64.b64decode(auth).decode().split(":", 1)[1]
    mlc = client(trained.tracking_uri)
    stored = json.dumps([dict(mv.tags) for mv in mlc.search_model_versions(f"name = '{MODEL}'")])
    run = mlc.get_run(trained.run_id)
    stored += json.dumps(run.data.tags) + json.dumps(run.data.params)
    shown = subprocess.run([TRAINER, "promote", "history", MODEL, "-o", "json"], capture_output=True, text=True)
    listed = subprocess.run([TRAINER, "registry", "ls", f"dev/{MODEL}", "--registry", oci_registry["address"]],
                            capture_output=True, text=True, env={**__import__("os").environ, "TRAINER_DEBUG": "1"})
    assert listed.returncode == 0, listed.stderr
    for text in (stored, shown.stdout + shown.stderr, listed.stdout + listed.stderr):
        assert password not in text and auth not in text
