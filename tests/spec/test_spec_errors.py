"""Malformed specs and CLI calls: one line naming the field, exit code 2, and nothing created:
no cluster started (so no Ray job), no MLflow store (so no run)."""
import textwrap

import pytest
from typer.testing import CliRunner

from trainer.cli import app

GOOD = {
    "name": "digits",
    "framework": "torch",
    "entrypoint": "train.py:train",
    "workers": 1,
}


@pytest.fixture
def project(tmp_path, isolated_home):
    (tmp_path / "pyproject.toml").write_text("[project]\nname='p'\n")
    (tmp_path / "train.py").write_text("def train(ctx):\n    pass\n")
    (tmp_path / "broken.py").write_text("def train(ctx:\n    pass\n")
    return tmp_path


def _yaml(body: str, project, name="job.yaml"):
    path = project / name
    path.write_text(textwrap.dedent(body))
    return str(path)


BASE = "name: digits\nframework: torch\nentrypoint: train.py:train\n"

CASES = [
    # (spec body, extra CLI args, text the one-line error must contain)
    (BASE + "workers: 0\n", [], "workers: must be >= 1, got 0"),
    (BASE + "wrokers: 2\n", [], "wrokers: unknown key; did you mean 'workers'?"),
    (BASE.replace("torch", "pytorch", 1) + "", [], "framework: must be one of"),
    ("framework: torch\nentrypoint: train.py:train\n", [], "name: required field is missing"),
    (BASE.replace("name: digits", "name: Bad Name"), [], "name:"),
    (BASE.replace("train.py:train", "train.py"), [], "entrypoint: must be 'path/to/file.py:function'"),
    (BASE.replace("train.py:train", "missing.py:train"), [], "entrypoint: file not found: missing.py"),
    (BASE.replace("train.py:train", "train.py:trian"), [], "did you mean 'train'?"),
    (BASE.replace("train.py:train", "broken.py:train"), [], "entrypoint: broken.py line 1: syntax error"),
    (BASE + "resources: {accelerator: A100, gpus_per_worker: -1}\n", [], "resources.gpus_per_worker: must be >= 0"),
    (BASE + "resources: {cpus_per_worker: 0}\n", [], "resources.cpus_per_worker: must be > 0"),
    (BASE + "resources: {acclerator: A100}\n", [], "resources.acclerator: unknown key; did you mean 'accelerator'?"),
    (BASE + "resources: {accelerator: 'A 100'}\n", [], "resources.accelerator:"),
    (BASE + "checkpoint: {every_epochs: 0}\n", [], "checkpoint.every_epochs: must be >= 1"),
    (BASE + "checkpoint: {keep: 0}\n", [], "checkpoint.keep: must be >= 1"),
    (BASE + "checkpoint: {kep: 3}\n", [], "checkpoint.kep: unknown key; did you mean 'keep'?"),
    (BASE + "failure: {max_failures: -1}\n", [], "failure.max_failures: must be >= 0"),
    (BASE + "data: {path: nope/}\n", [], "data.path: no such file or folder"),
    (BASE + "data: {}\n", [], "data.path: required field is missing"),
    (BASE + "data: {path: 'package://no_such_pkg_xyz/file.csv'}\n", [], "data.path: package 'no_such_pkg_xyz' is not installed"),
    (BASE + "config: [1, 2]\n", [], "config:"),
    (BASE + "tracking: {experimnt: x}\n", [], "tracking.experimnt: unknown key; did you mean 'experiment'?"),
    (BASE + "convert: {targets: []}\n", [], "convert.targets: must not be empty"),
    (BASE + "workers: two\n", [], "workers:"),
    (BASE + "runtime: tensorflow\n", [], "runtime: runtime 'tensorflow' cannot run torch jobs"),
    (BASE + "workers: [\n", [], "not valid YAML (line"),
    ("- name: digits\n", [], "a job spec is a mapping"),
    (BASE, ["--set", "workers=0"], "workers: must be >= 1, got 0"),
    (BASE, ["--set", "noequals"], "--set: 'noequals': expected dotted.key=value"),
    (BASE + "config: {lr: 0.1}\n", ["--set", "config.lr.x=1"], "config.lr: is float, not a mapping; cannot set 'config.lr.x'"),
    (BASE, ["--set", "resources.gpus_per_wroker=1"], "did you mean 'gpus_per_worker'?"),
    (BASE, ["--output", "yaml"], "--output must be table or json"),
]


@pytest.mark.parametrize("body,args,expected", CASES, ids=[c[2][:40] for c in CASES])
def test_bad_spec_is_refused_before_anything_starts(project, isolated_home, body, args, expected):
    spec = _yaml(body, project)
    result = CliRunner().invoke(app, ["submit", spec, *args])
    assert result.exit_code == 2, result.output
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1, result.output       # one line, no traceback
    assert lines[0].startswith("error:")
    assert expected in lines[0], lines[0]
    # Nothing was created: no cluster (hence no Ray job) and no MLflow store (hence no run).
    assert not (isolated_home / "cluster").exists()
    assert not (isolated_home / "mlflow.db").exists()


def test_missing_spec_file(isolated_home):
    result = CliRunner().invoke(app, ["submit", "nope.yaml"])
    assert result.exit_code == 2
    assert "spec file not found: nope.yaml" in result.output
    assert not isolated_home.exists() or not any(isolated_home.iterdir())


def test_run_without_local_flag_is_a_usage_error(project):
    result = CliRunner().invoke(app, ["run", _yaml(BASE, project)])
    assert result.exit_code == 2
    assert "pass --local" in result.output


def test_bad_node_spec_for_cluster_up(isolated_home):
    result = CliRunner().invoke(app, ["cluster", "up", "--node", "A100"])
    assert result.exit_code == 2
    assert "--node 'A100': expected ACCEL:CPUS" in result.output
    assert not (isolated_home / "cluster" / "state.json").exists()


def test_schema_lists_every_top_level_field():
    import json

    result = CliRunner().invoke(app, ["spec", "schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert set(schema["properties"]) >= {"name", "framework", "entrypoint", "workers", "resources", "data",
                                         "config", "checkpoint", "failure", "tracking", "convert"}
    assert schema["additionalProperties"] is False
    assert schema["properties"]["workers"]["minimum"] == 1
