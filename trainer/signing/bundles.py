"""Edge bundles carry their signature: `manifest.sig` beside `manifest.json` (which holds every
file's sha256), an ECDSA P-256/SHA-256 signature the device's runner checks with the board's
OpenSSL before it loads any model file (converters/edge/runner.py `--public-key`)."""
from __future__ import annotations

import base64
import json
from pathlib import Path

from converters.edge import runner
from trainer.signing import keys


def bundle_folders(root: Path) -> list[Path]:
    """Every edge bundle under `root` (a folder whose manifest.json says the bundle format)."""
    found = []
    for manifest in sorted(root.rglob("manifest.json")):
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("format") == runner.FORMAT and not manifest.is_symlink():
            found.append(manifest.parent)
    return found


def sign_bundle(bundle: Path, private) -> str:
    """Write `manifest.sig` into `bundle`; returns the key id."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    pub = keys.public_of(private)
    sig = private.sign((bundle / "manifest.json").read_bytes(), ec.ECDSA(hashes.SHA256()))
    (bundle / runner.SIGNATURE_FILE).write_text(json.dumps(
        {"keyid": pub.key_id, "alg": runner.SIGNATURE_ALG, "sig": base64.b64encode(sig).decode()}, indent=1))
    return pub.key_id


def sign_bundles(root: Path, key_file: Path) -> list[Path]:
    """Sign every edge bundle under `root` with the key in `key_file`; returns the bundles."""
    private = keys.load_private(key_file)
    bundles = bundle_folders(root)
    for bundle in bundles:
        sign_bundle(bundle, private)
    return bundles
