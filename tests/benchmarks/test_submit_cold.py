"""The cold-start benchmark itemises its run from the nodes' `ray start` logs (no Ray needed)."""
from benchmarks.submit import cold_parts, report


def test_cold_start_is_itemised_from_the_start_timeline():
    parts = cold_parts(100.0, 30.0, {"head": (101.2, 109.0), "node0-cpu": (102.0, 110.5)})
    assert parts == {"before_cluster_s": 1.2, "cluster_s": 9.3, "after_cluster_s": 19.5,
                     "ray_starts": {"head": [1.2, 9.0], "node0-cpu": [2.0, 10.5]}}
    text = report({"cold": [{"wall_s": 30.0, "status": "SUCCEEDED", "job_s": 28.0, **parts}]})
    assert "| 1 | 1.2 | head 1.2-9, node0-cpu 2-10.5 | 9.3 | 19.5 | 30.0 |" in text


def test_a_run_without_start_logs_has_no_parts():
    assert cold_parts(100.0, 30.0, {}) == {}
