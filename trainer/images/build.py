"""`trainer image build`: a runtime's image from `images/<runtime>/Dockerfile` and its lock.

The Dockerfile takes the base image and the Python source as build arguments, so the CUDA base on
a real build host and the local Debian base here are one file. What the build needs only while it
runs is mounted, never copied into a layer: the host's CA bundle (TLS is intercepted on some
hosts; pip/uv inside the build need it), a pip cache (a warm rebuild does not download again),
and the host's own wheel folders (pip's find-links, e.g. the +cpu torch wheel). buildah's layer
cache (`--layers`) reuses every step up to the first changed input: a rebuild after a code change
re-runs only the project's `--no-deps` install.

Labels on the image: the lock's digest (what marks it up to date, as for a venv), the variant,
the base and the git commit it was built from.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainer.errors import ImageError, UsageError
from trainer.home import repo_root
from trainer.images import base, engine
from trainer.runtimes.lock import lock_digest, lock_path, lock_variants
from trainer.runtimes.table import spec_for

REPO = "localhost/trainer/runtime-{name}"
LABEL_RUNTIME = "io.trainer.runtime"
LABEL_VARIANT = "io.trainer.variant"
LABEL_LOCK = "io.trainer.lock.digest"
LABEL_BASE = "io.trainer.base"
LABEL_COMMIT = "io.trainer.git.commit"
LABEL_RAY = "io.trainer.ray.version"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# Where the build sees what is mounted for it (never in a layer).
CA_IN_BUILD = "/run/host-ca.crt"
PIP_CACHE_IN_BUILD = "/var/cache/trainer-build-pip"


@dataclass
class BuildReport:
    runtime: str
    variant: str
    image: str              # the tag
    image_id: str
    base: str
    lock_digest: str
    git_commit: str
    seconds: float
    base_built: bool = False
    log: str = ""
    mounts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def machine_cache() -> Path:
    """Caches every $TRAINER_HOME on this machine shares (pip's downloads for image builds)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "trainer" / "images"


def image_ref(name: str, variant: str) -> str:
    """The local tag of a runtime image: `localhost/trainer/runtime-torch:cpu-<lock digest 12>`."""
    return f"{REPO.format(name=name)}:{variant}-{lock_digest(name)[:12]}"


def git_commit(root: Path) -> str:
    proc = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    if proc.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return proc.stdout.strip() + ("-dirty" if dirty else "")


def host_wheel_sources() -> tuple[list[str], list[str]]:
    """(find-links folders, extra index URLs) of this host's pip configuration: the build mounts
    the local folders read-only at the same path and hands both to pip inside."""
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    find_links: list[str] = []
    extra: list[str] = []
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        value = value.strip().strip("'\"")
        if key.endswith("find-links"):
            find_links += value.split()
        elif key.endswith("extra-index-url"):
            extra += value.split()
    dirs = sorted({p for p in (f.removeprefix("file://") for f in find_links) if Path(p).is_dir()})
    local_index = [u for u in extra if u.startswith("file://") and Path(u[len("file://"):]).is_dir()]
    remote_index = [u for u in extra if u.startswith("https://")]
    return dirs, [*local_index, *remote_index]


def build(name: str, variant: str = "cpu", base_image: str | None = None, python_source: str | None = None,
          log_dir: Path | None = None, progress=None, no_cache: bool = False) -> BuildReport:
    """Build runtime `name`'s `variant` image. No `base_image` and the cpu variant: the local
    Debian base (made first when missing) with its python3; otherwise the Dockerfile's default
    base (the CUDA one) or `base_image`, with python-build-standalone unless `python_source`.
    `no_cache`: every step runs again (buildah's layer cache unused; the base is still reused)."""
    spec_for(name)
    root = repo_root()
    dockerfile = root / "images" / name / "Dockerfile"
    if not dockerfile.is_file():
        raise UsageError(f"runtime {name!r} has no Dockerfile at {dockerfile}")
    if variant not in lock_variants(name):
        raise UsageError(f"variant {variant!r}: {lock_path(name).name} of {name} declares "
                         f"{', '.join(sorted(lock_variants(name)))}", argument="variant")
    start = time.monotonic()
    base_built = False
    args: dict[str, str] = {"VARIANT": variant}
    if base_image is None and variant == "cpu":
        report = base.ensure_base(log_dir=log_dir, progress=progress)
        base_image, base_built = report.image, report.built
        python_source = python_source or "/usr/bin/python3"
    if base_image is not None:
        args["CUDA_IMAGE"] = base_image
    if python_source:
        args["PYTHON_SOURCE"] = python_source
    args["UV_IMAGE"] = base.ensure_uv(base.dockerfile_uv_version(dockerfile), log_dir=log_dir, progress=progress)
    mounts: list[str] = []
    if HOST_CA.is_file():
        mounts.append(f"{HOST_CA}:{CA_IN_BUILD}:ro")
        args["HOST_CA"] = CA_IN_BUILD
    cache = machine_cache() / "pip"
    cache.mkdir(parents=True, exist_ok=True)
    mounts.append(f"{cache}:{PIP_CACHE_IN_BUILD}")
    args["PIP_CACHE"] = PIP_CACHE_IN_BUILD
    dirs, indexes = host_wheel_sources()
    # A local simple index links its files relatively (`../files/...`): its parent goes in too.
    for d in dirs + [str(Path(u[len("file://"):]).parent) for u in indexes if u.startswith("file://")]:
        mounts.append(f"{d}:{d}:ro")
    if dirs:
        args["WHEELS_FIND_LINKS"] = " ".join(dirs)
    if indexes:
        args["WHEELS_EXTRA_INDEX"] = " ".join(indexes)
    digest, commit = lock_digest(name), git_commit(root)
    ref = image_ref(name, variant)
    labels = {LABEL_LOCK: digest, LABEL_VARIANT: variant, LABEL_BASE: args.get("CUDA_IMAGE", "(Dockerfile default)"),
              LABEL_COMMIT: commit}
    log = (log_dir or machine_cache() / "logs") / f"build-{name}-{variant}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    _say(progress, f"building {ref} from images/{name}/Dockerfile (base {labels[LABEL_BASE]})")
    engine.tool("buildah", "bud", "--isolation=chroot", "--no-cache" if no_cache else "--layers", "--quiet",
                "--force-rm",  # no working container left behind, whatever the outcome
                *(["--pull=never"] if base_image and base_image.startswith("localhost/") else []),
                "-f", str(dockerfile), "-t", ref,
                *(f"--build-arg={k}={v}" for k, v in args.items()),
                *(f"--label={k}={v}" for k, v in labels.items()),
                *(f"--volume={m}" for m in mounts),
                str(root), timeout=3600, log_file=log, what=f"building the {name} image")
    image_id = engine.tool("podman", "image", "inspect", "--format", "{{.Id}}", ref).strip()
    return BuildReport(name, variant, ref, image_id, labels[LABEL_BASE], digest, commit,
                       time.monotonic() - start, base_built, str(log), mounts)


def _say(progress, text: str) -> None:
    if progress is not None:
        progress(text)
