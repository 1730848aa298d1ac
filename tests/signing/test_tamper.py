"""Issue 22: signed, attested promotion against the real docker-registry (session `oci_registry`)
and the session's SQLite MLflow store. A registered version is made without Ray, the way
registration makes it: a run with metrics, a tiny ModelPack in dev/, signed (OpenSSF model
signing), its provenance and ML-BOM pushed as referrers, the version tagged. Each tamper case is
refused by `verify` and by `promote` (exit 13, naming the file or claim, nothing changed); the
untampered version verifies, promotes, and its copy in staging verifies too."""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from trainer.errors import VerifyError
from trainer.promotion.registration import (TAG_ATTESTATIONS, TAG_GATES, TAG_REGISTRY, tag_digest, tag_ref,
                                            version_tag)
from trainer.registry.artifacts import push_model, put_fallback_index
from trainer.registry.client import INDEX_OCI, Registry

pytestmark = pytest.mark.integration
TRAINER = str(Path(sys.executable).parent / "trainer")
GATES = {"staging": {"accuracy": ">=0.9"}}


@pytest.fixture
def keys_dir(tmp_path, monkeypatch):
    """Keys of this test only (the session's $TRAINER_HOME/keys stays empty for other tests)."""
    from trainer.signing import keys

    monkeypatch.setenv("TRAINER_KEYS_DIR", str(tmp_path / "keys"))
    for name in ("TRAINER_SIGNING_KEY", "TRAINER_SIGNING_KEY_PEM"):
        monkeypatch.delenv(name, raising=False)
    keys.init()
    return tmp_path / "keys"


def _other_key(tmp_path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "other.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def _registered(model: str, address: str, version: int = 1, files: dict | None = None,
                metrics: dict | None = None) -> dict:
    """Version `version` of `model` in dev/, signed and attested; returns {digest, run_id, attested}."""
    from trainer.home import default_tracking_uri
    from trainer.signing.artifact import attest_artifact
    from trainer.tracking.runs import client

    mlc = client(default_tracking_uri())
    exp = mlc.get_experiment_by_name("signing")
    exp_id = exp.experiment_id if exp else mlc.create_experiment("signing")
    run = mlc.create_run(exp_id)
    metrics = metrics or {"accuracy": 0.97, "parity.passed": 1.0}
    for k, v in metrics.items():
        mlc.log_metric(run.info.run_id, k, v)
    mlc.set_terminated(run.info.run_id)
    if version == 1:
        mlc.create_registered_model(model)
    reg = Registry(address)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for rel, data in (files or {"model/model.bin": f"{model}-{version}-weights".encode(),
                                    "conversion/model.onnx": f"{model}-{version}-onnx".encode()}).items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        manifest = push_model(reg, f"dev/{model}", version_tag(version), root, name=model, version=str(version))
        attested = attest_artifact(reg, f"dev/{model}", root, manifest, {
            "model": model, "version": str(version), "run_id": run.info.run_id, "job_id": "raysubmit_test",
            "spec_sha256": "0" * 64, "lock_sha256": "1" * 64, "git_commit": "2" * 40, "data_sha256": "3" * 64,
            "parity": "passed", "metrics": metrics, "frameworks": {"torch": "2.13.0"}})
    tags = {TAG_GATES: json.dumps(GATES), TAG_REGISTRY: address, tag_digest("dev"): manifest.digest,
            tag_ref("dev"): f"{address}/dev/{model}:{version_tag(version)}",
            TAG_ATTESTATIONS: json.dumps(attested)}
    mv = mlc.create_model_version(model, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id, tags=tags)
    assert str(mv.version) == str(version)
    mlc.set_registered_model_alias(model, "dev", str(version))
    return {"digest": manifest.digest, "run_id": run.info.run_id, "attested": attested, "manifest": manifest}


