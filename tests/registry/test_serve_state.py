"""Which process `trainer registry stop` may end: the state file must name the docker-registry
this home started (pid, start time and owner token, trainer.cluster.processes). A copy from
another home, a link, a pid that is not a number: nothing is signalled, one line."""
import json
import os
import subprocess
import sys

import pytest

from trainer.cluster import processes
from trainer.errors import RegistryError
from trainer.registry import serve


@pytest.fixture
def sleeper():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def _state(isolated_home, data) -> "os.PathLike":
    folder = isolated_home / "registry"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "state.json"
    processes.write_private_json(path, data)
    return path


def test_a_state_file_naming_another_homes_process_stops_nothing(isolated_home, sleeper):
    # What a state file copied from another home holds: a live pid with its true start time,
    # but that home's token, which this home's processes do not carry.
    _state(isolated_home, {"pid": sleeper.pid, "start_ticks": processes.start_ticks(sleeper.pid),
                           "token": processes.new_token(), "address": "127.0.0.1:5999", "user": "trainer"})
    assert serve.state() is None
    assert serve.stop() is False
    assert sleeper.poll() is None, "the other home's process was signalled"


def test_a_symlinked_state_file_is_refused_and_its_target_left_alone(isolated_home, sleeper, tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"pid": sleeper.pid}))
    (isolated_home / "registry").mkdir(parents=True)
    (isolated_home / "registry" / "state.json").symlink_to(target)
    with pytest.raises(RegistryError, match="symbolic link"):
        serve.stop()
    assert sleeper.poll() is None and json.loads(target.read_text()) == {"pid": sleeper.pid}


def test_a_non_numeric_pid_is_one_clean_line(isolated_home):
    _state(isolated_home, {"pid": "1; rm -rf /", "start_ticks": 1, "token": "x", "address": "127.0.0.1:1"})
    cli = subprocess.run([sys.executable, "-m", "trainer.cli", "registry", "stop"], capture_output=True, text=True,
                         env={**os.environ, "TRAINER_HOME": str(isolated_home)}, timeout=120)
    assert cli.returncode != 0
    lines = [line for line in cli.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2 and "is not a process id" in cli.stderr and "Traceback" not in cli.stderr
