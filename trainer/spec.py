"""The job spec: one strict pydantic model, loaded from YAML, with errors that name the field.

Paths in a spec (entrypoint, data.path) are relative to the job's *workdir*: the nearest folder
above the spec file holding a pyproject.toml or .git (the project root), else the spec's folder.
The workdir is what gets uploaded to the cluster as the job's code.
"""
from __future__ import annotations

import difflib
import json
import math
import operator
import os
import re
import stat
import warnings
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

from trainer.errors import SpecError, first_line

FRAMEWORKS = ("torch", "tensorflow", "mxnet")
PACKAGE_SCHEME = "package://"

# A job spec is a few hundred bytes; a cap keeps a wrong file (a dataset, a model) from being read
# whole and parsed in pure Python.
MAX_SPEC_BYTES = 256 * 1024
# Mappings and lists nested deeper than this are refused while parsing (PyYAML's composer
# recurses: a 10,000-deep `[[[...]]]` is a RecursionError otherwise). `config` is the only
# free-form part of a spec; 32 levels of hyperparameters is plenty.
MAX_DEPTH = 32
# Values quoted back in an error are cut to this many characters.
MAX_SHOWN = 80
# Ray keeps resource amounts to 4 decimals: less than this rounds to nothing.
RAY_RESOURCE_UNIT = 0.0001

# Strict numbers: `workers: '2'` and `workers: true` are refused, not coerced. A strict float
# still takes an int (`atol: 1`), never a bool or a string.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]


