"""MLflow's process-wide store is borrowed, never kept: `mlflow.set_tracking_uri` also writes
$MLFLOW_TRACKING_URI, so a URI left behind by an in-process run (a notebook's `run_local`, a
runner logging its model) sends every later command of that process, and every process it starts
(`trainer promote`, a notebook kernel), to that run's store. SQLite MLflow, no Ray."""
import os

import pytest

from trainer.tracking.runs import client, global_store, logging_into


@pytest.fixture
def run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = client(uri).create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    return uri, client(uri).create_run(exp).info.run_id


def _global():
    import mlflow

    return mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")


@pytest.mark.parametrize("caller", [None, "sqlite:////tmp/the-users-own.db"])
def test_logging_into_a_run_puts_the_callers_store_back(run, monkeypatch, caller):
    import mlflow

    if caller is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", caller)
    before = _global()
    uri, run_id = run
    with logging_into(uri, run_id):
        assert _global() == (uri, uri)          # inside: the run's store, for log_model's runs:/ URIs
        mlflow.log_param("p", 1)
    assert _global() == before
    assert client(uri).get_run(run_id).data.params == {"p": "1"}


def test_the_store_is_put_back_when_the_block_fails(run, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/the-users-own.db")
    before = _global()
    with pytest.raises(RuntimeError), global_store(run[0]):
        raise RuntimeError("boom")
    assert _global() == before
