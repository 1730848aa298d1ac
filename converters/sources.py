"""Where conversion's inputs come from: the model (a path or an MLflow model URI) and the
calibration samples (a .npy/.npz file, or the `calibration/` artifacts of the model's run).

A training job logs, for each run it converts later:
    calibration/inputs.npy   float32, the native model's input layout (e.g. NCHW for torch)
    calibration/labels.npy   int class labels or float regression targets (optional)
and `runs:/<id>/model` is an MLflow model of the framework's flavor.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.errors import ConversionError, UsageError, first_line

_FLAVOR_TO_FRONTEND = {"pytorch": "torch", "keras": "keras", "tensorflow": "keras", "onnx": "onnx"}


@dataclass
class ResolvedModel:
    path: Path                    # local file/folder the frontend reads
    uri: str                      # what the user gave
    run_id: str | None = None     # the MLflow run the model came from, if any


@dataclass
class Calibration:
    x: np.ndarray                 # inputs, native layout
    y: np.ndarray | None = None   # integer class labels or float regression targets, when known
    origin: str = ""


def is_mlflow_uri(model: str) -> bool:
    return model.startswith(("runs:/", "models:/"))


def resolve_model(model: str, download_dir: Path, tracking_uri: str) -> ResolvedModel:
    """A local path as it is; an MLflow URI downloaded into `download_dir` with its source run."""
    if not is_mlflow_uri(model):
        path = Path(model).expanduser()
        if not path.exists():
            raise UsageError(f"model not found: {model} (give a file, a folder, or runs:/<run id>/model "
                             f"or models:/<name>@<alias>)")
        return ResolvedModel(path.resolve(), model)
    import mlflow
    from mlflow.exceptions import MlflowException

    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    run_id = source_run_id(model, tracking_uri)
    try:
        # MLflow 3.17 resolves `runs:/<id>/model` (a logged model) with the process's global
        # tracking URI, not the one passed: with none set (a notebook, any Python caller) it looked
        # in ./mlflow.db and failed "Failed to download artifacts from path 'model'".
        with _use_tracking_uri(tracking_uri):
            local = mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=str(download_dir),
                                                        tracking_uri=tracking_uri)
    except MlflowException as err:
        raise UsageError(f"cannot download {model} from MLflow ({tracking_uri}): "
                         f"{first_line(err)}") from err
    return ResolvedModel(Path(local), model, run_id)


def source_run_id(model: str, tracking_uri: str) -> str:
    """The run a `runs:/` or `models:/` URI's model was logged in."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    m = re.fullmatch(r"runs:/([^/]+)(/.*)?", model)
    if m:
        return m.group(1)
    m = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/([^/]+))/?", model)
    if not m:
        raise UsageError(f"not a model URI: {model}; use runs:/<run id>/<path>, models:/<name>@<alias> "
                         f"or models:/<name>/<version>")
    name, alias, version = m.groups()
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    try:
        if alias:
            mv = client.get_model_version_by_alias(name, alias)
        elif version.isdigit():
            mv = client.get_model_version(name, version)
        else:
            raise UsageError(f"{model}: stages are deprecated in MLflow 3; use models:/{name}@<alias>")
    except MlflowException as err:
        raise UsageError(f"cannot resolve {model}: {first_line(err)}") from err
    return mv.run_id


def frontend_for(path: Path) -> str | None:
    """The frontend an MLflow model folder calls for, from its flavors (None if not one)."""
    mlmodel = Path(path) / "MLmodel"
    if not mlmodel.is_file():
        return None
    import yaml

    flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {})
    return next((_FLAVOR_TO_FRONTEND[f] for f in flavors if f in _FLAVOR_TO_FRONTEND), None)


def load_calibration(path: Path) -> Calibration:
    """`.npy` (inputs) or `.npz` (keys `x`/`inputs`, optional `y`/`labels`)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"calibration data not found: {path}")
    try:
        if path.suffix == ".npy":
            return Calibration(_as_inputs(np.load(path, allow_pickle=False), path), None, str(path))
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                xkey = next((k for k in ("x", "inputs") if k in z.files), None)
                if xkey is None:
                    raise UsageError(f"{path.name} has keys {', '.join(z.files) or 'none'}; the inputs "
                                     f"must be under 'x' or 'inputs' (labels under 'y' or 'labels')")
                ykey = next((k for k in ("y", "labels") if k in z.files), None)
                x = _as_inputs(z[xkey], path)
                y = _as_labels(z[ykey], len(x), path) if ykey else None
                return Calibration(x, y, str(path))
    except (ValueError, OSError, EOFError) as err:
        raise UsageError(f"cannot read calibration data {path.name}: {first_line(err)}") from err
    raise UsageError(f"calibration data must be .npy or .npz, got {path.name}")


def run_calibration(run_id: str, tracking_uri: str) -> Calibration | None:
    """`calibration/inputs.npy` (+ `labels.npy`) logged in the run, or None if it has none."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        names = {Path(f.path).name for f in client.list_artifacts(run_id, "calibration")}
    except MlflowException as err:
        raise UsageError(f"cannot list the artifacts of run {run_id}: {first_line(err)}") from err
    if "inputs.npy" not in names:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        x = np.load(client.download_artifacts(run_id, "calibration/inputs.npy", tmp))
        y = np.load(client.download_artifacts(run_id, "calibration/labels.npy", tmp)) \
            if "labels.npy" in names else None
    origin = f"runs:/{run_id}/calibration"
    x = _as_inputs(x, Path(origin))
    return Calibration(x, _as_labels(y, len(x), Path(origin)) if y is not None else None, origin)


