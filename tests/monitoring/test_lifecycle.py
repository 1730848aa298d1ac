"""`trainer monitor up | status | down` in its own process against the real Prometheus binary
(no Ray cluster needed): bound to 127.0.0.1, private state, only its own processes stopped."""
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests

from trainer.cluster import processes
from trainer.monitoring.prometheus import _not_ready
from trainer.ports import free_port

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def cli(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRAINER_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-m", "trainer.cli", "monitor", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.fixture
def home(tmp_path):
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus; CI installs it)")
    home = tmp_path / "home"
    yield home
    cli(home, "down", check=False)


def test_up_status_down(home):
    up = json.loads(cli(home, "up", "--output", "json").stdout)
    assert up["started"] and up["url"].startswith("http://127.0.0.1:")
    state_file = home / "monitor" / "state.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "monitor").stat().st_mode) == 0o700
    state = json.loads(state_file.read_text())
    prom = psutil.Process(state["prometheus"]["pid"])
    # listening on loopback only
    listening = {c.laddr for c in prom.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
    # the rules are loaded: Prometheus lists trainer's alerting rules
    groups = requests.get(f"{up['url']}/api/v1/rules", timeout=5).json()["data"]["groups"]
    assert "TrainerJobPendingTooLong" in {r["name"] for g in groups for r in g["rules"]}

    again = json.loads(cli(home, "up", "--output", "json").stdout)
    assert not again["started"] and again["url"] == up["url"]

    status = json.loads(cli(home, "status", "--output", "json").stdout)
    assert status["running"] and status["url"] == up["url"]
    assert {t["job"] for t in status["targets"]} >= {"trainer-exporter"}
    table = cli(home, "status").stdout
    assert up["url"] in table and "trainer-exporter" in table

    # A start that runs out of time names the part that does not answer and that part's own log
    # (a slow exporter is not "Prometheus was not ready", pointing at Prometheus's log).
    assert _not_ready(state) is None
    closed = f"http://127.0.0.1:{free_port()}"
    what, log = _not_ready({**state, "exporter_url": f"{closed}/metrics"})
    assert what.startswith("trainer's exporter does not answer") and log == state["exporter"]["log"]
    what, log = _not_ready({**state, "url": closed})
    assert what.startswith("Prometheus does not answer") and log == state["prometheus"]["log"]

    down = json.loads(cli(home, "down", "--output", "json").stdout)
    assert down["stopped_processes"] == 2
    assert not prom.is_running() or prom.status() == psutil.STATUS_ZOMBIE
    assert not state_file.exists()
    gone = cli(home, "status", check=False)
    assert gone.returncode != 0 and "trainer monitor up" in gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1


def test_down_leaves_a_process_with_a_recycled_pid_alone(home):
    """A state file naming a pid that now belongs to another process (start time differs): down
    stops nothing."""
    (home / "monitor").mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = {"pid": other.pid, "start_ticks": processes.start_ticks(other.pid) - 100,
                  "token": processes.new_token()}
        processes.write_private_json(home / "monitor" / "state.json", {"prometheus": record, "exporter": record})
        assert json.loads(cli(home, "down", "--output", "json").stdout)["stopped_processes"] == 0
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_missing_rules_file_is_one_line_and_starts_nothing(home, tmp_path):
    proc = cli(home, "up", "--rules", str(tmp_path / "nope.yaml"), check=False)
    assert proc.returncode == 2
    assert "nope.yaml" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (home / "monitor" / "state.json").exists()
