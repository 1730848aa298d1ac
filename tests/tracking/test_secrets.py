"""A planted secret appears in no output channel. Two jobs on the real local cluster record to a
real MLflow server that requires basic auth (tests/tracking/_mlflow_basic_auth.py): one is given
its credentials in the spec's tracking URI (`--set tracking.uri=http://alice:<secret>@...`), the
other through MLFLOW_TRACKING_USERNAME/PASSWORD. Both must succeed - so the credentials reached the jobs, by
variable name - and neither secret may show up in what trainer prints (submit's progress, summary,
status, logs, list, wait), in the Ray jobs' metadata, entrypoint and logs, or in what the MLflow
store holds (tags, params, run names, the database file itself)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TRAINER = [sys.executable, "-m", "trainer.cli"]
URI_SECRET = "uri-pw-PLANTED-7c41e0"
ENV_SECRET = "env-pw-PLANTED-93d2ab"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    store = tmp_path_factory.mktemp("mlflow-auth")
    port_file = store / "port"
    proc = subprocess.Popen([sys.executable, str(HERE / "_mlflow_basic_auth.py"), str(store), str(port_file),
                             f"alice:{URI_SECRET}", f"bob:{ENV_SECRET}"],
                            stdout=subprocess.DEVNULL, stderr=open(store / "server.log", "w"), cwd=store)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert proc.poll() is None, (store / "server.log").read_text()[-2000:]
            if port_file.is_file() and port_file.read_text():
                port = int(port_file.read_text())
                try:
                    if requests.get(f"http://127.0.0.1:{port}/health", auth=("bob", ENV_SECRET), timeout=5).ok:
                        break
                except requests.RequestException:
                    pass
            time.sleep(1)
        else:
            pytest.fail("the MLflow server did not come up: " + (store / "server.log").read_text()[-2000:])
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 401
        yield port, store
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _cli(*args, env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*TRAINER, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_a_planted_secret_appears_in_no_output_channel(cluster, mlflow_server, tmp_path):
    from mlflow import MlflowClient

    from trainer.scheduling.ray_jobs import RayJobs

    port, store = mlflow_server
    specs = {}
    for name in ("a", "b"):   # two folders: jobs of one code package share its unpacked folder on this host
        project = tmp_path / name
        project.mkdir()
        (project / "train.py").write_text(
            f"def train(ctx):  # job {name}\n"
            "    for epoch in range(2):\n"
            "        ctx.report({'epoch': epoch, 'loss': 1.0 / (epoch + 1)})\n")
        (project / "job.yaml").write_text("name: secrets\nframework: torch\nentrypoint: train.py:train\n"
                                          "resources: {accelerator: cpu, cpus_per_worker: 1}\nconfig: {lr: 0.1}\n")
        specs[name] = str(project / "job.yaml")
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    in_uri = base
    in_env = {**base, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "MLFLOW_TRACKING_USERNAME": "bob",
              "MLFLOW_TRACKING_PASSWORD": ENV_SECRET}
    # Both at once (one on the A100 node): JSON for one, the person's view (progress, summary) for the other.
    a = subprocess.Popen([*TRAINER, "submit", specs["a"], "--wait", "--output", "json", "--set",
                          f"tracking.uri=http://alice:{URI_SECRET}@127.0.0.1:{port}"], cwd=REPO,
                         env=in_uri, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    b = subprocess.Popen([*TRAINER, "submit", specs["b"], "--set", "resources.accelerator=A100",
                          "--wait"], cwd=REPO, env={**in_env, "COLUMNS": "200"}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    out_a, err_a = a.communicate(timeout=900)
    out_b, err_b = b.communicate(timeout=900)
    assert a.returncode == 0, err_a[-3000:]
    assert b.returncode == 0, err_b[-3000:]
    job_a = json.loads(out_a)["job_id"]
    job_b = re.search(r"submitted (\S+) ", out_b).group(1)
    channels = {"submit (json)": out_a + err_a, "submit (table)": out_b + err_b}

    commands = [(args, how, env) for job, how, env in ((job_a, "in the URI", in_uri), (job_b, "by variables", in_env))
                for args in (["status", job, "--output", "json"], ["status", job], ["logs", job],
                             ["list", "--output", "json"], ["wait", job, "--output", "json"],
                             ["cluster", "status", "--output", "json"])]
    # Twelve CLI processes whose cost is their imports, on jobs that have ended: side by side.
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = list(pool.map(lambda c: _cli(*c[0], env=c[2]), commands))
    for (args, how, _), proc in zip(commands, done):
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
        channels[f"{' '.join(args)} (credentials {how})"] = proc.stdout + proc.stderr
    jobs = RayJobs(cluster.dashboard_url)
    mlflow = MlflowClient(f"http://127.0.0.1:{port}")
    for job in (job_a, job_b):
        info = jobs.info(job)
        channels[f"Ray metadata of {job}"] = json.dumps(info.metadata)
        channels[f"Ray entrypoint/message of {job}"] = f"{info.entrypoint} {info.message}"
        channels[f"Ray logs of {job}"] = jobs.logs(job)
        run_id = info.metadata["run_id"]
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = "bob", ENV_SECRET
        try:
            run = mlflow.get_run(run_id)
        finally:
            del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
        # The job itself wrote its metrics and closed its run: its credentials reached it by name.
        assert run.info.status == "FINISHED" and run.data.metrics["loss"] == 0.5, run.data
        assert info.metadata["tracking_uri"] == f"http://127.0.0.1:{port}"
        if job == job_a:   # the spec carried the URI: what was stored of it is masked, not dropped
            assert f"http://***@127.0.0.1:{port}" in run.data.tags["trainer.spec"]
            assert json.loads(info.metadata["spec"])["tracking"]["uri"] == f"http://127.0.0.1:{port}"  # the job's
        channels[f"MLflow run of {job}"] = json.dumps({"tags": run.data.tags, "params": run.data.params,
                                                       "name": run.info.run_name})
    channels["the MLflow store's database file"] = (store / "mlflow.db").read_bytes().decode("latin-1")
    channels["the server's request log"] = (store / "requests.log").read_text()
    assert "alice POST /api/2.0/mlflow/runs/log-batch" in channels["the server's request log"]

    for name, text in channels.items():
        for secret in (URI_SECRET, ENV_SECRET):
            assert secret not in text, f"{secret} found in {name}"
    # By design (README, "Credentials"): a job on the local cluster gets them in its runtime env,
    # which Ray shows only to holders of the cluster's token (the job API refuses anyone else).
    env_vars = jobs.info(job_a).runtime_env["env_vars"]
    assert env_vars["MLFLOW_TRACKING_PASSWORD"] == URI_SECRET and env_vars["MLFLOW_TRACKING_USERNAME"] == "alice"
    assert URI_SECRET not in env_vars["MLFLOW_TRACKING_URI"] + env_vars["TRAINER_SPEC"]
    assert requests.get(f"{cluster.dashboard_url}/api/jobs/{job_a}", timeout=30).status_code == 401
