"""Benchmark: where a training job's time goes, trainer against the raw baselines, in one run.

One process, no Ray: the plain digits loop (benchmarks/jobs/digits_loop.py `plain`) against
`trainer run --local` of the same loop (benchmarks/jobs/digits.yaml, with its ONNX + int8
conversion), the latter split into start, training, model logging, conversion and close; and the
steady-state step rate of a raw loop against the same loop calling `ctx.report` every step.

On one warm local cluster (2 workers on a `cpu` node, 12 epochs, a checkpoint every epoch, no
conversion), interleaved: the raw Ray Train script (benchmarks/jobs/raw_ray_train.py, `ray job
submit`) with Ray's default controller poll (2 s), the same script with the poll trainer sets
(RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, trainer.runners.base), and `trainer submit --wait`. For each:
end to end (the submitting command's wall time), the training loop, the stall a checkpoint adds
to a step (how long the checkpoint call blocked the loop), accuracy, and the fixed costs:
submit -> entrypoint, driver connect, worker-group start, first step, model logging, conversion,
run close, driver exit and the client's notice.

    flock /tmp/bench.lock python -m benchmarks.runner [--repeats 2] [--quick] [--out DIR]

--quick: 2 epochs, one repeat, a short step-rate check, results in a temp folder unless --out is
given and README untouched: a smoke run (tests/benchmarks), not a measurement.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import _record as R

SPEC = "benchmarks/jobs/digits.yaml"
RAW = "benchmarks/jobs/raw_ray_train.py"
TRAINER = [R.PYTHON, "-m", "trainer.cli"]
TITLE = "Runner: trainer vs raw PyTorch and raw Ray Train"


def data_path() -> str:
    import sklearn

    return str(Path(sklearn.__file__).parent / "datasets" / "data" / "digits.csv.gz")


# ----------------------------------------------------------------------------- in-process
def local_part(args, work: Path) -> dict:
    """The plain loop vs `trainer run --local` (subprocesses, interleaved)."""
    out = {"plain": [], "trainer_local": []}
    for i in range(args.repeats):
        bench = work / f"plain-{i}.jsonl"
        code = ("import sys; from benchmarks.jobs import digits_loop as d; d.OUT = sys.argv[1]; "
                f"d.plain({{'epochs': {args.epochs}, 'lr': 0.05, 'batch_size': 32, 'width': 16, 'seed': 0}}, "
                f"{data_path()!r}, sys.argv[2])")
        (work / f"plain-ckpt-{i}").mkdir()
        wall, _ = R.run([R.PYTHON, "-c", code, str(bench), str(work / f"plain-ckpt-{i}")])
        recs = R.records(bench)
        out["plain"].append({"wall_s": wall, **_loop_summary(recs)})

        bench = work / f"local-{i}.jsonl"
        t0 = time.time()
        quick = ["--set", "convert=null"] if args.quick else []   # the smoke run skips the conversion
        wall, _ = R.run(TRAINER + ["run", SPEC, "--local", "--set", f"config.epochs={args.epochs}",
                                   "--set", f"config.bench_file={bench}", *quick], env=_env(work))
        recs = R.records(bench)
        first = next(r["first_line"] for r in recs if "first_line" in r)
        summary = _loop_summary(recs)
        last_epoch_end = max(r["end"] for r in recs if "epoch" in r)
        save = next((r["save_model_s"] for r in recs if "save_model_s" in r and r.get("rank", 0) == 0), None)
        out["trainer_local"].append({
            "wall_s": wall, **summary,
            # start: the CLI's imports, spec checks, the MLflow run, the context; the rest after
            # the function returned: conversion with parity, closing the run, the summary.
            "start_s": first - t0, "train_s": last_epoch_end - first, "save_model_s": save,
            "after_s": t0 + wall - (last_epoch_end + (save or 0))})
    return out


def throughput_part(args, work: Path) -> dict:
    """Steady-state step rate in this process: the raw loop vs the same loop with `ctx.report`
    every step (MLflow run on, metrics channel as in a job), interleaved rounds. The ratio is the
    median of each round's (with ctx.report / the raw loop just before it): paired rounds cancel
    the host's drift, which at a few % was wider than the gap with 4 rounds of medians."""
    import torch
    from torch import nn

    from benchmarks.jobs import digits_loop as d
    from trainer.context import LocalSession
    from trainer.runners.torch import TorchContext
    from trainer.spec import load_spec
    from trainer.tracking import runs

    torch.set_num_threads(1)
    spec, _ = load_spec(R.ROOT / SPEC)
    uri = runs.tracking_uri(spec)
    run_id = runs.start_run(spec, "bench-throughput", uri, "local", None)
    ctx = TorchContext(spec, LocalSession(work / "tp-ckpt", 1), run_id=run_id, tracking_uri=uri)
    loader, _, _ = d._data(data_path(), 32)
    batches = list(loader)
    model = d.DigitsCNN(16)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    steps = 200 if args.quick else 1500
    step_no = [0]

    def loop(report: bool) -> float:
        t0 = time.perf_counter()
        for i in range(steps):
            xb, yb = batches[i % len(batches)]
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            if report:
                ctx.report({"step": step_no[0], "loss": loss})
                step_no[0] += 1
            else:
                loss.item()
        return steps / (time.perf_counter() - t0)

    with contextlib.redirect_stdout(io.StringIO()):   # rank 0's progress lines
        loop(False)  # warm-up, both paths (the channel's sender thread imports MLflow on its first use)
        loop(True)
        raw, with_ctx = [], []
        for _ in range(1 if args.quick else 12):
            raw.append(loop(False))
            with_ctx.append(loop(True))
        ctx.close()
    got = len(runs.client(uri).get_metric_history(run_id, "loss"))
    runs.finish_run(uri, run_id, "FINISHED")     # no run left RUNNING
    return {"steps_per_round": steps, "raw_steps_s": raw, "ctx_steps_s": with_ctx,
            "ratio": R.median(c / r for c, r in zip(with_ctx, raw)), "mlflow_points": got, "reported": step_no[0]}


