"""Parity: does each converted artifact give the native model's answers?

Every artifact runs on the same inputs as the native model. Per target:
- max abs diff: max |a - b| over all output elements (a = native, b = converted).
- max rel diff: max |a - b| / max(|a|, eps) with eps = 1e-3 * max|a| over the whole output:
  relative to each element, but elements much smaller than the output's scale are measured
  against that scale instead, so a logit of 1e-9 does not turn a 1e-7 diff into "100x".
- top-1 agreement: share of samples whose argmax (last axis) is the same (class scores only).
- accuracy delta: converted accuracy - native accuracy, when labels are known.
- latency p50 (ms) at batch 1 and batch 64, native framework vs the converted runtime, both
  in this process (n/a where a model only runs in another process, e.g. under emulation).

Tolerances: fp32 targets pass when |a - b| <= atol + rtol * |a| element-wise (numpy.allclose).
int8 targets cannot match element-wise; they are judged by what the model is for (`task`):
- classification: top-1 agreement >= min_agreement and, with labels, accuracy delta >=
  -max_accuracy_drop;
- regression with (float) labels: the converted model's RMSE and MAE against the labels may grow
  by at most max_metric_increase x the native model's, and its output error RMS(b - a) may be at
  most max_error_ratio x the native model's own error RMSE(a - y);
- regression without labels: max |a - b| <= int8_scale_tol x max |a|;
- embedding: the cosine similarity of each sample's converted and native output >= min_cosine.
The task is inferred (`auto`): integer labels -> classification, float labels -> regression; no
labels: outputs (N, C>1) -> classification, else regression. Embeddings are never guessed (they
look like class scores): set `task: embedding`.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

REL_EPS = 1e-3


@dataclass
class Tolerance:
    atol: float = 1e-4
    rtol: float = 1e-3
    min_agreement: float = 0.98      # int8: top-1 agreement with the native model
    max_accuracy_drop: float = 0.01  # int8: accuracy may drop by at most this much
    int8_scale_tol: float = 0.05     # int8 regression without labels: max abs diff / max|a|
    task: str = "auto"               # auto | classification | regression | embedding
    max_metric_increase: float = 0.02  # int8 regression: RMSE / MAE may grow by this share of native's
    max_error_ratio: float = 0.25    # int8 regression: RMS(b - a) / native RMSE(a - y)
    min_cosine: float = 0.99         # int8 embedding: per-sample cosine(a, b), the lowest one
    outputs: dict[str, dict[str, float]] = field(default_factory=dict)  # per output name: {"atol": .., "rtol": ..}

    def words(self, task: str | None = None) -> str:
        """Every criterion in force, with its threshold, as applied (`task`: the resolved one)."""
        int8 = {"classification": f"int8 top-1 agreement >= {self.min_agreement:g} and accuracy delta >= "
                                  f"{-self.max_accuracy_drop:g} (with labels)",
                "regression": f"int8 RMSE and MAE increase <= {self.max_metric_increase:g} x native's and output "
                              f"error <= {self.max_error_ratio:g} x the native model's own RMSE (with labels); "
                              f"max abs diff <= {self.int8_scale_tol:g} x max|a| (without)",
                "embedding": f"int8 per-sample cosine similarity >= {self.min_cosine:g}"}
        shown = [int8[task]] if task in int8 else list(int8.values())
        own = "".join(f"; output {name}: fp32 |a-b| <= {t.get('atol', self.atol):g} + {t.get('rtol', self.rtol):g}*|a|"
                      for name, t in self.outputs.items())
        return f"fp32 |a-b| <= {self.atol:g} + {self.rtol:g}*|a|{' (other outputs)' if own else ''}{own}; " + "; ".join(shown)

    def for_output(self, name: str) -> "Tolerance":
        """The tolerance one output is judged by (its own atol/rtol where given)."""
        from dataclasses import replace

        own = self.outputs.get(name) or {}
        return replace(self, outputs={}, **{k: float(v) for k, v in own.items() if k in ("atol", "rtol")})


@dataclass
class Row:
    target: str
    precision: str
    artifact: str                   # path relative to the output folder
    size_bytes: int | None
    n_samples: int
    max_abs_diff: float
    max_rel_diff: float
    top1_agreement: float | None
    accuracy: float | None
    accuracy_delta: float | None
    latency_ms: dict[str, float | None]       # {"b1": .., "b64": ..} converted
    passed: bool
    criterion: str                  # what it was judged by, with the numbers
    notes: list[str] = field(default_factory=list)
    limit_ratio: float | None = None    # the judged figure over its threshold: <= 1 passes
    diagnosis: dict | None = None       # per-layer: where it broke (converters.diagnose), when failed or asked
    repair: dict | None = None          # int8 repair: nodes kept in float, steps, size (converters.api._repair)
    task: str | None = None             # what the int8 criterion judged: classification | regression | embedding
    task_metrics: dict | None = None    # the task's figures (rmse, mae, error_ratio, min_cosine ...)
    outputs: dict | None = None         # several outputs: each one's figures and verdict, by name


@dataclass
class ConversionReport:
    model: str
    source: str
    exporter: str
    inputs: list[dict]
    tolerance: Tolerance
    native_latency_ms: dict[str, float | None]
    native_accuracy: float | None
    native_size_bytes: int | None
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    out_dir: str = ""
    run_id: str | None = None
    files: dict[str, str] = field(default_factory=dict)   # kind -> path (report.json, ...)
    trust_pickle: bool = False   # --trust-pickle was given: the model's format may have run code
    task: str | None = None      # the task parity judged int8 by, and how it was decided
    task_how: str = ""
    # The targets whose output is in out_dir: all of them when every one passed, the passing
    # x86 targets when the caller asked to keep those (a job's convert: step), else none.
    kept: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def failed_rows(self) -> list[Row]:
        return [r for r in self.rows if not r.passed]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["status"] = "PASSED" if self.passed else "FAILED"
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def metrics(self) -> dict[str, float]:
        """A few summary metrics for MLflow (the full table is the report artifact): whether every
        target passed, and per target the figure its criterion judges - `parity.<target>.max_abs_diff`
        for fp32, `parity.<target>.top1_agreement` (and `.accuracy_delta` when labels are known)
        for int8 - plus its size in bytes and its verdict (`parity.<target>.passed`, which promotion
        gates such as `parity.onnx-int8: passed` read); for an int8 repair, how many nodes and what
        share of the weights it kept in float (`parity.<target>.repair.float_nodes`, ...)."""
        out: dict[str, float] = {"parity.passed": float(self.passed)}
        for r in self.rows:
            key = "parity." + r.target.replace("@", ".edge.")
            tm = r.task_metrics or {}
            if r.precision == "int8" and r.task == "regression" and "rmse_change" in tm:
                vals = {k: tm[k] for k in ("rmse_change", "mae_change", "error_ratio")}
            elif r.precision == "int8" and r.task == "embedding" and "min_cosine" in tm:
                vals = {"min_cosine": tm["min_cosine"]}
            elif r.precision == "int8" and r.top1_agreement is not None:
                vals = {"top1_agreement": r.top1_agreement, "accuracy_delta": r.accuracy_delta}
            else:
                vals = {"max_abs_diff": r.max_abs_diff}
            vals["size_bytes"] = r.size_bytes
            vals["passed"] = float(r.passed)
            if r.repair and r.repair.get("excluded_nodes") is not None:
                vals["repair.float_nodes"] = len(r.repair["excluded_nodes"])
                vals["repair.float_weight_fraction"] = r.repair.get("float_weight_fraction")
            out.update({f"{key}.{k}": float(v) for k, v in vals.items() if v is not None})
        return out

    def table(self) -> dict[str, list]:
        """The report's table as columns (MLflow's `log_table`: shown as a table in the UI)."""
        cols: dict[str, list] = {k: [] for k in ("target", "precision", "result", "criterion", "size_bytes",
                                                 "max_abs_diff", "max_rel_diff", "top1_agreement",
                                                 "accuracy_delta", "latency_p50_b1_ms", "latency_p50_b64_ms",
                                                 "artifact")}
        for r in self.rows:
            for k, v in (("target", r.target), ("precision", r.precision), ("result", "pass" if r.passed else "FAIL"),
                         ("criterion", r.criterion), ("size_bytes", r.size_bytes), ("max_abs_diff", r.max_abs_diff),
                         ("max_rel_diff", r.max_rel_diff), ("top1_agreement", r.top1_agreement),
                         ("accuracy_delta", r.accuracy_delta), ("latency_p50_b1_ms", r.latency_ms.get("b1")),
                         ("latency_p50_b64_ms", r.latency_ms.get("b64")), ("artifact", r.artifact)):
                cols[k].append(v)
        return cols

    def to_markdown(self) -> str:
        status = "PASSED" if self.passed else "FAILED"
        t = self.tolerance
        lines = [f"# Conversion parity report: {status}", "",
                 f"- model: `{self.model}` (from `{self.source}`, exporter: {self.exporter})",
                 f"- inputs: " + ", ".join(f"`{i['name']}` {fmt_dims(i['shape'])} {i['layout']} {i['dtype']}"
                                           for i in self.inputs),
                 f"- tolerance: {t.words(self.task)}",
                 *([f"- task: {self.task} ({self.task_how})"] if self.task else []),
                 *(f"- {r.target}: {criterion_words(r, t)}" for r in self.rows),
                 f"- native: size {fmt_size(self.native_size_bytes)}, accuracy "
                 f"{fmt_num(self.native_accuracy)}, latency p50 b1 {fmt_ms(self.native_latency_ms.get('b1'))}"
                 f", b64 {fmt_ms(self.native_latency_ms.get('b64'))}", ""]
        lines += ["| target | size | max abs diff | max rel diff | top-1 agreement | accuracy delta | "
                  "latency p50 b1 (native -> converted) | latency p50 b64 | result |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r.target} | {fmt_size(r.size_bytes)} | {r.max_abs_diff:.3g} | {r.max_rel_diff:.3g} | "
                         f"{fmt_num(r.top1_agreement)} | {fmt_delta(r.accuracy_delta)} | "
                         f"{fmt_ms(self.native_latency_ms.get('b1'))} -> {fmt_ms(r.latency_ms.get('b1'))} | "
                         f"{fmt_ms(self.native_latency_ms.get('b64'))} -> {fmt_ms(r.latency_ms.get('b64'))} | "
                         f"{'pass' if r.passed else 'FAIL'}: {r.criterion.replace('|', chr(92) + '|')} |")
        for r in self.rows:
            lines += diagnosis_markdown(r)
        notes = self.notes + [f"{r.target}: {n}" for r in self.rows for n in r.notes]
        if notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
        lines += ["", "max rel diff = max |a-b| / max(|a|, 1e-3 * max|a|) (a = native output).", ""]
        return "\n".join(lines)


    def summary_lines(self) -> list[str]:
        """One line per diagnosed or repaired target (the node that broke and its figure; what
        repair kept in float): what a terminal or a job log shows under the table."""
        out = []
        for r in self.rows:
            if r.diagnosis:
                out.append(f"{r.target}: {r.diagnosis.get('summary', '')}")
            if r.repair:
                out.append(f"{r.target}: {repair_words(r.repair)}")
        return out


def repair_words(repair: dict) -> str:
    """What int8 repair did, in one line."""
    nodes = repair.get("excluded_nodes") or []
    if not nodes:
        return f"int8 repair kept nothing in float: {repair.get('stopped', 'nothing to repair')}"
    verdict = "passed" if repair.get("passed") else "still FAILED"
    return (f"int8 repair kept {len(nodes)} node(s) in float ({', '.join(nodes)}), "
            f"{repair.get('float_weight_fraction', 0):.1%} of the weights, size {fmt_size(repair.get('size_bytes'))} "
            f"(plain int8 {fmt_size(repair.get('size_before_bytes'))}); {verdict}: {repair.get('stopped')}")


def diagnosis_markdown(row: Row, top: int = 10) -> list[str]:
    """A target's diagnosis and repair as a Markdown section (nothing when it has neither)."""
    d, rep = row.diagnosis, row.repair
    if not d and not rep:
        return []
    lines = ["", f"## Diagnosis: {row.target}", ""]
    if d:
        lines += [f"**{d.get('summary', '')}**", ""]
        if d.get("of"):
            lines += [f"(of {d['of']})", ""]
        if d.get("metric"):
            lines += [f"Figure per tensor: {d['metric']}; measured on {d.get('samples')} held-out samples "
                      f"in {d.get('seconds', 0):.2f} s.", ""]
        ranked = d.get("ranked") or []
        if ranked:
            lines += ["| tensor | node (op) | module | SQNR dB | lost dB | from |", "|---|---|---|---|---|---|"]
            for e in ranked[:top]:
                lines.append(f"| {e['tensor']} | {e['node'] or '-'} ({e['op_type']}) | {e['module'] or '-'} | "
                             f"{e['sqnr_db']:.1f} | {e['loss_db']:.1f} | {', '.join(e['came_from'] or ['-'])} |")
            if len(ranked) > top:
                lines.append(f"\n{len(ranked) - top} more tensors in report.json.")
        layers = d.get("layers") or []
        if layers:
            first = next((i for i, e in enumerate(layers) if not e["passed"]), len(layers) - 1)
            shown = layers[max(0, first - top // 2):][:top]
            lines += ["| module | node (op) | max abs diff | out of tolerance | result |", "|---|---|---|---|---|"]
            for e in shown:
                lines.append(f"| {e['module']} | {e['node']} ({e['op_type']}) | {e['max_abs_diff']:.3g} | "
                             f"{e['out_of_tolerance']:.1%} | {'pass' if e['passed'] else 'FAIL'} |")
            lines.append(f"\n{len(layers)} layers compared in graph order; all in report.json.")
    if rep:
        lines += ["", f"Repair: {repair_words(rep)}."]
        for st in rep.get("steps") or []:
            lines.append(f"- step {st['step']}: {st['float_nodes']} float node(s), "
                         f"{st['float_weight_fraction']:.1%} of the weights, {fmt_size(st['size_bytes'])}: "
                         f"{'pass' if st['passed'] else 'FAIL'} ({st['criterion']})")
    return lines


def key_figure(row) -> str:
    """The figure a target's criterion judges, in a few words (a Row or its dict)."""
    get = row.get if isinstance(row, dict) else (lambda k: getattr(row, k, None))
    tm = get("task_metrics") or {}
    if get("precision") == "int8" and get("task") == "regression" and "rmse_change" in tm:
        return f"RMSE {tm['rmse_change']:+.2%}, error ratio {tm['error_ratio']:.3g}"
    if get("precision") == "int8" and get("task") == "embedding" and "min_cosine" in tm:
        return f"min cosine {tm['min_cosine']:.4f}"
    if get("precision") == "int8" and get("top1_agreement") is not None and get("task") in (None, "classification"):
        text = f"agreement {get('top1_agreement'):.4f}"
        if get("accuracy_delta") is not None:
            text += f", accuracy {get('accuracy_delta'):+.4f}"
        return text
    return f"max abs diff {get('max_abs_diff'):.2g}"


def criterion_words(row: Row, tol: Tolerance) -> str:
    """Which criterion judged the target, and how it came out, in words."""
    verdict = "passed" if row.passed else "FAILED"
    task = getattr(row, "task", None)
    tm = getattr(row, "task_metrics", None) or {}
    if row.precision == "int8" and task == "regression" and "rmse_change" in tm:
        return (f"int8 regression criterion: RMSE and MAE against the labels may grow by at most "
                f"{tol.max_metric_increase:.0%} of the native model's, and the output error by at most "
                f"{tol.max_error_ratio:g} x the native model's own RMSE; {verdict} ({row.criterion}).")
    if row.precision == "int8" and task == "embedding":
        return (f"int8 embedding criterion: every sample's cosine similarity to the native output at least "
                f"{tol.min_cosine:g}; {verdict} ({row.criterion}).")
    if row.precision == "int8" and row.top1_agreement is not None and task in (None, "classification"):
        rule = (f"int8 criterion: the converted model must pick the native model's top-1 class on at least "
                f"{tol.min_agreement:.0%} of the samples")
        if row.accuracy_delta is not None:
            rule += f" and lose at most {tol.max_accuracy_drop:g} accuracy"
        return f"{rule}; {verdict} ({row.criterion}). Its raw max abs diff ({row.max_abs_diff:.2g}) is not judged."
    if row.precision == "int8":
        return (f"int8 regression criterion without labels: max abs diff within "
                f"{tol.int8_scale_tol:g} x the largest native output; {verdict} ({row.criterion}).")
    return (f"fp32 criterion: every output element within {tol.atol:g} + {tol.rtol:g} x |native| of the native "
            f"model's; {verdict} (max abs diff {row.max_abs_diff:.2g}; {row.criterion}).")


TASKS = ("classification", "regression", "embedding")


def resolve_task(task: str, native: np.ndarray, labels: np.ndarray | None) -> tuple[str, str]:
    """(the task int8 is judged by, how it was decided): see the module docstring."""
    if task in TASKS:
        return task, "set"
    if task != "auto":
        raise ValueError(f"task must be auto or one of {', '.join(TASKS)}, got {task!r}")
    a = np.asarray(native)
    if labels is not None:
        if np.asarray(labels).dtype.kind in "iu":
            return "classification", "inferred: integer labels"
        return "regression", "inferred: float labels"
    if a.ndim == 2 and a.shape[-1] > 1:
        return "classification", f"inferred: no labels, outputs (N, {a.shape[-1]}) read as class scores"
    return "regression", f"inferred: no labels, outputs of shape (N, {', '.join(map(str, a.shape[1:]))})"


def _task_metrics(task: str, a: np.ndarray, b: np.ndarray, labels: np.ndarray | None) -> dict:
    if task == "embedding":
        fa, fb = a.reshape(len(a), -1), b.reshape(len(b), -1)
        na, nb = np.linalg.norm(fa, axis=1), np.linalg.norm(fb, axis=1)
        cos = np.sum(fa * fb, axis=1) / np.maximum(na * nb, np.finfo(np.float64).tiny)
        cos[(na == 0) & (nb == 0)] = 1.0
        return dict(min_cosine=float(cos.min()) if cos.size else 1.0, mean_cosine=float(cos.mean()) if cos.size else 1.0)
    if task == "regression" and labels is not None:
        y = np.asarray(labels, np.float64)
        if y.size != a.size:
            return {}
        y = y.reshape(a.shape)
        rmse_a, rmse_b = float(np.sqrt(np.mean((a - y) ** 2))), float(np.sqrt(np.mean((b - y) ** 2)))
        mae_a, mae_b = float(np.mean(np.abs(a - y))), float(np.mean(np.abs(b - y)))
        tiny = np.finfo(np.float64).tiny
        return dict(rmse_native=rmse_a, rmse=rmse_b, mae_native=mae_a, mae=mae_b,
                    rmse_change=(rmse_b - rmse_a) / max(rmse_a, tiny), mae_change=(mae_b - mae_a) / max(mae_a, tiny),
                    error_ratio=float(np.sqrt(np.mean((b - a) ** 2))) / max(rmse_a, tiny))
    return {}


def compare(target: str, precision: str, native: np.ndarray, converted: np.ndarray,
            labels: np.ndarray | None, tol: Tolerance) -> dict:
    """The error metrics and the pass/fail verdict of one artifact's outputs vs the native ones
    (several outputs, as dicts by name: each judged with its own tolerance, all must pass)."""
    if isinstance(native, dict) or isinstance(converted, dict):
        return _compare_outputs(target, precision, native, converted, labels, tol)
    a = np.asarray(native, dtype=np.float64)
    b = np.asarray(converted, dtype=np.float64)
    if a.shape != b.shape:
        if a.size == b.size:
            b = b.reshape(a.shape)
        else:
            return dict(max_abs_diff=float("inf"), max_rel_diff=float("inf"), top1_agreement=None,
                        accuracy=None, accuracy_delta=None, passed=False, limit_ratio=float("inf"),
                        criterion=f"output shape {b.shape} differs from native {a.shape}", task=None,
                        task_metrics=None)
    diff = np.abs(a - b)
    scale = float(np.max(np.abs(a))) if a.size else 0.0
    eps = max(REL_EPS * scale, np.finfo(np.float32).tiny)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(a), eps)).max()) if diff.size else 0.0
    if not np.all(np.isfinite(b)):
        max_abs = max_rel = float("inf")
    task = resolve_task(tol.task, a, labels)[0]
    top1 = float(np.mean(a.argmax(-1) == b.argmax(-1))) if a.ndim >= 2 and a.shape[-1] > 1 else None
    class_labels = labels if labels is not None and np.asarray(labels).dtype.kind in "iu" else None
    acc, native_acc = accuracy(b, class_labels), accuracy(a, class_labels)
    delta = None if acc is None else acc - native_acc
    tm = _task_metrics(task, a, b, labels) if np.all(np.isfinite(b)) else {}
    ratio = None
    if precision == "int8" and task == "regression" and "rmse_change" in tm:
        limits = (tm["rmse_change"] / max(tol.max_metric_increase, 1e-12),
                  tm["mae_change"] / max(tol.max_metric_increase, 1e-12),
                  tm["error_ratio"] / max(tol.max_error_ratio, 1e-12))
        ratio = max(limits)
        passed = ratio <= 1
        criterion = (f"RMSE {tm['rmse_change']:+.2%}, MAE {tm['mae_change']:+.2%} "
                     f"{'<=' if max(limits[:2]) <= 1 else '>'} +{tol.max_metric_increase:.0%}; output error "
                     f"{tm['error_ratio']:.3g} {'<=' if limits[2] <= 1 else '>'} {tol.max_error_ratio:g} x native RMSE "
                     f"({tm['rmse_native']:.3g})")
    elif precision == "int8" and task == "embedding" and "min_cosine" in tm:
        passed = tm["min_cosine"] >= tol.min_cosine
        criterion = f"min cosine similarity {tm['min_cosine']:.4f} {'>=' if passed else '<'} {tol.min_cosine:g}"
        ratio = (1 - tm["min_cosine"]) / max(1 - tol.min_cosine, 1e-12)
    elif precision == "int8":
        if top1 is not None and task == "classification":
            agree_ok = top1 >= tol.min_agreement
            delta_ok = delta is None or delta >= -tol.max_accuracy_drop - 1e-12
            passed = agree_ok and delta_ok
            criterion = f"top-1 agreement {top1:.4f} {'>=' if agree_ok else '<'} {tol.min_agreement:g}"
            if delta is not None:
                criterion += f", accuracy delta {delta:+.4f} {'>=' if delta_ok else '<'} {-tol.max_accuracy_drop:g}"
            ratio = (1 - top1) / max(1 - tol.min_agreement, 1e-12)
            if delta is not None:
                ratio = max(ratio, max(-delta, 0.0) / max(tol.max_accuracy_drop, 1e-12))
        else:
            passed = max_abs <= tol.int8_scale_tol * scale
            criterion = f"max abs diff {max_abs:.3g} {'<=' if passed else '>'} {tol.int8_scale_tol:g} * max|a| ({scale:.3g})"
            ratio = max_abs / max(tol.int8_scale_tol * scale, 1e-30)
    else:
        allowance = tol.atol + tol.rtol * np.abs(a)
        worst = float((diff - allowance).max()) if diff.size else 0.0
        passed = bool(np.all(np.isfinite(b))) and worst <= 0
        criterion = f"|a-b| <= {tol.atol:g} + {tol.rtol:g}*|a|" + ("" if passed else f" (exceeded by {worst:.3g})")
        ratio = float((diff / allowance).max()) if diff.size else 0.0
    if not np.all(np.isfinite(b)):
        ratio, passed = float("inf"), False
    return dict(max_abs_diff=max_abs, max_rel_diff=max_rel, top1_agreement=top1, accuracy=acc,
                accuracy_delta=delta, passed=bool(passed), criterion=criterion, limit_ratio=ratio,
                task=task, task_metrics=tm or None)


