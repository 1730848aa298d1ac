"""The edge bundle: one folder a board needs to run a converted model, and nothing else.

    <bundle>/
      manifest.json   format version; input name/shape/layout/dtype; preprocessing; labels;
                      every model (name -> file, kind); sha256 + size of every file; the
                      aarch64 runtime (python/numpy/onnxruntime) the runner is checked with
      <name>.onnx     one file per model (`fp32.onnx`, `int8.onnx`, ...; `.tflite` also works)
      run.py          a copy of converters/edge/runner.py: numpy + onnxruntime only, for boards
      README.md       for the person at the board: what to copy, how to run it, what it prints

The folder is written next to its final place and renamed into it, so a failed write leaves
nothing behind. `load_bundle` treats a bundle as untrusted input: every name and path in the
manifest is checked (plain file names of known kinds, regular files, no symlinks, no `..`), every
checksum, and ONNX models may not point at external data files. The manifest's checksums are
written by whoever wrote the bundle, so they prove integrity, not intent: `trainer edge run`
never executes the bundle's `run.py`, it runs this project's own runner on the bundle's models.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from converters.base import ModelInput
from converters.edge import runner
from converters.edge.setup import NUMPY_VERSION, ONNXRUNTIME_VERSION, PYTHON, WHEEL_PLATFORM
from trainer.errors import ConversionError, UsageError

FORMAT = runner.FORMAT
FORMAT_VERSION = 1
MODEL_KINDS = {".onnx": "onnx", ".tflite": "tflite"}
RUNNER_NAME = "run.py"
README_NAME = runner.README_FILE
MANIFEST_NAME = "manifest.json"
_MODEL_NAME = runner.MODEL_NAME


@dataclass
class Bundle:
    """A bundle whose files all matched their checksums when it was loaded."""

    path: Path
    manifest: dict
    models: dict[str, Path]
    inputs: list[ModelInput]
    labels: list[str] | None = None
    preprocessing: dict | None = None
    files: dict[str, dict] = field(default_factory=dict)

    @property
    def shipped_runner(self) -> Path:
        """The bundle's own run.py: for people who deploy the bundle; trainer never runs it."""
        return self.path / RUNNER_NAME

    @property
    def runner_is_ours(self) -> bool:
        """Whether the shipped run.py is byte-for-byte this project's runner."""
        entry = self.files.get(RUNNER_NAME)
        return entry is not None and entry["sha256"] == _sha256(Path(runner.__file__))


def _sha256(path: Path) -> str:
    return runner.sha256_of(path)