# ----------------------------------------------------------------------------- cluster
def cluster_part(args, work: Path) -> dict:
    import trainer
    from trainer.runners.base import RAY_TRAIN_ENV
    from trainer.scheduling.ray_jobs import RayJobs

    poll_env = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
    state, started = warm_cluster()
    env = {**_env(work), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": state.token_file}
    jobs = RayJobs(state.dashboard_url)
    variants = [("raw Ray Train, default poll (2 s)", "raw", "2.0"),
                (f"raw Ray Train, poll {RAY_TRAIN_ENV[poll_env]} s", "raw", RAY_TRAIN_ENV[poll_env]),
                ("trainer submit --wait", "trainer", None)]
    if args.quick:   # one raw variant is enough to exercise the code
        variants = variants[1:]
    else:            # warm: the first job on a fresh cluster also pays Ray's first-time setup
        _trainer_job(args, work, env, jobs, "warmup", epochs=1)
    out = {name: [] for name, _, _ in variants}
    for i in range(args.repeats):
        order = variants[i % len(variants):] + variants[:i % len(variants)]
        for name, kind, poll in order:
            tag = f"{kind}-{poll or 'trainer'}-{i}"
            if kind == "raw":
                out[name].append(_raw_job(args, work, env, jobs, tag, poll))
            else:
                out[name].append(_trainer_job(args, work, env, jobs, tag))
    return {"cluster_started_now": started, "variants": out}


def warm_cluster():
    """The running local cluster of $TRAINER_HOME (a test session's, yours), else a new one with
    a 2-CPU `cpu` node. Returns (state, started_now)."""
    import trainer
    from trainer.cluster.local import LocalCluster

    running = LocalCluster().state()
    if running is not None:
        return running, False
    return trainer.cluster_up(["cpu:2"])


def _raw_job(args, work: Path, env: dict, jobs, tag: str, poll: str) -> dict:
    bench = work / f"{tag}.jsonl"
    sid = f"bench-{tag}-{int(time.time())}"
    runtime_env = {"excludes": [".git", ".venv", "benchmarks/results"],
                   "env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": poll, "PYTHONUNBUFFERED": "1"}}
    t0 = time.time()
    wall, _ = R.run([str(Path(R.PYTHON).parent / "ray"), "job", "submit", "--address", jobs.address,
                     "--submission-id", sid, "--working-dir", ".", "--runtime-env-json", json.dumps(runtime_env),
                     "--", R.PYTHON, RAW, data_path(), str(work / "raw-storage"), str(args.epochs), str(bench)],
                    env=env)
    info = jobs.info(sid)
    recs = R.records(bench)
    driver = {k: v for r in recs for k, v in r.items() if k in ("entrypoint", "connected", "fit_done")}
    return _job_summary(t0, wall, info, recs, driver)


