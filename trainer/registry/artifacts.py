"""What goes into and comes out of the registry: a model version as a CNCF ModelPack artifact,
an OCI image layout (the runtime images), promotion records attached as referrers, and the copy
between projects that keeps the digest.

ModelPack (github.com/modelpack/model-spec): an OCI image manifest with `artifactType`
`application/vnd.cncf.model.manifest.v1+json`, a config `application/vnd.cncf.model.config.v1+json`
({descriptor, config, modelfs}), one layer per file with its path in the
`org.cncf.model.filepath` annotation; weights `...weight.v1.raw`, their configuration
`...weight.config.v1.raw`, documents `...doc.v1.raw`, code `...code.v1.raw`. Harbor shows these
natively.

Pulling is where data from a registry meets the user's disk, so a pull writes only into a folder
that is new, empty, or one an earlier pull wrote (its `.trainer-pull.json` lists the files); it
never replaces a file it did not write, never follows a symlink (every component is opened
relative to its parent's descriptor with O_NOFOLLOW), and refuses a manifest whose paths are
absolute, climb out (`..`), hold NUL or control characters, are too long, repeat, nest a file
under another file, or name VCS metadata (`.git*`, `.hg*`, `.svn`, `.bzr`: a `.git/config`
with a `core.fsmonitor` command runs at the next `git status`).
"""
from __future__ import annotations

import json
import os
import re
import stat
import time
from pathlib import Path, PurePosixPath

from trainer.errors import RegistryError
from trainer.registry.client import (EMPTY_JSON, INDEX_OCI, MANIFEST_OCI, Manifest, Reference, Registry,
                                     descriptor_digest, descriptor_size, fallback_tag, printable, sha256_digest)

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
# What a pull leaves in its folder: the files it wrote (a later pull may replace those only).
PULL_MARKER = ".trainer-pull.json"
MAX_PATH = 4096
MAX_COMPONENT = 255
MAX_LAYERS = 10_000
# Folders and files that tools execute from or trust: never written by a pull.
_VCS = re.compile(r"\.(git|hg|svn|bzr)", re.IGNORECASE)
_PATH_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

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


def default_pull_folder(ref: str) -> Path:
    """Where `trainer registry pull REF` writes without a folder: `./<name>-<tag>` (never `.`)."""
    parsed = Reference.parse(ref)
    tag = (parsed.reference or "latest").replace("sha256:", "sha256-")[:19 + 7]
    return Path(f"{parsed.repository.rsplit('/', 1)[-1]}-{tag}")


def layer_paths(manifest: Manifest, where: str) -> list[tuple[str, dict]]:
    """(relative path, layer) for every layer of a ModelPack manifest, each path checked; a
    malformed manifest raises one RegistryError line."""
    data = manifest.json
    if manifest.media_type == INDEX_OCI or "manifests" in data:
        raise RegistryError(f"{where} is an index, not one artifact; pull one of its manifests")
    layers = data.get("layers")
    if not isinstance(layers, list):
        raise RegistryError(f"{where}: the manifest has no list of layers")
    if len(layers) > MAX_LAYERS:
        raise RegistryError(f"{where}: the manifest has {len(layers)} layers (at most {MAX_LAYERS})")
    found: list[tuple[str, dict]] = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict):
            raise RegistryError(f"{where}: layer {i} is not a JSON object")
        digest = descriptor_digest(layer, f"{where}: layer {i}")
        descriptor_size(layer, f"{where}: layer {i}")
        annotations = layer.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise RegistryError(f"{where}: layer {i}'s annotations are not a JSON object")
        rel = annotations.get(FILEPATH, digest.replace(":", "-"))
        found.append((check_layer_path(rel, f"{where}: layer {i}"), layer))
    seen: set[str] = set()
    for rel, _ in found:
        if rel in seen:
            raise RegistryError(f"{where}: two layers write {printable(rel, 100)!r}; refused")
        seen.add(rel)
    for rel, _ in found:
        parts = rel.split("/")
        for n in range(1, len(parts)):
            if "/".join(parts[:n]) in seen:
                raise RegistryError(f"{where}: {printable(rel, 100)!r} lies under the file "
                                    f"{printable('/'.join(parts[:n]), 100)!r}; refused")
    return found


