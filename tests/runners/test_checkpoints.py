"""Checkpoint folders: completeness (trainer.json), which one a restarted group resumes from,
keep-N at the end of a job, and the step counters that travel with a checkpoint. No Ray cluster:
Ray's Checkpoint objects on local folders, a stand-in session for the context."""
import json
import shutil
from pathlib import Path

import pytest
from ray.train import Checkpoint

from trainer.checkpoints import MANIFEST, Incomplete, choose, prune, verify, write_manifest
from trainer.context import PROGRESS_PREFIX, Context
from trainer.spec import JobSpec


def make(folder: Path, payload: bytes = b"x" * 1000, counters=None) -> Path:
    folder.mkdir(parents=True)
    (folder / "state.pt").write_bytes(payload)
    write_manifest(folder, counters or {"auto_step": 1})
    return folder


def test_a_complete_folder_verifies_and_any_damage_is_named(tmp_path):
    good = make(tmp_path / "checkpoint_a", counters={"auto_step": 7, "checkpoints_seen": 7})
    assert verify(good)["auto_step"] == 7

    truncated = make(tmp_path / "checkpoint_b")
    (truncated / "state.pt").write_bytes(b"x" * 500)
    with pytest.raises(Incomplete, match="state.pt is 500 bytes, 1000 were written"):
        verify(truncated)

    rewritten = make(tmp_path / "checkpoint_c")
    (rewritten / "state.pt").write_bytes(b"y" * 1000)
    with pytest.raises(Incomplete, match="does not match the sha256"):
        verify(rewritten)

    unfinished = make(tmp_path / "checkpoint_d")
    (unfinished / MANIFEST).unlink()  # an upload cut short before the manifest
    with pytest.raises(Incomplete, match="never finished"):
        verify(unfinished)

    missing = make(tmp_path / "checkpoint_e")
    (missing / "state.pt").unlink()
    with pytest.raises(Incomplete, match="state.pt is missing"):
        verify(missing)


def test_restore_falls_back_to_the_newest_complete_older_checkpoint(tmp_path):
    run = tmp_path / "run"
    make(run / "checkpoint_2026-01-01_00-00-01.000000")
    make(run / "checkpoint_2026-01-01_00-00-02.000000", counters={"auto_step": 2})
    partial = make(run / "checkpoint_2026-01-01_00-00-03.000000")
    (partial / MANIFEST).unlink()
    latest = make(run / "checkpoint_2026-01-01_00-00-04.000000")
    (latest / "state.pt").write_bytes(b"x" * 10)
    make(run / "checkpoint_2026-01-01_00-00-05.000000")  # newer but never registered: not a candidate

    point = choose(Checkpoint.from_directory(str(latest)))
    try:
        assert point.name == "checkpoint_2026-01-01_00-00-02.000000"
        assert point.manifest["auto_step"] == 2
        assert point.folder is not None and point.folder != run and (point.folder / "state.pt").is_file()
        assert [name for name, _ in point.skipped] == ["checkpoint_2026-01-01_00-00-04.000000",
                                                       "checkpoint_2026-01-01_00-00-03.000000"]
        assert point.describe() == (
            "skipped unreadable checkpoint(s) checkpoint_2026-01-01_00-00-04.000000: state.pt is 10 bytes, "
            "1000 were written; checkpoint_2026-01-01_00-00-03.000000: no trainer.json (the upload never "
            "finished); resumed from checkpoint_2026-01-01_00-00-02.000000")
    finally:
        point.discard()
    assert not point.folder.exists()


def test_restore_copies_are_private_to_each_caller(tmp_path):
    latest = Checkpoint.from_directory(str(make(tmp_path / "run" / "checkpoint_1")))
    first, second = choose(latest), choose(latest)
    try:
        assert first.folder != second.folder and not first.skipped
    finally:
        first.discard()
        second.discard()


def test_no_complete_checkpoint_left_starts_from_scratch(tmp_path):
    only = make(tmp_path / "run" / "checkpoint_1")
    (only / "state.pt").write_bytes(b"")
    point = choose(Checkpoint.from_directory(str(only)))
    assert point.folder is None and point.fell_back
    assert point.describe().endswith("no complete checkpoint is left: started from scratch")


def test_prune_keeps_only_registered_checkpoints(tmp_path):
    import pyarrow.fs

    run = tmp_path / "run"
    for i in range(5):
        make(run / f"checkpoint_{i}")
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    deleted = prune(str(run), pyarrow.fs.LocalFileSystem(), {"checkpoint_3", "checkpoint_4"}, keep=2)
    assert deleted == ["checkpoint_0", "checkpoint_1", "checkpoint_2"]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_3", "checkpoint_4", "checkpoint_manager_snapshot.json"]


class JsonContext(Context):
    def _write_checkpoint(self, state, folder):
        (folder / "state.json").write_text(json.dumps(state))

    def _read_checkpoint(self, folder):
        return json.loads((folder / "state.json").read_text())


class FolderSession:
    """Persists into numbered folders; restores from the one given."""

    rank, local_rank, world_size = 0, 0, 1

    def __init__(self, root: Path, restore: Path | None = None):
        self.root, self.restore, self.count = root, restore, 0

    def restore_dir(self):
        return self.restore

    def persist(self, metrics, checkpoint_dir):
        self.count += 1
        shutil.copytree(checkpoint_dir, self.root / f"checkpoint_{self.count}")


