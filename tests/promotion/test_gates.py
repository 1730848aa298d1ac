"""Gates and the register: section, without services."""
import pytest

from trainer.errors import SpecError
from trainer.promotion.gates import evaluate
from trainer.spec import load_spec

BASE = dict(name="x", framework="torch", entrypoint="a.py:f")


def test_gates_read_metrics_and_verdicts():
    metrics = {"accuracy": 0.96, "parity.passed": 1.0, "parity.onnx-int8.top1_agreement": 0.985,
               "parity.onnx-int8.passed": 0.0}
    results = evaluate({"accuracy": ">=0.95", "parity": "passed", "parity.onnx-int8.top1_agreement": ">=0.99",
                        "parity.onnx-int8": "passed", "loss": "<1"}, metrics)
    assert [r.passed for r in results] == [True, True, False, False, False]
    assert results[-1].value is None and "not recorded" in results[-1].describe()


@pytest.mark.parametrize("register, message", [
    ({"model": "Digits"}, "register.model"),
    ({"model": "d", "gates": {"prod": {}}}, "staging' or 'production"),
    ({"model": "d", "gates": {"staging": {"accuracy": ">0.9x"}}}, "comparison with a number"),
    ({"model": "d", "gates": {"staging": {"accuracy": ">=nan"}}}, "comparison with a number"),
    ({"model": "d", "gates": {"staging": {"accuracy": 0.9}}}, "must be a string"),
    ({"model": "d", "registry": "u:p@h:5000"}, "must not carry credentials"),
    ({"model": "d", "gatez": {}}, "did you mean 'gates'"),
])
def test_register_section_is_validated_up_front(register, message):
    with pytest.raises(SpecError, match=message):
        load_spec({**BASE, "register": register})


def test_a_valid_register_section():
    spec, _ = load_spec({**BASE, "register": {"model": "digits-cnn", "registry": "harbor.example.com",
                                              "gates": {"staging": {"accuracy": ">=0.95", "parity": "passed"}}}})
    assert spec.register.gates["staging"]["parity"] == "passed"


def test_non_finite_metrics_fail_every_gate():
    nan, inf = float("nan"), float("inf")
    results = evaluate({"accuracy": ">=0.95", "loss": "!=0", "drift": "<=1", "parity": "passed"},
                       {"accuracy": inf, "loss": nan, "drift": -inf, "parity.passed": nan})
    assert [r.passed for r in results] == [False, False, False, False]
    assert "FAILED" in results[1].describe()


@pytest.mark.parametrize("tag, message", [
    ("{not json", "not JSON"), ('["staging"]', "not a JSON object"), ('{"staging": 3}', "not a JSON object"),
    ('{"staging": {"accuracy": 0.9}}', "not a string"), ('{"staging": {"accuracy": ">=x"}}', "comparison"),
    # the spec's own rule for a gate's key, not a looser one of the tag's (was accepted)
    ('{"staging": {"acc uracy": ">=0.9"}}', '"acc uracy" is not a metric name'),
])
def test_a_malformed_gates_tag_is_a_value_error(tag, message):
    from trainer.promotion.gates import gates_from_tag

    with pytest.raises(ValueError, match=message):
        gates_from_tag(tag, "staging")
    assert gates_from_tag('{"staging": {"accuracy": ">=0.9"}}', "staging") == {"accuracy": ">=0.9"}


def test_a_non_ascii_digit_version_is_not_a_number():
    import subprocess
    import sys
    from pathlib import Path

    for version in ("\u0661", "\u00b2", "1\u0662"):
        done = subprocess.run([str(Path(sys.executable).parent / "trainer"), "promote", "m", "--to", "staging",
                               "--version", version], capture_output=True, text=True)
        assert done.returncode == 2 and "--version must be a version number" in done.stderr, done.stderr
    from trainer.errors import UsageError
    from trainer.promotion.transaction import promote

    with pytest.raises(UsageError, match="ASCII digits"):
        promote("m", "staging", "\u0661")
