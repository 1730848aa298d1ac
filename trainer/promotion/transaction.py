"""One promotion: dev -> staging -> production, as a transaction over MLflow and the registry.

1. Checks, changing nothing: the environment order (production only from the version in
   staging, and only with `approve`); where the target environment trusts signing keys, the
   artifact verified (trainer.signing.artifact: signature, every file's bytes, provenance for
   this digest; VerifyError, exit 13); the version's gates for the target against the evidence
   its signed provenance froze (its run's metrics when nothing is verified). A failed check
   raises; nothing was touched.
2. Staging, invisible to users: the artifact's blobs mounted into the target project, its
   manifest PUT by digest (untagged, the same bytes, so the same digest), its signature,
   provenance and ML-BOM copied beside it, the promotion record (signed by the promoter's key
   when there is one) pushed as a referrer of it (untagged).
3. Commit: the registry's referrers index tag (tag-schema fallback) and the version tag
   `v<N>` in the target project, then MLflow: the record as a version tag, the target digest,
   and the alias last.
4. A failure in 3 undoes what 3 did (tags put back to their previous digests or removed, the
   alias put back) and raises; what 2 left is untagged and invisible, and a retry reuses it.

The returned record says `changed`: a promotion of the version the environment already holds is a
no-op (`changed: False`, nothing read beyond the aliases, nothing written), so a pipeline run twice
succeeds twice; only a failed check (GateError, exit 10) stops it.

Records are append-only: a new `trainer.promotion.<NNNN>` version tag per promotion (a key is
never rewritten) and a new referrer per promotion in the registry (an index only gains entries).

Promotions of one model serialize (trainer.promotion.lock): the whole transaction, from reading
the aliases to moving one, holds the model's lock, so the record number (the highest one + 1),
the referrers index (read, extended, written back) and the "already there" check see every
earlier promotion. The registry address recorded on the version (`trainer.registry`, data anyone
with MLflow access can edit) must be the configured registry (--registry, $TRAINER_REGISTRY, the
running `trainer registry serve`) before anything is sent to it.
"""
from __future__ import annotations

import getpass
import json
import os
import re
import socket
import time
from typing import Callable

from trainer.errors import GateError, TrainerError, UsageError, VerifyError
from trainer.promotion.gates import evaluate, gates_from_tag
from trainer.promotion.lock import promotion_lock
from trainer.promotion.registration import (PROJECTS, TAG_DATA, TAG_GATES, TAG_PARITY, TAG_RECORD_PREFIX, TAG_REGISTRY,
                                            _mlflow, client, repository, tag_digest, tag_ref, version_tag)

# Where each environment is promoted from.
SOURCE = {"staging": "dev", "production": "staging"}
MAX_TAG_VALUE = 5000      # MLflow's limit on a model version tag's value
_VERSION = re.compile(r"[0-9]{1,18}")      # ASCII digits: str.isdigit() also takes '١' and '²'


def promoter() -> str:
    """Who promotes: $TRAINER_PROMOTED_BY, else Jenkins' BUILD_USER_ID / BUILD_TAG, else user@host."""
    for name in ("TRAINER_PROMOTED_BY", "BUILD_USER_ID", "BUILD_TAG"):
        if os.environ.get(name):
            return os.environ[name][:200]
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in a container
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def promote(model: str, to: str, version: str | None = None, *, approve: bool = False,
            tracking_uri: str | None = None, registry: str | None = None,
            progress: Callable[[str], None] | None = None, dry_run: bool = False,
            _fail_after: str | None = None) -> dict:
    """Promote `model` (version, default the one in the source environment) to `to`; returns the
    record, with `changed`. `dry_run`: every check but the approval, nothing written; `changed`
    says whether the promotion would change anything (a pipeline asks before its approval step)."""
    from trainer.home import resolve_tracking_uri

    say = progress or (lambda _: None)
    if to not in SOURCE:
        raise UsageError(f"--to must be staging or production, got {str(to)[:40]!r}")
    if version is not None and not _VERSION.fullmatch(str(version)):
        raise UsageError(f"--version must be a version number (ASCII digits), got {str(version)[:40]!r}")
    if registry is not None:
        from trainer.registry.client import registry_url

        registry_url(registry)          # a malformed --registry fails here, before MLflow is read
    uri = resolve_tracking_uri(tracking_uri)
    with promotion_lock(uri, model, say):
        return _promote(model, to, version, approve, uri, registry, say, _fail_after, dry_run)


