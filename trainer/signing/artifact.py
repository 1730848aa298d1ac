"""Signing a registered ModelPack artifact, and verifying one.

At registration the artifact's folder is signed with OpenSSF model signing (key mode: a
Sigstore bundle over every file's sha256), and two DSSE envelopes are made: the SLSA provenance
(subject: the manifest's digest) and the CycloneDX ML-BOM. All three are pushed as referrers of
the artifact's manifest (the referrers API, or the tag-schema fallback index):

    application/vnd.dev.sigstore.bundle.v0.3+json   the model signature (Sigstore bundle)
    application/vnd.in-toto+json                    the provenance (layer: a DSSE envelope)
    application/vnd.cyclonedx+json                  the ML-BOM (layer: a DSSE envelope)

Verification reads only the registry and the trusted keys (offline): the signature is checked
against the keys the environment trusts; every layer's bytes are downloaded and hashed and
compared with the signed file digests (a blob changed in the registry's storage, a layer
swapped in a new manifest, a file added or removed: each is one failure naming the file); the
provenance must be signed by a trusted key and name this manifest's digest. Each failure is one
line; nothing stops at the first.
"""
from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from trainer.errors import RegistryError, VerifyError
from trainer.signing import attest, keys, libraries

log = logging.getLogger(__name__)

SIGNATURE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PROVENANCE = "application/vnd.in-toto+json"
BOM = "application/vnd.cyclonedx+json"
DSSE = "application/vnd.dsse.envelope.v1+json"
TYPES = (SIGNATURE, PROVENANCE, BOM)
MAX_FILES = 10_000


def _hashing():
    from model_signing import hashing

    # Plain sha256 per file (the same digest as the OCI layer's), nothing ignored: every file
    # the artifact holds is signed.
    return hashing.Config().use_file_serialization(hashing_algorithm="sha256").set_ignored_paths(
        paths=[], ignore_git_paths=False)


def sign_folder(root: Path, key_file: Path) -> bytes:
    """The Sigstore bundle (JSON bytes) signing every file under `root`."""
    from model_signing import signing

    with tempfile.TemporaryDirectory(prefix="trainer-sign-") as tmp:
        out = Path(tmp) / "model.sig"
        signing.Config().use_elliptic_key_signer(private_key=key_file).set_hashing_config(_hashing()).sign(root, out)
        return out.read_bytes()


def attest_artifact(reg, repo: str, root: Path, manifest, facts: dict) -> dict:
    """Sign the pushed artifact (`root` holds its files, `manifest` is what was pushed) and push
    the signature, provenance and ML-BOM as its referrers; returns their digests.
    `facts`: model, version, run_id, job_id, spec_sha256, lock_sha256, git_commit, data_sha256,
    parity, metrics, frameworks."""
    from trainer.registry.artifacts import attach_referrers, push_referrer

    libraries.require("signing the artifact")
    created = manifest.json.get("annotations", {}).get("org.opencontainers.image.created", "")
    with tempfile.TemporaryDirectory(prefix="trainer-key-") as tmp:
        key_file = keys.private_key_file(Path(tmp))
        private = keys.load_private(key_file)
        bundle = sign_folder(root, key_file)
        bom = attest.ml_bom(model=facts["model"], version=facts["version"], digest=manifest.digest,
                            data_sha256=facts.get("data_sha256"), frameworks=facts.get("frameworks") or {})
        statement = attest.provenance(
            subject_name=f"{reg.host}/{repo}", digest=manifest.digest, model=facts["model"], version=facts["version"],
            run_id=facts["run_id"], job_id=facts.get("job_id"), spec_sha256=facts.get("spec_sha256"),
            lock_sha256=facts.get("lock_sha256"), git_commit=facts.get("git_commit"),
            data_sha256=facts.get("data_sha256"), parity=facts.get("parity") or "none",
            metrics=facts.get("metrics") or {}, bom_sha256=attest.sha256_hex(bom), started=created or None)
        prov_env = attest.sign_envelope(json.dumps(statement, sort_keys=True).encode(), attest.PAYLOAD_TYPE, private)
        bom_env = attest.sign_envelope(bom, attest.BOM_PAYLOAD_TYPE, private)
        signer = keys.public_of(private).key_id
    descriptors = [
        push_referrer(reg, repo, manifest, SIGNATURE, SIGNATURE, bundle, created),
        push_referrer(reg, repo, manifest, PROVENANCE, DSSE, json.dumps(prov_env, sort_keys=True).encode(), created),
        push_referrer(reg, repo, manifest, BOM, DSSE, json.dumps(bom_env, sort_keys=True).encode(), created),
    ]
    attach_referrers(reg, repo, manifest.digest, descriptors)
    return {"signed_by": signer, "signature": descriptors[0]["digest"], "provenance": descriptors[1]["digest"],
            "bom": descriptors[2]["digest"]}


