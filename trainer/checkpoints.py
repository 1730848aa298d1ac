"""Checkpoint folders in storage: what makes one complete, which one a restarted group resumes
from, and keep-N at the end of a job.

Every checkpoint trainer persists holds, next to the framework's state file, `trainer.json`: the
size and sha256 of every other file in the folder (written by rank 0 *after* the state file, in
the local folder that is then uploaded) plus the context's counters that step numbering depends
on (`auto_step`, `checkpoints_seen`, the last `step`). A folder is *complete* when that manifest is
there and every file matches it; an upload cut short by a dying worker, a truncated or rewritten
file, or a folder without the manifest is not.

Restore (inside a Ray Train worker): Ray hands every rank the latest *registered* checkpoint.
Rank 0 downloads it into a private folder and verifies it; when it is not complete it tries the
older `checkpoint_*` siblings of the same run (newest first, by Ray's timestamped names) and, when
none is complete, starts from scratch - never raising on a bad file, which would make Ray retry
the same file until `max_failures` runs out. Its choice is broadcast, so every rank resumes from
the same checkpoint; each rank downloads it into a folder of its own (see `download`).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST = "trainer.json"
PREFIX = "checkpoint_"


class Incomplete(Exception):
    """A checkpoint folder that must not be resumed from; the message says why (one line)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path, counters: dict) -> None:
    """Describe every file already in `folder` and record `counters`; call it last."""
    files = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({"version": 1, "files": files, **counters}))


def verify(folder: Path) -> dict:
    """The manifest of a complete checkpoint folder; raises Incomplete (with the reason) otherwise."""
    path = folder / MANIFEST
    if not path.is_file():
        raise Incomplete(f"no {MANIFEST} (the upload never finished)")
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise Incomplete(f"{MANIFEST} is unreadable ({type(e).__name__})") from None
    for name, meta in sorted(files.items()):
        f = folder / name
        if not f.is_file():
            raise Incomplete(f"{name} is missing")
        size = f.stat().st_size
        if size != meta["bytes"]:
            raise Incomplete(f"{name} is {size} bytes, {meta['bytes']} were written")
        if _sha256(f) != meta["sha256"]:
            raise Incomplete(f"{name} does not match the sha256 it was written with")
    return manifest


def download(checkpoint, prefix: str = "trainer-restore-") -> Path:
    """A private local copy of a `ray.train.Checkpoint`.

    Not `checkpoint.to_directory()` with no path: that folder is /tmp/checkpoint_tmp_<uuid>, and
    the uuid travels with the pickled Checkpoint the controller sends to every worker, so all ranks
    on a node share it. Its file lock serialises the downloads only; a rank that arrives after the
    first finished takes the free lock and copies the files again, truncating them under a rank
    that is already reading (torch.load: "not a ZIP archive"), and the next attempt gets the same
    Checkpoint object, hence the same folder and the same race.
    """
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    checkpoint.to_directory(str(folder))
    return folder


@dataclass
class RestorePoint:
    """What a restarted worker resumes from: `folder` (None: from scratch), the checkpoint's
    name in storage and its manifest, and the checkpoints passed over with why."""

    folder: Path | None = None
    name: str | None = None
    manifest: dict = field(default_factory=dict)
    latest: str | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def fell_back(self) -> bool:
        return bool(self.skipped)

    def describe(self) -> str:
        """One line for the job log and the MLflow run."""
        passed = "; ".join(f"{name}: {why}" for name, why in self.skipped)
        target = f"resumed from {self.name}" if self.name else "no complete checkpoint is left: started from scratch"
        return f"skipped unreadable checkpoint(s) {passed}; {target}"

    def discard(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _name(checkpoint) -> str:
    return Path(checkpoint.path).name


def candidates(latest) -> list:
    """`latest`, then its older `checkpoint_*` siblings in the run's storage, newest first."""
    import pyarrow.fs
    from ray.train import Checkpoint

    parent = Path(latest.path).parent.as_posix()
    infos = latest.filesystem.get_file_info(pyarrow.fs.FileSelector(parent, allow_not_found=True))
    older = sorted((i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory
                    and i.base_name.startswith(PREFIX) and i.base_name < _name(latest)), reverse=True)
    return [latest] + [Checkpoint(f"{parent}/{name}", filesystem=latest.filesystem) for name in older]


def choose(latest) -> RestorePoint:
    """Rank 0: the newest complete checkpoint at or before `latest` (downloaded and verified)."""
    point = RestorePoint(latest=_name(latest))
    for checkpoint in candidates(latest):
        folder = None
        try:
            folder = download(checkpoint)
            manifest = verify(folder)
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is passed over, with the reason
            from trainer.errors import first_line

            reason = str(e) if isinstance(e, Incomplete) else f"cannot be read: {first_line(e)}"
            point.skipped.append((_name(checkpoint), reason))
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            continue
        point.folder, point.name, point.manifest = folder, _name(checkpoint), manifest
        return point
    return point


def fetch(latest, name: str | None) -> RestorePoint:
    """Other ranks: the checkpoint rank 0 chose (a sibling of `latest` called `name`)."""
    if name is None:
        return RestorePoint(latest=_name(latest))
    for checkpoint in candidates(latest):
        if _name(checkpoint) == name:
            folder = download(checkpoint)
            try:
                manifest = verify(folder)
            except Incomplete as e:
                shutil.rmtree(folder, ignore_errors=True)
                raise RuntimeError(f"checkpoint {name} was complete on rank 0 but not here: {e}") from None
            return RestorePoint(folder=folder, name=name, manifest=manifest, latest=_name(latest))
    raise RuntimeError(f"checkpoint {name} chosen by rank 0 is not in storage")


def prune(run_path: str, filesystem, keep_names: set[str], keep: int) -> list[str]:
    """End of a job: delete every `checkpoint_*` folder of the run but `keep_names` (Ray's
    registered checkpoints, at most `keep`). Ray deletes only checkpoints it registered; an upload
    whose report never reached the controller (a worker died first: reports are consumed one per
    controller poll, so one or two can be in flight) stays behind otherwise. Returns the names
    deleted."""
    import pyarrow.fs

    infos = filesystem.get_file_info(pyarrow.fs.FileSelector(run_path, allow_not_found=True))
    names = sorted(i.base_name for i in infos
                   if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith(PREFIX))
    kept = [n for n in names if n in keep_names][-keep:]
    deleted = []
    for name in names:
        if name not in kept:
            try:
                filesystem.delete_dir(f"{run_path}/{name}")
                deleted.append(name)
            except OSError:
                pass
    return deleted
