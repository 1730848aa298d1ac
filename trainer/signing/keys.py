"""Signing keys and the keys each environment trusts.

    $TRAINER_KEYS_DIR (default $TRAINER_HOME/keys)/
      signing.key              this machine's private key (EC P-256, PEM, 0600; never printed)
      signing.pub              its public key
      trusted/<env>/<id>.pub   the public keys `<env>` (dev, staging, production) trusts

CI signs with a key of its own: $TRAINER_SIGNING_KEY names a PEM file, or
$TRAINER_SIGNING_KEY_PEM holds the PEM itself (a masked secret); either wins over signing.key.
A key's id is the sha256 of its public key's PEM: the hint OpenSSF model signing writes in
its bundles, so one id names a key everywhere.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import UsageError

ENV_KEYS_DIR = "TRAINER_KEYS_DIR"
ENV_SIGNING_KEY = "TRAINER_SIGNING_KEY"
ENV_SIGNING_KEY_PEM = "TRAINER_SIGNING_KEY_PEM"
ENVIRONMENTS = ("dev", "staging", "production")
PRIVATE_NAME = "signing.key"
PUBLIC_NAME = "signing.pub"


def keys_dir() -> Path:
    from trainer.home import trainer_home

    return Path(os.environ[ENV_KEYS_DIR]) if os.environ.get(ENV_KEYS_DIR) else trainer_home() / "keys"


@dataclass(frozen=True)
class PublicKey:
    key_id: str
    pem: bytes
    source: str

    def crypto(self):
        from cryptography.hazmat.primitives import serialization

        return serialization.load_pem_public_key(self.pem)


def _public_pem(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(pem: bytes) -> str:
    return hashlib.sha256(pem).hexdigest()


def load_public(path: Path) -> PublicKey:
    """A PEM public key (EC P-256/384/521, what model signing takes), normalized."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: not a readable PEM public key ({type(e).__name__})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise UsageError(f"{path}: an elliptic-curve (P-256) public key is needed, not {type(key).__name__}")
    pem = _public_pem(key)
    return PublicKey(key_id(pem), pem, str(path))


def init(force: bool = False) -> dict:
    """Make this machine's key pair (private 0600) and trust its public key in every environment;
    an existing pair is kept unless `force`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = keys_dir()
    private, public = folder / PRIVATE_NAME, folder / PUBLIC_NAME
    if private.exists() and not force:
        raise UsageError(f"{private} exists already (trainer keys init --force replaces it; whatever it "
                         f"signed then no longer verifies against the new key)")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    tmp = folder / f".{PRIVATE_NAME}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.chmod(tmp, 0o600)
    os.replace(tmp, private)
    public_pem = _public_pem(key.public_key())
    public.write_bytes(public_pem)
    pub = load_public(public)
    for env in ENVIRONMENTS:
        trust(public, env)
    return {"private": str(private), "public": str(public), "key_id": pub.key_id,
            "trusted_in": list(ENVIRONMENTS)}


def trust(path: Path, env: str) -> PublicKey:
    """Add a public key to the keys `env` trusts."""
    _check_env(env)
    pub = load_public(path)
    folder = keys_dir() / "trusted" / env
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{pub.key_id[:16]}.pub").write_bytes(pub.pem)
    return pub


def untrust(key_id_prefix: str, env: str) -> list[str]:
    _check_env(env)
    removed = []
    for pub in trusted(env):
        if pub.key_id.startswith(key_id_prefix) and len(key_id_prefix) >= 8:
            Path(pub.source).unlink()
            removed.append(pub.key_id)
    return removed


def trusted(env: str) -> list[PublicKey]:
    """The public keys `env` trusts (none configured: an empty list)."""
    _check_env(env)
    folder = keys_dir() / "trusted" / env
    return [load_public(p) for p in sorted(folder.glob("*.pub"))] if folder.is_dir() else []


def listing() -> list[dict]:
    rows = []
    for env in ENVIRONMENTS:
        for pub in trusted(env):
            rows.append({"env": env, "key_id": pub.key_id[:16], "file": pub.source})
    return rows


def private_key_file(tmp: Path) -> Path:
    """The PEM file of the signing key: $TRAINER_SIGNING_KEY, $TRAINER_SIGNING_KEY_PEM (written
    to a 0600 file in `tmp`), or signing.key of `trainer keys init`."""
    if os.environ.get(ENV_SIGNING_KEY_PEM):
        path = tmp / "signing.key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(os.environ[ENV_SIGNING_KEY_PEM])
        return path
    if os.environ.get(ENV_SIGNING_KEY):
        path = Path(os.environ[ENV_SIGNING_KEY])
        if not path.is_file():
            raise UsageError(f"${ENV_SIGNING_KEY} names {path}, which is not a file")
        return path
    path = keys_dir() / PRIVATE_NAME
    if not path.is_file():
        raise UsageError(f"no signing key: run `trainer keys init`, or set ${ENV_SIGNING_KEY} (a PEM file) "
                         f"or ${ENV_SIGNING_KEY_PEM}")
    return path


def has_signing_key() -> bool:
    return bool(os.environ.get(ENV_SIGNING_KEY_PEM) or os.environ.get(ENV_SIGNING_KEY)
                or (keys_dir() / PRIVATE_NAME).is_file())


def load_private(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), None)
    except (OSError, ValueError, TypeError) as e:
        raise UsageError(f"the signing key {path} is not a readable unencrypted PEM key "
                         f"({type(e).__name__})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UsageError(f"the signing key {path} is not an elliptic-curve (P-256) key")
    return key


def public_of(private) -> PublicKey:
    pem = _public_pem(private.public_key())
    return PublicKey(key_id(pem), pem, "signing key")


def _check_env(env: str) -> None:
    if env not in ENVIRONMENTS:
        raise UsageError(f"--env must be one of {', '.join(ENVIRONMENTS)}, got {str(env)[:40]!r}")



