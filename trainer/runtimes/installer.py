"""`install(name)`: build runtime `name`'s venv from its lock file (idempotent).

The venv lives at `runtimes_dir()/<name>`; this repo's `trainer` and `converters` go on its path
as symlinks (`PROJECT_LINKS`) named by a `.pth` file, without their dependencies - the lock already
holds everything a worker needs. The stamp (see `venvs.py`) is written last, so a venv without it
is an unfinished install.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from trainer.errors import RuntimeNotInstalledError
from trainer.home import repo_root
from trainer.runtimes.lock import installed_here, key_versions, lock_digest, lock_path, normalize, parse_lock
from trainer.runtimes.table import RuntimeSpec, spec_for
from trainer.runtimes.venvs import (
    STAMP, read_stamp, this_interpreter_is, this_python_version, venv_dir, venv_python, write_stamp,
)

PTH = "trainer-repo.pth"          # puts PROJECT_LINKS on sys.path in the runtime
PROJECT_LINKS = "trainer-src"     # <venv>/trainer-src/{trainer,converters} -> this checkout


@dataclass
class InstallReport:
    name: str
    action: str                     # "created" | "synced" | "unchanged" | "project-venv"
    path: str
    python: str
    lock_sha256: str
    seconds: float
    versions: dict[str, str] = field(default_factory=dict)
    packages: int = 0               # distributions in the venv
    log: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def install(name: str, force: bool = False, *, echo: Callable[[str], None] | None = None) -> InstallReport:
    """Build `runtimes_dir()/<name>` from `images/<name>/requirements.lock` (idempotent).

    Skips the work when the venv's stamp holds the lock's sha256 (unless `force`). For `torch`,
    when this interpreter already satisfies the lock, nothing is built: the project venv is
    the runtime. `echo` (a callable taking one line) receives progress lines.
    """
    spec = spec_for(name)
    digest = lock_digest(name)
    venv = venv_dir(name)
    t0 = time.monotonic()
    stamp = read_stamp(venv)
    if not force:
        done = _unchanged(spec, venv, stamp, digest) or _served_by_this_interpreter(spec, digest)
        if done is not None:
            done.seconds = time.monotonic() - t0
            return done

    base = _base_python(spec.python)   # before anything is removed: no Python, no change
    sync = not force and _can_sync(spec, venv, stamp)
    _make_room(venv, sync)
    with _Steps(name, venv.parent / f"{name}.install.log", echo) as step:
        if not sync:
            step(f"creating venv {venv} with {base}", [str(base), "-m", "venv", str(venv)])
        py = str(venv_python(venv))
        _install_lock(step, py, name)
        if sync:
            _drop_packages_not_in_lock(step, py, name, stamp)
        _link_project(venv, _site_packages(step, py))
        _check_imports(step, py, spec)
        freeze = _freeze(step, py)

    versions = key_versions(spec, {normalize(ln.split("==")[0]): ln.split("==")[1] for ln in freeze})
    py_version = _python_version_of(py)
    write_stamp(venv, {
        "name": name, "lock": str(lock_path(name)), "lock_sha256": digest, "python": py_version,
        "base_python": str(base), "versions": versions, "freeze": freeze,
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    return InstallReport(name, "synced" if sync else "created", str(venv), py_version, digest,
                         time.monotonic() - t0, versions, len(freeze), str(step.log_path))


# -- nothing to build ---------------------------------------------------------------------------

def _unchanged(spec: RuntimeSpec, venv: Path, stamp: dict | None, digest: str) -> InstallReport | None:
    """The finished venv was built from this very lock."""
    if stamp and stamp.get("lock_sha256") == digest and venv_python(venv).exists():
        return InstallReport(spec.name, "unchanged", str(venv), stamp.get("python", ""), digest, 0.0,
                             stamp.get("versions", {}), len(stamp.get("freeze", [])))
    return None


def _served_by_this_interpreter(spec: RuntimeSpec, digest: str) -> InstallReport | None:
    """The torch runtime is the project venv when that satisfies the lock."""
    if not this_interpreter_is(spec.name):
        return None
    here = installed_here()
    return InstallReport(spec.name, "project-venv", sys.prefix, this_python_version(), digest, 0.0,
                         key_versions(spec, here), len(here))


# -- making room ----------------------------------------------------------------------------------

def _can_sync(spec: RuntimeSpec, venv: Path, stamp: dict | None) -> bool:
    """A finished earlier install on the same Python is synced to the new lock in place (only what
    changed is installed); anything else (half-built, other Python) is rebuilt from scratch."""
    return (stamp is not None and venv_python(venv).exists()
            and stamp.get("python", "").startswith(spec.python + "."))


def _make_room(venv: Path, sync: bool) -> None:
    venv.parent.mkdir(parents=True, exist_ok=True)
    if sync:
        (venv / STAMP).unlink()      # unfinished until the new stamp is written
    elif venv.exists():
        shutil.rmtree(venv)


# -- the steps ------------------------------------------------------------------------------------

class _Steps:
    """Runs install steps as subprocesses: announces each (`echo`), appends its command and output
    to the install log, and turns a failure into one line naming the step and the log."""

    def __init__(self, name: str, log_path: Path, echo: Callable[[str], None] | None):
        self.name = name
        self.log_path = log_path
        self.say = echo or (lambda _line: None)
        self._log = None

    def __enter__(self) -> _Steps:
        self._log = open(self.log_path, "w")
        return self

    def __exit__(self, *exc) -> None:
        self._log.close()

    def __call__(self, what: str, cmd: list[str], **kw) -> str:
        self.say(what)
        self._log.write(f"$ {' '.join(cmd)}\n")
        self._log.flush()
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
        self._log.write(done.stdout)
        self._log.flush()
        if done.returncode != 0:
            last = [ln for ln in done.stdout.splitlines() if ln.strip()][-1:] or ["(no output)"]
            raise RuntimeNotInstalledError(
                f"runtime {self.name!r}: {what} failed: {last[0].strip()} (full log: {self.log_path})",
                runtime=self.name)
        return done.stdout


def _install_lock(step: _Steps, py: str, name: str) -> None:
    # No `-U pip`: pip is whatever the base interpreter ships; the lock decides the rest.
    lock = lock_path(name)
    step(f"installing {lock.relative_to(repo_root())} ({len(parse_lock(lock))} pins)",
         [py, "-m", "pip", "install", "--disable-pip-version-check", "-r", str(lock)])


def _drop_packages_not_in_lock(step: _Steps, py: str, name: str, stamp: dict) -> None:
    pins = parse_lock(lock_path(name))
    extra = [ln.split("==")[0] for ln in stamp.get("freeze", []) if normalize(ln.split("==")[0]) not in pins]
    if extra:
        step(f"removing {len(extra)} package(s) no longer in the lock",
             [py, "-m", "pip", "uninstall", "-y", *extra])


def _site_packages(step: _Steps, py: str) -> Path:
    out = step("locating site-packages", [py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    return Path(out.strip().splitlines()[-1])


def _link_project(venv: Path, purelib: Path) -> None:
    """Make this checkout's `trainer` and `converters` importable in the venv, deps not included.

    Not `pip install -e .` (it would resolve the core's version ranges over the lock's pins),
    and not the repo root on sys.path (its `trainer.egg-info` would show up as an installed
    distribution whose deps `pip check` then judges): a folder of symlinks to the two packages.
    """
    src = venv / PROJECT_LINKS
    src.mkdir(exist_ok=True)
    for package in ("trainer", "converters"):
        link = src / package
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(repo_root() / package, target_is_directory=True)
    (purelib / PTH).write_text(f"{src}\n")


def _check_imports(step: _Steps, py: str, spec: RuntimeSpec) -> None:
    step("checking imports", [py, "-c", "; ".join(f"import {m}" for m in spec.import_check)],
         env={**os.environ, "PYTHONNOUSERSITE": "1"})


def _freeze(step: _Steps, py: str) -> list[str]:
    """`name==version` of every distribution in the venv."""
    out = step("recording versions", [py, "-m", "pip", "freeze", "--disable-pip-version-check"])
    return [ln.strip() for ln in out.split("\n") if "==" in ln]


def _python_version_of(py: str) -> str:
    return subprocess.run([py, "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True).stdout.strip()


# -- the base interpreter -------------------------------------------------------------------------

def _base_python(want: str) -> Path:
    """A real (non-venv) Python `want` to create the venv from.

    This interpreter's base when it is that version (a venv's `sys._base_executable`), else
    `pythonX.Y` on PATH, else `uv python find X.Y`.
    """
    if f"{sys.version_info.major}.{sys.version_info.minor}" == want:
        base = Path(getattr(sys, "_base_executable", "") or sys.executable)
        if base.exists():
            return base
    found = shutil.which(f"python{want}")
    if found:
        return Path(found)
    uv = shutil.which("uv")
    if uv:
        done = subprocess.run([uv, "python", "find", want], capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip():
            return Path(done.stdout.strip())
    raise RuntimeNotInstalledError(
        f"no Python {want} found to build runtimes (not this interpreter, not python{want} on PATH, "
        f"not `uv python find {want}`); install Python {want}, e.g. `uv python install {want}`")
