"""Convert a native model to deployable targets and prove they give the same answers.

    convert(model, source, targets, calib=None, edge=(), atol=1e-4, rtol=1e-3, out_dir=None,
            run_id=None) -> ConversionReport
    convert_run(run_id, targets, edge=(), atol=1e-4, ...) -> ConversionReport

Everything is written into a temporary folder next to `out_dir` and moved into place only when
every target is within tolerance. When parity fails, only the report (JSON, Markdown, PNG, all
saying FAILED) lands in `out_dir` (with `keep_passed`, also the targets that passed: the report's
`kept` names them), and ParityError (carrying the report) is raised after it is written; on any other error nothing is left behind. When the model came from an MLflow run (or
`run_id` is given) the output folder is logged to that run under `conversion/`, with the parity
metrics (`parity.<target>.max_abs_diff`, ...) in one log_batch; a model whose run trainer already
registered as a model version is logged to a new run of its own instead (tagged
`trainer.convert.source_run`), so a registered version's evidence is never written over.
"""
from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from converters import registry
from converters.parity import (TASKS, ConversionReport, Row, Tolerance, compare, latencies, resolve_task,
                               write_report)
from converters.sources import (Calibration, check_shape, fmt_shape, frontend_for, load_calibration,
                                model_digest, resolve_model, run_calibration, run_model_info, split)
from trainer.errors import ConversionError, ParityError, TrainerError, UnknownNameError, UsageError, first_line
from trainer.home import resolve_tracking_uri, trainer_home

DEFAULT_MAX_FLOAT_FRACTION = 0.5   # int8 repair: at most half the weights may stay float
# Emulated aarch64 is ~20-50x slower: with --edge every row (x86 and ARM alike, so their figures
# compare) is judged on at most this many held-out samples.
EDGE_SAMPLES = 256
EDGE_FORMATS = (".onnx", ".tflite")
TAG_TRUST_PICKLE = "trainer.convert.trust_pickle"   # set on the source run when --trust-pickle was given
# An ad-hoc conversion of a registered version's model logs to a run of its own, tagged with the
# source run: the registered version's evidence (its run's conversion/ and parity.* metrics) is
# what its signed provenance froze, and nothing later writes over it (issue 22).
TAG_CONVERSION_OF = "trainer.convert.source_run"
__all__ = ["convert", "convert_run", "ConversionReport", "Tolerance"]


@dataclass
class Checks:
    """What to do beyond judging: diagnose passing targets too, repair failing int8 ones."""

    diagnose: bool = False
    int8_repair: bool = False
    max_float_fraction: float = DEFAULT_MAX_FLOAT_FRACTION


