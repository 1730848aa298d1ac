"""The synthetic throughput example runs through trainer's in-process path (no Ray, no MLflow):
the code the GPU benchmark (benchmarks/gpu_throughput.py) measures, exercised on CPU."""
import json
from pathlib import Path

from trainer.runners.job import run_in_process
from trainer.spec import load_spec

REPO = Path(__file__).resolve().parents[2]


def test_synthetic_example_reports_throughput_in_its_final_checkpoint(tmp_path):
    spec, workdir = load_spec(REPO / "examples" / "synthetic" / "resnet50.yaml", {
        "resources.accelerator": "cpu", "resources.gpus_per_worker": 0, "config.model": "tiny",
        "config.batch_size": 4, "config.image_size": 16, "config.warmup_steps": 1, "config.steps": 3})
    assert workdir == REPO
    run_in_process(spec, workdir, None, None, tmp_path)
    (last,) = sorted(tmp_path.glob("checkpoint_*"))
    metrics = json.loads((last / "metrics.json").read_text())
    assert metrics["images_per_sec"] > 0 and metrics["step_time_ms"] > 0
    assert (last / "state.pt").is_file()
