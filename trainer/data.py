"""Content digest of a job's data, recorded as the MLflow run's dataset.

The digest covers relative paths and bytes of every file, so renaming or editing any file
changes it, and it does not depend on where the data lives or on file times.
"""
from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import SpecError
from trainer.spec import PACKAGE_SCHEME


@dataclass(frozen=True)
class Fingerprint:
    name: str
    source: str
    digest: str       # sha256 hex
    files: int
    bytes: int


def resolve_data_path(path: str, workdir: Path) -> Path:
    """A spec's data.path as an absolute path (package:// resolves inside the installed package)."""
    if path.startswith(PACKAGE_SCHEME):
        module, _, rel = path[len(PACKAGE_SCHEME):].partition("/")
        # Locate the top-level package without importing it (importing sklearn costs seconds).
        top, *subpackages = module.split(".")
        spec = importlib.util.find_spec(top) if top else None
        if spec is None or not spec.submodule_search_locations:
            raise SpecError(f"package {module!r} is not installed (from {path})", path="data.path")
        resolved = Path(list(spec.submodule_search_locations)[0]).joinpath(*subpackages) / rel
    else:
        resolved = (workdir / path).resolve()
    if not resolved.exists():
        raise SpecError(f"no such file or folder: {resolved}", path="data.path")
    return resolved


def fingerprint(path: str, workdir: Path) -> Fingerprint:
    root = resolve_data_path(path, workdir)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    digest, total = hashlib.sha256(), 0
    for f in files:
        rel = f.relative_to(root).as_posix() if root.is_dir() else f.name
        digest.update(rel.encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
                total += len(block)
        digest.update(b"\0")
    return Fingerprint(name=root.name, source=path, digest=digest.hexdigest(), files=len(files), bytes=total)
