"""Finding installed runtimes: the venv folders, their stamps, and the torch-is-this-venv case.

Read-only and cheap: `python_for` is on the preflight hot path, so nothing here starts a
subprocess - a stat, a stamp read and a small hash. Building venvs is `install.py`'s job; the
stamp it writes last (`STAMP`) is what marks a venv finished here.
"""
from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from trainer.errors import RuntimeNotInstalledError
from trainer.home import repo_root, runtimes_dir
from trainer.runtimes.lock import installed_here, key_versions, lock_digest, lock_path, unmet_pins
from trainer.runtimes.table import RUNTIMES, spec_for

STAMP = ".trainer-runtime.json"   # written last: a venv without it is an unfinished install


def venv_dir(name: str) -> Path:
    return runtimes_dir() / name


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def read_stamp(venv: Path) -> dict | None:
    try:
        return json.loads((venv / STAMP).read_text())
    except (OSError, ValueError):
        return None


def write_stamp(venv: Path, stamp: dict) -> None:
    (venv / STAMP).write_text(json.dumps(stamp, indent=1))


def this_python_version() -> str:
    return ".".join(map(str, sys.version_info[:3]))


@functools.lru_cache(maxsize=None)
def this_interpreter_is(name: str) -> bool:
    """Whether the running interpreter serves runtime `name`: only `torch`, and only when it is
    the runtime's Python and satisfies every pin of the lock (the project venv is built from it)."""
    if name != "torch" or not lock_path(name).is_file():
        return False
    return f"{sys.version_info.major}.{sys.version_info.minor}" == RUNTIMES[name].python and not unmet_pins(name)


def not_installed(name: str, why: str = "is not installed") -> RuntimeNotInstalledError:
    return RuntimeNotInstalledError(f"runtime {name!r} {why}; run: trainer runtime install {name}",
                                    runtime=name)


def python_for(name: str) -> Path:
    """The interpreter of runtime `name`. No subprocess: a stat, a stamp read and a small hash."""
    spec_for(name)
    venv = venv_dir(name)
    stamp = read_stamp(venv)
    if stamp is not None and venv_python(venv).exists():
        if stamp.get("lock_sha256") != lock_digest(name):
            raise not_installed(name, f"is out of date ({lock_path(name).relative_to(repo_root())} changed)")
        return venv_python(venv)
    if this_interpreter_is(name):
        return Path(sys.executable)
    raise not_installed(name)


def path(name: str) -> Path:
    """The runtime's prefix (venv root); for a torch runtime served by this venv, `sys.prefix`."""
    return python_for(name).parent.parent


@dataclass
class RuntimeStatus:
    name: str
    installed: bool
    path: str
    lock: str                       # repo-relative lock path
    lock_sha256: str
    python: str
    versions: dict[str, str] = field(default_factory=dict)
    note: str = ""


def list_runtimes() -> list[RuntimeStatus]:
    """Every known runtime: installed?, where, which lock digest, key package versions."""
    out = []
    for name, spec in RUNTIMES.items():
        venv = venv_dir(name)
        stamp = read_stamp(venv) if venv_python(venv).exists() else None
        digest = lock_digest(name) if lock_path(name).is_file() else ""
        lock_rel = str(lock_path(name).relative_to(repo_root()))
        if stamp is not None:
            fresh = stamp.get("lock_sha256") == digest
            out.append(RuntimeStatus(name, fresh, str(venv), lock_rel, digest, stamp.get("python", ""),
                                     stamp.get("versions", {}),
                                     "" if fresh else "lock changed since install: reinstall"))
        elif this_interpreter_is(name):
            out.append(RuntimeStatus(name, True, sys.prefix, lock_rel, digest, this_python_version(),
                                     key_versions(spec, installed_here()),
                                     "the project venv (satisfies the lock)"))
        else:
            out.append(RuntimeStatus(name, False, str(venv), lock_rel, digest, spec.python))
    return out
