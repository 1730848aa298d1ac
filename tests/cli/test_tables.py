"""The main tables at 80 columns without a TTY (CliRunner and capsys are not terminals: rich
falls back to COLUMNS=80): every cell's words come out whole - none cut to `onnx-i…`, none folded
across lines - and no line is wider than 80 columns except a path or URL printed whole on its own."""
import json

import pytest
from typer.testing import CliRunner

from converters.parity import ConversionReport, Row, Tolerance, compare
from trainer.cli import app
from trainer.cli._output import Printer
from trainer.cli.convert import _print_report
from trainer.cli.jobs import render_failure, render_summary

RUN = "0b3e85f862954c69b033ebc884dc9284"
OUT = f"/home/researcher/.trainer/conversions/{RUN}"


@pytest.fixture(autouse=True)
def eighty_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.delenv("LINES", raising=False)


def assert_whole(text: str, cells, *, whole_lines=(), in_table=True) -> None:
    """Every word of every cell appears unbroken (`in_table`: in the table's own lines, those
    with a border); lines fit 80 columns unless printed whole."""
    assert "…" not in text, text
    table = "\n".join(line for line in text.splitlines() if "│" in line or "┃" in line) if in_table else text
    for cell in cells:
        for word in str(cell).split():
            assert word in table, f"{word!r} cut or folded:\n{text}"
    for line in text.splitlines():
        if len(line) > 80:
            assert any(w in line for w in whole_lines), f"line over 80 columns: {line!r}"


def _summary(**extra) -> dict:
    targets = [
        {"target": "onnx", "verdict": "pass", "figure": "max abs diff 5.7e-06", "size_bytes": 170084,
         "criterion": "|a-b| <= 0.0001 + 0.001*|a|", "path": f"{OUT}/onnx/model.onnx",
         "uri": f"file:///home/researcher/.trainer/mlartifacts/digits/{RUN}/artifacts/conversion/onnx/model.onnx"},
        {"target": "onnx-int8", "verdict": "pass", "figure": "agreement 1.0000, accuracy +0.0000",
         "size_bytes": 55787, "criterion": "top-1 agreement 1.0000 >= 0.98, accuracy delta +0.0000 >= -0.01",
         "path": f"{OUT}/onnx-int8/model.int8.onnx", "uri": "file:///x/onnx-int8/model.int8.onnx"},
        {"target": "onnx-int8@cortex-a72", "verdict": "FAIL", "figure": "agreement 0.9500, accuracy -0.0300",
         "size_bytes": 55787, "criterion": "top-1 agreement 0.9500 < 0.98", "path": None, "uri": None},
    ]
    return {"job_id": "digits-cnn-20261130-113103-a50b", "status": "SUCCEEDED", "mlflow_run_id": RUN,
            "wall_time_s": 143.8, "test_accuracy": 0.9861, "loss": 0.0058,
            "mlflow_url": f"http://127.0.0.1:5000/#/experiments/1/runs/{RUN}?workflowType=machine_learning",
            "conversion": {"status": "FAILED", "targets": targets, "output": OUT, "report": f"{OUT}/report.md",
                           "report_uri": f"file:///x/{RUN}/artifacts/conversion/report.md"}, **extra}


def test_job_summary(capsys):
    s = _summary()
    render_summary(Printer("table"), s)
    out = capsys.readouterr().out
    cells = [s["job_id"], RUN, "SUCCEEDED", "0.9861", "143.8 s"]
    for t in s["conversion"]["targets"]:
        cells += [t["target"], t["verdict"], t["figure"]]
    assert_whole(out, cells, whole_lines=(OUT, "http://", "runs:/"))
    assert f"output: {OUT}\n" in out and "report.md, onnx/model.onnx, onnx-int8/model.int8.onnx" in out
    assert f"run page: {s['mlflow_url']}" in out
    assert "onnx/model.onnx" in out and "onnx-int8/model.int8.onnx" in out and f"output: {OUT}" in out
    assert "│" in out or "┃" in out      # tables, not records: they fit


def test_summary_shows_every_metric_the_job_reported(capsys):
    """The user's own metric names (val_acc, f1, ...), not a fixed list; a long list stops at
    SUMMARY_TABLE_METRICS rows and says how many more there are (80 columns, one screen)."""
    from trainer.api.handle import SUMMARY_TABLE_METRICS

    metrics = {"f1": 0.8123, "val_acc": 0.9311, "loss": 0.0058, "test_accuracy": 0.9861}
    render_summary(Printer("table"), _summary(metrics=metrics))
    out = capsys.readouterr().out
    assert_whole(out, ["f1", "0.8123", "val_acc", "0.9311", "loss", "0.0058", "test_accuracy", "0.9861"],
                 whole_lines=(OUT, "http://", "runs:/"))
    many = {f"metric_{i:02d}": i / 100 for i in range(SUMMARY_TABLE_METRICS + 5)}
    render_summary(Printer("table"), _summary(metrics=many, conversion=None))
    out = capsys.readouterr().out
    assert_whole(out, ["metric_00", f"metric_{SUMMARY_TABLE_METRICS - 1:02d}", "5 more metrics: --output json"],
                 whole_lines=("http://",))
    assert f"metric_{SUMMARY_TABLE_METRICS:02d}" not in out


