"""The facts a registered version's provenance attests, read from its MLflow run and this
checkout: run and job id, the spec's sha256 (as the run recorded it), the runtime lock's sha256,
the git commit, the data's sha256, the parity verdict and every metric's final value."""
from __future__ import annotations

import hashlib
import subprocess
from importlib import metadata
from typing import Callable

from trainer.signing import keys, libraries

FRAMEWORK_PACKAGES = {"torch": ["torch"], "tensorflow": ["tensorflow"], "mxnet": ["mxnet"]}
ALWAYS = ["onnx", "onnxruntime", "mlflow", "ray"]


def run_facts(spec, run, version: str, data: str | None, echo: Callable[[str], None]) -> dict | None:
    """The facts of `run` (an MLflow Run); None, said through `echo`, when no signing key is set."""
    from trainer.home import repo_root
    from trainer.tracking.runs import TAG_JOB_ID, TAG_SPEC

    if not keys.has_signing_key():
        echo("not signed: no signing key (trainer keys init, or $TRAINER_SIGNING_KEY in CI)")
        return None
    if libraries.missing():
        echo(f"not signed: this runtime lacks {', '.join(libraries.missing())} ({libraries.INSTALL}); an "
             f"environment that trusts keys will refuse to promote it")
        return None
    tags = run.data.tags or {}
    metrics = dict(run.data.metrics or {})
    parity = metrics.get("parity.passed")
    lock = repo_root() / "images" / spec.framework / "requirements.lock"
    lock_text = lock.read_text() if lock.is_file() else ""
    return {"model": spec.register.model, "version": version, "run_id": run.info.run_id,
            "job_id": tags.get(TAG_JOB_ID),
            "spec_sha256": hashlib.sha256(tags[TAG_SPEC].encode()).hexdigest() if tags.get(TAG_SPEC) else None,
            "lock_sha256": hashlib.sha256(lock_text.encode()).hexdigest() if lock_text else None,
            "git_commit": tags.get("mlflow.source.git.commit") or git_commit(repo_root()),
            "data_sha256": data, "metrics": metrics,
            "parity": "none" if parity is None else ("passed" if parity == 1.0 else "failed"),
            "frameworks": frameworks(spec.framework, lock_text)}


def frameworks(framework: str, lock_text: str) -> dict[str, str]:
    """{package: version} of the framework and the conversion stack: installed here, else pinned
    in the runtime's lock."""
    pinned = dict(line.split("==", 1) for line in lock_text.splitlines()
                  if "==" in line and not line.lstrip().startswith("#"))
    found = {}
    for name in FRAMEWORK_PACKAGES.get(framework, [framework]) + ALWAYS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name in pinned:
                found[name] = pinned[name].split()[0].split(";")[0]
    return found


def git_commit(root) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 and len(out.stdout.strip()) == 40 else None
