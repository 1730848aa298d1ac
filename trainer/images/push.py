"""`trainer image push`: a runtime image from the container storage to an OCI registry, as
`<project>/runtime-<name>:<lock digest 12>` (project `dev`: images are promoted from there, by
digest, like models).

`buildah push --disable-compression`: the layers go as they are stored (a local registry gets
the 2 GiB torch image in seconds instead of minutes of gzip on two cores). The digest is the one
the registry stores (buildah's `--digestfile`), checked back with `skopeo inspect`.
"""
from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path

from trainer.errors import ImageError
from trainer.images import engine


def push(ref: str, host: str, repository: str, tag: str, *, username: str | None = None,
         password: str | None = None, plain_http: bool = False) -> dict:
    """Push local image `ref` to `host/repository:tag`; returns {"ref", "digest"}."""
    dest = f"{host}/{repository}:{tag}"
    with tempfile.TemporaryDirectory(prefix="trainer-push-") as tmp:     # 0700: the login stays ours
        creds = []
        if username:
            # An auth file, not --creds: a command line is readable by every local user.
            authfile = Path(tmp) / "auth.json"
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            authfile.write_text(json.dumps({"auths": {host: {"auth": token}}}))
            authfile.chmod(0o600)
            creds = [f"--authfile={authfile}"]
        digestfile = Path(tmp) / "digest"
        engine.tool("buildah", "push", "--quiet", "--disable-compression", f"--digestfile={digestfile}",
                    f"--tls-verify={'false' if plain_http else 'true'}", *creds, ref, f"docker://{dest}",
                    timeout=1800, what=f"pushing {ref} to {dest}")
        digest = digestfile.read_text().strip()
        raw = engine.tool("skopeo", "inspect", f"--tls-verify={'false' if plain_http else 'true'}", *creds,
                          f"docker://{dest}", what=f"skopeo inspect {dest}")
    stored = json.loads(raw).get("Digest", "")
    if stored != digest:
        raise ImageError(f"{dest}: the registry holds {stored or 'nothing'}, buildah pushed {digest}")
    return {"ref": dest, "digest": digest, "pinned": f"{host}/{repository}@{digest}"}
