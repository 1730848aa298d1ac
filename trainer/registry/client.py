"""A small client of the OCI distribution API (what Harbor, Docker Hub, GHCR, Debian's
docker-registry and every other OCI registry serve), on `requests`.

Why not the `oras` package: promotion needs the cross-repository blob mount (`POST
.../blobs/uploads/?mount=&from=`, so a copy moves no bytes and keeps the digest), the referrers
API with the tag-schema fallback (`sha256-<hex>` index tags, for registries such as
docker-registry 2.8 that answer 404), manifests PUT by digest before any tag moves, and control
over where credentials are read (oras-py writes ~/.docker unless told otherwise). oras-py 0.2
exposes none of the first three as calls; the distribution spec is a dozen endpoints, so they are
written here, each tested against a real registry (tests/registry).

Auth: a 401's `WWW-Authenticate` challenge picks the scheme: `Basic` (docker-registry with
htpasswd) sends the credentials; `Bearer` (Harbor, Docker Hub) fetches a token from the realm for
the scopes an operation needs (a mount asks for pull on the source and push on the target).
Credentials come from `trainer.registry.auth`; they are never in a URL, a message or a log line.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable
from urllib.parse import urljoin, urlsplit

from trainer.errors import RegistryError, describe
from trainer.registry.auth import Credentials, find_credentials

MANIFEST_OCI = "application/vnd.oci.image.manifest.v1+json"
INDEX_OCI = "application/vnd.oci.image.index.v1+json"
MANIFEST_DOCKER = "application/vnd.docker.distribution.manifest.v2+json"
LIST_DOCKER = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (MANIFEST_OCI, INDEX_OCI, MANIFEST_DOCKER, LIST_DOCKER)
EMPTY_JSON = "application/vnd.oci.empty.v1+json"

TIMEOUT_S = 60
CHUNK = 1 << 20
# A manifest is JSON of a few KiB; a registry answering more is not read whole.
MAX_MANIFEST_BYTES = 4 << 20
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
# OCI distribution: a repository name is path components of [a-z0-9] with . _ __ - separators.
_REPO = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
            size += len(block)
    return "sha256:" + h.hexdigest(), size


def check_repository(repo: str) -> str:
    if len(repo) > 255 or not _REPO.fullmatch(repo):
        raise RegistryError(f"not a repository name: {repo!r} (lower-case path components such as dev/digits-cnn)")
    return repo


def check_reference(ref: str) -> str:
    if not (_DIGEST.fullmatch(ref) or _TAG.fullmatch(ref)):
        raise RegistryError(f"not a tag or sha256 digest: {ref!r}")
    return ref


@dataclass(frozen=True)
class Reference:
    """`[host[:port]/]repository[:tag|@digest]` split up; host is None for the configured registry."""

    host: str | None
    repository: str
    reference: str | None     # tag or digest

    @classmethod
    def parse(cls, text: str) -> "Reference":
        rest, digest = (text.split("@", 1) + [None])[:2] if "@" in text else (text, None)
        host = None
        first, sep, remainder = rest.partition("/")
        # Docker's rule: the first component is a host when it has a '.' or ':' or is localhost.
        if sep and ("." in first or ":" in first or first == "localhost"):
            host, rest = first, remainder
        tag = None
        if ":" in rest.rsplit("/", 1)[-1]:
            rest, tag = rest.rsplit(":", 1)
        repo = check_repository(rest)
        ref = digest or tag
        if ref is not None:
            check_reference(ref)
        return cls(host, repo, ref)

    def __str__(self) -> str:
        sep = "@" if self.reference and self.reference.startswith("sha256:") else ":"
        return f"{self.repository}{sep + self.reference if self.reference else ''}"


@dataclass(frozen=True)
class Manifest:
    body: bytes
    media_type: str
    digest: str

    @property
    def json(self) -> dict:
        return json.loads(self.body)


def registry_url(address: str) -> str:
    """`host[:port]` -> https://host[:port]; loopback hosts default to http (a local registry
    has no certificate); an explicit http:// or https:// is kept."""
    address = address.strip().rstrip("/")
    if "://" in address:
        parts = urlsplit(address)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RegistryError(f"registry address must be host[:port] or http(s)://host[:port], got {address!r}")
        if parts.username or parts.password:
            raise RegistryError("registry address must not carry credentials (use docker login or "
                                "TRAINER_REGISTRY_USERNAME/TRAINER_REGISTRY_PASSWORD)")
        return f"{parts.scheme}://{parts.netloc}"
    if "@" in address or "/" in address or not address:
        raise RegistryError(f"registry address must be host[:port] or http(s)://host[:port], got {address!r}")
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 else address
    local = host in ("localhost", "127.0.0.1", "::1", "[::1]") or host.startswith("127.")
    return f"{'http' if local else 'https'}://{address}"


