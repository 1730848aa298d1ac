"""The local base images a build needs where no Docker Hub / ghcr.io is reachable, cached in the
machine's container storage (not under $TRAINER_HOME: every home on this machine shares them):

- `localhost/trainer/base:bookworm-<hash>`: a Debian bookworm rootfs made by mmdebstrap from the
  host's configured Debian mirror, with python3 and what the runtime images need; the mirror's
  host is rewritten out of its apt sources (deb.debian.org), so the image names no private host.
  The hash covers what goes in (suite, variant, packages): changing them makes a new base.
- `localhost/trainer/uv:<version>`: a `FROM scratch` image holding `/uv` from the uv wheel on
  PyPI, what the Dockerfiles' `COPY --from=${UV_IMAGE}` takes (ghcr.io/astral-sh/uv elsewhere).
"""
from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import ImageError
from trainer.images import engine

SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES = ("python3", "python3-venv", "ca-certificates", "libgomp1", "passwd")
# What the rootfs's apt sources say, whatever mirror built it.
PUBLIC_SOURCES = (f"deb http://deb.debian.org/debian {SUITE} main\n"
                  f"deb http://deb.debian.org/debian {SUITE}-updates main\n"
                  f"deb http://deb.debian.org/debian-security {SUITE}-security main\n")
EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*")
BASE_REPO = "localhost/trainer/base"
UV_REPO = "localhost/trainer/uv"
LABEL_BASE = "io.trainer.base.recipe"


@dataclass
class BaseReport:
    image: str
    built: bool          # false: it was in the container storage already
    seconds: float
    mirror: str = ""

    def to_dict(self) -> dict:
        return {"image": self.image, "built": self.built, "seconds": round(self.seconds, 1), "mirror": self.mirror}


def recipe() -> str:
    return f"{SUITE} {VARIANT} {','.join(PACKAGES)} excl={','.join(EXCLUDES)}"


def base_ref() -> str:
    return f"{BASE_REPO}:{SUITE}-{hashlib.sha256(recipe().encode()).hexdigest()[:12]}"


def host_mirror(sources: tuple[Path, ...] = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))) -> str:
    """The Debian mirror this host's apt uses for the main archive (deb822 `URIs:` or a one-line
    `deb URI suite ...`); the first one that is not a security archive."""
    files: list[Path] = []
    for s in sources:
        files += sorted(s.glob("*.list")) + sorted(s.glob("*.sources")) if s.is_dir() else [s] if s.is_file() else []
    for f in files:
        for line in f.read_text(errors="replace").splitlines():
            m = re.match(r"\s*(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(\S+)", line)
            if m and "security" not in m.group(1) and m.group(1).startswith(("http://", "https://", "file:/")):
                return m.group(1)
    raise ImageError("no Debian mirror found in /etc/apt/sources.list{,.d}: the base rootfs is made from "
                     "the host's Debian mirror (this needs a Debian host)")


def ensure_base(rebuild: bool = False, log_dir: Path | None = None, progress=None) -> BaseReport:
    """The Debian base image, built unless the container storage has it."""
    ref, start = base_ref(), time.monotonic()
    if not rebuild and engine.image_exists(ref):
        return BaseReport(ref, False, time.monotonic() - start)
    mirror = host_mirror()
    engine.require("mmdebstrap")
    engine.require("buildah")
    with tempfile.TemporaryDirectory(prefix="trainer-base-", dir="/var/tmp") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        sources = Path(tmp) / "sources.list"
        sources.write_text(PUBLIC_SOURCES)
        _say(progress, f"making the Debian {SUITE} rootfs from {mirror} (mmdebstrap, ~1-2 min)")
        engine.tool("mmdebstrap", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}",
                    *(f"--dpkgopt=path-exclude={p}" for p in EXCLUDES),
                    # The mirror's host out of the image: apt there points at the public archive.
                    f'--customize-hook=rm -f "$1"/etc/apt/sources.list.d/*; cp {sources} "$1"/etc/apt/sources.list',
                    "--quiet", SUITE, str(tar), f"deb {mirror} {SUITE} main",
                    timeout=1200, log_file=_log(log_dir, "base.log"), what="mmdebstrap (the base rootfs)")
        _say(progress, f"importing it as {ref}")
        _import_rootfs(tar, ref, {LABEL_BASE: recipe(), "org.opencontainers.image.title": "trainer-base",
                                  "org.opencontainers.image.description": f"Debian {SUITE} {VARIANT} + python3"})
    return BaseReport(ref, True, time.monotonic() - start, mirror)


def _import_rootfs(tar: Path, ref: str, labels: dict[str, str]) -> None:
    ctr = engine.tool("buildah", "from", "scratch", what="buildah from scratch").strip()
    try:
        engine.tool("buildah", "add", ctr, str(tar), "/", what="buildah add (the rootfs)")
        engine.tool("buildah", "config", *(f"--label={k}={v}" for k, v in labels.items()),
                    "--env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "--cmd=/bin/bash",
                    ctr, what="buildah config")
        engine.tool("buildah", "commit", "--quiet", "--rm", ctr, ref, what="buildah commit (the base)")
    except ImageError:
        subprocess.run(["buildah", "rm", ctr], capture_output=True)
        raise


# ---------------------------------------------------------------- uv

def dockerfile_uv_version(dockerfile: Path) -> str:
    """The uv version a Dockerfile's `ARG UV_IMAGE=...:<version>` pins."""
    m = re.search(r"^ARG\s+UV_IMAGE=\S+:(\d[\w.]*)\s*$", dockerfile.read_text(), re.M)
    if not m:
        raise ImageError(f"{dockerfile}: no `ARG UV_IMAGE=<image>:<version>` line to take the uv version from")
    return m.group(1)


def ensure_uv(version: str, log_dir: Path | None = None, progress=None) -> str:
    """`localhost/trainer/uv:<version>`, made from the uv wheel (pip download, this host's pip
    configuration) unless the container storage has it."""
    ref = f"{UV_REPO}:{version}"
    if engine.image_exists(ref):
        return ref
    _say(progress, f"making {ref} from the uv wheel on PyPI")
    with tempfile.TemporaryDirectory(prefix="trainer-uv-") as tmp:
        log = _log(log_dir, "uv.log")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--platform=manylinux2014_x86_64", f"uv=={version}", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            if log is not None:
                log.write_text(proc.stdout + proc.stderr)
            raise ImageError(f"pip download uv=={version} failed: "
                             f"{engine.useful_line(proc.stderr.splitlines() or ['(no output)'])[:300]}")
        wheel = next(Path(tmp).glob("uv-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            member = next((n for n in zf.namelist() if n.endswith(".data/scripts/uv")), None)
            if member is None:
                raise ImageError(f"{wheel.name} holds no uv binary (.data/scripts/uv)")
            binary = Path(tmp) / "uv"
            binary.write_bytes(zf.read(member))
            binary.chmod(0o755)
        ctr = engine.tool("buildah", "from", "scratch", what="buildah from scratch").strip()
        try:
            engine.tool("buildah", "copy", "--chmod=0755", ctr, str(binary), "/uv", what="buildah copy (uv)")
            engine.tool("buildah", "config", f"--label=org.opencontainers.image.version={version}", ctr)
            engine.tool("buildah", "commit", "--quiet", "--rm", ctr, ref, what="buildah commit (uv)")
        except ImageError:
            subprocess.run(["buildah", "rm", ctr], capture_output=True)
            raise
    return ref


def _log(log_dir: Path | None, name: str) -> Path | None:
    return log_dir / name if log_dir is not None else None


def _say(progress, text: str) -> None:
    if progress is not None:
        progress(text)
