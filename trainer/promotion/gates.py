"""Promotion gates: a spec's `register.gates.<environment>` checked against a run's metrics.

A gate names a metric the run logged (its latest value): `accuracy: ">=0.95"`,
`parity.onnx-int8.top1_agreement: ">=0.99"`. `passed`/`failed` read the metric as a verdict
(1 = passed): `parity: passed` is the conversion report's overall verdict (`parity.passed`),
`parity.onnx-int8: passed` one target's (`parity.onnx-int8.passed`). A metric the run never
logged fails its gate, saying so: a gate never passes by default.
"""
from __future__ import annotations

import operator
from dataclasses import asdict, dataclass

from trainer.spec import parse_gate

_OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt}


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
        if value is None:
            passed = False
        elif op == "passed":
            passed = value == 1.0
        elif op == "failed":
            passed = value == 0.0
        else:
            passed = bool(_OPS[op](float(value), number))
        results.append(GateResult(key, condition.strip(), metric, None if value is None else float(value), passed))
    return results
