"""The fault-injection suite (issue #14): real components, one fault each, every wait bounded.

The scenarios on the session's local cluster run at the same time, one thread each, on their own
nodes (so the file costs about one scenario's wall time, not the sum), node loss after them (see
`outcomes`); each test then checks its own scenario's outcome. A scenario that hangs fails its test at its bound with the job's log.

- client loss: the `trainer submit --wait` process following a job is SIGKILLed;
- tracking outage: the `trainer mlflow serve` server the job records to stops mid-run and comes
  back on the same port (the same job as client loss, one fault after the other);
- partial + corrupt checkpoints: an upload cut in half by a dying worker, then the newest
  registered checkpoint truncated before a kill (the runners' fault drill, reused; extended tier);
- cancel during a checkpoint write: the job is cancelled while rank 0 is halfway through
  uploading a checkpoint's state file;
- node loss: the raylet of the worker node running the job is SIGKILLed;
- head restart: the head of another local cluster (its own $TRAINER_HOME) is killed and the
  cluster started again while a job runs.
"""
import json
import os
import signal
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

import trainer
from _jobs import steps, train_workers
from conftest import REPO, SPEC, TRAINER, cli, cli_json, epochs_logged, until
from test_resume_faults import Drill, check_exactly_once, check_storage
from trainer.checkpoints import PREFIX, Incomplete, choose, verify
from trainer.cluster import auth
from trainer.cluster.local import LocalCluster, ray_start
from trainer.tracking import server
from trainer.tracking.runs import TAG_CLOSED_BY_CLIENT, TAG_RESTORE_FALLBACK, client

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]

JOB_TIMEOUT = 480  # no scenario's job may take longer than this (a hang fails here)


def _submit(name: str, accelerator: str, epochs: int, sleep_s: float, *extra: str, **kw) -> trainer.Job:
    return trainer.submit(SPEC, set=[f"name={name}-{uuid.uuid4().hex[:6]}", f"resources.accelerator={accelerator}",
                                     f"config.epochs={epochs}", f"config.sleep_s={sleep_s}", *extra], **kw)


def _wait(job: trainer.Job, timeout: float = JOB_TIMEOUT) -> str:
    try:
        return job.wait(timeout=timeout).value
    except trainer.TrainerError as e:
        pytest.fail(f"{e}\n{job.logs()[-3000:]}")


def _folders(home: Path, job: trainer.Job) -> list[Path]:
    root = home / "checkpoints" / job.id
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)) if root.is_dir() else []


# ---------------------------------------------------------------- scenarios (each runs in a thread)

