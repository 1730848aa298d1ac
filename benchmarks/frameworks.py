"""Benchmark: the same small CNN on the same digits split in torch, TensorFlow and MXNet.

The cross-framework comparison the seed cites (ilkarman/DeepLearningFrameworks: one network, each
framework, same data and hardware), run the way users run jobs: each framework's digits example
(examples/digits/<framework>.yaml - conv16-conv32-maxpool-dense64-dense10, SGD momentum 0.9,
lr 0.05, batch 32 per worker, scikit-learn's digits with one fixed 80/20 split) through

    local      `trainer run <spec> --local` (a subprocess: the CLI as a user types it)
    cluster-1  `trainer.submit(spec, workers=1)` on the local Ray cluster
    cluster-2  the same with 2 data-parallel workers (torch DDP, TF MultiWorkerMirrored, MXNet
               gradients all-reduced through the runner's Ray actor)

Entrypoints are benchmarks/frameworks_entry.py: the examples unchanged, plus the median time per
epoch and the peak RSS measured inside the training process (rank 0). Samples/s = training
samples / time per epoch (for 2 workers: both workers' samples). Job wall time = submit (or
process start) to the end, everything included (interpreter, imports, Ray worker group, MLflow).

Writes benchmarks/results/frameworks.{json,md,png} with the machine, versions and load average.

    python benchmarks/frameworks.py [--epochs 12] [--frameworks torch,tensorflow,mxnet]
                                    [--modes local,cluster-1,cluster-2] [--quick]

`--quick` (what CI runs, no timing asserted): torch only, local and cluster-2, 2 epochs.
A cluster is started (cpu:2) when none is up, and stopped again at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORKS = ("torch", "tensorflow", "mxnet")
MODES = ("local", "cluster-1", "cluster-2")
TRAIN_SAMPLES = 1437   # examples/digits/digits_data.py: 1797 images, 80 % for training
TRAINER = [str(Path(sys.executable).parent / "trainer")]   # the console script, as users run it


def overrides(framework: str, epochs: int, workers: int | None = None) -> list[str]:
    out = [f"entrypoint=benchmarks/frameworks_entry.py:train_{framework}", f"config.epochs={epochs}",
           "convert=null", "tracking.experiment=benchmark-frameworks"]
    if workers is not None:
        out += [f"workers={workers}", "resources.accelerator=cpu", "resources.cpus_per_worker=1"]
    return out


def spec_path(framework: str) -> Path:
    return ROOT / "examples" / "digits" / f"{framework}.yaml"


def run_local(framework: str, epochs: int) -> dict:
    cmd = [*TRAINER, "run", str(spec_path(framework)), "--local", "--output", "json"]
    for o in overrides(framework, epochs):
        cmd += ["--set", o]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{framework} local: exit {proc.returncode}: {proc.stderr.strip()[-600:]}")
    # The summary names the run; its metrics (the bench_* ones too) are read from MLflow.
    run_id = json.loads(proc.stdout[proc.stdout.index("{"):])["run_id"]
    from trainer.home import resolve_tracking_uri
    from trainer.tracking.runs import client

    return {"metrics": dict(client(resolve_tracking_uri()).get_run(run_id).data.metrics), "wall_s": wall}


def run_cluster(framework: str, epochs: int, workers: int) -> dict:
    import trainer

    started = time.monotonic()
    job = trainer.submit(spec_path(framework), set=overrides(framework, epochs, workers))
    state = job.wait(timeout=1800)
    wall = time.monotonic() - started
    if state.value != "SUCCEEDED":
        raise RuntimeError(f"{framework} cluster-{workers}: {state.value}: {job.logs()[-800:]}")
    return {"metrics": job.final_metrics(), "wall_s": wall, "job_id": job.id}


def row(framework: str, mode: str, result: dict) -> dict:
    m = result["metrics"]
    epoch_s = m.get("bench_epoch_s")
    return {"framework": framework, "mode": mode, "epoch_s": epoch_s,
            "samples_per_s": TRAIN_SAMPLES / epoch_s if epoch_s else None,
            "test_accuracy": m.get("test_accuracy"), "peak_rss_mib": m.get("bench_peak_rss_mib"),
            "wall_s": result["wall_s"]}


def versions() -> dict[str, str]:
    """Framework versions of each runtime (the venvs the jobs ran in), read from their stamps or
    this interpreter - without importing any framework here."""
    from trainer.runtimes import list_runtimes

    out = {}
    for status in list_runtimes():
        for key in ("torch", "tensorflow", "tensorflow-cpu", "mxnet", "ray"):
            if key in status.versions:
                out.setdefault(key, status.versions[key])
    out["python"] = platform.python_version()
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def markdown(rows: list[dict], meta: dict) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [f"- date: {meta['date']}; {meta['epochs']} epochs per run",
             f"- machine: {meta['machine']}; 1-min load average {meta['load_start']:.1f} at start, "
             f"{meta['load_end']:.1f} at end (other work was running: times are upper bounds)",
             f"- versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}", "",
             "| framework | how | s/epoch | samples/s | test acc | peak RSS MiB | wall s |",
             "|---|---|--:|--:|--:|--:|--:|"]
    for r in rows:
        lines.append(f"| {r['framework']} | {r['mode']} | {f(r['epoch_s'], '.2f')} | "
                     f"{f(r['samples_per_s'], ',.0f')} | {f(r['test_accuracy'], '.3f')} | "
                     f"{f(r['peak_rss_mib'], ',.0f')} | {f(r['wall_s'], '.1f')} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frameworks = list(dict.fromkeys(r["framework"] for r in rows))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.8 / max(1, len(modes))
    for i, mode in enumerate(modes):
        for ax, key, label in ((axes[0], "epoch_s", "seconds per epoch"), (axes[1], "wall_s", "job wall time (s)")):
            values = [next((r[key] or 0 for r in rows if r["framework"] == fw and r["mode"] == mode), 0)
                      for fw in frameworks]
            ax.bar([x + i * width for x in range(len(frameworks))], values, width, label=mode)
            ax.set_xticks([x + width * (len(modes) - 1) / 2 for x in range(len(frameworks))], frameworks)
            ax.set_ylabel(label)
    axes[0].legend()
    fig.suptitle(f"digits CNN, {meta['epochs']} epochs - {meta['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--quick", action="store_true", help="torch only, local and cluster-2, 2 epochs")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "frameworks")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.frameworks, args.modes = 2, "torch", "local,cluster-2"
    frameworks = [f for f in args.frameworks.split(",") if f]
    modes = [m for m in args.modes.split(",") if m]
    unknown = [x for x in frameworks if x not in FRAMEWORKS] + [m for m in modes if m not in MODES]
    if unknown:
        ap.error(f"unknown framework/mode: {', '.join(unknown)} (frameworks: {', '.join(FRAMEWORKS)}; "
                 f"modes: {', '.join(MODES)})")

    import trainer

    started_cluster = False
    if any(m.startswith("cluster") for m in modes):
        status = trainer.cluster_status()
        if not status.get("running"):
            trainer.cluster_up(["cpu:2"])
            started_cluster = True
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "epochs": args.epochs,
            "machine": f"{cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.machine()}",
            "load_start": os.getloadavg()[0], "versions": versions()}
    rows = []
    try:
        for framework in frameworks:     # one framework's modes back to back: same load period
            for mode in modes:
                result = (run_local(framework, args.epochs) if mode == "local"
                          else run_cluster(framework, args.epochs, int(mode.split("-")[1])))
                rows.append(row(framework, mode, result))
                print(f"{framework} {mode}: {json.dumps(rows[-1])}", flush=True)
    finally:
        if started_cluster:
            trainer.cluster_down()
    meta["load_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    table = markdown(rows, meta)
    args.out.with_suffix(".md").write_text("# Frameworks benchmark: digits CNN\n\n" + table)
    plot(rows, meta, args.out.with_suffix(".png"))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
