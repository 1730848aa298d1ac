"""Keras frontend: real Keras models -> ONNX (tf2onnx, in the tensorflow runtime) -> ONNX Runtime,
compared numerically with the native Keras model on the same inputs."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from _keras_models import ensure_models
from converters.frontends.keras import FRONTEND
from trainer.errors import ConversionError, UnsupportedOpsError

pytestmark = pytest.mark.tensorflow

ATOL, RTOL = 1e-4, 1e-4       # fp32 tf2onnx vs Keras; measured ~5e-6 on the digits CNN


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return ensure_models(tmp_path_factory)


@pytest.fixture(scope="module")
def digits(models):
    return dict(np.load(models / "digits.npz"))


def ort_run(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_sequential_cnn_matches_onnx_runtime(models, digits, tmp_path):
    x = digits["x_test"]
    result = FRONTEND.export(models / "digits_cnn.keras", tmp_path / "out", x[:4])

    assert result.onnx_path == tmp_path / "out" / "model.onnx" and result.onnx_path.is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.onnx"]
    (inp,) = result.inputs
    assert (inp.shape, inp.layout, inp.dtype) == ((None, 8, 8, 1), "NHWC", "float32")
    assert result.exporter.startswith("tf2onnx 1.17")

    native = FRONTEND.predict(models / "digits_cnn.keras", x)
    onnx_out = ort_run(result.onnx_path, x)
    assert native.shape == onnx_out.shape == (len(x), 10)
    np.testing.assert_allclose(onnx_out, native, atol=ATOL, rtol=RTOL)
    assert (onnx_out.argmax(1) == native.argmax(1)).mean() == 1.0
    assert (native.argmax(1) == digits["y_test"]).mean() >= 0.93     # a trained model, not noise

    # dynamic batch: batch 1 and an odd batch give the same rows
    np.testing.assert_allclose(ort_run(result.onnx_path, x[:1]), native[:1], atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(ort_run(result.onnx_path, x[5:42]), native[5:42], atol=ATOL, rtol=RTOL)


def test_mobilenet_v2_matches_onnx_runtime_by_relative_error(models, tmp_path):
    x = np.random.default_rng(0).random((16, 32, 32, 3), dtype=np.float32)
    result = FRONTEND.export(models / "mobilenet_v2.keras", tmp_path / "out", x[:2])
    assert result.inputs[0].shape == (None, 32, 32, 3) and result.inputs[0].layout == "NHWC"

    native = FRONTEND.predict(models / "mobilenet_v2.keras", x)
    onnx_out = ort_run(result.onnx_path, x)
    scale = float(np.abs(native).max())
    assert scale > 0
    # Untrained MobileNetV2 logits are tiny: an absolute tolerance would pass anything.
    rel = float(np.abs(onnx_out - native).max()) / scale
    assert rel <= 1e-4, f"max abs diff / max |logit| = {rel:.2e}"
    np.testing.assert_allclose(onnx_out, native, rtol=1e-3, atol=1e-4 * scale)


@pytest.mark.parametrize("source", ["digits_cnn_savedmodel", "digits_cnn_mlflow"])
def test_savedmodel_and_mlflow_folder_sources(models, digits, tmp_path, source):
    x = digits["x_test"][:64]
    result = FRONTEND.export(models / source, tmp_path / "out", x[:2])
    native = FRONTEND.predict(models / source, x)
    np.testing.assert_allclose(ort_run(result.onnx_path, x), native, atol=ATOL, rtol=RTOL)
    # the same model as the .keras file, whichever container it came in
    reference = FRONTEND.predict(models / "digits_cnn.keras", x)
    np.testing.assert_allclose(native, reference, atol=1e-5, rtol=1e-5)
    if source.endswith("mlflow"):
        assert result.extras["tf_source"] == models / source / "data" / "model.keras"


def test_unsupported_ops_are_listed_at_once(models, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UnsupportedOpsError) as err:
        FRONTEND.export(models / "unsupported_savedmodel", out, np.ones((2, 4), np.float32))
    assert err.value.ops == ["Digamma", "Lgamma"]
    assert "Digamma" in str(err.value) and "Lgamma" in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()


def test_truncated_keras_file_is_one_line_and_leaves_nothing(models, tmp_path):
    bad = tmp_path / "broken.keras"
    bad.write_bytes((models / "digits_cnn.keras").read_bytes()[:2000])
    out = tmp_path / "out"
    with pytest.raises(ConversionError) as err:
        FRONTEND.export(bad, out, np.zeros((1, 8, 8, 1), np.float32))
    assert "broken.keras" in str(err.value) and "corrupt" in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()


def test_keras_zip_with_garbage_inside_is_one_line_and_leaves_nothing(tmp_path):
    bad = tmp_path / "garbage.keras"
    with zipfile.ZipFile(bad, "w") as z:       # a valid zip, but not a Keras archive inside
        z.writestr("config.json", "{not json")
        z.writestr("model.weights.h5", b"\x00" * 64)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("someone else's file")
    with pytest.raises(ConversionError) as err:
        FRONTEND.export(bad, out, np.zeros((1, 8, 8, 1), np.float32))
    assert "garbage.keras" in str(err.value) and "\n" not in str(err.value)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]     # nothing ours left behind


def test_sample_of_the_wrong_shape_is_refused(models, tmp_path):
    with pytest.raises(ConversionError, match=r"does not fit the model input \(N, 8, 8, 1\)"):
        FRONTEND.export(models / "digits_cnn.keras", tmp_path / "out", np.zeros((2, 8, 8, 3), np.float32))
    assert not (tmp_path / "out").exists()


LAMBDA_MODEL = '''
import sys, keras
inputs = keras.Input((4,))
# A Python lambda is saved as marshalled bytecode; loading it without safe mode and calling the
# model writes the marker (checked here once: the file really carries code).
touch = eval("lambda x: (open(%r, 'w'), x)[1]" % sys.argv[2])
model = keras.Model(inputs, keras.layers.Lambda(touch, output_shape=(2,))(keras.layers.Dense(2)(inputs)))
model.save(sys.argv[1])
import os, numpy
os.path.exists(sys.argv[2]) and os.unlink(sys.argv[2])
keras.saving.load_model(sys.argv[1], safe_mode=False)(numpy.zeros((1, 4), "float32"))
assert os.path.exists(sys.argv[2]), "the lambda did not run when loaded unsafely"
'''


def test_a_keras_lambda_layer_is_refused_not_run(tmp_path):
    """A Lambda layer is marshalled Python bytecode: conversion loads Keras files in safe mode."""
    import subprocess

    from trainer.runtimes import python_for

    marker = tmp_path / "marker"
    (tmp_path / "make.py").write_text(LAMBDA_MODEL)
    subprocess.run([str(python_for("tensorflow")), str(tmp_path / "make.py"), str(tmp_path / "lambda.keras"),
                    str(marker)], check=True, capture_output=True, timeout=300)
    marker.unlink()                  # the unsafe load in the maker script wrote it
    with pytest.raises(ConversionError) as err:
        FRONTEND.export(tmp_path / "lambda.keras", tmp_path / "out", np.zeros((2, 4), np.float32))
    assert "lambda.keras" in str(err.value) and "safe_mode" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_fp32_diagnosis_names_the_keras_layer_of_a_perturbed_onnx_node(models, digits, tmp_path, monkeypatch):
    """Issue 25 for the Keras frontend: one weight of the second Conv2D nudged in the exported
    ONNX (an exporter that maps a layer wrongly looks like this). Keras layer names survive
    tf2onnx, so the diagnosis compares layer by layer with the native model (its NHWC
    activations against ONNX's NCHW ones) and names that layer, not a later one."""
    from _perturb import nudging
    from converters.api import convert
    from converters.frontends.keras import KerasFrontend
    from trainer.errors import ParityError

    np.savez(tmp_path / "calib.npz", x=digits["x_test"][:200], y=digits["y_test"][:200])
    second_conv = nudging(KerasFrontend.export, lambda i: len(i.dims) == 4 and i.dims[0] == 32)
    monkeypatch.setattr(KerasFrontend, "export", second_conv)
    with pytest.raises(ParityError) as caught:
        convert(models / "digits_cnn.keras", "keras", "onnx", calib=tmp_path / "calib.npz", out_dir=tmp_path / "out",
                log_to_mlflow=False)
    d = caught.value.report.rows[0].diagnosis
    first = d["first_divergence"]
    assert d["kind"] == "fp32" and first["layer"] == "conv2d_1" and first["op_type"] == "Relu"
    by_layer = {e["layer"]: e for e in d["layers"]}
    assert by_layer["conv2d"]["passed"] and by_layer["max_pooling2d"]["passed"]     # upstream intact
    assert "layer conv2d_1" in str(caught.value)
