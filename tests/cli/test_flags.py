"""Shared options are defined once (trainer/cli/_flags.py) with one meaning; `promote history`
is a real command; below the CLI errors name the argument, the CLI names the flag."""
import ast
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trainer.cli import app
from trainer.cli._output import error_line
from trainer.errors import UsageError

CLI = Path(__file__).resolve().parents[2] / "trainer" / "cli"
SHARED = ("--address", "--set", "--overlay", "--namespace", "--code-uri", "--context", "--registry", "--tracking-uri")


def test_shared_options_are_defined_once_in_flags():
    found = {}
    for path in sorted(CLI.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Option":
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and arg.value in SHARED:
                        found.setdefault(arg.value, []).append(path.name)
    # (`--address` twice there: the dashboard, and the old name `cluster join` still accepts for --head)
    assert {flag: files for flag, files in found.items() if set(files) != {"_flags.py"}} == {}
    assert sorted(found) == sorted(SHARED)


def test_promote_history_help_is_a_real_commands_help():
    result = CliRunner().invoke(app, ["promote", "history", "--help"], env={"COLUMNS": "80"}, prog_name="trainer")
    assert result.exit_code == 0, result.output
    assert "Usage: trainer promote history [OPTIONS] MODEL" in " ".join(result.output.split()).replace("{model}", "MODEL")
    assert "Every promotion of MODEL" in result.output
    assert "--to" not in result.output and "--approve" not in result.output


def test_a_model_named_history_can_be_promoted(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = CliRunner().invoke(app, ["promote", "history", "--to", "staging"], env={"COLUMNS": "200"})
    # Promoting went to the registry for the model `history` (none registered here), not to `history MODEL`.
    assert "model 'history'" in result.output, result.output
    assert "usage: trainer promote history" not in result.output


def test_history_without_a_model_says_what_is_missing():
    result = CliRunner().invoke(app, ["promote", "history"], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "Missing argument" in result.output


def test_below_the_cli_errors_name_the_argument_and_the_cli_names_the_flag(tmp_path):
    from trainer.api import read_raycluster

    with pytest.raises(UsageError) as raised:
        read_raycluster(str(tmp_path / "nope.yaml"))
    assert str(raised.value).startswith(f"cluster_spec {tmp_path / 'nope.yaml'}: no such file")
    assert error_line(raised.value).startswith(f"--cluster-spec {tmp_path / 'nope.yaml'}: no such file")
    # Only a leading argument name is swapped, and only for an error that says which argument it is.
    assert error_line(UsageError("address: none given", argument="address")) == "--address: none given"
    assert error_line(UsageError("addressee: x", argument="address")) == "addressee: x"
    assert error_line(UsageError("cluster_spec x: y")) == "cluster_spec x: y"


def test_convert_parity_flags_are_the_specs_settings():
    """`trainer convert --min-agreement ...` and a job's `convert.parity.min_agreement` are one
    setting: the flag's default, bounds and help come from trainer.spec.Parity (they were written
    twice, and once more per flag)."""
    import typer.main

    from trainer.spec import Parity

    params = {p.name: p for p in typer.main.get_command(app).commands["convert"].params}
    floats = [n for n, f in Parity.model_fields.items() if f.annotation is float and n not in ("atol", "rtol")]
    assert len(floats) == 7
    for name in floats:
        field = Parity.model_fields[name]
        assert (params[name].default, params[name].help) == (field.default, field.description), name
    over = max(getattr(m, "le") for m in Parity.model_fields["max_error_ratio"].metadata if hasattr(m, "le")) + 1
    result = CliRunner().invoke(app, ["convert", "m.onnx", "--max-error-ratio", str(over)])
    assert result.exit_code == 2 and "--max-error-ratio must be >= 0 and <= 10" in result.output
