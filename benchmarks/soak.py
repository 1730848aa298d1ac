"""Soak: many tiny jobs through the real submission path, in sequence and all at once.

Every job is a real trainer job (`trainer.submit`: preflight, an MLflow run, a Ray job whose driver
runs one Ray Train worker that reports one value). Measured in ONE run on one local cluster:

- sequence: N jobs submitted one after another, each waited for: submission latency (the
  `trainer.submit` call), end-to-end time, and every `--sample-every` jobs `trainer list`'s latency
  (`trainer.list_jobs`, which also repairs runs), the head's memory (RSS of its GCS and dashboard
  processes) and this driver's memory. Ray's job API has been reported to slow down after ~400 jobs
  (ray-project/ray#37894): the first and last tenth of the sequence are compared (p50, p99).
- burst: M jobs submitted at the same moment from M threads, waited on together.
- integrity: every submitted job id is listed exactly once by `trainer list`, none is missing,
  every state is final, and every job's MLflow run is closed.

Writes benchmarks/results/soak.{json,md,png} with the machine and versions.

    python -m benchmarks.soak                 # 500 in sequence, 50 at once (hours on 2 cores)
    python -m benchmarks.soak --jobs 60 --burst 20
    python -m benchmarks.soak --quick         # 2 + 2 jobs, a smoke run (the extended test tier)
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks import _record as R

ROOT = R.ROOT


def spec(name: str, cpus: float = 0.25) -> dict:
    return {"name": name, "framework": "torch", "entrypoint": "benchmarks/jobs/fleet.py:tiny", "workers": 1,
            "resources": {"accelerator": "cpu", "cpus_per_worker": cpus}, "failure": {"max_failures": 0},
            "tracking": {"experiment": "soak"}}


def head_memory_mb(state) -> dict:
    """RSS of the local cluster head's GCS and dashboard processes (found by the cluster's temp dir)."""
    import psutil

    needles = [state.temp_dir, str(Path(state.temp_dir).resolve())]
    port = state.gcs_address.rsplit(":", 1)[1]
    out = {"gcs": 0.0, "dashboard": 0.0}
    for p in psutil.process_iter(["name", "cmdline", "memory_info"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if not any(n in cmd for n in needles) and f":{port}" not in cmd:
            continue
        rss = (p.info["memory_info"].rss if p.info["memory_info"] else 0) / 2**20
        if "gcs_server" in (p.info["name"] or ""):
            out["gcs"] += rss
        elif ("dashboard/dashboard.py" in cmd or "ray.dashboard" in cmd) and "agent" not in cmd:
            out["dashboard"] += rss
    return {k: round(v, 1) for k, v in out.items()}


def driver_memory_mb() -> float:
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20, 1)


# ---------------------------------------------------------------- the soak

def run(jobs: int, burst: int, sample_every: int, echo=print) -> dict:
    import trainer

    os.chdir(ROOT)
    state, started = trainer.cluster_up(None)
    try:
        return _soak(trainer, state, jobs, burst, sample_every, echo)
    finally:
        if started:   # a cluster this run started for itself goes with it
            trainer.cluster_down()


def _soak(trainer, state, jobs: int, burst: int, sample_every: int, echo) -> dict:
    from trainer.cluster.local import LocalCluster
    from trainer.tracking.runs import client

    tag = uuid.uuid4().hex[:6]
    result: dict = {"machine": R.machine(), "jobs": jobs, "burst": burst, "sequence": [], "samples": []}
    submitted: list = []

    def sample(i: int) -> None:
        t0 = time.perf_counter()
        listed = trainer.list_jobs()
        result["samples"].append({"after_jobs": i, "list_s": round(time.perf_counter() - t0, 3),
                                  "listed": len(listed), "head_mb": head_memory_mb(LocalCluster().state() or state),
                                  "driver_mb": driver_memory_mb(), "time": time.time()})

    sample(0)
    for i in range(jobs):
        t0 = time.perf_counter()
        job = trainer.submit(spec(f"soak-{tag}-s{i:04d}"))
        submit_s = time.perf_counter() - t0
        final = job.wait(timeout=600)
        submitted.append(job)
        result["sequence"].append({"i": i, "submit_s": round(submit_s, 3),
                                   "end_to_end_s": round(time.perf_counter() - t0, 2), "state": final.value})
        if (i + 1) % sample_every == 0 or i + 1 == jobs:
            sample(i + 1)
            echo(f"sequence {i + 1}/{jobs}: submit {submit_s:.2f}s, list {result['samples'][-1]['list_s']:.2f}s")

    barrier = threading.Barrier(burst) if burst else None
    burst_jobs: list = [None] * burst
    burst_submit: list = [None] * burst

    def submit_one(k: int) -> None:
        barrier.wait()
        t0 = time.perf_counter()
        burst_jobs[k] = trainer.submit(spec(f"soak-{tag}-b{k:04d}"))
        burst_submit[k] = time.perf_counter() - t0

    t_burst = time.perf_counter()
    if burst:
        with ThreadPoolExecutor(max_workers=burst) as pool:
            list(pool.map(submit_one, range(burst)))
        states = [j.wait(timeout=1800).value for j in burst_jobs]
        submitted.extend(burst_jobs)
    else:
        states = []
    result["burst_result"] = {"submit_s": [round(s, 3) for s in burst_submit], "states": states,
                              "wall_s": round(time.perf_counter() - t_burst, 1)}
    sample(jobs + burst)

    # Integrity: each submitted id listed exactly once, every state final, every run closed.
    listed = [j for j in trainer.list_jobs() if (j.get("name") or "").startswith(f"soak-{tag}-")]
    ids = [j["job_id"] for j in listed]
    want = {j.id for j in submitted}
    mlc = client(submitted[0].tracking_uri) if submitted else None
    open_runs = [j.id for j in submitted if mlc.get_run(j.run_id).info.status == "RUNNING"] if mlc else []
    result["integrity"] = {
        "submitted": len(submitted), "unique_ids": len(want), "listed": len(ids),
        "missing": sorted(want - set(ids)), "duplicated": sorted({i for i in ids if ids.count(i) > 1}),
        "not_final": sorted(j["job_id"] for j in listed if j["status"] not in ("SUCCEEDED", "FAILED", "CANCELLED")),
        "not_succeeded": sorted(j["job_id"] for j in listed if j["status"] != "SUCCEEDED"),
        "runs_left_running": open_runs}
    result["summary"] = summarize(result)
    result["machine"]["load_avg_end"] = round(os.getloadavg()[0], 1)
    return result


def summarize(r: dict) -> dict:
    seq = [s["submit_s"] for s in r["sequence"]]
    tenth = max(1, len(seq) // 10)
    first, last = seq[:tenth], seq[-tenth:]
    s0, s1 = r["samples"][0], r["samples"][-1]
    out = {"submit_p50_first_s": R.pct(first, 0.5), "submit_p99_first_s": R.pct(first, 0.99),
           "submit_p50_last_s": R.pct(last, 0.5), "submit_p99_last_s": R.pct(last, 0.99),
           "burst_submit_p50_s": R.pct(r["burst_result"]["submit_s"], 0.5),
           "burst_submit_p99_s": R.pct(r["burst_result"]["submit_s"], 0.99),
           "list_first_s": r["samples"][1]["list_s"] if len(r["samples"]) > 1 else s0["list_s"],
           "list_last_s": s1["list_s"], "head_mb_start": sum(s0["head_mb"].values()),
           "head_mb_end": sum(s1["head_mb"].values()), "driver_mb_start": s0["driver_mb"],
           "driver_mb_end": s1["driver_mb"],
           "end_to_end_p50_s": R.pct([s["end_to_end_s"] for s in r["sequence"]], 0.5)}
    if out["submit_p99_first_s"]:
        out["submit_p99_last_over_first"] = round(out["submit_p99_last_s"] / out["submit_p99_first_s"], 2)
    integ = r["integrity"]
    out["lost_or_duplicated"] = len(integ["missing"]) + len(integ["duplicated"])
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}


def markdown(r: dict) -> str:
    m, s, i = r["machine"], r["summary"], r["integrity"]
    lines = [f"# Soak: {r['jobs']} tiny jobs in sequence, {r['burst']} at once", "",
             f"- date: {m['date']}",
             f"- machine: {m['cpu']}, {m['cores']} logical CPUs, {m['memory_gib']} GiB, {m['os']}; "
             f"1-min load average {m['load_avg_start']} at start, {m.get('load_avg_end')} at the end "
             f"(other work shared the machine)",
             f"- versions: Python {m['python']}, Ray {m['ray']}, MLflow {m['mlflow']}",
             "- job: `trainer.submit` of a torch job with one Ray Train worker (0.25 CPU) that reports one value; "
             "sequence jobs are each waited for before the next; burst jobs are submitted from one thread each "
             "at a barrier", "",
             "| measure | start | end | end/start | target |", "|---|---|---|---|---|"]

    def row(name, a, b, target=""):
        ratio = f"{b / a:.2f}x" if a and b is not None else "-"
        lines.append(f"| {name} | {a} | {b} | {ratio} | {target} |")
    row("submit p50 (s), first vs last tenth", s["submit_p50_first_s"], s["submit_p50_last_s"])
    row("submit p99 (s), first vs last tenth", s["submit_p99_first_s"], s["submit_p99_last_s"], "<= 1.5x")
    row("`trainer list` (s)", s["list_first_s"], s["list_last_s"], "fast")
    row("head RSS, GCS + dashboard (MiB)", round(s["head_mb_start"], 1), round(s["head_mb_end"], 1), "flat")
    row("driver RSS (MiB)", s["driver_mb_start"], s["driver_mb_end"], "flat")
    lines += ["", f"- burst of {r['burst']}: submit p50 {s['burst_submit_p50_s']} s, p99 {s['burst_submit_p99_s']} s, "
              f"all done in {r['burst_result']['wall_s']} s",
              f"- end to end per sequence job: p50 {s['end_to_end_p50_s']} s",
              f"- integrity: {i['submitted']} submitted, {i['unique_ids']} unique ids, {i['listed']} listed; missing "
              f"{len(i['missing'])}, duplicated {len(i['duplicated'])}, not final {len(i['not_final'])}, "
              f"not SUCCEEDED {len(i['not_succeeded'])}, MLflow runs left RUNNING {len(i['runs_left_running'])}"]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.6))
    a.plot([s["i"] for s in r["sequence"]], [s["submit_s"] for s in r["sequence"]], ".", ms=3)
    a.set_title("submission latency (s) per job"), a.set_xlabel("job in sequence")
    xs = [s["after_jobs"] for s in r["samples"]]
    b.plot(xs, [s["list_s"] for s in r["samples"]], "o-")
    b.set_title("`trainer list` latency (s)"), b.set_xlabel("jobs submitted")
    c.plot(xs, [sum(s["head_mb"].values()) for s in r["samples"]], "o-", label="head (GCS + dashboard)")
    c.plot(xs, [s["driver_mb"] for s in r["samples"]], "o-", label="driver (this process)")
    c.set_title("RSS (MiB)"), c.set_xlabel("jobs submitted"), c.legend(fontsize=8)
    m = r["machine"]
    fig.suptitle(f"soak, {m['date']}: {m['cpu']}, {m['cores']} CPUs, load {m['load_avg_start']}; "
                 f"Ray {m['ray']}, MLflow {m['mlflow']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(r: dict, out: Path, name: str) -> list[Path]:
    r["noisy"] = R.noisy(r)
    text = (f"NOISY, not a result: {r['noisy']}\n\n" if r["noisy"] else "") + markdown(r)
    return R.write_files(name, out, r, text, lambda path: plot(r, path))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--burst", type=int, default=50)
    ap.add_argument("--sample-every", type=int, default=0, help="default: jobs/10")
    ap.add_argument("--quick", action="store_true", help="2 in sequence + 2 at once (a smoke run)")
    ap.add_argument("--out", type=Path, default=R.RESULTS)
    args = ap.parse_args(argv)
    import logging

    logging.getLogger("ray").setLevel(logging.ERROR)   # Ray's packaging chatter, once per submit
    if args.quick:
        # The smallest run that takes every path the record is built from: two in sequence (the
        # first and the last tenth are different jobs), a burst of more than one, the integrity
        # checks over both. Each job costs a job start (~20 s; a burst's jobs share the cores):
        # CI pays for no more.
        args.jobs, args.burst = 2, 2
    r = run(args.jobs, args.burst, args.sample_every or max(1, args.jobs // 10))
    paths = write(r, args.out, "soak-quick" if args.quick else "soak")
    print(markdown(r))
    print("wrote", ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
