"""The benchmarks' --quick modes run end to end (no timing is asserted: this machine's speed is
not the code's): each writes its JSON record, Markdown table and PNG with the machine and
versions, touches nothing under benchmarks/, and the figures it reports are there.

The runner and submit smoke runs are in the `extended` tier with the other benchmark smoke runs
(frameworks, scale): a minute or more of Ray jobs each that prove a benchmark script works, not
the product, so CI leaves them out (issue 28's budget) and `-m extended` runs them; the record
writer they all share is tested in the default tier (tests/benchmarks/test_record.py), and so is
the tracking benchmark's smoke run (seconds, no cluster)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "benchmarks" / "README.md"


def run_quick(script: str, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{script}", "--quick", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    record = json.loads((out / f"{script}.json").read_text())
    md = (out / f"{script}.md").read_text()
    png = (out / f"{script}.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert record["quick"] is True and record["machine"]["torch"] and record["machine"]["ray"]
    assert "--quick: not a measurement" in md and "Load average" in md and record["machine"]["cpu"] in md
    # A smoke run never replaces results (a full run may, at the same time: compare content, not bytes).
    assert "not a measurement" not in (README.read_text() if README.is_file() else "")
    return record


@pytest.mark.extended     # the benchmark tier (README "Test tiers"): a minute of jobs that prove the script runs
def test_runner_quick(cluster, tmp_path):
    record = run_quick("runner", tmp_path)
    local = record["local"]
    assert local["plain"][0]["accuracy"] > 0.1 and local["trainer_local"][0]["accuracy"] > 0.1
    assert local["trainer_local"][0]["save_model_s"] > 0
    tp = record["throughput"]
    assert tp["mlflow_points"] == tp["reported"] > 0
    variants = record["cluster"]["variants"]
    assert len(variants) == 2
    for runs in variants.values():
        (one,) = runs
        assert one["loop_s"] > 0 and one["stall_ms_median"] is not None
        assert one["phases"]["worker-group start"] > 0
    trainer = variants["trainer submit --wait"][0]["phases"]
    assert trainer["run close"] is not None and trainer["driver connect (imports, ray.init)"] > 0


@pytest.mark.extended     # the benchmark tier
def test_submit_quick(cluster, tmp_path):
    record = run_quick("submit", tmp_path)
    latency = record["latency"]
    assert [x["ok"] for x in latency["trainer"] + latency["raw"]] == [True, True]


@pytest.mark.integration
def test_tracking_quick(tmp_path):
    record = run_quick("tracking", tmp_path)
    m = record["measure"]
    assert m["tracking off"][0]["points"] is None
    assert m["MLflow, max_failures 2"][0]["points"] == m["MLflow, max_failures 0"][0]["points"] == record["reports"]
