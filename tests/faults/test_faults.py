"""The fault-injection suite (issue #14): real components, one fault each, every wait bounded.

The scenarios on the session's local cluster run at the same time, one thread each, on their own
nodes (so the file costs about one scenario's wall time, not the sum; node loss too, see
`node_loss`). Each test then checks its own scenario's outcome. A scenario that hangs fails its
test at its bound with the job's log.

- client loss: the `trainer submit --wait` process following a job is SIGKILLed;
- tracking outage: the `trainer mlflow serve` server the job records to stops mid-run and comes
  back on the same port (the same job as client loss, one fault after the other);
- partial + corrupt checkpoints: an upload cut in half by a dying worker, then the newest
  registered checkpoint truncated before a kill (the runners' fault drill, reused; extended tier);
- cancel during a checkpoint write: the job is cancelled while rank 0 is halfway through
  uploading a checkpoint's state file;
- node loss: the worker node under the job is lost: every process on it (raylet, workers,
  agents) SIGKILLed at once, as when a machine goes;
- head restart: the head of another local cluster (its own $TRAINER_HOME) is killed and the
  cluster started again while a job runs.
"""
import json
import os
import signal
import subprocess
import threading
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
from trainer.ports import free_port
from trainer.tracking import server
from trainer.tracking.runs import TAG_CLOSED_BY_CLIENT, TAG_RESTORE_FALLBACK, client

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]

