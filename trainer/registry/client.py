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
Credentials come from `trainer.registry.auth`; they are never in a URL, a message or a log line,
and they go to this registry's host only: redirects are followed by hand and lose Authorization
on another host, a token realm on another host or over plain http gets none, and plain http is
used only for loopback addresses (an IP address check, not a "127." prefix).

Every answer is read raw (no compression) in blocks under a cap (a manifest 4 MiB, a blob its
descriptor's size) and one overall deadline per request, headers included (deadline.py), and
server text is stripped of control characters before it reaches a message.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urljoin, urlsplit

from trainer.errors import RegistryError, describe
from trainer.registry.auth import Credentials, find_credentials
from trainer.registry.deadline import DeadlineAdapter, Watchdog

MANIFEST_OCI = "application/vnd.oci.image.manifest.v1+json"
INDEX_OCI = "application/vnd.oci.image.index.v1+json"
MANIFEST_DOCKER = "application/vnd.docker.distribution.manifest.v2+json"
LIST_DOCKER = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (MANIFEST_OCI, INDEX_OCI, MANIFEST_DOCKER, LIST_DOCKER)
EMPTY_JSON = "application/vnd.oci.empty.v1+json"

TIMEOUT_S = 60
# The overall deadline of one request (connect, headers and body), not only of each socket read:
# a server that trickles a byte every few seconds fails here. Blobs get time for their size too.
ENV_TIMEOUT = "TRAINER_REGISTRY_TIMEOUT_S"
MIN_BLOB_RATE = 1 << 20          # bytes/s a blob transfer is granted on top of the deadline
CHUNK = 1 << 20
# A manifest is JSON of a few KiB; a registry answering more is not read past the cap.
MAX_MANIFEST_BYTES = 4 << 20
MAX_JSON_BYTES = 4 << 20         # tags, catalog, token and error answers
MAX_BLOB_BYTES = 1 << 40         # a descriptor's size above this is not believed
MAX_ADDRESS = 300                # host (253) + port + scheme
MAX_REDIRECTS = 5
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\\\)?|[\x00-\x1f\x7f-\x9f]")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
# OCI distribution: a repository name is path components of [a-z0-9] with . _ __ - separators.
_REPO = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def printable(text: object, limit: int = 300) -> str:
    """Server-provided text made safe for a terminal: escape sequences and control characters
    removed (a registry's error message must not move the cursor or retitle the window)."""
    return _CONTROL.sub("", str(text))[:limit]


def is_loopback(host: str) -> bool:
    """`localhost`, ::1 or an address in 127.0.0.0/8, parsed as an IP address: not any name that
    begins with "127."."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_timeout() -> float:
    raw = os.environ.get(ENV_TIMEOUT)
    if not raw:
        return TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise RegistryError(f"${ENV_TIMEOUT} must be a number of seconds, got {printable(raw, 40)!r}") from None
    if not 0 < value <= 86400:
        raise RegistryError(f"${ENV_TIMEOUT} must be between 0 and 86400 seconds, got {raw}")
    return value


def descriptor_size(desc: object, where: str) -> int:
    """A descriptor's declared size: an int from 0 to MAX_BLOB_BYTES (bool is not a size)."""
    size = desc.get("size") if isinstance(desc, dict) else None
    if type(size) is not int or not 0 <= size <= MAX_BLOB_BYTES:
        raise RegistryError(f"{where}: a descriptor without a valid size ({printable(size, 40)!r})")
    return size


def descriptor_digest(desc: object, where: str) -> str:
    digest = desc.get("digest") if isinstance(desc, dict) else None
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise RegistryError(f"{where}: a descriptor without a sha256 digest ({printable(digest, 80)!r})")
    return digest


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
        try:
            data = json.loads(self.body)
        except ValueError:
            raise RegistryError(f"the manifest {self.digest} is not JSON") from None
        if not isinstance(data, dict):
            raise RegistryError(f"the manifest {self.digest} is not a JSON object")
        return data