def _compare_outputs(target: str, precision: str, native, converted, labels, tol: Tolerance) -> dict:
    names = list(native) if isinstance(native, dict) else ["output"]
    got = list(converted) if isinstance(converted, dict) else ["output"]
    if names != got:
        return dict(max_abs_diff=float("inf"), max_rel_diff=float("inf"), top1_agreement=None, accuracy=None,
                    accuracy_delta=None, passed=False, limit_ratio=float("inf"), task=None, task_metrics=None,
                    criterion=f"outputs {', '.join(got)} differ from the native model's {', '.join(names)}")
    per = {n: compare(target, precision, native[n], converted[n], None, tol.for_output(n)) for n in names}
    ratios = [m["limit_ratio"] for m in per.values() if m["limit_ratio"] is not None]
    return dict(max_abs_diff=max(m["max_abs_diff"] for m in per.values()),
                max_rel_diff=max(m["max_rel_diff"] for m in per.values()),
                top1_agreement=None, accuracy=None, accuracy_delta=None,
                passed=all(m["passed"] for m in per.values()),
                criterion="; ".join(f"{n}: {m['criterion']}" for n, m in per.items()),
                limit_ratio=max(ratios) if ratios else None, task=next(iter(per.values()))["task"], task_metrics=None,
                outputs={n: {k: m[k] for k in ("max_abs_diff", "max_rel_diff", "passed", "criterion", "limit_ratio")}
                         for n, m in per.items()})