def copy_attestations(reg, src_repo: str, digest: str, dst_repo: str) -> list[dict]:
    """The signature, provenance and BOM referrers of `digest` copied into `dst_repo` (same
    digests, untagged); returns their descriptors for the target's referrers index."""
    from trainer.registry.artifacts import copy

    found, _ = reg.referrers(src_repo, digest)
    copied = []
    for d in found:
        if d.get("artifactType") in TYPES:
            copy(reg, src_repo, d["digest"], dst_repo, None)
            copied.append(d)
    return copied


@dataclass
class Verdict:
    reference: str
    digest: str
    env: str
    failures: list[str] = field(default_factory=list)
    signed_by: str | None = None
    files: int = 0
    evidence: dict | None = None
    provenance: dict | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {"reference": self.reference, "digest": self.digest, "env": self.env, "ok": self.ok,
                "failures": self.failures, "signed_by": self.signed_by, "files": self.files,
                "evidence": self.evidence}

    def raise_for_failures(self, doing: str = "") -> None:
        if self.failures:
            head = f"{self.reference} ({self.digest[:19]}) does not verify for {self.env}"
            raise VerifyError(f"{head}{doing}: " + "; ".join(self.failures))


def verify_artifact(reg, repo: str, ref: str, env: str, *, expect_digest: str | None = None,
                    expect_version: str | None = None, trusted: list | None = None) -> Verdict:
    """Every check of the module docstring on `repo:ref`, against the keys `env` trusts."""
    from trainer.registry.artifacts import layer_paths, referrer_blob

    libraries.require("verifying the artifact")
    trusted = keys.trusted(env) if trusted is None else trusted
    where = f"{reg.host}/{repo}:{ref}" if not ref.startswith("sha256:") else f"{reg.host}/{repo}@{ref}"
    manifest = reg.get_manifest(repo, ref)
    verdict = Verdict(where, manifest.digest, env)
    if not trusted:
        verdict.failures.append(f"no key is trusted for {env} (trainer keys init, or trainer keys trust FILE "
                                f"--env {env})")
    if expect_digest and manifest.digest != expect_digest:
        verdict.failures.append(f"the tag points at {manifest.digest}, but MLflow recorded {expect_digest} "
                                f"for this version (retagged)")
    found, _ = reg.referrers(repo, manifest.digest)
    by_type: dict[str, list[dict]] = {}
    for d in found:
        by_type.setdefault(d.get("artifactType"), []).append(d)

    signed = _signed_files(reg, repo, by_type.get(SIGNATURE, []), trusted, verdict)
    layers = layer_paths(manifest, where)
    verdict.files = len(layers)
    if signed is not None:
        actual = {}
        for rel, layer in layers:
            try:
                actual[rel] = _hash_blob(reg, repo, layer)
            except RegistryError:
                verdict.failures.append(f"file {rel}: the registry's bytes are not its layer "
                                        f"{layer.get('digest', '?')[:19]} (a blob changed in storage)")
                actual[rel] = None
        for rel in sorted(set(actual) | set(signed)):
            if rel not in signed:
                verdict.failures.append(f"file {rel}: not in the signed manifest (added)")
            elif rel not in actual:
                verdict.failures.append(f"file {rel}: signed but missing from the artifact")
            elif actual[rel] is not None and actual[rel] != signed[rel]:
                verdict.failures.append(f"file {rel}: sha256 {actual[rel][:12]}, the signature says "
                                        f"{signed[rel][:12]}")
    _check_provenance(reg, repo, by_type.get(PROVENANCE, []), trusted, verdict, expect_version, referrer_blob)
    return verdict


