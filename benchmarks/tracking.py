"""Benchmark: what tracking costs a training loop - `ctx.report` called 10,000 times.

The same function (digits CNN steps, batch 32, one `ctx.report({"step": i, "loss": loss})` per
step) runs in this process (`trainer run --local`'s session, world size 1) with tracking off (no
MLflow run: ctx.report only prints rate-limited progress) and on (a real MLflow run on SQLite:
the batched channel of trainer.tracking.metrics, with `failure.max_failures` 2 - values committed
with checkpoints or the 10,000-value / 30 s bound - and 0, the default - a live channel: a full
log_batch of 1,000 values or 2 s, whichever comes first), and the live channel to an MLflow
tracking server over HTTP (`trainer mlflow serve` on the same SQLite file: a cluster's setting, where
the SQL runs in the server's process, whose CPU is recorded beside it), interleaved rounds; then
it counts the points MLflow holds for each tracked run.

Two measures of the cost. The difference of whole-process CPU against the run without tracking,
which this host's drift swamps (the same untracked loop's CPU time moves +-10% between rounds);
and the direct one, which drift scales but does not skew: the CPU the training thread spends in
`ctx.report` calls plus the CPU of the channel's sender thread (its whole life: MLflow's client,
the store's writes), as a share of the rest of the same run's CPU (the training).

    flock /tmp/bench.lock python -m benchmarks.tracking [--reports 10000] [--rounds 3] [--quick] [--out DIR]

--quick: 300 reports, one round, results in a temp folder, README untouched (a smoke run).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import _record as R
from benchmarks.runner import SPEC, data_path

# (name, max_failures: None = no run, over HTTP to the tracking server?)
VARIANTS = [("tracking off", None, False), ("MLflow, max_failures 2", 2, False), ("MLflow, max_failures 0", 0, False),
            ("MLflow server (HTTP), max_failures 0", 0, True)]


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its children (the server is MLflow's CLI + uvicorn)."""
    import psutil

    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def measure(args, work: Path) -> dict:
    import torch
    from torch import nn

    from benchmarks.jobs import digits_loop as d
    from trainer.context import LocalSession
    from trainer.runners.torch import TorchContext
    from trainer.spec import load_spec
    from trainer.tracking import runs, server

    torch.set_num_threads(1)
    base, _ = load_spec(R.ROOT / SPEC)
    uri = runs.tracking_uri(base)
    loader, _, _ = d._data(data_path(), 32)
    batches = list(loader)
    loss_fn = nn.CrossEntropyLoss()

    def job(max_failures: int | None, n: int, http: bool = False):
        """(wall s, process CPU s, run id, server CPU s, CPU s in ctx.report calls)"""
        spec = base.model_copy(update={"failure": base.failure.model_copy(update={"max_failures": max_failures or 0})})
        run_id, at = None, served.url if http else uri
        if max_failures is not None:
            run_id = runs.start_run(spec, f"bench-tracking-{time.time_ns()}", at, "local", None)
        server0 = tree_cpu_s(served.pid)
        torch.manual_seed(0)
        model = d.DigitsCNN(16)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        report_cpu = 0.0
        t0, c0 = time.perf_counter(), time.process_time()
        ctx = TorchContext(spec, LocalSession(work / "ckpt", 1), run_id=run_id, tracking_uri=at)
        for i in range(n):
            xb, yb = batches[i % len(batches)]
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            r0 = time.thread_time()
            ctx.report({"step": i, "loss": loss})
            report_cpu += time.thread_time() - r0
        ctx.close()          # the job's end: every value sent
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        server_cpu = tree_cpu_s(served.pid) - server0
        if run_id:
            runs.finish_run(at, run_id, "FINISHED")     # no run left RUNNING (not timed)
        return wall, cpu, run_id, server_cpu, report_cpu

    from trainer.tracking.metrics import MetricsChannel

    sender_cpu: list[float] = []
    loop = MetricsChannel._loop

    def timed_loop(self):       # the sender thread's whole life, in its own CPU clock
        t = time.thread_time()
        try:
            loop(self)
        finally:
            sender_cpu.append(time.thread_time() - t)

    out = {name: [] for name, _, _ in VARIANTS}
    served, _ = server.serve(port=None)      # over the same store ($TRAINER_HOME's SQLite file)
    MetricsChannel._loop = timed_loop
    try:
        with contextlib.redirect_stdout(io.StringIO()):       # rank 0's progress lines
            job(2, 200)                                        # warm-up: imports, the store's schema
            job(0, 200, http=True)
            for r in range(args.rounds):
                order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
                for name, mf, http in order:
                    sender_cpu.clear()
                    wall, cpu, run_id, server_cpu, report_cpu = job(mf, args.reports, http)
                    points = len(runs.client(uri).get_metric_history(run_id, "loss")) if run_id else None
                    out[name].append({"wall_s": wall, "cpu_s": cpu, "points": points,
                                      "report_cpu_s": report_cpu, "sender_cpu_s": sum(sender_cpu),
                                      "server_cpu_s": server_cpu if http else None})
    finally:
        MetricsChannel._loop = loop
        server.stop()
    return out