def accuracy(outputs: np.ndarray, labels: np.ndarray | None) -> float | None:
    if isinstance(outputs, dict):
        return None
    if labels is None or outputs.ndim != 2 or outputs.shape[-1] < 2 or len(labels) != len(outputs):
        return None
    return float(np.mean(outputs.argmax(-1) == labels))


def latency_p50(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int,
                repeats: int = 30, budget_s: float = 1.0) -> float:
    """Median wall time (ms) of `run` on a batch of `batch` samples, after one warm-up call."""
    if len(x) < batch:
        x = np.concatenate([x] * (batch // len(x) + 1))
    xb = np.ascontiguousarray(x[:batch])
    run(xb)
    times = []
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(xb)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s and len(times) >= 5:
            break
    return float(np.median(times) * 1e3)


def latencies(run: Callable[[np.ndarray], np.ndarray] | None, x: np.ndarray,
              batches: tuple[int, ...] = (1, 64)) -> dict[str, float | None]:
    if run is None:
        return {f"b{b}": None for b in batches}
    return {f"b{b}": latency_p50(run, x, b) for b in batches}


def write_report(report: ConversionReport, out_dir: Path) -> dict[str, Path]:
    """report.json, report.md and report.png (per-target error and latency) in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": out_dir / "report.json", "markdown": out_dir / "report.md", "plot": out_dir / "report.png"}
    report.files = {k: v.name for k, v in files.items()}
    files["json"].write_text(report.to_json())
    files["markdown"].write_text(report.to_markdown())
    plot(report, files["plot"])
    return files


def plot(report: ConversionReport, path: Path) -> None:
    """Each target against its own criterion, as a fraction of its threshold (1 = the line it
    must not cross): fp32 targets by max |a-b| / (atol + rtol*|a|) at the worst element, int8
    targets by the larger of their disagreement and accuracy loss over what they may lose (or
    their task's figures over theirs); latency per batch size; and, when a target was diagnosed,
    its error per layer with the layer the diagnosis names in red."""
    figure(report).savefig(path, dpi=90)


BAR_FLOOR = 1e-4     # a judged figure of 0 (or below this) is drawn at this length,
AXIS_FLOOR = 1e-5    # which the axis starts a decade below, so every target's bar shows


def bar_lengths(ratios: list[float]) -> list[float]:
    """Each target's bar on the log axis: its ratio, clamped into [BAR_FLOOR, 1e3] (a perfect 0
    would have no length at all on a log axis; NaN or inf is drawn as far off)."""
    return [1e3 if not np.isfinite(v) else min(max(v, BAR_FLOOR), 1e3) for v in ratios]


def figure(report: ConversionReport):
    """The report's plot as a matplotlib Figure: see `plot`."""
    # A Figure of its own, not pyplot: a library must not switch the caller's backend (a notebook
    # that converts and then plots would draw nothing after matplotlib.use("Agg")).
    from matplotlib.figure import Figure

    rows = report.rows
    diagnosed = [r for r in rows if r.diagnosis and (r.diagnosis.get("ranked") or r.diagnosis.get("layers"))]
    fig = Figure(figsize=(12, 1.2 + 0.6 * max(len(rows), 3) + (3.2 if diagnosed else 0)))
    if diagnosed:
        grid = fig.add_gridspec(2, 2, width_ratios=(3, 2), height_ratios=(max(len(rows), 3), 5))
        ax1, ax2, ax3 = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])
        _layer_panel(ax3, diagnosed[0])
    else:
        ax1, ax2 = fig.subplots(1, 2, width_ratios=(3, 2))
    y = np.arange(len(rows))
    ratios = [_criterion_ratio(r, report.tolerance) for r in rows]
    shown = bar_lengths(ratios)
    colors = ["tab:green" if r.passed else "tab:red" for r in rows]
    ax1.barh(y, shown, color=colors)
    ax1.set_xscale("log")
    ax1.set_xlim(AXIS_FLOOR, 1e3)
    ax1.axvline(1.0, color="k", linestyle="--", linewidth=1)
    ax1.set_yticks(y, [f"{r.target}\n{_rule(r, report.tolerance)}" for r in rows], fontsize=8)
    ax1.invert_yaxis()
    for i, (r, v) in enumerate(zip(rows, shown)):
        text = ("pass: " if r.passed else "FAIL: ") + _figure_text(r)
        if v < 30:
            ax1.text(v * 1.3, i, text, va="center", fontsize=8)
        else:
            ax1.text(v / 1.3, i, text, va="center", ha="right", fontsize=8, color="white")
    ax1.set_xlabel("judged figure / its threshold (log); right of the dashed line fails", fontsize=9)
    ax1.set_title("each target against its own criterion", fontsize=10)
    groups = ["native"] + [r.target for r in rows if r.latency_ms.get("b1") is not None]
    lat = {"b1": [report.native_latency_ms.get("b1")], "b64": [report.native_latency_ms.get("b64")]}
    for r in rows:
        if r.latency_ms.get("b1") is not None:
            lat["b1"].append(r.latency_ms["b1"])
            lat["b64"].append(r.latency_ms.get("b64"))
    x = np.arange(len(groups))
    for i, (k, vals) in enumerate(lat.items()):
        ax2.bar(x + (i - 0.5) * 0.38, [v or 0 for v in vals], 0.38, label=f"batch {k[1:]}")
    ax2.set_xticks(x, groups, rotation=20)
    ax2.set_ylabel("latency p50 (ms)")
    ax2.set_yscale("log")
    ax2.legend(fontsize=8)
    ax2.set_title("latency (this machine)", fontsize=10)
    name = report.model if report.model.startswith(("runs:/", "models:/")) else Path(report.model).name
    fig.suptitle(f"{name}: parity {'PASSED' if report.passed else 'FAILED'}")
    fig.tight_layout()
    return fig


