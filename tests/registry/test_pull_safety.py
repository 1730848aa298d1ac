"""Where a pull may write, against the real docker-registry: only a new or empty folder, or one an
earlier pull wrote; never over a file it did not write, never through a symlink, never `.` by
default; and `registry copy` to another host copies there (a second real registry)."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.registry.artifacts import FILEPATH, PULL_MARKER, pull, push_model
from trainer.registry.auth import RegistryError
from trainer.registry.client import MANIFEST_OCI, Registry

pytestmark = pytest.mark.integration
TRAINER = str(Path(sys.executable).parent / "trainer")


@pytest.fixture(scope="module")
def pushed(oci_registry, tmp_path_factory):
    src = tmp_path_factory.mktemp("model")
    (src / "model").mkdir()
    (src / "model" / "MLmodel").write_text("flavors: {}\n")
    (src / "weights.bin").write_bytes(b"weights")
    reg = Registry(oci_registry["address"])
    push_model(reg, "dev/safe", "v1", src, name="safe", version="1")
    return reg


def _checkout(folder: Path) -> dict:
    """A git checkout's look-alike: what a pull into it must leave exactly as it was."""
    (folder / ".git").mkdir(parents=True)
    (folder / ".git" / "config").write_text("[core]\n")
    (folder / "weights.bin").write_text("mine")
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_pull_into_a_folder_with_other_files_is_refused_and_changes_nothing(pushed, tmp_path):
    before = _checkout(tmp_path / "repo")
    with pytest.raises(RegistryError, match="not empty and no pull wrote it"):
        pull(pushed, "dev/safe", "v1", tmp_path / "repo")
    assert {p: p.read_bytes() for p in (tmp_path / "repo").rglob("*") if p.is_file()} == before


def test_an_artifact_carrying_git_config_is_refused_even_into_an_empty_folder(pushed, tmp_path):
    blob = pushed.push_blob("dev/gitcfg", b"[core]\n\tfsmonitor = touch /tmp/pwned\n")
    cfg = pushed.push_blob("dev/gitcfg", b"{}")
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_OCI, "config": {"mediaType": "application/json", **cfg},
                "layers": [{"mediaType": "application/octet-stream", **blob, "annotations": {FILEPATH: ".git/config"}}]}
    pushed.put_manifest("dev/gitcfg", "v1", json.dumps(manifest).encode(), MANIFEST_OCI)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="version-control metadata"):
        pull(pushed, "dev/gitcfg", "v1", tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []


def test_a_symlink_in_a_pulled_folder_is_not_followed(pushed, tmp_path):
    pull(pushed, "dev/safe", "v1", tmp_path / "out")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(tmp_path / "out" / "model")
    (tmp_path / "out" / "model").symlink_to(outside)           # planted between two pulls
    with pytest.raises(RegistryError, match="symlink"):
        pull(pushed, "dev/safe", "v1", tmp_path / "out")
    assert list(outside.iterdir()) == []
    link = tmp_path / "link"
    link.symlink_to(outside)
    with pytest.raises(RegistryError, match="symlink is not followed"):
        pull(pushed, "dev/safe", "v1", link)
    assert list(outside.iterdir()) == []


def test_a_pull_replaces_only_the_files_it_wrote(pushed, tmp_path):
    pull(pushed, "dev/safe", "v1", tmp_path / "out")
    marker = json.loads((tmp_path / "out" / PULL_MARKER).read_text())
    assert marker["files"] == ["model/MLmodel", "weights.bin"]
    (tmp_path / "out" / "weights.bin").write_bytes(b"edited")
    pull(pushed, "dev/safe", "v1", tmp_path / "out")                 # its own files: replaced
    assert (tmp_path / "out" / "weights.bin").read_bytes() == b"weights"
    (tmp_path / "out" / "weights.bin").unlink()
    (tmp_path / "out" / "weights.bin").mkdir()                        # now not a file it wrote
    with pytest.raises(RegistryError, match="no pull wrote it"):
        pull(pushed, "dev/safe", "v1", tmp_path / "out")


def test_the_cli_pulls_into_a_new_folder_by_default_never_into_the_current_one(pushed, oci_registry, tmp_path):
    before = _checkout(tmp_path)
    done = subprocess.run([TRAINER, "registry", "pull", "dev/safe:v1", "--registry", oci_registry["address"]],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "safe-v1" / "weights.bin").read_bytes() == b"weights"
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "safe-v1" not in p.parts} == before
    again = subprocess.run([TRAINER, "registry", "pull", "dev/safe:v1", ".", "--registry", oci_registry["address"]],
                           capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 11 and "not empty" in again.stderr and "Traceback" not in again.stderr


@pytest.fixture
def second_registry(tmp_path):
    """Another real docker-registry (no auth) on another port: the target of a cross-host copy."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "config.yml").write_text(f"version: 0.1\nlog: {{level: error, accesslog: {{disabled: true}}}}\n"
                                         f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'data'}}}}}\n"
                                         f"http: {{addr: 127.0.0.1:{port}}}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(tmp_path / "config.yml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def test_registry_copy_to_another_host_copies_there(pushed, oci_registry, second_registry):
    done = subprocess.run([TRAINER, "registry", "copy", "dev/safe:v1", f"{second_registry}/staging/safe:v1",
                           "--registry", oci_registry["address"], "-o", "json"], capture_output=True, text=True,
                          env={**os.environ, "TRAINER_DEBUG": "1"})
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    digest = pushed.manifest_digest("dev/safe", "v1")
    assert out["target"] == f"{second_registry}/staging/safe:v1" and out["digest"] == digest
    assert Registry(second_registry, credentials=None).manifest_digest("staging/safe", "v1") == digest
    assert pushed.manifest_digest("staging/safe", "v1") is None       # not copied into the source
