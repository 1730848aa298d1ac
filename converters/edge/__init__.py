"""Edge bundles for ARM boards, and their check on an emulated aarch64 CPU.

    write_bundle(out_dir, models, inputs, labels, preprocessing) -> bundle folder
    load_bundle(bundle_dir) -> Bundle            (every checksum verified)
    run_bundle(bundle_dir, inputs, cpu) -> {model name: outputs}   (qemu-user aarch64)
    setup_edge(force=False) -> arm64 root        (`trainer edge setup`)
"""
from __future__ import annotations

import importlib

_EXPORTS = {"Bundle": "bundle", "load_bundle": "bundle", "write_bundle": "bundle",
            "EdgeRun": "qemu", "run_bundle": "qemu", "run_bundle_detailed": "qemu",
            "valid_cpus": "qemu", "setup_edge": "setup"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy, so `python -m converters.edge.setup` does not import its own module twice.
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"converters.edge.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'converters.edge' has no attribute {name!r}")