def _trainer_job(args, work: Path, env: dict, jobs, tag: str, epochs: int | None = None) -> dict:
    bench = work / f"{tag}.jsonl"
    t0 = time.time()
    wall, proc = R.run(TRAINER + ["submit", SPEC, "--wait", "--output", "json", "--set", "convert=null",
                                  "--set", f"config.epochs={epochs or args.epochs}",
                                  "--set", f"config.bench_file={bench}"], env=env)
    summary = json.loads(proc.stdout)
    info = jobs.info(summary["job_id"])
    from trainer.protocol import timing_from_logs

    driver = timing_from_logs(jobs.logs(summary["job_id"]))
    return _job_summary(t0, wall, info, R.records(bench), driver)


def _loop_summary(recs: list[dict]) -> dict:
    epochs = [r for r in recs if "epoch" in r]
    later = [r for r in epochs if r["epoch"] > 0]   # epoch 0's first report also registers the run
    loop = [r["loop_s"] for r in recs if "loop_s" in r and r.get("rank", 0) == 0]
    acc = [r["accuracy"] for r in recs if "loop_s" in r and r.get("rank", 0) == 0]
    return {"loop_s": loop[0] if loop else None, "accuracy": acc[0] if acc else None,
            "stall_ms_median": R.median(r["checkpoint_s"] * 1e3 for r in later),
            "stall_ms_max": max((r["checkpoint_s"] * 1e3 for r in later), default=None),
            "epoch_train_s_median": R.median(r["train_s"] for r in epochs)}


def _job_summary(t0: float, wall: float, info, recs: list[dict], driver: dict) -> dict:
    """Phases from the submitting command's start to its end (absolute times on this host)."""
    first = min((r["first_line"] for r in recs if "first_line" in r), default=None)
    epochs = sorted((r for r in recs if "epoch" in r and r.get("rank", 0) == 0), key=lambda r: r["epoch"])
    save = next((r["save_model_s"] for r in recs if "save_model_s" in r and r.get("rank", 0) == 0), None)
    accepted = info.start_time / 1000 if info.start_time else None
    ended = info.end_time / 1000 if info.end_time else None
    s = _loop_summary(recs)
    steady = s["epoch_train_s_median"] or 0
    phases = {
        "submit -> entrypoint": _d(t0, driver.get("entrypoint")),
        "  of which: job accepted by Ray": _d(t0, accepted),
        "driver connect (imports, ray.init)": _d(driver.get("entrypoint"), driver.get("connected")),
        "worker-group start": _d(driver.get("connected"), first),
        "first step (setup + epoch 0 over a steady one)": (_d(first, epochs[0]["end"]) - steady) if epochs and first else None,
        "training (epochs after the first)": _d(epochs[0]["end"], epochs[-1]["end"]) if epochs else None,
        "model logging": save,
        "fit returns (workers end, controller notices)": _d((epochs[-1]["end"] + (save or 0)) if epochs else None,
                                                            driver.get("fit_done")),
        "conversion": _d(driver.get("fit_done"), driver.get("converted")),
        "run close": _d(driver.get("converted"), driver.get("closed")),
        "driver exit": _d(driver.get("closed") or driver.get("fit_done"), ended),
        "client notices the end": _d(ended, t0 + wall),
    }
    return {"wall_s": wall, **s, "phases": phases, "ray_job_s": _d(accepted, ended)}


