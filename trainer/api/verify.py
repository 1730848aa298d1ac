"""Signing keys and `trainer verify`: is this artifact what a trusted key signed, file by file,
and does its provenance name it? See trainer.signing (what is signed, by whom, how)."""
from __future__ import annotations

import re
from pathlib import Path

from trainer.errors import UsageError

# model@version (digits) or model@alias: an MLflow registered version; anything with a '/' is a
# registry reference ([host/]project/name:tag or @sha256:...).
_MODEL_AT = re.compile(r"(?P<model>[^/@\s]{1,200})@(?P<which>[A-Za-z0-9_-]{1,64})")
_PROJECT_ENV = {"dev": "dev", "staging": "staging", "prod": "production"}


def keys_init(force: bool = False) -> dict:
    """Make this machine's signing key pair under $TRAINER_HOME/keys (private key 0600, never
    printed) and trust its public key in every environment."""
    from trainer.signing import keys

    return keys.init(force=force)


def keys_trust(public_key: str | Path, env: str) -> dict:
    """Trust a public key (PEM) in `env` (dev, staging, production)."""
    from trainer.signing import keys

    pub = keys.trust(Path(public_key), env)
    return {"env": env, "key_id": pub.key_id[:16], "file": str(public_key)}


def keys_untrust(key_id: str, env: str) -> list[str]:
    from trainer.signing import keys

    if len(key_id) < 8:
        raise UsageError(f"give at least 8 characters of the key id, got {key_id!r}")
    return keys.untrust(key_id, env)


def keys_list() -> list[dict]:
    """Every trusted key: {env, key_id, file}."""
    from trainer.signing import keys

    return keys.listing()


def verify(target: str, *, env: str | None = None, registry: str | None = None,
           tracking_uri: str | None = None) -> dict:
    """Verify `target` (`model@version`, `model@alias`, or a registry reference) against the keys
    `env` trusts (default: the environment of the reference's project, dev for a version);
    returns the verdict ({ok, failures, digest, signed_by, files, evidence}) without raising."""
    from trainer.registry.client import Reference, Registry
    from trainer.signing.artifact import verify_artifact

    at = _MODEL_AT.fullmatch(target)
    if at and "/" not in target:
        where = _version_artifact(at["model"], at["which"], env or "dev", registry, tracking_uri)
        reg = Registry(where["address"])
        verdict = verify_artifact(reg, where["repo"], where["tag"], env or "dev", expect_digest=where["digest"],
                                  expect_version=where["version"])
        return verdict.to_dict()
    from trainer.api.registry import _registry_for

    reg, parsed = _registry_for(target, registry)
    if not parsed.reference:
        raise UsageError(f"{target}: give a tag or digest to verify (project/name:tag)")
    project = parsed.repository.split("/", 1)[0]
    trust_env = env or _PROJECT_ENV.get(project)
    if trust_env is None:
        raise UsageError(f"{target}: project {project!r} is no environment's; say which keys to trust with --env")
    version = None
    tag = parsed.reference.removeprefix("v")
    if tag.isascii() and tag.isdigit():
        version = tag
    verdict = verify_artifact(reg, parsed.repository, parsed.reference, trust_env, expect_version=version)
    return verdict.to_dict()


def _version_artifact(model: str, which: str, env: str, registry: str | None, tracking_uri: str | None) -> dict:
    from trainer.home import resolve_tracking_uri
    from trainer.promotion.registration import (TAG_REGISTRY, _mlflow, client, repository, tag_digest,
                                                version_tag)
    from trainer.promotion.transaction import _checked_address, _version

    mlc = client(resolve_tracking_uri(tracking_uri))
    with _mlflow(f"cannot read model {model!r} from the MLflow registry"):
        mv = _version(mlc, model, which if which.isdigit() else None, which)
    digest = (mv.tags or {}).get(tag_digest(env))
    if not digest:
        raise UsageError(f"{model} version {mv.version} has no {env} artifact in a registry (tag {tag_digest(env)})")
    address = _checked_address(model, str(mv.version), registry, mv.tags.get(TAG_REGISTRY))
    return {"address": address, "repo": repository(env, model), "tag": version_tag(mv.version), "digest": digest,
            "version": str(mv.version)}
