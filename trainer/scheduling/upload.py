"""What Ray uploads as a job's code (the runtime env's `working_dir`), found the way Ray 2.60's
packaging walks the folder (`ray/_private/runtime_env/packaging.py`, `_dir_travel`), so preflight
counts and names exactly what would be sent:

- the `excludes` patterns, relative to the folder; and every `.gitignore` and `.rayignore` met on
  the way down, each relative to its own folder (`.gitignore` unless
  RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1), all gitwildmatch, matched with Ray's own vendored pathspec;
- an excluded folder is not entered; a non-empty folder is not itself an entry.

Ray follows symbolic links (`is_dir()`, `is_file()` and the zip all read through them), so a link
to a folder outside the project uploads that folder, and a link to a parent folder uploads the
tree again and again. Such links are not followed here: they are returned as refusals, as are
FIFOs, sockets and devices (Ray's hashing opens every entry and would block on a FIFO).

What is sent is then zipped here, from that walk (`package`), not by Ray: Ray names a folder's
package by its content, so two jobs of one project share a package, and a node's runtime-env
agent unpacks a package once per job *environment* with `overwrite=True` (2.60,
working_dir.py `create`): the second of two jobs starting at once on a node deletes the first's
code folder under its driver and workers (FileNotFoundError in os.getcwd, imports failing). Each
job's zip carries its job id as the archive comment, so its package (named by the zip's SHA-1) is
its own while the unpacked files are the project's, byte for byte. It also sends exactly the files
preflight counted and checked, not a second walk that a link made in between could widen.
"""
from __future__ import annotations

import importlib.util
import os
import stat
import sys
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from trainer.errors import PreflightError

ENV_IGNORE_GITIGNORE = "RAY_RUNTIME_ENV_IGNORE_GITIGNORE"
_PATHSPEC_MODULE = "_trainer_ray_pathspec"


@dataclass
class Upload:
    """The files Ray would upload (relative POSIX path, bytes) and what cannot be uploaded safely."""

    files: list[tuple[str, int]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


_PATHSPEC_LOCK = threading.Lock()


def ray_pathspec():
    """Ray's vendored `pathspec` (what its packaging matches ignore patterns with), loaded from its
    file without importing ray (seconds on a loaded machine, on a path that must answer fast).
    Loaded under a lock: the module is in sys.modules before it has run, and a second thread
    (concurrent `trainer.submit` calls: benchmarks/scale.py) took it half-initialised
    ("module '_trainer_ray_pathspec' has no attribute 'PathSpec'")."""
    with _PATHSPEC_LOCK:
        return _load_ray_pathspec()


def _load_ray_pathspec():
    if _PATHSPEC_MODULE in sys.modules:
        return sys.modules[_PATHSPEC_MODULE]
    found = importlib.util.find_spec("ray")
    root = Path(list(found.submodule_search_locations)[0]) / "_private" / "thirdparty" / "pathspec"
    if not (root / "__init__.py").is_file():   # moved in another Ray: take it the slow way
        from ray._private.thirdparty import pathspec

        return pathspec
    spec = importlib.util.spec_from_file_location(_PATHSPEC_MODULE, root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[_PATHSPEC_MODULE] = module
    spec.loader.exec_module(module)
    return module


def matcher(patterns: list[str], base: Path) -> Callable[[Path], bool]:
    """True for paths (under `base`) that gitwildmatch `patterns` exclude, as Ray matches them."""
    spec = ray_pathspec().PathSpec.from_lines("gitwildmatch", patterns)
    base = base.absolute()
    return lambda p: spec.match_file(str(p.absolute().relative_to(base)))


def walk(workdir: Path, excludes: list[str]) -> Upload:
    """What Ray would upload from `workdir` given `excludes`, and what must be refused."""
    root = workdir.absolute()
    real_root = root.resolve()
    include_gitignore = os.environ.get(ENV_IGNORE_GITIGNORE, "0") != "1"
    out = Upload()

    def travel(path: Path, active: list[Callable[[Path], bool]]) -> None:
        new = _ignore_files(path, include_gitignore)
        active = active + new
        if any(m(path) for m in active):
            return
        rel = path.relative_to(root).as_posix()
        try:
            st = path.lstat()
        except OSError:
            return
        if stat.S_ISLNK(st.st_mode):
            why = _unsafe_link(path, real_root)
            if why:
                out.refused.append(f"{rel} {why}")
                return
            try:
                st = path.stat()
            except OSError:
                return          # a dangling link: Ray skips it too
        if stat.S_ISDIR(st.st_mode):
            try:
                children = sorted(path.iterdir())
            except OSError:
                return
            for child in children:
                travel(child, active)
        elif stat.S_ISREG(st.st_mode):
            out.files.append((rel, st.st_size))
        else:
            out.refused.append(f"{rel} is not a regular file or folder (a FIFO, socket or device): Ray would "
                               f"block or fail reading it")

    travel(root, [matcher(excludes, root)])
    return out


def package(workdir: Path, files: list[tuple[str, int]], dest: Path, job_id: str) -> Path:
    """Zip `files` (relative POSIX paths under `workdir`, from `walk`) into `dest`, a `.zip` that
    Ray uploads as the job's working_dir as it is. Stored, not deflated, as Ray zips a folder."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED, strict_timestamps=False) as zf:
        for rel, _ in files:
            zf.write(workdir / rel, rel)
        zf.comment = f"trainer job {job_id}".encode()
    return dest


def _ignore_files(path: Path, include_gitignore: bool) -> list[Callable[[Path], bool]]:
    """The `.gitignore` / `.rayignore` of folder `path`, as matchers relative to it."""
    found = []
    for name in (".gitignore", ".rayignore") if include_gitignore else (".rayignore",):
        ignore = path / name
        if ignore.is_file():
            try:
                lines = ignore.read_text().splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise PreflightError(f"cannot read {ignore}: {type(e).__name__}; Ray reads it to decide what to "
                                     f"upload") from None
            found.append(matcher(lines, path))
    return found


def _unsafe_link(path: Path, real_root: Path) -> str:
    """Why Ray must not follow the link `path`, or "" when it points inside the project."""
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return ""                                 # dangling or a loop of links: Ray uploads nothing
    if target != real_root and real_root not in target.parents:
        return (f"is a symlink to {target}, outside the project: Ray would upload what it points to; remove "
                f"it or list it in .gitignore/.rayignore (data.path can point outside the project)")
    if target.is_dir() and (target == path.parent.resolve() or target in path.parent.resolve().parents):
        return "is a symlink to a folder that contains it: Ray would upload the tree again and again"
    return ""