def _d(a, b):
    return None if a is None or b is None else b - a


def _env(work: Path) -> dict:
    env = dict(os.environ)
    env.setdefault("TRAINER_HOME", str(work / "home"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(R.ROOT), env.get("PYTHONPATH")]))
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


# ----------------------------------------------------------------------------- report
def report(record: dict) -> str:
    lines = []
    loc = record.get("local")
    if loc:
        p, t = loc["plain"], loc["trainer_local"]
        lines += ["One process, no Ray (digits CNN, 1 process, a checkpoint per epoch; medians of "
                  f"{len(p)} runs; `trainer run --local` includes ONNX + int8 conversion with parity):", "",
                  R.markdown_table(["path", "process s", "training loop s", "accuracy"], [
                      ["plain PyTorch loop", R.fmt(R.median(x["wall_s"] for x in p)),
                       R.fmt(R.median(x["loop_s"] for x in p), 2), R.fmt(R.median(x["accuracy"] for x in p), 4)],
                      ["`trainer run --local`", R.fmt(R.median(x["wall_s"] for x in t)),
                       R.fmt(R.median(x["loop_s"] for x in t), 2), R.fmt(R.median(x["accuracy"] for x in t), 4)]]),
                  "", "`trainer run --local`, where its time goes (medians): "
                  + ", ".join(f"{k} {R.fmt(R.median(x[k] for x in t))} s" for k in
                              ("start_s", "train_s", "save_model_s", "after_s"))
                  + " (start: CLI imports, spec and data checks, the MLflow run; after: conversion, "
                  "parity, run close).", ""]
    tp = record.get("throughput")
    if tp:
        pairs = [c / r for c, r in zip(tp["ctx_steps_s"], tp["raw_steps_s"])]
        lines += [f"Steady-state step rate in one process (digits CNN, batch 32, 1 thread, "
                  f"{tp['steps_per_round']} steps a round, interleaved): raw "
                  f"{R.fmt(R.median(tp['raw_steps_s']), 0)} steps/s, `ctx.report` every step "
                  f"{R.fmt(R.median(tp['ctx_steps_s']), 0)} steps/s: **{tp['ratio']:.3f} of raw** "
                  f"(median of {len(pairs)} paired rounds, each {min(pairs):.3f}-{max(pairs):.3f}; "
                  f"{tp['mlflow_points']} of {tp['reported']} values in MLflow).", ""]
    cl = record.get("cluster")
    if cl:
        v = cl["variants"]
        names = list(v)
        base = R.median(x["wall_s"] for x in v[names[0]])
        rows = []
        for name in names:
            xs = v[name]
            wall = R.median(x["wall_s"] for x in xs)
            rows.append([name, R.fmt(wall), f"{wall / base:.2f}" if wall and base else "-",
                         R.fmt(R.median(x["loop_s"] for x in xs), 2),
                         R.fmt(R.median(x["stall_ms_median"] for x in xs), 0) + " / "
                         + R.fmt(max((x["stall_ms_max"] or 0) for x in xs), 0),
                         R.fmt(R.median(x["accuracy"] for x in xs), 4)])
        per_worker = {n: R.median(x["epoch_train_s_median"] for x in v[n]) for n in names}
        raw_tuned = next((n for n in names if n.startswith("raw") and "default" not in n), names[0])
        ours = names[-1]
        lines += [f"Warm local cluster (2 workers on one `cpu` node, {record['epochs']} epochs, a checkpoint "
                  f"every epoch, no conversion; medians of {len(v[names[0]])} interleaved runs):", "",
                  R.markdown_table(["path", "end to end s", "vs first row", "loop s",
                                    "stall ms med / max", "accuracy"], rows), "",
                  f"Stall: how long the checkpoint call blocked the training loop (epochs after the first, both "
                  f"ranks). Per-worker step rate, an epoch's optimizer steps: raw {R.fmt(per_worker[raw_tuned], 3)} s, "
                  f"trainer {R.fmt(per_worker[ours], 3)} s: "
                  f"**{per_worker[raw_tuned] / per_worker[ours]:.3f} of raw**." if per_worker[ours] and per_worker[raw_tuned] else "",
                  "",
                  "Fixed costs, seconds (medians; `-`: the path has no such phase or does not report it):", ""]
        phases = list(v[names[0]][0]["phases"])
        short = ["raw, 2 s poll" if "default" in n else "raw, tuned poll" if n.startswith("raw") else "trainer"
                 for n in names]
        prow = [[ph] + [R.fmt(R.median(x["phases"][ph] for x in v[n])) for n in names] for ph in phases]
        lines += [R.markdown_table(["phase"] + short, prow), ""]
    return "\n".join(lines)