def check_layer_path(rel: object, where: str) -> str:
    """A layer's `org.cncf.model.filepath`, refused unless it is a plain relative path inside the
    target folder that names no VCS metadata and no file of ours."""
    if not isinstance(rel, str):
        raise RegistryError(f"{where}: the file path is not a string ({type(rel).__name__}); refused")
    shown = printable(rel, 100)
    if not rel or len(rel.encode("utf-8", "surrogatepass")) > MAX_PATH:
        raise RegistryError(f"{where}: a file path of {len(rel)} characters (1 to {MAX_PATH}); refused")
    if _PATH_CONTROL.search(rel) or "\\" in rel:
        raise RegistryError(f"{where}: the file path {shown!r} holds NUL, control characters or '\\'; refused")
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise RegistryError(f"the artifact names a file {shown!r} outside the target folder; refused")
    for part in parts:
        if len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT:
            raise RegistryError(f"{where}: a path component over {MAX_COMPONENT} bytes in {shown!r}; refused")
        if _VCS.match(part) or part == PULL_MARKER:
            raise RegistryError(f"{where}: the file path {shown!r} names {part!r} (version-control metadata "
                                f"or trainer's own): a model artifact does not carry it; refused")
    return rel


def pull(reg: Registry, repo: str, ref: str, dest: Path) -> tuple[Manifest, list[str]]:
    """Write an artifact's layers into `dest` by their filepath annotation (a layer without one is
    named by its digest); returns the manifest and the paths written. Every path is checked
    before anything is written; a failure leaves no partial file behind."""
    where = f"{reg.host}/{repo}:{ref}"
    manifest = reg.get_manifest(repo, ref)
    layers = layer_paths(manifest, where)
    try:
        with _PullFolder(Path(dest)) as folder:
            for rel, _ in layers:
                folder.check_free(rel)
            for rel, layer in layers:
                folder.write(rel, lambda write, d=layer: reg.download_blob(repo, d["digest"], d["size"], write))
            folder.finish({"ref": where, "digest": manifest.digest})
    except OSError as e:        # permissions, a full disk: nothing was put in place
        raise RegistryError(f"cannot write the pull into {dest}: {e.strerror or type(e).__name__}") from None
    return manifest, [rel for rel, _ in layers]


