"""Quiet by default: Ray's and MLflow's own log lines (they install stderr handlers when imported)
go to $TRAINER_HOME/logs/trainer.log, not the terminal; `-v` shows them too. Real Ray and MLflow
configure themselves in a fresh interpreter here, as they do under the CLI."""
import os
import subprocess
import sys

import pytest

SCRIPT = """
import logging, sys
from trainer.logs import quiet, written
quiet(verbose=sys.argv[1] == "verbose")
import ray, mlflow                               # each installs its stderr handler on import
from ray._private.log import generate_logging_config
generate_logging_config()
from mlflow.utils.logging_utils import _configure_mlflow_loggers
_configure_mlflow_loggers("mlflow")              # MLflow assigns logger.handlers = [...] directly
logging.getLogger("ray.dashboard.modules.dashboard_sdk").info("Uploading package gcs://_ray_pkg_x.zip.")
logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables...")
import warnings; warnings.warn("a library's FutureWarning", FutureWarning)
print("ours", written())
"""


@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_dependency_logs_go_to_the_log_file(tmp_path, mode):
    env = {**os.environ, "TRAINER_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ours True"
    log = (tmp_path / "logs" / "trainer.log").read_text()
    for line in ("Uploading package gcs://", "Creating initial MLflow database tables", "FutureWarning"):
        assert line in log
        assert (line in proc.stderr) == (mode == "verbose"), proc.stderr
    assert oct((tmp_path / "logs" / "trainer.log").stat().st_mode & 0o777) == "0o600"


def test_a_command_that_logs_nothing_creates_no_log(tmp_path):
    from typer.testing import CliRunner

    from trainer.cli import app

    result = CliRunner().invoke(app, ["spec", "validate", "nope.yaml"], env={"TRAINER_HOME": str(tmp_path / "h")})
    assert result.exit_code == 2 and "details:" not in result.output
    assert not (tmp_path / "h").exists()
