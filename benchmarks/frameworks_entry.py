"""The entrypoints benchmarks/frameworks.py runs: each framework's digits example
(examples/digits/train_<framework>.py, the same CNN on the same split), unchanged, plus what the
benchmark measures inside the training process (rank 0): the time between consecutive epoch
reports and the process's peak resident memory. Reported as two more metrics at the last step:

    bench_epoch_s       median seconds per epoch (epochs 2..N: the first one carries warm-up)
    bench_peak_rss_mib  peak RSS of the training process (rank 0), MiB
"""
import importlib
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "digits"))


def _measured(module: str, ctx) -> None:
    example = importlib.import_module(module)
    marks = []
    report = ctx.report

    def timed_report(metrics, checkpoint=None):
        report(metrics, checkpoint=checkpoint)
        if "epoch" in metrics:
            marks.append(time.perf_counter())

    ctx.report = timed_report
    example.train(ctx)
    gaps = sorted(b - a for a, b in zip(marks, marks[1:]))
    extra = {"step": ctx.config.get("epochs", 10),
             "bench_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if gaps:
        extra["bench_epoch_s"] = gaps[len(gaps) // 2]
    report(extra)


def train_torch(ctx):
    _measured("train_torch", ctx)


def train_tensorflow(ctx):
    _measured("train_tensorflow", ctx)


def train_mxnet(ctx):
    _measured("train_mxnet", ctx)
