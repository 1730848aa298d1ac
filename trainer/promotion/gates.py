"""Promotion gates: a spec's `register.gates.<environment>` checked against a run's metrics.

A gate names a metric the run logged (its latest value): `accuracy: ">=0.95"`,
`parity.onnx-int8.top1_agreement: ">=0.99"`. `passed`/`failed` read the metric as a verdict
(1 = passed): `parity: passed` is the conversion report's overall verdict (`parity.passed`),
`parity.onnx-int8: passed` one target's (`parity.onnx-int8.passed`). A metric the run never
logged fails its gate, saying so: a gate never passes by default. Neither does a value that is
not a finite number (NaN, inf): `accuracy != 0` or `>= 0.95` of a NaN is a failed gate.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from trainer.spec import GATE_OPERATORS, check_gates, parse_gate


@dataclass(frozen=True)
class GateResult:
    gate: str           # the metric name as written in the spec
    condition: str
    metric: str         # the metric read
    value: float | None
    passed: bool

    def describe(self) -> str:
        shown = "not recorded" if self.value is None else f"{self.value:.6g}"
        return f"{self.gate} {self.condition}: {shown} ({'passed' if self.passed else 'FAILED'})"

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(gates: dict[str, str], metrics: dict[str, float]) -> list[GateResult]:
    results = []
    for key, condition in gates.items():
        op, number = parse_gate(condition)
        metric = key
        if op in ("passed", "failed") and not key.endswith(".passed"):
            metric = f"{key}.passed"
        value = metrics.get(metric)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            value = None
        if value is None or not math.isfinite(value):
            passed = False
        elif op == "passed":
            passed = value == 1.0
        elif op == "failed":
            passed = value == 0.0
        else:
            passed = bool(GATE_OPERATORS[op](float(value), number))
        results.append(GateResult(key, condition.strip(), metric, None if value is None else float(value), passed))
    return results


def gates_from_tag(text: str | None, environment: str) -> dict[str, str]:
    """The gates of `environment` from a version's `trainer.gates` tag (JSON written at
    registration). The tag can be edited by hand: ValueError, one line, on anything that is not
    {environment: {metric: condition}} with conditions a spec would accept."""
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        raise ValueError("is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("is not a JSON object of environments")
    gates = data.get(environment, {})
    if not isinstance(gates, dict):
        raise ValueError(f"has {environment!r} gates that are not a JSON object")
    try:
        check_gates(gates, environment)
    except ValueError as e:
        raise ValueError(f"has a gate that a spec would refuse: {e}") from None
    return gates
