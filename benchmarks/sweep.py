"""Benchmark: a sweep's overhead per trial, trainer against a raw Ray Tune script.

The same sweep both ways on one warm local cluster (a 2-CPU `cpu` node): the digits example's
(examples/digits/sweep.yaml: trials, concurrency, seed, ASHA) with `convert`/`register` off, and
benchmarks/jobs/sweep_raw.py, the same function written for Ray Tune + Ray Train directly
(same model, data, loop, space, seed, scheduler), submitted as a Ray job. Alternating, `--rounds`
times. Per trial: (trainer's wall time - raw's) / trials. What trainer adds per trial: its child
MLflow run (params, every metric, its outcome), the ctx (metrics channel, verified checkpoints),
the sweep's progress and the parent run's summary and plot.

    flock /tmp/bench.lock python benchmarks/sweep.py [--rounds 3] [--trials 8] [--epochs 4] [--quick] [--out DIR]

--quick: one round of 2 trials, 2 epochs, results in a temp folder, README untouched (a smoke run).
Take a record only on a quiet machine (the load is written with it).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _record as R  # noqa: E402
from benchmarks.runner import TRAINER, _env, warm_cluster  # noqa: E402

SPEC = "examples/digits/sweep.yaml"


def trainer_sweep(args, env: dict) -> dict:
    wall, proc = R.run(TRAINER + ["submit", SPEC, "--wait", "--output", "json", "--set", f"config.epochs={args.epochs}",
                                  "--set", f"sweep.trials={args.trials}", "--set", f"sweep.concurrency={args.concurrency}",
                                  "--set", "convert=null", "--set", "register=null"], env=env, timeout=3600)
    summary = json.loads(proc.stdout)
    return {"wall_s": wall, "ok": summary["status"] == "SUCCEEDED", "outcomes": (summary.get("sweep") or {}).get("outcomes")}


def raw_sweep(args, env: dict, jobs, work: Path) -> dict:
    from trainer.protocol import UPLOAD_EXCLUDES

    job_id = f"bench-sweep-raw-{int(time.time() * 1000)}"
    runtime_env = {"working_dir": str(R.ROOT), "excludes": UPLOAD_EXCLUDES, "py_executable": R.PYTHON,
                   "env_vars": {"BENCH_STORAGE": str(work / "raw"), "PYTHONPATH": ".",
                                "RAY_ADDRESS": env.get("RAY_ADDRESS_GCS", "")}}
    wall, _ = R.run([str(Path(R.PYTHON).parent / "ray"), "job", "submit", "--address", jobs.address,
                     "--submission-id", job_id, "--runtime-env-json", json.dumps(runtime_env), "--", R.PYTHON,
                     "benchmarks/jobs/sweep_raw.py", str(args.epochs), str(args.trials), str(args.concurrency)],
                    env=env, timeout=3600)
    inner = next((json.loads(line.split("BENCH_RAW ", 1)[1]) for line in jobs.logs(job_id).splitlines()
                  if "BENCH_RAW " in line), {})
    return {"wall_s": wall, "ok": jobs.state(job_id).value == "SUCCEEDED", "tuner_s": inner.get("wall_s")}


def report(record: dict) -> str:
    t = [x["wall_s"] for x in record["trainer"]]
    r = [x["wall_s"] for x in record["raw"]]
    n = record["trials"]
    per_trial = [(a - b) / n for a, b in zip(t, r)]
    return "\n".join([
        f"A sweep of {n} trials, {record['concurrency']} at a time, ASHA (grace 1, factor 2), {record['epochs']} epochs "
        f"of the digits CNN, 1 worker per trial; {len(t)} round(s), alternating (all succeeded: "
        f"{all(x['ok'] for x in record['trainer'] + record['raw'])}):", "",
        R.markdown_table(["command", "median s", "min s", "max s"], [
            ["`trainer submit sweep.yaml --wait`", R.fmt(R.median(t)), R.fmt(min(t)), R.fmt(max(t))],
            ["raw Ray Tune script (`ray job submit`)", R.fmt(R.median(r)), R.fmt(min(r)), R.fmt(max(r))],
            ["overhead per trial", R.fmt(R.median(per_trial)), R.fmt(min(per_trial)), R.fmt(max(per_trial))]]),
        ""])


def plot(record: dict):
    def draw(ax):
        ax.boxplot([[x["wall_s"] for x in record["trainer"]], [x["wall_s"] for x in record["raw"]]],
                   orientation="horizontal")
        ax.set_yticks([1, 2], ["trainer sweep", "raw Ray Tune"])
        ax.set_xlabel(f"seconds per sweep of {record['trials']} trials")
    return draw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.trials, args.epochs = 1, 2, 2
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench-sweep-")) if args.quick else R.RESULTS)
    R.quiet()
    clock = R.Clock()
    work = Path(tempfile.mkdtemp(prefix="bw-", dir="/tmp"))
    os.environ.setdefault("TRAINER_HOME", str(work / "home"))
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    record: dict = {"machine": R.machine(), "rounds": args.rounds, "trials": args.trials, "epochs": args.epochs,
                    "concurrency": args.concurrency, "quick": args.quick, "trainer": [], "raw": []}
    from trainer.scheduling.ray_jobs import RayJobs

    state, _ = warm_cluster()
    env = {**_env(work), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": state.token_file,
           "RAY_ADDRESS_GCS": state.gcs_address}
    jobs = RayJobs(state.dashboard_url)
    try:
        for i in range(args.rounds):
            for kind in (("trainer", "raw") if i % 2 == 0 else ("raw", "trainer")):
                record[kind].append(trainer_sweep(args, env) if kind == "trainer" else raw_sweep(args, env, jobs, work))
    finally:
        if os.environ["TRAINER_HOME"].startswith(str(work)):
            import trainer

            trainer.cluster_down()
    record.update(clock.done())
    return R.publish("sweep", "Sweep overhead per trial vs raw Ray Tune",
                     record, report(record), plot(record), out, args)


if __name__ == "__main__":
    sys.exit(main())
