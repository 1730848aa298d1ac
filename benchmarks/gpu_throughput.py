"""GPU throughput: the same training step raw, through `trainer run --local`, and through Ray Train.

    python benchmarks/gpu_throughput.py --out benchmarks/results/gpu.md

Three ways, measured in one process on one machine, so the ratios are fair:
  raw    a hand-written loop (the baseline): examples/synthetic's model and step, no trainer at all
  local  the job's function through trainer's in-process path (LocalSession, world size 1)
  ray    the same function through trainer's Ray runner (TorchTrainer, 1 GPU worker, label_selector
         on ray.io/accelerator-type = the GPU's NVML model), on a single-node Ray started here
plus the digits example (accuracy, wall time) locally and through Ray. No MLflow is used (the
device image has none): metrics come back through the final checkpoint.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def raw_loop(cfg: dict) -> float:
    """The baseline: the example's model and step, written out with nothing around it."""
    import torch
    from torch import nn

    sys.path.insert(0, str(REPO / "examples" / "synthetic"))
    from train_synthetic import build

    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    model = build(cfg["model"], 1000).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(cfg["batch_size"], 3, cfg["image_size"], cfg["image_size"], device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (cfg["batch_size"],), device=device)
    for step in range(cfg["warmup_steps"] + cfg["steps"]):
        if step == cfg["warmup_steps"]:
            torch.cuda.synchronize()
            started = time.perf_counter()
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg["report_every"] == 0:
            loss.item()  # the same host sync the trainer path's report makes
    torch.cuda.synchronize()
    return cfg["batch_size"] * cfg["steps"] / (time.perf_counter() - started)


def local_run(spec, workdir: Path) -> tuple[dict, float]:
    from trainer.runners.job import run_in_process

    root = Path(tempfile.mkdtemp(prefix="bench-local-"))
    started = time.perf_counter()
    run_in_process(spec, workdir, None, None, root)
    wall = time.perf_counter() - started
    last = sorted(root.glob("checkpoint_*"))[-1]
    return json.loads((last / "metrics.json").read_text()), wall


def ray_run(spec, workdir: Path) -> tuple[dict, float]:
    from ray.train import CheckpointConfig, RunConfig

    from trainer.runners.base import get_runner
    from trainer.runners.job import scaling_config, worker_loop

    loop_config = {"spec": spec.model_dump_json(), "run_id": None, "tracking_uri": None, "workdir": str(workdir)}
    run_config = RunConfig(name=f"bench-{spec.name}-{int(time.time())}",
                           storage_path=tempfile.mkdtemp(prefix="bench-ray-"),
                           checkpoint_config=CheckpointConfig(num_to_keep=1))
    started = time.perf_counter()
    result = get_runner("torch").ray_trainer(worker_loop, loop_config, scaling_config(spec), run_config).fit()
    return dict(result.metrics), time.perf_counter() - started


def main() -> None:
    import ray
    import torch

    from trainer.cluster.gpus import local_gpus
    from trainer.spec import load_spec

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu.md"))
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()

    gpus = local_gpus()
    if not gpus or not torch.cuda.is_available():
        sys.exit("error: no NVIDIA GPU visible (NVML/CUDA); this benchmark needs one")
    label = gpus[0].label
    on_gpu = {"resources.accelerator": label, "resources.gpus_per_worker": 1}
    resnet, _ = load_spec(REPO / "examples" / "synthetic" / "resnet50.yaml",
                          {**on_gpu, **({"config.steps": args.steps} if args.steps else {})})
    digits, _ = load_spec(REPO / "examples" / "digits" / "torch.yaml",
                          {**on_gpu, "workers": 1, "convert": None, "failure.max_failures": 0})

    rows = []
    raw = raw_loop(resnet.config)
    rows.append(("resnet50 raw loop (baseline)", raw, 1.0, None, None))
    m, wall = local_run(resnet, REPO)
    rows.append(("resnet50 trainer run --local", m["images_per_sec"], m["images_per_sec"] / raw, None, wall))
    raw_again = raw_loop(resnet.config)  # the baseline again, so drift between runs is visible

    ray.init(labels={"ray.io/accelerator-type": label}, include_dashboard=False, num_gpus=len(gpus),
             num_cpus=8, log_to_driver=False)
    m, wall = ray_run(resnet, REPO)
    rows.append(("resnet50 Ray Train (TorchTrainer, 1 GPU)", m["images_per_sec"], m["images_per_sec"] / raw, None, wall))
    dm, dwall = ray_run(digits, REPO)
    ray.shutdown()
    lm, lwall = local_run(digits, REPO)
    rows.append(("digits CNN, Ray Train (1 GPU)", None, None, dm.get("accuracy"), dwall))
    rows.append(("digits CNN, trainer run --local", None, None, lm.get("accuracy"), lwall))

    lines = [
        f"# GPU throughput ({time.strftime('%Y-%m-%d')})", "",
        f"Machine: {gpus[0].name} ({gpus[0].memory_gib:.0f} GiB), {platform.processor() or platform.machine()}; "
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, ray {ray.__version__}, Python {platform.python_version()}.",
        f"Spec: examples/synthetic/resnet50.yaml ({resnet.config}), bf16 autocast, channels_last, "
        "synthetic data on the GPU; ctx.report every 10 steps; label ray.io/accelerator-type="
        f"{label} from NVML. Raw baseline measured before and after the local run: {raw:.0f} / {raw_again:.0f} img/s.",
        "", "| path | images/s | vs raw | digits accuracy | wall s |", "|---|---|---|---|---|"]
    for name, ips, ratio, acc, wall in rows:
        lines.append(f"| {name} | {'' if ips is None else f'{ips:,.0f}'} | {'' if ratio is None else f'{ratio:.3f}'} "
                     f"| {'' if acc is None else f'{acc:.4f}'} | {'' if wall is None else f'{wall:.1f}'} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