def safe_path(dest: Path, rel: str) -> Path:
    return dest.joinpath(*check_layer_path(rel, "path").split("/"))


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _PullFolder:
    """The target folder of a pull, held by a descriptor: every path below it is opened relative
    to its parent with O_NOFOLLOW, so a symlink (planted before or during the pull) is an error,
    never a way out. Files go to a `.part` name first and are renamed into place only when every
    layer is verified."""

    def __init__(self, dest: Path):
        self.dest = dest
        self.created = False
        self.ours: set[str] = set()
        self.staged: list[tuple[int, str, str]] = []     # (dir fd, part name, final name)
        self.dirs: dict[str, int] = {}
        self.made_dirs: list[str] = []
        self.written: list[str] = []

    def __enter__(self) -> "_PullFolder":
        try:
            os.mkdir(self.dest, 0o755)
            self.created = True
        except FileExistsError:
            pass
        except OSError as e:
            raise RegistryError(f"cannot create {self.dest}: {e.strerror}") from None
        try:
            self.fd = os.open(self.dest, _DIR_FLAGS)
        except OSError as e:
            raise RegistryError(f"{self.dest}: not a folder a pull can write into ({e.strerror}; a symlink "
                                f"is not followed)") from None
        self.dirs[""] = self.fd
        if not self.created:
            self._check_existing()
        return self

    def _check_existing(self) -> None:
        entries = os.listdir(self.fd)
        if not entries:
            return
        if PULL_MARKER not in entries:
            raise RegistryError(f"{self.dest} is not empty and no pull wrote it: pull into a new or empty "
                                f"folder (a pull never replaces files it did not write)")
        try:
            fd = os.open(PULL_MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
            with os.fdopen(fd, "rb") as fh:
                marker = json.loads(fh.read(MAX_PATH * 1024))
            files = marker["files"]
            if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
                raise ValueError
        except (OSError, ValueError, KeyError, TypeError):
            raise RegistryError(f"{self.dest}/{PULL_MARKER} is not a pull's record; pull into a new or "
                                f"empty folder") from None
        self.ours = set(files)

    def check_free(self, rel: str) -> None:
        """Refuse before any download when `rel` exists and an earlier pull did not write it."""
        parts = rel.split("/")
        fd, opened = self.fd, []
        try:
            for i, part in enumerate(parts):
                try:
                    st = os.lstat(part, dir_fd=fd)
                except FileNotFoundError:
                    return
                last = i == len(parts) - 1
                if stat.S_ISLNK(st.st_mode):
                    raise RegistryError(f"{self.dest}/{printable('/'.join(parts[:i + 1]), 200)} is a symlink; "
                                        f"a pull does not follow it")
                if last:
                    if not stat.S_ISREG(st.st_mode) or rel not in self.ours:
                        raise RegistryError(f"{self.dest}/{printable(rel, 200)} exists and no pull wrote it; "
                                            f"refused (nothing was written)")
                    return
                if not stat.S_ISDIR(st.st_mode):
                    raise RegistryError(f"{self.dest}/{printable('/'.join(parts[:i + 1]), 200)} is not a folder")
                fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                opened.append(fd)
        except OSError as e:
            raise RegistryError(f"{self.dest}/{printable(rel, 200)}: {e.strerror}") from None
        finally:
            for x in opened:
                os.close(x)

    def _dir(self, parts: list[str]) -> int:
        key = "/".join(parts)
        if key in self.dirs:
            return self.dirs[key]
        parent = self._dir(parts[:-1])
        try:
            os.mkdir(parts[-1], 0o755, dir_fd=parent)
            self.made_dirs.append(key)
        except FileExistsError:
            pass
        try:
            fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
        except OSError as e:
            raise RegistryError(f"{self.dest}/{printable(key, 200)}: not a folder a pull writes into "
                                f"({e.strerror}; symlinks are not followed)") from None
        self.dirs[key] = fd
        return fd

    def write(self, rel: str, fill) -> None:
        parts = rel.split("/")
        fd = self._dir(parts[:-1])
        part = f".{parts[-1]}.part"[:MAX_COMPONENT]
        try:
            out = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=fd)
        except FileExistsError:
            raise RegistryError(f"{self.dest}/{printable(rel, 200)}: a partial file of another pull is in the "
                                f"way ({part}); remove it") from None
        self.staged.append((fd, part, parts[-1]))
        self.written.append(rel)
        with os.fdopen(out, "wb") as fh:
            fill(fh.write)

    def finish(self, what: dict) -> None:
        for fd, part, name in self.staged:
            os.replace(part, name, src_dir_fd=fd, dst_dir_fd=fd)
        self.staged = []
        files = sorted(self.ours | set(self.written))
        body = json.dumps({**what, "files": files}, indent=1, sort_keys=True).encode()
        tmp = f".{PULL_MARKER}.part"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                      dir_fd=self.fd)
        with os.fdopen(out, "wb") as fh:
            fh.write(body)
        os.replace(tmp, PULL_MARKER, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def __exit__(self, kind, err, tb):
        for fd, part, _ in self.staged:
            try:
                os.unlink(part, dir_fd=fd)
            except FileNotFoundError:
                pass
        for key in reversed(self.made_dirs if err is not None else []):
            parts = key.split("/")
            try:
                os.rmdir(parts[-1], dir_fd=self.dirs["/".join(parts[:-1])])
            except OSError:
                pass        # not empty: what an earlier pull wrote stays
        for fd in self.dirs.values():
            os.close(fd)
        if err is not None and self.created:
            try:
                os.rmdir(self.dest)
            except OSError:
                pass
        return False


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


def copy(reg: Registry, src_repo: str, ref: str, dst_repo: str, dst_tag: str | None,
         to: Registry | None = None) -> tuple[Manifest, dict]:
    """Copy `src_repo:ref` to `dst_repo` with the same digest (Harbor's CopyArtifact): each blob
    by cross-repository mount, then the manifest's bytes unchanged. With `dst_tag` None the
    manifest is PUT by digest only (present but untagged: what a promotion does before its
    commit). `to`, another registry: each blob is streamed across (read with the source's
    credentials, written with the target's own). Returns the manifest and how each blob arrived."""
    target = reg if to is None or to.url == reg.url else to
    manifest = reg.get_manifest(src_repo, ref)
    data = manifest.json
    if "manifests" in data:
        raise RegistryError(f"{src_repo}:{ref} is an index; copying multi-platform images is not supported")
    layers = data.get("layers", [])
    if not isinstance(layers, list):
        raise RegistryError(f"{src_repo}:{ref}: the manifest has no list of layers")
    how = {}
    for i, d in enumerate([data.get("config"), *layers]):
        where = f"{src_repo}:{ref}: {'the config' if i == 0 else f'layer {i - 1}'}"
        digest, size = descriptor_digest(d, where), descriptor_size(d, where)
        if target is reg:
            how[digest] = reg.mount_blob(dst_repo, digest, src_repo, size)
        else:
            how[digest] = _copy_blob(reg, src_repo, target, dst_repo, digest, size)
    digest = target.put_manifest(dst_repo, dst_tag or manifest.digest, manifest.body, manifest.media_type)
    if digest != manifest.digest:
        raise RegistryError(f"{dst_repo}: the copied manifest has digest {digest}, not {manifest.digest}")
    return manifest, how


def _copy_blob(src: Registry, src_repo: str, dst: Registry, dst_repo: str, digest: str, size: int) -> str:
    """One blob from one registry to another through a temporary file (checked on the way in)."""
    import tempfile

    if dst.blob_exists(dst_repo, digest):
        return "present"
    with tempfile.TemporaryDirectory(prefix="trainer-copy-") as tmp:
        path = Path(tmp) / "blob"
        with open(path, "wb") as fh:
            src.download_blob(src_repo, digest, size, fh.write)
        dst.push_blob(dst_repo, path, digest)
    return "copied"


# ---------------------------------------------------------------- referrers (records)

def push_record(reg: Registry, repo: str, subject: Manifest, record: dict) -> dict:
    """Push `record` (JSON) as an artifact whose `subject` is the promoted manifest, by digest
    (untagged); returns its descriptor for the referrers index."""
    blob = json.dumps(record, sort_keys=True).encode()
    return push_referrer(reg, repo, subject, PROMOTION, PROMOTION, blob, str(record.get("at", "")))


def push_referrer(reg: Registry, repo: str, subject: Manifest, artifact_type: str, layer_type: str, blob: bytes,
                  created: str) -> dict:
    """Push `blob` as a one-layer artifact whose `subject` is `subject`, by digest (untagged);
    returns its descriptor for the referrers index."""
    layer = reg.push_blob(repo, blob)
    empty = reg.push_blob(repo, EMPTY)
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_OCI, "artifactType": artifact_type,
                "config": {"mediaType": EMPTY_JSON, **empty},
                "layers": [{"mediaType": layer_type, **layer}],
                "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": len(subject.body)},
                "annotations": {ANN_CREATED: created}}
    body = json.dumps(manifest, sort_keys=True).encode()
    digest = reg.put_manifest(repo, sha256_digest(body), body, MANIFEST_OCI)
    return {"mediaType": MANIFEST_OCI, "digest": digest, "size": len(body), "artifactType": artifact_type,
            "annotations": {ANN_CREATED: created}}


