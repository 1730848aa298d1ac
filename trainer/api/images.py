"""Runtime images: the local base, build, list, the lock check inside one, push.

The images are built from `images/<runtime>/Dockerfile` and the same lock as the runtime venvs;
the work lives in `trainer.images`.
"""
from __future__ import annotations

from typing import Callable

from trainer.errors import ImageError, RegistryError


def image_base(rebuild: bool = False, progress: Callable[[str], None] | None = None) -> dict:
    """The local Debian base image (mmdebstrap), built unless the container storage has it."""
    from trainer.images.base import ensure_base

    return ensure_base(rebuild=rebuild, progress=progress).to_dict()


def image_build(runtime: str, variant: str = "cpu", base: str | None = None, python_source: str | None = None,
                progress: Callable[[str], None] | None = None) -> dict:
    """Build `runtime`'s image; see trainer.images.build."""
    from trainer.images.build import build

    return build(runtime, variant, base, python_source, progress=progress).to_dict()


def image_ls(runtime: str | None = None) -> list[dict]:
    """The runtime images in this machine's container storage, newest first."""
    from trainer.images.inventory import list_images

    return [row.to_dict() for row in list_images(runtime)]


def image_prune(dry_run: bool = False) -> list[dict]:
    """Remove the runtime images and build stages rebuilds left behind (see
    trainer.images.inventory.prune); each row says what, why, and whether it went."""
    from trainer.images.inventory import prune

    return [p.to_dict() for p in prune(dry_run)]


def image_ref(runtime: str, variant: str = "cpu") -> str:
    """The local image of `runtime` built from its current lock; ImageError when there is none."""
    from trainer.images.build import image_ref as ref_for
    from trainer.images.engine import image_exists

    ref = ref_for(runtime, variant)
    if not image_exists(ref):
        raise ImageError(f"no {variant} image of {runtime} for its current lock ({ref}); "
                         f"run: trainer image build {runtime} --variant {variant}")
    return ref


def image_check(runtime: str, variant: str = "cpu") -> dict:
    """Every pin of the lock against the versions installed inside the image."""
    from trainer.images.inventory import check_lock

    return check_lock(image_ref(runtime, variant))


def image_push(runtime: str, variant: str = "cpu", registry: str | None = None,
               tracking_uri: str | None = None) -> dict:
    """Push `runtime`'s local image to the configured registry as
    `dev/runtime-<runtime>:<lock digest 12>` (cpu) or `...:<lock digest 12>-<variant>`, and register
    it in MLflow as a version of the model `runtime-<runtime>` (alias dev, tag v<N> in the registry):
    `promote("runtime-torch", "staging")` then moves it like a model, by digest."""
    from trainer.home import resolve_tracking_uri
    from trainer.images.build import LABEL_COMMIT
    from trainer.images.inventory import labels
    from trainer.promotion.registration import register_image

    from trainer.images.push import push
    from trainer.registry.auth import find_credentials
    from trainer.registry.client import registry_url
    from trainer.registry.serve import configured_address
    from trainer.runtimes import lock_digest

    ref = image_ref(runtime, variant)
    address, why = configured_address(registry)
    if address is None:
        raise RegistryError(f"{why}; start one with: trainer registry serve")
    url = registry_url(address)
    host = url.split("://", 1)[1].rstrip("/")
    creds = find_credentials(host)
    tag = lock_digest(runtime)[:12] + ("" if variant == "cpu" else f"-{variant}")
    name = f"runtime-{runtime}"
    out = push(ref, host, f"dev/{name}", tag, username=creds.username if creds else None,
               password=creds.secret if creds else None, plain_http=url.startswith("http://"))
    registered = register_image(name, address, out["digest"], out["ref"], resolve_tracking_uri(tracking_uri),
                                tags={"trainer.image.lock": lock_digest(runtime), "trainer.image.variant": variant,
                                      "trainer.image.commit": labels(ref).get(LABEL_COMMIT, "")})
    return {**out, "image": ref, "runtime": runtime, "variant": variant, "model": name,
            "version": registered["version"], "version_ref": registered["ref"]}
