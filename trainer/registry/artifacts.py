"""What goes into and comes out of the registry: a model version as a CNCF ModelPack artifact,
an OCI image layout (the runtime images), promotion records attached as referrers, and the copy
between projects that keeps the digest.

ModelPack (github.com/modelpack/model-spec): an OCI image manifest with `artifactType`
`application/vnd.cncf.model.manifest.v1+json`, a config `application/vnd.cncf.model.config.v1+json`
({descriptor, config, modelfs}), one layer per file with its path in the
`org.cncf.model.filepath` annotation; weights `...weight.v1.raw`, their configuration
`...weight.config.v1.raw`, documents `...doc.v1.raw`, code `...code.v1.raw`. Harbor shows these
natively. Pulling writes each layer to its annotated path, refusing absolute paths and `..`:
data from a registry never chooses where it is written outside the target folder.
"""
from __future__ import annotations

import json
import time
from pathlib import Path, PurePosixPath

from trainer.errors import RegistryError
from trainer.registry.client import EMPTY_JSON, INDEX_OCI, MANIFEST_OCI, Manifest, Registry, fallback_tag, sha256_digest

MODEL_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
MODEL_CONFIG = "application/vnd.cncf.model.config.v1+json"
WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.raw"
DOC = "application/vnd.cncf.model.doc.v1.raw"
CODE = "application/vnd.cncf.model.code.v1.raw"
FILEPATH = "org.cncf.model.filepath"
PROMOTION = "application/vnd.trainer.promotion.v1+json"
# Annotations linking the artifact to MLflow and the data (read back by `promote history`).
ANN_MODEL_ID = "io.trainer.mlflow.model_id"
ANN_VERSION = "io.trainer.mlflow.version"
ANN_RUN_ID = "io.trainer.mlflow.run_id"
ANN_DATA = "io.trainer.data.sha256"
ANN_CREATED = "org.opencontainers.image.created"
ANN_TITLE = "org.opencontainers.image.title"
EMPTY = b"{}"

_CONFIG_SUFFIXES = {".json", ".yaml", ".yml", ".txt", ".toml", ".cfg"}
_DOC_SUFFIXES = {".md", ".png", ".html", ".rst"}
_CODE_SUFFIXES = {".py", ".sh"}


def media_type(path: PurePosixPath) -> str:
    if path.name == "MLmodel" or path.suffix in _CONFIG_SUFFIXES:
        return WEIGHT_CONFIG
    if path.suffix in _DOC_SUFFIXES:
        return DOC
    if path.suffix in _CODE_SUFFIXES:
        return CODE
    return WEIGHT


def model_files(root: Path) -> list[tuple[str, Path]]:
    """(path inside the artifact, file) for every regular file under `root`, sorted."""
    files = []
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            raise RegistryError(f"{p}: a symlink; a model artifact holds regular files only")
        if p.is_file():
            files.append((p.relative_to(root).as_posix(), p))
    if not files:
        raise RegistryError(f"{root}: no files to push")
    return files


def push_model(reg: Registry, repo: str, tag: str, root: Path, *, name: str, version: str = "",
               annotations: dict[str, str] | None = None, fmt: str = "") -> Manifest:
    """Push every file under `root` as one ModelPack artifact `repo:tag`; returns its manifest."""
    layers, diff_ids = [], []
    for rel, path in model_files(root):
        desc = reg.push_blob(repo, path)
        layers.append({"mediaType": media_type(PurePosixPath(rel)), **desc, "annotations": {FILEPATH: rel}})
        diff_ids.append(desc["digest"])
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    config = {"descriptor": {"name": name, "version": version, "createdAt": created},
              "config": {"format": fmt} if fmt else {},
              "modelfs": {"type": "layers", "diffIds": diff_ids}}
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_desc = reg.push_blob(repo, config_bytes)
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_OCI, "artifactType": MODEL_ARTIFACT,
                "config": {"mediaType": MODEL_CONFIG, **config_desc}, "layers": layers,
                "annotations": {ANN_CREATED: created, ANN_TITLE: name, **(annotations or {})}}
    body = json.dumps(manifest, sort_keys=True).encode()
    digest = reg.put_manifest(repo, tag, body, MANIFEST_OCI)
    return Manifest(body, MANIFEST_OCI, digest)


