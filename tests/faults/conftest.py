"""The fault suite: real components (the local Ray cluster, MLflow, the CLI in its own process),
one fault each, every wait bounded (a hang fails the test with what the job printed).

The helpers of the runners' fault drills (tests/runners/_jobs.py, test_resume_faults.py) are
reused from there, not copied."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "runners"))

SPEC = HERE / "jobs" / "tiny.yaml"
TRAINER = [sys.executable, "-m", "trainer.cli"]


def cli(*args, env=None, timeout=180, check=True) -> subprocess.CompletedProcess:
    """`trainer ARGS` in a new process (as a user in another terminal runs it)."""
    proc = subprocess.run([*TRAINER, *args], cwd=REPO, env=env or os.environ.copy(), capture_output=True,
                          text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"trainer {' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}"
    return proc


def cli_json(*args, **kw) -> dict:
    return json.loads(cli(*args, "--output", "json", **kw).stdout)


def until(what: str, check, timeout: float, job=None, poll: float = 0.5):
    """Poll `check()` until it returns something truthy; fail (with the job's log) after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        if job is not None and job.status().is_terminal:
            pytest.fail(f"{what}: the job ended {job.status().value} first\n{job.logs()[-3000:]}")
        time.sleep(poll)
    tail = ""
    if job is not None:
        try:
            tail = "\n" + job.logs()[-3000:]
        except Exception as e:  # noqa: BLE001 - the failure message is what matters
            tail = f"\n(no logs: {e})"
    pytest.fail(f"{what}: not within {timeout:g}s{tail}")


def epochs_logged(job) -> list[int]:
    from _jobs import steps

    try:
        return steps(job, "loss")
    except Exception:  # noqa: BLE001 - the run may not have metrics yet
        return []