def referrer_blob(reg: Registry, repo: str, descriptor: dict, layer_type: str, cap: int = 4 << 20) -> bytes | None:
    """The bytes of the `layer_type` layer of the referrer `descriptor` names (None: it has none)."""
    where = f"{repo}: a referrer"
    manifest = reg.get_manifest(repo, descriptor_digest(descriptor, where)).json
    layers = manifest.get("layers", [])
    for layer in layers if isinstance(layers, list) else []:
        if isinstance(layer, dict) and layer.get("mediaType") == layer_type:
            size = descriptor_size(layer, where)
            if size > cap:
                raise RegistryError(f"{where}: a {layer_type} layer of {size} bytes (at most {cap})")
            return reg.get_blob(repo, descriptor_digest(layer, where), size)
    return None


def attach_referrers(reg: Registry, repo: str, subject_digest: str, descriptors: list[dict]) -> None:
    """Make pushed referrers findable: nothing to do where the registry has the referrers API,
    else `descriptors` added to the tag-schema index of `subject_digest`."""
    _, method = reg.referrers(repo, subject_digest)
    if method == "tag" and descriptors:
        body, _ = fallback_index_with(reg, repo, subject_digest, *descriptors)
        put_fallback_index(reg, repo, subject_digest, body)


def fallback_index_with(reg: Registry, repo: str, subject_digest: str, *descriptors: dict) -> tuple[bytes, Manifest | None]:
    """The tag-schema referrers index of `subject_digest` with `descriptors` appended (records are
    only ever added), and the index it replaces (None when there was none)."""
    old = reg.fallback_index(repo, subject_digest)
    manifests = old.json.get("manifests") or [] if old else []
    if not isinstance(manifests, list):
        raise RegistryError(f"{repo}:{fallback_tag(subject_digest)}: the referrers index has no list of manifests")
    for descriptor in descriptors:
        if not any(m.get("digest") == descriptor["digest"] for m in manifests):
            manifests.append(descriptor)
    index = {"schemaVersion": 2, "mediaType": INDEX_OCI, "manifests": manifests}
    return json.dumps(index, sort_keys=True).encode(), old


def read_records(reg: Registry, repo: str, digest: str) -> list[dict]:
    """The promotion records attached to `digest` in `repo`, oldest first."""
    found, _ = reg.referrers(repo, digest)
    records = []
    for d in found:
        blob = referrer_blob(reg, repo, d, PROMOTION) if d.get("artifactType") == PROMOTION else None
        if blob is None:
            continue
        try:
            record = json.loads(blob)
        except ValueError:
            raise RegistryError(f"{repo}@{d['digest']}: a promotion record that is not JSON") from None
        if isinstance(record, dict):
            records.append(record)
    return sorted(records, key=lambda r: (str(r.get("at", "")), r.get("seq") if type(r.get("seq")) is int else 0))


def put_fallback_index(reg: Registry, repo: str, subject_digest: str, body: bytes) -> str:
    return reg.put_manifest(repo, fallback_tag(subject_digest), body, INDEX_OCI)
