"""The local cluster starts its worker nodes while the head still waits for its dashboard (they
need the head's GCS only), and a head that fails meanwhile ends the wait for a worker at once
instead of at the worker's timeout. Ports chosen by trainer are distinct from each other."""
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.cluster.local import (START_TIMEOUT_S, WAIT_FOR_HEAD_ENV, LocalCluster, RayStart, port_taken,
                                   start_timeline)
from trainer.errors import ClusterError


@pytest.mark.integration
def test_first_worker_node_starts_before_the_head_is_done(cluster):
    timeline = start_timeline(LocalCluster().log_dir)
    (first,) = [name for name in timeline if name.startswith("node0-")]
    # Launched before the head's `ray start` was done.
    assert timeline[first][0] < timeline["head"][1], timeline


def test_a_worker_waits_for_the_heads_node_as_long_as_the_head_may_take_to_start():
    """Ray reads the variable we set (a rename in a Ray upgrade fails here): a worker's `ray start`
    asks for the head's node every 2 s that many times, at least START_TIMEOUT_S in all. With Ray's
    default (20 tries, 40 s) a worker failed "No node info found for head node in GCS" at load ~8."""
    import os

    out = subprocess.run([sys.executable, "-c", "from ray._private import ray_constants as c; "
                          "print(c.NUM_REDIS_GET_RETRIES)"], env={**os.environ, **WAIT_FOR_HEAD_ENV},
                         capture_output=True, text=True, check=True, timeout=120)
    assert int(out.stdout.split()[-1]) * 2 >= START_TIMEOUT_S


@pytest.mark.parametrize("line, taken", [
    # Ray's own last lines (two clusters starting at once on this host, both chose 8265)
    ("Exception: Failed to find a valid port for dashboard after 0 retries: [Errno 98] error while "
     "attempting to bind on address ('127.0.0.1', 8265): address already in use", True),
    ("ValueError: Failed to bind to 127.0.0.1:6379 because it's already occupied.", True),
    ("Exception: No node info found for head node in GCS.", False)])
def test_up_tries_other_ports_only_when_one_was_taken(line, taken):
    assert port_taken(ClusterError(f"`ray start` for head failed (exit 1): {line} (full log: x)")) is taken


def test_the_timeline_reads_each_start_from_its_log(tmp_path):
    (tmp_path / "head.log").write_text(
        "2026-12-06 15:45:25,100\tINFO trainer -- launched `ray start` for head\n"
        "2026-12-06 15:45:26,467\tINFO usage_lib.py:448 -- Usage stats collection is disabled.\n"
        "  a traceback line without a time\n"
        "2026-12-06 15:45:32,821\tSUCC scripts.py:1084 -- Ray runtime started.\n")
    (tmp_path / "join.log").write_text("2026-12-06 15:45:26,000\tINFO scripts.py:1 -- a log RayStart did not write\n")
    timeline = start_timeline(tmp_path)
    assert list(timeline) == ["head"]
    launched, done = timeline["head"]
    assert done - launched == pytest.approx(7.721, abs=1e-3)


def _start(name: str, script: str, tmp_path: Path) -> RayStart:
    log = tmp_path / f"{name}.log"
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=fh, stderr=subprocess.STDOUT)
    return RayStart(name, proc, log, time.monotonic() + 60)


def test_a_failed_head_ends_the_wait_for_a_worker(tmp_path):
    worker = _start("node0-cpu", "import time; time.sleep(60)", tmp_path)
    head = _start("head", "import sys; print('ValueError: port 8265 already occupied'); sys.exit(1)", tmp_path)
    t = time.monotonic()
    try:
        with pytest.raises(ClusterError, match=r"`ray start` for head failed \(exit 1\): ValueError: port 8265"):
            worker.wait(alongside=head)
        assert time.monotonic() - t < 30
    finally:
        worker.reap()


def test_a_failed_worker_names_its_last_line(tmp_path):
    worker = _start("node0-cpu", "import sys; print('ConnectionError: no GCS'); sys.exit(2)", tmp_path)
    with pytest.raises(ClusterError, match=r"for node0-cpu failed \(exit 2\): ConnectionError: no GCS \(full log: "):
        worker.wait()
