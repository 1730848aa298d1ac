"""Content digest of a job's data, recorded as the MLflow run's dataset.

The digest covers relative paths and bytes of every file, so renaming or editing any file
changes it, and it does not depend on where the data lives or on file times. Each file is
framed (path length, path, size, then its bytes), so two different datasets never share a
digest however their names and bytes line up.

It covers what training reads: symlinked files and folders are followed (wherever they point:
the code reading the folder follows them too), and a link that leads back into a folder being
walked (a loop, which training could not read either) is refused. The job driver digests the data
again before training starts (`pin`) and fails when it no longer matches what was recorded at
submit, so a run never says v1 while it trains on v2 (a symlink swapped in between).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import JobError, SpecError
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
    Symlinked folders are followed, as training follows them; a link back into a folder on the
    way down (a loop) is refused."""
    files: list[Path] = []
    _walk(root, root, files, ())
    return sorted(files)


def _walk(root: Path, folder: Path, files: list[Path], above: tuple[tuple[int, int], ...]) -> None:
    try:
        st = folder.stat()
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise SpecError(f"cannot read the data folder {folder}: {e.strerror}", path="data.path") from None
    here = (st.st_dev, st.st_ino)
    if here in above:
        raise SpecError(f"{folder} links back to a folder above it (a symlink loop): data cannot be pinned; "
                        f"replace the link with the files", path="data.path")
    for entry in entries:
        p = Path(entry.path)
        try:
            mode = p.stat().st_mode       # follows links: what training would open
        except OSError:
            raise SpecError(f"{p} is a symlink to nothing: data must be regular files",
                            path="data.path") from None
        if stat.S_ISDIR(mode):
            _walk(root, p, files, (*above, here))
        elif stat.S_ISREG(mode):
            files.append(p)
        else:
            raise SpecError(f"{p} is {file_kind(mode)}, in the data folder {root}: data must be "
                            f"regular files", path="data.path")


def fingerprint(path: str, workdir: Path) -> Fingerprint:
    return _fingerprint(path, resolve_data_path(path, workdir))


# Changing how files are framed changes every digest: the format is part of what is hashed.
_FORMAT = b"trainer-data-digest/2\0"


def _fingerprint(source: str, root: Path) -> Fingerprint:
    files = data_files(root) if root.is_dir() else [root]
    digest, total = hashlib.sha256(_FORMAT), 0
    for f in files:
        rel = (f.relative_to(root).as_posix() if root.is_dir() else f.name).encode("utf-8", "surrogateescape")
        # Non-blocking open + fstat: a file swapped for a FIFO since it was listed cannot hang this.
        fd = os.open(f, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SpecError(f"{f} is no longer a regular file", path="data.path")
            digest.update(len(rel).to_bytes(8, "big") + rel + st.st_size.to_bytes(8, "big"))
            read = 0
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
                read += len(block)
        if read != st.st_size:
            raise SpecError(f"{f} changed while it was being digested ({st.st_size} bytes, then {read}); "
                            f"try again once it is written", path="data.path")
        total += read
    return Fingerprint(name=root.name, source=source, digest=digest.hexdigest(), files=len(files), bytes=total)


def pin(path: str, workdir: Path, recorded: str | None) -> Path:
    """The job's data as a real path (links resolved once, here), after checking that it still
    has the digest `recorded` at submit: a JobError when it changed in between (the run records
    the data it was submitted with; training on other bytes would make that record false).
    Data inside `workdir` comes from the job's uploaded copy of the project (Ray's content-
    addressed package of it, taken at submit): it is resolved, not digested again."""
    root = resolve_data_path(path, workdir)
    if recorded is None or root.is_relative_to(Path(workdir).resolve()):
        return root
    now = _fingerprint(path, root)
    if now.digest != recorded:
        raise JobError(f"data.path {path} ({root}) changed since the job was submitted: its digest is now "
                       f"{now.digest[:12]}, the run recorded {recorded[:12]}; not training on data the run "
                       f"does not describe (submit again to train on it)")
    return root
