"""MLflow integration: one run per job, batched non-blocking metrics, models, datasets."""

import os

# MLflow 3 reports usage over the network by default; jobs must not wait on that.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
