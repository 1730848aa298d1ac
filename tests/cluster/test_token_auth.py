"""The local cluster's door, on a real cluster: Ray's token auth is on, so a local process without
the token can neither submit a job (dashboard or node agent), nor read the jobs' runtime envs, nor
join a node; `trainer submit` and Ray's own tools given the token (RAY_AUTH_TOKEN_PATH) work."""
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from trainer.errors import ClusterError

pytestmark = pytest.mark.integration

TRAINER = [sys.executable, "-m", "trainer.cli"]
REPO = Path(__file__).resolve().parents[2]
PLANTED = "/tmp/trainer-door-test-pwned"


def _agent_ports(temp_dir: str) -> list[int]:
    ports = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info.get("cmdline") or [])
        if "dashboard/agent.py" in cmd and temp_dir in cmd:
            ports += [int(p) for p in re.findall(r"--listen-port=(\d+)", cmd)]
    return ports


def test_without_the_token_nothing_gets_in(cluster):
    job = {"entrypoint": f"touch {PLANTED}", "submission_id": "door-test"}
    refused = requests.post(f"{cluster.dashboard_url}/api/jobs/", json=job, timeout=30)
    assert refused.status_code == 401, refused.text
    wrong = requests.post(f"{cluster.dashboard_url}/api/jobs/", json=job, timeout=30,
                          headers={"Authorization": "Bearer " + "0" * 64})
    assert wrong.status_code == 403, wrong.text
    # The job list (it shows every job's runtime env, env_vars included) is closed too.
    assert requests.get(f"{cluster.dashboard_url}/api/jobs/", timeout=30).status_code == 401
    agents = _agent_ports(cluster.temp_dir)
    assert len(agents) == 1 + len(cluster.nodes)
    for port in agents:   # each node's agent takes jobs from the head: closed to others too
        assert requests.post(f"http://127.0.0.1:{port}/api/job_agent/jobs/", json=job, timeout=30).status_code == 401
    time.sleep(1)
    assert not os.path.exists(PLANTED)

    # The token: 0600 in a 0700 folder; Ray's temp dir lives in that folder.
    token, folder = Path(cluster.token_file), Path(cluster.token_file).parent
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert Path(cluster.temp_dir).resolve().parent.stat().st_mode & 0o077 == 0
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(token)   # tests/conftest.py gives it to Ray's tools

    # With the token (what trainer sends), the same API answers (a job through it: the extended
    # test below, and every `trainer submit` of the default tier).
    from trainer.cluster.auth import headers_for

    listed = requests.get(f"{cluster.dashboard_url}/api/jobs/", headers=headers_for(cluster.dashboard_url), timeout=30)
    assert listed.status_code == 200, listed.text
    # Ray's own state API takes the token from RAY_AUTH_MODE/RAY_AUTH_TOKEN_PATH (set in conftest).
    from ray.util.state import list_nodes

    assert len(list_nodes(address=cluster.dashboard_url, raise_on_missing_output=False)) == 1 + len(cluster.nodes)


@pytest.mark.extended
def test_trainer_submit_gets_in_with_the_token(cluster, tmp_path):
    """A job submitted through the door by `trainer submit`, which sends the token. The session
    cluster has token auth on, so every `trainer submit` of the default tier proves the same: e.g.
    tests/tracking/test_secrets.py::test_a_planted_secret_appears_in_no_output_channel (`trainer
    submit --wait --output json`, the job's run FINISHED) and tests/benchmarks/test_quick.py::
    test_submit_quick."""
    project = tmp_path / "proj"
    project.mkdir()
    (project / "train.py").write_text("def train(ctx):\n    ctx.report({'epoch': 0, 'loss': 1.0})\n")
    (project / "job.yaml").write_text("name: door\nframework: torch\nentrypoint: train.py:train\n"
                                      "resources: {accelerator: cpu, cpus_per_worker: 1}\n")
    proc = subprocess.run([*TRAINER, "submit", str(project / "job.yaml"), "--wait", "--output", "json"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["status"] == "SUCCEEDED"


def test_a_node_without_the_token_cannot_join(cluster, monkeypatch):
    from trainer.cluster.local import join
    from trainer.ports import free_port

    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    monkeypatch.delenv("RAY_AUTH_MODE")
    with pytest.raises(ClusterError, match="InvalidAuthToken"):
        join(cluster.gcs_address, cpus=1, object_store_mb=128, gpus=[], node_ip="127.0.0.1",
             extra_args=(f"--dashboard-agent-listen-port={free_port()}", "--include-log-monitor=false"))
    from trainer.api import cluster_status

    assert len(cluster_status()["nodes"]) == 1 + len(cluster.nodes)
