"""References, addresses and credentials: no registry needed."""
import base64
import json
import os
import stat

import pytest

from trainer.errors import RegistryError
from trainer.registry.auth import find_credentials, write_login
from trainer.registry.client import Reference, registry_url


def test_references_and_addresses():
    assert Reference.parse("dev/digits-cnn:v3") == Reference(None, "dev/digits-cnn", "v3")
    assert Reference.parse("127.0.0.1:5000/prod/m@sha256:" + "a" * 64).host == "127.0.0.1:5000"
    assert registry_url("127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert registry_url("harbor.example.com") == "https://harbor.example.com"
    for bad in ("Dev/x:1", "dev/x:bad tag", "dev/../x"):
        with pytest.raises(RegistryError):
            Reference.parse(bad)
    with pytest.raises(RegistryError, match="must not carry credentials"):
        registry_url("https://u:p@harbor.example.com")


def test_credentials_from_env_then_docker_config(tmp_path, monkeypatch):
    monkeypatch.delenv("TRAINER_REGISTRY_USERNAME", raising=False)
    monkeypatch.delenv("TRAINER_REGISTRY_PASSWORD", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.setenv("TRAINER_HOME", str(tmp_path / "home"))
    assert find_credentials("h:5000") is None
    auth = base64.b64encode(b"robot$ci:s3cret").decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"https://h:5000": {"auth": auth}}}))
    found = find_credentials("h:5000")
    assert (found.username, found.secret) == ("robot$ci", "s3cret")
    assert "s3cret" not in repr(found) and "s3cret" not in str(found)
    monkeypatch.setenv("TRAINER_REGISTRY_USERNAME", "u")
    with pytest.raises(RegistryError, match="set both"):
        find_credentials("h:5000")
    monkeypatch.setenv("TRAINER_REGISTRY_PASSWORD", "p")
    assert find_credentials("h:5000").username == "u"


def test_credential_helper_and_own_login(tmp_path, monkeypatch):
    monkeypatch.delenv("TRAINER_REGISTRY_USERNAME", raising=False)
    monkeypatch.delenv("TRAINER_REGISTRY_PASSWORD", raising=False)
    helper = tmp_path / "bin" / "docker-credential-test"
    helper.parent.mkdir()
    helper.write_text('#!/bin/sh\nread host\n[ "$host" = "h:1" ] || { echo "credentials not found"; exit 1; }\n'
                      'echo \'{"Username": "hu", "Secret": "hs"}\'\n')
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.setenv("TRAINER_HOME", str(tmp_path / "home"))
    (tmp_path / "config.json").write_text(json.dumps({"credHelpers": {"h:1": "test"}}))
    assert find_credentials("h:1").secret == "hs"
    own = tmp_path / "home" / "registry" / "config.json"
    write_login(own, "h:2", "trainer", "pw")
    assert stat.S_IMODE(own.stat().st_mode) == 0o600
    assert find_credentials("h:2").secret == "pw"
