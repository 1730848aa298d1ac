"""The runtime images in this machine's container storage, and the lock check inside one.

`check_lock` runs the image's own Python (`podman run ... python -c`) to list its installed
distributions and compares them with every pin of the lock's variant the image was built for:
the same comparison (`version_matches`) the local venv passes (`trainer.runtimes.lock`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from trainer.errors import ImageError
from trainer.images import engine
from trainer.images.build import LABEL_BASE, LABEL_COMMIT, LABEL_LOCK, LABEL_RAY, LABEL_RUNTIME, LABEL_VARIANT
from trainer.runtimes.lock import lock_path, parse_lock, version_matches
from trainer.runtimes.table import spec_for

# Installed distributions, normalized as the lock's pins are: printed as one JSON line.
_LIST_DISTS = ("import json\nfrom importlib import metadata\nout = {}\n"
               "for d in metadata.distributions():\n"
               "    n = d.metadata['Name']\n"
               "    if n: out.setdefault(n.lower().replace('_', '-').replace('.', '-'), d.version)\n"
               "print(json.dumps(out))\n")


@dataclass
class ImageRow:
    runtime: str
    variant: str
    tags: list[str]
    id: str
    digest: str
    size: int
    lock_digest: str
    base: str
    git_commit: str
    ray: str
    created: str

    def to_dict(self) -> dict:
        return asdict(self)


def list_images(runtime: str | None = None) -> list[ImageRow]:
    """Every runtime image (label io.trainer.runtime) in the container storage, newest first."""
    filters = ["--filter", f"label={LABEL_RUNTIME}" + (f"={runtime}" if runtime else "")]
    raw = engine.tool("podman", "images", "--format", "json", *filters, what="podman images")
    rows = []
    for img in json.loads(raw or "[]"):
        labels = img.get("Labels") or {}
        if LABEL_LOCK not in labels:
            continue      # a runtime image built otherwise (docker build), without our labels
        rows.append(ImageRow(labels.get(LABEL_RUNTIME, ""), labels.get(LABEL_VARIANT, ""), img.get("Names") or [],
                             img.get("Id", ""), img.get("Digest", ""), int(img.get("Size", 0)),
                             labels.get(LABEL_LOCK, ""), labels.get(LABEL_BASE, ""), labels.get(LABEL_COMMIT, ""),
                             labels.get(LABEL_RAY, ""), str(img.get("CreatedAt") or img.get("Created", ""))))
    return sorted(rows, key=lambda r: r.created, reverse=True)


def labels(ref: str) -> dict[str, str]:
    raw = engine.tool("podman", "image", "inspect", "--format", "{{json .Labels}}", ref,
                      what=f"podman image inspect {ref}")
    return json.loads(raw or "{}") or {}


def installed(ref: str) -> dict[str, str]:
    """Distributions installed in image `ref`'s Python: normalized name -> version."""
    out = engine.tool("podman", "run", "--rm", *engine.run_flags(), ref, "python", "-c", _LIST_DISTS,
                      timeout=300, what=f"listing the packages inside {ref}")
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ImageError(f"{ref}: its python printed no package list: {out.strip()[:200]!r}") from None


def check_lock(ref: str) -> dict:
    """Compare every pin of the lock (variant from the image's label) with the image's installed
    versions. Returns {"image", "variant", "pins", "mismatches"}; mismatches empty = the same."""
    found = labels(ref)
    runtime, variant = found.get(LABEL_RUNTIME), found.get(LABEL_VARIANT)
    if not runtime or not variant:
        raise ImageError(f"{ref} is not a trainer runtime image (no {LABEL_RUNTIME}/{LABEL_VARIANT} labels)")
    spec_for(runtime)
    pins = parse_lock(lock_path(runtime), variant)
    have = installed(ref)
    mismatches = [f"{dist}=={ver} (image has {have.get(dist, 'none')})" for dist, ver in pins.items()
                  if not version_matches(have.get(dist, ""), ver)]
    return {"image": ref, "runtime": runtime, "variant": variant, "pins": len(pins), "mismatches": mismatches,
            "lock_digest_label": found.get(LABEL_LOCK, "")}


@dataclass
class Pruned:
    id: str
    what: str           # "runtime-torch cpu, lock 8d42cdcc45da" or "build stage, lock ..."
    size: int
    why: str            # "untagged: its tag moved to a newer build", "superseded: lock ...", ...
    removed: bool = False
    error: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def prune(dry_run: bool = False) -> list[Pruned]:
    """Remove what rebuilds leave in the container storage: our runtime images whose tag moved to
    a newer build (untagged), those built from a lock that is no longer their runtime's current
    one (in this checkout), and our untagged build stages. The current image of every runtime and
    variant stays, and so do the Debian base and the uv image; an image a container still uses
    is reported, not removed. Images without our labels are never touched."""
    from trainer.images.build import image_ref

    found: list[Pruned] = []
    for row in list_images():
        current = image_ref(row.runtime, row.variant)
        what = f"runtime-{row.runtime} {row.variant}, lock {row.lock_digest[:12]}"
        if not row.tags:
            found.append(Pruned(row.id, what, row.size, "untagged: its tag moved to a newer build"))
        elif current not in row.tags:
            found.append(Pruned(row.id, what, row.size, f"superseded: not the current lock's image ({current})"))
    raw = engine.tool("podman", "images", "--format", "json", "--filter", "dangling=true",
                      "--filter", f"label={LABEL_LOCK}", what="podman images")
    seen = {p.id for p in found}
    for img in json.loads(raw or "[]"):
        labels_ = img.get("Labels") or {}
        if img.get("Id") in seen or LABEL_RUNTIME in labels_:
            continue
        found.append(Pruned(img.get("Id", ""), f"build stage, lock {labels_.get(LABEL_LOCK, '')[:12]}",
                            int(img.get("Size", 0)), "untagged build stage"))
    if dry_run:
        return found
    for p in found:
        try:
            engine.tool("podman", "rmi", p.id, timeout=120, what=f"removing image {p.id[:12]}")
            p.removed = True
        except ImageError as e:
            p.error = str(e)
    return found
