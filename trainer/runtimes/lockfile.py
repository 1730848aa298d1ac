"""The lock-file format, stdlib only: parse the pins, apply a build variant, render what pip
installs. A Dockerfile runs this file as a script before anything else is installed:

    python lockfile.py requirements.lock --variant gpu > requirements.txt

A lock is a fully pinned requirements file (`name==version` lines: what the local venv installs)
followed by its *variants*: other builds of the same versions for the images, as lines pip reads as
comments. `#@<variant> -<pin>` drops a pin of the base, `#@<variant> +<requirement>` adds one, `#@ text` is
a comment of that section:

    tensorflow-cpu==2.21.0
    ...
    #@gpu -tensorflow-cpu==2.21.0
    #@gpu +tensorflow[and-cuda]==2.21.0
    #@gpu +nvidia-cudnn-cu12==9.28.0.42

The base is the `cpu` variant. The lock's digest (what marks a local venv up to date) covers the
base only, so declaring or changing a variant never invalidates an installed venv.
"""
from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

BASE = "cpu"
_VARIANT_LINE = re.compile(r"^#@(?P<variant>[a-z0-9_-]+)\s+(?P<op>[+-])\s*(?P<req>\S.*?)\s*$")


class LockFormatError(ValueError):
    """A malformed variant line, or a removal of a pin the base does not have."""


def normalize(dist: str) -> str:
    """A distribution name as pins and installed-package maps are keyed (`Foo_Bar.x` -> `foo-bar-x`)."""
    return dist.lower().replace("_", "-").replace(".", "-")


def split_pin(line: str) -> tuple[str, str] | None:
    """(normalized name, version) of a `name[extras]==version ; marker` line, else None."""
    line = line.split("#", 1)[0].strip()
    if not line or line.startswith("-") or "==" not in line:
        return None
    req, _, ver = line.partition("==")
    req = req.split("[", 1)[0].split(";", 1)[0].strip()
    return normalize(req), ver.split(";", 1)[0].strip()


def base_text(text: str) -> str:
    """The lock without its variant lines: what the base (cpu) venv is built from."""
    return "".join(ln for ln in text.splitlines(keepends=True) if not ln.startswith("#@"))


def digest(text: str) -> str:
    return hashlib.sha256(base_text(text).encode()).hexdigest()


def variants(text: str) -> set[str]:
    """The variants a lock declares, the base (`cpu`) included."""
    found = {BASE}
    for ln in text.splitlines():
        if _is_edit(ln):
            found.add(_edit(ln)[0])
    return found


def _is_edit(line: str) -> bool:
    """A variant line that edits (`#@gpu ...`); `#@ text` is a comment of the variant section."""
    return line.startswith("#@") and not line.startswith(("#@ ", "#@\t")) and line.rstrip() != "#@"


def _edit(line: str) -> tuple[str, str, str]:
    m = _VARIANT_LINE.match(line)
    if not m or split_pin(m["req"]) is None:
        raise LockFormatError(f"malformed variant line {line!r}: want '#@<variant> +|-<name>==<version>'")
    return m["variant"], m["op"], m["req"]


def requirements(text: str, variant: str = BASE) -> list[str]:
    """The requirement lines pip installs for `variant`, in lock order (additions last)."""
    lines = [ln.split("#", 1)[0].strip() for ln in base_text(text).splitlines()]
    lines = [ln for ln in lines if split_pin(ln)]
    if variant == BASE:
        return lines
    if variant not in variants(text):
        raise LockFormatError(f"the lock declares no {variant!r} variant (it has: {', '.join(sorted(variants(text)))})")
    drop, add = set(), []
    have = {split_pin(ln) for ln in lines}
    for ln in text.splitlines():
        if not _is_edit(ln):
            continue
        name, op, req = _edit(ln)
        if name != variant:
            continue
        if op == "-":
            if split_pin(req) not in have:
                raise LockFormatError(f"#@{variant} removes {req!r}, which the lock does not pin")
            drop.add(split_pin(req))
        else:
            add.append(req)
    return [ln for ln in lines if split_pin(ln) not in drop] + add


def pins(text: str, variant: str = BASE) -> dict[str, str]:
    """`name==version` pins of `variant`, keyed by normalized name."""
    out: dict[str, str] = {}
    for ln in requirements(text, variant):
        name, ver = split_pin(ln)
        out[name] = ver
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render a lock file's variant as a requirements file.")
    parser.add_argument("lock", type=Path)
    parser.add_argument("--variant", default=BASE)
    args = parser.parse_args(argv)
    try:
        sys.stdout.write("".join(f"{ln}\n" for ln in requirements(args.lock.read_text(), args.variant)))
    except (OSError, LockFormatError) as e:
        print(f"lockfile: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
