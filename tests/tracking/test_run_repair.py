"""The client's repair of a job's MLflow run (Job._close_run) against a real SQLite store: a
cancel is authoritative, whatever the driver wrote on its way out."""
import pytest

from trainer.api import Job
from trainer.state import JobState
from trainer.tracking.runs import client, run_status


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return uri, client(uri).create_experiment("t", artifact_location=(folder / "art").as_uri())


@pytest.mark.parametrize("driver_wrote, ray_state, expected", [
    ("FAILED", JobState.CANCELLED, "KILLED"),     # the driver's finally ran first: the cancel wins
    ("RUNNING", JobState.CANCELLED, "KILLED"),    # the driver was SIGKILLed before its finally
    ("KILLED", JobState.CANCELLED, "KILLED"),
    ("RUNNING", JobState.FAILED, "FAILED"),       # a driver killed some other way
    ("FAILED", JobState.FAILED, "FAILED"),
    ("FINISHED", JobState.SUCCEEDED, "FINISHED"),
])
def test_close_run(store, driver_wrote, ray_state, expected):
    uri, experiment = store
    mlc = client(uri)
    run_id = mlc.create_run(experiment).info.run_id
    if driver_wrote != "RUNNING":
        mlc.set_terminated(run_id, status=driver_wrote)
    Job(id="j", address="http://127.0.0.1:1", run_id=run_id, tracking_uri=uri)._close_run(ray_state)
    assert run_status(uri, run_id) == expected