JOB_TIMEOUT = 480  # no scenario's job may take longer than this (a hang fails here)
# One `ray start` at a time in this module (the LOSSY nodes', the second cluster's): two on one
# host at the same instant can crash each other (port race; ../shared/FINDINGS.md).
RAY_STARTS = threading.Lock()


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
    until the outage begins, so it is still running at each check by construction, not by luck;
    the server comes back only once rank 0 is making its next report (its `marks_dir` mark), so
    a value is reported while the server is down by construction too, and the job cannot end
    meanwhile: a report that commits a checkpoint waits for MLflow. The server has a store of its
    own (`server_home`): started on the session's store, its schema check raced the other
    scenarios' jobs writing there ("database is locked" under load)."""
    epochs = 3
    name = f"client-loss-{uuid.uuid4().hex[:6]}"
    go, marks = tmp / "outage-begins", tmp / "client-loss-marks"
    marks.mkdir()
    state, _ = server.serve(0, home=server_home)
    follower = subprocess.Popen([*TRAINER, "submit", str(SPEC), "--wait", "--set", f"name={name}",
                                 "--set", f"config.epochs={epochs}", "--set", "config.hold_after=1",
                                 "--set", f"config.hold_file={go}", "--set", f"config.marks_dir={marks}",
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
        # New processes find the job by its id, still running (held), and its log so far: three
        # processes at once (each is an interpreter start; none changes what another sees).
        with ThreadPoolExecutor(max_workers=3) as clis:
            status = clis.submit(cli_json, "status", job.id)
            logs = clis.submit(cli, "logs", job.id)
            listed = clis.submit(cli_json, "list")
            out["status_after_kill"] = status.result()["status"]
            out["logs"] = logs.result().stdout
            out["listed"] = name in {j["name"] for j in listed.result()}
        # The outage: the server stops, the job goes on training and reporting.
        out["stopped_at"] = time.time()
        assert server.stop(server_home) is not None
    finally:
        go.touch()      # never leave the job held (and its CPU taken) for the tests after this one
    until("rank 0 reporting its second epoch while the server is down", lambda: (marks / "0.2").exists(),
          JOB_TIMEOUT, job)
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
    its own (lossy_0, lossy_1) so Ray's inventory tells them apart, and a Ray temp dir of its own
    (as the cluster's own nodes have, trainer/cluster/local.py: also its own log monitor, so its
    workers' lines reach the job's log) that names its processes in the process table."""

    def __init__(self, cluster, home: Path):
        self.cluster, self.home = cluster, home

    def _temp(self, i: int) -> Path:
        return Path(self.cluster.temp_dir) / f"l{i}"

    def start(self) -> None:
        local = LocalCluster(home=self.home)
        for i in range(2):
            self._temp(i).mkdir(exist_ok=True)
            with RAY_STARTS:
                ray_start(f"lossy{i}", [
                    f"--address={self.cluster.gcs_address}", "--num-cpus=1", "--num-gpus=0",
                    "--labels=ray.io/accelerator-type=LOSSY",
                    f"--resources={json.dumps({'accelerator_type:LOSSY': 1, f'lossy_{i}': 1})}",
                    f"--temp-dir={self._temp(i)}", "--node-ip-address=127.0.0.1",
                    f"--object-store-memory={96 * 1024 * 1024}", "--disable-usage-stats",
                    f"--dashboard-agent-listen-port={free_port()}"],
                    local.log_dir, env=auth.node_env(local.token_file))
        until("both LOSSY nodes in the inventory", lambda: len(self.node_ids()) == 2, 120)

    def node_ids(self) -> dict[str, int]:
        """node id -> which LOSSY node, for the alive ones."""
        from ray.util.state import list_nodes

        nodes = list_nodes(address=self.cluster.dashboard_url, detail=True, raise_on_missing_output=False)
        return {n.node_id: i for n in nodes for i in (0, 1)
                if n.state == "ALIVE" and f"lossy_{i}" in (n.resources_total or {})}

    def processes(self, i: int) -> list[psutil.Process]:
        """Every process of node `i` now: those whose command line names its temp dir (its raylet,
        log monitor, agents) and everything under them (the workers the raylet started)."""
        temp = str(self._temp(i))
        found = {}
        for p in psutil.process_iter(["cmdline"]):
            if temp in " ".join(p.info["cmdline"] or []):
                found[p.pid] = p
                try:
                    found.update((c.pid, c) for c in p.children(recursive=True))
                except psutil.NoSuchProcess:
                    pass
        return list(found.values())

    def lose(self, i: int) -> list[int]:
        """Node `i` is lost as a machine is: every process on it SIGKILLed at once, and gone when
        this returns. Killing its raylet alone is not a lost node: its workers outlive it for
        a second or more (each checks its raylet once a second, and a killed raylet counts as
        alive until it is reaped), long enough to finish a short job's training by themselves."""
        victims = self.processes(i)
        for p in victims:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(victims, timeout=30)
        assert not alive, f"LOSSY node {i}: still running after SIGKILL: {alive}"
        return [p.pid for p in victims]

    def stop(self) -> None:
        victims = [p for i in (0, 1) for p in self.processes(i)]
        for p in victims:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(victims, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        # The session cluster as it was: a test after this one lists the cluster's nodes, and a
        # killed raylet stays ALIVE in Ray's inventory until the GCS's health check gives it up.
        until("the LOSSY nodes gone from the inventory", lambda: not self.node_ids(), 180)


def node_loss(nodes: ExtraNodes, cluster, home: Path, tmp: Path) -> dict:
    """Two LOSSY nodes join, a job runs on them; its first worker group holds after its first
    epoch; the node under one of its workers is lost (every process on it killed, gone), and only
    then is the hold released, so the node dies while the job is decidedly running and its
    workers cannot train on (events, not sleeps). The workers are recorded from Ray's state API
    while the job runs: the first group, then a new group ALIVE on the surviving node (waited
    for), which trains the rest. It runs beside the other scenarios: their jobs' workers never
    land on LOSSY nodes (label selectors), and the node is lost only once no actor of another
    job is alive on it (zero-CPU actors, a Train controller's, go to their creator's node, the
    head, but that is Ray's choice: it is checked, not assumed)."""
    go = tmp / "node-lost"
    try:
        nodes.start()
        ids = nodes.node_ids()
        epochs = 3
        job = _submit("node-loss", "LOSSY", epochs, 0, "failure.max_failures=3", "config.hold_after=1",
                      f"config.hold_file={go}")
        until("an epoch in MLflow on the LOSSY nodes", lambda: epochs_logged(job), JOB_TIMEOUT, job)
        first = [w for w in train_workers(cluster.dashboard_url, job) if w.state == "ALIVE"]
        lost = ids[first[0].node_id]
        lost_id = next(n for n, i in ids.items() if i == lost)
        survivor = next(n for n, i in ids.items() if i != lost)
        until("no other job's actor alive on the node to be lost",
              lambda: not _others_on(cluster.dashboard_url, lost_id, first[0].job_id), JOB_TIMEOUT, job)
        killed = nodes.lose(lost)
        go.touch()

        def second_group():
            new = [w for w in train_workers(cluster.dashboard_url, job)
                   if w.state == "ALIVE" and w.actor_id not in {f.actor_id for f in first}]
            return new if len(new) >= 2 else None
        second = until("a new worker group ALIVE after the node loss", second_group, JOB_TIMEOUT, job)
        state = _wait(job)
        return {"job": job, "epochs": epochs, "state": state, "lost_node": lost_id, "survivor": survivor,
                "first": first, "second": second, "killed": killed}
    finally:
        go.touch()      # never leave a held job behind


def _others_on(address: str, node_id: str, job_id: str) -> list:
    """The actors of jobs other than `job_id` alive on node `node_id` (Ray's state API)."""
    from ray.util.state import list_actors

    return [a for a in list_actors(address=address, filters=[("node_id", "=", node_id), ("state", "=", "ALIVE")],
                                   limit=1000, raise_on_missing_output=False) if a.job_id != job_id]


def head_restart(tmp: Path) -> dict:
    """Another local cluster in its own $TRAINER_HOME (the session's must stay up): a job runs, the
    head's GCS is SIGKILLed, `trainer cluster up` starts the cluster again."""
    home = tmp / "head-home"
    env = {**os.environ, "TRAINER_HOME": str(home), "RAY_AUTH_TOKEN_PATH": str(home / "cluster" / "auth_token")}
    # Its own store too: an earlier test's in-process model logging (mlflow.set_tracking_uri) can
    # leave $MLFLOW_TRACKING_URI set in this process, and the job and `status` would use that one.
    env.pop("MLFLOW_TRACKING_URI", None)
    with RAY_STARTS:
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
        with RAY_STARTS:
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
    nodes = ExtraNodes(cluster, trainer_home)
    args = {"client_loss_and_outage": (cluster, server_home, tmp),
            "partial_then_corrupt": (cluster, trainer_home, tmp), "cancel_mid_write": (cluster, trainer_home, tmp),
            "node_loss": (nodes, cluster, trainer_home, tmp), "head_restart": (tmp,)}
    pool = ThreadPoolExecutor(max_workers=len(SCENARIOS), thread_name_prefix="fault")
    futures = {name: pool.submit(SCENARIOS[name], *args[name]) for name in SCENARIOS if name in wanted}
    yield futures
    pool.shutdown(wait=True)
    if "node_loss" in wanted:
        nodes.stop()
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
    # The node under the first group was lost (its processes gone, the first group's among them)
    # and a second group, new actors, ran on the surviving node only (Ray's state API, while the
    # job ran).
    first, second = o["first"], o["second"]
    assert any(w.node_id == o["lost_node"] for w in first), first
    assert len(second) >= 2 and {w.node_id for w in second} == {o["survivor"]}, second
    assert not {w.actor_id for w in second} & {w.actor_id for w in first}
    assert {w.pid for w in first if w.node_id == o["lost_node"]} <= set(o["killed"]), (first, o["killed"])
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
