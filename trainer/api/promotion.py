"""Promotion: promote a model version through its gates, its history, retrain on data change."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from trainer.api._common import load_job_spec, say
from trainer.api.jobs import Job, submit
from trainer.spec import JobSpec

def promote(model: str, to: str, version: str | int | None = None, *, approve: bool = False,
            tracking_uri: str | None = None, registry: str | None = None,
            progress: Callable[[str], None] | None = None, dry_run: bool = False) -> dict:
    """Promote a registered model version to staging or production (gates, registry copy, alias:
    one transaction); returns the promotion record (`changed`: False when it was already there).
    `dry_run`: the checks only (not the approval), and whether a promotion would change anything.
    See trainer.promotion.transaction."""
    from trainer.promotion.transaction import promote as _promote

    return _promote(model, to, None if version is None else str(version), approve=approve,
                    tracking_uri=tracking_uri, registry=registry, progress=progress, dry_run=dry_run)


def promotion_history(model: str, tracking_uri: str | None = None) -> list[dict]:
    """Every promotion of `model`, oldest first (who, when, from/to, digests, gate values)."""
    from trainer.promotion.history import history

    return history(model, tracking_uri)


@dataclass
class Retrain:
    decision: object          # trainer.promotion.retrain.Decision
    job: "Job | None"         # the submitted job (finished), None when the data was unchanged


def retrain(spec: str | Path | dict | JobSpec, *, if_data_changed: bool = True, address: str | None = None,
            set: list[str] | None = None, progress: Callable[[str], None] | None = None) -> Retrain:
    """Submit the spec and wait, unless `if_data_changed` and its data digest equals the one on
    the production model version (or the newest run of its experiment)."""
    from trainer.promotion.retrain import Decision, decide
    from trainer.scheduling.preflight import check_spec
    from trainer.tracking import runs

    spec_obj, workdir = load_job_spec(spec, set, {})
    checked = check_spec(spec_obj, workdir)
    current = checked.fingerprint.digest if checked.fingerprint else None
    decision = decide(spec_obj, current, runs.tracking_uri(spec_obj)) if if_data_changed else \
        Decision(True, current, None, "not compared (--if-data-changed not given)")
    say(progress, decision.describe())
    if not decision.changed:
        return Retrain(decision, None)
    by_path = isinstance(spec, (str, Path))
    job = submit(spec if by_path else spec_obj, address=address, set=set if by_path else None, progress=progress)
    job.wait()
    return Retrain(decision, job)
