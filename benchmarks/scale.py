"""Scheduling at scale: many labelled nodes, many jobs asking for mixed accelerators.

A local cluster of `--nodes` worker nodes of 4 accelerator types (fake labels, as the tests use:
`ray.io/accelerator-type=<TYPE>` plus the `accelerator_type:<TYPE>` resource), small CPU each, in
its own $TRAINER_HOME; `--jobs` real trainer jobs, each asking for one of the types round-robin
(2 Ray Train workers of 0.25 CPU that hold for `--hold-s` seconds), all submitted at once. Measured
in ONE run, from Ray's state API polled by this process (about every 0.5 s):

- placement decisions per second: training workers seen ALIVE / (last one seen - first submit);
- submit-to-all-workers-running: first submit until every job's workers were seen ALIVE;
- per job: submit until its workers ran (p50, p99);
- placement: every worker of every job ran on a node of the job's accelerator (the node's label,
  from the state API), never elsewhere.

Writes benchmarks/results/scale.{json,md,png} with the machine and versions.

    python -m benchmarks.scale                       # 16 nodes, 100 jobs
    python -m benchmarks.scale --nodes 8 --jobs 40   # what fits a loaded 2-core machine
    python -m benchmarks.scale --quick               # one job per type of the running cluster (CI)
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks import _record as R

ROOT = R.ROOT

TYPES = ["A100", "T4", "H100", "L4"]


def spec(name: str, accelerator: str, hold_s: float, tracking_uri: str | None) -> dict:
    tracking = {"experiment": "scale"} | ({"uri": tracking_uri} if tracking_uri else {})
    return {"name": name, "framework": "torch", "entrypoint": "benchmarks/jobs/fleet.py:hold", "workers": 2,
            "resources": {"accelerator": accelerator, "cpus_per_worker": 0.25}, "failure": {"max_failures": 0},
            "config": {"hold_s": hold_s}, "tracking": tracking}


def run(nodes: int | None, jobs: int, hold_s: float, cpus_per_node: int, echo=print) -> dict:
    import trainer
    from ray.util.state import list_actors, list_nodes

    from trainer.tracking import server

    os.chdir(ROOT)
    tracking_uri = None
    if nodes:
        specs = [f"{TYPES[i % len(TYPES)]}:{cpus_per_node}" for i in range(nodes)]
        t0 = time.perf_counter()
        state, started = trainer.cluster_up(specs, progress=echo)
        start_s = time.perf_counter() - t0
        # A cluster's setting: every job records through one tracking server. On the embedded
        # SQLite file, 16 submits at once beside 11 running jobs (load ~60) timed out waiting for
        # MLflow's connection pool: every process's writes queued on the file's one writer.
        tracking_uri = server.serve(port=0)[0].url
    else:   # --quick: the running cluster (the CI session's), its labelled types
        state, started = trainer.cluster_up(None)
        start_s = None
    try:
        return _scale(trainer, list_actors, list_nodes, state, start_s, jobs, hold_s, tracking_uri)
    finally:
        if tracking_uri:
            server.stop()
        if started:   # a cluster this run started for itself goes with it
            trainer.cluster_down()


def _scale(trainer, list_actors, list_nodes, state, start_s, jobs: int, hold_s: float,
           tracking_uri: str | None) -> dict:
    address = state.dashboard_url
    inventory = list_nodes(address=address, detail=True, limit=10000, raise_on_missing_output=False)
    label = {n.node_id: (n.labels or {}).get("ray.io/accelerator-type") for n in inventory if n.state == "ALIVE"}
    types = sorted({t for n, t in label.items() if t and t != "cpu"}) or ["cpu"]
    jobs = jobs or len(types)   # 0 (--quick): one job per type
    result = {"machine": R.machine(), "nodes": [str(s) for s in state.node_specs], "node_count": len(state.node_specs),
              "jobs": jobs, "hold_s": hold_s, "cluster_start_s": round(start_s, 1) if start_s else None,
              "types": types, "tracking": "a tracking server over HTTP" if tracking_uri else "the embedded SQLite store"}

    tag = uuid.uuid4().hex[:6]
    wanted = [types[i % len(types)] for i in range(jobs)]
    submitted: dict[str, dict] = {}
    t_first = time.time()

    def submit(i: int) -> None:
        t = time.time()
        job = trainer.submit(spec(f"scale-{tag}-{i:03d}", wanted[i], hold_s, tracking_uri))
        submitted[job.id] = {"i": i, "accelerator": wanted[i], "submitted_at": t, "accepted_at": time.time(),
                             "job": job, "ray_id": None, "running_at": None, "workers": {}}

    with ThreadPoolExecutor(max_workers=min(16, jobs)) as pool:
        futures = [pool.submit(submit, i) for i in range(jobs)]
        seen_alive: dict[str, float] = {}
        while not all(f.done() for f in futures) or any(j["running_at"] is None for j in submitted.values()):
            _poll(list_actors, address, submitted, seen_alive)
            if time.time() - t_first > 1800:
                break
            time.sleep(0.5)
        for f in futures:
            f.result()
    states = {jid: j["job"].wait(timeout=900).value for jid, j in submitted.items()}
    _poll(list_actors, address, submitted, seen_alive)

    misplaced = []
    for jid, j in submitted.items():
        for node in j["workers"].values():
            if label.get(node) != j["accelerator"]:
                misplaced.append({"job": jid, "wants": j["accelerator"], "ran_on": label.get(node)})
    waits = [j["running_at"] - j["submitted_at"] for j in submitted.values() if j["running_at"]]
    last_seen = max(seen_alive.values()) if seen_alive else None
    result["per_job"] = [{"job": jid, "accelerator": j["accelerator"],
                          "submit_s": round(j["accepted_at"] - j["submitted_at"], 2),
                          "to_running_s": round(j["running_at"] - j["submitted_at"], 2) if j["running_at"] else None,
                          "workers": len(j["workers"]), "state": states[jid]} for jid, j in submitted.items()]
    result["summary"] = {
        "workers_placed": len(seen_alive),
        "placements_per_s": round(len(seen_alive) / (last_seen - t_first), 2) if last_seen else None,
        "submit_to_all_running_s": round(last_seen - t_first, 1) if last_seen else None,
        "to_running_p50_s": R.pct(waits, 0.5), "to_running_p99_s": R.pct(waits, 0.99),
        "submit_p50_s": R.pct([p["submit_s"] for p in result["per_job"]], 0.5),
        "jobs_never_running": sum(1 for j in submitted.values() if j["running_at"] is None),
        "misplaced_workers": len(misplaced), "not_succeeded": sum(1 for s in states.values() if s != "SUCCEEDED")}
    result["misplaced"] = misplaced
    result["machine"]["load_avg_end"] = round(os.getloadavg()[0], 1)
    return result


def _poll(list_actors, address: str, submitted: dict, seen_alive: dict) -> None:
    """Record each job's Ray Train workers seen ALIVE (and where), from Ray's state API."""
    now = time.time()
    by_ray_id = {}
    for jid, j in list(submitted.items()):
        if j["ray_id"] is None:
            try:
                j["ray_id"] = j["job"]._jobs().info(jid).job_id
            except Exception:  # noqa: BLE001 - the driver has not started yet
                continue
        if j["ray_id"]:
            by_ray_id[j["ray_id"]] = j
    actors = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker")], detail=True,
                         limit=10000, raise_on_missing_output=False)
    for a in actors:
        j = by_ray_id.get(a.job_id)
        if j is None:
            continue
        j["workers"][a.actor_id] = a.node_id
        if a.state == "ALIVE" and a.actor_id not in seen_alive:
            seen_alive[a.actor_id] = now
        alive = sum(1 for w in j["workers"] if w in seen_alive)
        if j["running_at"] is None and alive >= 2:
            j["running_at"] = now


def markdown(r: dict) -> str:
    m, s = r["machine"], r["summary"]
    lines = [f"# Scheduling at scale: {r['node_count']} labelled nodes, {r['jobs']} jobs", "",
             f"- date: {m['date']}",
             f"- machine: {m['cpu']}, {m['cores']} logical CPUs, {m['memory_gib']} GiB, {m['os']}; "
             f"1-min load average {(r.get('load_before') or [m['load_avg_start']])[0]} when the run began, "
             f"{m['load_avg_start']} once its cluster was up, {m.get('load_avg_end')} at the end (the run's own "
             f"nodes and jobs)",
             f"- versions: Python {m['python']}, Ray {m['ray']}, MLflow {m['mlflow']}",
             f"- cluster: CPU-only head + {r['node_count']} worker nodes ({', '.join(r['nodes'])})"
             + (f", started in {r['cluster_start_s']} s" if r.get("cluster_start_s") else ""),
             f"- jobs: {r['jobs']} `trainer.submit` calls from 16 threads at once, accelerators round-robin over "
             f"{', '.join(r['types'])}; each 2 Ray Train workers of 0.25 CPU holding {r['hold_s']} s; MLflow: "
             f"{r.get('tracking', 'the embedded SQLite store')}", "",
             "| measure | value |", "|---|---|",
             f"| training workers placed | {s['workers_placed']} |",
             f"| placement decisions / s (workers seen ALIVE / time since first submit) | {s['placements_per_s']} |",
             f"| submit to all workers running (s) | {s['submit_to_all_running_s']} |",
             f"| per job, submit to its workers running: p50 / p99 (s) | {_r(s['to_running_p50_s'])} / "
             f"{_r(s['to_running_p99_s'])} |",
             f"| per job, the submit call: p50 (s) | {_r(s['submit_p50_s'])} |",
             f"| workers on a node of another accelerator | {s['misplaced_workers']} |",
             f"| jobs whose workers were never seen running / not SUCCEEDED | {s['jobs_never_running']} / "
             f"{s['not_succeeded']} |"]
    return "\n".join(lines) + "\n"


def _r(v):
    return None if v is None else round(v, 2)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    by_type: dict[str, list] = {}
    for p in r["per_job"]:
        by_type.setdefault(p["accelerator"], []).append(p["to_running_s"] or float("nan"))
    a.boxplot(list(by_type.values()), tick_labels=list(by_type))
    a.set_title("submit to workers running (s), by accelerator")
    ts = sorted(p["to_running_s"] for p in r["per_job"] if p["to_running_s"] is not None)
    b.step(ts, range(1, len(ts) + 1), where="post")
    b.set_title("jobs with all workers running"), b.set_xlabel("s since first submit")
    m = r["machine"]
    fig.suptitle(f"scale, {m['date']}: {r['node_count']} nodes, {r['jobs']} jobs; {m['cpu']}, {m['cores']} "
                 f"CPUs, load {m['load_avg_start']}; Ray {m['ray']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(r: dict, out: Path, name: str) -> list[Path]:
    r["noisy"] = R.noisy(r)
    text = (f"NOISY, not a result: {r['noisy']}\n\n" if r["noisy"] else "") + markdown(r)
    return R.write_files(name, out, r, text, lambda path: plot(r, path))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--hold-s", type=float, default=5.0)
    ap.add_argument("--cpus-per-node", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="one job per type of the running (or default) cluster (CI)")
    ap.add_argument("--out", type=Path, default=R.RESULTS)
    args = ap.parse_args(argv)
    import logging

    logging.getLogger("ray").setLevel(logging.ERROR)   # Ray's packaging chatter, once per submit
    own_home = None
    if args.quick:
        # One job per labelled type of the running cluster (the CI session's A100 and T4) is
        # what the placement check needs; more jobs only repeat it.
        args.nodes, args.jobs, args.hold_s = 0, 0, 2.0
    elif "TRAINER_HOME" not in os.environ:   # its own cluster, never the user's
        own_home = tempfile.mkdtemp(prefix="trs-", dir="/tmp")
        os.environ["TRAINER_HOME"] = own_home
    # Ray's state API takes the local cluster's token the way users give it (README: the door).
    from trainer.cluster.auth import token_path

    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_AUTH_TOKEN_PATH", str(token_path()))
    before = [round(x, 2) for x in os.getloadavg()]   # before this run's own nodes start: was the machine quiet?
    try:
        r = run(args.nodes or None, args.jobs, args.hold_s, args.cpus_per_node)
        r["load_before"] = before
    finally:
        if own_home:
            import shutil

            shutil.rmtree(own_home, ignore_errors=True)
    paths = write(r, args.out, "scale-quick" if args.quick else "scale")
    print(markdown(r))
    print("wrote", ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