class _Strict(BaseModel):
    # allow_inf_nan=False: `.inf` / `.nan` are refused in every float field (`parity.atol: .inf`
    # would turn the parity gate off).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class Resources(_Strict):
    accelerator: str = Field("cpu", description="Node label ray.io/accelerator-type the workers must run on "
                             "(cpu, A100, H100, T4, ...).", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    gpus_per_worker: Float = Field(0, ge=0, le=64, description="GPUs each worker reserves (0, or "
                                   f"{RAY_RESOURCE_UNIT:g} to 64: a worker lives on one node).")
    cpus_per_worker: Float = Field(1, gt=0, le=1024, description="CPUs each worker reserves "
                                   f"({RAY_RESOURCE_UNIT:g} to 1024: a worker lives on one node).")

    @field_validator("gpus_per_worker", "cpus_per_worker")
    @classmethod
    def _ray_unit(cls, v: float) -> float:
        if 0 < v < RAY_RESOURCE_UNIT:
            raise ValueError(f"must be 0 or >= {RAY_RESOURCE_UNIT:g} (Ray's smallest resource amount; "
                             f"less rounds to nothing), got {v:g}")
        return v


class Data(_Strict):
    path: str = Field(..., description="File or folder of training data, relative to the workdir, or "
                      "package://<module>/<file> for a file shipped inside an installed package. "
                      "Fingerprinted and logged to MLflow as the run's dataset.")


class Checkpoint(_Strict):
    every_epochs: Int = Field(1, ge=1, le=1_000_000, description="Persist every N-th checkpoint passed to "
                              "ctx.report.")
    keep: Int = Field(3, ge=1, le=10_000, description="How many persisted checkpoints to keep.")
    storage: str | None = Field(None, description="Where checkpoints go: a path every node shares, or "
                                "s3://... / gs://...; default $TRAINER_HOME/checkpoints (local cluster).")


class Failure(_Strict):
    max_failures: Int = Field(0, ge=0, le=1000, description="Worker-group restarts (from the last "
                              "checkpoint) before the job fails.")


EXPERIMENT_RULE = ("1-128 letters, digits, '.', '_' or '-', starting with a letter or digit (the name "
                   "becomes a folder under $TRAINER_HOME/mlartifacts)")


class Tracking(_Strict):
    experiment: str | None = Field(None, description="MLflow experiment; defaults to the job name. "
                                   + EXPERIMENT_RULE[0].upper() + EXPERIMENT_RULE[1:] + ".")
    uri: str | None = Field(None, description="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else "
                            "the embedded sqlite:///$TRAINER_HOME/mlflow.db.")

    @field_validator("experiment")
    @classmethod
    def _safe_experiment(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", v):
            raise ValueError(f"must be {EXPERIMENT_RULE}, got {shown(v)}")
        return v


class OutputTolerance(_Strict):
    atol: Float | None = Field(None, gt=0, le=1, description="this output's absolute tolerance (fp32 targets).")
    rtol: Float | None = Field(None, gt=0, le=1, description="this output's relative tolerance (fp32 targets).")


class Parity(_Strict):
    # A tolerance above 1 is no parity check: it passes models that give other answers.
    atol: Float = Field(1e-4, gt=0, le=1, description="fp32 targets: max abs diff allowed (0 < atol <= 1).")
    rtol: Float = Field(1e-3, gt=0, le=1, description="fp32 targets: max relative diff allowed (0 < rtol <= 1).")
    min_agreement: Float = Field(0.98, ge=0, le=1, description="int8 targets: top-1 agreement required.")
    max_accuracy_drop: Float = Field(0.01, ge=0, le=1, description="int8 targets: accuracy drop allowed.")
    task: Literal["auto", "classification", "regression", "embedding"] = Field(
        "auto", description="What int8 parity judges; auto: int labels -> classification, float -> regression.")
    max_metric_increase: Float = Field(0.02, ge=0, le=10, description="int8 regression: RMSE/MAE growth allowed "
                                       "(share of the native model's).")
    max_error_ratio: Float = Field(0.25, ge=0, le=10, description="int8 regression: RMS(int8 - native) over "
                                   "the native model's RMSE.")
    min_cosine: Float = Field(0.99, ge=0, le=1, description="int8 embedding: lowest per-sample cosine similarity.")
    int8_scale_tol: Float = Field(0.05, ge=0, le=10, description="int8 regression without labels: max abs "
                                  "diff over the largest native output.")
    outputs: dict[str, OutputTolerance] = Field(default_factory=dict, description="Per output name of a "
                                                "multi-output model: its own atol/rtol (e.g. boxes: {atol: 1e-3}).")
    diagnose: bool = Field(False, description="Per-layer diagnosis of passing targets too (failing ones always).")
    int8_repair: bool = Field(False, description="int8 that misses its gate: keep the nodes the diagnosis "
                              "blames in float, fewest first, until it passes.")
    max_float_fraction: Float = Field(0.5, gt=0, le=1, description="int8 repair: the largest share of the "
                                      "weights it may keep in float (0 < f <= 1).")


class Convert(_Strict):
    targets: list[str] = Field(..., min_length=1, description="onnx, onnx-int8, tflite, pytorch, ...")
    parity: Parity = Field(default_factory=Parity)
    edge: list[str] = Field(default_factory=list, description="aarch64 CPU models to check the edge "
                            "bundle on under emulation (cortex-a72, cortex-a53, neoverse-n1).")


# ---------------------------------------------------------------- register: (promotion)

ENVIRONMENTS = ("dev", "staging", "production")
GATED_ENVIRONMENTS = ("staging", "production")
# A gate's comparisons and what each means (trainer.promotion.gates applies them); two-character
# ones first, so the pattern reads '>=' before '>'.
GATE_OPERATORS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
                  ">": operator.gt, "<": operator.lt}
_GATE_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,199}")
_GATE_NUMBER = re.compile(r"\s*(" + "|".join(map(re.escape, GATE_OPERATORS))
                          + r")\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*")
GATE_RULE = "'passed', 'failed', or a comparison with a number such as '>=0.95'"


def parse_gate(condition: str) -> tuple[str, float | None]:
    """A gate's condition: ("passed"|"failed", None) or (operator, number); ValueError otherwise."""
    text = condition.strip() if isinstance(condition, str) else condition
    if text in ("passed", "failed"):
        return text, None
    m = _GATE_NUMBER.fullmatch(text) if isinstance(text, str) else None
    if m is None or not math.isfinite(float(m.group(2))):
        raise ValueError(f"must be {GATE_RULE}, got {shown(condition)}")
    return m.group(1), float(m.group(2))


def check_gates(gates: dict, where: str) -> None:
    """One environment's gates, from a spec or a version's gates tag: every key a metric name and
    every condition one `parse_gate` reads; ValueError naming `where`.key otherwise."""
    for key, condition in gates.items():
        if not isinstance(key, str) or not _GATE_KEY.fullmatch(key):
            raise ValueError(f"{where}: {shown(key)} is not a metric name")
        if not isinstance(condition, str):
            raise ValueError(f"{where}.{key}: the condition is not a string, got {shown(condition)} "
                             f"(write it quoted: '>=0.95')")
        try:
            parse_gate(condition)
        except ValueError as e:
            raise ValueError(f"{where}.{key}: {e}") from None


