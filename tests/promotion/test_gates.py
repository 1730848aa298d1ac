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
