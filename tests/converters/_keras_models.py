"""Real Keras models for the keras-frontend and TFLite tests, built in the tensorflow runtime.

    <tensorflow runtime python> tests/converters/_keras_models.py OUT_DIR

writes into OUT_DIR (one TensorFlow start for all of them):
  digits_cnn.keras        Sequential CNN trained 6 epochs on sklearn digits (8x8x1, NHWC)
  digits_cnn_savedmodel/  the same model as a SavedModel (`model.export`)
  digits_cnn_mlflow/      the same model as an MLflow tensorflow-flavor model folder
  mobilenet_v2.keras      keras.applications.MobileNetV2(weights=None), 32x32x3, 10 classes
  unsupported_savedmodel/ a SavedModel using lgamma and digamma (no tf2onnx handler)
  digits.npz              x_train/x_test (N, 8, 8, 1) float32 in [0, 1], y_train/y_test
  info.json               test accuracy of the trained CNN, versions

The pytest side only calls `ensure_models`, which runs this file once per test session; this
module imports no framework at the top, so pytest can import it without tensorflow.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

DONE = "info.json"


def ensure_models(tmp_path_factory) -> Path:
    """Build the models once per pytest session (shared by test_keras*.py and test_tflite*.py)."""
    import pytest
    from trainer.errors import RuntimeNotInstalledError
    from trainer.home import repo_root
    from trainer.runtimes import python_for

    out = tmp_path_factory.getbasetemp() / "keras-models"
    if (out / DONE).is_file():
        return out
    try:
        python = python_for("tensorflow")
    except RuntimeNotInstalledError as exc:
        pytest.skip(str(exc))
    out.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(repo_root()), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([str(python), __file__, str(out)], env=env, capture_output=True, text=True,
                          timeout=900)
    if done.returncode != 0:
        raise AssertionError(f"building the keras test models failed:\n{done.stderr[-4000:]}")
    return out


def build(out: Path) -> None:
    import keras
    import numpy as np
    import tensorflow as tf
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    keras.utils.set_random_seed(0)
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.25, random_state=0,
                                                        stratify=digits.target)
    np.savez(out / "digits.npz", x_train=x_train, x_test=x_test, y_train=y_train, y_test=y_test)

    cnn = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10),
    ])
    cnn.compile(optimizer=keras.optimizers.Adam(3e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    cnn.fit(x_train, y_train, epochs=6, batch_size=64, verbose=0)
    _, acc = cnn.evaluate(x_test, y_test, verbose=0)
    cnn.save(out / "digits_cnn.keras")
    cnn.export(str(out / "digits_cnn_savedmodel"), verbose=False)

    import mlflow.tensorflow
    mlflow.tensorflow.save_model(cnn, str(out / "digits_cnn_mlflow"), pip_requirements=["tensorflow-cpu"])

    mobilenet = keras.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None, classes=10,
                                                  classifier_activation=None)
    mobilenet.save(out / "mobilenet_v2.keras")

    class Special(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def __call__(self, x):
            return tf.math.lgamma(x + 1.0) + tf.math.digamma(x + 1.0)

    special = Special()
    tf.saved_model.save(special, str(out / "unsupported_savedmodel"),
                        signatures={"serving_default": special.__call__})

    (out / DONE).write_text(json.dumps({
        "cnn_test_accuracy": float(acc), "tensorflow": tf.__version__, "keras": keras.__version__,
        "mobilenet_params": int(mobilenet.count_params()),
    }))


if __name__ == "__main__":
    build(Path(sys.argv[1]))
