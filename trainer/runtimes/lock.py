"""Lock files (`images/<name>/requirements.lock`) and what this interpreter has installed.

A lock is read the way pip reads a fully pinned requirements file, reduced to what trainer needs:
`name==version` pins keyed by normalized distribution name. One parser for every reader (the
runtime installer, the torch-is-this-venv check, preflight's GPU check, the Dockerfiles, tests):
`lockfile.py`, stdlib only so an image build can run it before installing anything. A lock's
base is what the local venv installs; its variants (`#@gpu ...`) are the images' other builds.
"""
from __future__ import annotations

import functools
from pathlib import Path

from trainer.errors import UsageError
from trainer.home import repo_root
from trainer.runtimes import lockfile
from trainer.runtimes.lockfile import normalize
from trainer.runtimes.table import RuntimeSpec, spec_for

GPU = "gpu"


def lock_path(name: str) -> Path:
    """The one lock file a runtime is built from - by `install` here and by its Dockerfile."""
    spec_for(name)
    return repo_root() / "images" / name / "requirements.lock"


def lock_digest(name: str) -> str:
    lock = lock_path(name)
    if not lock.is_file():
        raise UsageError(f"runtime {name!r} has no lock file at {lock}; restore it from git")
    # The base only: a variant's lines never invalidate an installed venv.
    return lockfile.digest(lock.read_text())


def lock_variants(name: str) -> set[str]:
    """The builds runtime `name`'s lock declares: always "cpu" (the base), "gpu" when its image
    has a GPU build. A missing lock declares none."""
    lock = lock_path(name)
    return lockfile.variants(lock.read_text()) if lock.is_file() else set()


def parse_lock(lock: Path, variant: str = lockfile.BASE) -> dict[str, str]:
    """`name==version` pins of a lock file's `variant` (default: the base the venv installs),
    keyed by normalized name.

    Comments (whole-line and trailing), option lines (`-r`, `--extra-index-url`, ...), blank and
    unpinned lines are skipped; extras (`ray[train]`) and environment markers (`; python_version...`)
    are dropped from the pin.
    """
    return lockfile.pins(lock.read_text(), variant)


def version_matches(installed: str, pinned: str) -> bool:
    # PEP 440: `==2.13.0` matches `2.13.0+cpu`; a pin with a local label must match exactly.
    if installed == pinned:
        return True
    return "+" not in pinned and installed.split("+", 1)[0] == pinned


def key_versions(spec: RuntimeSpec, installed: dict[str, str]) -> dict[str, str]:
    """The versions of `spec.key_packages` found in `installed` (normalized name -> version)."""
    return {p: installed[normalize(p)] for p in spec.key_packages if normalize(p) in installed}


@functools.lru_cache(maxsize=1)
def installed_here() -> dict[str, str]:
    """Distributions of the running interpreter: normalized name -> version (first one wins)."""
    from importlib import metadata
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(normalize(name), dist.version)
    return found


def unmet_pins(name: str) -> list[str]:
    """Pins of `name`'s lock that the running interpreter does not satisfy (empty = satisfied)."""
    here = installed_here()
    return [f"{dist}=={ver} (have {here.get(dist, 'none')})"
            for dist, ver in parse_lock(lock_path(name)).items()
            if not version_matches(here.get(dist, ""), ver)]
