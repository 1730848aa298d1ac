"""`trainer ui`: starts (or finds) the MLflow UI of the configured store on 127.0.0.1 through
trainer.tracking.server, prints it with the Ray dashboard's; a job summary then links the run page."""
import json

import pytest
import requests
from typer.testing import CliRunner

from trainer.cli import app


@pytest.mark.integration
def test_ui_starts_then_finds_the_mlflow_ui_and_links_runs(isolated_home):
    from trainer.home import default_tracking_uri
    from trainer.tracking import server
    from trainer.tracking.runs import client, run_url

    try:
        first = CliRunner().invoke(app, ["ui"], env={"COLUMNS": "80"})
        assert first.exit_code == 0, first.output
        url = server.find().url
        assert url.startswith("http://127.0.0.1:")
        assert f"MLflow: {url}  (started)" in first.output
        assert "Ray dashboard: no local cluster running (trainer cluster up)" in first.output
        again = json.loads(CliRunner().invoke(app, ["ui", "-o", "json"]).stdout)
        assert again["mlflow_url"] == url and again["mlflow_started"] is False and again["ray_dashboard"] is None
        # A run of the embedded store now has a page there.
        uri = default_tracking_uri()
        run_id = client(uri).create_run(client(uri).create_experiment("ui")).info.run_id
        link = run_url(uri, run_id)
        assert link.startswith(f"{url}/#/experiments/") and link.endswith(f"/runs/{run_id}?workflowType=machine_learning")
        assert requests.get(url, timeout=30).status_code == 200
    finally:
        server.stop()
