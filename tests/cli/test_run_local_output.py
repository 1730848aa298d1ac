"""`trainer run --local` prints what `submit --wait` prints: progress lines, the summary table,
the conversion table and the report's path - never the whole report.md."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRAINER = str(Path(sys.executable).parent / "trainer")


@pytest.mark.integration
def test_run_local_prints_the_summary_not_the_report(tmp_path):
    proc = subprocess.run([TRAINER, "run", str(REPO / "examples/digits/torch.yaml"), "--local",
                           "--set", "config.epochs=1", "--set", "config.width=4", "--set", "workers=1",
                           "--set", "convert.targets=[onnx]", "--set", "register=null",
                           "--set", "tracking.experiment=run-local-output"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "COLUMNS": "80"})
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "# Conversion parity report" not in out and "- tolerance:" not in out, out
    assert "conversion PASSED" in out and "onnx" in out
    report = next(ln.split("report: ", 1)[1] for ln in out.splitlines() if "; report: " in ln)
    assert report.endswith("report.md") and Path(report).is_file()
    assert "summary" in out and "MLflow run" in out
    assert "browse the run: trainer ui" in proc.stderr      # no MLflow UI runs: how to open one
