"""benchmarks/frameworks.py --quick end to end (the CI run: what it measures is not asserted,
only that every number is there and the table, JSON and PNG are written). The benchmark tier:
`extended` (tests/benchmarks/test_quick.py says why)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.extended]

REPO = Path(__file__).resolve().parents[2]


def test_quick_benchmark_writes_the_table_json_and_png(cluster, tmp_path):
    out = tmp_path / "frameworks"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "frameworks.py"), "--quick", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.with_suffix(".json").read_text())
    assert [(r["framework"], r["mode"]) for r in doc["rows"]] == [("torch", "local"), ("torch", "cluster-2")]
    for r in doc["rows"]:
        for key in ("epoch_s", "samples_per_s", "peak_rss_mib", "wall_s"):
            assert r[key] is not None and r[key] > 0, (key, r)
        assert 0 <= r["test_accuracy"] <= 1
    assert doc["meta"]["versions"]["torch"] and doc["meta"]["epochs"] == 2
    table = out.with_suffix(".md").read_text()
    assert "| framework | how | s/epoch | samples/s | test acc | peak RSS MiB | wall s |" in table
    assert max(len(line) for line in table.splitlines() if line.startswith("|")) <= 80
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The cluster the session started is still up: the benchmark stops only a cluster it started.
    import trainer
    assert trainer.cluster_status()["running"]