def plot(record: dict):
    def draw(ax):
        cl = record.get("cluster")
        if not cl:
            ax.text(0.5, 0.5, "no cluster part", ha="center")
            return
        v = cl["variants"]
        names = list(v)
        phases = list(v[names[0]][0]["phases"])
        phases = [p for p in phases if not p.startswith("  ")]
        left = [0.0] * len(names)
        cmap = __import__("matplotlib").colormaps["tab20"]
        for j, ph in enumerate(phases):
            widths = [R.median(x["phases"][ph] for x in v[n]) or 0 for n in names]
            ax.barh(range(len(names)), widths, left=left, color=cmap(j), label=ph)
            left = [a + b for a, b in zip(left, widths)]
        ax.set_yticks(range(len(names)), [n.replace("Ray Train, ", "Ray Train\n") for n in names], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("seconds (median), submit to the client's notice of the end")
        ax.set_xlim(0, max(left) * 1.45)   # room on the right for the legend
        ax.legend(fontsize=6, loc="center right")
    return draw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--parts", default="local,throughput,cluster")
    ap.add_argument("--render", type=Path, help="only rewrite the table, PNG and README from this JSON record")
    args = ap.parse_args(argv)
    if args.render:
        record = json.loads(args.render.read_text())
        R.write("runner", TITLE, record, report(record), plot(record), args.render.parent, record["quick"],
                readme=not record["quick"])
        print(report(record))
        return 0
    if args.quick:
        args.repeats, args.epochs = 1, 2
    R.quiet()
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench-runner-")) if args.quick else R.RESULTS)
    parts = set(args.parts.split(","))
    clock = R.Clock()
    work = Path(tempfile.mkdtemp(prefix="bench-runner-work-"))
    os.environ.setdefault("TRAINER_HOME", str(work / "home"))
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    record: dict = {"machine": R.machine(), "epochs": args.epochs, "repeats": args.repeats, "quick": args.quick}
    try:
        if "local" in parts:
            record["local"] = local_part(args, work)
        if "throughput" in parts:
            record["throughput"] = throughput_part(args, work)
        if "cluster" in parts:
            record["cluster"] = cluster_part(args, work)
    finally:
        if "cluster" in parts and os.environ["TRAINER_HOME"].startswith(str(work)):
            import trainer

            trainer.cluster_down()
    record.update(clock.done())
    return R.publish("runner", TITLE, record, report(record), plot(record), out, args)


if __name__ == "__main__":
    sys.exit(main())
