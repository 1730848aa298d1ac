"""The OCI registry: serve the local one, push, pull, list and copy artifacts."""
from __future__ import annotations

from pathlib import Path

from trainer.errors import RegistryError, UsageError

def registry_serve(port: int = 5050, user: str = "trainer") -> tuple[dict, bool]:
    """Start the local OCI registry (docker-registry, htpasswd auth, 127.0.0.1) unless it runs."""
    from trainer.registry import serve

    return serve.start(port=port, user=user)


def registry_stop() -> bool:
    from trainer.registry import serve

    return serve.stop()


def _registry_for(ref: str | None, registry: str | None):
    from trainer.registry.client import Reference, Registry
    from trainer.registry.serve import configured_address

    parsed = Reference.parse(ref) if ref else None
    address = (parsed.host if parsed and parsed.host else None) or registry
    if address is None:
        address, why = configured_address()
        if address is None:
            raise RegistryError(f"{why}; start one with: trainer registry serve")
    return Registry(address), parsed


def registry_push(path: str | Path, ref: str, registry: str | None = None) -> dict:
    """Push a folder/file as a ModelPack artifact, or an OCI image layout folder as an image, to
    `ref` ([host/]project/name:tag)."""
    from trainer.registry.artifacts import push_layout, push_model

    reg, parsed = _registry_for(ref, registry)
    if not parsed.reference or parsed.reference.startswith("sha256:"):
        raise RegistryError(f"{ref}: give a tag to push to (project/name:tag)")
    path = Path(path)
    if not path.exists():
        raise UsageError(f"no such file or folder: {path}")
    if (path / "oci-layout").is_file():
        manifest, kind = push_layout(reg, path, parsed.repository, parsed.reference), "image"
    else:
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            root = path
            if path.is_file():
                root = Path(tmp)
                shutil.copy2(path, root / path.name)
            manifest = push_model(reg, parsed.repository, parsed.reference, root, name=parsed.repository.split("/")[-1])
        kind = "model"
    return {"ref": f"{reg.host}/{parsed}", "digest": manifest.digest, "kind": kind}


def registry_pull(ref: str, dest: str | Path, registry: str | None = None) -> dict:
    from trainer.registry.artifacts import pull

    reg, parsed = _registry_for(ref, registry)
    manifest, files = pull(reg, parsed.repository, parsed.reference or "latest", Path(dest))
    return {"ref": f"{reg.host}/{parsed}", "digest": manifest.digest, "files": files, "dest": str(dest)}


def registry_ls(repo: str | None = None, registry: str | None = None) -> dict:
    """The repositories (no `repo`), or one repository's tags with their digests."""
    reg, parsed = _registry_for(repo, registry)
    if parsed is None:
        return {"registry": reg.host, "repositories": reg.catalog()}
    tags = [t for t in reg.tags(parsed.repository) if not t.startswith("sha256-")]
    return {"registry": reg.host, "repository": parsed.repository,
            "tags": [{"tag": t, "digest": reg.manifest_digest(parsed.repository, t)} for t in tags]}


def registry_copy(src: str, dst: str, registry: str | None = None) -> dict:
    """Copy src to dst keeping the digest: in one registry by blob mount + manifest PUT (how the
    runtime images are promoted between projects); to another registry host by streaming the
    blobs across, each registry with its own credentials."""
    from trainer.registry.artifacts import copy

    reg, s = _registry_for(src, registry)
    to, d = _registry_for(dst, reg.url)
    if not s.reference or not d.reference or d.reference.startswith("sha256:"):
        raise RegistryError("give both as project/name:tag (the source may be @sha256:...)")
    manifest, how = copy(reg, s.repository, s.reference, d.repository, d.reference, to=to)
    return {"source": f"{reg.host}/{s}", "target": f"{to.host}/{d}", "digest": manifest.digest,
            "blobs": dict(sorted(how.items()))}
