"""The registry client against a malicious OCI server (tests/registry/_evil_oci.py, a thread on
127.0.0.1): oversized, endless and trickled answers are refused within their caps and deadline,
credentials reach only the host they were configured for, malformed manifests and hostile text
give one clean line. No docker-registry needed: this is the quick loop."""
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _evil_oci import EvilRegistry
from trainer.registry.artifacts import FILEPATH, pull
from trainer.registry.auth import Credentials, RegistryError
from trainer.registry.client import MANIFEST_OCI, Registry, registry_url

TRAINER = str(Path(sys.executable).parent / "trainer")
SECRET = "s3cret-for-evil-test"
CREDS = Credentials("ci", SECRET, "test")


def _blob(data: bytes) -> dict:
    return {"mediaType": "application/vnd.cncf.model.weight.v1.raw", "size": len(data),
            "digest": "sha256:" + hashlib.sha256(data).hexdigest()}


def _manifest(*layers) -> dict:
    return {"schemaVersion": 2, "mediaType": MANIFEST_OCI, "config": {"mediaType": "application/json", **_blob(b"{}")},
            "layers": list(layers)}


def _cli(*args, env=None, timeout=60):
    return subprocess.run([TRAINER, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


# ---------------------------------------------------------------- bounded reads

def test_a_100_mib_manifest_is_not_read_past_the_cap():
    with EvilRegistry() as evil:
        evil.route("GET", "/v2/r/manifests/t", evil.streaming(100 << 20, b"{" * 65536))
        start = time.monotonic()
        with pytest.raises(RegistryError, match="more than 4194304 bytes"):
            Registry(evil.address, credentials=None).get_manifest("r", "t")
        assert time.monotonic() - start < 10
    assert evil.sent < 40 << 20       # the client hung up near the cap, not after 100 MiB


# Runs the CLI as a child of a small process and reports its peak RSS: a child forked straight
# from pytest would inherit pytest's own high-water mark (Linux keeps it across exec).
_PEAK_RSS = """import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
sys.stderr.write(f"\\npeak-rss-kib {usage.ru_maxrss}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_an_endless_manifest_keeps_the_process_small(tmp_path):
    with EvilRegistry() as evil:
        evil.route("GET", "/v2/r/manifests/t", evil.endless())
        proc = subprocess.Popen([sys.executable, "-S", "-c", _PEAK_RSS, TRAINER, "registry", "pull",
                                 f"{evil.address}/r:t", str(tmp_path / "out")], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=60)      # the old client read forever
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 11, err
    peak = int(lines.pop().split()[1])
    assert len(lines) == 1 and "more than" in lines[0] and "Traceback" not in err
    assert peak < 400 * 1024, peak      # KiB: the CLI's imports, not the stream
    assert not (tmp_path / "out").exists()


def test_an_endless_blob_for_a_16_byte_layer_writes_at_most_16_bytes(tmp_path):
    layer = {**_blob(b"0123456789abcdef"), "annotations": {FILEPATH: "w.bin"}}
    with EvilRegistry() as evil:
        evil.route("GET", "/v2/r/manifests/t", evil.manifest(_manifest(layer)))
        evil.route("GET", f"/v2/r/blobs/{layer['digest']}", evil.endless())
        with pytest.raises(RegistryError, match="more than 16 bytes"):
            pull(Registry(evil.address, credentials=None), "r", "t", tmp_path / "out")
    assert not (tmp_path / "out").exists()       # a new folder that failed is removed again


def test_a_trickled_manifest_fails_within_the_deadline(monkeypatch):
    monkeypatch.setenv("TRAINER_REGISTRY_TIMEOUT_S", "2")
    with EvilRegistry() as evil:
        evil.route("GET", "/v2/r/manifests/t", evil.streaming(200, b"{", every=0.5))
        start = time.monotonic()
        with pytest.raises(RegistryError, match="too slowly"):
            Registry(evil.address, credentials=None).get_manifest("r", "t")
        assert time.monotonic() - start < 6


def test_trickled_headers_fail_within_the_deadline(monkeypatch):
    monkeypatch.setenv("TRAINER_REGISTRY_TIMEOUT_S", "2")
    with EvilRegistry() as evil:
        evil.route("GET", "/v2/r/manifests/t", evil.trickled_headers(every=0.5))
        start = time.monotonic()
        with pytest.raises(RegistryError, match="within"):
            Registry(evil.address, credentials=None).get_manifest("r", "t")
        assert time.monotonic() - start < 6


# ---------------------------------------------------------------- credentials stay on their host

def test_environment_credentials_only_go_to_the_configured_registry(monkeypatch):
    with EvilRegistry() as evil:
        evil.route("GET", "/v2/", evil.basic_then(evil.answer(200, b"{}")))
        monkeypatch.setenv("TRAINER_REGISTRY", "harbor.example.com")
        monkeypatch.setenv("TRAINER_REGISTRY_USERNAME", "ci")
        monkeypatch.setenv("TRAINER_REGISTRY_PASSWORD", SECRET)
        monkeypatch.setenv("DOCKER_CONFIG", "/nonexistent")
        with pytest.raises(RegistryError, match="unauthorized with no credentials"):
            Registry(evil.address).ping()
        assert evil.authorizations() == []
        monkeypatch.setenv("TRAINER_REGISTRY", evil.address)      # now it is the configured one
        Registry(evil.address).ping()
        assert len(evil.authorizations()) == 1


def test_a_bearer_realm_on_another_host_gets_no_credentials():
    with EvilRegistry() as evil, EvilRegistry("localhost") as thief:
        thief.route("GET", "/token", thief.answer(200, b'{"token": "t"}'))
        evil.route("GET", "/v2/", evil.challenge(f'Bearer realm="http://localhost:{thief.port}/token",service="x"'))
        with pytest.raises(RegistryError, match="another host.*not sent there") as err:
            Registry(evil.address, credentials=CREDS).ping()
        assert SECRET not in str(err.value)
    assert thief.requests == [] and evil.authorizations() == []


def test_a_redirect_to_another_host_carries_no_authorization():
    with EvilRegistry() as evil, EvilRegistry("localhost") as other:
        other.route("GET", "/blob", other.answer(200, b"x"))
        evil.route("GET", "/v2/r/blobs/" + _blob(b"x")["digest"],
                   evil.basic_then(evil.answer(307, b"", {"Location": f"http://localhost:{other.port}/blob"})))
        assert Registry(evil.address, credentials=CREDS).get_blob("r", _blob(b"x")["digest"], 1) == b"x"
        assert len(evil.authorizations()) == 1        # the registry itself got the login
    assert other.requests and other.authorizations() == []


def test_loopback_is_an_ip_address_check_not_a_prefix():
    assert registry_url("127.evil.example:5000") == "https://127.evil.example:5000"
    assert registry_url("127.0.0.2:5000") == "http://127.0.0.2:5000"
    assert registry_url("[::1]:5000") == "http://[::1]:5000"
    assert registry_url("localhost:5000") == "http://localhost:5000"
    assert registry_url("localhost.evil.example") == "https://localhost.evil.example"


# ---------------------------------------------------------------- malformed manifests, hostile text

BAD_PATHS = {
    "nul": "model\x00.bin", "not a string": 5, "5000 chars": "a" * 5000, "long component": "d/" + "b" * 300,
    "absolute": "/etc/passwd", "dotdot": "a/../../x", "git config": ".git/config", "git hooks": "sub/.git/hooks/x",
    "gitattributes": ".gitattributes", "upper-case git": ".GIT/config", "escape": "a\x1b[31m.bin",
}


@pytest.mark.parametrize("path", BAD_PATHS.values(), ids=BAD_PATHS.keys())
def test_a_manifest_with_a_bad_layer_path_is_refused_before_anything_is_written(tmp_path, path):
    layer = {**_blob(b"x"), "annotations": {FILEPATH: path}}
    with EvilRegistry() as evil:
        evil.route("GET", "/v2/r/manifests/t", evil.manifest(_manifest(layer)))
        with pytest.raises(RegistryError, match="refused"):
            pull(Registry(evil.address, credentials=None), "r", "t", tmp_path / "out")
        assert not any("/blobs/" in r["path"] for r in evil.requests)
    assert not (tmp_path / "out").exists()


MALFORMED = {
    "duplicate paths": _manifest({**_blob(b"x"), "annotations": {FILEPATH: "m.bin"}},
                                 {**_blob(b"y"), "annotations": {FILEPATH: "m.bin"}}),
    "nested paths": _manifest({**_blob(b"x"), "annotations": {FILEPATH: "model"}},
                              {**_blob(b"y"), "annotations": {FILEPATH: "model/w.bin"}}),
    "layers not a list": {**_manifest(), "layers": {"a": 1}},
    "layer not an object": {**_manifest(), "layers": ["x"]},
    "digest missing": _manifest({"size": 1, "annotations": {FILEPATH: "m"}}),
    "size a string": _manifest({**_blob(b"x"), "size": "1", "annotations": {FILEPATH: "m"}}),
    "annotations a list": _manifest({**_blob(b"x"), "annotations": ["m"]}),
    "not an object": [1, 2],
}


@pytest.mark.parametrize("manifest", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_manifest_is_one_clean_line(tmp_path, manifest):
    with EvilRegistry() as evil:
        evil.route("GET", "/v2/r/manifests/t", evil.manifest(json.dumps(manifest).encode()))
        done = _cli("registry", "pull", f"{evil.address}/r:t", str(tmp_path / "out"), env={"TRAINER_DEBUG": ""})
    assert done.returncode == 11, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "out").exists()


def test_registry_error_text_reaches_the_terminal_without_escape_codes():
    hostile = "denied \x1b]0;pwned\x07\x1b[2J\x1b[31mred\r\nsecond line"
    with EvilRegistry() as evil:
        evil.route("*", "/v2/_catalog", evil.answer(403, json.dumps(
            {"errors": [{"code": "DENIED", "message": hostile}]}).encode()))
        done = _cli("registry", "ls", "--registry", evil.address)
    assert done.returncode == 11
    assert "\x1b" not in done.stderr and "\x07" not in done.stderr and "\r" not in done.stderr
    assert "denied" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_10000_character_registry_address_is_refused_cleanly():
    for args in (["registry", "ls", "--registry", "a" * 10_000],
                 ["promote", "m", "--to", "staging", "--registry", "a" * 10_000]):
        done = _cli(*args)
        assert done.returncode == 11, done.stderr
        assert "at most" in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1



def test_a_pull_into_a_path_that_cannot_be_a_folder_is_one_line(tmp_path):
    layer = {**_blob(b"x"), "annotations": {FILEPATH: "m.bin"}}
    (tmp_path / "file").write_text("not a folder")
    with EvilRegistry() as evil:
        evil.route("GET", "/v2/r/manifests/t", evil.manifest(_manifest(layer)))
        for dest, why in ((tmp_path / "file" / "out", "cannot create"), (tmp_path / "file", "not a folder")):
            with pytest.raises(RegistryError, match=why):
                pull(Registry(evil.address, credentials=None), "r", "t", dest)
    assert (tmp_path / "file").read_text() == "not a folder"
