"""A real Prometheus scrapes a real job on the local cluster: `trainer monitor up`, a job forced
to wait for placement (its node's CPU held by another task) fires TrainerJobPendingTooLong, then
trains (its workers wait after their last report until Prometheus has it: tiny.yaml says why);
Prometheus's HTTP API then has the job's trainer_* metrics, Ray's own and the exporter's,
no GPU series (this machine has no GPU), and every dashboard panel's query returns series (those
that need a GPU, a conversion or a restore: parse only)."""
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from trainer.monitoring import dashboards, prometheus

pytestmark = pytest.mark.integration
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SPEC = HERE / "jobs" / "tiny.yaml"

# Holds the A100 node's only CPU until the test stops this Ray job.
BLOCKER = """
import pathlib, sys, time, ray
ray.init()
@ray.remote(num_cpus=1, label_selector={"ray.io/accelerator-type": "A100"})
def hold(marker):
    pathlib.Path(marker).write_text("held")
    time.sleep(600)
ray.get(hold.remote(sys.argv[1]))
"""


def until(what: str, check, timeout: float, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def quick_rules(tmp_path: Path) -> Path:
    """trainer's rules with the pending threshold at 3 s and no `for:` wait (the test cannot wait minutes)."""
    rules = yaml.safe_load(prometheus.RULES_FILE.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
            rule["expr"] = rule["expr"].replace("> 180", "> 3")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    return path


def series(url: str, promql: str, start: float) -> list:
    body = requests.get(f"{url}/api/v1/query_range", timeout=20, params={
        "query": promql, "start": start, "end": time.time(), "step": "2s"}).json()
    assert body["status"] == "success", f"{promql}: {body.get('error')}"
    return body["data"]["result"]


@pytest.fixture
def monitor(cluster, trainer_home, tmp_path):
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus; CI installs it)")
    state, _ = prometheus.up(trainer_home, rules=quick_rules(tmp_path), interval_s=2)
    yield state
    prometheus.down(trainer_home)


@pytest.fixture
def blocker(cluster, tmp_path):
    """Submitted, not waited for: it starts while Prometheus does (the test waits for its marker)."""
    from ray.job_submission import JobSubmissionClient

    from trainer.cluster.auth import headers_for

    client = JobSubmissionClient(cluster.dashboard_url, headers=headers_for(cluster.dashboard_url))
    script = tmp_path / "blocker.py"
    script.write_text(BLOCKER)
    marker = tmp_path / "held"
    job_id = client.submit_job(entrypoint=f"{sys.executable} {script} {marker}")
    yield marker, lambda: client.stop_job(job_id)
    client.stop_job(job_id)


@pytest.fixture
def go(tmp_path):
    """The file the job's workers wait for after their last report; there at the end in any case,
    so a failed test leaves no job holding the A100 node's CPU for the next."""
    path = tmp_path / "go"
    yield path
    path.touch()


def test_prometheus_scrapes_a_real_job_and_its_pending_alert_fires(blocker, monitor, cluster, go):
    import trainer

    url = monitor["url"]
    held, release_cpu = blocker
    until("the blocker to hold the A100 node's CPU", held.exists, 120)
    t0 = time.time()
    last_step = yaml.safe_load(SPEC.read_text())["config"]["epochs"] - 1     # the step is the report count
    job = trainer.submit(SPEC, set=[f"config.hold_after={last_step + 1}", f"config.hold_file={go}"])

    def while_running(check):
        def checked():
            got = check()
            if not got and job.status().is_terminal:
                raise AssertionError(f"{job.id} ended {job.status().value} first: {job.logs()[-3000:]}")
            return got
        return checked

    def pending_alert():
        alerts = requests.get(f"{url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "TrainerJobPendingTooLong"
                and a["labels"].get("trainer_job") == job.id and a["state"] == "firing"]
    until(f"TrainerJobPendingTooLong to fire for {job.id}", pending_alert, 90)
    assert not series(url, f'trainer_job_training_start_time_seconds{{trainer_job="{job.id}"}}', t0)

    release_cpu()   # the CPU is free: the job is placed and trains
    sel = f'{{trainer_job="{job.id}"}}'
    # Its workers hold after the last report (config.hold_after) until Prometheus has it, and a
    # rate over the report counter (two scrapes of it): then they end.
    until("the job's final step in Prometheus", while_running(
        lambda: any(float(v[1]) >= last_step for s in series(url, f"trainer_job_step{sel}", t0) for v in s["values"])),
        120)
    until("two scrapes of the job's report counter",
          while_running(lambda: series(url, f"rate(trainer_job_reports_total{sel}[1m])", t0)), 60)
    go.touch()
    assert job.wait(timeout=300) == trainer.JobState.SUCCEEDED, job.logs()[-3000:]

    # the job's own metrics, through Ray's metrics export, renamed from ray_trainer_*
    for name in ("trainer_job_start_time_seconds", "trainer_job_training_start_time_seconds",
                 "trainer_job_placement_seconds_count", "trainer_job_worker_group_starts_total",
                 "trainer_job_reports_total", "trainer_job_value", "trainer_checkpoint_write_seconds_count",
                 "trainer_checkpoint_size_bytes", "trainer_tracking_flushes_total"):
        assert series(url, f"{name}{sel}", t0), name
    assert not series(url, '{__name__=~"ray_trainer_.+"}', t0), "Ray's prefix should be relabelled away"
    placement = series(url, f"trainer_job_placement_seconds_sum{sel}", t0)
    assert float(placement[0]["values"][-1][1]) > 3, "the placement time includes the forced wait"
    # Ray's own metrics from the same endpoints, and the exporter's
    assert series(url, 'ray_node_cpu_utilization{job="trainer-ray"}', t0)
    assert until("the exporter to count the job", lambda: [
        s for s in series(url, 'trainer_jobs{state="SUCCEEDED"}', t0) if float(s["values"][-1][1]) >= 1], 30)
    # no GPU here: GPU series are absent, not zeros
    assert not series(url, '{__name__=~"trainer_gpu_.+"}', t0)

    # every dashboard panel's query parses and (unless it needs what this machine lacks) has data
    empty = []
    for uid, panel in dashboards.panels():
        got = [series(url, expr.replace("$trainer_job", job.id), t0) for expr, _ in panel.queries]
        if not any(got) and panel.needs is None:
            empty.append(f"{uid}: {panel.title}")
    assert not empty, "panels without data after a job:\n" + "\n".join(empty)