def client_loss_and_outage(cluster, server_home: Path, tmp: Path) -> dict:
    """One job serves two faults (each job costs ~20 s of Ray's fixed start): the `trainer submit
    --wait` process following it is SIGKILLed, new processes find it; then the MLflow server it
    records to stops mid-run and comes back on the same port. The job holds after its first epoch
    until the outage begins, so it is still running at each check by construction, not by luck.
    The server has a store of its own (`server_home`): started on the session's store, its schema
    check raced the other scenarios' jobs writing there ("database is locked" under load)."""
    epochs = 8
    name = f"client-loss-{uuid.uuid4().hex[:6]}"
    go = tmp / "outage-begins"
    state, _ = server.serve(0, home=server_home)
    follower = subprocess.Popen([*TRAINER, "submit", str(SPEC), "--wait", "--set", f"name={name}",
                                 "--set", f"config.epochs={epochs}", "--set", "config.sleep_s=2",
                                 "--set", "config.hold_after=1", "--set", f"config.hold_file={go}",
                                 "--set", f"tracking.uri={state.url}"],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = follower.stdout.readline()          # "submitted <job> (MLflow run <run>) to <address>"
        assert line.startswith("submitted "), line
        job = trainer.Job.get(line.split()[1], cluster.dashboard_url)
        until("an epoch in MLflow while the client follows", lambda: epochs_logged(job), JOB_TIMEOUT, job)
    finally:
        follower.send_signal(signal.SIGKILL)
        follower.wait(timeout=30)
    out = {"job": job, "name": name, "epochs": epochs, "client_rc": follower.returncode, "url": state.url}
    try:
        # New processes find the job by its id, still running (held), and its log so far.
        out["status_after_kill"] = cli_json("status", job.id)["status"]
        out["logs"] = cli("logs", job.id).stdout
        out["listed"] = name in {j["name"] for j in cli_json("list")}
        # The outage: the server stops, the job goes on training and reporting.
        out["stopped_at"] = time.time()
        assert server.stop(server_home) is not None
    finally:
        go.touch()      # never leave the job held (and its CPU taken) for the tests after this one
    time.sleep(3)   # the outage lasts this plus the restart below (an MLflow server takes 20 s+)
    out["during_outage"] = job.status().value
    # The same port and store come back (what a restarted server does).
    server.serve(state.port, home=server_home)
    out["back_at"] = time.time()
    out["waited"] = out["state"] = cli_json("wait", job.id, "--timeout", str(JOB_TIMEOUT),
                                            timeout=JOB_TIMEOUT + 30)["status"]
    return out


def partial_then_corrupt(cluster, home: Path, tmp: Path) -> dict:
    # An upload cut in half by rank 0 dying (never registered), then the newest registered
    # checkpoint truncated in storage right before rank 0 dies: the next group must fall back.
    drill = Drill("torch.yaml", "train_mlp_torch.py:train_no_step", "T4",
                  [{"epoch": 1, "rank": 0, "phase": "upload"}, {"epoch": 3, "rank": 0, "phase": "corrupt"}],
                  epochs=6)
    drill.submit(tmp / "partial-corrupt")
    drill.wait()
    return {"drill": drill}


def cancel_mid_write(cluster, home: Path, tmp: Path) -> dict:
    fault_dir = tmp / "cancel-mid-write"
    fault_dir.mkdir()
    job = _submit("cancel-write", "A100", 8, 0, "entrypoint=tests/faults/jobs/train_faulty.py:train_pausing",
                  config={"faults": [{"epoch": 2, "rank": 0, "phase": "upload"}], "fault_dir": str(fault_dir)})
    paused = until("rank 0 paused halfway through uploading a checkpoint",
                   lambda: (fault_dir / "0.paused").is_file() and json.loads((fault_dir / "0.paused").read_text()),
                   JOB_TIMEOUT, job)
    cancelled = cli_json("cancel", job.id, timeout=180)["status"]
    return {"job": job, "paused": paused, "cancelled": cancelled}


class ExtraNodes:
    """Two 1-CPU worker nodes labelled LOSSY joined to the session cluster, each with a resource of
    its own (lossy_0, lossy_1) so Ray's inventory and the process table tell them apart."""

    def __init__(self, cluster, home: Path):
        self.cluster, self.home = cluster, home
        self.procs: dict[int, list[psutil.Process]] = {}

    def start(self) -> None:
        local = LocalCluster(home=self.home)
        for i in range(2):
            (Path(self.cluster.temp_dir) / f"l{i}").mkdir(exist_ok=True)
            ray_start(f"lossy{i}", [
                f"--address={self.cluster.gcs_address}", "--num-cpus=1", "--num-gpus=0",
                "--labels=ray.io/accelerator-type=LOSSY",
                f"--resources={json.dumps({'accelerator_type:LOSSY': 1, f'lossy_{i}': 1})}",
                # Its own Ray temp dir, as the cluster's own nodes have (trainer/cluster/local.py).
                f"--temp-dir={Path(self.cluster.temp_dir) / f'l{i}'}",
                "--include-log-monitor=false", "--node-ip-address=127.0.0.1",
                f"--object-store-memory={96 * 1024 * 1024}", "--disable-usage-stats",
                f"--dashboard-agent-listen-port={_free_port()}"],
                local.log_dir, env=auth.node_env(local.token_file))
            raylet = next(p for p in psutil.process_iter(["name", "cmdline"])
                          if "raylet" in (p.info["name"] or "") and f"lossy_{i}" in " ".join(p.info["cmdline"] or []))
            self.procs[i] = [raylet, *raylet.children(recursive=True)]
        until("both LOSSY nodes in the inventory", lambda: len(self.node_ids()) == 2, 120)

    def node_ids(self) -> dict[str, int]:
        """node id -> which LOSSY node, for the alive ones."""
        from ray.util.state import list_nodes

        nodes = list_nodes(address=self.cluster.dashboard_url, detail=True, raise_on_missing_output=False)
        return {n.node_id: i for n in nodes for i in (0, 1)
                if n.state == "ALIVE" and f"lossy_{i}" in (n.resources_total or {})}

    def kill_raylet(self, i: int) -> None:
        self.procs[i][0].send_signal(signal.SIGKILL)

    def stop(self) -> None:
        victims = [p for ps in self.procs.values() for p in ps]
        for p in victims:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(victims, timeout=10)
        for p in alive:
            p.kill()
        # The session cluster as it was: a test after this one lists the cluster's nodes, and a
        # killed raylet stays ALIVE in Ray's inventory until the GCS's health check gives it up.
        until("the LOSSY nodes gone from the inventory", lambda: not self.node_ids(), 180)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_loss(cluster, home: Path) -> dict:
    nodes = ExtraNodes(cluster, home)
    try:
        nodes.start()
        ids = nodes.node_ids()
        epochs = 8
        job = _submit("node-loss", "LOSSY", epochs, 2.0, "failure.max_failures=3")
        until("an epoch in MLflow on the LOSSY nodes", lambda: epochs_logged(job), JOB_TIMEOUT, job)
        alive = [w for w in train_workers(cluster.dashboard_url, job) if w.state == "ALIVE"]
        lost = ids[alive[0].node_id]
        lost_id = next(n for n, i in ids.items() if i == lost)
        nodes.kill_raylet(lost)
        state = _wait(job)
        workers = train_workers(cluster.dashboard_url, job)
        return {"job": job, "epochs": epochs, "state": state, "lost_node": lost_id,
                "survivor": next(n for n, i in ids.items() if i != lost), "workers": workers}
    finally:
        nodes.stop()


def head_restart(tmp: Path) -> dict:
    """Another local cluster in its own $TRAINER_HOME (the session's must stay up): a job runs, the
    head's GCS is SIGKILLed, `trainer cluster up` starts the cluster again."""
    home = tmp / "head-home"
    env = {**os.environ, "TRAINER_HOME": str(home), "RAY_AUTH_TOKEN_PATH": str(home / "cluster" / "auth_token")}
    # Its own store too: an earlier test's in-process model logging (mlflow.set_tracking_uri) can
    # leave $MLFLOW_TRACKING_URI set in this process, and the job and `status` would use that one.
    env.pop("MLFLOW_TRACKING_URI", None)
    cli("cluster", "up", "--node", "cpu:1", env=env, timeout=300)
    out: dict = {"env": env}
    try:
        sub = cli_json("submit", str(SPEC), "--set", "config.epochs=40", "--set", "config.sleep_s=2",
                       env=env, timeout=300)
        out["job_id"], out["run_id"] = sub["job_id"], sub["run_id"]
        uri = f"sqlite:///{home / 'mlflow.db'}"
        until("an epoch of the job on the second cluster",
              lambda: [m for m in client(uri).get_run(sub["run_id"]).data.metrics], JOB_TIMEOUT)
        state = json.loads((home / "cluster" / auth.STATE_FILE).read_text())
        port = state["gcs_address"].rsplit(":", 1)[1]
        gcs = [p for p in psutil.process_iter(["name", "cmdline"]) if "gcs_server" in (p.info["name"] or "")
               and f"--gcs_server_port={port}" in " ".join(p.info["cmdline"] or [])]
        assert len(gcs) == 1, gcs
        gcs[0].send_signal(signal.SIGKILL)
        out["killed_at"] = time.time()
        out["status_while_down"] = cli("status", sub["job_id"], env=env, timeout=120, check=False)
        cli("cluster", "up", "--node", "cpu:1", env=env, timeout=300)
        out["status_after"] = cli("status", sub["job_id"], env=env, timeout=120, check=False)
        out["list_after"] = cli("list", "-o", "json", env=env, timeout=120, check=False)
        out["run"] = client(uri).get_run(sub["run_id"])
        return out
    finally:
        cli("cluster", "down", env=env, timeout=120, check=False)


SCENARIOS = {"client_loss_and_outage": client_loss_and_outage,
             "partial_then_corrupt": partial_then_corrupt, "cancel_mid_write": cancel_mid_write,
             "node_loss": node_loss, "head_restart": head_restart}
# test_<name> -> the scenario whose outcome it checks (one job can serve several tests).
SCENARIO_OF = {"client_loss": "client_loss_and_outage", "tracking_outage": "client_loss_and_outage",
               **{name: name for name in SCENARIOS}}


@pytest.fixture(scope="module")
def outcomes(cluster, trainer_home, request, tmp_path_factory):
    """Start, at once, the scenario of every test this session selected; test_<name> takes its
    outcome (or its failure) from here."""
    wanted = {SCENARIO_OF.get(item.originalname[len("test_"):]) for item in request.session.items
              if item.module is request.module}
    tmp = tmp_path_factory.mktemp("faults")
    server_home = tmp / "mlflow-server"
    args = {"client_loss_and_outage": (cluster, server_home, tmp),
            "partial_then_corrupt": (cluster, trainer_home, tmp), "cancel_mid_write": (cluster, trainer_home, tmp),
            "node_loss": (cluster, trainer_home), "head_restart": (tmp,)}
    pool = ThreadPoolExecutor(max_workers=len(SCENARIOS), thread_name_prefix="fault")
    futures = {}
    for name in SCENARIOS:
        if name in wanted and name != "node_loss":
            futures[name] = pool.submit(SCENARIOS[name], *args[name])
    if "node_loss" in wanted:
        # Last, alone on the session cluster: Ray may place any job's zero-CPU actors (its Train
        # controller) on the LOSSY nodes, and losing one would fail that other job too.
        others = [f for n, f in futures.items() if n != "head_restart"]

        def after_the_others():
            for f in others:
                f.exception()
            return node_loss(*args["node_loss"])
        futures["node_loss"] = pool.submit(after_the_others)
    yield futures
    pool.shutdown(wait=True)
    server.stop(server_home)


def _outcome(outcomes, name):
    return outcomes[SCENARIO_OF[name]].result(timeout=JOB_TIMEOUT * 2)


def test_client_loss(outcomes):
    o = _outcome(outcomes, "client_loss")
    job = o["job"]
    assert o["client_rc"] == -signal.SIGKILL
    assert o["status_after_kill"] == "RUNNING"
    assert f"job {job.id}:" in o["logs"] and o["listed"]
    assert o["waited"] == "SUCCEEDED", job.logs()[-3000:]
    assert client(job.tracking_uri).get_run(job.run_id).info.status == "FINISHED"
    assert steps(job, "loss") == list(range(o["epochs"]))


def test_tracking_outage(outcomes, trainer_home):
    o = _outcome(outcomes, "tracking_outage")
    job = o["job"]
    assert o["during_outage"] == "RUNNING"
    assert o["state"] == "SUCCEEDED", job.logs()[-3000:]
    mlc = client(o["url"])
    run = mlc.get_run(job.run_id)
    assert run.info.status == "FINISHED"
    # Every epoch once, including those reported while the server was down: they waited in the
    # worker and reached MLflow when it came back.
    history = sorted(mlc.get_metric_history(job.run_id, "loss"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(o["epochs"]))
    during = [m for m in history if o["stopped_at"] * 1000 < m.timestamp < o["back_at"] * 1000]
    assert during, (o, [(m.step, m.timestamp) for m in history])
    # Checkpoints: the job's folders in storage are complete (nothing lost, nothing half written).
    folders = _folders(trainer_home, job)
    assert folders
    for folder in folders:
        verify(folder)


@pytest.mark.extended
def test_partial_then_corrupt(outcomes, trainer_home):
    """Extended tier (issue 28): both of its faults are proven in the default tier by the resume
    drills of tests/runners/test_resume_faults.py - an upload cut in half by rank 0 dying, then
    pruned (test_every_epoch_once_after_kills_at_random_points[torch-no-step]: its (0, "upload")
    kill, then check_storage: every folder left complete) and the truncated newest checkpoint
    passed over for the previous one, said in the log and the run's tag
    (test_corrupt_checkpoint_falls_back_to_the_previous)."""
    drill = _outcome(outcomes, "partial_then_corrupt")["drill"]
    assert drill.wait() == "SUCCEEDED", drill.why()
    upload, corrupt = drill.fired()
    assert (upload["phase"], corrupt["phase"]) == ("upload", "corrupt"), drill.why()
    lines = [ln for ln in drill.job.logs().splitlines() if "trainer: restore fallback:" in ln]
    assert lines and corrupt["checkpoint"] in lines[0], drill.why()
    tag = client(drill.job.tracking_uri).get_run(drill.job.run_id).data.tags[TAG_RESTORE_FALLBACK]
    assert corrupt["checkpoint"] in tag and "resumed from checkpoint_" in tag
    check_exactly_once(drill)
    check_storage(drill, trainer_home)   # the half-uploaded folder was pruned, the rest complete


def test_cancel_mid_write(outcomes, trainer_home):
    o = _outcome(outcomes, "cancel_mid_write")
    job = o["job"]
    assert o["cancelled"] == "CANCELLED", job.logs()[-3000:]
    assert client(job.tracking_uri).get_run(job.run_id).info.status == "KILLED"
    folders = _folders(trainer_home, job)
    complete, partial = [], []
    for folder in folders:
        try:
            verify(folder)
            complete.append(folder)
        except Incomplete as e:
            partial.append((folder, str(e)))
    # The folder the cancel cut is in storage, half written, and recognisably so ...
    assert [f.name for f, _ in partial] == [folders[-1].name], (folders, partial)
    assert "trainer.json" in partial[0][1]
    state = next(p for p in folders[-1].iterdir() if p.name.startswith("state."))
    assert state.stat().st_size == o["paused"]["bytes"] // 2
    # ... and a restore from it would pass it over for the newest complete one.
    from ray.train import Checkpoint

    point = choose(Checkpoint(str(folders[-1])))
    try:
        assert point.name == complete[-1].name and point.skipped[0][0] == folders[-1].name, point
    finally:
        point.discard()


def test_node_loss(outcomes):
    o = _outcome(outcomes, "node_loss")
    job = o["job"]
    assert o["state"] == "SUCCEEDED", job.logs()[-3000:]
    # A second worker group, on the surviving node only (Ray's state API).
    later = [w for w in o["workers"] if w.node_id == o["survivor"]]
    assert len(later) >= 2 and len(o["workers"]) >= 4, o["workers"]
    assert steps(job, "loss") == list(range(o["epochs"]))


def test_head_restart(outcomes):
    o = _outcome(outcomes, "head_restart")
    job_id = o["job_id"]
    after = o["status_after"]
    # The restarted cluster does not know the job; `status` says why and reports the job from its
    # MLflow record (issue 24), closed FAILED: it read a state, so it exits 0 (it reports, it does
    # not judge: `trainer wait` exits 5).
    assert after.returncode == 0, after
    assert job_id in after.stderr and "restarted" in after.stderr, after.stderr
    assert "FAILED" in after.stdout, after.stdout
    assert o["run"].info.status == "FAILED"
    assert "restarted" in o["run"].data.tags.get(TAG_CLOSED_BY_CLIENT, "")