def _promote(model: str, to: str, version: str | None, approve: bool, uri: str, registry: str | None,
             say: Callable[[str], None], _fail_after: str | None, dry_run: bool = False) -> dict:
    mlc = client(uri)
    source_env = SOURCE[to]
    with _mlflow(f"cannot read model {model!r} from the MLflow registry"):
        mv = _version(mlc, model, version, source_env)
        version = str(mv.version)
        run = mlc.get_run(mv.run_id) if mv.run_id else None
        current = _alias_version(mlc, model, to)
    if current == version:
        # Already there: nothing to do, and not a failure (a pipeline's second run, or the loser
        # of two concurrent promotions of one version: the lock makes it see the winner's alias).
        say(f"{model} version {version} is already in {to}: nothing changed")
        return {"model": model, "version": version, "to": to, "changed": False,
                "digest": mv.tags.get(tag_digest(to)), "target": mv.tags.get(tag_ref(to)),
                "reason": f"{model} version {version} is already in {to}"}
    if to == "production":
        in_staging = _alias_version(mlc, model, "staging")
        if in_staging != version:
            raise GateError(f"{model} version {version} is not in staging (staging holds "
                            f"{'version ' + in_staging if in_staging else 'nothing'}): promote it to staging first")
        if not approve and not dry_run:
            raise GateError(f"promoting {model} version {version} to production needs an explicit approval: --approve")
    verdict = _verify(model, version, source_env, to, registry, mv, say)
    try:
        gates = gates_from_tag(mv.tags.get(TAG_GATES), to)
    except ValueError as e:
        raise GateError(f"{model} version {version}: its {TAG_GATES} tag {e}; nothing was changed") from None
    # The gates read the evidence frozen in the signed provenance when there is one: a later
    # `trainer convert` of the run cannot change what an already registered version is judged by.
    metrics = verdict.evidence["metrics"] if verdict and verdict.evidence else (dict(run.data.metrics) if run else {})
    results = evaluate(gates, metrics)
    failed = [r for r in results if not r.passed]
    if failed:
        raise GateError(f"{model} version {version} fails its {to} gates: "
                        + "; ".join(r.describe() for r in failed) + "; nothing was changed")
    say(f"gates for {to}: " + ("; ".join(r.describe() for r in results) if results else "none set"))
    if dry_run:
        return {"model": model, "version": version, "to": to, "changed": True, "dry_run": True,
                "digest": mv.tags.get(tag_digest(source_env)), "target": None,
                "reason": f"{model} version {version} would be promoted to {to} (its checks pass)"}

    record = {"model": model, "version": version, "from": source_env, "to": to, "by": promoter(),
              "at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() % 10**9 // 10**6:03d}Z",
              "approved": approve, "gates": [r.to_dict() for r in results],
              "model_id": mv.model_id or (mv.source or "").removeprefix("models:/"),
              "run_id": mv.run_id, "data_sha256": mv.tags.get(TAG_DATA), "parity": mv.tags.get(TAG_PARITY),
              "digest": None, "source": None, "target": None, "registry": None}
    if os.environ.get("BUILD_URL"):
        record["build"] = os.environ["BUILD_URL"][:300]
    # Under the model's lock: the highest record number + 1 is nobody else's.
    seq = 1 + max([int(k[len(TAG_RECORD_PREFIX):]) for k in mv.tags
                   if k.startswith(TAG_RECORD_PREFIX) and k[len(TAG_RECORD_PREFIX):].isascii()
                   and k[len(TAG_RECORD_PREFIX):].isdigit()] or [0])
    record["seq"] = seq

    undo: list[Callable[[], None]] = []
    src_digest = mv.tags.get(tag_digest(source_env))
    address = _checked_address(model, version, registry, mv.tags.get(TAG_REGISTRY)) if src_digest else None
    try:
        if src_digest:
            _registry_part(address, model, version, source_env, to, src_digest, record, undo, say, _fail_after)
        else:
            record["registry"] = "none (registered in MLflow only)"
            say(f"{model} version {version} has no registry artifact: promoting in MLflow only")
            _sign_record(record)
        _mlflow_part(mlc, model, version, to, current, record, seq, undo, _fail_after)
    except BaseException as e:
        errors = _undo(undo)
        if errors:
            raise TrainerError(f"promotion failed ({e}) and could not be fully undone: {'; '.join(errors)}; "
                               f"run the same promotion again to finish it") from e
        raise
    say(f"{model} version {version} is in {to}" + (f": {record['target']} ({record['digest'][:19]})"
                                                     if record["digest"] else " (MLflow alias)"))
    return {**record, "changed": True}


