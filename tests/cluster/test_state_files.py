"""`cluster down` stops only processes provably this cluster's: the ones started with its owner
mark (a token from its 0600 state file, bound to its home) and their children. No guess from a
command line: an empty `temp_dir` in state.json used to match every process on the host (PID 1
included). State files that are links, or writable by others, are refused. No Ray needed."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from trainer.cluster import auth, processes
from trainer.cluster.local import LocalCluster
from trainer.errors import ClusterError


def _sleeper(env_extra: dict | None = None) -> subprocess.Popen:
    """A sacrificial process this test starts (and always ends), once its environment is readable
    (/proc/<pid>/environ is empty for a moment after the fork)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                            env={**os.environ, **(env_extra or {})})
    deadline = time.monotonic() + 30
    while not Path(f"/proc/{proc.pid}/environ").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc


def _write_state(home, **fields) -> LocalCluster:
    cluster = LocalCluster(home=home)
    auth.private_dir(cluster.dir)
    state = {"gcs_address": "127.0.0.1:1", "dashboard_url": "http://127.0.0.1:1", "temp_dir": "",
             "nodes": [], "started_at": 0.0, "token_file": "", **fields}
    processes.write_private_json(cluster.state_file, state)
    return cluster


@pytest.fixture
def signals(monkeypatch):
    """Every signal `down` would send, recorded instead of sent (a dry run: a bug here must not
    kill this host's processes)."""
    sent: list[int] = []
    monkeypatch.setattr(psutil.Process, "send_signal", lambda self, sig: sent.append(self.pid))
    monkeypatch.setattr(psutil.Process, "kill", lambda self: sent.append(self.pid))
    monkeypatch.setattr(psutil, "wait_procs", lambda procs, timeout=None: (list(procs), []))
    return sent


def test_an_empty_temp_dir_signals_nothing_but_ours(tmp_path, signals):
    home = tmp_path / "home"
    bystander = _sleeper()
    try:
        cluster = _write_state(home, temp_dir="", owner_token="t0ken")
        ours = _sleeper(cluster.owner_env(cluster._recorded()))
        try:
            cluster.down()
            assert set(signals) == {ours.pid}, f"signalled {len(set(signals))} processes: {sorted(set(signals))[:20]}"
            assert 1 not in signals and bystander.pid not in signals
        finally:
            ours.kill()
            ours.wait()
    finally:
        bystander.kill()
        bystander.wait()


def test_down_really_stops_a_marked_process_and_its_children(tmp_path):
    cluster = _write_state(tmp_path / "home", owner_token="t0ken")
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); time.sleep(300)"
    parent = subprocess.Popen([sys.executable, "-c", code],
                              env={**os.environ, **cluster.owner_env(cluster._recorded())})
    bystander = _sleeper()
    try:
        deadline = time.monotonic() + 30
        while not psutil.Process(parent.pid).children() and time.monotonic() < deadline:
            time.sleep(0.05)           # the parent has not started its child yet
        (child,) = psutil.Process(parent.pid).children()
        assert cluster.down() == 2
        parent.wait(timeout=10)
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
        assert bystander.poll() is None                      # not ours: untouched
        assert not cluster.state_file.exists()
    finally:
        for p in (parent, bystander):
            p.kill()
            p.wait()


def test_a_state_file_copied_from_another_home_stops_nothing(tmp_path, signals):
    first = _write_state(tmp_path / "a", owner_token="t0ken")
    other = _sleeper(first.owner_env(first._recorded()))   # a process of the first home's cluster
    try:
        second = LocalCluster(home=tmp_path / "b")
        auth.private_dir(second.dir)
        second.state_file.write_bytes(first.state_file.read_bytes())
        os.chmod(second.state_file, 0o600)
        second.down()
        assert other.pid not in signals and other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_symlinked_state_file_is_refused_and_never_written_through(tmp_path):
    victim = tmp_path / "victim.json"
    victim.write_text(json.dumps({"gcs_address": "127.0.0.1:1", "dashboard_url": "http://127.0.0.1:1",
                                  "temp_dir": "/", "owner_token": "x"}))
    before = victim.read_bytes()
    cluster = LocalCluster(home=tmp_path / "home")
    auth.private_dir(cluster.dir)
    cluster.state_file.symlink_to(victim)
    with pytest.raises(ClusterError, match="symbolic link"):
        cluster.down()
    with pytest.raises(ClusterError, match="symbolic link"):
        cluster.up()                          # refused before anything starts
    assert victim.read_bytes() == before

    # The writer replaces a link at the destination instead of following it.
    processes.write_private_json(cluster.state_file, {"a": 1})
    assert not cluster.state_file.is_symlink() and victim.read_bytes() == before
    assert cluster.state_file.stat().st_mode & 0o777 == 0o600


def test_a_state_file_others_may_write_is_refused(tmp_path):
    cluster = _write_state(tmp_path / "home", owner_token="t0ken")
    os.chmod(cluster.state_file, 0o666)
    with pytest.raises(ClusterError, match="others may write it"):
        cluster.down()


def test_the_cli_says_one_line_for_an_untrusted_state_file(tmp_path):
    home = tmp_path / "home"
    cluster = _write_state(home, owner_token="t0ken")
    os.chmod(cluster.state_file, 0o622)
    out = subprocess.run([sys.executable, "-m", "trainer.cli", "cluster", "down"], capture_output=True, text=True,
                         env={**os.environ, "TRAINER_HOME": str(home)}, timeout=120)
    assert out.returncode == ClusterError.exit_code and out.stderr.strip().count("\n") == 0, out.stderr
    assert "refusing to trust it" in out.stderr


def test_start_time_and_mark_name_one_process(tmp_path):
    folder = tmp_path / "srv"
    proc = _sleeper(processes.owner_env("tok", folder))
    try:
        ticks = processes.start_ticks(proc.pid)
        assert ticks and ticks == processes.start_ticks(proc.pid)
        assert processes.Recorded(proc.pid, ticks, "tok").is_ours(folder)
        assert not processes.Recorded(proc.pid, ticks + 1, "tok").is_ours(folder)      # a recycled pid
        assert not processes.Recorded(proc.pid, ticks, "other").is_ours(folder)        # not our token
        assert not processes.Recorded(proc.pid, ticks, "tok").is_ours(tmp_path / "elsewhere")  # another home
        assert not processes.Recorded(1, processes.start_ticks(1), "tok").is_ours(folder)
    finally:
        proc.kill()
        proc.wait()
