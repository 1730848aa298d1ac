"""`trainer rerun` of a seeded successful run: the recorded spec and code, submitted again on the
session's cluster, give the same loss at every step (issue 24's test)."""
from pathlib import Path

import pytest

from trainer import api
from trainer.state import JobState
from trainer.tracking import record, runs

SPEC = Path(__file__).resolve().parent / "jobs" / "tiny.yaml"


@pytest.mark.integration
@pytest.mark.slow
def test_a_seeded_rerun_has_the_same_loss_at_every_step(cluster):
    first = api.submit(SPEC, config={"epochs": 4})
    assert first.wait(timeout=600) is JobState.SUCCEEDED, first.logs()[-3000:]
    again = api.rerun(first.run_id)
    assert again.wait(timeout=600) is JobState.SUCCEEDED, again.logs()[-3000:]

    def losses(job):
        frame = job.metrics()
        return frame[frame["key"] == "loss"][["step", "value"]].values.tolist()

    assert len(losses(first)) == 4
    assert losses(again) == losses(first)
    tags = runs.client(again._store()).get_run(again.run_id).data.tags
    first_tags = runs.client(first._store()).get_run(first.run_id).data.tags
    assert tags[record.TAG_RERUN_OF] == first.run_id
    assert tags[record.TAG_CODE_DIGEST] == first_tags[record.TAG_CODE_DIGEST]     # the very code it ran
    compared = {c["key"]: c for c in api.compare_runs(first.run_id, again.run_id, tracking_uri=again._store())}
    assert compared["loss"]["max_step_diff"] == 0 and compared["loss"]["steps"] == 4
