"""The one output seam: --output checked one way, one JSON document, tables readable at 80
columns and without a TTY (CliRunner is not a terminal: rich falls back to 80 columns there)."""
import json

import pytest
from typer.testing import CliRunner

from trainer.cli import app
from trainer.cli._output import Printer

RUNNER = CliRunner()
COMMANDS_WITHOUT_SERVICES = [
    ["convert", "--list"],
    ["runtime", "list"],
    ["spec", "schema"],
    ["spec", "validate", "examples/digits/torch.yaml"],
]


def _no_cut_cells(text: str) -> None:
    assert "…" not in text and "..." not in text.replace("starting workers...", ""), text


def test_conversion_matrix_is_readable_at_80_columns_without_a_tty():
    result = RUNNER.invoke(app, ["convert", "--list"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    _no_cut_cells(result.output)
    assert max(len(line) for line in result.output.splitlines()) <= 80
    for word in ("onnx-int8", "tflite-int8", "mxnet-mmdnn", "quant_pre_process", "TFLiteConverter"):
        assert word in result.output


def test_a_table_that_fits_stays_a_table(capsys):
    p = Printer("table")
    p.table(["job id", "status"], [["digits-1", "SUCCEEDED"], ["digits-2", "FAILED"]])
    out = capsys.readouterr().out
    assert "job id" in out and "SUCCEEDED" in out and ("│" in out or "┃" in out)
    _no_cut_cells(out)


def test_a_table_too_wide_for_its_words_becomes_records(capsys):
    p = Printer("table")
    wide = ["a-very-long-unbreakable-cell-value-number-%d-%s" % (i, "x" * 20) for i in range(4)]
    p.table([f"column{i}" for i in range(4)], [wide])
    out = capsys.readouterr().out
    _no_cut_cells(out)
    for i, cell in enumerate(wide):
        assert f"column{i}" in out and cell in out


@pytest.mark.parametrize("args", COMMANDS_WITHOUT_SERVICES, ids=" ".join)
def test_every_command_prints_one_json_document(args):
    result = RUNNER.invoke(app, [*args, "--output", "json"])
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)


def test_bad_output_value_is_one_line_and_exit_2():
    result = RUNNER.invoke(app, ["runtime", "list", "--output", "yaml"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --output must be table or json, got 'yaml'"


def test_error_text_is_not_rich_markup(tmp_path):
    spec = tmp_path / "pyproject.toml"
    spec.write_text("")
    (tmp_path / "job.yaml").write_text("name: '[/]'\nframework: torch\nentrypoint: x.py:train\n")
    result = RUNNER.invoke(app, ["spec", "validate", str(tmp_path / "job.yaml")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("args, code, kind", [
    (["promote", "m", "--to", "nowhere"], 2, "UsageError"),                  # the API's check
    (["spec", "validate", "does-not-exist.yaml"], 2, None),                   # a command's own error
    (["status"], 2, "UsageError"),                                            # click's: missing argument
    (["promote", "m", "--to", "staging", "--version", "x"], 2, "UsageError"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else str(a))
def test_a_failure_under_output_json_is_one_json_document_on_stdout(args, code, kind):
    """Issue 27: a CI step parsing stdout gets the error too; stderr keeps the red line."""
    for flag in (["--output", "json"], ["-o", "json"], ["--output=json"]):
        result = RUNNER.invoke(app, [*args, *flag])
        assert result.exit_code == code, result.output
        doc = json.loads(result.stdout)
        assert set(doc) == {"error", "exit_code", "kind"} and doc["exit_code"] == code
        assert kind is None or doc["kind"] == kind
        assert result.stderr.startswith("error: ") and doc["error"] in result.stderr.replace("\n", " ")


def test_a_failure_without_json_prints_nothing_on_stdout():
    result = RUNNER.invoke(app, ["promote", "m", "--to", "nowhere"])
    assert result.exit_code == 2 and result.stdout == "" and result.stderr.startswith("error: ")