class Register(_Strict):
    """After training (and conversion): register the model in MLflow and push it to the
    registry's dev/ project; `trainer promote` moves it on through gates."""

    model: str = Field(..., pattern=r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$", max_length=128,
                       description="Registered model name in MLflow and repository name in the registry "
                       "(lower-case letters, digits, '.', '_', '-').")
    registry: str | None = Field(None, description="OCI registry host[:port] or http(s)://host[:port] "
                                 "(no credentials: they come from docker login / TRAINER_REGISTRY_USERNAME+"
                                 "PASSWORD / a credential helper); default $TRAINER_REGISTRY, else a running "
                                 "`trainer registry serve`, else MLflow only.")
    gates: dict[Literal["staging", "production"], dict[str, str]] = Field(
        default_factory=dict, description="Per environment, metric -> condition checked before promotion: "
        "accuracy: '>=0.95', parity: passed, parity.onnx-int8.top1_agreement: '>=0.99'. A metric is the "
        "run's latest value; parity is the conversion report's verdict.")
    if_conversion_fails: Literal["skip", "register"] = Field(
        "skip", description="When the job's conversion misses its parity gate (the job still succeeds): skip "
        "registration, or register all the same (the version's trainer.parity tag says failed, and only the "
        "targets that passed go into its artifact).")

    @field_validator("registry")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if "@" in v:
            raise ValueError("must not carry credentials (they come from docker login, "
                             "TRAINER_REGISTRY_USERNAME/PASSWORD or a credential helper)")
        if not re.fullmatch(r"(https?://)?[A-Za-z0-9.-]+(:\d{1,5})?/?", v):
            raise ValueError(f"must be host[:port] or http(s)://host[:port], got {shown(v)}")
        return v

    @field_validator("gates")
    @classmethod
    def _gates(cls, v: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for env, gates in v.items():
            check_gates(gates, env)
        return v


# ---------------------------------------------------------------- sweep: (Ray Tune)

SWEEP_DOMAINS = ("choice", "uniform", "loguniform", "int")
_METRIC_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_./-]{0,249}$"