def convert(model: str | Path, source: str | None, targets: Sequence[str] | str,
            calib: str | Path | np.ndarray | Calibration | None = None, edge: Iterable[str] = (),
            atol: float = 1e-4, rtol: float = 1e-3, out_dir: str | Path | None = None,
            run_id: str | None = None, *, min_agreement: float = 0.98,
            max_accuracy_drop: float = 0.01, log_to_mlflow: bool = True,
            tracking_uri: str | None = None, trust_pickle: bool = False, diagnose: bool = False,
            int8_repair: bool = False, max_float_fraction: float = DEFAULT_MAX_FLOAT_FRACTION,
            task: str = "auto", max_metric_increase: float = 0.02, max_error_ratio: float = 0.25,
            min_cosine: float = 0.99, int8_scale_tol: float = 0.05,
            output_tolerances: dict[str, dict[str, float]] | None = None,
            keep_passed: bool = False) -> ConversionReport:
    """Convert `model` (a file/folder or `runs:/...` / `models:/name@alias`) from the `source`
    framework (None: from the MLflow model's flavor) into each of `targets`, judge parity on the
    calibration samples (held-out half), optionally bundle for and run on emulated ARM `edge`
    CPUs. Returns the report; raises ParityError (with `.report`) when a target misses its
    tolerance, UsageError / ConversionError / UnsupportedOpsError on bad inputs.

    A model whose format runs code when it loads (a pickled or TorchScript torch model) is
    refused unless `trust_pickle` (`--trust-pickle`); the opt-in is recorded in the report
    (`trust_pickle`, a note) and, for a model from a run, as the run's `trainer.convert.trust_pickle`
    tag.

    A target that misses its gate is diagnosed layer by layer (`Row.diagnosis`, its one-line
    `summary` in `report.summary_lines()`); `diagnose` asks for it on passing targets too (it
    costs two runs of the float and the converted model per target, so it is off otherwise).
    `int8_repair`: an int8 target that misses its gate is rebuilt with the nodes the diagnosis
    blames kept in float, fewest first, until it passes or more than `max_float_fraction` of the
    weights would stay float; the passing rebuild replaces it, with `Row.repair` saying what was
    kept in float and what it cost.

    `keep_passed`: when some target misses its gate, the targets that passed are published
    (and logged) all the same, next to the report; the edge bundle only when every row passed."""
    targets = _names(targets)
    edge = _names(edge)
    if not targets:
        raise UsageError("no targets given; use --to with one or more of: " + ", ".join(registry.TARGETS))
    for t in targets:
        if t not in registry.TARGETS:
            raise UnknownNameError("target (--to)", t, list(registry.TARGETS))
    if source is not None:
        registry.check_names(source, targets)
    tracking_uri = resolve_tracking_uri(tracking_uri)
    if task not in ("auto", *TASKS):
        raise UnknownNameError("task (--task)", task, ["auto", *TASKS])
    for flag, value in (("max_metric_increase", max_metric_increase), ("max_error_ratio", max_error_ratio),
                        ("min_cosine", min_cosine), ("int8_scale_tol", int8_scale_tol)):
        if not (np.isfinite(value) and 0 <= value <= (1 if flag == "min_cosine" else 10)):
            raise UsageError(f"{flag} must be a number in [0, {1 if flag == 'min_cosine' else 10}], got {value}")
    tol = Tolerance(atol=atol, rtol=rtol, min_agreement=min_agreement, max_accuracy_drop=max_accuracy_drop,
                    task=task, max_metric_increase=max_metric_increase, max_error_ratio=max_error_ratio,
                    min_cosine=min_cosine, int8_scale_tol=int8_scale_tol,
                    outputs=_output_tolerances(output_tolerances))
    if not 0 < max_float_fraction <= 1:
        raise UsageError(f"max_float_fraction (--max-float-fraction) must be in (0, 1], got {max_float_fraction:g}: "
                         f"it is the share of the weights int8 repair may keep in float")
    checks = Checks(diagnose=diagnose, int8_repair=int8_repair, max_float_fraction=max_float_fraction)
    out_dir = _out_dir(model, out_dir)
    _check_replaceable(out_dir)
    created = [p for p in [out_dir.parent, *out_dir.parent.parents] if not p.exists()]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    work = Path(tempfile.mkdtemp(prefix="trainer-convert-"))
    try:
        report = _convert(str(model), source, targets, calib, edge, tol, staging, work, run_id, out_dir, tracking_uri,
                          trust_pickle, checks)
        report.kept = _kept(report, keep_passed)
        write_report(report, staging)
        _publish(staging, out_dir, None if report.passed else report.kept)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        for p in created:  # folders this call made, innermost first; only if still empty
            if p.exists() and not any(p.iterdir()):
                p.rmdir()
        if isinstance(err, TrainerError) or not isinstance(err, Exception):
            raise
        raise ConversionError(f"conversion failed: {type(err).__name__}: {first_line(err)}") from err
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if log_to_mlflow and report.run_id:
        own_run = run_id is None and _registered(report.run_id, tracking_uri)
        if own_run:
            report.run_id = _conversion_run(report.run_id, str(model), tracking_uri)
        _log_to_run(report, out_dir, tracking_uri)
        if own_run:
            _end_run(report.run_id, tracking_uri)
    if not report.passed:
        failed = ", ".join(f"{r.target} ({r.criterion})" for r in report.failed_rows)
        where = next((f"; {r.target}: {r.diagnosis['summary']}" for r in report.failed_rows
                      if r.diagnosis and r.diagnosis.get("summary")), "")
        err = ParityError(f"parity failed for {failed}{where}; report: {out_dir / 'report.md'}", report=report)
        err.report = report
        raise err
    return report