def _layer_panel(ax, row: Row) -> None:
    """Error per layer in graph order for one diagnosed target, the layer it names in red: int8,
    relative error 10^(-SQNR/20) per quantized tensor; fp32, max |native - onnx| per layer (both
    log, higher is worse)."""
    d = row.diagnosis
    if d.get("ranked"):
        layers = sorted(d["ranked"], key=lambda e: e["order"])
        first = (d.get("first_jump") or {}).get("tensor")
        values = [max(e["relative_error"], 1e-6) for e in layers]
        labels = [e["module"] or e["tensor"] for e in layers]
        marked = [e["tensor"] == first for e in layers]
        ax.set_yscale("log")
        ax.set_ylabel("relative error (int8 vs float)")
    else:
        layers = d["layers"]
        first = (d.get("first_divergence") or {}).get("module")
        values = [max(e["max_abs_diff"], 1e-12) for e in layers]
        labels = [e["module"] for e in layers]
        marked = [e["module"] == first for e in layers]
        ax.set_yscale("log")
        ax.set_ylabel("max |native - onnx|")
    x = np.arange(len(layers))
    ax.bar(x, values, color=["tab:red" if m else "tab:blue" for m in marked])
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
    named = next((lab for lab, m in zip(labels, marked) if m), None)
    ax.set_title(f"{row.target}: error per layer, in graph order" + (f"; red: {named}, where the diagnosis says "
                 f"it broke" if named else ""), fontsize=9)


