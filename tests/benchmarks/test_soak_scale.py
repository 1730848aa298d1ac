"""benchmarks/soak.py and benchmarks/scale.py in their --quick modes against the session's local
cluster, as CI runs them: they must finish and write JSON + Markdown + PNG, and what they check
beyond timing must hold (no job lost or duplicated, every state final, no run left RUNNING, every
worker on its accelerator). No timing is asserted. Both are in the `extended` benchmark tier (issue
28's CI budget: the soak's smoke run cost 105 s of four tiny jobs, each ~20 s of Ray's fixed start).
What they check is proven in the default tier: jobs submitted at once each end in their own final
state with their own run closed (tests/cli/test_failures.py: two `submit --wait` at once;
tests/faults/test_faults.py: four scenarios' jobs at once), a job is listed by `trainer list` under
its name (test_client_loss), and placement by accelerator label
(tests/runners/test_resume_faults.py::test_placement_follows_the_accelerator_label)."""
import importlib
import json
import logging
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def _bench(script: str, out: Path, monkeypatch) -> dict:
    """The script's own main(), as `python -m benchmarks.SCRIPT --quick` calls it, in this process:
    a child interpreter would pay trainer's, Ray's and MLflow's imports again (seconds of a 2-core
    CI) to prove nothing more. What main() changes process-wide (the cwd, Ray's log level) is put
    back."""
    monkeypatch.chdir(REPO)
    ray_logger = logging.getLogger("ray")
    level = ray_logger.level
    try:
        assert importlib.import_module(f"benchmarks.{script}").main(["--quick", "--out", str(out)]) == 0
    finally:
        ray_logger.setLevel(level)
    for ext in ("json", "md", "png"):
        assert (out / f"{script}-quick.{ext}").stat().st_size > 0, ext
    assert "machine:" in (out / f"{script}-quick.md").read_text()
    return json.loads((out / f"{script}-quick.json").read_text())


@pytest.mark.extended
def test_soak_quick(cluster, tmp_path, monkeypatch):
    r = _bench("soak", tmp_path, monkeypatch)
    # Small, but every path: jobs in sequence (first vs last compared), more than one at once.
    assert len(r["sequence"]) == r["jobs"] >= 2 and len(r["burst_result"]["states"]) == r["burst"] >= 2
    i = r["integrity"]
    assert i["submitted"] == i["unique_ids"] == i["listed"] == r["jobs"] + r["burst"]
    assert i["missing"] == i["duplicated"] == i["not_final"] == i["not_succeeded"] == i["runs_left_running"] == []
    assert len(r["samples"]) >= 2 and all(s["head_mb"]["gcs"] > 0 for s in r["samples"])


@pytest.mark.extended
def test_scale_quick(cluster, tmp_path, monkeypatch):
    r = _bench("scale", tmp_path, monkeypatch)
    s = r["summary"]
    assert len(r["types"]) >= 2, r["types"]        # the session cluster's A100 and T4 nodes
    assert {j["accelerator"] for j in r["per_job"]} == set(r["types"]), r["per_job"]   # a job on each type
    assert s["workers_placed"] >= 2 * r["jobs"]
    assert s["misplaced_workers"] == 0 and s["jobs_never_running"] == 0 and s["not_succeeded"] == 0, r["misplaced"]
