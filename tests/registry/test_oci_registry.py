"""The OCI client against a real registry: auth, ModelPack push/pull, copy keeping digests,
referrers through the tag-schema fallback, and a runtime image pushed as an OCI layout."""
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from trainer.errors import RegistryError
from trainer.registry.auth import Credentials
from trainer.registry.client import MANIFEST_OCI, Reference, Registry, registry_url

pytestmark = pytest.mark.integration
TRAINER = str(Path(sys.executable).parent / "trainer")


def test_unauthenticated_and_wrong_password_pushes_are_refused(oci_registry):
    for creds, why in ((None, "no credentials"), (Credentials("trainer", "wrong", "test"), "credentials of 'trainer'")):
        reg = Registry(oci_registry["address"], credentials=creds)
        with pytest.raises(RegistryError, match=f"unauthorized with {why}") as err:
            reg.push_blob("dev/refused", b"data")
        assert "wrong" not in str(err.value)
    assert "dev/refused" not in Registry(oci_registry["address"]).catalog()


def test_modelpack_push_pull_and_copy_keep_the_digest(oci_registry, tmp_path):
    from trainer.registry.artifacts import FILEPATH, MODEL_ARTIFACT, MODEL_CONFIG, copy, pull, push_model

    src = tmp_path / "model"
    (src / "conversion" / "onnx").mkdir(parents=True)
    (src / "MLmodel").write_text("flavors: {}\n")
    (src / "conversion" / "onnx" / "model.onnx").write_bytes(b"\x08\x07onnx-bytes")
    reg = Registry(oci_registry["address"])
    pushed = push_model(reg, "dev/tiny", "v1", src, name="tiny", version="1")
    body = pushed.json
    assert body["artifactType"] == MODEL_ARTIFACT and body["config"]["mediaType"] == MODEL_CONFIG
    assert sorted(layer["annotations"][FILEPATH] for layer in body["layers"]) == ["MLmodel", "conversion/onnx/model.onnx"]
    manifest, how = copy(reg, "dev/tiny", "v1", "staging/tiny", "v1")
    assert manifest.digest == pushed.digest == reg.manifest_digest("staging/tiny", "v1")
    assert set(how.values()) == {"mounted"}
    got, files = pull(reg, "staging/tiny", "v1", tmp_path / "out")
    assert got.digest == pushed.digest and sorted(files) == ["MLmodel", "conversion/onnx/model.onnx"]
    assert (tmp_path / "out" / "conversion/onnx/model.onnx").read_bytes() == b"\x08\x07onnx-bytes"


def test_pull_refuses_a_path_outside_the_folder(oci_registry, tmp_path):
    from trainer.registry.artifacts import FILEPATH, pull

    reg = Registry(oci_registry["address"])
    blob = reg.push_blob("dev/evil", b"x")
    cfg = reg.push_blob("dev/evil", b"{}")
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_OCI, "config": {"mediaType": "application/json", **cfg},
                "layers": [{"mediaType": "application/octet-stream", **blob, "annotations": {FILEPATH: "../../x"}}]}
    reg.put_manifest("dev/evil", "v1", json.dumps(manifest).encode(), MANIFEST_OCI)
    with pytest.raises(RegistryError, match="outside the target folder"):
        pull(reg, "dev/evil", "v1", tmp_path / "out")
    assert not (tmp_path / "x").exists()


def test_referrers_fall_back_to_the_tag_schema(oci_registry):
    from trainer.registry.artifacts import fallback_index_with, push_model, push_record, put_fallback_index, read_records

    reg = Registry(oci_registry["address"])
    tmp = Path(__import__("tempfile").mkdtemp())
    (tmp / "w.bin").write_bytes(b"w")
    subject = push_model(reg, "dev/ref", "v1", tmp, name="ref")
    for n in (1, 2):
        desc = push_record(reg, "dev/ref", subject, {"seq": n, "at": f"2026-01-0{n}T00:00:00Z"})
        body, _ = fallback_index_with(reg, "dev/ref", subject.digest, desc)
        put_fallback_index(reg, "dev/ref", subject.digest, body)
    found, how = reg.referrers("dev/ref", subject.digest)
    assert how == "tag" and len(found) == 2      # docker-registry 2.8 has no referrers API
    assert [r["seq"] for r in read_records(reg, "dev/ref", subject.digest)] == [1, 2]


def _oci_layout(folder: Path) -> str:
    """A tiny runtime image written as an OCI image layout (no base image can be pulled here):
    one tar layer holding /etc/trainer-runtime, a config, a manifest, index.json."""
    blobs = folder / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        info = tarfile.TarInfo("etc/trainer-runtime")
        payload = b"torch\n"
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    layer = put(tar_bytes.getvalue())
    config = put(json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}}).encode())
    manifest = put(json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_OCI,
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                               "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer}]}).encode())
    (folder / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (folder / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": MANIFEST_OCI, **manifest}]}))
    return manifest["digest"]


def test_runtime_image_is_promoted_by_the_cli_keeping_its_digest(oci_registry, tmp_path):
    digest = _oci_layout(tmp_path / "layout")
    env_reg = ["--registry", oci_registry["address"], "-o", "json"]
    push = subprocess.run([TRAINER, "registry", "push", str(tmp_path / "layout"), "dev/runtime-torch:1", *env_reg],
                          capture_output=True, text=True)
    assert push.returncode == 0, push.stderr
    assert json.loads(push.stdout)["digest"] == digest
    for src, dst in (("dev", "staging"), ("staging", "prod")):
        done = subprocess.run([TRAINER, "registry", "copy", f"{src}/runtime-torch:1", f"{dst}/runtime-torch:1", *env_reg],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert out["digest"] == digest and set(out["blobs"].values()) == {"mounted"}
    listed = subprocess.run([TRAINER, "registry", "ls", "prod/runtime-torch", *env_reg], capture_output=True, text=True)
    assert json.loads(listed.stdout)["tags"] == [{"tag": "1", "digest": digest}]
