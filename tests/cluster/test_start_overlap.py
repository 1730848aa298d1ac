"""The local cluster starts its worker nodes while the head still waits for its dashboard (they
need the head's GCS only), and a head that fails meanwhile ends the wait for a worker at once
instead of at the worker's timeout. Ports chosen by trainer are distinct from each other."""
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from trainer.cluster.local import LocalCluster, RayStart, _free_ports
from trainer.errors import ClusterError


def _times(log: Path) -> list[datetime]:
    """The times of a `ray start` log's timestamped lines (Ray's and trainer's own first line)."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            out.append(datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f"))
        except ValueError:
            continue
    return out


@pytest.mark.integration
def test_first_worker_node_starts_before_the_head_is_done(cluster):
    logs = LocalCluster().log_dir
    head = _times(logs / "head.log")
    worker = _times(next(logs.glob("node0-*.log")))
    assert head and worker, f"no timestamped lines in {logs}"
    # Launched (trainer's first line) before the head's `ray start` wrote its last line.
    assert worker[0] < head[-1], (worker[0], head[-1])


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


def test_ports_chosen_together_are_distinct():
    ports = _free_ports(64)
    assert len(set(ports)) == 64
