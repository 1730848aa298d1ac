"""`promote history`: every promotion of a model, oldest first, from the records MLflow keeps as
version tags; with a registry, each record is also looked up among the referrers of the promoted
artifact (`in_registry`), so a record in one store and not the other shows."""
from __future__ import annotations

import json

from trainer.errors import UsageError
from trainer.promotion.registration import TAG_RECORD_PREFIX, TAG_REGISTRY, _mlflow, client, repository


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
                if isinstance(found, dict):
                    records.append({**found, "in_registry": None})
    records.sort(key=lambda r: (str(r.get("at", "")), _number(r.get("version")), _number(r.get("seq"))))
    if check_registry:
        _check_registry(mlc, model, versions, records)
    return records


def _check_registry(mlc, model: str, versions, records: list[dict]) -> None:
    from trainer.registry.artifacts import read_records
    from trainer.registry.auth import RegistryError
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


def _number(value) -> int:
    text = str(value)
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else 0


def _quoted(value: str) -> str:
    return value.replace("'", "\\'")
