"""The worker protocol itself (converters.workers), with no framework: a real worker process
under this interpreter, loaded with the test commands of `_worker_commands.py`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converters.workers.client import WorkerClient, call_timeout, worker
from trainer.errors import ConversionError, UnsupportedOpsError
from trainer.home import repo_root

HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def _commands_importable(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(HERE))


@pytest.fixture
def client(tmp_path):
    c = WorkerClient("bare", python=Path(sys.executable), imports=("_worker_commands",), log_dir=tmp_path)
    yield c
    c.close()


def test_answers_results_and_arrays(client, tmp_path, monkeypatch):
    assert client.call("echo", n=3, flag=True, names=["a"]) == {"n": 3, "flag": True, "names": ["a"]}
    monkeypatch.chdir(tmp_path)     # the worker runs in the repo root: Paths are made absolute
    assert client.call("echo", where=Path("rel.npy")) == {"where": str(tmp_path / "rel.npy")}
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(client.predict("double", x), x * 2)
    pid = client.pid
    client.call("versions")
    assert client.pid == pid         # one long-lived process answers every request


def test_errors_are_one_line_and_ops_are_data(client):
    with pytest.raises(UnsupportedOpsError) as err:
        client.call("fail", who="keras", ops=["Lgamma", "Digamma", "Lgamma"])
    assert err.value.ops == ["Digamma", "Lgamma"]
    assert str(err.value) == "keras: unsupported ops: Digamma, Lgamma"
    with pytest.raises(ConversionError) as err:
        client.call("fail", who="keras")
    assert not isinstance(err.value, UnsupportedOpsError)
    assert str(err.value) == "keras: it failed on purpose"
    pid = client.pid
    with pytest.raises(ConversionError) as err:
        client.call("boom", who="mxnet")
    assert str(err.value) == "mxnet: boom failed: ValueError: the first line"
    assert "ValueError: the first line" in client.log_path.read_text()     # the traceback is logged
    assert client.pid == pid         # a failed command does not cost the worker


def test_unknown_command_lists_the_valid_ones(client):
    with pytest.raises(ConversionError) as err:
        client.call("nope")
    msg = str(err.value)
    assert "unknown worker command 'nope'" in msg
    assert all(name in msg for name in ("echo", "double", "fail", "versions")), msg


def test_prints_cannot_corrupt_the_protocol(client):
    assert client.call("noisy") == {"quiet": True}
    assert client.call("echo", after=1) == {"after": 1}
    log = client.log_path.read_text()
    assert "a library printing on stdout" in log and "C code writing to fd 1" in log


def test_timeout_kills_and_the_next_call_restarts(client):
    first = client.call("echo") and client.pid
    with pytest.raises(ConversionError) as err:
        client.call("sleep", who="keras", timeout=1, seconds=60)
    msg = str(err.value)
    assert msg.startswith("keras: bare worker: sleep took over 1 s and was stopped") and "\n" not in msg
    assert client.pid is None
    log = Path(msg.rsplit("(log: ", 1)[1].rstrip(")"))
    assert client.call("echo", again=True) == {"again": True}
    assert client.pid not in (None, first)
    client.close()
    assert log.exists(), "a log an error named is kept"


def test_timeout_from_the_environment(client, monkeypatch):
    monkeypatch.setenv("TRAINER_WORKER_TIMEOUT", "1")
    with pytest.raises(ConversionError, match="took over 1 s .*set TRAINER_WORKER_TIMEOUT"):
        client.call("sleep", seconds=60)
    monkeypatch.setenv("TRAINER_TF_WORKER_TIMEOUT", "7")     # the tensorflow one still counts, and wins
    assert call_timeout("tensorflow") == (7.0, "TRAINER_TF_WORKER_TIMEOUT")
    assert call_timeout("mxnet") == (1.0, "TRAINER_WORKER_TIMEOUT")
    monkeypatch.delenv("TRAINER_WORKER_TIMEOUT")
    monkeypatch.delenv("TRAINER_TF_WORKER_TIMEOUT")
    assert call_timeout("mxnet")[0] == 900


def test_a_dead_worker_is_reported_and_replaced(client):
    with pytest.raises(ConversionError, match=r"bare worker died \(exit code 5\) during die"):
        client.call("die", code=5)
    assert client.call("echo", alive=True) == {"alive": True}


def test_close_stops_the_worker_and_removes_its_log(client):
    client.call("echo")
    proc, log = client._proc, client.log_path
    client.close()
    assert proc.poll() is not None and not log.exists()


def test_one_shared_worker_per_runtime():
    assert worker("tensorflow") is worker("tensorflow")
    assert worker("tensorflow") is not worker("mxnet")


def test_raw_protocol_stream():
    """The wire format, without the client: ready line, answers, a bad request, an unknown command."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo_root()), str(HERE)])}
    requests = ["not json", json.dumps({"cmd": "noisy"}), json.dumps({"cmd": "fail", "args": {"ops": ["X"]}}),
                json.dumps({"cmd": "nope"})]
    done = subprocess.run([sys.executable, "-m", "converters.workers", "bare", "--import", "_worker_commands"],
                          input="\n".join(requests) + "\n", capture_output=True, text=True, env=env,
                          cwd=repo_root(), timeout=60)
    assert done.returncode == 0, done.stderr
    ready, bad, noisy, fail, unknown = [json.loads(line) for line in done.stdout.splitlines()]
    assert ready["ok"] and ready["result"]["ready"] and "echo" in ready["result"]["commands"]
    assert not bad["ok"] and bad["error"].startswith("bad request")
    assert noisy == {"ok": True, "result": {"quiet": True}}
    assert fail == {"ok": False, "error": "it failed on purpose", "ops": ["X"]}
    assert not unknown["ok"] and "valid: " in unknown["error"] and unknown["ops"] == []
    assert "C code writing to fd 1" in done.stderr


def test_one_shot_mode():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo_root()), str(HERE)])}
    argv = [sys.executable, "-m", "converters.workers", "bare", "--import", "_worker_commands"]
    done = subprocess.run([*argv, "echo", '{"a": 1}'], capture_output=True, text=True, env=env, cwd=repo_root())
    assert done.returncode == 0 and json.loads(done.stdout) == {"ok": True, "result": {"a": 1}}
    done = subprocess.run([*argv, "fail"], capture_output=True, text=True, env=env, cwd=repo_root())
    assert done.returncode == 3 and json.loads(done.stdout)["error"] == "it failed on purpose"
