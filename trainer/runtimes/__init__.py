"""Per-framework runtimes: one venv per framework, built from the same lock file its image uses.

A runtime is `$TRAINER_RUNTIMES/<name>` (default `~/.trainer/runtimes/<name>`), a venv made
from `images/<name>/requirements.lock` - the file `images/<name>/Dockerfile` installs too, so a
laptop and a cluster pod run the same versions. This repo's `trainer` and `converters`
packages are put on the venv's path (symlinks + a `.pth` file), without their dependencies: the lock
already holds everything a worker needs.

Code that needs another framework runs `python_for(name) -m <module>` as a subprocess; the
main process never imports tensorflow or mxnet.

The `torch` runtime is special: the project's own venv (`.venv`, set up from
`images/torch/requirements.lock`) is used as is when it satisfies that lock.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trainer.errors import RuntimeNotInstalledError, UnknownNameError, UsageError
from trainer.home import repo_root, runtimes_dir

__all__ = [
    "RUNTIMES", "RuntimeSpec", "RuntimeStatus", "InstallReport",
    "lock_path", "lock_digest", "python_for", "path", "install", "list_runtimes", "list",
]


@dataclass(frozen=True)
class RuntimeSpec:
    name: str
    python: str                       # major.minor the venv (and the image) is built on
    key_packages: tuple[str, ...]     # shown by `trainer runtime list`
    import_check: tuple[str, ...]     # modules that must import after an install


RUNTIMES: dict[str, RuntimeSpec] = {
    "torch": RuntimeSpec("torch", "3.11", ("torch", "ray", "mlflow", "numpy", "onnx", "onnxruntime"),
                         ("torch", "ray", "mlflow", "trainer")),
    "tensorflow": RuntimeSpec("tensorflow", "3.11",
                              ("tensorflow", "tensorflow-cpu", "keras", "ray", "mlflow", "numpy", "tf2onnx"),
                              ("tensorflow", "ray", "mlflow", "trainer")),
    # mxnet 1.9.1 needs numpy < 1.24 (np.bool) and MMdnn needs Python <= 3.11.
    "mxnet": RuntimeSpec("mxnet", "3.11", ("mxnet", "numpy", "ray", "mlflow-skinny", "mlflow", "onnx",
                                           "onnxruntime", "mmdnn", "protobuf"),
                         ("mxnet", "mmdnn", "onnx", "onnxruntime", "ray", "mlflow", "trainer", "converters")),
}

STAMP = ".trainer-runtime.json"   # written last: a venv without it is an unfinished install
PTH = "trainer-repo.pth"          # puts PROJECT_LINKS on sys.path in the runtime
PROJECT_LINKS = "trainer-src"     # <venv>/trainer-src/{trainer,converters} -> this checkout


def _spec(name: str) -> RuntimeSpec:
    try:
        return RUNTIMES[name]
    except KeyError:
        raise UnknownNameError("runtime", name, sorted(RUNTIMES)) from None


def lock_path(name: str) -> Path:
    """The one lock file a runtime is built from - by `install` here and by its Dockerfile."""
    _spec(name)
    return repo_root() / "images" / name / "requirements.lock"


def lock_digest(name: str) -> str:
    lock = lock_path(name)
    if not lock.is_file():
        raise UsageError(f"runtime {name!r} has no lock file at {lock}; restore it from git")
    return hashlib.sha256(lock.read_bytes()).hexdigest()


def _venv_dir(name: str) -> Path:
    return runtimes_dir() / name


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _read_stamp(venv: Path) -> dict | None:
    try:
        return json.loads((venv / STAMP).read_text())
    except (OSError, ValueError):
        return None


def _not_installed(name: str, why: str = "is not installed") -> RuntimeNotInstalledError:
    return RuntimeNotInstalledError(f"runtime {name!r} {why}; run: trainer runtime install {name}",
                                    runtime=name)


# -- the torch runtime may be this very interpreter -------------------------------------------

def _parse_lock(lock: Path) -> dict[str, str]:
    """`name==version` pins of a lock file (comments, options and blank lines skipped)."""
    pins: dict[str, str] = {}
    for raw in lock.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-") or "==" not in line:
            continue
        req, _, ver = line.partition("==")
        req = req.split("[", 1)[0].split(";", 1)[0].strip()
        pins[_norm(req)] = ver.split(";", 1)[0].strip()
    return pins


def _norm(dist: str) -> str:
    return dist.lower().replace("_", "-").replace(".", "-")


@functools.lru_cache(maxsize=1)
def _installed_here() -> dict[str, str]:
    from importlib import metadata
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(_norm(name), dist.version)
    return found


def _version_matches(installed: str, pinned: str) -> bool:
    # PEP 440: `==2.13.0` matches `2.13.0+cpu`; a pin with a local label must match exactly.
    if installed == pinned:
        return True
    return "+" not in pinned and installed.split("+", 1)[0] == pinned


def unmet_pins(name: str) -> list[str]:
    """Pins of `name`'s lock that the running interpreter does not satisfy (empty = satisfied)."""
    here = _installed_here()
    return [f"{dist}=={ver} (have {here.get(dist, 'none')})"
            for dist, ver in _parse_lock(lock_path(name)).items()
            if not _version_matches(here.get(dist, ""), ver)]


