"""Every test session gets its own $TRAINER_HOME (cluster state, MLflow, checkpoints), while the
big framework runtimes are shared through $TRAINER_RUNTIMES (built once by `.ci/run`)."""
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    os.environ.setdefault("TRAINER_RUNTIMES", str(Path.home() / ".trainer" / "runtimes"))
    # Short: Ray puts unix sockets under it (the cluster falls back to /tmp when long anyway).
    os.environ["TRAINER_HOME"] = tempfile.mkdtemp(prefix="trh-", dir="/tmp")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("TRAINER_ADDRESS", None)
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"


def pytest_unconfigure(config):
    home = os.environ.get("TRAINER_HOME", "")
    if os.path.basename(home).startswith("trh-"):
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def trainer_home() -> Path:
    return Path(os.environ["TRAINER_HOME"])


@pytest.fixture
def isolated_home(tmp_path, monkeypatch) -> Path:
    """A fresh, empty $TRAINER_HOME for one test (to prove nothing was created in it)."""
    home = tmp_path / "home"
    monkeypatch.setenv("TRAINER_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return home
