"""What is attested about an artifact, and the envelope that signs it.

- The provenance: an in-toto Statement (v1) with a SLSA provenance (v1) predicate whose
  subject is the artifact's manifest digest: the builder is the job (run id, job id), the
  build definition names the spec's and the runtime lock's sha256, the git commit and the
  data's sha256; `internalParameters.evidence` freezes what the promotion gates read (the
  parity verdict and the final value of every metric) at registration.
- The ML-BOM: CycloneDX 1.6 JSON (cyclonedx-python-lib): the model (a machine-learning-model
  component named by its digest), the data set, the frameworks with their versions.
- Both are signed as DSSE envelopes (securesystemslib) with the signing key, keyid = the key's
  id (trainer.signing.keys); the provenance names the BOM's sha256 among its byproducts.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import json

from trainer.errors import VerifyError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://github.com/trainer/trainer/job/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
BOM_PAYLOAD_TYPE = "application/vnd.cyclonedx+json"


def provenance(*, subject_name: str, digest: str, model: str, version: str, run_id: str, job_id: str | None,
               spec_sha256: str | None, lock_sha256: str | None, git_commit: str | None,
               data_sha256: str | None, parity: str, metrics: dict[str, float], bom_sha256: str | None,
               started: str | None = None) -> dict:
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
    from in_toto_attestation.v1.statement import Statement
    from google.protobuf import json_format

    deps = []
    if data_sha256:
        deps.append(ResourceDescriptor(name="training-data", digest={"sha256": data_sha256}).pb)
    if git_commit:
        deps.append(ResourceDescriptor(name="source", digest={"gitCommit": git_commit}).pb)
    predicate = {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {"model": model, "version": version, "spec_sha256": spec_sha256},
            "internalParameters": {"lock_sha256": lock_sha256,
                                   "evidence": {"parity": parity, "metrics": metrics}},
            "resolvedDependencies": [json_format.MessageToDict(d) for d in deps],
        },
        "runDetails": {
            "builder": {"id": f"trainer-job://{job_id or 'local'}"},
            "metadata": {"invocationId": run_id, **({"startedOn": started} if started else {})},
            "byproducts": ([{"name": "ml-bom", "mediaType": BOM_PAYLOAD_TYPE, "digest": {"sha256": bom_sha256}}]
                           if bom_sha256 else []),
        },
    }
    subject = ResourceDescriptor(name=subject_name, digest={"sha256": digest.removeprefix("sha256:")})
    statement = Statement([subject.pb], SLSA_PROVENANCE, predicate)
    statement.validate()
    return json_format.MessageToDict(statement.pb)


def ml_bom(*, model: str, version: str, digest: str | None, data_sha256: str | None,
           frameworks: dict[str, str]) -> bytes:
    """The CycloneDX ML-BOM (JSON bytes) of one model version."""
    from cyclonedx.model import HashAlgorithm, HashType
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6

    bom = Bom()
    hashes = [HashType(alg=HashAlgorithm.SHA_256, content=digest.removeprefix("sha256:"))] if digest else []
    root = Component(name=model, version=str(version), type=ComponentType.MACHINE_LEARNING_MODEL,
                     bom_ref=f"model:{model}@{version}", hashes=hashes)
    bom.metadata.component = root
    if data_sha256:
        bom.components.add(Component(name="training-data", type=ComponentType.DATA, bom_ref="data",
                                     hashes=[HashType(alg=HashAlgorithm.SHA_256, content=data_sha256)]))
    for name, ver in sorted(frameworks.items()):
        bom.components.add(Component(name=name, version=ver, type=ComponentType.FRAMEWORK, bom_ref=f"fw:{name}"))
    bom.register_dependency(root, list(bom.components))
    return JsonV1Dot6(bom).output_as_string(indent=None).encode()


# ---------------------------------------------------------------- DSSE

def sign_envelope(payload: bytes, payload_type: str, private) -> dict:
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import CryptoSigner, SSlibKey

    from trainer.signing.keys import public_of

    pub = public_of(private)
    signer = CryptoSigner(private, SSlibKey.from_crypto(private.public_key(), keyid=pub.key_id))
    envelope = Envelope(payload=payload, payload_type=payload_type, signatures={})
    envelope.sign(signer)
    return envelope.to_dict()


def verify_envelope(envelope: dict, trusted: list, what: str) -> tuple[bytes, str]:
    """The payload of a DSSE envelope signed by one of `trusted` (PublicKey), and that key's id;
    VerifyError naming `what` otherwise."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import VerificationError
    from securesystemslib.signer import SSlibKey

    try:
        env = Envelope.from_dict(copy.deepcopy(envelope))     # from_dict empties the dicts it reads
    except (KeyError, TypeError, ValueError, AttributeError):
        raise VerifyError(f"{what}: not a DSSE envelope") from None
    if not trusted:
        raise VerifyError(f"{what}: no trusted key to check its signature with (trainer keys trust)")
    keys = [SSlibKey.from_crypto(k.crypto(), keyid=k.key_id) for k in trusted]
    try:
        accepted = env.verify(keys, 1)
    except VerificationError:
        ids = ", ".join(s.keyid[:16] for s in env.signatures.values()) or "none"
        raise VerifyError(f"{what}: not signed by a trusted key (signed by {ids})") from None
    return env.payload, next(iter(accepted))


def statement_of(envelope: dict, trusted: list, what: str) -> tuple[dict, str]:
    payload, key = verify_envelope(envelope, trusted, what)
    try:
        statement = json.loads(payload)
    except ValueError:
        raise VerifyError(f"{what}: the signed payload is not JSON") from None
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise VerifyError(f"{what}: the signed payload is not an in-toto Statement v1")
    return statement, key


def subject_digests(statement: dict) -> set[str]:
    return {"sha256:" + s["digest"]["sha256"] for s in statement.get("subject") or []
            if isinstance(s, dict) and isinstance(s.get("digest"), dict) and s["digest"].get("sha256")}


def evidence(statement: dict) -> dict:
    """{parity, metrics} frozen in a provenance statement."""
    found = (((statement.get("predicate") or {}).get("buildDefinition") or {}).get("internalParameters") or {})
    ev = found.get("evidence") or {}
    return {"parity": ev.get("parity"), "metrics": dict(ev.get("metrics") or {})}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