@functools.lru_cache(maxsize=None)
def _this_interpreter_is(name: str) -> bool:
    if name != "torch" or not lock_path(name).is_file():
        return False
    return f"{sys.version_info.major}.{sys.version_info.minor}" == RUNTIMES[name].python and not unmet_pins(name)


# -- public API ---------------------------------------------------------------------------------

def python_for(name: str) -> Path:
    """The interpreter of runtime `name`. No subprocess: a stat, a stamp read and a small hash."""
    _spec(name)
    venv = _venv_dir(name)
    stamp = _read_stamp(venv)
    if stamp is not None and _venv_python(venv).exists():
        if stamp.get("lock_sha256") != lock_digest(name):
            raise _not_installed(name, f"is out of date ({lock_path(name).relative_to(repo_root())} changed)")
        return _venv_python(venv)
    if _this_interpreter_is(name):
        return Path(sys.executable)
    raise _not_installed(name)


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
        venv = _venv_dir(name)
        stamp = _read_stamp(venv) if _venv_python(venv).exists() else None
        digest = lock_digest(name) if lock_path(name).is_file() else ""
        lock_rel = str(lock_path(name).relative_to(repo_root()))
        if stamp is not None:
            fresh = stamp.get("lock_sha256") == digest
            out.append(RuntimeStatus(name, fresh, str(venv), lock_rel, digest, stamp.get("python", ""),
                                     stamp.get("versions", {}),
                                     "" if fresh else "lock changed since install: reinstall"))
        elif _this_interpreter_is(name):
            here = _installed_here()
            out.append(RuntimeStatus(name, True, sys.prefix, lock_rel, digest, _py_version(),
                                     {p: here[_norm(p)] for p in spec.key_packages if _norm(p) in here},
                                     "the project venv (satisfies the lock)"))
        else:
            out.append(RuntimeStatus(name, False, str(venv), lock_rel, digest, spec.python))
    return out


list = list_runtimes  # noqa: A001 - `trainer.runtimes.list()` reads like the CLI command


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