def test_failure_in_the_users_terms(capsys):
    failure = {"type": "ValueError", "message": "bad batch shape (32, 7) at epoch 2", "where": "train.py:12",
               "function": "train", "code": "raise ValueError(f'bad batch shape {x.shape}')", "rank": 1,
               "node": "10.0.0.5 (3f2a9c1b)", "epoch": 1, "stage": "training"}
    render_summary(Printer("table"), _summary(status="FAILED", conversion=None, failure=failure))
    out = capsys.readouterr().out
    assert_whole(out, ["FAILED"], whole_lines=("http://",))
    assert_whole("ValueError:" + out.split("ValueError:")[1], ["ValueError:", "bad batch shape (32, 7) at epoch 2", "train.py:12", "train()",
                       "rank 1", "10.0.0.5", "last epoch reported: 1"], whole_lines=("http://",), in_table=False)


def test_parity_report_table(capsys):
    tol = Tolerance()
    rng = __import__("numpy").random.default_rng(0)
    a = rng.standard_normal((64, 10))
    labels = a.argmax(-1)
    rows = []
    for name, precision, b in (("onnx", "fp32", a + 1e-6), ("onnx-int8", "int8", a + rng.normal(0, 0.05, a.shape)),
                               ("tflite@cortex-a72", "fp32", a + 1e-2)):
        m = compare(name, precision, a, b, labels, tol)
        rows.append(Row(target=name, precision=precision, artifact=f"{name}/model.onnx", size_bytes=170084,
                        n_samples=64, max_abs_diff=m["max_abs_diff"], max_rel_diff=m["max_rel_diff"],
                        top1_agreement=m["top1_agreement"], accuracy=m["accuracy"],
                        accuracy_delta=m["accuracy_delta"], latency_ms={"b1": 0.0123, "b64": 0.5},
                        passed=m["passed"], criterion=m["criterion"], limit_ratio=m["limit_ratio"]))
    report = ConversionReport(model=f"runs:/{RUN}/model", source="torch", exporter="torch.onnx (dynamo)",
                              inputs=[{"name": "x", "shape": [None, 1, 8, 8], "layout": "NCHW", "dtype": "float32"}],
                              tolerance=tol, native_latency_ms={"b1": 0.2, "b64": 1.5}, native_accuracy=0.98,
                              native_size_bytes=200000, rows=rows, out_dir=OUT)
    _print_report(Printer("table"), report)
    out = capsys.readouterr().out
    assert_whole(out, [r.target for r in rows] + ["pass", "FAIL", "166.1 KiB", "max abs diff 1e-06"],
                 whole_lines=(OUT,))
    assert "│ tflite@cortex-a72 │" in out
    # The report says in words which criterion applied to each target.
    print(out)
    out = " ".join(out.split())
    assert "onnx-int8: int8 criterion: the converted model must pick the native model's top-1 class" in out
    assert "onnx: fp32 criterion: every output element within 0.0001 + 0.001 x |native|" in out


def test_conversion_matrix_is_a_compact_matrix_with_a_legend():
    result = CliRunner().invoke(app, ["convert", "--list"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    from converters import registry

    assert_whole(result.output, [*registry.TARGETS, *registry.FRONTENDS, "Y"])
    assert_whole(result.output, ["quant_pre_process", "TFLiteConverter", "onnx2torch"], in_table=False)
    torch_row = next(line for line in result.output.splitlines() if line.startswith("│ torch "))
    assert torch_row.split("│")[3:8] == [" Y    ", " Y         ", " Y      ", " -           ", " Y       "]
    assert "Y = supported" in result.output


def test_wide_terminal_gets_the_full_matrix():
    result = CliRunner().invoke(app, ["convert", "--list"], env={"COLUMNS": "400"})
    assert "quant_pre_process + quantize_static (QDQ)" in result.output and "--to onnx-int8" in result.output


def test_runtime_list_and_jobs_table(capsys):
    result = CliRunner().invoke(app, ["runtime", "list"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    rows = json.loads(CliRunner().invoke(app, ["runtime", "list", "-o", "json"]).stdout)
    assert_whole(result.output, [r["name"] for r in rows] + [r["path"] for r in rows], in_table=False)


def test_jobs_list_keeps_one_row_per_job_at_80_columns(monkeypatch):
    from trainer import api

    jobs = [{"job_id": f"digits-cnn-20261130-11310{i}-a50b", "name": "digits-cnn", "status": "SUCCEEDED",
             "run_id": RUN, "start_time": 1796038744.0 + i, "end_time": None} for i in range(3)]
    monkeypatch.setattr(api, "list_jobs", lambda address=None: jobs)
    result = CliRunner().invoke(app, ["list"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert_whole(result.output, [j["job_id"] for j in jobs] + ["SUCCEEDED"])
    assert sum("SUCCEEDED" in line for line in result.output.splitlines()) == 3
    wide = CliRunner().invoke(app, ["list"], env={"COLUMNS": "120"})
    assert f"│ {RUN} │" in wide.output


def test_version_names_trainer_ray_mlflow_and_frameworks():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    names = [line.split()[0] for line in result.output.splitlines()]
    assert names[:3] == ["trainer", "ray", "mlflow"] and "torch" in names


def test_shell_completion_is_installable():
    import subprocess
    import sys
    from pathlib import Path

    import os

    trainer = str(Path(sys.executable).parent / "trainer")
    # Typer's own switch: take the shell named here instead of detecting the parent process's
    # (a test run whose parent is no shell - a detached CI step - detects none).
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    shown = subprocess.run([trainer, "--show-completion", "bash"], capture_output=True, text=True, timeout=120,
                           env=env)
    assert shown.returncode == 0, shown.stderr
    assert "_TRAINER_COMPLETE" in shown.stdout and "complete" in shown.stdout
