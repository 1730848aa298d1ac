"""The runner seam: what a framework must provide to train a job on Ray and in-process.

Runners are registered by framework name and imported lazily (importing trainer must never import
torch or tensorflow). A runner *declares* what it cannot do; preflight checks that before
anything is submitted.
"""
from __future__ import annotations

import importlib
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
