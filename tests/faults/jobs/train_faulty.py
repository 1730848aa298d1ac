"""Training functions for the fault suite (tests/faults/): the fault drills' tabular MLP
(tests/runners/resume/train_mlp_torch.py, its seeded kill points from resume/faults.py), reused,
not copied, plus two knobs the suite needs:

- `config.sleep_s`: each report waits that long after it returns, so a small job lasts long
  enough for a fault from outside (a node stopped, a server stopped, a client killed) to land
  while it trains;
- `config.hold_after` + `config.hold_file`: after that many reports (of this worker group) each
  worker waits until the file exists, so a fault from outside lands while the job is decidedly
  still running, not while it happens to be;
- `config.marks_dir`: before each report the worker creates `<rank>.<n>` there (n = 1, 2, ...
  within its worker group), so a test can wait for "rank 0 is making its n-th report" (an event)
  instead of guessing how long it takes;
- `train_pausing`: the drills' fault points *pause* instead of SIGKILL (the worker writes its
  marker and sleeps), e.g. halfway through uploading a checkpoint's state file, so the test can
  cancel the job at exactly that moment.
"""
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "runners" / "resume"))

import faults  # noqa: E402  (the drills' fault points)
import train_mlp_torch  # noqa: E402


class Pausing(faults.Faults):
    def _fire(self, i, phase, **extra):
        record = {"fault": i, "rank": self.rank, "phase": phase, "epoch": self.epoch, "pid": os.getpid(),
                  "time": time.time(), **extra}
        tmp = self.dir / f"{i}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.dir / f"{i}.paused")
        print(f"PAUSED {json.dumps(record)}", flush=True)
        time.sleep(3600)


def _slowed(ctx):
    sleep_s = float(ctx.config.get("sleep_s", 0))
    hold_after = int(ctx.config.get("hold_after", 0))
    hold_file = Path(ctx.config["hold_file"]) if hold_after else None
    marks = Path(ctx.config["marks_dir"]) if ctx.config.get("marks_dir") else None
    report = ctx.report
    reports = 0

    def slow_report(metrics, checkpoint=None):
        nonlocal reports
        if marks is not None:
            (marks / f"{ctx.rank}.{reports + 1}").touch()
        report(metrics, checkpoint=checkpoint)
        reports += 1
        if reports == hold_after:
            deadline = time.monotonic() + 600    # the test's own bound fails it long before
            while not hold_file.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
        time.sleep(sleep_s)

    if sleep_s or hold_after or marks is not None:
        ctx.report = slow_report
    return ctx


def train(ctx):
    train_mlp_torch.train_no_step(_slowed(ctx))


def train_pausing(ctx):
    train_mlp_torch.Faults = Pausing
    train_mlp_torch.train_no_step(_slowed(ctx))