class Domain(_Strict):
    """One hyperparameter's search space: exactly one of choice | uniform | loguniform | int."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False,
                              populate_by_name=True)

    choice: list[Any] | None = Field(None, min_length=1, max_length=10_000,
                                     description="Values to pick from (strings, numbers, booleans, lists...).")
    uniform: list[Float] | None = Field(None, description="[low, high]: a float drawn uniformly.")
    loguniform: list[Float] | None = Field(None, description="[low, high], 0 < low: a float drawn "
                                           "uniformly in log space (learning rates).")
    int_: list[Int] | None = Field(None, alias="int", description="[low, high]: an integer, both ends included.")

    @field_validator("choice")
    @classmethod
    def _json_choice(cls, v: list[Any] | None) -> list[Any] | None:
        if v is not None:
            _check_json(v, "choice")
        return v

    @model_validator(mode="after")
    def _one_range(self) -> "Domain":
        given = [name for name in SWEEP_DOMAINS if getattr(self, "int_" if name == "int" else name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(SWEEP_DOMAINS)}"
                             + (f", got {' and '.join(given)}" if given else ""))
        name = given[0]
        if name == "choice":
            return self
        bounds = getattr(self, "int_" if name == "int" else name)
        if len(bounds) != 2:
            raise ValueError(f"{name}: must be two numbers [low, high], got {len(bounds)}")
        low, high = bounds
        if name == "int" and low > high:
            raise ValueError(f"{name}: low must be <= high, got [{low}, {high}]")
        if name != "int" and not low < high:
            raise ValueError(f"{name}: low must be < high, got [{low:g}, {high:g}]")
        if name == "loguniform" and low <= 0:
            raise ValueError(f"{name}: low must be > 0 (a log scale), got {low:g}")
        return self

    @property
    def kind(self) -> str:
        return next(n for n in SWEEP_DOMAINS if getattr(self, "int_" if n == "int" else n) is not None)

    def describe(self) -> dict:
        """As the spec wrote it: {"loguniform": [0.0001, 0.1]}."""
        return {self.kind: getattr(self, "int_" if self.kind == "int" else self.kind)}


class Asha(_Strict):
    grace_period: Int = Field(1, ge=1, le=1_000_000, description="Reports (persisted checkpoints) every "
                              "trial gets before ASHA may stop it.")
    reduction_factor: Int = Field(2, ge=2, le=1000, description="Keep the top 1/reduction_factor of trials "
                                  "at each rung.")


class Scheduler(_Strict):
    asha: Asha = Field(..., description="Asynchronous successive halving: stops trials whose metric is "
                       "below the rung's cutoff.")


class Sweep(_Strict):
    """Many trials of the same function over a search space of `config` values (Ray Tune)."""

    metric: str = Field(..., pattern=_METRIC_NAME, description="A metric the function reports with a "
                        "checkpoint (ctx.report(..., checkpoint=...)): what trials are compared on.")
    mode: Literal["max", "min"] = Field(..., description="Whether a higher or a lower metric is better.")
    trials: Int = Field(..., ge=1, le=10_000, description="How many trials (samples of the space).")
    concurrency: Int = Field(1, ge=1, le=1000, description="Trials running at a time.")
    seed: Int | None = Field(None, ge=0, le=2**32 - 1, description="Seed of the search (same seed, same trials).")
    scheduler: Scheduler | None = Field(None, description="{asha: {grace_period, reduction_factor}} or "
                                        "none (every trial runs to its end).")
    space: dict[str, Domain] = Field(..., min_length=1, max_length=100, description="config key -> "
                                     "{choice: [...]} | {uniform: [low, high]} | {loguniform: [low, high]} | "
                                     "{int: [low, high]}.")

    @field_validator("scheduler", mode="before")
    @classmethod
    def _none(cls, v: Any) -> Any:
        if isinstance(v, str) and v != "none":
            raise ValueError(f"must be none or {{asha: {{grace_period, reduction_factor}}}}, got {shown(v)}")
        return None if v == "none" else v

    @field_validator("space")
    @classmethod
    def _config_keys(cls, v: dict[str, Domain]) -> dict[str, Domain]:
        for key in v:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", key):
                raise ValueError(f"{shown(key)} is not a config key (letters, digits and '_')")
        return v

    @model_validator(mode="after")
    def _budget(self) -> "Sweep":
        if self.concurrency > self.trials:
            raise ValueError(f"sweep.concurrency: {self.concurrency} trials at a time is more than "
                             f"sweep.trials ({self.trials})")
        return self

    @property
    def asha(self) -> Asha | None:
        return self.scheduler.asha if self.scheduler is not None else None


# `register` is the spec's key, and also ABCMeta.register of pydantic's metaclass: pydantic warns
# that the field shadows it. Instances read the field (spec.register); nothing calls the method.
warnings.filterwarnings("ignore", message='Field name "register" in "JobSpec" shadows', category=UserWarning)


class JobSpec(_Strict):
    """A training job: what to run, where, and where its results go."""

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$",
                      description="Lower-case job name; prefix of the job id.")
    framework: Literal["torch", "tensorflow", "mxnet"]
    runtime: str | None = Field(None, description="Runtime (venv/image) the workers run in; defaults to "
                                "the framework's.")
    entrypoint: str = Field(..., description="path/to/file.py:function inside the project (relative to "
                            "the workdir), called in every worker with ctx.")
    workers: Int = Field(1, ge=1, le=10_000, description="Number of training workers (ranks).")
    resources: Resources = Field(default_factory=Resources)
    data: Data | None = None
    config: dict[str, Any] = Field(default_factory=dict, description="Hyperparameters: ctx.config, "
                                   "logged as MLflow params.")
    checkpoint: Checkpoint = Field(default_factory=Checkpoint)
    failure: Failure = Field(default_factory=Failure)
    timeout_minutes: Int | None = Field(None, ge=1, le=525_600, description="Wall-clock limit of the whole job, its "
                                        "cluster's start included: the RayJob's activeDeadlineSeconds on "
                                        "Kubernetes (trainer submit --k8s, trainer k8s render). Not enforced "
                                        "on a Ray cluster a job is submitted to directly.")
    tracking: Tracking = Field(default_factory=Tracking)
    convert: Convert | None = None
    register: Register | None = None
    sweep: Sweep | None = Field(None, description="Run many trials over a search space of config values "
                                "(Ray Tune); the best trial's model goes through convert: and register:.")

    @model_validator(mode="after")
    def _sweep_fits_the_job(self) -> "JobSpec":
        """A budget that cannot work, refused before anything runs: ASHA's grace period longer than
        the training (no trial could ever be stopped)."""
        asha = self.sweep.asha if self.sweep is not None else None
        epochs = self.config.get("epochs")
        if asha is not None and isinstance(epochs, int) and not isinstance(epochs, bool) \
                and "epochs" not in self.sweep.space:
            reports = epochs // self.checkpoint.every_epochs
            if asha.grace_period >= reports:
                raise ValueError(f"sweep.scheduler.asha.grace_period: {asha.grace_period} reports is not less "
                                 f"than the {reports} checkpoint(s) a trial reports (config.epochs {epochs}, "
                                 f"checkpoint.every_epochs {self.checkpoint.every_epochs}): ASHA could never "
                                 f"stop a trial")
        return self

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint_form(cls, v: str) -> str:
        if not re.fullmatch(r"[^:]+\.py:[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError(f"must be 'path/to/file.py:function', got {shown(v)}")
        file = v.rsplit(":", 1)[0]
        if file.startswith(("/", "~", "\\")) or ".." in PurePosixPath(file.replace("\\", "/")).parts:
            raise ValueError(f"must be a file inside the project, relative to its folder (the code that is "
                             f"uploaded), without '..' or a leading '/', got {shown(v)}")
        return v

    @field_validator("config")
    @classmethod
    def _json_config(cls, v: dict[str, Any]) -> dict[str, Any]:
        _check_json(v, "config")
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

    `overrides` are `dotted.key=value` strings (values parsed as YAML, by the same rules as the
    file) or a mapping of the same. Raises SpecError naming the field (or the file and line).
    """
    if isinstance(source, dict):
        raw, workdir = dict(source), Path.cwd()
    else:
        path = Path(source)
        raw = _parse(_read_text(path), str(path))
        if raw is None:
            raise SpecError(f"{path}: the file is empty (no YAML in it, only blank lines or comments)")
        if not isinstance(raw, dict):
            raise SpecError(f"{path}: a job spec is a mapping of keys (name, framework, ...), "
                            f"got {_yaml_kind(raw)}")
        workdir = find_workdir(path)
    for key, value in _parse_overrides(overrides).items():
        _set_dotted(raw, key, value)
    return validate(raw), workdir


