"""`trainer monitor` in its own process: what a user without Prometheus, or without a running
monitor, sees (one line, a non-zero exit, nothing started)."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def cli(home: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRAINER_HOME": str(home)}
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "trainer.cli", "monitor", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_up_without_prometheus_says_how_to_install_it(tmp_path):
    proc = cli(tmp_path / "home", "up", path=str(tmp_path))   # no prometheus on this PATH
    assert proc.returncode == 6
    assert "apt-get install prometheus" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "home" / "monitor").exists()


def test_status_and_down_with_nothing_running(tmp_path):
    status = cli(tmp_path / "home", "status")
    assert status.returncode == 4 and "trainer monitor up" in status.stderr
    down = cli(tmp_path / "home", "down")
    assert down.returncode == 0 and "stopped 0 process(es)" in down.stdout
