"""Benchmark: the runtime images - build time (cold / warm), size, and the digits job with its
workers inside the image against the same job on the host's venv.

Per runtime (torch, tensorflow, mxnet; the `cpu` variant on the local Debian base):
- cold build: no layer cache (`--no-cache`) and an empty pip cache (a fresh $XDG_CACHE_HOME):
  every wheel downloaded and installed; the Debian base is made first when missing (its time is
  recorded apart: it is made once per machine);
- warm build: the same command again right after (buildah's layer cache: nothing changed);
- image size (podman's figure), and the lock check inside it (`trainer image check`);
- the job: `examples/digits/<runtime>.yaml` (--epochs, conversion off) on a local cluster whose
  worker node runs on the host, then on one whose worker node is a container of the image
  (`trainer cluster up --image`), alternating --rounds times: wall time, test accuracy, and the
  image/host time ratio. Same spec, same seed: the accuracy must agree.

    flock /tmp/bench.lock python benchmarks/images.py [--runtimes torch,tensorflow,mxnet]
        [--epochs 3] [--rounds 2] [--quick] [--out DIR]

--quick: torch only, warm build only, one round of one epoch, results in a temp folder, README
untouched (a smoke run). Records are taken on a quiet machine, not during development.
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

TRAINER = [R.PYTHON, "-m", "trainer.cli"]


def build_part(runtime: str, cold: bool, work: Path) -> dict:
    from trainer.images.base import ensure_base
    from trainer.images.build import build
    from trainer.images.inventory import check_lock, list_images

    out: dict = {}
    t0 = time.time()
    base = ensure_base()
    out["base_s"] = round(time.time() - t0, 1) if base.built else None
    if cold:
        saved = os.environ.get("XDG_CACHE_HOME")
        os.environ["XDG_CACHE_HOME"] = str(work / f"cache-{runtime}")    # an empty pip cache
        try:
            out["cold_s"] = round(build(runtime, "cpu", no_cache=True).seconds, 1)
        finally:
            if saved is None:
                os.environ.pop("XDG_CACHE_HOME", None)
            else:
                os.environ["XDG_CACHE_HOME"] = saved
    report = build(runtime, "cpu")
    out["warm_s"] = round(report.seconds, 1)
    row = next(r for r in list_images(runtime) if r.id == report.image_id)
    out.update(image=report.image, size_mib=round(row.size / 2**20), lock=report.lock_digest[:12])
    out["lock_mismatches"] = check_lock(report.image)["mismatches"]
    return out


def job_part(runtime: str, image: str, epochs: int, rounds: int, work: Path) -> dict:
    spec = f"examples/digits/{runtime}.yaml"
    out: dict = {"host": [], "image": []}
    for i in range(rounds):
        for where in (("host", "image") if i % 2 == 0 else ("image", "host")):
            env = {**os.environ, "TRAINER_HOME": str(work / f"home-{runtime}-{where}-{i}"), "MLFLOW_DISABLE_TELEMETRY": "true"}
            env.pop("TRAINER_ADDRESS", None)
            up = TRAINER + ["cluster", "up", "--node", "cpu:2"] + (["--image", image] if where == "image" else [])
            R.run(up, env=env, timeout=600)
            try:
                wall, proc = R.run(TRAINER + ["submit", spec, "--set", f"config.epochs={epochs}", "--set", "convert=null",
                                              "--wait", "--output", "json"], env=env, timeout=1800)
                result = json.loads(proc.stdout)
                out[where].append({"wall_s": round(wall, 1), "status": result.get("status"),
                                   "test_accuracy": (result.get("metrics") or {}).get("test_accuracy")})
            finally:
                R.run(TRAINER + ["cluster", "down"], env=env, timeout=300)
    host, img = (R.median([r["wall_s"] for r in out[k]]) for k in ("host", "image"))
    out["time_ratio_image_over_host"] = round(img / host, 2) if host and img else None
    return out


def report(record: dict) -> str:
    rows = []
    for name, r in record["runtimes"].items():
        job = r.get("job") or {}
        acc = lambda k: ", ".join(R.fmt(x.get("test_accuracy"), 4) for x in job.get(k, []))  # noqa: E731
        rows.append([name, R.fmt(r.get("cold_s"), 0), R.fmt(r.get("warm_s"), 0), r.get("size_mib"),
                     "ok" if not r.get("lock_mismatches") else f"{len(r['lock_mismatches'])} differ",
                     R.fmt(R.median([x["wall_s"] for x in job.get("host", [])]), 0),
                     R.fmt(R.median([x["wall_s"] for x in job.get("image", [])]), 0),
                     job.get("time_ratio_image_over_host", "-"), acc("host"), acc("image")])
    return R.markdown_table(["runtime", "cold build s", "warm build s", "size MiB", "lock check", "job host s",
                             "job image s", "image/host", "accuracy host", "accuracy image"], rows)


def plot(record: dict):
    def draw(ax):
        names = list(record["runtimes"])
        cold = [record["runtimes"][n].get("cold_s") or 0 for n in names]
        warm = [record["runtimes"][n].get("warm_s") or 0 for n in names]
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], cold, width=0.4, label="cold build")
        ax.bar([x + 0.2 for x in xs], warm, width=0.4, label="warm build")
        ax.set_xticks(list(xs), names)
        ax.set_ylabel("seconds")
        ax.legend()
    return draw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runtimes", default="torch,tensorflow,mxnet")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.quick:
        args.runtimes, args.epochs, args.rounds = "torch", 1, 1
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench-images-")) if args.quick else R.RESULTS)
    R.quiet()
    clock = R.Clock()
    work = Path(tempfile.mkdtemp(prefix="bi-", dir="/tmp"))
    record: dict = {"machine": R.machine(), "quick": args.quick, "epochs": args.epochs, "rounds": args.rounds,
                    "runtimes": {}}
    for runtime in args.runtimes.split(","):
        r = build_part(runtime, cold=not args.quick, work=work)
        r["job"] = job_part(runtime, r["image"], args.epochs, args.rounds, work)
        record["runtimes"][runtime] = r
    record.update(clock.done())
    return R.publish("images", "Runtime images: build, size, the job inside vs the venv",
                     record, report(record), plot(record), out, args)


if __name__ == "__main__":
    sys.exit(main())