def report(record: dict) -> str:
    m = record["measure"]
    off = R.median(x["wall_s"] for x in m["tracking off"])
    off_cpu = R.median(x["cpu_s"] for x in m["tracking off"])
    rows = []
    for name, xs in m.items():
        wall = R.median(x["wall_s"] for x in xs)
        cpu = R.median(x["cpu_s"] for x in xs)
        points = [x["points"] for x in xs]
        served = [x["server_cpu_s"] for x in xs if x.get("server_cpu_s") is not None]
        spent = [x.get("report_cpu_s", 0) + x.get("sender_cpu_s", 0) for x in xs]
        share = [t / (x["cpu_s"] - t) for t, x in zip(spent, xs)]
        rows.append([name, R.fmt(cpu, 2), f"{(cpu / off_cpu - 1) * 100:+.1f}%", R.fmt(wall, 2),
                     f"{(wall / off - 1) * 100:+.1f}%", R.fmt(R.median(spent), 2),
                     f"**{R.median(share) * 100:.1f}%** ({min(share) * 100:.1f}-{max(share) * 100:.1f})",
                     R.fmt(R.median(served), 2) if served else "-",
                     "-" if points[0] is None else " / ".join(map(str, points))])
    return "\n".join([
        f"{record['reports']:,} `ctx.report` calls, one per digits CNN step (batch 32, 1 thread), in one process; "
        f"medians of {record['rounds']} interleaved rounds. CPU s: the training process's CPU time (training "
        f"thread + MLflow sender), which other processes' load does not inflate; wall s swings with that load. "
        f"Tracking CPU s: the training thread's in `ctx.report` plus the sender thread's, and their share of the "
        f"same run's other CPU (median, range over the rounds): the direct measure, which the host's drift between "
        f"rounds does not skew. Server CPU s: the tracking server's processes over the same run (its SQL writes):",
        "",
        R.markdown_table(["tracking", "CPU s", "vs off", "wall s", "vs off", "tracking CPU s", "of training",
                          "server CPU s", "points in MLflow (each round)"], rows),
        ""])


def plot(record: dict):
    def draw(ax):
        m = record["measure"]
        names = list(m)
        xs = range(len(names))
        ax.bar([i - 0.2 for i in xs], [R.median(x["cpu_s"] for x in m[n]) for n in names], 0.4, label="CPU s")
        ax.bar([i + 0.2 for i in xs], [R.median(x["wall_s"] for x in m[n]) for n in names], 0.4, label="wall s")
        ax.set_xticks(list(xs), names, fontsize=8)
        ax.set_ylabel(f"seconds for {record['reports']:,} steps + reports")
        ax.legend(fontsize=8)
    return draw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reports", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.quick:
        args.reports, args.rounds = 300, 1
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench-tracking-")) if args.quick else R.RESULTS)
    work = Path(tempfile.mkdtemp(prefix="bench-tracking-work-"))
    os.environ.setdefault("TRAINER_HOME", str(work / "home"))
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    R.quiet()
    clock = R.Clock()
    record: dict = {"machine": R.machine(), "reports": args.reports, "rounds": args.rounds, "quick": args.quick,
                    "measure": measure(args, work)}
    record.update(clock.done())
    return R.publish("tracking", "Tracking overhead: 10,000 ctx.report calls",
                     record, report(record), plot(record), out, args)


if __name__ == "__main__":
    sys.exit(main())