def registry_url(address: str) -> str:
    """`host[:port]` -> https://host[:port]; loopback hosts default to http (a local registry
    has no certificate); an explicit http:// or https:// is kept."""
    if not isinstance(address, str) or len(address) > MAX_ADDRESS:
        raise RegistryError(f"registry address is {len(str(address))} characters; host[:port] has at most "
                            f"{MAX_ADDRESS}")
    if _CONTROL.search(address) or " " in address.strip():
        raise RegistryError(f"registry address holds spaces or control characters: {printable(address, 80)!r}")
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
    try:
        parts = urlsplit(f"//{address}")
        host, _ = parts.hostname, parts.port
    except ValueError:
        raise RegistryError(f"registry address must be host[:port], got {printable(address, 80)!r}") from None
    if not host:
        raise RegistryError(f"registry address must be host[:port], got {printable(address, 80)!r}")
    return f"{'http' if is_loopback(host) else 'https'}://{address}"


class Registry:
    """One registry, its credentials found once; every call raises RegistryError on failure."""

    def __init__(self, address: str, credentials: Credentials | None | bool = True, timeout: float | None = None):
        import requests

        self.url = registry_url(address)
        self.host = urlsplit(self.url).netloc
        self.hostname = urlsplit(self.url).hostname or ""
        self.credentials = find_credentials(self.host) if credentials is True else (credentials or None)
        self.timeout = default_timeout() if timeout is None else timeout
        self._session = requests.Session()
        self._session.trust_env = False      # no ~/.netrc credentials, no proxy for a local registry
        for scheme in ("http://", "https://"):
            self._session.mount(scheme, DeadlineAdapter())
        # Bodies are read raw and capped as they arrive: no compression (no decompression bomb,
        # and a manifest's digest is over the bytes sent).
        self._session.headers["Accept-Encoding"] = "identity"
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
                    self._upload(f"{location}{sep}digest={digest_}", scopes, fh, size, headers)
            else:
                self._upload(f"{location}{sep}digest={digest_}", scopes, data, size, headers)
        return {"digest": digest_, "size": size}

    def mount_blob(self, repo: str, digest: str, from_repo: str, size: int | None = None) -> str:
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
        data = self.get_blob(from_repo, digest, size)
        sep = "&" if "?" in location else "?"
        self._upload(f"{location}{sep}digest={digest}", scopes, data, len(data),
                     {"Content-Type": "application/octet-stream"})
        return "copied"

    def _upload(self, url: str, scopes: list[str], data, size: int, headers: dict) -> None:
        """A blob's PUT: given time for its size (a deadline of its own, like a download's)."""
        deadline = time.monotonic() + self.timeout + size / MIN_BLOB_RATE
        dog = Watchdog(deadline - time.monotonic()).start()
        try:
            self._send("PUT", url, scopes, data=data, headers=headers, ok=(201,), deadline=deadline)
        finally:
            dog.stop()

    def get_blob(self, repo: str, digest: str, size: int | None = None) -> bytes:
        """A small blob (a config, a record) in memory: at most `size` bytes (its descriptor's),
        else MAX_JSON_BYTES."""
        cap = MAX_JSON_BYTES if size is None else size
        chunks: list[bytes] = []
        self._stream_blob(repo, digest, cap, chunks.append)
        data = b"".join(chunks)
        if size is not None and len(data) != size:
            raise RegistryError(f"{repo}@{digest}: the registry sent {len(data)} bytes, the descriptor says {size}")
        return data

    def download_blob(self, repo: str, digest: str, size: int, write) -> None:
        """Stream a blob into `write` (a file's write): never more than its descriptor's `size`
        bytes, digest checked at the end (the caller puts the file in place only then)."""
        got = self._stream_blob(repo, digest, size, write)
        if got != size:
            raise RegistryError(f"{repo}@{digest}: the registry sent {got} bytes, the descriptor says {size}")

    def _stream_blob(self, repo: str, digest: str, cap: int, write) -> int:
        deadline = time.monotonic() + self.timeout + cap / MIN_BLOB_RATE
        dog = Watchdog(deadline - time.monotonic()).start()
        try:
            r = self._send("GET", f"/v2/{repo}/blobs/{digest}", [_scope(repo, "pull")], ok=(200,), stream=True,
                           deadline=deadline)
            h, got = hashlib.sha256(), 0
            try:
                for block in _chunks(r, cap, deadline, f"{repo}@{digest}", self.host):
                    h.update(block)
                    got += len(block)
                    write(block)
            finally:
                r.close()
        finally:
            dog.stop()
        if "sha256:" + h.hexdigest() != digest:
            raise RegistryError(f"{repo}@{digest}: the registry sent bytes of another digest")
        return got

    # -------------------------------------------------------------- manifests
    def get_manifest(self, repo: str, ref: str) -> Manifest:
        r = self._send("GET", f"/v2/{repo}/manifests/{ref}", [_scope(repo, "pull")], ok=(200, 404),
                       headers={"Accept": ", ".join(MANIFEST_TYPES)}, cap=MAX_MANIFEST_BYTES,
                       what=f"the manifest {repo}:{ref}")
        if r.status_code == 404:
            sep = "@" if ref.startswith("sha256:") else ":"
            raise RegistryError(f"{self.host}/{repo}{sep}{ref}: no such artifact in the registry")
        digest = sha256_digest(r.content)
        if ref.startswith("sha256:") and digest != ref:
            raise RegistryError(f"{repo}@{ref}: the registry sent a manifest of another digest")
        media_type = r.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            data = json.loads(r.content)
        except ValueError:
            raise RegistryError(f"{repo}:{ref}: the manifest is not JSON") from None
        if not isinstance(data, dict):
            raise RegistryError(f"{repo}:{ref}: the manifest is not a JSON object")
        declared = data.get("mediaType")
        if declared is not None and not isinstance(declared, str):
            raise RegistryError(f"{repo}:{ref}: the manifest's mediaType is not a string")
        return Manifest(r.content, printable(declared or media_type, 200), digest)

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
        # Names the registry lists reach a terminal: only well-formed ones are kept.
        return sorted(t for t in _json_list(r, "tags") if _TAG.fullmatch(t))

    def catalog(self) -> list[str]:
        r = self._send("GET", "/v2/_catalog?n=1000", ["registry:catalog:*"], ok=(200,))
        return sorted(x for x in _json_list(r, "repositories") if len(x) <= 255 and _REPO.fullmatch(x))

    # -------------------------------------------------------------- referrers
    def referrers(self, repo: str, digest: str) -> tuple[list[dict], str]:
        """Descriptors of the manifests whose `subject` is `digest`, and how they were found:
        "api" (the referrers API) or "tag" (the `sha256-<hex>` index of the fallback schema)."""
        r = self._send("GET", f"/v2/{repo}/referrers/{digest}", [_scope(repo, "pull")], ok=(200, 404),
                       headers={"Accept": INDEX_OCI})
        if r.status_code == 200 and r.headers.get("Content-Type", "").startswith(INDEX_OCI):
            found = _json(r)
            manifests = found.get("manifests") if isinstance(found, dict) else None
            if not isinstance(manifests, list):
                raise RegistryError(f"{repo}@{digest}: the referrers answer has no list of manifests")
            return [m for m in manifests if isinstance(m, dict)], "api"
        index = self.fallback_index(repo, digest)
        manifests = index.json.get("manifests") if index else []
        if not isinstance(manifests, list):
            raise RegistryError(f"{repo}:{fallback_tag(digest)}: the referrers index has no list of manifests")
        return [m for m in manifests if isinstance(m, dict)], "tag"

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

    def _send(self, method: str, path: str, scopes: list[str], ok: Iterable[int], *, stream: bool = False,
              cap: int = MAX_JSON_BYTES, what: str = "the answer", deadline: float | None = None, **kw):
        """One request: the 401 challenge answered once, redirects followed by hand (credentials
        go to this registry's host only, never to a redirect's other host), the body read whole
        (at most `cap` bytes) unless `stream`, all within one overall deadline."""
        if deadline is None:          # a request of its own: its own watchdog
            deadline = time.monotonic() + self.timeout
            dog = Watchdog(self.timeout).start()
            try:
                return self._send(method, path, scopes, ok, stream=stream, cap=cap, what=what, deadline=deadline,
                                  **kw)
            finally:
                dog.stop()
        url = path if path.startswith(("http://", "https://")) else self.url + path
        headers = dict(kw.pop("headers", {}))
        body = kw.get("data")
        for attempt in (0, 1):
            auth = self._auth_header(scopes)
            r = self._request(method, url, headers, auth, deadline, **kw)
            if r.status_code == 401 and attempt == 0:
                challenge = r.headers.get("WWW-Authenticate", "")
                r.close()
                self._answer_challenge(challenge, scopes, deadline)
                if hasattr(body, "seek"):
                    body.seek(0)
                continue
            break
        if r.status_code not in ok:
            _read(r, MAX_JSON_BYTES, deadline, "an error answer", self.host, tolerate_cap=True)
            raise RegistryError(self._failure(method, path, r))
        if not stream:
            _read(r, cap, deadline, what, self.host)
        return r

    def _request(self, method: str, url: str, headers: dict, auth: str | None, deadline: float, **kw):
        import requests

        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            send = dict(headers)
            if auth and parts.netloc == self.host and parts.scheme == urlsplit(self.url).scheme:
                send["Authorization"] = auth
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RegistryError(f"the registry {self.host} did not answer within {self.timeout:g} s "
                                    f"(${ENV_TIMEOUT})")
            try:
                r = self._session.request(method, url, headers=send, timeout=min(remaining, self.timeout),
                                          allow_redirects=False, stream=True, **kw)
            except requests.RequestException as e:
                if time.monotonic() >= deadline:
                    raise RegistryError(f"the registry {self.host} did not answer within {self.timeout:g} s "
                                        f"(${ENV_TIMEOUT})") from None
                raise RegistryError(f"cannot reach the registry at {self.url}: {describe(e)}") from None
            if r.status_code not in (301, 302, 303, 307, 308) or not r.headers.get("Location"):
                return r
            r.close()
            target = urljoin(url, r.headers["Location"])
            scheme, host = urlsplit(target).scheme, urlsplit(target).hostname or ""
            if scheme not in ("http", "https") or (scheme == "http" and not is_loopback(host)
                                                    and urlsplit(self.url).scheme == "https"):
                raise RegistryError(f"the registry {self.host} redirected to {printable(target, 120)!r}: "
                                    f"not https; refused")
            if r.status_code == 303:
                method, kw = "GET", {k: v for k, v in kw.items() if k != "data"}
            url = target
        raise RegistryError(f"the registry {self.host} redirected more than {MAX_REDIRECTS} times")

    def _failure(self, method: str, path: str, r) -> str:
        what = f"{method} {urlsplit(path).path if '://' in path else path.split('?')[0]}"
        detail = ""
        try:
            errors = r.json().get("errors") or []
            if errors and isinstance(errors[0], dict):
                detail = f": {printable(errors[0].get('code', ''), 60)} {printable(errors[0].get('message', ''), 200)}"
                detail = detail.rstrip()
        except (ValueError, AttributeError, TypeError):
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

    def _answer_challenge(self, header: str, scopes: list[str], deadline: float) -> None:
        scheme, _, params = header.partition(" ")
        if scheme.lower() == "basic":
            if self.credentials is not None and urlsplit(self.url).scheme != "https" \
                    and not is_loopback(self.hostname):
                raise RegistryError(f"the registry {self.host} asks for a password over plain http; not sent")
            self._basic = True
            return
        if scheme.lower() != "bearer":
            return          # the retry fails with 401 and says so
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        realm = fields.get("realm")
        if not realm:
            raise RegistryError(f"the registry {self.host} asked for a bearer token without a realm")
        realm_parts = urlsplit(realm)
        realm_host = realm_parts.hostname or ""
        if realm_parts.scheme not in ("http", "https") or not realm_host:
            raise RegistryError(f"the registry {self.host} names a token service that is not an http(s) URL")
        secure = realm_parts.scheme == "https" or is_loopback(realm_host)
        if self.credentials is not None and (realm_host != self.hostname or not secure):
            why = "another host" if realm_host != self.hostname else "plain http"
            raise RegistryError(f"the registry {self.host} sends for a token to {printable(realm_host, 100)} "
                                f"({why}); the credentials configured for {self.host} are not sent there")
        query: list[tuple[str, str]] = []
        if fields.get("service"):
            query.append(("service", fields["service"]))
        for scope in scopes or ([fields["scope"]] if fields.get("scope") else []):
            query.append(("scope", scope))
        auth = None
        if self.credentials is not None and not self.credentials.token:
            raw = f"{self.credentials.username}:{self.credentials.secret}".encode()
            auth = "Basic " + base64.b64encode(raw).decode()
        import requests

        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RegistryError(f"the token service of {self.host} did not answer within {self.timeout:g} s")
        try:
            if self.credentials is not None and self.credentials.token:
                r = self._session.post(realm, data={"grant_type": "refresh_token", "client_id": "trainer",
                                                    "refresh_token": self.credentials.secret,
                                                    **dict(query[:1])}, timeout=min(remaining, self.timeout),
                                       allow_redirects=False, stream=True)
            else:
                r = self._session.get(realm, params=query, headers={"Authorization": auth} if auth else {},
                                      timeout=min(remaining, self.timeout), allow_redirects=False, stream=True)
        except requests.RequestException as e:
            raise RegistryError(f"cannot reach the token service of {self.host}: {describe(e)}") from None
        try:
            _read(r, MAX_JSON_BYTES, deadline, "the token answer", self.host)
        finally:
            r.close()
        if r.status_code != 200:
            raise RegistryError(f"the token service of {self.host} refused a token ({r.status_code}) with "
                                f"{self.credentials or 'no credentials'}")
        data = _json(r)
        token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
        if not token or not isinstance(token, str):
            raise RegistryError(f"the token service of {self.host} answered without a token")
        self._tokens[tuple(sorted(scopes))] = token


