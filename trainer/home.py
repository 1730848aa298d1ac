"""Where trainer keeps its state: one directory, `$TRAINER_HOME` (default `~/.trainer`)."""
from __future__ import annotations

import os
from pathlib import Path


def trainer_home() -> Path:
    """The state directory: cluster state and logs, embedded MLflow, checkpoints."""
    return Path(os.environ.get("TRAINER_HOME") or Path.home() / ".trainer").expanduser().resolve()


def runtimes_dir() -> Path:
    """Per-framework venvs. `$TRAINER_RUNTIMES` lets tests share the big venvs across homes."""
    env = os.environ.get("TRAINER_RUNTIMES")
    return Path(env).expanduser().resolve() if env else trainer_home() / "runtimes"


def default_tracking_uri() -> str:
    """The embedded MLflow store: a SQLite file under `$TRAINER_HOME`."""
    return f"sqlite:///{trainer_home() / 'mlflow.db'}"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The MLflow store to use: `uri` when given, else $MLFLOW_TRACKING_URI, else the embedded one."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def default_artifact_root() -> str:
    return (trainer_home() / "mlartifacts").as_uri()


def repo_root() -> Path:
    """The checkout this package was imported from (images/, examples/ live there)."""
    return Path(__file__).resolve().parent.parent