class Registry:
    """One registry, its credentials found once; every call raises RegistryError on failure."""

    def __init__(self, address: str, credentials: Credentials | None | bool = True, timeout: float = TIMEOUT_S):
        import requests

        self.url = registry_url(address)
        self.host = urlsplit(self.url).netloc
        self.credentials = find_credentials(self.host) if credentials is True else (credentials or None)
        self.timeout = timeout
        self._session = requests.Session()
        self._session.trust_env = False      # no ~/.netrc credentials, no proxy for a local registry
        self._basic = False
        self._tokens: dict[tuple[str, ...], str] = {}

    def __repr__(self) -> str:
        return f"Registry({self.url})"

    # -------------------------------------------------------------- blobs
    def blob_exists(self, repo: str, digest: str) -> bool:
        r = self._send("HEAD", f"/v2/{repo}/blobs/{digest}", [_scope(repo, "pull")], ok=(200, 404))
        return r.status_code == 200

    def push_blob(self, repo: str, data: bytes | Path, digest: str | None = None) -> dict:
        """Upload bytes or a file (skipped when the registry has it); returns its descriptor."""
        if isinstance(data, Path):
            digest_, size = file_digest(data)
        else:
            digest_, size = sha256_digest(data), len(data)
        if digest is not None and digest != digest_:
            raise RegistryError(f"{data if isinstance(data, Path) else 'blob'}: digest is {digest_}, expected {digest}")
        if not self.blob_exists(repo, digest_):
            scopes = [_scope(repo, "pull,push")]
            r = self._send("POST", f"/v2/{repo}/blobs/uploads/", scopes, ok=(202,))
            location = self._location(r)
            sep = "&" if "?" in location else "?"
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            if isinstance(data, Path):
                with open(data, "rb") as fh:
                    self._send("PUT", f"{location}{sep}digest={digest_}", scopes, data=fh, headers=headers, ok=(201,))
            else:
                self._send("PUT", f"{location}{sep}digest={digest_}", scopes, data=data, headers=headers, ok=(201,))
        return {"digest": digest_, "size": size}

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> str:
        """Make `digest` of `from_repo` part of `repo` without moving bytes (cross-repository
        mount); a registry that will not mount gets the bytes copied. Returns how: "present",
        "mounted" or "copied"."""
        if self.blob_exists(repo, digest):
            return "present"
        scopes = [_scope(repo, "pull,push"), _scope(from_repo, "pull")]
        r = self._send("POST", f"/v2/{repo}/blobs/uploads/?mount={digest}&from={from_repo}", scopes, ok=(201, 202))
        if r.status_code == 201:
            return "mounted"
        # 202: the registry opened an upload instead (mount refused); finish it with the bytes.
        location = self._location(r)
        data = self.get_blob(from_repo, digest)
        sep = "&" if "?" in location else "?"
        self._send("PUT", f"{location}{sep}digest={digest}", scopes, data=data,
                   headers={"Content-Type": "application/octet-stream"}, ok=(201,))
        return "copied"

    def get_blob(self, repo: str, digest: str) -> bytes:
        r = self._send("GET", f"/v2/{repo}/blobs/{digest}", [_scope(repo, "pull")], ok=(200,))
        if sha256_digest(r.content) != digest:
            raise RegistryError(f"{repo}@{digest}: the registry sent bytes of another digest")
        return r.content

    def download_blob(self, repo: str, digest: str, dest: Path) -> None:
        """Stream a blob into `dest`, checking its digest before the file is put in place."""
        r = self._send("GET", f"/v2/{repo}/blobs/{digest}", [_scope(repo, "pull")], ok=(200,), stream=True)
        h = hashlib.sha256()
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            with open(tmp, "wb") as fh:
                for block in r.iter_content(CHUNK):
                    h.update(block)
                    fh.write(block)
            if "sha256:" + h.hexdigest() != digest:
                raise RegistryError(f"{repo}@{digest}: the registry sent bytes of another digest")
            tmp.replace(dest)
        finally:
            r.close()
            tmp.unlink(missing_ok=True)

    # -------------------------------------------------------------- manifests
    def get_manifest(self, repo: str, ref: str) -> Manifest:
        r = self._send("GET", f"/v2/{repo}/manifests/{ref}", [_scope(repo, "pull")], ok=(200, 404),
                       headers={"Accept": ", ".join(MANIFEST_TYPES)})
        if r.status_code == 404:
            sep = "@" if ref.startswith("sha256:") else ":"
            raise RegistryError(f"{self.host}/{repo}{sep}{ref}: no such artifact in the registry")
        if len(r.content) > MAX_MANIFEST_BYTES:
            raise RegistryError(f"{repo}:{ref}: the manifest is over {MAX_MANIFEST_BYTES} bytes")
        digest = sha256_digest(r.content)
        if ref.startswith("sha256:") and digest != ref:
            raise RegistryError(f"{repo}@{ref}: the registry sent a manifest of another digest")
        media_type = r.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            media_type = json.loads(r.content).get("mediaType") or media_type
        except ValueError:
            raise RegistryError(f"{repo}:{ref}: the manifest is not JSON") from None
        return Manifest(r.content, media_type, digest)

    def manifest_digest(self, repo: str, ref: str) -> str | None:
        """The digest `ref` points to now, or None when there is no such tag/manifest."""
        r = self._send("HEAD", f"/v2/{repo}/manifests/{ref}", [_scope(repo, "pull")], ok=(200, 404),
                       headers={"Accept": ", ".join(MANIFEST_TYPES)})
        if r.status_code == 404:
            return None
        digest = r.headers.get("Docker-Content-Digest")
        return digest if digest and _DIGEST.fullmatch(digest) else self.get_manifest(repo, ref).digest

    def put_manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> str:
        digest = sha256_digest(body)
        self._send("PUT", f"/v2/{repo}/manifests/{ref}", [_scope(repo, "pull,push")], data=body,
                   headers={"Content-Type": media_type}, ok=(201,))
        return digest

    def delete_manifest(self, repo: str, digest: str) -> None:
        self._send("DELETE", f"/v2/{repo}/manifests/{digest}", [_scope(repo, "delete")], ok=(202, 404))

    # -------------------------------------------------------------- listing
    def tags(self, repo: str) -> list[str]:
        r = self._send("GET", f"/v2/{repo}/tags/list?n=1000", [_scope(repo, "pull")], ok=(200, 404))
        if r.status_code == 404:
            return []
        return sorted((_json(r).get("tags") or []))

    def catalog(self) -> list[str]:
        r = self._send("GET", "/v2/_catalog?n=1000", ["registry:catalog:*"], ok=(200,))
        return sorted(_json(r).get("repositories") or [])

    # -------------------------------------------------------------- referrers
    def referrers(self, repo: str, digest: str) -> tuple[list[dict], str]:
        """Descriptors of the manifests whose `subject` is `digest`, and how they were found:
        "api" (the referrers API) or "tag" (the `sha256-<hex>` index of the fallback schema)."""
        r = self._send("GET", f"/v2/{repo}/referrers/{digest}", [_scope(repo, "pull")], ok=(200, 404),
                       headers={"Accept": INDEX_OCI})
        if r.status_code == 200 and r.headers.get("Content-Type", "").startswith(INDEX_OCI):
            return list(_json(r).get("manifests") or []), "api"
        index = self.fallback_index(repo, digest)
        return (list(index.json.get("manifests") or []) if index else []), "tag"

    def fallback_index(self, repo: str, digest: str) -> Manifest | None:
        tag = fallback_tag(digest)
        if self.manifest_digest(repo, tag) is None:
            return None
        return self.get_manifest(repo, tag)

    # -------------------------------------------------------------- transport
    def ping(self) -> None:
        self._send("GET", "/v2/", [], ok=(200,))

    def _location(self, r) -> str:
        location = r.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.url}: an upload answer without a Location")
        return urljoin(self.url + "/", location)

    def _send(self, method: str, path: str, scopes: list[str], ok: Iterable[int], **kw):
        import requests

        url = path if path.startswith(("http://", "https://")) else self.url + path
        headers = dict(kw.pop("headers", {}))
        body = kw.get("data")
        for attempt in (0, 1):
            auth = self._auth_header(scopes)
            if auth:
                headers["Authorization"] = auth
            try:
                r = self._session.request(method, url, headers=headers, timeout=self.timeout,
                                          allow_redirects=True, **kw)
            except requests.RequestException as e:
                raise RegistryError(f"cannot reach the registry at {self.url}: {describe(e)}") from None
            if r.status_code == 401 and attempt == 0:
                r.close()
                self._answer_challenge(r.headers.get("WWW-Authenticate", ""), scopes)
                if hasattr(body, "seek"):
                    body.seek(0)
                continue
            break
        if r.status_code in ok:
            return r
        raise RegistryError(self._failure(method, path, r))

    def _failure(self, method: str, path: str, r) -> str:
        what = f"{method} {urlsplit(path).path if '://' in path else path.split('?')[0]}"
        detail = ""
        try:
            errors = r.json().get("errors") or []
            if errors:
                detail = f": {errors[0].get('code', '')} {errors[0].get('message', '')}".rstrip()
        except ValueError:
            pass
        if r.status_code == 401:
            who = str(self.credentials) if self.credentials else "no credentials (docker login, or set " \
                  "TRAINER_REGISTRY_USERNAME and TRAINER_REGISTRY_PASSWORD)"
            return f"the registry {self.host} refused {what}: unauthorized with {who}{detail}"
        if r.status_code == 403:
            return f"the registry {self.host} denied {what}: forbidden{detail}"
        return f"the registry {self.host} answered {r.status_code} to {what}{detail}"

    def _auth_header(self, scopes: list[str]) -> str | None:
        if self._basic and self.credentials is not None:
            raw = f"{self.credentials.username}:{self.credentials.secret}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        token = self._tokens.get(tuple(sorted(scopes)))
        return f"Bearer {token}" if token else None

    def _answer_challenge(self, header: str, scopes: list[str]) -> None:
        scheme, _, params = header.partition(" ")
        if scheme.lower() == "basic":
            self._basic = True
            return
        if scheme.lower() != "bearer":
            return          # the retry fails with 401 and says so
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        realm = fields.get("realm")
        if not realm:
            raise RegistryError(f"the registry {self.host} asked for a bearer token without a realm")
        query: list[tuple[str, str]] = []
        if fields.get("service"):
            query.append(("service", fields["service"]))
        for scope in scopes or ([fields["scope"]] if fields.get("scope") else []):
            query.append(("scope", scope))
        auth = None
        if self.credentials is not None and not self.credentials.token:
            auth = (self.credentials.username, self.credentials.secret)
        import requests

        try:
            if self.credentials is not None and self.credentials.token:
                r = self._session.post(realm, data={"grant_type": "refresh_token", "client_id": "trainer",
                                                    "refresh_token": self.credentials.secret,
                                                    **dict(query[:1])}, timeout=self.timeout)
            else:
                r = self._session.get(realm, params=query, auth=auth, timeout=self.timeout)
        except requests.RequestException as e:
            raise RegistryError(f"cannot reach the token service of {self.host}: {describe(e)}") from None
        if r.status_code != 200:
            raise RegistryError(f"the token service of {self.host} refused a token ({r.status_code}) with "
                                f"{self.credentials or 'no credentials'}")
        data = _json(r)
        token = data.get("token") or data.get("access_token")
        if not token:
            raise RegistryError(f"the token service of {self.host} answered without a token")
        self._tokens[tuple(sorted(scopes))] = token


def fallback_tag(digest: str) -> str:
    """The referrers tag schema of the OCI distribution spec 1.1: `sha256:<hex>` -> `sha256-<hex>`."""
    algorithm, _, hexpart = digest.partition(":")
    return f"{algorithm}-{hexpart}"[:128]


def _scope(repo: str, actions: str) -> str:
    return f"repository:{repo}:{actions}"


def _json(r) -> Any:
    try:
        return r.json()
    except ValueError:
        raise RegistryError(f"the registry answered something that is not JSON ({r.status_code})") from None