def convert_run(run_id: str, targets: Sequence[str] | str, edge: Iterable[str] = (),
                atol: float = 1e-4, rtol: float = 1e-3, *, source: str | None = None,
                artifact_path: str = "model", out_dir: str | Path | None = None,
                calib: str | Path | np.ndarray | Calibration | None = None,
                min_agreement: float = 0.98, max_accuracy_drop: float = 0.01,
                tracking_uri: str | None = None, trust_pickle: bool = False, diagnose: bool = False,
                int8_repair: bool = False, max_float_fraction: float = DEFAULT_MAX_FLOAT_FRACTION,
                task: str = "auto", max_metric_increase: float = 0.02, max_error_ratio: float = 0.25,
                min_cosine: float = 0.99, int8_scale_tol: float = 0.05,
            output_tolerances: dict[str, dict[str, float]] | None = None,
            keep_passed: bool = False) -> ConversionReport:
    """Convert `runs:/<run_id>/<artifact_path>` with the run's logged calibration samples and
    log everything back into that run (what a job with a `convert:` section does after training).
    Output goes to `$TRAINER_HOME/conversions/<run_id>` unless `out_dir` is given."""
    if out_dir is None:
        out_dir = trainer_home() / "conversions" / run_id
    return convert(f"runs:/{run_id}/{artifact_path}", source, targets, calib=calib, edge=edge,
                   atol=atol, rtol=rtol, out_dir=out_dir, run_id=run_id,
                   min_agreement=min_agreement, max_accuracy_drop=max_accuracy_drop, tracking_uri=tracking_uri,
                   trust_pickle=trust_pickle, diagnose=diagnose, int8_repair=int8_repair,
                   max_float_fraction=max_float_fraction, task=task, max_metric_increase=max_metric_increase,
                   max_error_ratio=max_error_ratio, min_cosine=min_cosine, int8_scale_tol=int8_scale_tol,
                   output_tolerances=output_tolerances, keep_passed=keep_passed)


# -- the steps -------------------------------------------------------------------------------

