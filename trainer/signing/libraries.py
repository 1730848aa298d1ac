"""The signing libraries are an extra (`trainer[signing]`): say how to install them when absent."""
from __future__ import annotations

from importlib.util import find_spec

from trainer.errors import RuntimeNotInstalledError

INSTALL = "pip install 'trainer[signing]'"
MODULES = ("model_signing", "cyclonedx", "securesystemslib", "in_toto_attestation", "OpenSSL")


def missing() -> list[str]:
    return [m for m in MODULES if find_spec(m) is None]


def require(doing: str) -> None:
    gone = missing()
    if gone:
        raise RuntimeNotInstalledError(f"{doing} needs {', '.join(gone)}, not installed here: {INSTALL}")
