"""The runner seam: what a framework must provide to train a job on Ray and in-process.

Runners are registered by framework name and imported lazily (importing trainer must never import
torch or tensorflow). A runner *declares* what it cannot do; preflight checks that before
anything is submitted.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from trainer.errors import UnknownNameError

if TYPE_CHECKING:
    from trainer.context import Context, Session
    from trainer.spec import JobSpec


class Runner(Protocol):
    framework: str
    runtime: str            # default runtime (venv / image) for this framework
    frontend: str           # converter frontend (converters.registry) for the model save_model logs

    def unsupported(self, spec: "JobSpec") -> list[str]:
        """Reasons this runner cannot run `spec` (empty when it can)."""

    def make_context(self, spec: "JobSpec", session: "Session", *, run_id: str | None,
                     tracking_uri: str | None, data_path: Path | None) -> "Context":
        """The framework's `ctx` for one worker."""

    def ray_trainer(self, train_loop: Callable[[dict], None], loop_config: dict[str, Any],
                    scaling_config, run_config):
        """The Ray Train trainer (TorchTrainer, TensorflowTrainer, ...) that runs `train_loop`."""


# Ray Train v2's controller polls its workers every 2 s, and a `ray.train.report` that carries a
# checkpoint waits for the poll that takes the previous one off the worker's one-slot result queue;
# the group's start and its end are also seen only at a poll. 2 s per checkpoint on every rank is
# most of a small job's wall time (benchmarks/README.md). At 0.1 s a poll costs the controller two
# tiny actor calls (unmeasurable next to training here); a worker that misses one is only marked
# dead after RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S (600 s), as before.
RAY_TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}

# Jobs on the local cluster only (the client adds these to the job's environment): Ray Train v2
# starts a PreemptionWatcher actor with every worker group, one more Python process (~1.5 s of CPU
# here, taken from the workers' first steps), to notice nodes that an autoscaler or a cloud is
# draining (spot reclaim, KubeRay scale-down). No autoscaler runs on the local cluster and nothing
# drains its nodes, so it would never fire; on KubeRay and remote clusters Ray's default stays.
LOCAL_RAY_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def tune_ray_train(environ=os.environ) -> dict[str, str]:
    """Set RAY_TRAIN_ENV in the driver's environment (a value already set wins: a user's or an
    operator's choice). Ray Train propagates these variables from the driver to its controller
    and workers, so this works wherever the driver runs (local cluster, KubeRay, remote). Returns
    the values in effect."""
    for key, value in RAY_TRAIN_ENV.items():
        environ.setdefault(key, value)
    return {key: environ[key] for key in RAY_TRAIN_ENV}


def without_dataset_manager(trainer):
    """`trainer` (a Ray Train v2 trainer) without Ray Train's DatasetManager when it was given no
    Ray datasets, as trainer's jobs never are (each rank reads its data itself). Ray Train starts
    that actor with every worker group regardless: one more Python process on the driver's node
    (~2.5 CPU-s and ~190 MiB here, taken from the workers' start on a small machine) that nothing
    calls. Its callback is what creates it; without it the workers' `dataset_shard_provider` is
    None, which Ray Train's worker accepts (it is Optional there). Ray is pinned: the test that
    lists a job's actors (tests/runners/test_torch_jobs.py) fails if this stops holding."""
    if trainer.datasets:
        return trainer
    from ray.train.v2._internal.callbacks import DatasetsCallback

    defaults = trainer._create_default_callbacks
    trainer._create_default_callbacks = lambda: [c for c in defaults() if not isinstance(c, DatasetsCallback)]
    return trainer


RUNNERS = {
    "torch": "trainer.runners.torch:RUNNER",
    "tensorflow": "trainer.runners.tensorflow:RUNNER",
    "mxnet": "trainer.runners.mxnet:RUNNER",
}


def get_runner(framework: str) -> Runner:
    if framework not in RUNNERS:
        raise UnknownNameError("framework", framework, list(RUNNERS))
    module, _, attr = RUNNERS[framework].partition(":")
    return getattr(importlib.import_module(module), attr)