def _convert(model: str, source: str | None, targets: list[str], calib, edge: list[str],
             tol: Tolerance, staging: Path, work: Path, run_id: str | None,
             out_dir: Path, tracking_uri: str, trust_pickle: bool = False,
             checks: Checks | None = None) -> ConversionReport:
    checks = checks or Checks()
    resolved = resolve_model(model, work / "download", tracking_uri)
    source = source or frontend_for(resolved.path)
    if source is None:
        raise UsageError(f"--from is required for {model}: one of {', '.join(registry.FRONTENDS)}")
    registry.check_names(source, targets)
    for t in targets:
        if registry.route(source, t) is None:
            raise UsageError(f"{source} -> {t} is not a supported conversion (see trainer convert --list)")
    frontend = registry.frontend(source)
    target_objs = {t: registry.target(t) for t in targets}
    if edge:
        from converters.edge.qemu import check_cpu
        from converters.edge.setup import require_qemu, require_root

        for cpu in edge:
            check_cpu(cpu)
        require_qemu(), require_root()  # fail before the (slow) export, with the setup command
    run_id = run_id or resolved.run_id
    path = resolved.path
    notes: list[str] = frontend.admit(path, trust_pickle)   # before anything else loads the model
    if trust_pickle and not notes:
        notes.append(f"--trust-pickle given; {source} models load without unpickling, so nothing relied on it")

    cal = _calibration(calib, run_id, tracking_uri)
    expected = frontend.input_shape(path)
    if cal is not None:
        check_shape(cal.x, expected)
        cal_set, eval_set, how = split(cal)
        notes.append(how)
    else:
        example = frontend.example_input(path)
        if example is None and expected and all(d is not None for d in expected[1:]):
            example = np.zeros((1, *expected[1:]), np.float32)
        if example is None:
            raise UsageError(f"{source}: calibration data is needed to know the input shape and "
                             f"to judge parity: pass --calib DATA (.npy/.npz)")
        rng = np.random.default_rng(0)
        x = rng.standard_normal((64, *example.shape[1:])).astype(np.float32)
        cal_set = eval_set = Calibration(x, None, "random")
        notes.append(f"no calibration data: parity judged on 64 N(0,1) random inputs of shape "
                     f"{fmt_shape(x.shape, batch=True)}")
        if any(o.precision == "int8" for o in target_objs.values()):
            raise UsageError("int8 targets need real calibration samples: pass --calib DATA (.npy/.npz)")

    if edge and len(eval_set.x) > EDGE_SAMPLES:
        eval_set = Calibration(eval_set.x[:EDGE_SAMPLES], None if eval_set.y is None else eval_set.y[:EDGE_SAMPLES],
                               eval_set.origin)
        notes.append(f"--edge: every target judged on the same first {EDGE_SAMPLES} held-out samples "
                     "(emulated aarch64 is slow)")
    export = frontend.export(path, work / "export", cal_set.x[:2])
    notes += [f"export: {n}" for n in export.notes]
    native_run = frontend.runner(path)
    native_out = native_run(eval_set.x) if native_run else frontend.predict(path, eval_set.x)
    native_lat = latencies(native_run, eval_set.x)
    native_acc = _accuracy(native_out, eval_set.y)
    names = list(native_out) if isinstance(native_out, dict) else ["output"]
    unknown = sorted(set(tol.outputs) - set(names))
    if unknown:
        raise UsageError(f"tolerance given for output {', '.join(unknown)}, which the model does not have; "
                         f"its outputs: {', '.join(names)}")
    if isinstance(native_out, dict) and edge:
        raise UsageError(f"--edge handles models with one output; this one has {len(names)} ({', '.join(names)})")

    rows: list[Row] = []
    artifacts: dict[str, Path] = {}
    for name, target in target_objs.items():
        built = target.build(export, staging / name, cal_set.x if cal is not None else None)
        artifacts[name] = Path(built.artifact)
        row, out = _judge(name, target, built, staging, eval_set, native_out, tol)
        if checks.diagnose or not row.passed:
            row.diagnosis = _diagnosis(target, export, built, eval_set.x, frontend, path, native_out, out, tol)
        if not row.passed and checks.int8_repair and target.precision == "int8":
            row = _repair(name, target, export, built, row, cal_set.x, eval_set, native_out, tol, staging,
                          work / f"repair-{name}", checks.max_float_fraction)
        rows.append(row)
    if edge:
        info = run_model_info(run_id, tracking_uri) if run_id else {}
        source_of = {"model": model, "run_id": run_id, "model_version": _model_version(model),
                     "model_digest": model_digest(path)}
        rows += _edge_rows(edge, artifacts, target_objs, export, eval_set, native_out, tol, staging,
                           source=source_of, info=info)

    task, task_how = resolve_task(tol.task, native_out, eval_set.y)
    return ConversionReport(
        task=task, task_how=task_how, model=model, source=source, exporter=export.exporter,
        inputs=[dict(name=i.name, shape=list(i.shape), layout=i.layout, dtype=i.dtype) for i in export.inputs],
        tolerance=tol, native_latency_ms=native_lat, native_accuracy=native_acc,
        native_size_bytes=_size(path), rows=rows, notes=notes, out_dir=str(out_dir), run_id=run_id,
        trust_pickle=trust_pickle)


def _judge(name: str, target, built, staging: Path, eval_set: Calibration, native_out: np.ndarray,
           tol: Tolerance) -> tuple[Row, np.ndarray]:
    """Run the built artifact on the held-out samples and judge it against the native outputs:
    (its row, its outputs)."""
    artifact = Path(built.artifact)
    run = target.runner(artifact)
    out = run(eval_set.x) if run else target.predict(artifact, eval_set.x)
    m = compare(name, target.precision, native_out, out, eval_set.y, tol)
    return Row(target=name, precision=target.precision, artifact=str(artifact.relative_to(staging)),
               size_bytes=_size(artifact.parent if artifact.suffix == ".py" else artifact),
               n_samples=len(eval_set.x),
               max_abs_diff=m["max_abs_diff"], max_rel_diff=m["max_rel_diff"],
               top1_agreement=m["top1_agreement"], accuracy=m["accuracy"],
               accuracy_delta=m["accuracy_delta"], latency_ms=latencies(run, eval_set.x),
               passed=m["passed"], criterion=m["criterion"], limit_ratio=m["limit_ratio"],
               notes=list(built.notes), task=m["task"], task_metrics=m["task_metrics"],
               outputs=m.get("outputs")), out


