"""`trainer convert`: a thin command over `converters.api.convert`."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from trainer.cli._args import file_or_folder, number, regular_file
from trainer.cli._output import OutputOpt, Printer
from trainer.errors import ParityError, UsageError
from trainer.spec import Parity


TOLERANCE_WHY = "a tolerance above 1 passes models that give other answers"


def _tolerances(flag: str):
    """A typer callback for --atol/--rtol: plain numbers (the last one wins) and NAME=NUMBER per
    output; gives (the plain value, {name: value})."""
    default = {"--atol": 1e-4, "--rtol": 1e-3}[flag]
    check = number(flag, 0, 1, low_open=True, why=TOLERANCE_WHY)

    def parse(values):
        if values is None or isinstance(values, tuple) and len(values) == 2 and isinstance(values[1], dict):
            return values
        plain, named = default, {}
        for item in values:
            name, _, text = item.rpartition("=")
            try:
                value = float(text)
            except ValueError:
                raise typer.BadParameter(f"{item!r} is not a number or OUTPUT=NUMBER") from None
            check(value)
            if name:
                named[name] = value
            else:
                plain = value
        return plain, named
    return parse


def _parity_option(name: str, why: str):
    """The --flag of a spec `convert.parity` setting: its default, bounds and help are the spec's
    (trainer.spec.Parity), so `trainer convert` and a job's `convert:` judge alike."""
    field = Parity.model_fields[name]
    bound = {a: getattr(m, a) for m in field.metadata for a in ("gt", "ge", "le") if hasattr(m, a)}
    flag = "--" + name.replace("_", "-")
    return typer.Option(field.default, flag, help=field.description,
                        callback=number(flag, bound.get("gt", bound.get("ge")), bound["le"],
                                        low_open="gt" in bound, why=why))


def register(app: typer.Typer) -> None:
    app.command("convert", help="Convert a model to ONNX / int8 / TFLite / PyTorch / edge bundles, "
                                "with a parity report that gates it.")(convert)


def convert(
    model: Optional[str] = typer.Argument(None, help="Model file/folder, runs:/<run id>/model or "
                                                     "models:/<name>@<alias>."),
    source: Optional[str] = typer.Option(None, "--from", help="Source framework: torch, keras, mxnet, "
                                         "mxnet-mmdnn, caffe, onnx (default: from the MLflow flavor)."),
    to: str = typer.Option("onnx", "--to", help="Comma-separated targets: onnx, onnx-int8, tflite, pytorch."),
    calib: Optional[Path] = typer.Option(None, "--calib", help=".npy inputs or .npz (x/inputs, y/labels). "
                                         "Default for runs: the run's calibration/ artifacts."),
    edge: List[str] = typer.Option([], "--edge", help="Bundle for ARM and run it on this emulated "
                                   "aarch64 CPU (e.g. cortex-a72); repeat or comma-separate."),
    atol: List[str] = typer.Option(["1e-4"], "--atol", help="fp32 targets: absolute tolerance (0 < atol <= 1); "
                                   "NAME=VALUE for one output of a multi-output model (repeat).",
                                   callback=_tolerances("--atol")),
    rtol: List[str] = typer.Option(["1e-3"], "--rtol", help="fp32 targets: relative tolerance (0 < rtol <= 1); "
                                   "NAME=VALUE for one output (repeat).", callback=_tolerances("--rtol")),
    min_agreement: float = _parity_option("min_agreement", "a fraction of samples"),
    max_accuracy_drop: float = _parity_option("max_accuracy_drop", "a fraction"),
    task: str = typer.Option("auto", "--task", help="What int8 parity judges: classification (top-1 agreement, "
                             "accuracy), regression (RMSE/MAE change), embedding (cosine); auto: from the "
                             "labels (int: classification, float: regression) and outputs."),
    max_metric_increase: float = _parity_option("max_metric_increase", "a share"),
    max_error_ratio: float = _parity_option("max_error_ratio", "a ratio"),
    min_cosine: float = _parity_option("min_cosine", "a cosine similarity"),
    int8_scale_tol: float = _parity_option("int8_scale_tol", "a share of the output"),
    diagnose: bool = typer.Option(False, "--diagnose", help="Per-layer diagnosis of passing targets too "
                                  "(a failing target is always diagnosed)."),
    int8_repair: bool = typer.Option(False, "--int8-repair", help="int8 that misses its gate: keep the nodes "
                                     "the diagnosis blames in float, fewest first, until it passes."),
    max_float_fraction: float = _parity_option("max_float_fraction", "a share of the weights"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Load a pickled or TorchScript torch model "
                                      "(it runs code from the file); only for models from a source you trust."),
    output: str = OutputOpt,
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default ./converted/<model>)."),
    list_: bool = typer.Option(False, "--list", help="Print the conversion matrix and exit."),
):
    p = Printer(output)
    if list_:
        return _print_matrix(p)
    if model is None:
        raise UsageError("missing MODEL: give a model file/folder or an MLflow model URI (or --list)")
    _check_inputs(model, calib, edge)
    from converters.api import convert as convert_model

    per_output: dict[str, dict[str, float]] = {}
    for key, given in (("atol", atol), ("rtol", rtol)):
        for name, value in given[1].items():
            per_output.setdefault(name, {})[key] = value
    try:
        report = convert_model(model, source, to, calib=calib, edge=edge, atol=atol[0], rtol=rtol[0], out_dir=out,
                               output_tolerances=per_output,
                               min_agreement=min_agreement, max_accuracy_drop=max_accuracy_drop,
                               trust_pickle=trust_pickle, diagnose=diagnose, int8_repair=int8_repair,
                               max_float_fraction=max_float_fraction, task=task,
                               max_metric_increase=max_metric_increase, max_error_ratio=max_error_ratio,
                               min_cosine=min_cosine, int8_scale_tol=int8_scale_tol)
    except ParityError as err:
        if err.fields.get("report") is not None:
            _print_report(p, err.fields["report"])
        raise
    _print_report(p, report)


