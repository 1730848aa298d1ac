"""Provision the emulated aarch64 machine that edge bundles are checked on.

The "machine" is a folder, `runtimes_dir()/edge-aarch64`: Debian's arm64 python3.11 and the
arm64 libraries it needs, unpacked with `dpkg -x` from `apt-get download`, plus aarch64 wheels
of numpy and onnxruntime in `site/`. `qemu-aarch64-static -L <root>` runs it on x86 without
binfmt_misc or a chroot (CI containers often have neither).

onnxruntime is pinned: 1.27.0 imports and runs under Debian 12's qemu 7.2; 1.28.0 and newer
segfault on import there (checked again for 1.28.0 and 1.32.0). The same holds for the optional
ai-edge-litert (`--tflite`): 1.4.0 runs, 2.3.0 segfaults when a model is invoked.

    trainer edge setup            # or: python -m converters.edge.setup
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from trainer.errors import RuntimeNotInstalledError, TrainerError
from trainer.home import runtimes_dir

ONNXRUNTIME_VERSION = "1.27.0"
NUMPY_VERSION = "2.4.6"
# Optional, for .tflite bundles: 1.4.0 runs under qemu 7.2; 2.3.0 segfaults on invoke there.
LITERT_VERSION = "1.4.0"
PYTHON = "python3.11"
WHEEL_PLATFORM = "manylinux_2_28_aarch64"
# pip takes exactly the --platform tags it is given; Debian 12's glibc 2.36 runs all of these
# (ai-edge-litert's cp311 aarch64 wheels are manylinux_2_17 only).
WHEEL_PLATFORMS = (WHEEL_PLATFORM, "manylinux_2_27_aarch64", "manylinux_2_17_aarch64",
                   "manylinux2014_aarch64")
# Roots of the arm64 package closure; apt-cache resolves the rest (libc6, libssl3, libffi8, ...).
ROOT_PACKAGES = ("python3.11-minimal", "libpython3.11-stdlib", "libstdc++6", "zlib1g")
# From the closure we unpack only shared libraries and Python itself: dpkg, tar, perl and
# friends come in as Pre-Depends of the libraries but are never executed.
KEEP_PREFIXES = ("lib", "zlib", "python3.11", "gcc-")
QEMU_BINARIES = ("qemu-aarch64-static", "qemu-aarch64")
QEMU_INSTALL = "apt-get update && apt-get install -y qemu-user-static"
STAMP = "trainer-edge.json"
SETUP_HINT = "run: trainer edge setup"


def edge_root() -> Path:
    return runtimes_dir() / "edge-aarch64"


def find_qemu() -> Path | None:
    for name in QEMU_BINARIES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def require_qemu() -> Path:
    qemu = find_qemu()
    if qemu is None:
        raise RuntimeNotInstalledError(f"qemu-user-static is not installed; run as root: {QEMU_INSTALL}")
    return qemu


def read_stamp(root: Path | None = None) -> dict | None:
    """What a finished setup recorded, or None when the root is missing or half-built."""
    try:
        return json.loads(((root or edge_root()) / STAMP).read_text())
    except (OSError, ValueError):
        return None


def require_root() -> Path:
    """The provisioned root, or RuntimeNotInstalledError saying how to provision it."""
    root = edge_root()
    stamp = read_stamp(root)
    if stamp is None:
        raise RuntimeNotInstalledError(f"the arm64 root for edge runs is missing ({root}); {SETUP_HINT}")
    if stamp.get("onnxruntime") != ONNXRUNTIME_VERSION:
        raise RuntimeNotInstalledError(
            f"the arm64 root at {root} has onnxruntime {stamp.get('onnxruntime')}, this trainer "
            f"pins {ONNXRUNTIME_VERSION}; run: trainer edge setup --force")
    return root


def _run(cmd: list[str], cwd: Path | None = None, what: str = "", env: dict | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                          env=env or {**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeNotInstalledError(f"{what or cmd[0]} failed: `{' '.join(cmd)}`: {tail[0]}")
    return proc.stdout


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


class _Steps:
    """One line per finished step, through the caller's `echo` (the CLI prints them; a library
    caller may pass nothing)."""

    def __init__(self, echo: Callable[[str], None] | None):
        self.echo = echo or (lambda _line: None)
        self.done: list[str] = []

    def run(self, title: str, fn, *args):
        t0 = time.perf_counter()
        result = fn(*args)
        self.echo(f"{title} ({time.perf_counter() - t0:.1f} s)")
        self.done.append(title)
        return result

    def note(self, text: str):
        self.echo(text)
        self.done.append(text)


def _ensure_qemu() -> Path:
    qemu = find_qemu()
    if qemu is not None:
        return qemu
    if not (_is_root() and shutil.which("apt-get")):
        raise RuntimeNotInstalledError(f"qemu-user-static is not installed; run as root: {QEMU_INSTALL}")
    _run(["apt-get", "update"], what="apt-get update")
    _run(["apt-get", "install", "-y", "qemu-user-static"], what="installing qemu-user-static")
    return require_qemu()


def _ensure_arm64_lists():
    """dpkg must know arm64 and apt must have its package lists before we can download."""
    for tool in ("dpkg", "apt-get", "apt-cache"):
        if not shutil.which(tool):
            raise RuntimeNotInstalledError(f"`{tool}` not found: the arm64 root is built from Debian "
                                           "packages, run trainer edge setup on Debian/Ubuntu")
    foreign = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True,
                             text=True).stdout.split()
    if "arm64" not in foreign:
        if not _is_root():
            raise RuntimeNotInstalledError("dpkg does not know arm64; run as root: dpkg "
                                           "--add-architecture arm64 && apt-get update")
        _run(["dpkg", "--add-architecture", "arm64"], what="dpkg --add-architecture arm64")
    probe = subprocess.run(["apt-cache", "show", f"{PYTHON}-minimal:arm64"], capture_output=True)
    if probe.returncode != 0:
        if not _is_root():
            raise RuntimeNotInstalledError("apt has no arm64 package lists; run as root: apt-get update")
        _run(["apt-get", "update"], what="apt-get update")


def arm64_packages() -> list[str]:
    """The arm64 closure of ROOT_PACKAGES (shared libraries and python only), from apt-cache."""
    out = _run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances",
                *(f"{p}:arm64" for p in ROOT_PACKAGES)], what="apt-cache depends")
    names = {line.strip() for line in out.splitlines() if line and not line.startswith(" ")}
    return sorted(n for n in names
                  if n.endswith(":arm64") and not n.startswith("<") and n.startswith(KEEP_PREFIXES))


def _download_and_unpack(packages: list[str], work: Path, root: Path) -> list[str]:
    debs = work / "debs"
    debs.mkdir(parents=True)
    # The sandbox user `_apt` cannot write into root-owned temp folders.
    sandbox = ["-o", "APT::Sandbox::User=root"] if _is_root() else []
    _run(["apt-get", "download", *sandbox, *packages], cwd=debs, what="apt-get download")
    files = sorted(debs.glob("*.deb"))
    for deb in files:
        _run(["dpkg", "-x", str(deb), str(root)], what=f"dpkg -x {deb.name}")
    shutil.rmtree(debs)
    return [f.name for f in files]


def _install_wheels(site: Path, extra: list[str]):
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
          "--no-warn-conflicts", "--target", str(site),
          *(arg for tag in WHEEL_PLATFORMS for arg in ("--platform", tag)),
          "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
          "--only-binary=:all:", f"numpy=={NUMPY_VERSION}", f"onnxruntime=={ONNXRUNTIME_VERSION}",
          *extra], what="pip install (aarch64 wheels)")


def python_command(root: Path, cpu: str, qemu: Path | None = None) -> tuple[list[str], dict]:
    """argv prefix and environment that start the arm64 python under qemu with `-cpu cpu`."""
    qemu = qemu or require_qemu()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
           "PYTHONHOME": str(root / "usr"), "PYTHONPATH": str(root / "site"),
           "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return [str(qemu), "-cpu", cpu, "-L", str(root), str(root / "usr" / "bin" / PYTHON)], env


def _smoke_test(root: Path, qemu: Path) -> dict:
    """Import both wheels under an emulated Cortex-A72: the step that breaks on a bad ORT."""
    argv, env = python_command(root, "cortex-a72", qemu)
    code = ("import json, platform, numpy, onnxruntime; print(json.dumps({'machine': "
            "platform.machine(), 'python': platform.python_version(), 'numpy': numpy.__version__, "
            "'onnxruntime': onnxruntime.__version__}))")
    proc = subprocess.run([*argv, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeNotInstalledError(
            f"the arm64 python failed to import numpy/onnxruntime under qemu (exit {proc.returncode}): "
            f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def setup_edge(force: bool = False, tflite: bool = False, echo: Callable[[str], None] | None = None) -> Path:
    """Build (or find) the cached arm64 root and return its path. Idempotent.

    `tflite=True` also installs the aarch64 `ai-edge-litert` wheel so bundles with `.tflite`
    models can run. Needs root only for what is missing on the host (qemu-user-static, dpkg's
    arm64 architecture); otherwise it says the exact command to run.
    """
    steps = _Steps(echo)
    root = edge_root()
    stamp = read_stamp(root)
    if stamp and not force and stamp.get("onnxruntime") == ONNXRUNTIME_VERSION \
            and (stamp.get("ai_edge_litert") == LITERT_VERSION or not tflite) and find_qemu():
        steps.note(f"arm64 root already provisioned at {root} (python {stamp.get('python')}, "
                   f"numpy {stamp.get('numpy')}, onnxruntime {stamp.get('onnxruntime')}); "
                   "nothing to do (--force rebuilds it)")
        return root

    t0 = time.perf_counter()
    qemu = steps.run("checking qemu-user-static (installing it if missing)", _ensure_qemu)
    steps.run("checking dpkg's arm64 architecture and apt lists", _ensure_arm64_lists)
    packages = steps.run("resolving the arm64 python3.11 package closure", arm64_packages)
    root.parent.mkdir(parents=True, exist_ok=True)
    work = root.parent / f".{root.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    new_root = work / "root"
    try:
        debs = steps.run(f"downloading and unpacking {len(packages)} arm64 packages",
                         _download_and_unpack, packages, work, new_root)
        extra = [f"ai-edge-litert=={LITERT_VERSION}"] if tflite else []
        steps.run(f"installing aarch64 wheels: numpy {NUMPY_VERSION}, onnxruntime "
                  f"{ONNXRUNTIME_VERSION}{f', ai-edge-litert {LITERT_VERSION}' if tflite else ''}",
                  _install_wheels, new_root / "site", extra)
        found = steps.run("importing them under qemu -cpu cortex-a72", _smoke_test, new_root, qemu)
        if tflite:
            argv, env = python_command(new_root, "cortex-a72", qemu)
            found["ai_edge_litert"] = _run([*argv, "-c", "import ai_edge_litert.interpreter as i; "
                                            "import importlib.metadata as m; print(m.version('ai-edge-litert'))"],
                                           what="importing ai_edge_litert under qemu", env=env).strip()
        stamp = {**found, "debian_packages": debs, "qemu": str(qemu),
                 "built": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (new_root / STAMP).write_text(json.dumps(stamp, indent=2))
        shutil.rmtree(root, ignore_errors=True)
        new_root.rename(root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and not f.is_symlink())
    steps.note(f"arm64 root ready at {root}: python {stamp['python']}, numpy {stamp['numpy']}, "
               f"onnxruntime {stamp['onnxruntime']}, {size / 2**20:.0f} MiB, "
               f"{time.perf_counter() - t0:.0f} s")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converters.edge.setup",
                                     description="Build the cached arm64 root for edge bundle runs.")
    parser.add_argument("--force", action="store_true", help="rebuild even if it is there")
    parser.add_argument("--tflite", action="store_true", help="also install ai-edge-litert")
    args = parser.parse_args(argv)
    try:
        print(setup_edge(force=args.force, tflite=args.tflite, echo=lambda line: print(line, file=sys.stderr)))
    except TrainerError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