def _nothing_promoted(model: str, address: str, digest: str) -> None:
    from trainer.home import default_tracking_uri
    from trainer.tracking.runs import client

    mlc = client(default_tracking_uri())
    mv = mlc.get_model_version(model, "1")
    assert not any(k.startswith("trainer.promotion.") or k.startswith("trainer.registry.staging") for k in mv.tags)
    assert "staging" not in (mlc.get_registered_model(model).aliases or {})
    reg = Registry(address)
    assert reg.manifest_digest(f"staging/{model}", "v1") is None
    assert reg.manifest_digest(f"staging/{model}", digest) is None


def _blob_file(trainer_home: Path, digest: str) -> Path:
    hex_ = digest.split(":", 1)[1]
    return trainer_home / "registry" / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256" / hex_[:2] / hex_ / "data"


def test_untampered_version_verifies_promotes_and_its_staging_copy_verifies(oci_registry, keys_dir, tmp_path):
    from trainer.api import promotion_history, verify
    from trainer.promotion.transaction import promote

    model = "sig-clean"
    made = _registered(model, oci_registry["address"])
    verdict = verify(f"{model}@1")
    assert verdict["ok"], verdict["failures"]
    assert verdict["files"] == 2 and verdict["evidence"]["parity"] == "passed"
    record = promote(model, "staging")
    assert record["changed"] and record["digest"] == made["digest"]
    assert record["signature"]["keyid"]
    staged = verify(f"{oci_registry['address']}/staging/{model}:v1")
    assert staged["ok"], staged["failures"]
    prod = promote(model, "production", approve=True)
    assert prod["changed"] and prod["digest"] == made["digest"]
    assert verify(f"{oci_registry['address']}/prod/{model}:v1")["ok"]
    assert verify(f"{model}@1", env="production")["ok"]      # the version's prod/ copy, prod's keys
    rows = promotion_history(model)
    assert [r["signatures"][:3] for r in rows] == ["ok ", "ok "], rows
    row = rows[0]
    # the promoter's key no longer trusted: the record's signature no longer verifies today
    from trainer.signing import keys

    # staging now trusts another key only: the record's signature no longer verifies today
    from cryptography.hazmat.primitives import serialization

    other = keys.load_private(_other_key(tmp_path))
    (tmp_path / "other.pub").write_bytes(other.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    keys.trust(tmp_path / "other.pub", "staging")
    keys.untrust(row["signature"]["keyid"][:16], "staging")
    rows = promotion_history(model)
    assert rows[0]["signatures"].startswith("BAD") and rows[1]["signatures"].startswith("ok "), rows


def _tamper_blob(model, made, address, trainer_home, tmp_path):
    layer = next(l for l in made["manifest"].json["layers"]
                 if l["annotations"]["org.cncf.model.filepath"] == "conversion/model.onnx")
    _blob_file(trainer_home, layer["digest"]).write_bytes(b"evil weights of the same size!"[:layer["size"]]
                                                          .ljust(layer["size"], b"!"))
    return "file conversion/model.onnx: the registry's bytes are not its layer"


def _retag(model, made, address, trainer_home, tmp_path):
    other = _registered(model, address, version=2)
    Registry(address).put_manifest(f"dev/{model}", "v1", other["manifest"].body, other["manifest"].media_type)
    return "the tag points at " + other["digest"]


def _strip_signature(model, made, address, trainer_home, tmp_path):
    from trainer.signing.artifact import SIGNATURE

    reg = Registry(address)
    index = reg.fallback_index(f"dev/{model}", made["digest"]).json
    index["manifests"] = [m for m in index["manifests"] if m.get("artifactType") != SIGNATURE]
    put_fallback_index(reg, f"dev/{model}", made["digest"], json.dumps(index).encode())
    return "no signature"


def _untrusted_key(model, made, address, trainer_home, tmp_path):
    """Re-sign the same artifact with a key nobody trusts, replacing every attestation."""
    from trainer.signing.artifact import attest_artifact

    reg = Registry(address)
    put_fallback_index(reg, f"dev/{model}", made["digest"],
                       json.dumps({"schemaVersion": 2, "mediaType": INDEX_OCI, "manifests": []}).encode())
    os.environ["TRAINER_SIGNING_KEY"] = str(_other_key(tmp_path))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            for rel, data in {"model/model.bin": f"{model}-1-weights".encode(),
                              "conversion/model.onnx": f"{model}-1-onnx".encode()}.items():
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(data)
            attest_artifact(reg, f"dev/{model}", root, made["manifest"], {
                "model": model, "version": "1", "run_id": made["run_id"], "parity": "passed",
                "metrics": {"accuracy": 0.97}})
    finally:
        del os.environ["TRAINER_SIGNING_KEY"]
    return "signature: not made by a key"


def _swap_provenance(model, made, address, trainer_home, tmp_path):
    """The provenance referrer replaced by the (validly signed) provenance of another artifact."""
    from trainer.signing.artifact import PROVENANCE

    other = _registered(f"{model}-other", address)
    reg = Registry(address)
    theirs = reg.fallback_index(f"dev/{model}-other", other["digest"]).json["manifests"]
    prov = next(m for m in theirs if m.get("artifactType") == PROVENANCE)
    from trainer.registry.artifacts import copy

    copy(reg, f"dev/{model}-other", prov["digest"], f"dev/{model}", None)
    index = reg.fallback_index(f"dev/{model}", made["digest"]).json
    index["manifests"] = [m for m in index["manifests"] if m.get("artifactType") != PROVENANCE] + [prov]
    put_fallback_index(reg, f"dev/{model}", made["digest"], json.dumps(index).encode())
    return f"provenance names {other['digest'][:19]}, not this artifact's"


@pytest.mark.parametrize("tamper", [_tamper_blob, _retag, _strip_signature, _untrusted_key, _swap_provenance],
                         ids=["blob-in-storage", "retag", "strip-signature", "untrusted-key", "swap-provenance"])
def test_tampered_version_is_refused_by_verify_and_promote(oci_registry, keys_dir, trainer_home, tmp_path, tamper):
    from trainer.api import verify
    from trainer.promotion.transaction import promote

    model = "sig-" + tamper.__name__.strip("_").replace("_", "-")
    made = _registered(model, oci_registry["address"])
    assert verify(f"{model}@1")["ok"]
    expected = tamper(model, made, oci_registry["address"], trainer_home, tmp_path)
    verdict = verify(f"{model}@1")
    assert not verdict["ok"]
    assert any(expected in f for f in verdict["failures"]), verdict["failures"]
    with pytest.raises(VerifyError, match="nothing was changed") as err:
        promote(model, "staging", "1")
    assert expected in str(err.value)
    _nothing_promoted(model, oci_registry["address"], made["digest"])


def test_cli_verify_and_promote_exit_13_naming_the_file(oci_registry, keys_dir, trainer_home, tmp_path):
    model = "sig-cli"
    made = _registered(model, oci_registry["address"])
    ok = subprocess.run([TRAINER, "verify", f"{model}@1"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("verified "), ok.stdout
    _tamper_blob(model, made, oci_registry["address"], trainer_home, tmp_path)
    bad = subprocess.run([TRAINER, "verify", f"{model}@1"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 13, (bad.stdout, bad.stderr)
    assert "FAILED file conversion/model.onnx" in bad.stdout
    promoted = subprocess.run([TRAINER, "promote", model, "--to", "staging"], capture_output=True, text=True,
                              timeout=300)
    assert promoted.returncode == 13, (promoted.stdout, promoted.stderr)
    assert "conversion/model.onnx" in promoted.stderr and "nothing was changed" in promoted.stderr
    _nothing_promoted(model, oci_registry["address"], made["digest"])


def test_a_reference_retagged_to_another_version_names_the_version(oci_registry, keys_dir, trainer_home, tmp_path):
    """Without MLflow (a plain reference), the signed provenance still says which version it is."""
    from trainer.api import verify

    model = "sig-ref-retag"
    made = _registered(model, oci_registry["address"])
    ref = f"{oci_registry['address']}/dev/{model}:v1"
    assert verify(ref)["ok"]
    _retag(model, made, oci_registry["address"], trainer_home, tmp_path)
    verdict = verify(ref)
    assert verdict["failures"] == ["provenance is for version 2, not 1"], verdict
