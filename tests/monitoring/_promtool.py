"""promtool (Debian's prometheus package) for the monitoring tests."""
import shutil
import subprocess

import pytest


def promtool_or_skip() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (apt-get install prometheus; CI installs it)")
    return found


def run_promtool(promtool: str, *args: str, stdin: bytes | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], input=stdin, capture_output=True, timeout=60, cwd=cwd)
