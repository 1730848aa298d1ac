"""The promoter's signature over a promotion record: a DSSE signature (keyid + sig) over the
record's canonical JSON without its `signature` field, kept in the record itself (the MLflow
version tag and the registry referrer hold the same bytes)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from trainer.errors import VerifyError
from trainer.signing import attest, keys, libraries

PAYLOAD_TYPE = "application/vnd.trainer.promotion.v1+json"


def _payload(record: dict) -> bytes:
    return json.dumps({k: v for k, v in record.items() if k != "signature"}, sort_keys=True,
                      separators=(",", ":")).encode()


def sign_record(record: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="trainer-key-") as tmp:
        private = keys.load_private(keys.private_key_file(Path(tmp)))
    envelope = attest.sign_envelope(_payload(record), PAYLOAD_TYPE, private)
    record["signature"] = envelope["signatures"][0]


def check_record(record: dict) -> str:
    """Whether the record's signature verifies today against the keys its target environment
    trusts: "ok <key id>", "unsigned", or "BAD: <why>"."""
    sig = record.get("signature")
    if not isinstance(sig, dict):
        return "unsigned"
    if libraries.missing():
        return f"not checked ({libraries.INSTALL})"
    env = record.get("to") if record.get("to") in keys.ENVIRONMENTS else "production"
    trusted = keys.trusted(env)
    if not trusted:
        return f"not checked (no key trusted for {env})"
    envelope = {"payload": attest.b64(_payload(record)), "payloadType": PAYLOAD_TYPE, "signatures": [sig]}
    try:
        _, key = attest.verify_envelope(envelope, trusted, "record")
    except VerifyError as e:
        return "BAD: " + str(e).removeprefix("record: ")
    return f"ok {key[:12]}"