def pull(reg: Registry, repo: str, ref: str, dest: Path) -> tuple[Manifest, list[str]]:
    """Write an artifact's layers into `dest` by their filepath annotation (a layer without one is
    named by its digest); returns the manifest and the paths written."""
    manifest = reg.get_manifest(repo, ref)
    data = manifest.json
    if manifest.media_type in (INDEX_OCI,) or "layers" not in data:
        raise RegistryError(f"{repo}:{ref} is an index, not one artifact; pull one of its manifests")
    dest = dest.resolve()
    written = []
    for layer in data["layers"]:
        rel = (layer.get("annotations") or {}).get(FILEPATH) or str(layer["digest"]).replace(":", "-")
        target = safe_path(dest, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        reg.download_blob(repo, layer["digest"], target)
        written.append(rel)
    return manifest, written


def safe_path(dest: Path, rel: str) -> Path:
    parts = PurePosixPath(rel).parts
    if not rel or rel.startswith("/") or "\\" in rel or ".." in parts or any(p in ("", ".") for p in parts):
        raise RegistryError(f"the artifact names a file {rel!r} outside the target folder; refused")
    return dest.joinpath(*parts)


def push_layout(reg: Registry, layout: Path, repo: str, tag: str) -> Manifest:
    """Push an OCI image layout (a folder with `oci-layout`, `index.json` and `blobs/`: what
    buildah/skopeo/podman write) as `repo:tag`: its first manifest and every blob it names."""
    try:
        index = json.loads((layout / "index.json").read_text())
        desc = index["manifests"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        raise RegistryError(f"{layout}: not an OCI image layout (no index.json with a manifest)") from None
    blob = lambda d: layout / "blobs" / "sha256" / d.split(":", 1)[1]  # noqa: E731
    body = blob(desc["digest"]).read_bytes()
    if sha256_digest(body) != desc["digest"]:
        raise RegistryError(f"{layout}: the manifest's bytes do not match its digest")
    manifest = json.loads(body)
    for d in [manifest["config"], *manifest.get("layers", [])]:
        reg.push_blob(repo, blob(d["digest"]), d["digest"])
    media = manifest.get("mediaType") or desc.get("mediaType") or MANIFEST_OCI
    digest = reg.put_manifest(repo, tag, body, media)
    return Manifest(body, media, digest)


def copy(reg: Registry, src_repo: str, ref: str, dst_repo: str, dst_tag: str | None) -> tuple[Manifest, dict]:
    """Copy `src_repo:ref` to `dst_repo` with the same digest (Harbor's CopyArtifact): each blob
    by cross-repository mount, then the manifest's bytes unchanged. With `dst_tag` None the
    manifest is PUT by digest only (present but untagged: what a promotion does before its
    commit). Returns the manifest and how each blob arrived."""
    manifest = reg.get_manifest(src_repo, ref)
    data = manifest.json
    if "manifests" in data:
        raise RegistryError(f"{src_repo}:{ref} is an index; copying multi-platform images is not supported")
    how = {}
    for d in [data["config"], *data.get("layers", [])]:
        how[d["digest"]] = reg.mount_blob(dst_repo, d["digest"], src_repo)
    digest = reg.put_manifest(dst_repo, dst_tag or manifest.digest, manifest.body, manifest.media_type)
    if digest != manifest.digest:
        raise RegistryError(f"{dst_repo}: the copied manifest has digest {digest}, not {manifest.digest}")
    return manifest, how


# ---------------------------------------------------------------- referrers (records)

def push_record(reg: Registry, repo: str, subject: Manifest, record: dict) -> dict:
    """Push `record` (JSON) as an artifact whose `subject` is the promoted manifest, by digest
    (untagged); returns its descriptor for the referrers index."""
    blob = json.dumps(record, sort_keys=True).encode()
    layer = reg.push_blob(repo, blob)
    empty = reg.push_blob(repo, EMPTY)
    created = str(record.get("at", ""))
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_OCI, "artifactType": PROMOTION,
                "config": {"mediaType": EMPTY_JSON, **empty},
                "layers": [{"mediaType": PROMOTION, **layer}],
                "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": len(subject.body)},
                "annotations": {ANN_CREATED: created}}
    body = json.dumps(manifest, sort_keys=True).encode()
    digest = reg.put_manifest(repo, sha256_digest(body), body, MANIFEST_OCI)
    return {"mediaType": MANIFEST_OCI, "digest": digest, "size": len(body), "artifactType": PROMOTION,
            "annotations": {ANN_CREATED: created}}


def fallback_index_with(reg: Registry, repo: str, subject_digest: str, descriptor: dict) -> tuple[bytes, Manifest | None]:
    """The tag-schema referrers index of `subject_digest` with `descriptor` appended (records are
    only ever added), and the index it replaces (None when there was none)."""
    old = reg.fallback_index(repo, subject_digest)
    manifests = list(old.json.get("manifests") or []) if old else []
    if not any(m.get("digest") == descriptor["digest"] for m in manifests):
        manifests.append(descriptor)
    index = {"schemaVersion": 2, "mediaType": INDEX_OCI, "manifests": manifests}
    return json.dumps(index, sort_keys=True).encode(), old


def read_records(reg: Registry, repo: str, digest: str) -> list[dict]:
    """The promotion records attached to `digest` in `repo`, oldest first."""
    found, _ = reg.referrers(repo, digest)
    records = []
    for d in found:
        if d.get("artifactType") != PROMOTION:
            continue
        manifest = reg.get_manifest(repo, d["digest"]).json
        for layer in manifest.get("layers", []):
            if layer.get("mediaType") == PROMOTION:
                try:
                    records.append(json.loads(reg.get_blob(repo, layer["digest"])))
                except ValueError:
                    raise RegistryError(f"{repo}@{d['digest']}: a promotion record that is not JSON") from None
    return sorted(records, key=lambda r: (str(r.get("at", "")), r.get("seq", 0)))


def put_fallback_index(reg: Registry, repo: str, subject_digest: str, body: bytes) -> str:
    return reg.put_manifest(repo, fallback_tag(subject_digest), body, INDEX_OCI)
