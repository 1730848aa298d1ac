"""Fault injection for tests/runners/test_resume_faults.py: SIGKILL this training worker at
planned points, each exactly once per job, from inside the worker.

The plan is `ctx.config["faults"]`: a list of {"epoch", "rank", "phase"[, "batch"]}, fired in
order: fault i is armed once fault i-1 fired, and only in a worker group started after that (one
kill per group: the surviving rank of a group must not fire the next one before Ray restarts it).
A marker file in `ctx.config["fault_dir"]`, written before the kill, records that a fault fired
and survives the restart. A fault fires at the first point of its phase on its rank at or after
its epoch (and batch). Phases:

- step:   between two optimizer steps of an epoch (at batch `batch`)
- save:   rank 0, while the checkpoint dict is being serialised to the local folder (a payload
          object in the dict kills the process from its __reduce__, halfway through torch.save, or
          from its numpy(), while the tensorflow/mxnet writer converts the dict to numpy)
- upload: rank 0, while Ray copies the checkpoint folder to storage: half of the state file is
          written, then the process dies (what a worker dying mid-copy to shared storage leaves)
- report: inside ray.train.report, after the ranks agreed on the checkpoint's folder name, while
          rank 0 uploads (on rank 1: the writer's checkpoint is left without its report)
- after:  right after ctx.report returned (the controller may or may not have registered it)
- corrupt: rank 0, after ctx.report returned: wait until Ray registered the checkpoint as the
          latest, truncate its state file in storage, then die - the next group must fall back

The kill is SIGKILL to the worker's own pid: nothing in the process runs after it (no finally,
no atexit, no flush), exactly as when it comes from outside; firing it from inside is what makes
"mid-checkpoint" a deterministic place instead of a timing bet.
"""
import json
import os
import signal
import time
from pathlib import Path

_active = None


class Faults:
    def __init__(self, ctx):
        global _active
        self.plan = list(ctx.config.get("faults") or [])
        self.dir = Path(ctx.config["fault_dir"]) if self.plan else None
        self.rank = ctx.rank
        self.epoch = -1
        self.batch = -1
        self.born = time.time()  # this worker group started after every fault fired before now
        if self.plan and ctx.in_ray_train:
            _install_hooks()
        _active = self

    def at(self, epoch, batch=-1):
        self.epoch, self.batch = epoch, batch

    def _due(self, phase):
        if not self.plan:
            return None
        fired = {p.name for p in self.dir.glob("*.fired")}
        for i, fault in enumerate(self.plan):
            if f"{i}.fired" in fired:
                continue
            if fault["rank"] != self.rank or fault["phase"] != phase:
                return None
            if i > 0 and json.loads((self.dir / f"{i - 1}.fired").read_text())["time"] > self.born:
                return None  # fault i-1 killed this group; fault i waits for the next one
            if phase == "step":
                if (self.epoch, self.batch) < (fault["epoch"], fault.get("batch", 0)):
                    return None
            elif self.epoch < fault["epoch"]:
                return None
            return i
        return None

    def _fire(self, i, phase, **extra):
        record = {"fault": i, "rank": self.rank, "phase": phase, "epoch": self.epoch, "batch": self.batch,
                  "pid": os.getpid(), "time": time.time(), **extra}
        tmp = self.dir / f"{i}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record))
        os.link(tmp, self.dir / f"{i}.fired")  # atomic and exclusive: readers see whole records only
        tmp.unlink()
        print(f"FAULT {json.dumps(record)}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # never reached

    def point(self, phase, epoch=None, batch=None):
        if epoch is not None:
            self.epoch = epoch
        if batch is not None:
            self.batch = batch
        i = self._due(phase)
        if i is None:
            return
        if phase == "corrupt":
            self._corrupt_latest_then_die(i)
        self._fire(i, phase)

    def payload(self):
        """Put this in the checkpoint dict: the 'save' fault fires while it is serialised."""
        return _KillWhileSaving()

    def _corrupt_latest_then_die(self, i):
        import ray.train

        checkpoint = ray.train.get_checkpoint()  # this worker's last persisted checkpoint
        folder = Path(checkpoint.path)
        snapshot = folder.parent / "checkpoint_manager_snapshot.json"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until Ray registered it as the one to resume from
            try:
                latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]["checkpoint_dir_name"]
                if latest == folder.name:
                    break
            except (OSError, ValueError, KeyError, TypeError):
                pass
            time.sleep(0.2)
        state = next(p for p in sorted(folder.iterdir()) if p.name.startswith("state."))
        size = state.stat().st_size
        os.truncate(state, size // 2)
        self._fire(i, "corrupt", checkpoint=folder.name, file=state.name, bytes=size)


class _KillWhileSaving:
    """Fires the 'save' fault while the checkpoint dict is serialised: torch.save pickles it
    (`__reduce__`), the tensorflow/mxnet writer converts it to numpy (`numpy`). What it leaves
    behind when no fault is due loads without unpickling code (an empty OrderedDict for
    torch.load(weights_only=True), a 0-d array for the npz format)."""

    def __reduce__(self):
        if _active is not None:
            _active.point("save")
        import collections

        return (collections.OrderedDict, ())

    def numpy(self):
        if _active is not None:
            _active.point("save")
        import numpy as np

        return np.zeros(())


_hooked = False


def _install_hooks():
    """Wrap Ray Train's upload of a checkpoint folder and its per-report upload step."""
    global _hooked
    if _hooked:
        return
    _hooked = True
    import pyarrow.fs
    from ray.train.v2._internal.execution import context as train_context
    from ray.train.v2._internal.execution import storage

    copy = storage._pyarrow_fs_copy_files

    def copy_or_die(source, destination, source_filesystem=None, destination_filesystem=None, **kwargs):
        i = _active._due("upload") if _active is not None else None
        if i is not None and isinstance(source_filesystem, pyarrow.fs.LocalFileSystem):
            state = next(p for p in sorted(Path(source).iterdir()) if p.name.startswith("state."))
            data = state.read_bytes()
            with destination_filesystem.open_output_stream(f"{destination}/{state.name}") as out:
                out.write(data[: len(data) // 2])
            _active._fire(i, "upload", file=state.name, bytes=len(data))
        return copy(source, destination, source_filesystem=source_filesystem,
                    destination_filesystem=destination_filesystem, **kwargs)

    storage._pyarrow_fs_copy_files = copy_or_die

    upload = train_context.TrainContext._upload_checkpoint

    def upload_or_die(self, *args, **kwargs):
        if _active is not None:
            _active.point("report")
        return upload(self, *args, **kwargs)

    train_context.TrainContext._upload_checkpoint = upload_or_die
