"""Keras / TensorFlow frontend: a `.keras`/`.h5` file, a SavedModel directory or an MLflow
keras/tensorflow-flavor model folder -> ONNX (dynamic batch, NHWC images), via tf2onnx.

Keras 3 breaks `tf2onnx.convert.from_keras` on Sequential models (KeyError 'keras_tensor_N'),
so the model is wrapped in a `tf.function` with a dynamic-batch input signature and converted
with `tf2onnx.convert.from_function`. TensorFlow never enters this process: the work runs in
the tensorflow runtime (`trainer runtime install tensorflow`), in the long-lived worker of
`converters.workers` (commands in `converters/workers/keras.py`), since `import tensorflow`
alone costs ~20 s.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from converters.base import ExportResult, Frontend, LayerOutputs, ModelInput
from converters.workers.client import WorkerClient, save_array, worker
from trainer.errors import ConversionError, UsageError

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
LAYOUTS = {2: "NC", 3: "NTC", 4: "NHWC", 5: "NDHWC"}


# -- resolving what the user pointed at ----------------------------------------------------------

def resolve_source(model: Path) -> Path:
    """The loadable native model inside `model`: a .keras/.h5 file or a SavedModel directory.

    An MLflow model folder (an `MLmodel` file with a keras/tensorflow flavor) is resolved to
    the file or directory its flavor names: `data/model.keras` for Keras models, the
    `saved_model_dir` for tf2-module models.
    """
    model = Path(model)
    if not model.exists():
        raise UsageError(f"keras model {model} does not exist")
    if model.is_file():
        if model.suffix not in (".keras", ".h5", ".hdf5"):
            raise ConversionError(f"{model.name}: not a Keras model file (.keras or .h5); for a SavedModel "
                                  f"pass its directory")
        # Checked here, before a ~20 s tensorflow start, and with a clearer word than Keras's
        # "File not found" for a zip it cannot open.
        if model.suffix == ".keras" and not zipfile.is_zipfile(model):
            raise ConversionError(f"{model}: not a valid .keras archive (corrupt or truncated zip); "
                                  f"save the model again with model.save('model.keras')")
        if model.suffix != ".keras" and _head(model) != HDF5_MAGIC:
            raise ConversionError(f"{model}: not a valid HDF5 file (corrupt or truncated); "
                                  f"save the model again with model.save('model.keras')")
        return model
    if (model / "saved_model.pb").is_file():
        return model
    if (model / "MLmodel").is_file():
        return _from_mlflow_folder(model)
    raise ConversionError(f"{model} is neither a SavedModel directory (no saved_model.pb) nor an MLflow "
                          f"model folder (no MLmodel)")


def _from_mlflow_folder(folder: Path) -> Path:
    import yaml
    try:
        meta = yaml.safe_load((folder / "MLmodel").read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConversionError(f"{folder / 'MLmodel'} is not valid YAML: {exc.__class__.__name__}") from None
    flavors = meta.get("flavors") or {}
    conf = flavors.get("tensorflow") or flavors.get("keras")
    if conf is None:
        raise ConversionError(f"MLflow model {folder} has no keras/tensorflow flavor (flavors: "
                              f"{', '.join(sorted(flavors)) or 'none'}); use the matching --from")
    if conf.get("saved_model_dir"):
        found = folder / conf["saved_model_dir"]
        if (found / "saved_model.pb").is_file():
            return found
    data = folder / conf.get("data", "data")
    for candidate in (data / "model.keras", data / "model.h5", data / "model"):
        if candidate.is_file() or (candidate / "saved_model.pb").is_file():
            return candidate
    for pattern in ("*.keras", "*.h5"):
        hits = sorted(data.rglob(pattern)) if data.is_dir() else []
        if hits:
            return hits[0]
    raise ConversionError(f"MLflow model {folder}: no .keras/.h5 file or SavedModel under {data.name}/")


def _head(path: Path, n: int = 8) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def layout_for(rank: int) -> str:
    return LAYOUTS.get(rank, "N" + "?" * (rank - 1))


# -- the frontend ---------------------------------------------------------------------------------

class KerasFrontend(Frontend):
    name = "keras"
    runtime = "tensorflow"

    def __init__(self, worker: WorkerClient | None = None):
        self._worker = worker

    @property
    def worker(self) -> WorkerClient:
        return self._worker or worker(self.runtime)

    def export(self, model: Path, out_dir: Path, sample: np.ndarray) -> ExportResult:
        source = resolve_source(model)
        sample = _as_batch(sample, "sample")
        out_dir = Path(out_dir)
        created = not out_dir.exists()
        out_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".keras-export-", dir=out_dir))
        try:
            info = self.worker.call("keras-export", who=self.name, model=source,
                                    sample=save_array(work, "sample", sample), out=work / "model.onnx")
            target = out_dir / "model.onnx"
            os.replace(work / "model.onnx", target)
        except BaseException:
            _cleanup(work, out_dir if created else None)
            raise
        shutil.rmtree(work, ignore_errors=True)
        notes = [f"tf.function + tf2onnx.convert.from_function (opset {info['opset']}): Keras 3 "
                 f"Sequential models break from_keras"]
        if info["kind"] == "saved_model":
            notes.append("source is a SavedModel: its serving signature was converted")
        if info["n_native_outputs"] > 1:
            notes.append(f"the model has {info['n_native_outputs']} outputs; only the first is exported")
        shape = tuple(info["input_shape"])
        return ExportResult(onnx_path=target,
                            inputs=[ModelInput(info["input"], shape, layout_for(len(shape)))],
                            exporter=info["exporter"], notes=notes,
                            extras={"tf_source": source})

    def predict(self, model: Path, inputs: np.ndarray) -> np.ndarray:
        source = resolve_source(model)
        return self.worker.predict("keras-predict", _as_batch(inputs, "inputs"), who=self.name, model=source)

    def layer_outputs(self, model: Path, inputs: np.ndarray, names: list[str]) -> dict[str, np.ndarray] | None:
        """The named Keras layers' outputs (tf2onnx keeps the layer names in its node names:
        `sequential_1/conv2d_1/Relu` is layer `conv2d_1`); None for a SavedModel (no layers)."""
        source = resolve_source(model)
        with tempfile.TemporaryDirectory(prefix="trainer-keras-layers-") as tmp:
            out = Path(tmp) / "layers.npz"
            info = self.worker.call("keras-layer-outputs", who=self.name, model=source, layers=list(names),
                                    inputs=save_array(tmp, "x", _as_batch(inputs, "inputs")), out=out)
            if not info.get("layers"):
                return None
            with np.load(out) as found:       # arrays only: allow_pickle stays off
                # layer_names: the Keras layer each scope is (TensorFlow uniquifies scopes: `conv2d_1_2`)
                return LayerOutputs({name: found[f"l{i}"] for i, name in enumerate(info["layers"])},
                                    info.get("names"))


def _as_batch(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 2 or len(x) == 0:
        raise ConversionError(f"keras: {what} must be a non-empty batch (N, ...); got shape {x.shape}")
    if x.dtype.kind not in "fiub":
        raise ConversionError(f"keras: {what} must be numeric; got dtype {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _cleanup(work: Path, created_dir: Path | None) -> None:
    shutil.rmtree(work, ignore_errors=True)
    if created_dir is not None:
        try:
            created_dir.rmdir()       # only when empty: never remove what someone else put there
        except OSError:
            pass


FRONTEND = KerasFrontend()

__all__ = ["FRONTEND", "KerasFrontend", "resolve_source"]
