"""Lock files (`images/<name>/requirements.lock`) and what this interpreter has installed.

A lock is read the way pip reads a fully pinned requirements file, reduced to what trainer needs:
`name==version` pins keyed by normalized distribution name. One parser for every reader (the
runtime installer, the torch-is-this-venv check, the tensorflow runner's CPU-only check, tests).
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from trainer.errors import UsageError
from trainer.home import repo_root
from trainer.runtimes.table import RuntimeSpec, spec_for


def lock_path(name: str) -> Path:
    """The one lock file a runtime is built from - by `install` here and by its Dockerfile."""
    spec_for(name)
    return repo_root() / "images" / name / "requirements.lock"


def lock_digest(name: str) -> str:
    lock = lock_path(name)
    if not lock.is_file():
        raise UsageError(f"runtime {name!r} has no lock file at {lock}; restore it from git")
    return hashlib.sha256(lock.read_bytes()).hexdigest()


def parse_lock(lock: Path) -> dict[str, str]:
    """`name==version` pins of a lock file, keyed by normalized name.

    Comments (whole-line and trailing), option lines (`-r`, `--extra-index-url`, ...), blank and
    unpinned lines are skipped; extras (`ray[train]`) and environment markers (`; python_version...`)
    are dropped from the pin.
    """
    pins: dict[str, str] = {}
    for raw in lock.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-") or "==" not in line:
            continue
        req, _, ver = line.partition("==")
        req = req.split("[", 1)[0].split(";", 1)[0].strip()
        pins[normalize(req)] = ver.split(";", 1)[0].strip()
    return pins


def normalize(dist: str) -> str:
    """A distribution name as pins and installed-package maps are keyed (`Foo_Bar.x` -> `foo-bar-x`)."""
    return dist.lower().replace("_", "-").replace(".", "-")


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