def _checked_address(model: str, version: str, registry: str | None, recorded: str | None) -> str:
    """The registry to promote in: the configured one, and only when it is the one MLflow
    recorded for the version (a tag is data: it never chooses where credentials go)."""
    from trainer.registry.client import printable, registry_url
    from trainer.registry.serve import configured_address

    configured, why = configured_address(registry)
    shown = printable(recorded or "", 120)
    if configured is None:
        raise UsageError(f"{model} version {version} is in the registry {shown or '(not recorded)'}, but no "
                         f"registry is configured ({why}): pass --registry {shown or 'HOST'} if you trust it")
    if recorded is None:
        return configured
    try:
        same = registry_url(recorded) == registry_url(configured)
    except TrainerError:
        same = False
    if not same:
        raise GateError(f"{model} version {version} was pushed to {shown!r} ({TAG_REGISTRY} in MLflow), but the "
                        f"configured registry is {printable(configured, 120)} ({why}); nothing was sent or "
                        f"changed (pass --registry to name the registry you trust)")
    return configured


def _version(mlc, model: str, version: str | None, source_env: str):
    from mlflow.exceptions import MlflowException

    try:
        if version is not None:
            return mlc.get_model_version(model, str(version))
        return mlc.get_model_version_by_alias(model, source_env)
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" in str(e.error_code) or "not found" in str(e).lower():
            which = f"no version {version}" if version else f"nothing in {source_env} (alias @{source_env})"
            raise UsageError(f"model {model!r} has {which} in the MLflow registry") from None
        raise


