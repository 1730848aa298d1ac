"""`retrain --if-data-changed`: decide from content digests, not from SCM changesets (a branch's
first build in Jenkins has an empty changeset; a data folder outside git has none at all).

The spec's data digest now (the same sha256 `trainer submit` records as the run's dataset) is
compared with the one recorded on the `production` model version of `register.model`. A spec that
registers a model and has no production version yet: changed, and the decision says so (any other
run of the experiment, a notebook's or a branch build's, says nothing about what production was
trained on). A spec with no `register:` section: the newest finished run of its experiment that
recorded a digest. Nothing recorded yet: changed.
"""
from __future__ import annotations

from dataclasses import dataclass

from trainer.promotion.registration import TAG_DATA, _mlflow, client, run_data_digest
from trainer.spec import JobSpec

# Exit codes of `trainer retrain` (documented in the README; the Jenkinsfile reads them):
EXIT_RETRAINED = 0        # data changed (or forced): a job was submitted and succeeded
EXIT_UNCHANGED = 10       # same data: nothing submitted
# any other non-zero code: failed (the TrainerError class's code: 2 spec, 5 job failed, ...)


@dataclass(frozen=True)
class Decision:
    changed: bool
    current: str | None          # the spec's data digest now
    recorded: str | None         # the digest it was compared with
    against: str                 # what that digest belongs to

    def describe(self) -> str:
        if self.current is None:
            return "the spec has no data: section, so there is no digest to compare; retraining"
        if self.recorded is None:
            return f"data treated as changed: {self.against}; retraining"
        verdict = "changed" if self.changed else "unchanged"
        return f"data {verdict}: {self.current[:12]} now, {self.recorded[:12]} on {self.against}"


def decide(spec: JobSpec, current: str | None, tracking_uri: str) -> Decision:
    if current is None:
        return Decision(True, None, None, "nothing")
    mlc = client(tracking_uri)
    with _mlflow("cannot read the recorded data digest from MLflow"):
        if spec.register is not None:
            recorded, against = _production_digest(mlc, spec)
        else:
            recorded, against = _newest_run_digest(mlc, spec)
    return Decision(recorded is None or recorded != current, current, recorded, against)


def _production_digest(mlc, spec: JobSpec) -> tuple[str | None, str]:
    from mlflow.exceptions import MlflowException

    try:
        mv = mlc.get_model_version_by_alias(spec.register.model, "production")
    except MlflowException:
        return None, f"{spec.register.model} has no production version yet"
    against = f"{spec.register.model} version {mv.version} (production)"
    return mv.tags.get(TAG_DATA), against if mv.tags.get(TAG_DATA) else f"{against}, which recorded none"


def _newest_run_digest(mlc, spec: JobSpec) -> tuple[str | None, str]:
    exp = mlc.get_experiment_by_name(spec.experiment)
    if exp is None:
        return None, f"no runs in experiment {spec.experiment!r}"
    for run in mlc.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=20,
                               filter_string="attributes.status = 'FINISHED'"):
        digest = run_data_digest(mlc, run)
        if digest:
            return digest, f"run {run.info.run_id} (newest finished run of {spec.experiment})"
    return None, f"no finished run of {spec.experiment!r} recorded a data digest"
