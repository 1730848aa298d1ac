"""Calling `_mxnet_worker` in the MXNet runtime: the only way the main process touches MXNet.

The worker gets file paths, writes files, and answers with a small JSON result file; a failure
comes back as one `trainer-worker-error:` line that becomes a ConversionError here.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from trainer.errors import ConversionError, UnsupportedOpsError
from trainer.home import repo_root
from trainer.runtimes import python_for

WORKER = "converters.frontends._mxnet_worker"
ERROR_PREFIX = "trainer-worker-error: "
TIMEOUT_S = 900


def run_worker(command: str, frontend: str, **options: str | Path) -> dict:
    """Run `<mxnet python> -m _mxnet_worker <command> --opt value ...`; return its JSON result."""
    python = python_for("mxnet")           # RuntimeNotInstalledError names the install command
    with tempfile.TemporaryDirectory(prefix="trainer-mxnet-") as tmp:
        result = Path(tmp) / "result.json"
        argv = [str(python), "-m", WORKER, command, "--result", str(result)]
        for key, value in options.items():
            if value is not None:
                argv += [f"--{key}", str(value)]
        env = {**os.environ, "PYTHONPATH": str(repo_root()), "PYTHONNOUSERSITE": "1",
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
               "MXNET_ENGINE_TYPE": os.environ.get("MXNET_ENGINE_TYPE", "NaiveEngine")}
        try:
            done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ConversionError(f"{frontend}: the MXNet runtime did not finish {command} in {TIMEOUT_S}s") from None
        if done.returncode != 0:
            lines = [ln[len(ERROR_PREFIX):] for ln in done.stderr.splitlines() if ln.startswith(ERROR_PREFIX)]
            if lines and "unsupported" in lines[-1] and ": " in lines[-1]:
                ops = lines[-1].rsplit(": ", 1)[1].split(", ")
                raise UnsupportedOpsError(frontend, ops)
            detail = lines[-1] if lines else (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConversionError(f"{frontend}: {detail}", frontend=frontend, stderr=done.stderr[-4000:])
        return json.loads(result.read_text())
