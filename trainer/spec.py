"""The job spec: one strict pydantic model, loaded from YAML, with errors that name the field.

Paths in a spec (entrypoint, data.path) are relative to the job's *workdir*: the nearest folder
above the spec file holding a pyproject.toml or .git (the project root), else the spec's folder.
The workdir is what gets uploaded to the cluster as the job's code.
"""
from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from trainer.errors import SpecError

FRAMEWORKS = ("torch", "tensorflow", "mxnet")
PACKAGE_SCHEME = "package://"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Resources(_Strict):
    accelerator: str = Field("cpu", description="Node label ray.io/accelerator-type the workers must run on "
                             "(cpu, A100, H100, T4, ...).", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    gpus_per_worker: float = Field(0, ge=0, description="GPUs each worker reserves.")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs each worker reserves.")


class Data(_Strict):
    path: str = Field(..., description="File or folder of training data, relative to the workdir, or "
                      "package://<module>/<file> for a file shipped inside an installed package. "
                      "Fingerprinted and logged to MLflow as the run's dataset.")


class Checkpoint(_Strict):
    every_epochs: int = Field(1, ge=1, description="Persist every N-th checkpoint passed to ctx.report.")
    keep: int = Field(3, ge=1, description="How many persisted checkpoints to keep.")
    storage: str | None = Field(None, description="Where checkpoints go: a path every node shares, or "
                                "s3://... / gs://...; default $TRAINER_HOME/checkpoints (local cluster).")


class Failure(_Strict):
    max_failures: int = Field(0, ge=0, description="Worker-group restarts (from the last checkpoint) "
                              "before the job fails.")


class Tracking(_Strict):
    experiment: str | None = Field(None, description="MLflow experiment; defaults to the job name.")
    uri: str | None = Field(None, description="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else "
                            "the embedded sqlite:///$TRAINER_HOME/mlflow.db.")


class Parity(_Strict):
    atol: float = Field(1e-4, gt=0, description="fp32 targets: max abs diff allowed.")
    rtol: float = Field(1e-3, gt=0, description="fp32 targets: max relative diff allowed.")
    min_agreement: float = Field(0.98, ge=0, le=1, description="int8 targets: top-1 agreement required.")
    max_accuracy_drop: float = Field(0.01, ge=0, le=1, description="int8 targets: accuracy drop allowed.")


class Convert(_Strict):
    targets: list[str] = Field(..., min_length=1, description="onnx, onnx-int8, tflite, pytorch, ...")
    parity: Parity = Field(default_factory=Parity)
    edge: list[str] = Field(default_factory=list, description="aarch64 CPU models to check the edge "
                            "bundle on under emulation (cortex-a72, cortex-a53, neoverse-n1).")


class JobSpec(_Strict):
    """A training job: what to run, where, and where its results go."""

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$",
                      description="Lower-case job name; prefix of the job id.")
    framework: Literal["torch", "tensorflow", "mxnet"]
    runtime: str | None = Field(None, description="Runtime (venv/image) the workers run in; defaults to "
                                "the framework's.")
    entrypoint: str = Field(..., description="path/to/file.py:function, called in every worker with ctx.")
    workers: int = Field(1, ge=1, description="Number of training workers (ranks).")
    resources: Resources = Field(default_factory=Resources)
    data: Data | None = None
    config: dict[str, Any] = Field(default_factory=dict, description="Hyperparameters: ctx.config, "
                                   "logged as MLflow params.")
    checkpoint: Checkpoint = Field(default_factory=Checkpoint)
    failure: Failure = Field(default_factory=Failure)
    timeout_minutes: int | None = Field(None, ge=1, description="Wall-clock limit of the whole job, its "
                                        "cluster's start included: the RayJob's activeDeadlineSeconds on "
                                        "Kubernetes (trainer submit --k8s, trainer k8s render). Not enforced "
                                        "on a Ray cluster a job is submitted to directly.")
    tracking: Tracking = Field(default_factory=Tracking)
    convert: Convert | None = None

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint_form(cls, v: str) -> str:
        if not re.fullmatch(r"[^:]+\.py:[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError(f"must be 'path/to/file.py:function', got {v!r}")
        return v

    @property
    def entrypoint_file(self) -> str:
        return self.entrypoint.rsplit(":", 1)[0]

    @property
    def entrypoint_function(self) -> str:
        return self.entrypoint.rsplit(":", 1)[1]

    @property
    def runtime_name(self) -> str:
        return self.runtime or self.framework

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name


def json_schema() -> dict:
    """JSON Schema of the job spec, for editor autocompletion of job YAML."""
    schema = JobSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "trainer job spec"
    return schema


# ---------------------------------------------------------------- loading & errors

def load_spec(source: str | Path | dict, overrides: list[str] | dict | None = None) -> tuple[JobSpec, Path]:
    """Load and validate a spec from a YAML file or a dict; return it with its workdir.

    `overrides` are `dotted.key=value` strings (values parsed as YAML) or a mapping of the same.
    Raises SpecError naming the field.
    """
    if isinstance(source, dict):
        raw, workdir = dict(source), Path.cwd()
    else:
        path = Path(source)
        if not path.is_file():
            raise SpecError(f"spec file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise SpecError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
        if not isinstance(raw, dict):
            raise SpecError(f"{path}: a job spec is a mapping of keys (name, framework, ...), "
                            f"got {type(raw).__name__}")
        workdir = find_workdir(path)
    for key, value in _parse_overrides(overrides).items():
        _set_dotted(raw, key, value)
    return validate(raw), workdir


def validate(raw: dict) -> JobSpec:
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError("; ".join(_describe(err) for err in e.errors(include_url=False)),
                        path=_loc(e.errors()[0]["loc"])) from None


def find_workdir(spec_path: Path) -> Path:
    start = spec_path.resolve().parent
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file() or (folder / ".git").exists():
            return folder
    return start


def _parse_overrides(overrides) -> dict[str, Any]:
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    parsed = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set {item!r}: expected dotted.key=value, e.g. config.lr=0.1", path="--set")
        try:
            parsed[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed[key.strip()] = value
    return parsed


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise SpecError(f"is {type(child).__name__}, not a mapping; cannot set {dotted!r}",
                            path=".".join(parts[:i + 1]))
        node = child
    node[parts[-1]] = value


def _loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "<spec>"


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the field at `loc` (to suggest the nearest key for a typo)."""
    model: Any = JobSpec
    for part in loc:
        field = model.model_fields.get(str(part)) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        ann = field.annotation
        candidates = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            return None
        model = candidates[0]
    return model


def _describe(err: dict) -> str:
    loc, kind, ctx, value = err["loc"], err["type"], err.get("ctx") or {}, err.get("input")
    where = _loc(loc)
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1]) or JobSpec
        valid = list(parent.model_fields)
        near = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(valid)}"
        return f"{where}: unknown key{hint}"
    if kind == "missing":
        return f"{where}: required field is missing"
    shown = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()))
        return f"{where}: must be {op} {bound}, got {shown}"
    if kind == "literal_error":
        return f"{where}: must be one of {ctx.get('expected', '')}, got {shown}"
    if kind == "string_pattern_mismatch":
        return f"{where}: {shown} does not match {ctx.get('pattern')}"
    if kind == "too_short":
        return f"{where}: must not be empty"
    if kind == "value_error":
        return f"{where}: {ctx.get('error', err['msg'])}"
    if kind == "model_type" or kind == "dict_type":
        return f"{where}: must be a mapping, got {shown}"
    return f"{where}: {err['msg'].lower()}, got {shown}"