def _read_text(path: Path) -> str:
    """The spec file's text: a regular UTF-8 file of at most MAX_SPEC_BYTES, or one line saying why not.

    Opened non-blocking and checked with fstat, so a FIFO or a device (`/dev/zero`) is refused
    instead of read forever."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SpecError(f"spec file not found: {path}") from None
    except OSError as e:
        try:        # a socket cannot even be opened: say what it is
            mode = os.stat(path).st_mode
        except OSError:
            mode = stat.S_IFREG
        if not stat.S_ISREG(mode):
            raise SpecError(f"{path}: is {file_kind(mode)}, not a regular file") from None
        raise SpecError(f"{path}: cannot open the spec file: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SPEC_BYTES:
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise SpecError(f"{path}: is a folder, not a spec file")
        if not stat.S_ISREG(st.st_mode):
            raise SpecError(f"{path}: is {file_kind(st.st_mode)}, not a regular file")
        raise SpecError(f"{path}: is {st.st_size:,} bytes; a job spec is at most {MAX_SPEC_BYTES:,} "
                        f"(is this the spec?)")
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(MAX_SPEC_BYTES + 1)
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: is over {MAX_SPEC_BYTES:,} bytes; a job spec is at most that")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SpecError(f"{path}: is UTF-16 text; save it as UTF-8")
    nul = data.find(b"\0")
    if nul >= 0:
        raise SpecError(f"{path}: is binary, not YAML text (a NUL byte at offset {nul})")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise SpecError(f"{path}: is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); "
                        f"save it as UTF-8") from None


def file_kind(mode: int) -> str:
    """What a file is, in words, from its st_mode ("a FIFO", "a character device", ...)."""
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


class _Refused(Exception):
    """A YAML construct a spec does not allow (aliases, duplicate keys, deep nesting)."""

    def __init__(self, message: str, mark=None):
        super().__init__(message)
        self.message, self.mark = message, mark


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader (no Python objects) with the rules of a job spec:

    - no aliases (`*name`): each copies its anchor's value, so a few nested ones (a "billion
      laughs") validate in a few hundred bytes and expand to gigabytes when the spec is
      serialised for the cluster. Bounded expansion would still need a limit users hit; a spec
      never needs a reference, so none is allowed;
    - no duplicate keys in a mapping (YAML says they are an error; PyYAML keeps the last one);
    - mappings and lists nested at most MAX_DEPTH deep.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(f"YAML aliases (*{event.anchor}) are not allowed in a job spec (a few nested "
                           f"ones expand to gigabytes); write the value out", event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:       # unhashable: the base class says so
                    continue
                mark = key_node.start_mark
                if first is not None:
                    at = (f"column {first.column + 1}" if first.line == mark.line
                          else f"line {first.line + 1}")
                    raise _Refused(f"duplicate key {shown(key)} (first at {at})", mark)
                seen[key] = mark
        return super().construct_mapping(node, deep)


def _parse(text: str, where: str) -> Any:
    """YAML text -> Python data by the spec's rules; every failure is one SpecError line."""
    try:
        return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as e:
        at = f" line {e.mark.line + 1}" if e.mark is not None else ""
        raise SpecError(f"{where}{at}: {e.message}") from None
    except yaml.reader.ReaderError as e:
        char = f"U+{e.character:04X}" if isinstance(e.character, int) else shown(e.character)
        raise SpecError(f"{where}: not valid YAML text: character {char} at position {e.position} "
                        f"is not allowed") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or first_line(e)
        raise SpecError(f"{where}: not valid YAML{at}: {problem}") from None
    except (ValueError, OverflowError, RecursionError) as e:
        # int() of a 5,000-digit number, a date like 2024-13-45, ...
        why = first_line(e)
        if "integer string conversion" in why:
            why = "a number has more than 4,300 digits"
        raise SpecError(f"{where}: a value cannot be read: {cut(why)}") from None


