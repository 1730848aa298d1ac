"""`trainer image prune` removes what rebuilds leave behind - an untagged runtime image, one built
from a lock that is no longer current, an untagged build stage - and keeps each runtime's current
image and every image without our labels. The images here are empty ones (buildah from scratch,
our labels set by hand, a made-up variant so no real image's tag is touched): no build needed."""
from __future__ import annotations

import json
import shutil
import uuid

import pytest
from typer.testing import CliRunner

from trainer.images import engine
from trainer.images.build import LABEL_LOCK, LABEL_RUNTIME, LABEL_VARIANT, image_ref
from trainer.runtimes import lock_digest

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not (shutil.which("buildah") and shutil.which("podman")),
                                 reason="buildah/podman missing: scripts/system-deps.sh")]

VARIANT = "testprune"


def empty_image(labels: dict[str, str], tag: str | None) -> str:
    """An image with no layers and these labels (plus a unique one: its own id); its id."""
    box = engine.tool("buildah", "from", "scratch").strip()
    try:
        engine.tool("buildah", "config", *(a for k, v in {**labels, "test.id": uuid.uuid4().hex}.items()
                                            for a in ("--label", f"{k}={v}")), box)
        return engine.tool("buildah", "commit", "--quiet", box, *([tag] if tag else [])).strip()
    finally:
        engine.tool("buildah", "rm", box)


def exists(image_id: str) -> bool:
    return engine.image_exists(image_id)


def test_prune_removes_leftovers_and_keeps_current_and_foreign_images():
    from trainer.cli import app

    ours = {LABEL_RUNTIME: "torch", LABEL_VARIANT: VARIANT}
    current_lock = lock_digest("torch")
    made = {
        "current": empty_image({**ours, LABEL_LOCK: current_lock}, image_ref("torch", VARIANT)),
        "superseded": empty_image({**ours, LABEL_LOCK: "0" * 64}, f"localhost/trainer/runtime-torch:{VARIANT}-000000000000"),
        "untagged": empty_image({**ours, LABEL_LOCK: current_lock}, None),
        "stage": empty_image({LABEL_LOCK: current_lock}, None),
        "foreign": empty_image({}, None),
    }
    try:
        dry = CliRunner().invoke(app, ["image", "prune", "--dry-run", "--output", "json"])
        assert dry.exit_code == 0, dry.output
        listed = {row["id"]: row for row in json.loads(dry.output)}
        assert {k for k, i in made.items() if i in listed} == {"superseded", "untagged", "stage"}
        assert "not the current lock's image" in listed[made["superseded"]]["why"]
        assert all(exists(i) for i in made.values())          # a dry run removes nothing

        done = CliRunner().invoke(app, ["image", "prune"])
        assert done.exit_code == 0, done.output
        assert "removed" in done.output
        assert {k for k, i in made.items() if exists(i)} == {"current", "foreign"}
    finally:
        for image_id in made.values():
            if exists(image_id):
                engine.tool("podman", "rmi", "--force", image_id)
