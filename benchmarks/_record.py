"""What every benchmark here writes: a JSON record, a Markdown table and a PNG, each saying the
machine, the versions and the load the figures were taken under, plus the latest dated table in
benchmarks/README.md under the benchmark's own heading (between `<!-- bench:NAME -->` markers)."""
from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "benchmarks" / "README.md"
PYTHON = sys.executable
# A figure counts only from a quiet machine: a record whose 1-minute load average was above this at
# its start is written to --out marked noisy, and never replaces a README record.
QUIET_LOAD = 2.0


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = 0.0
    versions = {}
    for dist in ("torch", "ray", "mlflow", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_gib, 1), "gpu": _gpu(),
            "python": platform.python_version(), "os": platform.platform(terse=True), **versions,
            "load_avg_start": load()[0], "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def _gpu() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        return name.decode() if isinstance(name, bytes) else name
    except Exception:  # noqa: BLE001 - no NVML, no driver, no GPU: all mean none here
        return "none (no GPU on this machine: the GPU part of the issue is not run)"


def quiet() -> None:
    """Our lines only: MLflow's and Alembic's INFO logs (creating a store's tables) are not results."""
    import logging

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Clock:
    """Wall time of a block, and the load averages around it (the machine is shared)."""

    def __init__(self):
        self.load_before = load()
        self.t0 = time.time()

    def done(self) -> dict:
        return {"started": self.t0, "wall_s": round(time.time() - self.t0, 1),
                "load_before": self.load_before, "load_after": load()}


def median(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def pct(xs, q: float) -> float | None:
    """The q-quantile (0-1) of the values given (None ignored), nearest rank: the one percentile
    every benchmark reports (soak and scale included)."""
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    k = min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))
    return xs[k]


def fmt(x, digits: int = 1, scale: float = 1.0) -> str:
    if x is None:
        return "-"
    return f"{x * scale:,.{digits}f}"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def header(title: str, record: dict, quick: bool) -> str:
    m = record["machine"]
    date = datetime.fromtimestamp(record["started"], timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"### {title} ({date}{', --quick: not a measurement' if quick else ''}"
             f"{', NOISY: ' + record['noisy'] if record.get('noisy') else ''})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; GPU: {m['gpu']}. "
             f"Python {m['python']}, torch {m['torch']}, ray {m['ray']}, mlflow {m['mlflow']}. "
             f"Load average (1/5/15 min) {record['load_before']} before, {record['load_after']} after: "
             f"the machine is shared, so compare the ratios measured in this run, not absolute seconds.",
             ""]
    return "\n".join(lines) + "\n"


def noisy(record: dict) -> str | None:
    """Why `record` is not a figure (the machine was busy when it started), or None."""
    start = (record.get("load_before") or [record.get("machine", {}).get("load_avg_start", 0.0)])[0]
    if start > QUIET_LOAD:
        return f"1-minute load {start} at the start (a record needs <= {QUIET_LOAD}: nothing else running)"
    return None


def write(name: str, title: str, record: dict, markdown: str, plot, out: Path, quick: bool,
          readme: bool) -> list[Path]:
    """`out`/NAME.json, NAME.md, NAME.png; and the README section when `readme` and the machine
    was quiet (a noisy record says so in its files and leaves the README's record as it was)."""
    record["noisy"] = noisy(record)
    text = header(title, record, quick) + markdown.strip() + "\n"
    paths = write_files(name, out, record, text, lambda path: _plot(plot, path, title, record))
    if readme and record["noisy"]:
        print(f"benchmarks/README.md kept: this run is noise, not a result: {record['noisy']}", file=sys.stderr)
    elif readme:
        update_readme(name, text, f"results/{name}.png")
    return paths


def publish(name: str, title: str, record: dict, report: str, plot, out: Path, args) -> int:
    """A benchmark's last step: `write` its files (the README section only for a full run into the
    default folder), print the report and where the files went; the exit code."""
    paths = write(name, title, record, report, plot, out, args.quick, readme=not args.quick and args.out is None)
    print(report)
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def write_files(name: str, out: Path, record: dict, text: str, draw) -> list[Path]:
    """`out`/NAME.json (the record), NAME.md (`text`), NAME.png (`draw(path)` saves the figure)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.json", out / f"{name}.md", out / f"{name}.png"]
    paths[0].write_text(json.dumps(record, indent=2, default=str) + "\n")
    paths[1].write_text(text)
    draw(paths[2])
    return paths


def _plot(plot, path: Path, title: str, record: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    plot(ax)
    m = record["machine"]
    ax.set_title(title, fontsize=11)
    fig.text(0.01, 0.01, f"{m['cpu']} ({m['cores']} cores), GPU: {m['gpu'].split(' (')[0]}; torch {m['torch']}, "
             f"ray {m['ray']}, mlflow {m['mlflow']}; load {record['load_before'][0]}-{record['load_after'][0]}; "
             f"{datetime.fromtimestamp(record['started'], timezone.utc):%Y-%m-%d}", fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update_readme(name: str, text: str, png: str) -> None:
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    body = f"{begin}\n{text.strip()}\n\n![{name}]({png})\n{end}"
    current = README.read_text() if README.is_file() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if pattern.search(current):
        current = pattern.sub(lambda _: body, current)
    else:
        current = current.rstrip() + "\n\n" + body + "\n"
    README.write_text(current)


def run(cmd: list[str], *, env: dict | None = None, cwd: Path = ROOT, timeout: float = 900) -> tuple[float, subprocess.CompletedProcess]:
    """(wall seconds, completed process); raises with the output's tail when it fails."""
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return wall, proc


def records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