def install(name: str, force: bool = False, *, echo=None) -> InstallReport:
    """Build `runtimes_dir()/<name>` from `images/<name>/requirements.lock` (idempotent).

    Skips the work when the venv's stamp holds the lock's sha256 (unless `force`). For `torch`,
    when this interpreter already satisfies the lock, nothing is built: the project venv is
    the runtime. `echo` (a callable taking one line) receives progress lines.
    """
    spec = _spec(name)
    say = echo or (lambda _line: None)
    digest = lock_digest(name)
    lock = lock_path(name)
    venv = _venv_dir(name)
    t0 = time.monotonic()

    stamp = _read_stamp(venv)
    if not force and stamp and stamp.get("lock_sha256") == digest and _venv_python(venv).exists():
        return InstallReport(name, "unchanged", str(venv), stamp.get("python", ""), digest,
                             time.monotonic() - t0, stamp.get("versions", {}), len(stamp.get("freeze", [])))
    if name == "torch" and not force and _this_interpreter_is(name):
        here = _installed_here()
        return InstallReport(name, "project-venv", sys.prefix, _py_version(), digest, time.monotonic() - t0,
                             {p: here[_norm(p)] for p in spec.key_packages if _norm(p) in here}, len(here))

    base = _base_python(spec.python)
    venv.parent.mkdir(parents=True, exist_ok=True)
    # A finished earlier install (stamp present, same Python) is synced to the new lock in
    # place - only what changed is installed; anything else (half-built, forced) is rebuilt.
    sync = (not force and stamp is not None and _venv_python(venv).exists()
            and stamp.get("python", "").startswith(spec.python + "."))
    if venv.exists() and not sync:
        shutil.rmtree(venv)
    if sync:
        (venv / STAMP).unlink()
    log_path = venv.parent / f"{name}.install.log"
    with open(log_path, "w") as log:
        def step(what: str, cmd: list[str], **kw) -> str:
            say(what)
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
            log.write(done.stdout)
            log.flush()
            if done.returncode != 0:
                last = [ln for ln in done.stdout.splitlines() if ln.strip()][-1:] or ["(no output)"]
                raise RuntimeNotInstalledError(
                    f"runtime {name!r}: {what} failed: {last[0].strip()} (full log: {log_path})", runtime=name)
            return done.stdout

        if not sync:
            step(f"creating venv {venv} with {base}", [str(base), "-m", "venv", str(venv)])
        py = str(_venv_python(venv))
        # No `-U pip`: pip is whatever the base interpreter ships; the lock decides the rest.
        step(f"installing {lock.relative_to(repo_root())} ({len(_parse_lock(lock))} pins)",
             [py, "-m", "pip", "install", "--disable-pip-version-check", "-r", str(lock)])
        if sync:   # drop what the lock no longer lists
            pins = _parse_lock(lock)
            extra = [ln.split("==")[0] for ln in stamp.get("freeze", []) if _norm(ln.split("==")[0]) not in pins]
            if extra:
                step(f"removing {len(extra)} package(s) no longer in the lock",
                     [py, "-m", "pip", "uninstall", "-y", *extra])
        purelib = step("locating site-packages",
                       [py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).strip().splitlines()[-1]
        _link_project(venv, Path(purelib))
        step("checking imports", [py, "-c", "; ".join(f"import {m}" for m in spec.import_check)],
             env={**os.environ, "PYTHONNOUSERSITE": "1"})
        freeze = step("recording versions", [py, "-m", "pip", "freeze", "--disable-pip-version-check"]).split("\n")
    freeze = [ln.strip() for ln in freeze if "==" in ln]
    pins = {_norm(ln.split("==")[0]): ln.split("==")[1] for ln in freeze}
    versions = {p: pins[_norm(p)] for p in spec.key_packages if _norm(p) in pins}
    py_version = subprocess.run([py, "-c", "import platform; print(platform.python_version())"],
                                capture_output=True, text=True).stdout.strip()
    (venv / STAMP).write_text(json.dumps({
        "name": name, "lock": str(lock), "lock_sha256": digest, "python": py_version,
        "base_python": str(base), "versions": versions, "freeze": freeze,
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }, indent=1))
    return InstallReport(name, "synced" if sync else "created", str(venv), py_version, digest, time.monotonic() - t0,
                         versions, len(freeze), str(log_path))


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


def _py_version() -> str:
    return ".".join(map(str, sys.version_info[:3]))


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
