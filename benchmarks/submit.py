"""Benchmark: what submitting a job costs - latency on a warm cluster, and a cold start.

Latency: `trainer submit benchmarks/jobs/noop.yaml --wait` (a job whose function does nothing,
one worker) against raw `ray job submit` of the same entrypoint (`python -m trainer.runners.job`,
the same runtime env and spec, its MLflow run made beforehand, outside the timing), alternating,
on one warm local cluster: p50 / p95 of each command's wall time and their ratios. What trainer
adds is its client's work: spec and data checks, the placement preflight, making the MLflow run,
and noticing the end.

Cold start: a fresh $TRAINER_HOME with no cluster -> `trainer submit noop.yaml --wait` done (the
local cluster is started by the submit), then `trainer cluster down` (not timed).

    flock /tmp/bench.lock python -m benchmarks.submit [--jobs 30] [--cold 1] [--quick] [--out DIR]

--quick: one job each, no cold start, results in a temp folder, README untouched (a smoke run).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import _record as R
from benchmarks.runner import TRAINER, _env, warm_cluster
from trainer.cluster.local import start_timeline

SPEC = "benchmarks/jobs/noop.yaml"
COLD_TARGET_S = 20.0      # issue 28: no cluster -> a no-op job done


def latency_part(args, work: Path) -> dict:
    from trainer.protocol import DRIVER_MODULE, UPLOAD_EXCLUDES, job_runtime_env
    from trainer.scheduling.ray_jobs import RayJobs
    from trainer.spec import load_spec
    from trainer.tracking import runs

    state, started = warm_cluster()
    env = {**_env(work), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": state.token_file}
    jobs = RayJobs(state.dashboard_url)
    spec, _ = load_spec(R.ROOT / SPEC)
    uri = runs.tracking_uri(spec)
    out = {"trainer": [], "raw": [], "cluster_started_now": started}
    for i in range(args.jobs):
        for kind in (("trainer", "raw") if i % 2 == 0 else ("raw", "trainer")):
            if kind == "trainer":
                wall, proc = R.run(TRAINER + ["submit", SPEC, "--wait", "--output", "json"], env=env)
                ok = json.loads(proc.stdout)["status"] == "SUCCEEDED"
            else:
                job_id = f"bench-noop-raw-{int(time.time() * 1000)}"
                run_id = runs.start_run(spec, job_id, uri, state.dashboard_url, None)
                # The runtime env trainer.api.submit builds (trainer.protocol), given to `ray job submit`.
                runtime_env = job_runtime_env(spec.model_dump_json(), job_id=job_id, tracking_uri=uri, run_id=run_id,
                                              excludes=UPLOAD_EXCLUDES, python=R.PYTHON,
                                              extra_env={"TRAINER_HOME": env["TRAINER_HOME"]})
                wall, _ = R.run([str(Path(R.PYTHON).parent / "ray"), "job", "submit", "--address", jobs.address,
                                 "--submission-id", job_id, "--working-dir", ".",
                                 "--runtime-env-json", json.dumps(runtime_env), "--", R.PYTHON, "-m",
                                 DRIVER_MODULE], env=env)
                ok = jobs.state(job_id).value == "SUCCEEDED"
            out[kind].append({"wall_s": wall, "ok": ok})
    return out


def cold_part(args) -> list[dict]:
    out = []
    for _ in range(args.cold):
        home = Path(tempfile.mkdtemp(prefix="bc-", dir="/tmp"))   # short: Ray's socket paths
        env = {**_env(home), "TRAINER_HOME": str(home)}
        for key in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN", "RAY_ADDRESS", "TRAINER_ADDRESS"):
            env.pop(key, None)
        try:
            t0 = time.time()
            wall, proc = R.run(TRAINER + ["submit", SPEC, "--wait", "--output", "json"], env=env)
            out.append({"wall_s": wall, "status": json.loads(proc.stdout)["status"],
                        "job_s": json.loads(proc.stdout).get("wall_time_s"),
                        **cold_parts(t0, wall, start_timeline(home / "cluster" / "logs"))})
        finally:
            R.run(TRAINER + ["cluster", "down"], env=env)
    return out


def cold_parts(t0: float, wall: float, timeline: dict[str, tuple[float, float]]) -> dict:
    """A cold start itemised from the nodes' `ray start` logs: the client before the first
    `ray start`, each node's `ray start` (launched -> done, seconds from the submit's start), the
    cluster from the first launch to the last done, and what follows (the cluster found up,
    then the job, to its end noticed)."""
    if not timeline:
        return {}
    first = min(t for t, _ in timeline.values())
    last = max(t for _, t in timeline.values())
    return {"before_cluster_s": round(first - t0, 1), "cluster_s": round(last - first, 1),
            "after_cluster_s": round(t0 + wall - last, 1),
            "ray_starts": {name: [round(a - t0, 1), round(b - t0, 1)] for name, (a, b) in timeline.items()}}


def report(record: dict) -> str:
    lines = []
    lat = record.get("latency")
    if lat:
        t = [x["wall_s"] for x in lat["trainer"]]
        r = [x["wall_s"] for x in lat["raw"]]
        p50 = (R.pct(t, 0.5), R.pct(r, 0.5))
        p95 = (R.pct(t, 0.95), R.pct(r, 0.95))
        lines += [f"Submission latency, a no-op job (1 worker) on a warm local cluster, {len(t)} jobs each, "
                  f"alternating (all succeeded: {all(x['ok'] for x in lat['trainer'] + lat['raw'])}):", "",
                  R.markdown_table(["command", "p50 s", "p95 s", "min s", "max s"], [
                      ["`trainer submit --wait`", R.fmt(p50[0]), R.fmt(p95[0]), R.fmt(min(t)), R.fmt(max(t))],
                      ["raw `ray job submit` (same entrypoint)", R.fmt(p50[1]), R.fmt(p95[1]), R.fmt(min(r)),
                       R.fmt(max(r))],
                      ["ratio", f"{p50[0] / p50[1]:.2f}x", f"{p95[0] / p95[1]:.2f}x", "", ""]]), ""]
    cold = record.get("cold")
    if cold:
        lines += ["Cold start (fresh $TRAINER_HOME, no cluster -> no-op job done, the submit starts the "
                  "local cluster): " + ", ".join(f"{R.fmt(c['wall_s'])} s ({c['status']})" for c in cold)
                  + f". {'Over' if max(c['wall_s'] for c in cold) > COLD_TARGET_S else 'Within'} the {COLD_TARGET_S:g} s target; its parts "
                  "are the cluster's start "
                  "(a head and one worker node, one `ray start` each; the worker's starts once the head's GCS "
                  "answers) and one no-op job. Itemised from the nodes' start logs (seconds from the submit's "
                  "start; `ray start` launched -> done):", ""]
        rows = [[str(i + 1), R.fmt(c["before_cluster_s"]),
                 ", ".join(f"{n} {a:g}-{b:g}" for n, (a, b) in c["ray_starts"].items()),
                 R.fmt(c["cluster_s"]), R.fmt(c["after_cluster_s"]), R.fmt(c["wall_s"])]
                for i, c in enumerate(cold) if c.get("ray_starts")]
        if rows:
            lines += [R.markdown_table(["run", "client s", "ray starts", "cluster s", "job s", "total s"], rows), ""]
    return "\n".join(lines)


def plot(record: dict):
    def draw(ax):
        lat = record.get("latency")
        if not lat:
            ax.text(0.5, 0.5, "no latency part", ha="center")
            return
        data = [[x["wall_s"] for x in lat["trainer"]], [x["wall_s"] for x in lat["raw"]]]
        ax.boxplot(data, orientation="horizontal")
        ax.set_yticks([1, 2], ["trainer submit --wait", "ray job submit"])
        for c in record.get("cold") or []:
            ax.axvline(c["wall_s"], color="tab:red", ls="--", lw=1)
        ax.set_xlabel("seconds per no-op job (red dashed: cold start)")
    return draw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=30)
    ap.add_argument("--cold", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.quick:
        args.jobs, args.cold = 1, 0
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench-submit-")) if args.quick else R.RESULTS)
    R.quiet()
    clock = R.Clock()
    work = Path(tempfile.mkdtemp(prefix="bs-", dir="/tmp"))
    os.environ.setdefault("TRAINER_HOME", str(work / "home"))
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    record: dict = {"machine": R.machine(), "jobs": args.jobs, "quick": args.quick}
    try:
        if args.jobs:
            record["latency"] = latency_part(args, work)
    finally:
        if os.environ["TRAINER_HOME"].startswith(str(work)):
            import trainer

            trainer.cluster_down()
    if args.cold:
        record["cold"] = cold_part(args)
    record.update(clock.done())
    return R.publish("submit", "Submission latency and cold start",
                     record, report(record), plot(record), out, args)


if __name__ == "__main__":
    sys.exit(main())