def _copy_onnx(src: Path, dst: Path, names: list[str]):
    """Copy one ONNX file, inlining external data so the bundle stays one file per model,
    and check that the model takes the bundle's input."""
    import onnx

    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError, OSError, ValueError... for bad files
        raise ConversionError(f"{src}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    initializers = {t.name for t in model.graph.initializer}
    graph_inputs = [i.name for i in model.graph.input if i.name not in initializers]
    if graph_inputs != names:
        raise ConversionError(f"{src.name}: model inputs are {graph_inputs}, the bundle's inputs are "
                              f"{names}; pass the ModelInput list of this model")
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    if external:
        try:
            model = onnx.load(str(src), load_external_data=True)
        except OSError as e:
            raise ConversionError(f"{src}: its external data cannot be read ({e})") from None
        onnx.save_model(model, str(dst), save_as_external_data=False)
    else:
        shutil.copyfile(src, dst)


def _check_no_external_data(path: Path, bundle_dir: Path) -> None:
    """A bundle's ONNX model is one self-contained file: an external-data reference (a path the
    runtime would read, possibly outside the bundle) is refused."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError, OSError, ValueError... for bad files
        raise ConversionError(f"{bundle_dir}: {path.name} is not a readable ONNX model ({type(e).__name__})") from None
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        tensors += [a.t for a in node.attribute if a.HasField("t")]
    for t in tensors:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            where = next((e.value for e in t.external_data if e.key == "location"), "?")
            raise ConversionError(f"unsafe bundle {bundle_dir}: {path.name} reads tensor {t.name!r} from an "
                                  f"external file ({where!r}); bundle models must be self-contained")


def _input_entry(i: ModelInput) -> dict:
    return {"name": i.name, "shape": [None if d is None else int(d) for d in i.shape],
            "layout": i.layout, "dtype": i.dtype}


_SOURCE_LINE = "Converted from "


def _source_line(source: dict) -> str:
    """The README's line naming where the models came from (run, model, version, digest)."""
    return _SOURCE_LINE + ", ".join(f"{k.replace('_', ' ')} `{v}`" for k, v in source.items() if v) + "."


def _readme(models: dict, inputs: list[ModelInput], labels: list[str] | None, preprocessing: dict | None,
            source: dict | None) -> str:
    """The bundle's README.md: what to copy to the device, how to run it, what comes out."""
    i = inputs[0]
    shape = "(" + ", ".join("N" if d is None else str(d) for d in i.shape) + ")"
    lines = ["# Edge bundle", ""]
    if source:
        lines += [_source_line(source), ""]
    lines += [
        "## Copy to the device",
        "",
        "The whole folder: `manifest.json`, `run.py`, " + ", ".join(f"`{m['file']}`" for m in models.values())
        + ". `run.py` needs Python 3.9+, numpy and onnxruntime (`pip install numpy onnxruntime`); "
        "it checks every file against the sha256 in `manifest.json` before loading anything.",
        "",
        "## Run",
        "",
        f"Save the input batch as a `.npy` array, shape {shape} ({i.layout}), dtype {i.dtype}, then:",
        "",
        "    python3 run.py --input x.npy" + (" --preprocess" if preprocessing else "") + "   # every model; "
        "results in results/",
        "    python3 run.py --input x.npy --model " + next(iter(models)) + " --repeat 50   # one model, "
        "+ batch-1 latency",
        "",
    ]
    if preprocessing:
        lines += [f"`--preprocess` applies the model's preprocessing to raw inputs first: `{json.dumps(preprocessing)}` "
                  "as `(x * scale - mean) / std`. Without it, give inputs already preprocessed.", ""]
    lines += [
        "## Output",
        "",
        "For each model, the top classes of the first samples are printed"
        + (" with their names (the manifest's `labels`, index = class)" if labels else " (class indices: the "
           "model has no class names)") + ", and written to `results/`: `<model>.npy` (the model's raw "
        "outputs, one row per input), `result.json` (top-k per sample, timings, versions, machine). "
        "Scores are the model's raw outputs (logits unless the model ends in a softmax).",
        "",
        "Exit codes: 0 ok, 2 bad arguments or input, 3 corrupt bundle, 4 runtime missing or failed.",
        "",
    ]
    return "\n".join(lines)


def write_bundle(out_dir: Path, models: dict[str, Path], inputs: list[ModelInput],
                 labels: list[str] | None = None, preprocessing: dict | None = None,
                 source: dict | None = None) -> Path:
    """Write an edge bundle for `models` (name -> .onnx/.tflite file) into `out_dir`.

    `out_dir` may be missing, empty, or an older bundle (replaced); anything else is refused.
    `preprocessing` is stored as given (JSON); the runner applies `scale`, `mean`, `std`,
    `channel_axis` on request (`run.py --preprocess`). `labels` name the model's output classes.
    `source` names where the models came from (run id, model URI, model version, model digest).
    Returns `out_dir`.
    """
    out_dir = Path(out_dir)
    if not models:
        raise UsageError("write_bundle: no models given; pass {name: path}")
    if len(inputs) != 1:
        raise ConversionError(f"edge bundles take models with exactly one input, got {len(inputs)}: "
                              f"{[i.name for i in inputs]}")
    for name, path in models.items():
        if not _MODEL_NAME.match(name) or ".." in name or name in ("run", "manifest"):
            raise UsageError(f"bundle model name {name!r} must be a plain file name "
                             "(letters, digits, _ . -), not 'run' or 'manifest'")
        if Path(path).suffix not in MODEL_KINDS:
            raise UsageError(f"{path}: edge bundles take {', '.join(MODEL_KINDS)} models")
        if not Path(path).is_file():
            raise UsageError(f"{path}: model file not found")
    if labels is not None:
        labels = [str(label) for label in labels]
    try:
        json.dumps(preprocessing)
    except TypeError as e:
        raise UsageError(f"bundle preprocessing must be JSON (numbers, lists, strings): {e}") from None
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).is_file():
        raise UsageError(f"{out_dir} exists and is not an edge bundle; pick an empty or new folder")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        entries = {}
        for name, path in models.items():
            path = Path(path)
            kind = MODEL_KINDS[path.suffix]
            file = f"{name}{path.suffix}"
            if kind == "onnx":
                _copy_onnx(path, staging / file, [i.name for i in inputs])
            else:
                shutil.copyfile(path, staging / file)
            entries[name] = {"file": file, "kind": kind}
        shutil.copyfile(runner.__file__, staging / RUNNER_NAME)
        (staging / README_NAME).write_text(_readme(entries, inputs, labels, preprocessing, source))
        files = {f.name: {"sha256": _sha256(f), "size": f.stat().st_size}
                 for f in sorted(staging.iterdir())}
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "models": entries,
            "inputs": [_input_entry(i) for i in inputs],
            "source": {k: v for k, v in (source or {}).items() if v is not None} or None,
            "preprocessing": preprocessing,
            "labels": labels,
            "files": files,
            "runner": {"file": RUNNER_NAME, "needs": ["python>=3.9", "numpy", "onnxruntime"]
                       + (["ai-edge-litert"] if any(e["kind"] == "tflite" for e in entries.values()) else []),
                       "usage": "python3 run.py --input x.npy" + (" --preprocess" if preprocessing else "")
                       + "   (results in results/; see README.md)"},
            # The aarch64 runtime `trainer edge run` checks bundles with (qemu-user, Debian arm64).
            "checked_with": {"python": PYTHON.removeprefix("python"), "numpy": NUMPY_VERSION,
                             "onnxruntime": ONNXRUNTIME_VERSION, "platform": WHEEL_PLATFORM},
            "written_with": _host_versions(),
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def name_source(bundle_dir: Path, **fields: str | None) -> dict:
    """Add to a written bundle's source what was only known later (the model version a job
    registered after its conversion wrote the bundle): the manifest's `source` and the README's
    line, whose checksum is updated with it. The bundle is checked first. Returns the new source."""
    bundle = load_bundle(bundle_dir)
    manifest = dict(bundle.manifest)
    source = {**(manifest.get("source") or {}), **{k: v for k, v in fields.items() if v is not None}}
    readme = Path(bundle_dir) / README_NAME
    if readme.name in bundle.files:
        lines = readme.read_text().split("\n")
        at = next((i for i, line in enumerate(lines) if line.startswith(_SOURCE_LINE)), None)
        if at is None:
            lines[2:2] = [_source_line(source), ""]
        else:
            lines[at] = _source_line(source)
        readme.write_text("\n".join(lines))
        manifest["files"] = {**bundle.files, readme.name: {"sha256": _sha256(readme), "size": readme.stat().st_size}}
    manifest["source"] = source
    (Path(bundle_dir) / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return source


def _host_versions() -> dict:
    import platform

    found = {"python": platform.python_version(), "machine": platform.machine()}
    for module in ("onnx", "onnxruntime"):
        try:
            found[module] = __import__(module).__version__
        except ImportError:
            pass
    return found


def load_bundle(bundle_dir: Path) -> Bundle:
    """Read a bundle and check every file against its manifest checksum and size."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise UsageError(f"{bundle_dir}: no such bundle folder")
    try:
        manifest = runner.load_manifest(bundle_dir, verify=True)
    except runner.BundleError as e:
        raise ConversionError(f"{bundle_dir}: {e}") from None
    try:
        models = {name: bundle_dir / m["file"] for name, m in manifest["models"].items()}
        inputs = [ModelInput(name=i["name"], shape=tuple(i["shape"]), layout=i["layout"],
                             dtype=i["dtype"]) for i in manifest["inputs"]]
    except (KeyError, TypeError) as e:
        raise ConversionError(f"{bundle_dir}/manifest.json: missing or malformed field {e}") from None
    for name, path in models.items():
        if path.name not in manifest["files"]:
            raise ConversionError(f"{bundle_dir}/manifest.json: model {name!r} file {path.name} has no checksum")
        if path.suffix == ".onnx":
            _check_no_external_data(path, bundle_dir)
    return Bundle(path=bundle_dir, manifest=manifest, models=models, inputs=inputs,
                  labels=manifest.get("labels"), preprocessing=manifest.get("preprocessing"),
                  files=manifest["files"])
