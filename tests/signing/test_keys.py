"""Issue 22: `trainer keys init` makes a pair whose private half is 0600 and never printed; CI's
key comes from a file or the environment; each environment trusts its own keys."""
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.errors import UsageError

TRAINER = str(Path(sys.executable).parent / "trainer")


@pytest.fixture
def keys_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINER_KEYS_DIR", str(tmp_path / "keys"))
    for name in ("TRAINER_SIGNING_KEY", "TRAINER_SIGNING_KEY_PEM"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "keys"


def test_keys_init_writes_a_private_key_0600_and_never_prints_it(keys_dir):
    made = subprocess.run([TRAINER, "keys", "init", "-o", "json"], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    private = keys_dir / "signing.key"
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    secret = private.read_text()
    assert "PRIVATE KEY" in secret
    body = secret.splitlines()[1]
    assert body not in made.stdout + made.stderr
    again = subprocess.run([TRAINER, "keys", "init"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "exists already" in again.stderr
    assert private.read_text() == secret
    listed = subprocess.run([TRAINER, "keys", "ls", "-o", "json"], capture_output=True, text=True, timeout=120)
    assert sorted(r["env"] for r in __import__("json").loads(listed.stdout)) == ["dev", "production", "staging"]
    assert body not in listed.stdout


def test_ci_key_from_a_file_or_the_environment_wins_and_trust_is_per_environment(keys_dir, tmp_path, monkeypatch):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from trainer.signing import keys

    with pytest.raises(UsageError, match="no signing key: run `trainer keys init`"):
        keys.private_key_file(tmp_path)
    ci = ec.generate_private_key(ec.SECP256R1())
    pem = ci.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption()).decode()
    monkeypatch.setenv("TRAINER_SIGNING_KEY_PEM", pem)
    path = keys.private_key_file(tmp_path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert keys.public_of(keys.load_private(path)).key_id == keys.public_of(ci).key_id
    public = tmp_path / "ci.pub"
    public.write_bytes(ci.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo))
    keys.trust(public, "staging")
    assert [k.key_id for k in keys.trusted("staging")] == [keys.public_of(ci).key_id]
    assert keys.trusted("production") == []
    with pytest.raises(UsageError, match="--env must be one of dev, staging, production"):
        keys.trusted("prod")
    with pytest.raises(UsageError, match="not a readable PEM public key"):
        keys.trust(tmp_path / "ci.pub.missing", "staging")


def test_a_runtime_without_the_signing_libraries_registers_unsigned_and_says_so(keys_dir, monkeypatch):
    from trainer.signing import keys, libraries, provenance

    keys.init()
    monkeypatch.setattr(libraries, "missing", lambda: ["model_signing"])
    said = []
    assert provenance.run_facts(None, None, "1", None, said.append) is None
    assert said == ["not signed: this runtime lacks model_signing (pip install 'trainer[signing]'); an environment "
                    "that trusts keys will refuse to promote it"]
    with pytest.raises(Exception, match=r"verifying the artifact needs model_signing, not installed here: pip "
                                        r"install 'trainer\[signing\]'") as err:
        libraries.require("verifying the artifact")
    assert err.value.exit_code == 6