def printed_steps(text: str) -> list[int]:
    return [json.loads(line.split(PROGRESS_PREFIX, 1)[1])["step"] for line in text.splitlines()
            if PROGRESS_PREFIX in line]


@pytest.mark.parametrize("every", [1, 2])
def test_a_resumed_context_continues_the_report_counter(tmp_path, capsys, monkeypatch, every):
    """The default step (a counter of report calls) and the every_epochs count are restored with
    the checkpoint, so the values after a resume land on the steps they had the first time."""
    monkeypatch.setattr("trainer.context.PROGRESS_INTERVAL_S", 0.0)  # a progress line per report
    spec = JobSpec(name="t", framework="torch", entrypoint="t.py:train",
                   checkpoint={"every_epochs": every}, failure={"max_failures": 2})
    first = JsonContext(spec, FolderSession(tmp_path))
    for epoch in range(5):
        first.report({"loss": 1.0}, checkpoint={"epoch": epoch})  # no step, no epoch key
    last = sorted(tmp_path.glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[1]))[-1]
    capsys.readouterr()

    resumed = JsonContext(spec, FolderSession(tmp_path / "again", restore=last))
    (tmp_path / "again").mkdir()
    state = resumed.restore()
    for epoch in range(state["epoch"] + 1, 7):
        resumed.report({"loss": 1.0}, checkpoint={"epoch": epoch})
    assert printed_steps(capsys.readouterr().out) == list(range(state["epoch"] + 1, 7))
    # ... and checkpoints are still persisted on the same reports as without the restart.
    persisted = [json.loads((p / "state.json").read_text())["epoch"] for p in (tmp_path / "again").iterdir()]
    assert all((epoch + 1) % every == 0 for epoch in persisted) and persisted


def test_local_checkpoints_appear_whole_or_not_at_all(tmp_path, monkeypatch):
    """`trainer run --local`: a checkpoint is copied beside its place and renamed into it; while
    the copy runs (and after a crash in it) no `checkpoint_*` folder with part of the files exists."""
    from trainer.context import LocalSession

    root = tmp_path / "local"
    spec = JobSpec(name="t", framework="torch", entrypoint="t.py:train", checkpoint={"keep": 2})
    ctx = JsonContext(spec, LocalSession(root, keep=2))
    seen_while_copying = []
    copy, copytree = shutil.copy2, shutil.copytree

    def copying_with(copy_function):
        return lambda src, dst, **kwargs: copytree(src, dst, copy_function=copy_function)

    def watching_copy(src, dst, **kwargs):
        seen_while_copying.append(sorted(p.name for p in root.glob("checkpoint_*")))
        return copy(src, dst, **kwargs)

    monkeypatch.setattr(shutil, "copytree", copying_with(watching_copy))
    ctx.report({"loss": 1.0}, checkpoint={"epoch": 0})
    assert seen_while_copying and all(names == [] for names in seen_while_copying)
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint_000000"]
    assert {p.name for p in (root / "checkpoint_000000").iterdir()} == {"state.json", MANIFEST, "metrics.json"}

    def dying_copy(src, dst, **kwargs):
        if Path(src).name == MANIFEST:
            raise KeyboardInterrupt  # the process is stopped halfway through the copy
        return copy(src, dst, **kwargs)

    monkeypatch.setattr(shutil, "copytree", copying_with(dying_copy))
    with pytest.raises(KeyboardInterrupt):
        ctx.report({"loss": 0.5}, checkpoint={"epoch": 1})
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint_000000"]

    # A SIGKILL runs no cleanup: the hidden half copy stays, is never a checkpoint_* folder, and
    # the next local session removes it.
    monkeypatch.setattr(shutil, "copytree", copytree)
    (root / ".partial-checkpoint_000001").mkdir()
    (root / ".partial-checkpoint_000001" / "state.json").write_text("{")
    assert [p.name for p in root.glob("checkpoint_*")] == ["checkpoint_000000"]
    JsonContext(spec, LocalSession(root, keep=2))
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint_000000"]


def test_a_steps_progress_line_is_out_before_its_metrics_go_to_mlflow(tmp_path, capsys):
    """A worker killed between the two (ASHA stopping a trial mid-epoch) leaves a log with every
    epoch its MLflow run has (`trainer logs SWEEP --trial N` == the trial's history)."""
    order = []

    class Channel:      # the metrics channel's side that MLflow sees: values handed over, then sent
        def add(self, values, step):
            order.extend(["printed" if step in printed_steps(capsys.readouterr().out) else "not printed",
                          f"to MLflow {step}"])

        def commit(self):
            pass

        def flush(self):
            pass

    spec = JobSpec(name="t", framework="torch", entrypoint="t.py:train", checkpoint={"every_epochs": 2})
    ctx = JsonContext(spec, FolderSession(tmp_path))
    ctx._channel = Channel()
    for epoch in range(3):       # persisted, not persisted, persisted
        ctx.report({"epoch": epoch, "loss": 1.0}, checkpoint={"epoch": epoch})
    assert order == ["printed", "to MLflow 0", "printed", "to MLflow 1", "printed", "to MLflow 2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_1"]     # every 2nd: epoch 1