def _yaml_kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__)


# At most this many of a spec's errors are listed; the rest are counted.
MAX_ERRORS = 3


def validate(raw: dict) -> JobSpec:
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        hinted: set[tuple] = set()      # list a mapping's valid keys once, not per unknown key
        parts = []
        for err in errors[:MAX_ERRORS]:
            parts.append(_describe(err, hint=err["loc"][:-1] not in hinted))
            if err["type"] == "extra_forbidden":
                hinted.add(err["loc"][:-1])
        text = "; ".join(parts)
        if len(errors) > MAX_ERRORS:
            text += f"; and {len(errors) - MAX_ERRORS} more"
        # Each description already starts with its field: `path` is carried, not printed again.
        path = _loc(errors[0]["loc"])
        if path == "<spec>":    # a whole-spec check: its message starts with the field it is about
            path = text.split(":", 1)[0]
        raise SpecError(text, path=path) from None


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
            raise SpecError(f"{cut(repr(item))}: expected dotted.key=value, e.g. config.lr=0.1", path="--set")
        key = key.strip()
        parts = key.split(".")
        if not all(parts) or len(parts) > MAX_DEPTH:
            raise SpecError(f"{cut(repr(key))}: expected a dotted key of at most {MAX_DEPTH} names, "
                            f"e.g. config.lr", path="--set")
        if not value.strip():
            parsed[key] = ""
            continue
        try:
            parsed[key] = _parse(value, f"--set {key}")
        except SpecError as e:
            # Text that is not YAML (`--set name=a: b`) is taken as the string it is; the spec's
            # own rules (aliases, duplicate keys, nesting, unreadable numbers) still refuse.
            if ": not valid YAML" not in e.message:
                raise
            parsed[key] = value
    return parsed


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise SpecError(f"is {type(child).__name__}, not a mapping; cannot set {cut(repr(dotted))}",
                            path=".".join(parts[:i + 1]))
        node = child
    node[parts[-1]] = value


def _check_json(value: Any, where: str, depth: int = 0) -> None:
    """`config` goes to the workers as JSON and to MLflow as params: JSON values only, finite
    numbers, nested at most MAX_DEPTH deep (a dict passed from Python can be anything)."""
    if depth > MAX_DEPTH:
        raise ValueError(f"{where}: nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: keys must be strings, got {shown(k)}")
            _check_json(v, f"{where}.{cut(k, 40)}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_json(v, f"{where}[{i}]", depth + 1)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: must be a finite number, got {value}")
    elif not (value is None or isinstance(value, (str, int, bool))):
        raise ValueError(f"{where}: must be a string, number, boolean, null, list or mapping, got "
                         f"{type(value).__name__} (quote it to pass it as a string)")


