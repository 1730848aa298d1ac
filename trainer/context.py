"""`ctx`: the one object a training function sees. It hides Ray Train and MLflow.

    def train(ctx):
        model = ctx.prepare_model(Net())
        loader = ctx.prepare_data_loader(DataLoader(...))
        state = ctx.restore()                       # dict of the last checkpoint, or None
        for epoch in range(start, ctx.config["epochs"]):
            ...
            ctx.report({"epoch": epoch, "loss": loss}, checkpoint={"model": ..., "epoch": epoch})
        ctx.save_model(model, example_input)

Call `ctx.report` on every rank, as often as you like (every step is fine): values are buffered and
sent to MLflow (rank 0) by a background thread; Ray Train is only involved when a checkpoint is
persisted. Pass `checkpoint=` at the same points on every rank; rank 0's dict is saved. With
`failure.max_failures > 0` values are committed with checkpoints, and also after at most 10,000
values or 30 s without one (trainer.tracking.metrics says what that means for exactly-once); with
`max_failures` 0 (nothing can be replayed) after at most 1,000 values or 2 s.

After a worker failure Ray Train restarts the group; `ctx.restore()` then returns the dict of the
newest *complete* checkpoint (trainer.checkpoints: an unreadable one is skipped, and the job log
and the run's `trainer.restore_fallback` tag say so) and puts back the counters step numbering
depends on, so values reported after the resume land on the steps they had the first time.

Where the function runs is a `Session`: inside a Ray Train worker group, or in-process
(`trainer run --local`, world size 1). The framework part (device, model wrapping, how a checkpoint
dict is written) lives in `trainer.runners.<framework>`.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

from trainer import telemetry
from trainer.protocol import MODEL_INFO_ARTIFACT, PROGRESS_PREFIX, model_info, progress_line  # noqa: F401 - PROGRESS_PREFIX: read here by tests
from trainer.spec import JobSpec

PROGRESS_INTERVAL_S = 1.0


class Session(Protocol):
    rank: int
    local_rank: int
    world_size: int

    def restore_dir(self) -> Path | None:
        """Folder of the checkpoint to resume from, or None. A collective the first time in a
        Ray Train worker: every rank calls it (Context.__init__ does)."""

    def persist(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        """Make a checkpoint durable (a collective: every rank calls it; rank 0 passes the dir)."""


class Context:
    """Framework-neutral part of `ctx`; runners subclass it (see trainer.runners.torch)."""

    def __init__(self, spec: JobSpec, session: Session, *, run_id: str | None = None,
                 tracking_uri: str | None = None, data_path: Path | None = None):
        self.spec = spec
        self.config: dict[str, Any] = dict(spec.config)
        self.data_path = data_path
        self.run_id = run_id
        self._session = session
        self._tracking_uri = tracking_uri
        self._channel = None
        # With no restarts possible nothing can be replayed: values need no checkpoint to be committed.
        self._live = spec.failure.max_failures == 0
        self._checkpoints_seen = 0
        self._auto_step = 0
        self._last_progress = 0.0
        self.last_step: int | None = None    # the last reported step and epoch
        self.last_epoch = None
        # Every rank, before any user code: which checkpoint a restarted group resumes from is
        # decided once (rank 0, broadcast), so all ranks agree even after a fallback.
        session.restore_dir()
        if session.rank == 0:
            self._announce_restore()
        if run_id and session.rank == 0:
            from trainer.tracking.metrics import MetricsChannel

            if self._live:
                self._channel = MetricsChannel.live(tracking_uri, run_id)
            else:
                self._channel = MetricsChannel(tracking_uri, run_id)
                # Any attempt may follow one whose values reached MLflow (flushed before a
                # checkpoint that never got registered), with or without a checkpoint to resume.
                self._channel.resume()

    # ------------------------------------------------------------------ identity
    @property
    def rank(self) -> int:
        return self._session.rank

    @property
    def local_rank(self) -> int:
        return self._session.local_rank

    @property
    def world_size(self) -> int:
        return self._session.world_size

    @property
    def in_ray_train(self) -> bool:
        return isinstance(self._session, RayTrainSession)

    @property
    def device(self):
        raise NotImplementedError

    # ------------------------------------------------------------------ framework hooks
    def prepare_model(self, model):
        return model

    def prepare_data_loader(self, loader):
        return loader

    def _write_checkpoint(self, state: dict, folder: Path) -> None:
        raise NotImplementedError

    def _read_checkpoint(self, folder: Path) -> dict:
        raise NotImplementedError

    def _log_model(self, model, example_input) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ the contract
    def report(self, metrics: dict[str, Any], checkpoint: dict | None = None) -> None:
        """Record metrics (every rank may call; rank 0's go to MLflow) and optionally a checkpoint.

        The step is `metrics["step"]`, else `metrics["epoch"]`, else a counter of report calls.
        """
        values = _numeric(metrics)
        step = int(metrics.get("step", metrics.get("epoch", self._auto_step)))
        values.pop("step", None)
        self._auto_step += 1
        self.last_step, self.last_epoch = step, metrics.get("epoch", self.last_epoch)   # for a failure's record
        if checkpoint is not None:
            self._checkpoints_seen += 1
        persisting = checkpoint is not None and self._checkpoints_seen % self.spec.checkpoint.every_epochs == 0
        if self.rank == 0:
            # The line before MLflow has the values: a worker killed from here on (ASHA stopping
            # its trial mid-epoch) leaves a log with every epoch its run has.
            telemetry.reported(step, values)
            self._print_progress(step, values, force=persisting or "epoch" in metrics)
        if self._channel is not None:
            # The key that is the step is MLflow's x axis, not a curve of its own.
            self._channel.add({k: v for k, v in values.items() if k != "epoch" or "step" in metrics}, step)
        if persisting:
            if self._channel is not None:
                self._channel.commit()  # sent while the checkpoint is written; _persist waits
            self._persist(values, checkpoint, step)

    def restore(self) -> dict | None:
        """The dict passed with the last persisted checkpoint (after a restart), or None.

        Resuming also restores what step numbering depends on (the report counter behind the
        default step, the checkpoint counter behind `every_epochs`), so a function that resumes
        from this dict reports every later value on the step it had the first time.
        """
        folder = self._session.restore_dir()
        if folder is None:
            return None
        state = self._read_checkpoint(folder)
        counters = _read_counters(folder)
        self._auto_step = int(counters.get("auto_step", self._auto_step))
        self._checkpoints_seen = int(counters.get("checkpoints_seen", self._checkpoints_seen))
        return state

    def save_model(self, model, example_input, labels=None, *, preprocessing: dict | None = None,
                   class_names=None) -> None:
        """Log the trained model to the run (rank 0), in the native format the converters read.

        `example_input` is a batch of real inputs: it becomes the model's input example and the
        calibration set of `convert:`; `labels` (optional, same length) let conversion report the
        accuracy delta: integer class labels (N,), or float targets (N, ...) for a regression
        model (conversion then judges the change in RMSE / MAE). What a device must do with raw
        inputs and what the outputs mean go with the model (the run's
        `model_info/model_info.json`) into an edge bundle's manifest: `preprocessing`
        ({"scale": 1/16} or {"scale", "mean", "std", "channel_axis"}: `(x * scale - mean) / std`)
        and `class_names` (index = output class). All are checked here, when called, so a wrong
        argument fails at once instead of after conversion.
        """
        x, y = _model_sample(example_input, labels)
        info = model_info(preprocessing, class_names)
        if self.rank != 0:
            return
        if self.run_id:
            from trainer.tracking import preload

            preload.wait()   # the metrics channel's import of MLflow, before _log_model imports it too
        self._log_model(model, example_input)
        if self.run_id:
            import numpy as np

            from trainer.tracking.runs import client

            with tempfile.TemporaryDirectory() as tmp:
                np.save(Path(tmp) / "inputs.npy", x.astype("float32"))
                if y is not None:
                    np.save(Path(tmp) / "labels.npy", y)
                client(self._tracking_uri).log_artifacts(self.run_id, tmp, "calibration")
            if preprocessing is not None or class_names is not None:
                client(self._tracking_uri).log_dict(self.run_id, info, MODEL_INFO_ARTIFACT)

    # ------------------------------------------------------------------ internals
    def _persist(self, values: dict[str, float], state: dict, step: int) -> None:
        from trainer.checkpoints import write_manifest

        folder = Path(tempfile.mkdtemp(prefix="trainer-ckpt-"))
        started, size = time.monotonic(), None
        try:
            if self.rank == 0:
                self._write_checkpoint(state, folder)
                # Last: the files' checksums (what makes the folder complete) and the counters
                # that restore() puts back.
                write_manifest(folder, {"auto_step": self._auto_step, "checkpoints_seen": self._checkpoints_seen,
                                        "step": step})
                size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            if self._channel is not None:
                self._channel.flush()  # in MLflow before the checkpoint exists (see metrics.py)
            self._session.persist(values, folder if self.rank == 0 else None)
        except Exception:    # not a cancel (SystemExit): that is no failed write
            telemetry.checkpoint_written(time.monotonic() - started, size, ok=False)
            raise
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        telemetry.checkpoint_written(time.monotonic() - started, size, ok=True)

    def _announce_restore(self) -> None:
        """Rank 0 of a restarted group: say in the job log which checkpoint it resumes from and,
        after a fallback, which ones were passed over and why (also as a run tag)."""
        point = getattr(self._session, "restore_point", None)
        if point is None or point.latest is None:
            return
        telemetry.restored(point.fell_back)
        if not point.fell_back:
            print(f"trainer: resuming from checkpoint {point.name}", flush=True)
            return
        message = point.describe()
        print(f"trainer: restore fallback: {message}", flush=True)
        if self.run_id:
            from trainer.tracking.runs import TAG_RESTORE_FALLBACK, client

            try:
                client(self._tracking_uri).set_tag(self.run_id, TAG_RESTORE_FALLBACK, message[:5000])
            except Exception as e:  # noqa: BLE001 - the job log has it; tracking must not stop a resume
                from trainer.errors import first_line

                print(f"trainer: could not tag the MLflow run with the fallback: {first_line(e)}", flush=True)

    def _print_progress(self, step: int, values: dict[str, float], force: bool) -> None:
        """One machine-readable line the CLI turns into a live progress bar (rate-limited)."""
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_INTERVAL_S:
            return
        self._last_progress = now
        print(progress_line(step, values, time.time()),
              flush=True, file=sys.stdout)

    def close(self, success: bool = True) -> None:
        """Flush metrics (all pending ones on success) and stop the sender thread."""
        telemetry.flush_progress()
        discard = getattr(self._session, "discard_restore", None)
        if discard is not None:
            discard()
        if self._channel is not None:
            # A job that cannot restart replays nothing: what it reported before failing is final.
            self._channel.close(commit=success or self._live)
            self._channel = None


def _read_counters(folder: Path) -> dict:
    from trainer.checkpoints import MANIFEST

    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"ctx.report: metric {key!r} must be a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"ctx.report: metric {key!r} is {value} (training diverged?)")
        out[key] = float(value)
    return out


def _model_sample(example_input, labels):
    """ctx.save_model's arguments as arrays, or TypeError/ValueError naming what is wrong: inputs
    a numeric batch (N, ...); labels None, integer classes (N,) or finite float targets (N, ...)."""
    x = _to_numpy(example_input)
    if x.dtype.kind not in "fiu" or x.ndim < 2 or len(x) == 0:
        raise TypeError(f"ctx.save_model: example_input must be a numeric batch (N, ...) with N >= 1, "
                        f"got dtype {x.dtype} shape {tuple(x.shape)}")
    if labels is None:
        return x, None
    y = _to_numpy(labels)
    if len(y.shape) == 0 or len(y) != len(x):
        raise ValueError(f"ctx.save_model: labels must have one entry per example_input sample ({len(x)}), "
                         f"got shape {tuple(y.shape)}")
    if y.dtype.kind in "iu" and y.ndim == 1:
        return x, y
    if y.dtype.kind == "f" and bool((y == y).all()) and bool((abs(y) != float("inf")).all()):
        return x, y
    raise TypeError(f"ctx.save_model: labels must be integer classes (N,) or finite float regression "
                    f"targets (N, ...), got dtype {y.dtype} shape {tuple(y.shape)}")


def _to_numpy(x):
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    import numpy as np

    return np.asarray(x)


class LocalSession:
    """In-process, world size 1: `trainer run --local` and GPU benchmarks. Checkpoints go to a
    folder (keep-N), so the same function's checkpoint code runs too. Each one is copied into a
    hidden folder beside its final place and renamed into it, so a crash mid-copy never leaves a
    `checkpoint_*` folder with half its files (the hidden leftover is removed by the next run)."""

    PARTIAL = ".partial-"

    rank = 0
    local_rank = 0
    world_size = 1

    def __init__(self, checkpoint_root: Path, keep: int):
        self.root = Path(checkpoint_root)
        self.keep = keep
        self._count = 0
        for stale in self.root.glob(f"{self.PARTIAL}checkpoint_*"):   # a crashed run's half copy
            shutil.rmtree(stale, ignore_errors=True)

    def restore_dir(self) -> Path | None:
        return None

    def persist(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is None:
            return
        name = f"checkpoint_{self._count:06d}"
        self._count += 1
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.root / f"{self.PARTIAL}{name}"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            shutil.copytree(checkpoint_dir, partial)
            (partial / "metrics.json").write_text(json.dumps(metrics))
            os.rename(partial, self.root / name)   # atomic: the folder appears whole or not at all
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        for old in sorted(self.root.glob("checkpoint_*"))[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)


class RayTrainSession:
    """Inside a Ray Train worker: rank from Ray, checkpoints through `ray.train.report`."""

    def __init__(self):
        import ray.train

        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.local_rank = ctx.get_local_rank()
        self.world_size = ctx.get_world_size()

    restore_point = None  # trainer.checkpoints.RestorePoint, once restore_dir() has run

    def restore_dir(self) -> Path | None:
        """A private, verified copy of the checkpoint to resume from (see trainer.checkpoints).

        The first call is a collective when Ray hands out a checkpoint: rank 0 picks the newest
        complete one (falling back past unreadable ones), every rank fetches that one.
        """
        if self.restore_point is None:
            import ray.train

            from trainer import checkpoints

            latest = ray.train.get_checkpoint()  # the same on every rank
            if latest is None:
                self.restore_point = checkpoints.RestorePoint()
            else:
                from ray.train.collective import broadcast_from_rank_zero

                point = checkpoints.choose(latest) if self.rank == 0 else None
                name = broadcast_from_rank_zero(point.name if point else None)
                self.restore_point = point if point is not None else checkpoints.fetch(latest, name)
        return self.restore_point.folder

    def discard_restore(self) -> None:
        if self.restore_point is not None:
            self.restore_point.discard()

    def persist(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)
