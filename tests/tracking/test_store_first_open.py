"""Several processes opening a new embedded (SQLite) store at once - two first `trainer submit`s on
a fresh machine, a notebook beside a CLI - all get it: MLflow makes the tables and runs its
migrations on a process's first open, and two doing that on one new file failed ("duplicate column
name", alembic's "expected to match one row": 1 to 3 of 4 processes, every try)."""
import subprocess
import sys
import time
from pathlib import Path

OPEN = """
import sys, time
from pathlib import Path
from trainer.tracking.runs import client
import mlflow      # paid before the start line, so that the first opens meet
ready, go = Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.001)
client(sys.argv[1]).search_experiments()
"""


def test_processes_opening_a_new_store_at_once_all_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINER_HOME", str(tmp_path / "home"))
    uri, go = f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}", tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(3)]
    procs = [subprocess.Popen([sys.executable, "-c", OPEN, uri, str(r), str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in ready]
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(map(Path.exists, ready)) \
                and all(p.poll() is None for p in procs):
            time.sleep(0.05)
        go.touch()
        outs = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(o[-1500:] for o in outs)
