"""The client<->driver contract has one home, trainer/protocol.py: its names are written nowhere
else, and its parsers read what its writers write."""
import re
from pathlib import Path

from trainer import protocol

REPO = Path(__file__).resolve().parents[2]
# A wire name written as a string literal (env vars, log prefixes, RayJob annotations, the entrypoint).
WIRE = re.compile(r"""["'](trainer\.io/[\w.-]+|TRAINER_(SPEC|RUN_ID|JOB_ID|PROGRESS|FAILURE|TIMING)\b[^"']*)["']"""
                  r"""|["'][^"'\n]*-m trainer\.runners\.job["']""")


def test_wire_names_are_written_only_in_protocol():
    found = []
    for folder in ("trainer", "converters", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path == REPO / "trainer" / "protocol.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if WIRE.search(line):
                    found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert found == []


def test_progress_line_round_trips():
    line = "(RayTrainWorker pid=1) " + protocol.progress_line(3, {"loss": 0.5, "f1": 0.9}, 12.5)
    assert protocol.parse_progress(line) == {"step": 3, "metrics": {"loss": 0.5, "f1": 0.9}, "time": 12.5}
    assert protocol.parse_progress("epoch 3 loss 0.5") is None
    assert protocol.parse_progress(protocol.PROGRESS_PREFIX + "{not json") is None


def test_failure_from_logs_takes_the_lowest_rank():
    text = "\n".join([f'{protocol.FAILURE_PREFIX}{{"rank": 2, "type": "ValueError"}}',
                      "noise",
                      f'(pid=3) {protocol.FAILURE_PREFIX}{{"rank": 0, "type": "KeyError"}}',
                      f"{protocol.FAILURE_PREFIX}{{broken"])
    assert protocol.failure_from_logs(text) == {"rank": 0, "type": "KeyError"}
    assert protocol.failure_from_logs("all good") is None


def test_timing_from_logs():
    text = f'job x\n{protocol.TIMING_PREFIX}{{"entrypoint": 1.0, "closed": 2.0}}\n'
    assert protocol.timing_from_logs(text) == {"entrypoint": 1.0, "closed": 2.0}
    assert protocol.timing_from_logs("nothing") == {}


def test_job_runtime_env_carries_the_driver_contract():
    env = protocol.job_runtime_env("{}", job_id="j", tracking_uri="sqlite:///x.db", run_id="r",
                                   working_dir=Path("/p"), excludes=protocol.UPLOAD_EXCLUDES, python="/v/python",
                                   extra_env={"TRAINER_HOME": "/h"})
    assert env["env_vars"] == {protocol.ENV_SPEC: "{}", protocol.ENV_JOB_ID: "j", protocol.ENV_RUN_ID: "r",
                               protocol.ENV_TRACKING_URI: "sqlite:///x.db", "PYTHONUNBUFFERED": "1",
                               protocol.ENV_STOP_WAIT: protocol.STOP_WAIT_S,
                               "TRAINER_HOME": "/h"}
    assert env["working_dir"] == "/p" and env["py_executable"] == "/v/python" and ".git" in env["excludes"]
    # A KubeRay driver opens its own run when the client could not: no run id, no upload list.
    bare = protocol.job_runtime_env("{}", job_id="j", tracking_uri="http://mlflow:5000", working_dir="s3://b/c.zip")
    assert protocol.ENV_RUN_ID not in bare["env_vars"] and set(bare) == {"env_vars", "working_dir"}
