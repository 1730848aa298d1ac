"""benchmarks/soak.py and benchmarks/scale.py in their --quick modes against the session's local
cluster, as CI runs them: they must finish and write JSON + Markdown + PNG, and what they check
beyond timing must hold (no job lost or duplicated, every state final, no run left RUNNING, every
worker on its accelerator). No timing is asserted."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def _bench(script: str, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{script}", "--quick", "--out", str(out)], cwd=REPO,
                          env=os.environ.copy(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for ext in ("json", "md", "png"):
        assert (out / f"{script}-quick.{ext}").stat().st_size > 0, ext
    assert "machine:" in (out / f"{script}-quick.md").read_text()
    return json.loads((out / f"{script}-quick.json").read_text())


def test_soak_quick(cluster, tmp_path):
    r = _bench("soak", tmp_path)
    # Small, but every path: jobs in sequence (first vs last compared), more than one at once.
    assert len(r["sequence"]) == r["jobs"] >= 2 and len(r["burst_result"]["states"]) == r["burst"] >= 2
    i = r["integrity"]
    assert i["submitted"] == i["unique_ids"] == i["listed"] == r["jobs"] + r["burst"]
    assert i["missing"] == i["duplicated"] == i["not_final"] == i["not_succeeded"] == i["runs_left_running"] == []
    assert len(r["samples"]) >= 2 and all(s["head_mb"]["gcs"] > 0 for s in r["samples"])


def test_scale_quick(cluster, tmp_path):
    r = _bench("scale", tmp_path)
    s = r["summary"]
    assert len(r["types"]) >= 2, r["types"]        # the session cluster's A100 and T4 nodes
    assert {j["accelerator"] for j in r["per_job"]} == set(r["types"]), r["per_job"]   # a job on each type
    assert s["workers_placed"] >= 2 * r["jobs"]
    assert s["misplaced_workers"] == 0 and s["jobs_never_running"] == 0 and s["not_succeeded"] == 0, r["misplaced"]