def _diagnosis(target, export, built, x: np.ndarray, frontend, path: Path, native_out: np.ndarray,
               out: np.ndarray, tol: Tolerance) -> dict | None:
    """The target's per-layer diagnosis, timed: the target's own (int8 against its float model);
    for an fp32 ONNX model, each layer against the native model's layer (where the frontend maps
    ONNX nodes back to its layers); else the output element that differs most. A diagnosis that
    breaks says so in the report instead of hiding the verdict it was meant to explain."""
    from converters.diagnose import fp32_diagnosis, output_diagnosis

    t0 = time.perf_counter()
    try:
        found = target.diagnose(export, built, x)
        artifact = Path(built.artifact)
        if found is None and target.precision == "fp32" and artifact.suffix == ".onnx":
            found = fp32_diagnosis(artifact, x, export.inputs[0].name,
                                   lambda names, xs: frontend.layer_outputs(path, xs, names), tol.atol, tol.rtol,
                                   scope=frontend.layer_scope)
        if found is None:
            found = output_diagnosis(native_out, out, tol.atol, tol.rtol)
    except Exception as err:  # the verdict stands without it; the report names what broke
        found = dict(kind=target.precision, error=f"{type(err).__name__}: {first_line(err)}",
                     summary=f"diagnosis failed: {type(err).__name__}: {first_line(err)}")
    if found is not None:
        found["seconds"] = round(time.perf_counter() - t0, 3)
    return found


def _repair(name: str, target, export, built, row: Row, cal_x: np.ndarray, eval_set: Calibration,
            native_out: np.ndarray, tol: Tolerance, staging: Path, work: Path, max_float_fraction: float) -> Row:
    """int8 repair (Target.repair): the passing rebuild replaces the artifact and its row (which
    keeps the diagnosis of the plain model it replaced); a repair that does not reach the gate
    leaves the failing row, with what was tried."""
    if not row.diagnosis or "ranked" not in row.diagnosis:
        row.repair = dict(passed=False, stopped="no per-layer diagnosis to rank the nodes by")
        return row

    def judge(path: Path) -> dict:
        run = target.runner(path)
        out = run(eval_set.x) if run else target.predict(path, eval_set.x)
        return compare(name, target.precision, native_out, out, eval_set.y, tol)

    t0 = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    result = target.repair(export, built, row.diagnosis, cal_x, work, judge, max_float_fraction)
    if result is None:
        row.repair = dict(passed=False, stopped="the diagnosis blames no node that lost precision")
        return row
    repaired, info = result
    info["seconds"] = round(time.perf_counter() - t0, 3)
    info["size_before_bytes"] = row.size_bytes
    info["before"] = row.criterion
    if repaired is None or not info["passed"]:
        row.repair = info
        return row
    dst = Path(built.artifact)
    shutil.move(str(repaired.artifact), dst)
    repaired.artifact = dst
    new, _ = _judge(name, target, repaired, staging, eval_set, native_out, tol)
    new.diagnosis = row.diagnosis
    if new.diagnosis is not None:
        new.diagnosis["of"] = "the plain int8 model, before repair"
    new.repair = info
    return new


def _model_version(model: str) -> str | None:
    """The registered version a `models:/NAME/VERSION` (or `models:/NAME@ALIAS`) URI names, else None."""
    if not model.startswith("models:/"):
        return None
    return model[len("models:/"):]


def _edge_rows(cpus: list[str], artifacts: dict[str, Path], target_objs: dict, export, eval_set: Calibration,
               native_out: np.ndarray, tol: Tolerance, staging: Path, source: dict | None = None,
               info: dict | None = None) -> list[Row]:
    from converters.edge.bundle import write_bundle
    from converters.edge.qemu import run_bundle

    models = {n: p for n, p in artifacts.items() if p.suffix in EDGE_FORMATS}
    if not models:
        raise UsageError("--edge needs at least one of the onnx, onnx-int8 or tflite targets in --to")
    info = info or {}
    bundle = write_bundle(staging / "edge", models=models, inputs=export.inputs, labels=info.get("class_names"),
                          preprocessing=info.get("preprocessing"), source=source)
    x, y = eval_set.x, eval_set.y      # the samples the x86 rows were judged on (see _convert)
    rows = []
    for cpu in cpus:
        t0 = time.perf_counter()
        outputs = run_bundle(bundle, x, cpu)
        wall = time.perf_counter() - t0
        for name, out in outputs.items():
            in_bundle = Path(bundle) / models[name].name
            rows.append(_edge_row(f"{name}@{cpu}", target_objs[name].precision, native_out[:len(x)], out, y, tol,
                                  artifact=str((in_bundle if in_bundle.exists() else Path(bundle)).relative_to(staging)),
                                  size_bytes=_size(models[name]),
                                  note=f"emulated aarch64 (qemu -cpu {cpu}), {len(x)} samples, "
                                       f"bundle run took {wall:.1f} s wall"))
    return rows


