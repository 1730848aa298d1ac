"""`promote history`: every promotion of a model, oldest first, from the records MLflow keeps as
version tags; with a registry, each record is also looked up among the referrers of the promoted
artifact (`in_registry`), so a record in one store and not the other shows; `signatures` says
whether the promoter's signature over the record verifies today against the keys its target
environment trusts ("ok <key>", "unsigned", "BAD: ...")."""
from __future__ import annotations

import json

from trainer.errors import UsageError
from trainer.promotion.registration import TAG_RECORD_PREFIX, TAG_REGISTRY, _mlflow, client, repository
from trainer.signing.records import check_record


def history(model: str, tracking_uri: str | None = None, *, check_registry: bool = True) -> list[dict]:
    from trainer.home import resolve_tracking_uri

    mlc = client(resolve_tracking_uri(tracking_uri))
    with _mlflow(f"cannot read the versions of {model!r} from MLflow"):
        versions = mlc.search_model_versions(f"name = '{_quoted(model)}'")
        if not versions and mlc.search_registered_models(f"name = '{_quoted(model)}'") == []:
            raise UsageError(f"model {model!r} is not in the MLflow registry")
    records = []
    for mv in versions:
        for key, value in mv.tags.items():
            if key.startswith(TAG_RECORD_PREFIX):
                try:
                    found = json.loads(value)
                except ValueError:
                    continue
                record = _record(found)
                if record is not None:
                    record["signatures"] = check_record(found)
                    records.append(record)
    records.sort(key=lambda r: (str(r.get("at", "")), _number(r.get("version")), _number(r.get("seq"))))
    if check_registry:
        _check_registry(mlc, model, versions, records)
    return records


def _check_registry(mlc, model: str, versions, records: list[dict]) -> None:
    from trainer.registry.artifacts import read_records
    from trainer.errors import RegistryError
    from trainer.registry.client import Registry

    from trainer.registry.client import registry_url
    from trainer.registry.serve import configured_address

    address = next((mv.tags[TAG_REGISTRY] for mv in versions if mv.tags.get(TAG_REGISTRY)), None)
    if address is None:
        return
    seen: dict[tuple, list] = {}
    try:
        # The tag is data: only the configured registry is asked (and sent credentials).
        configured, _ = configured_address()
        if configured is None or registry_url(configured) != registry_url(address):
            for r in records:
                r["in_registry"] = "not checked (not the configured registry)" if r.get("digest") else None
            return
        reg = Registry(configured)
        for r in records:
            if not r.get("digest"):
                continue
            where = (repository(r["to"], model), r["digest"])
            if where not in seen:
                seen[where] = read_records(reg, *where)
            r["in_registry"] = any(x.get("at") == r.get("at") and x.get("seq") == r.get("seq") for x in seen[where])
    except RegistryError:
        for r in records:
            r["in_registry"] = "unreachable" if r.get("digest") else None


_TEXT = ("at", "from", "to", "by", "model", "source", "target", "registry", "run_id", "model_id")


def _record(found) -> dict | None:
    """A promotion record read back from a version tag (editable text): the fields the history
    shows, with the types it shows them as and no escape codes; None when it is not a record."""
    from trainer.registry.client import printable

    if not isinstance(found, dict):
        return None
    record = dict(found)
    for key in _TEXT:
        record[key] = printable(record.get(key) or "", 300)
    record["version"] = str(_number(record.get("version")))
    record["digest"] = printable(record["digest"], 80) if isinstance(record.get("digest"), str) else None
    gates = record.get("gates") if isinstance(record.get("gates"), list) else []
    record["gates"] = [{**g, "gate": printable(g.get("gate", "?"), 100),
                        "value": g["value"] if type(g.get("value")) in (int, float) else None}
                       for g in gates if isinstance(g, dict)]
    record["in_registry"] = None
    return record


def _number(value) -> int:
    text = str(value)
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else 0


def _quoted(value: str) -> str:
    return value.replace("'", "\\'")