def _signed_files(reg, repo, descriptors, trusted, verdict) -> dict[str, str] | None:
    """{path: sha256 hex} of the first signature a trusted key made; None (and a failure) when none."""
    from model_signing._signing import sign_ec_key, sign_sigstore_pb

    from trainer.registry.artifacts import referrer_blob

    if not descriptors:
        verdict.failures.append("no signature: the artifact has no model-signing referrer")
        return None
    hints = []
    with tempfile.TemporaryDirectory(prefix="trainer-verify-") as tmp:
        for i, d in enumerate(descriptors):
            blob = referrer_blob(reg, repo, d, SIGNATURE)
            if blob is None:
                continue
            sig_path = Path(tmp) / f"sig{i}.json"
            sig_path.write_bytes(blob)
            try:
                signature = sign_sigstore_pb.Signature.read(sig_path)
                hints.append(signature.bundle.verification_material.public_key.hint or "?")
            except (ValueError, KeyError, TypeError) as e:
                log.info("unreadable signature %s: %s", d.get("digest"), e)
                continue
            for pub in trusted:
                pem = Path(tmp) / f"{pub.key_id}.pub"
                pem.write_bytes(pub.pem)
                try:
                    signed = sign_ec_key.Verifier(pem).verify(signature)
                except ValueError as e:
                    log.info("signature %s does not verify with key %s: %s", d.get("digest"), pub.key_id[:16], e)
                    continue
                verdict.signed_by = pub.key_id
                return {rd.identifier: rd.digest.digest_hex for rd in signed.resource_descriptors()}
    shown = ", ".join(h[:16] for h in hints) or "unreadable"
    verdict.failures.append(f"signature: not made by a key {verdict.env} trusts (signed by {shown})")
    return None


def _check_provenance(reg, repo, descriptors, trusted, verdict, expect_version, referrer_blob) -> None:
    if not descriptors:
        verdict.failures.append("no provenance: the artifact has no in-toto referrer")
        return
    problems = []
    for d in descriptors:
        blob = referrer_blob(reg, repo, d, DSSE)
        try:
            envelope = json.loads(blob or b"")
            statement, _ = attest.statement_of(envelope, trusted, "provenance")
        except (ValueError, VerifyError) as e:
            problems.append(str(e) if isinstance(e, VerifyError) else "provenance: not JSON")
            continue
        subjects = attest.subject_digests(statement)
        if verdict.digest not in subjects:
            problems.append(f"provenance names {', '.join(sorted(s[:19] for s in subjects)) or 'no digest'}, "
                            f"not this artifact's {verdict.digest[:19]} (provenance of another artifact)")
            continue
        params = ((statement.get("predicate") or {}).get("buildDefinition") or {}).get("externalParameters") or {}
        if expect_version is not None and str(params.get("version")) != str(expect_version):
            problems.append(f"provenance is for version {params.get('version')}, not {expect_version}")
            continue
        verdict.provenance = statement
        verdict.evidence = attest.evidence(statement)
        return
    verdict.failures.extend(problems)


def _hash_blob(reg, repo: str, layer: dict) -> str:
    h = hashlib.sha256()
    reg.download_blob(repo, layer["digest"], int(layer["size"]), h.update)
    return h.hexdigest()
