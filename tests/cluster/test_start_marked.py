"""What trainer starts is known as its own from the moment `start_marked` returns: Popen returns
once the exec began, before the kernel wrote the new program's environment, and a check of the
owner marker in that moment (/proc/<pid>/environ empty) took trainer's own Prometheus for another
process's (2 of 20 starts): it said "exited at start" and left the server running."""
from trainer.cluster.processes import has_marker, owner_marker, start_marked


def test_a_started_process_carries_its_marker_when_start_marked_returns(tmp_path):
    missed = 0
    for _ in range(200):        # the old code missed ~1 in 40 here
        proc, record = start_marked(["sleep", "30"], tmp_path / "log", tmp_path)
        try:
            alive = proc.poll() is None
            if alive and not has_marker(proc.pid, owner_marker(record["token"], tmp_path)):
                missed += 1
        finally:
            proc.kill()
            proc.wait()
    assert missed == 0
