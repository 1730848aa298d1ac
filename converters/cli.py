"""`trainer convert`: a thin command over `converters.api.convert`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from trainer.console import fail
from trainer.errors import ParityError, TrainerError, UsageError


def register(app: typer.Typer) -> None:
    """Add `convert` to the trainer CLI."""
    app.command("convert", help="Convert a model to ONNX / int8 / TFLite / PyTorch / edge bundles, "
                                "with a parity report that gates it.")(convert_cmd)


def convert_cmd(
    model: Optional[str] = typer.Argument(None, help="Model file/folder, runs:/<run id>/model or "
                                                     "models:/<name>@<alias>."),
    source: Optional[str] = typer.Option(None, "--from", help="Source framework: torch, keras, mxnet, "
                                         "mxnet-mmdnn, caffe, onnx (default: from the MLflow flavor)."),
    to: str = typer.Option("onnx", "--to", help="Comma-separated targets: onnx, onnx-int8, tflite, pytorch."),
    calib: Optional[Path] = typer.Option(None, "--calib", help=".npy inputs or .npz (x/inputs, y/labels). "
                                         "Default for runs: the run's calibration/ artifacts."),
    edge: list[str] = typer.Option([], "--edge", help="Bundle for ARM and run it on this emulated "
                                   "aarch64 CPU (e.g. cortex-a72); repeat or comma-separate."),
    atol: float = typer.Option(1e-4, "--atol", help="fp32 targets: absolute tolerance."),
    rtol: float = typer.Option(1e-3, "--rtol", help="fp32 targets: relative tolerance."),
    min_agreement: float = typer.Option(0.98, "--min-agreement", help="int8 targets: min top-1 agreement."),
    max_accuracy_drop: float = typer.Option(0.01, "--max-accuracy-drop",
                                            help="int8 targets: max accuracy loss vs native."),
    output: str = typer.Option("table", "--output", "-o", help="table or json."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default ./converted/<model>)."),
    list_: bool = typer.Option(False, "--list", help="Print the conversion matrix and exit."),
):
    from rich.console import Console

    console = Console()
    try:
        if list_:
            _print_matrix(console, output)
            return
        if model is None:
            raise UsageError("missing MODEL: give a model file/folder or an MLflow model URI (or --list)")
        if output not in ("table", "json"):
            raise UsageError(f"--output must be table or json, got {output!r}")
        from converters.api import convert

        report = convert(model, source, to, calib=calib, edge=edge, atol=atol, rtol=rtol, out_dir=out,
                         min_agreement=min_agreement, max_accuracy_drop=max_accuracy_drop)
        _print_report(console, report, output)
    except ParityError as err:
        report = getattr(err, "report", None)
        if report is not None:
            _print_report(console, report, output)
        fail(err)
    except TrainerError as err:
        fail(err)


def _print_matrix(console, output: str) -> None:
    from converters import registry

    if output == "json":
        import json

        typer.echo(json.dumps(registry.matrix(), indent=2))
        return
    from rich.table import Table

    table = Table(title="conversion matrix (--from x --to)")
    cols = ["from", "runtime", "via", *registry.TARGETS]
    for c in cols:
        table.add_column(c if c not in registry.TARGETS else f"--to {c}")
    for row in registry.matrix():
        table.add_row(*[row[c] or "-" for c in cols])
    console.print(table)


def _print_report(console, report, output: str) -> None:
    from converters.parity import fmt_delta, fmt_ms, fmt_num, fmt_size

    if output == "json":
        typer.echo(report.to_json())
        return
    from rich.table import Table

    status = "[green]PASSED[/green]" if report.passed else "[red]FAILED[/red]"
    table = Table(title=f"parity: {Path(report.model).name} ({report.source}, {report.exporter}) {status}")
    for c in ("target", "size", "max abs diff", "max rel diff", "top-1 agreement", "accuracy delta",
              "latency p50 b1 native -> converted", "b64", "result"):
        table.add_column(c)
    nat = report.native_latency_ms
    for r in report.rows:
        table.add_row(r.target, fmt_size(r.size_bytes), f"{r.max_abs_diff:.3g}", f"{r.max_rel_diff:.3g}",
                      fmt_num(r.top1_agreement), fmt_delta(r.accuracy_delta),
                      f"{fmt_ms(nat.get('b1'))} -> {fmt_ms(r.latency_ms.get('b1'))}",
                      f"{fmt_ms(nat.get('b64'))} -> {fmt_ms(r.latency_ms.get('b64'))}",
                      "[green]pass[/green]" if r.passed else "[red]FAIL[/red]")
    console.print(table)
    console.print(f"output: {report.out_dir}" + (f"  (logged to run {report.run_id})" if report.run_id else ""),
                  highlight=False, markup=False)
