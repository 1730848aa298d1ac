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
                    records.append({**json.loads(value), "in_registry": None})
                except ValueError:
                    continue
    records.sort(key=lambda r: (str(r.get("at", "")), int(r.get("version", 0)), r.get("seq", 0)))
    if check_registry:
        _check_registry(mlc, model, versions, records)
    return records


def _check_registry(mlc, model: str, versions, records: list[dict]) -> None:
    from trainer.registry.artifacts import read_records
    from trainer.errors import RegistryError
    from trainer.registry.client import Registry

    address = next((mv.tags[TAG_REGISTRY] for mv in versions if mv.tags.get(TAG_REGISTRY)), None)
    if address is None:
        return
    seen: dict[tuple, list] = {}
    try:
        reg = Registry(address)
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


def _quoted(value: str) -> str:
    return value.replace("'", "\\'")