def _check_inputs(model: str, calib: Optional[Path], edge: List[str]) -> None:
    """What can be checked before a model is loaded: the model is a file or a folder (never a FIFO
    or a device, which a loader would read forever), --calib a .npy/.npz file, --edge real CPUs."""
    if not model.startswith(("runs:/", "models:/")):
        file_or_folder("model", Path(model).expanduser())
    regular_file("--calib", calib, (".npy", ".npz"))
    cpus = [c.strip() for item in edge for c in item.split(",") if c.strip()]
    if cpus:
        from converters.edge.qemu import check_cpu

        for cpu in cpus:
            check_cpu(cpu)


def _print_matrix(p: Printer) -> None:
    """The full matrix when it fits the terminal; else (80 columns, CI logs) a compact `Y`/`-`
    matrix with a legend naming what each route uses."""
    from converters import registry

    cols = ["from", "runtime", "via", *registry.TARGETS]
    full = [[c if c not in registry.TARGETS else f"--to {c}" for c in cols],
            [[row[c] or "-" for c in cols] for row in registry.matrix()]]

    def render(rows):
        if p.fits(*full):
            return p.table(*full, title="conversion matrix (--from x --to)")
        p.table(["--from", "runtime", *registry.TARGETS],
                [[r["from"], r["runtime"], *("Y" if r[t] else "-" for t in registry.TARGETS)] for r in rows],
                title="conversion matrix: --from (rows) x --to (columns); Y = supported, - = not")
        p.line("how --from exports to ONNX:")
        for r in rows:
            p.line(f"  {r['from']}: {r['via']}", wrap=True)
        p.line("how each --to is built:")
        for t in registry.TARGETS:
            ways: dict[str, list[str]] = {}
            for r in rows:
                if r[t]:
                    ways.setdefault(r[t], []).append(r["from"])
            for way, sources in ways.items():
                scope = "" if len(ways) == 1 else f" (from {', '.join(sources)})"
                p.line(f"  {t}{scope}: {way}", wrap=True)
    p.emit(registry.matrix(), render)


def _print_report(p: Printer, report) -> None:
    """Per target: the verdict and the figure its own criterion judged, size and latency; the
    criterion in words under the table (the full numbers are in report.md / --output json)."""
    from converters.parity import criterion_words, fmt_ms, fmt_size, key_figure

    if p.json:
        p.document(report.to_json())
        return
    nat = report.native_latency_ms
    p.table(["target", "result", "size", "judged figure", "p50 b1 ms (native: " + fmt_ms(nat.get("b1")) + ")"],
            [[r.target, "pass" if r.passed else "FAIL", fmt_size(r.size_bytes), key_figure(r),
              fmt_ms(r.latency_ms.get("b1"))] for r in report.rows],
            title=f"parity: {Path(report.model).name} ({report.source}, {report.exporter}) "
                  f"{'PASSED' if report.passed else 'FAILED'}")
    for r in report.rows:
        p.line(f"{r.target}: {criterion_words(r, report.tolerance)}", wrap=True)
    for line in report.summary_lines():
        p.line(line, wrap=True)
    p.line(f"report: {Path(report.out_dir) / 'report.md'}", whole=True)
    if report.run_id:
        p.line(f"logged to MLflow run {report.run_id} (conversion/)")
