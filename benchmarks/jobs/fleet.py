"""The job functions of the soak and scale benchmarks (benchmarks/soak.py, benchmarks/scale.py):
kept apart from them so a Ray worker imports only this file, none of the benchmark's own code."""
import time


def tiny(ctx):
    """The soak's job: one report, no checkpoint."""
    ctx.report({"x": 1.0})


def hold(ctx):
    """The scale benchmark's job: hold the worker for `hold_s`, report once."""
    time.sleep(float(ctx.config.get("hold_s", 5)))
    ctx.report({"x": 1.0})
