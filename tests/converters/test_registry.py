"""Registry names, the generated matrix, and parity's metrics (no framework needed)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from converters import registry
from converters.parity import Tolerance, compare
from trainer.errors import UnknownNameError


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownNameError) as e:
        registry.frontend("tensorflow")
    assert "torch" in str(e.value) and "caffe" in str(e.value) and e.value.exit_code == 2
    with pytest.raises(UnknownNameError) as e:
        registry.target("tflite-fp16")
    assert e.value.fields["valid"] == sorted(registry.TARGETS)


def test_registry_import_is_light():
    code = ("import sys, converters.registry as r; r.matrix_markdown(); "
            "heavy = [m for m in ('torch', 'tensorflow', 'mxnet', 'onnxruntime', 'onnx') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_matrix_is_generated_from_the_registry():
    md = registry.matrix_markdown()
    lines = md.splitlines()
    assert len(lines) == 2 + len(registry.FRONTENDS)
    for name in registry.TARGETS:
        assert f"`--to {name}`" in lines[0]
    assert registry.route("keras", "tflite").startswith("TFLiteConverter")
    assert registry.route("caffe", "pytorch").startswith("MMdnn")
    registry.register_target("demo", "nowhere:Demo", "demo", routes={"torch": "demo route"})
    try:
        assert "demo route" in registry.matrix_markdown() and registry.route("keras", "demo") is None
    finally:
        del registry.TARGETS["demo"]


def test_fp32_tolerance_is_allclose_and_rel_diff_is_scale_aware():
    a = np.array([[10.0, 1e-9, -2.0]])
    b = a + np.array([[5e-4, 1e-6, 0.0]])
    m = compare("onnx", "fp32", a, b, None, Tolerance(atol=1e-4, rtol=1e-4))
    assert m["max_abs_diff"] == pytest.approx(5e-4)
    # the 1e-9 element is measured against 1e-3 * max|a| = 1e-2, not against itself
    assert m["max_rel_diff"] == pytest.approx(max(5e-4 / 10.0, 1e-6 / 1e-2))
    assert m["passed"] is True            # 5e-4 <= 1e-4 + 1e-4 * 10
    m = compare("onnx", "fp32", a, b, None, Tolerance(atol=1e-4, rtol=1e-6))
    assert m["passed"] is False and "exceeded" in m["criterion"]
    m = compare("onnx", "fp32", a, np.full_like(a, np.nan), None, Tolerance())
    assert m["passed"] is False


def test_int8_is_judged_by_agreement_and_accuracy_delta():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((100, 10))
    labels = a.argmax(1)
    b = a.copy()
    b[:3] = -b[:3]                         # 3 of 100 samples change their top-1 class
    m = compare("onnx-int8", "int8", a, b, labels, Tolerance())
    assert m["top1_agreement"] == pytest.approx(0.97) and m["accuracy_delta"] == pytest.approx(-0.03)
    assert m["passed"] is False and "< 0.98" in m["criterion"]
    b = a.copy()
    b[:1] = -b[:1]
    m = compare("onnx-int8", "int8", a, b, labels, Tolerance())
    assert m["passed"] is True and m["accuracy_delta"] == pytest.approx(-0.01)