def _criterion_ratio(row: Row, tol: Tolerance) -> float:
    """How far the target went towards its own limit: <= 1 passes, > 1 fails (`compare` measured
    it; a report written before it did has none: its verdict alone is drawn)."""
    if row.limit_ratio is not None:
        return row.limit_ratio
    return 0.5 if row.passed else 2.0


def _rule(row: Row, tol: Tolerance) -> str:
    tm = row.task_metrics or {}
    if row.precision == "int8" and row.task == "regression" and "rmse_change" in tm:
        return f"int8: RMSE +<= {tol.max_metric_increase:.0%}, err <= {tol.max_error_ratio:g} RMSE"
    if row.precision == "int8" and row.task == "embedding" and "min_cosine" in tm:
        return f"int8: cosine >= {tol.min_cosine:g}"
    if row.precision == "int8" and row.top1_agreement is not None and row.task in (None, "classification"):
        return f"int8: agreement >= {tol.min_agreement:g}" + (
            f", acc drop <= {tol.max_accuracy_drop:g}" if row.accuracy_delta is not None else "")
    if row.precision == "int8":
        return f"int8: |a-b| <= {tol.int8_scale_tol:g} max|a|"
    return f"fp32: |a-b| <= {tol.atol:g} + {tol.rtol:g}|a|"


def _figure_text(row: Row) -> str:
    if row.precision == "int8" and row.task in ("regression", "embedding") and row.task_metrics:
        return key_figure(row)
    if row.precision == "int8" and row.top1_agreement is not None and row.task in (None, "classification"):
        text = f"agreement {row.top1_agreement:.3f}"
        return text + (f", acc {row.accuracy_delta:+.3f}" if row.accuracy_delta is not None else "")
    return f"max|a-b| {row.max_abs_diff:.2g}"


def fmt_size(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1024:.1f} KiB" if n < 1024 ** 2 else f"{n / 1024 ** 2:.2f} MiB"


def fmt_ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g} ms"


def fmt_num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def fmt_delta(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.4f}"


def fmt_dims(shape) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"