def _chunks(r, cap: int, deadline: float, what: str, host: str):
    """The body of a streamed answer, block by block as they arrive; RegistryError past `cap`
    bytes or past the deadline (checked after every socket read, so a trickle cannot stretch it)."""
    import requests
    import urllib3

    got = 0
    try:
        while True:
            if time.monotonic() > deadline:
                raise RegistryError(f"the registry {host} is sending {what} too slowly: not done within the "
                                    f"deadline (${ENV_TIMEOUT})")
            block = r.raw.read1(CHUNK) if hasattr(r.raw, "read1") else r.raw.read(CHUNK)
            if not block:
                if time.monotonic() >= deadline:      # the watchdog ended it
                    raise RegistryError(f"the registry {host} is sending {what} too slowly: not done within "
                                        f"the deadline (${ENV_TIMEOUT})")
                return
            got += len(block)
            if got > cap:
                raise RegistryError(f"the registry {host} sent more than {cap} bytes for {what}; refused")
            yield block
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
        if time.monotonic() >= deadline:
            raise RegistryError(f"the registry {host} is sending {what} too slowly: not done within the "
                                f"deadline (${ENV_TIMEOUT})") from None
        raise RegistryError(f"the registry {host} broke off {what}: {describe(e)}") from None


def _read(r, cap: int, deadline: float, what: str, host: str, tolerate_cap: bool = False) -> bytes:
    """Read a whole (small) answer into `r._content` so r.content / r.json() work, bounded."""
    chunks: list[bytes] = []
    try:
        for block in _chunks(r, cap, deadline, what, host):
            chunks.append(block)
    except RegistryError:
        if not tolerate_cap:
            raise
    finally:
        r.close()
    r._content = b"".join(chunks)
    r._content_consumed = True
    return r._content


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


def _json_list(r, key: str) -> list[str]:
    data = _json(r)
    items = data.get(key) if isinstance(data, dict) else None
    if items is None:
        return []
    if not isinstance(items, list):
        raise RegistryError(f"the registry's {key} answer is not a list")
    return [x for x in items if isinstance(x, str)]

