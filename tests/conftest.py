"""Every test session gets its own $TRAINER_HOME (cluster state, MLflow, checkpoints), while the
big framework runtimes are shared through $TRAINER_RUNTIMES (built once by `.ci/run`).

Cost is a marker: a test that needs a framework runtime (`tensorflow`, `mxnet`: also marked
`framework`), the emulated ARM root (`edge`) or takes minutes (`slow`) is `integration` too, so
`pytest -m "not integration"` is the quick loop: no Ray cluster, no other runtime, no qemu. An
`extended` test (a bigger version of a check the default tier makes) runs only when `-m` names it."""
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    os.environ.setdefault("TRAINER_RUNTIMES", str(Path.home() / ".trainer" / "runtimes"))
    # Short: Ray puts unix sockets under it (the cluster falls back to /tmp when long anyway).
    os.environ["TRAINER_HOME"] = tempfile.mkdtemp(prefix="trh-", dir="/tmp")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("TRAINER_ADDRESS", None)
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    # The local cluster runs with token auth on: Ray's own clients in tests (ray.util.state) take
    # its token the way users give it to them. Set before anything initialises Ray's config.
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = os.path.join(os.environ["TRAINER_HOME"], "cluster", "auth_token")
    os.environ.pop("RAY_AUTH_TOKEN", None)


IMPLIES_INTEGRATION = ("tensorflow", "mxnet", "edge", "slow", "extended")
FRAMEWORKS = ("tensorflow", "mxnet")


def pytest_collection_modifyitems(config, items):
    extended_asked = "extended" in (config.option.markexpr or "")
    left_out = [item for item in items if not extended_asked and item.get_closest_marker("extended")]
    if left_out:    # the extended tier runs only when a -m expression names it
        config.hook.pytest_deselected(items=left_out)
        ids = {id(item) for item in left_out}
        items[:] = [item for item in items if id(item) not in ids]
    for item in items:
        marks = {m.name for m in item.iter_markers()}
        if marks & set(FRAMEWORKS):
            item.add_marker(pytest.mark.framework)
        if marks & set(IMPLIES_INTEGRATION) and "integration" not in marks:
            item.add_marker(pytest.mark.integration)


def pytest_unconfigure(config):
    home = os.environ.get("TRAINER_HOME", "")
    if os.path.basename(home).startswith("trh-"):
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(autouse=True)
def _mlflow_store_not_carried_over():
    """A test that points MLflow's process-wide store somewhere (mlflow.set_tracking_uri also sets
    $MLFLOW_TRACKING_URI) does not hand it to the next test and the processes that one starts.
    trainer's own code never leaves it set (tests/tracking/test_global_store.py)."""
    name = "mlflow.tracking._tracking_service.utils"      # not imported: nothing to carry over
    before = sys.modules.get(name)
    saved_uri, saved_env = getattr(before, "_tracking_uri", None), os.environ.get("MLFLOW_TRACKING_URI")
    yield
    after = sys.modules.get(name)
    if after is not None:
        after._tracking_uri = saved_uri
    if saved_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved_env


@pytest.fixture(scope="session")
def trainer_home() -> Path:
    return Path(os.environ["TRAINER_HOME"])


@pytest.fixture(scope="session")
def cluster(trainer_home):
    """A real local Ray cluster for the session: a CPU-only head plus nodes labelled cpu, A100 and
    T4 (fake accelerator labels are how placement is exercised on one host)."""
    import trainer

    state, _ = trainer.cluster_up(["cpu:2", "A100:1", "T4:1"])
    _session_cluster.append(state)
    yield state
    _session_cluster.clear()
    trainer.cluster_down()


_session_cluster: list = []


@pytest.fixture(scope="module", autouse=True)
def _no_job_outlives_its_module():
    """A test that fails before its job ends must not leave that job on the session's cluster: it
    holds CPUs the next modules' jobs wait for (one leaked sweep cost two later tests their 900 s
    timeouts). A job still running when its module ends is stopped, and named in a warning."""
    yield
    if not _session_cluster:
        return
    import warnings

    import trainer
    from trainer.errors import TrainerError
    from trainer.scheduling.ray_jobs import RayJobs

    url = _session_cluster[0].dashboard_url
    left: list[str] = []
    try:
        left = [j.submission_id for j in RayJobs(url).list() if not j.status.is_terminal()]
        for job_id in left:
            trainer.Job.get(job_id, url).cancel()
    except TrainerError as e:     # the module's tests took the cluster down, or a job would not stop
        warnings.warn(f"after this module: {e}", stacklevel=1)
    if left:
        warnings.warn(f"stopped the jobs this module left running: {', '.join(left)}", stacklevel=1)


@pytest.fixture
def isolated_home(tmp_path, monkeypatch) -> Path:
    """A fresh, empty $TRAINER_HOME for one test (to prove nothing was created in it)."""
    home = tmp_path / "home"
    monkeypatch.setenv("TRAINER_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return home


@pytest.fixture(scope="session")
def oci_registry(trainer_home):
    """A real docker-registry (distribution 2.8) on 127.0.0.1 with htpasswd auth, started the way
    `trainer registry serve` starts it, on a free port; stopped at the end of the session."""
    from trainer.registry import serve

    state, _ = serve.start(port=0)
    yield state
    serve.stop()