def _alias_version(mlc, model: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(mlc.get_model_version_by_alias(model, alias).version)
    except MlflowException:
        return None


def _registry_part(address, model, version, source_env, to, src_digest, record, undo, say, fail_after) -> None:
    from trainer.registry.artifacts import copy, fallback_index_with, push_record, put_fallback_index
    from trainer.registry.client import Registry, fallback_tag

    reg = Registry(address)
    src_repo, dst_repo, tag = repository(source_env, model), repository(to, model), version_tag(version)
    now = reg.manifest_digest(src_repo, tag)
    if now != src_digest:
        raise GateError(f"{reg.host}/{src_repo}:{tag} is {now or 'missing'}, but MLflow recorded {src_digest} "
                        f"for version {version}: the artifact changed since; nothing was changed")
    record.update(digest=src_digest, source=f"{reg.host}/{src_repo}:{tag}", target=f"{reg.host}/{dst_repo}:{tag}")
    had_tag = reg.manifest_digest(dst_repo, tag)
    had_manifest = reg.manifest_digest(dst_repo, src_digest) is not None
    # 2. staged, untagged
    manifest, how = copy(reg, src_repo, src_digest, dst_repo, None)
    say(f"copied {len(how)} blob(s) to {dst_repo} ({', '.join(sorted(set(how.values())))}), manifest {src_digest[:19]}")
    if fail_after == "copy":
        raise TrainerError("injected failure after the copy")
    attestations = _copy_attestations(reg, src_repo, src_digest, dst_repo)
    _, method = reg.referrers(dst_repo, src_digest)
    record["registry"] = "referrers API" if method == "api" else "referrers tag schema (sha256-<hex> index)"
    _sign_record(record)
    descriptor = push_record(reg, dst_repo, manifest, record)
    # 3. commit: the index (fallback registries), then the version tag
    if method == "tag":
        body, old = fallback_index_with(reg, dst_repo, src_digest, *attestations, descriptor)
        new_index = put_fallback_index(reg, dst_repo, src_digest, body)
        undo.append(lambda: _restore_tag(reg, dst_repo, fallback_tag(src_digest), old, new_index))
    digest = reg.put_manifest(dst_repo, tag, manifest.body, manifest.media_type)
    if digest != src_digest:
        raise TrainerError(f"{dst_repo}:{tag}: the registry stored digest {digest}, not {src_digest}")
    old_tag = reg.get_manifest(dst_repo, had_tag) if had_tag and had_tag != src_digest else None
    undo.append(lambda: _restore_version_tag(reg, dst_repo, tag, old_tag, src_digest, had_manifest))
    if fail_after == "registry":
        raise TrainerError("injected failure after the registry commit")


def _verify(model: str, version: str, source_env: str, to: str, registry: str | None, mv, say):
    """The version's artifact verified against the keys `to` trusts (trainer.signing.artifact),
    before anything is copied: a failure raises VerifyError naming each file or claim. With no key
    trusted for `to`, nothing is verified (said) and None is returned."""
    from trainer.registry.client import Reference, Registry
    from trainer.signing import keys
    from trainer.signing.artifact import verify_artifact

    trusted = keys.trusted(to)
    src_digest = mv.tags.get(tag_digest(source_env))
    if not trusted:
        say(f"not verified: no key is trusted for {to} (trainer keys init)")
        return None
    if not src_digest:
        raise VerifyError(f"{model} version {version} has no registry artifact to verify, and {to} trusts "
                          f"signing keys; nothing was changed")
    address = _checked_address(model, version, registry, mv.tags.get(TAG_REGISTRY))
    reg = Registry(address)
    verdict = verify_artifact(reg, repository(source_env, model), version_tag(version), to,
                              expect_digest=src_digest, expect_version=version, trusted=trusted)
    verdict.raise_for_failures("; nothing was changed")
    say(f"verified {verdict.reference}: {verdict.files} file(s) signed by {verdict.signed_by[:16]}, "
        f"provenance names {verdict.digest[:19]}")
    return verdict


def _copy_attestations(reg, src_repo: str, digest: str, dst_repo: str) -> list[dict]:
    from trainer.signing.artifact import copy_attestations

    return copy_attestations(reg, src_repo, digest, dst_repo)


def _sign_record(record: dict) -> None:
    """The promoter's signature over the record (who, when, gates, digest), when they have a key."""
    from trainer.signing import keys, libraries
    from trainer.signing.records import sign_record

    if keys.has_signing_key() and not libraries.missing():
        sign_record(record)


def _mlflow_part(mlc, model, version, to, current, record, seq, undo, fail_after) -> None:
    key = f"{TAG_RECORD_PREFIX}{seq:04d}"
    value = json.dumps(record, sort_keys=True, separators=(",", ":"))
    if len(value) > MAX_TAG_VALUE:     # gates of a huge spec: keep the verdicts, drop the detail
        slim = {**record, "gates": [{k: g[k] for k in ("gate", "value", "passed")} for g in record["gates"]]}
        value = json.dumps(slim, sort_keys=True, separators=(",", ":"))[:MAX_TAG_VALUE]
    with _mlflow(f"cannot record the promotion of {model} version {version} in MLflow"):
        undo.append(lambda: mlc.delete_model_version_tag(model, version, key))
        mlc.set_model_version_tag(model, version, key, value)
        if record["digest"]:
            for tkey, tval in ((tag_digest(to), record["digest"]), (tag_ref(to), record["target"])):
                undo.append(lambda k=tkey: mlc.delete_model_version_tag(model, version, k))
                mlc.set_model_version_tag(model, version, tkey, tval)
        if fail_after == "mlflow":
            raise TrainerError("injected failure before the alias moved")
        mlc.set_registered_model_alias(model, to, version)


def _restore_tag(reg, repo, tag, old, new_digest) -> None:
    if old is not None:
        reg.put_manifest(repo, tag, old.body, old.media_type)
    else:
        reg.delete_manifest(repo, new_digest)


def _restore_version_tag(reg, repo, tag, old_manifest, digest, had_manifest) -> None:
    if old_manifest is not None:
        reg.put_manifest(repo, tag, old_manifest.body, old_manifest.media_type)
    elif not had_manifest:
        reg.delete_manifest(repo, digest)     # the tag with it: nothing of this promotion stays tagged


def _undo(steps: list[Callable[[], None]]) -> list[str]:
    from trainer.errors import first_line

    errors = []
    for step in reversed(steps):
        try:
            step()
        except Exception as e:  # noqa: BLE001 - undo the rest, report all
            errors.append(first_line(e))
    return errors


__all__ = ["GateError", "promote", "PROJECTS"]
