"""TFLite targets (fp32 and int8) built from the Keras frontend's export, run with the LiteRT
interpreter, compared with the native Keras model."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from _keras_models import ensure_models
from converters.frontends.keras import FRONTEND
from converters.workers.client import worker
from converters.targets.tflite import TARGET, TARGET_INT8
from trainer.errors import ConversionError

pytestmark = pytest.mark.tensorflow


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return ensure_models(tmp_path_factory)


@pytest.fixture(scope="module")
def digits(models):
    return dict(np.load(models / "digits.npz"))


@pytest.fixture(scope="module")
def cnn(models, digits, tmp_path_factory):
    """The digits CNN exported once, and its native outputs on the held-out digits."""
    out = tmp_path_factory.mktemp("cnn-export")
    export = FRONTEND.export(models / "digits_cnn.keras", out, digits["x_test"][:2])
    native = FRONTEND.predict(models / "digits_cnn.keras", digits["x_test"])
    return export, native


def test_tflite_fp32_matches_keras(cnn, digits, tmp_path):
    export, native = cnn
    artifact = TARGET.build(export, tmp_path / "t", calib=None).artifact
    assert artifact == tmp_path / "t" / "model.tflite" and artifact.stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["model.tflite"]

    x = digits["x_test"]
    out = TARGET.predict(artifact, x)
    assert out.shape == native.shape
    np.testing.assert_allclose(out, native, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(TARGET.predict(artifact, x[:1]), native[:1], atol=1e-4, rtol=1e-4)


def test_tflite_int8_agrees_on_held_out_digits(cnn, digits, tmp_path):
    export, native = cnn
    fp32 = TARGET.build(export, tmp_path / "fp32", calib=None).artifact
    int8 = TARGET_INT8.build(export, tmp_path / "int8", calib=digits["x_train"]).artifact
    assert int8.name == "model_int8.tflite"
    assert int8.stat().st_size <= 0.4 * fp32.stat().st_size

    out = TARGET_INT8.predict(int8, digits["x_test"])
    agreement = float((out.argmax(1) == native.argmax(1)).mean())
    acc_native = float((native.argmax(1) == digits["y_test"]).mean())
    acc_int8 = float((out.argmax(1) == digits["y_test"]).mean())
    assert agreement >= 0.98, agreement
    assert acc_native - acc_int8 <= 0.02, (acc_native, acc_int8)


def test_tflite_int8_without_calibration_is_refused(cnn, tmp_path):
    export, _ = cnn
    with pytest.raises(ConversionError, match="calib"):
        TARGET_INT8.build(export, tmp_path / "t", calib=None)
    assert not (tmp_path / "t").exists()


def test_tflite_int8_with_wrong_calibration_shape_is_refused(cnn, tmp_path):
    export, _ = cnn
    with pytest.raises(ConversionError, match=r"calibration samples have shape \(5, 8, 8, 3\)"):
        TARGET_INT8.build(export, tmp_path / "t", calib=np.zeros((5, 8, 8, 3), np.float32))
    assert not (tmp_path / "t").exists()


def test_tflite_from_onnx_only_source(cnn, digits, tmp_path):
    """No Keras model behind the export: onnx2tf when the runtime has it, else one clear error."""
    export, native = cnn
    onnx_only = dataclasses.replace(export, extras={})
    if "onnx2tf" not in worker("tensorflow").call("versions"):
        with pytest.raises(ConversionError) as err:
            TARGET.build(onnx_only, tmp_path / "t", calib=None)
        assert "onnx2tf" in str(err.value) and "Keras" in str(err.value) and "\n" not in str(err.value)
        assert not (tmp_path / "t").exists()
    else:
        artifact = TARGET.build(onnx_only, tmp_path / "t", calib=None).artifact
        out = TARGET.predict(artifact, digits["x_test"])
        np.testing.assert_allclose(out, native, atol=1e-4, rtol=1e-4)
