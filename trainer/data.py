"""Content digest of a job's data, recorded as the MLflow run's dataset.

The digest covers relative paths and bytes of every file, so renaming or editing any file
changes it, and it does not depend on where the data lives or on file times.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import SpecError
from trainer.spec import PACKAGE_SCHEME, file_kind


@dataclass(frozen=True)
class Fingerprint:
    name: str
    source: str
    digest: str       # sha256 hex
    files: int
    bytes: int


def resolve_data_path(path: str, workdir: Path) -> Path:
    """A spec's data.path as an absolute path (package:// resolves inside the installed package).

    Data is regular files, or a folder of them: a FIFO, socket or device (`/dev/zero`) would
    block or never end when read, so it is refused here, before anything starts."""
    if path.startswith(PACKAGE_SCHEME):
        module, _, rel = path[len(PACKAGE_SCHEME):].partition("/")
        if ".." in Path(rel).parts or rel.startswith("/"):
            raise SpecError(f"{path}: the file must be inside the package (no '..', no leading '/')",
                            path="data.path")
        # Locate the top-level package without importing it (importing sklearn costs seconds).
        top, *subpackages = module.split(".")
        spec = importlib.util.find_spec(top) if top and top.isidentifier() else None
        if spec is None or not spec.submodule_search_locations:
            raise SpecError(f"package {module!r} is not installed (from {path})", path="data.path")
        resolved = Path(list(spec.submodule_search_locations)[0]).joinpath(*subpackages) / rel
    else:
        resolved = (workdir / path).resolve()
    try:
        mode = resolved.stat().st_mode
    except FileNotFoundError:
        raise SpecError(f"no such file or folder: {resolved}", path="data.path") from None
    except OSError as e:
        raise SpecError(f"cannot read {resolved}: {e.strerror}", path="data.path") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise SpecError(f"{resolved} is {file_kind(mode)}: data must be a regular file or a folder",
                        path="data.path")
    return resolved


def data_files(root: Path) -> list[Path]:
    """The files of a data folder, sorted; every one must be a regular file (a symlink to one
    counts). Anything else (a FIFO, socket, device, or a symlink to nothing) is refused, naming
    it: skipping it would hide from the digest a file the training code may try to read.
    Symlinked folders are not followed (as before)."""
    files = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs.sort()
        for name in names:
            p = Path(folder) / name
            try:
                mode = p.stat().st_mode
            except OSError:
                raise SpecError(f"{p} is a symlink to nothing: data must be regular files",
                                path="data.path") from None
            if stat.S_ISDIR(mode):      # a symlink to a folder: not followed
                continue
            if not stat.S_ISREG(mode):
                raise SpecError(f"{p} is {file_kind(mode)}, in the data folder {root}: data must be "
                                f"regular files", path="data.path")
            files.append(p)
    return sorted(files)


def fingerprint(path: str, workdir: Path) -> Fingerprint:
    root = resolve_data_path(path, workdir)
    files = data_files(root) if root.is_dir() else [root]
    digest, total = hashlib.sha256(), 0
    for f in files:
        rel = f.relative_to(root).as_posix() if root.is_dir() else f.name
        digest.update(rel.encode() + b"\0")
        # Non-blocking open + fstat: a file swapped for a FIFO since it was listed cannot hang this.
        fd = os.open(f, os.O_RDONLY | os.O_NONBLOCK)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise SpecError(f"{f} is no longer a regular file", path="data.path")
        with os.fdopen(fd, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
                total += len(block)
        digest.update(b"\0")
    return Fingerprint(name=root.name, source=path, digest=digest.hexdigest(), files=len(files), bytes=total)
