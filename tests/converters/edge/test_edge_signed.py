"""Issue 22: a bundle carries its signature (manifest.sig over manifest.json, which holds every
file's sha256) and the runner checks it with the given public keys, through the machine's own
OpenSSL, before it loads any model file: on this host (run.py as a board starts it) and on the
emulated aarch64 board (the arm64 root's libcrypto), where `trainer edge run` refuses too."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converters.edge import runner
from converters.edge.bundle import write_bundle

TRAINER = str(Path(sys.executable).parent / "trainer")


def _key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    return key


def _signed(tmp_path: Path, tiny_model: Path, tiny_input, key) -> Path:
    from trainer.signing.bundles import sign_bundle

    bundle = write_bundle(tmp_path / "b", {"fp32": tiny_model}, [tiny_input])
    sign_bundle(bundle, key)
    np.save(tmp_path / "x.npy", np.ones((2, 4), np.float32))
    return bundle


def _reseal(bundle: Path) -> None:
    """What someone who can write the bundle but holds no trusted key does: change the model and
    rewrite its checksum in manifest.json (the old signature stays)."""
    data = (bundle / "fp32.onnx").read_bytes()[:-1] + b"\x00"
    (bundle / "fp32.onnx").write_bytes(data)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["fp32.onnx"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _run_py(bundle: Path, tmp_path: Path, *keys: Path) -> subprocess.CompletedProcess:
    args = [a for k in keys for a in ("--public-key", str(k))]
    return subprocess.run([sys.executable, str(bundle / "run.py"), "--input", str(tmp_path / "x.npy"),
                           "--out", str(tmp_path / "out"), *args], capture_output=True, text=True, timeout=120)


def test_run_py_verifies_the_signature_before_loading_any_model(tmp_path, tiny_model, tiny_input):
    trusted = tmp_path / "trusted.pub"
    bundle = _signed(tmp_path, tiny_model, tiny_input, _key(trusted))
    ok = _run_py(bundle, tmp_path, trusted)
    assert ok.returncode == 0, ok.stderr

    stranger = tmp_path / "stranger.pub"
    _key(stranger)
    untrusted = _run_py(bundle, tmp_path, stranger)
    assert untrusted.returncode == 3 and "untrusted bundle" in untrusted.stderr, untrusted.stderr

    _reseal(bundle)
    resealed = _run_py(bundle, tmp_path, trusted)
    assert resealed.returncode == 3 and "untrusted bundle" in resealed.stderr, resealed.stderr

    (bundle / runner.SIGNATURE_FILE).unlink()
    unsigned = _run_py(bundle, tmp_path, trusted)
    assert unsigned.returncode == 3 and "unsigned bundle" in unsigned.stderr, unsigned.stderr


@pytest.mark.edge
def test_the_aarch64_runner_and_trainer_edge_run_refuse_a_resealed_bundle(tmp_path, edge_root, qemu, tiny_model,
                                                                          tiny_input):
    from converters.edge.setup import python_command

    trusted = tmp_path / "trusted.pub"
    bundle = _signed(tmp_path, tiny_model, tiny_input, _key(trusted))
    argv, env = python_command(edge_root, "cortex-a72", qemu)
    cmd = [*argv, str(Path(runner.__file__).resolve()), "--bundle", str(bundle), "--input", str(tmp_path / "x.npy"),
           "--out", str(tmp_path / "out"), "--public-key", str(trusted)]
    ok = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "out" / "result.json").read_text())["machine"] == "aarch64"

    _reseal(bundle)
    refused = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 3 and "untrusted bundle" in refused.stderr, refused.stderr

    cli = subprocess.run([TRAINER, "edge", "run", str(bundle), "--inputs", str(tmp_path / "x.npy"),
                          "--public-key", str(trusted)], capture_output=True, text=True, timeout=600)
    assert cli.returncode == 7 and "untrusted bundle" in cli.stderr, cli.stderr