def _edge_row(target: str, precision: str, native_out: np.ndarray, out: np.ndarray, y: np.ndarray | None,
              tol: Tolerance, *, artifact: str, size_bytes: int, note: str) -> Row:
    """One model of the bundle as run on one emulated CPU, judged against the native outputs;
    a miss is diagnosed by the output that differs (which element, by how much): the device
    gives outputs only, no layer to look into."""
    from converters.diagnose import output_diagnosis

    m = compare(target, precision, native_out, out, y, tol)
    row = Row(target=target, precision=precision, artifact=artifact, size_bytes=size_bytes, n_samples=len(out),
              max_abs_diff=m["max_abs_diff"], max_rel_diff=m["max_rel_diff"],
              top1_agreement=m["top1_agreement"], accuracy=m["accuracy"],
              accuracy_delta=m["accuracy_delta"], latency_ms={"b1": None, "b64": None},
              passed=m["passed"], criterion=m["criterion"], limit_ratio=m["limit_ratio"],
              task=m["task"], task_metrics=m["task_metrics"], notes=[note])
    if not row.passed:
        t0 = time.perf_counter()
        row.diagnosis = output_diagnosis(native_out, out, tol.atol, tol.rtol)
        row.diagnosis["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def _output_tolerances(given: dict | None) -> dict[str, dict[str, float]]:
    """{output name: {"atol": x, "rtol": y}}, each a number in (0, 1]; UsageError otherwise."""
    out: dict[str, dict[str, float]] = {}
    for name, tols in (given or {}).items():
        if not isinstance(name, str) or not name or not isinstance(tols, dict):
            raise UsageError(f"output tolerances must map an output name to {{'atol': .., 'rtol': ..}}, got {name!r}")
        for key, value in tols.items():
            if key not in ("atol", "rtol"):
                raise UsageError(f"output {name}: unknown tolerance {key!r} (atol or rtol)")
            if not isinstance(value, (int, float)) or not (np.isfinite(value) and 0 < value <= 1):
                raise UsageError(f"output {name}: {key} must be > 0 and <= 1, got {value!r}")
        out[name] = {k: float(v) for k, v in tols.items()}
    return out


def _calibration(calib, run_id: str | None, tracking_uri: str) -> Calibration | None:
    if isinstance(calib, Calibration):
        return calib
    if isinstance(calib, np.ndarray):
        return Calibration(np.ascontiguousarray(calib, np.float32), None, "array")
    if calib is not None:
        return load_calibration(Path(calib))
    if run_id:
        return run_calibration(run_id, tracking_uri)
    return None


def _kept(report: ConversionReport, keep_passed: bool) -> list[str]:
    """The targets whose output is published: every one when all passed; when some failed, the
    x86 targets that passed if `keep_passed` (an edge row is a check of a bundle, not an output)."""
    if report.passed or keep_passed:
        return [r.target for r in report.rows if r.passed and "@" not in r.target]
    return []


def _publish(staging: Path, out_dir: Path, keep: list[str] | None) -> None:
    """Move the staged output into place: all of it (`keep` None), else the report and the
    target folders named in `keep`."""
    if keep is not None:
        keep_names = {"report.json", "report.md", "report.png", *keep}
        for p in list(staging.iterdir()):
            if p.name not in keep_names:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    old = None
    if out_dir.exists():
        _check_replaceable(out_dir)
        old = out_dir.with_name(f".{out_dir.name}.old-{time.time_ns()}")
        out_dir.rename(old)
    staging.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_replaceable(out_dir: Path) -> None:
    """Only a folder this command wrote (or an empty one) may be replaced: publishing renames the
    old folder away and deletes it, so a project folder that merely holds some report.json (say
    `--out .`) must never qualify.

    What this command wrote is recognised by its report.json, which records the folder it was
    written into (`out_dir`, the resolved path): a report.json of anything else, or a folder
    moved here from elsewhere, does not match. No marker file is added to the output (its
    contents are logged to MLflow and listed by users as they are)."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if out_dir.is_dir() and not out_dir.is_symlink() and (not any(out_dir.iterdir()) or _written_here(out_dir)):
        return
    what = "a file" if out_dir.is_file() else "a folder trainer convert did not write"
    raise UsageError(f"--out {out_dir}: exists and is {what}; it would be replaced, so only an empty "
                     f"folder or an earlier conversion's output is; choose another --out or remove it")


REPORT_MAX_BYTES = 64 * 1024 * 1024


def _written_here(out_dir: Path) -> bool:
    """Whether out_dir/report.json is a conversion report written into this very folder."""
    import json
    import stat

    report = out_dir / "report.json"
    try:
        st = report.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > REPORT_MAX_BYTES:
            return False
        data = json.loads(report.read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return (isinstance(data, dict) and data.get("out_dir") == str(out_dir)
            and isinstance(data.get("rows"), list) and data.get("status") in ("PASSED", "FAILED"))


# The tag trainer's registration puts on the versions it makes (trainer.promotion.registration
# TAG_RUN; converters may not import trainer.promotion): their gates read frozen evidence.
_TAG_REGISTERED_RUN = "trainer.run_id"


def _registered(run_id: str, tracking_uri: str) -> bool:
    """Whether trainer registered a model version from `run_id` (its evidence is then frozen; a
    version registered by hand, with MLflow alone, is not gated by trainer and keeps its run)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if not re.fullmatch(r"[0-9A-Za-z_-]{1,64}", run_id):
        return False
    try:
        found = MlflowClient(tracking_uri, registry_uri=tracking_uri).search_model_versions(
            f"run_id = '{run_id}'", max_results=50)
    except MlflowException as err:
        raise ConversionError(f"cannot read MLflow's model versions of run {run_id}: {first_line(err)}") from err
    return any((mv.tags or {}).get(_TAG_REGISTERED_RUN) == run_id for mv in found)


def _conversion_run(source_run: str, model: str, tracking_uri: str) -> str:
    """A new run, in the source run's experiment, for an ad-hoc conversion of a registered model."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        experiment = client.get_run(source_run).info.experiment_id
        run = client.create_run(experiment, tags={TAG_CONVERSION_OF: source_run, "trainer.convert.model": model[:500],
                                                  "mlflow.runName": f"convert-{source_run[:8]}"})
    except MlflowException as err:
        raise ConversionError(f"cannot open a conversion run beside {source_run}: {first_line(err)}") from err
    return run.info.run_id


def _end_run(run_id: str, tracking_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri).set_terminated(run_id)


def _log_to_run(report: ConversionReport, out_dir: Path, tracking_uri: str) -> None:
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    ts = int(time.time() * 1000)
    try:
        client.log_artifacts(report.run_id, str(out_dir), "conversion")
        metrics = [Metric(k, v, ts, 0) for k, v in report.metrics().items() if np.isfinite(v)]
        client.log_batch(report.run_id, metrics=metrics)
        client.log_table(report.run_id, data=report.table(), artifact_file="conversion/parity_table.json")
        if report.trust_pickle:
            client.set_tag(report.run_id, TAG_TRUST_PICKLE, "true")
    except MlflowException as err:
        raise ConversionError(f"converted, but logging to MLflow run {report.run_id} failed: "
                              f"{first_line(err)}; the output is in {out_dir}") from err


def _out_dir(model: str | Path, out_dir: str | Path | None) -> Path:
    if out_dir is not None:
        return Path(out_dir).expanduser().resolve()
    text = str(model).rstrip("/")
    stem = text.split("/")[1] if text.startswith("runs:/") else Path(text.split("@")[0]).stem
    return (Path.cwd() / "converted" / (stem or "model")).resolve()


def _names(value: Iterable[str] | str | None) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [n.strip() for item in items for n in str(item).split(",") if n.strip()]


def _size(path: Path) -> int | None:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return None


def _accuracy(outputs: np.ndarray, labels: np.ndarray | None) -> float | None:
    from converters.parity import accuracy

    return accuracy(np.asarray(outputs), labels)