def check_shape(x: np.ndarray, expected: tuple[int | None, ...] | None, what: str = "the model") -> None:
    """Calibration inputs must match what the model takes (batch dim and unknown dims free)."""
    if not expected:
        return
    got = tuple(x.shape)
    ok = len(got) == len(expected) and all(e is None or e == g
                                           for e, g in zip(expected[1:], got[1:]))
    if not ok:
        raise ConversionError(f"calibration inputs have shape {fmt_shape(got, batch=True)} but "
                              f"{what} takes {fmt_shape(expected, batch=True)}; give samples in the "
                              f"native model's input layout")


def fmt_shape(shape, batch: bool = False) -> str:
    dims = ["?" if d is None else str(d) for d in shape]
    if batch and dims:
        dims[0] = "N"
    return "(" + ", ".join(dims) + ")"


def split(calib: Calibration, max_calib: int = 256, max_eval: int = 1000) -> tuple[Calibration, Calibration, str]:
    """Samples to calibrate with and held-out samples to judge parity on (disjoint when >= 20)."""
    n = len(calib.x)
    if n < 20:
        return calib, calib, f"all {n} samples used both to calibrate and to judge parity (fewer than 20)"
    half = n // 2
    cal = Calibration(calib.x[:min(half, max_calib)], None if calib.y is None else calib.y[:min(half, max_calib)])
    ev = Calibration(calib.x[half:half + max_eval], None if calib.y is None else calib.y[half:half + max_eval])
    return cal, ev, (f"calibrated on {len(cal.x)} samples, parity judged on {len(ev.x)} held-out samples "
                     f"from {calib.origin or 'the calibration data'}")


def _as_inputs(x: np.ndarray, path: Path) -> np.ndarray:
    if x.dtype.kind not in "fiu" or x.ndim < 2 or len(x) == 0:
        raise UsageError(f"{path.name}: calibration inputs must be a numeric array (N, ...) with N >= 1, "
                         f"got dtype {x.dtype} shape {tuple(x.shape)}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _as_labels(y: np.ndarray, n: int, path: Path) -> np.ndarray:
    """Integer class labels (N,) (classification), or finite float targets (N,) / (N, ...)
    (regression: judged by the change in RMSE / MAE)."""
    y = np.asarray(y)
    if y.dtype.kind in "iu" and y.ndim == 1 and len(y) == n:
        return y.astype(np.int64)
    if y.dtype.kind == "f" and y.ndim >= 1 and len(y) == n and np.all(np.isfinite(y)):
        return y.astype(np.float64)
    raise UsageError(f"{path.name}: labels must be integer classes of shape ({n},) or finite float targets "
                     f"of shape ({n}, ...), got dtype {y.dtype} shape {tuple(y.shape)}")


def run_model_info(run_id: str, tracking_uri: str) -> dict:
    """What `ctx.save_model(preprocessing=, class_names=)` recorded in the run, checked again (the
    run's artifact is data: a wrong one is a ConversionError naming it); {} when it has none."""
    import json

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from trainer.protocol import MODEL_INFO_ARTIFACT, model_info

    client = MlflowClient(tracking_uri)
    folder, name = MODEL_INFO_ARTIFACT.rsplit("/", 1)
    try:
        if name not in {Path(f.path).name for f in client.list_artifacts(run_id, folder)}:
            return {}
        with tempfile.TemporaryDirectory() as tmp:
            found = json.loads(Path(client.download_artifacts(run_id, MODEL_INFO_ARTIFACT, tmp)).read_text())
    except MlflowException as err:
        raise UsageError(f"cannot read {MODEL_INFO_ARTIFACT} of run {run_id}: {first_line(err)}") from err
    except ValueError as err:
        raise ConversionError(f"runs:/{run_id}/{MODEL_INFO_ARTIFACT} is not JSON: {err}") from None
    if not isinstance(found, dict):
        raise ConversionError(f"runs:/{run_id}/{MODEL_INFO_ARTIFACT} is not a JSON object")
    try:
        return model_info(found.get("preprocessing"), found.get("class_names"), what=f"runs:/{run_id}/{MODEL_INFO_ARTIFACT}")
    except ValueError as err:
        raise ConversionError(str(err)) from None


def model_digest(path: Path) -> str:
    """sha256 of a model file; of a model folder, sha256 over its files' relative paths and digests."""
    import hashlib

    path = Path(path)
    if path.is_file():
        digest = hashlib.sha256(path.read_bytes())
    else:
        digest = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{f.relative_to(path).as_posix()}\0{hashlib.sha256(f.read_bytes()).hexdigest()}\n".encode())
    return "sha256:" + digest.hexdigest()