def cut(text: str, limit: int = MAX_SHOWN) -> str:
    """`text` at most `limit` characters long, saying how long it was when cut."""
    return text if len(text) <= limit else f"{text[:limit]}…({len(text):,} chars)"


def shown(value: Any) -> str:
    """A value quoted back to the user: as JSON (so on one line, ASCII), cut after MAX_SHOWN characters."""
    if isinstance(value, str):
        if len(value) <= MAX_SHOWN:
            return json.dumps(value)
        return json.dumps(value[:MAX_SHOWN])[:-1] + f"…({len(value):,} chars)"
    if isinstance(value, (int, float, bool, type(None))):
        try:
            return cut(json.dumps(value))
        except ValueError:      # an int too long to print
            return "a number of thousands of digits"
    return type(value).__name__


def _loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "<spec>"


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the field at `loc` (to suggest the nearest key for a typo)."""
    model: Any = JobSpec
    keyed = False       # the previous part was a dict of models (sweep.space): this part is its key
    for part in loc:
        if keyed:
            keyed = False
            continue
        field = model.model_fields.get(str(part)) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        ann = field.annotation
        if getattr(ann, "__origin__", None) is dict:
            keyed, ann = True, ann.__args__[1]
        candidates = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            return None
        model = candidates[0]
    return model


def _describe(err: dict, hint: bool = True) -> str:
    loc, kind, ctx, value = err["loc"], err["type"], err.get("ctx") or {}, err.get("input")
    where = _loc(loc)
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1]) or JobSpec
        valid = list(parent.model_fields)
        near = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
        more = f"; did you mean {near[0]!r}?" if near else (f"; valid keys: {', '.join(valid)}" if hint else "")
        return f"{cut(where)}: unknown key{more}"
    if kind == "missing":
        return f"{where}: required field is missing"
    value_shown = shown(value)
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()))
        return f"{where}: must be {op} {bound}, got {value_shown}"
    if kind == "literal_error":
        return f"{where}: must be one of {ctx.get('expected', '')}, got {value_shown}"
    if kind == "string_pattern_mismatch":
        return f"{where}: {value_shown} does not match {ctx.get('pattern')}"
    if kind == "too_short":
        return f"{where}: must not be empty"
    if kind == "finite_number":
        return f"{where}: must be a finite number, got {value_shown}"
    if kind in ("int_type", "float_type", "bool_type", "string_type"):
        what = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
                "string_type": "a string"}[kind]
        return f"{where}: must be {what}, got {_typed(value)}"
    if kind == "value_error":
        message = str(ctx.get("error", err["msg"]))
        # _check_json names the nested key itself (config.a.b: ...)
        if where == "<spec>" and re.match(r"[a-z_]+[.:]", message):    # a whole-spec check names its field
            return message
        return message if re.match(re.escape(where) + r"[.\[]", message) else f"{where}: {message}"
    if kind == "model_type" or kind == "dict_type":
        return f"{where}: must be a mapping, got {value_shown}"
    return f"{where}: {err['msg'].lower()}, got {value_shown}"


def _typed(value: Any) -> str:
    """A value with its YAML type, for a strict-type refusal: `the string "2"`, `true`."""
    if isinstance(value, str):
        if re.fullmatch(r"[-+]?[0-9]+[eE][-+]?[0-9]+", value.strip()):
            mantissa, _, exponent = value.strip().lower().partition("e")
            return (f"the string {shown(value)} (YAML reads an exponent without a '.' as text: "
                    f"write {mantissa}.0e{exponent})")
        return f"the string {shown(value)} (write it without quotes)" if _looks_numeric(value) else \
            f"the string {shown(value)}"
    if isinstance(value, bool):
        return f"the boolean {shown(value)}"
    if isinstance(value, float):
        return f"{shown(value)} (not a whole number)" if math.isfinite(value) else shown(value)
    return f"{_yaml_kind(value)} {shown(value)}" if isinstance(value, (int,)) else _yaml_kind(value)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
