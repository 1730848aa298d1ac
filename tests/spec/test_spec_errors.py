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


# ---------------------------------------------------------------- what the stricter rules still accept

def test_valid_specs_still_load(tmp_path):
    """The rules refuse what is wrong, not what is merely unusual."""
    from trainer.spec import load_spec

    (tmp_path / "pyproject.toml").write_text("")
    body = ("\ufeff# a comment\nname: digits\nframework: torch\nentrypoint: src/train.py:train\n"
            "workers: 2\nresources: {cpus_per_worker: 2, gpus_per_worker: 0.5}\n"   # ints for floats
            "config: {lr: 1.0e-3, tag: 'é', nested: {a: [1, 2, {b: null}]}, flag: true}\n"
            "tracking: {experiment: My_Exp-1.2}\n"
            "convert: {targets: [onnx], parity: {atol: 1, rtol: 0.5}}\n")
    (tmp_path / "job.yaml").write_text(body, encoding="utf-8")
    spec, workdir = load_spec(tmp_path / "job.yaml", ["config.lr=0.1", "workers=4"])
    assert spec.workers == 4 and spec.resources.cpus_per_worker == 2.0 and spec.config["lr"] == 0.1
    assert spec.config["tag"] == "é" and spec.convert.parity.atol == 1 and workdir == tmp_path


def test_set_text_that_is_not_yaml_is_a_string():
    from trainer.spec import load_spec

    raw = {"name": "d", "framework": "torch", "entrypoint": "t.py:train"}
    spec, _ = load_spec(raw, ["config.note=a: b: c", "config.empty="])
    assert spec.config == {"note": "a: b: c", "empty": ""}


@pytest.mark.parametrize("fields,message", [
    ({"resources": {"gpus_per_worker": 0.00001}}, "must be 0 or >= 0.0001"),
    ({"tracking": {"experiment": "x" * 129}}, "tracking.experiment: must be 1-128"),
    ({"entrypoint": "a\\..\\b.py:train"}, "entrypoint: must be a file inside the project"),
    ({"config": {"x": {1, 2}}}, "config.x: must be a string, number"),
    ({"config": {"when": __import__("datetime").date(2024, 1, 1)}}, "config.when: must be a string"),
])
def test_python_dicts_follow_the_same_rules(fields, message):
    from trainer.errors import SpecError
    from trainer.spec import load_spec

    raw = {"name": "d", "framework": "torch", "entrypoint": "t.py:train", **fields}
    with pytest.raises(SpecError) as e:
        load_spec(raw)
    assert message in str(e.value)
    assert str(e.value).count(str(e.value).split(":")[0] + ":") == 1      # the field is named once


def test_a_deep_python_config_is_refused_not_a_recursion_error():
    from trainer.errors import SpecError
    from trainer.spec import load_spec

    deep: dict = {}
    node = deep
    for _ in range(100):
        node["a"] = {}
        node = node["a"]
    with pytest.raises(SpecError, match="nested more than 32 levels"):
        load_spec({"name": "d", "framework": "torch", "entrypoint": "t.py:train", "config": deep})


def test_many_errors_are_counted_not_listed():
    from trainer.errors import SpecError
    from trainer.spec import validate

    with pytest.raises(SpecError) as e:
        validate({"name": "d", "framework": "torch", "entrypoint": "t.py:train",
                  **{f"k{i}": i for i in range(1000)}})
    assert str(e.value).endswith("; and 997 more") and len(str(e.value)) < 400
