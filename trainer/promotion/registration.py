"""Registering a job's model: an MLflow model version (MLflow 3: the run's logged model,
`models:/<model_id>`) tagged with the data digest, the conversion verdict, the gates and the
registry digests, aliased `dev`; and the same version as one ModelPack artifact in the registry's
`dev/` project (`dev/<model>:v<version>`).

Order: the MLflow version first (it gives the version number), then the push; a push that fails
deletes the new version again, so a job never leaves a version that says it is in dev/ while the
registry has nothing. With no registry configured the version lives in MLflow only, and the job
log says so.

With a signing key (trainer.signing.keys) every edge bundle in the artifact is signed before the
push (`manifest.sig`), and after it the artifact's files are signed (OpenSSF model signing) and
its SLSA provenance and ML-BOM pushed as referrers (trainer.signing.artifact); their digests
are recorded on the version (`trainer.attestations`). Without one the version is unsigned, and
the job log says so.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Callable

from trainer.credentials import redact
from trainer.errors import TrackingError, TrainerError, translate
from trainer.spec import JobSpec
from trainer.tracking.runs import global_store

log = logging.getLogger(__name__)

# Model version tags (what promotion and retraining read back).
TAG_DATA = "trainer.data.sha256"
TAG_RUN = "trainer.run_id"
TAG_GATES = "trainer.gates"
TAG_PARITY = "trainer.parity"
TAG_REGISTRY = "trainer.registry"
TAG_RECORD_PREFIX = "trainer.promotion."
TAG_ATTESTATIONS = "trainer.attestations"     # {signed_by, signature, provenance, bom}: referrer digests
# Registry projects of the environments (Harbor projects dev/, staging/, prod/).
PROJECTS = {"dev": "dev", "staging": "staging", "production": "prod"}


def tag_digest(env: str) -> str:
    return f"trainer.registry.{env}.digest"


def tag_ref(env: str) -> str:
    return f"trainer.registry.{env}.ref"


def repository(env: str, model: str) -> str:
    return f"{PROJECTS[env]}/{model}"


def version_tag(version: str | int) -> str:
    return f"v{version}"


def client(uri: str):
    import logging

    from trainer.tracking.runs import client as tracking_client

    # MLflow announces creating/upgrading its tables at INFO: our lines, not theirs.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)

    return tracking_client(uri)


def run_data_digest(mlc, run) -> str | None:
    """The full sha256 of the run's training data (recorded at submit time as its dataset)."""
    for dataset_input in (run.inputs.dataset_inputs if run.inputs else []) or []:
        try:
            profile = json.loads(dataset_input.dataset.profile or "{}")
        except ValueError:
            continue
        if isinstance(profile, dict) and profile.get("sha256"):
            return str(profile["sha256"])
    return None


def logged_model_id(mlc, run) -> str:
    found = mlc.search_logged_models([run.info.experiment_id],
                                     filter_string=f"source_run_id = '{run.info.run_id}'", max_results=50)
    models = [m for m in found if m.name == "model"] or list(found)
    if not models:
        raise TrainerError(f"register: run {run.info.run_id} logged no model (the training function calls "
                           f"ctx.save_model(model, example_input))")
    return max(models, key=lambda m: m.creation_timestamp or 0).model_id


def registered_version(mlc, run_id: str) -> dict | None:
    """What registering `run_id` recorded: {model, version, reference, digest} of the newest model
    version made from it (reference and digest: its `dev/` artifact; None when it lives in MLflow
    only), or None when the run registered nothing."""
    import re

    if not re.fullmatch(r"[0-9A-Za-z_-]{1,64}", run_id or ""):    # it goes into a filter string
        return None
    found = mlc.search_model_versions(f"run_id = '{run_id}'", max_results=50)
    if not found:
        return None
    mv = max(found, key=lambda v: int(v.version))
    tags = mv.tags or {}
    return {"model": mv.name, "version": str(mv.version), "reference": tags.get(tag_ref("dev")),
            "digest": tags.get(tag_digest("dev"))}


def register_run(spec: JobSpec, run_id: str, tracking_uri: str, echo: Callable[[str], None] = print) -> dict:
    """Register the run's model per `spec.register`; returns {model, version, model_id, registry, digest}."""
    from trainer.registry.serve import configured_address

    reg_spec = spec.register
    assert reg_spec is not None
    mlc = client(tracking_uri)
    with _mlflow(f"cannot register the model of run {run_id} in {redact(tracking_uri)}"), \
            global_store(tracking_uri):
        run = mlc.get_run(run_id)
        model_id = logged_model_id(mlc, run)
        parity = run.data.metrics.get("parity.passed")
        tags = {TAG_RUN: run_id, TAG_GATES: json.dumps(reg_spec.gates, sort_keys=True),
                TAG_PARITY: "none" if parity is None else ("passed" if parity == 1.0 else "failed")}
        data = run_data_digest(mlc, run)
        if data:
            tags[TAG_DATA] = data
        _ensure_registered_model(mlc, reg_spec.model)
        version = mlc.create_model_version(reg_spec.model, source=f"models:/{model_id}", run_id=run_id,
                                           tags=tags, model_id=model_id).version
    address, why = configured_address(reg_spec.registry)
    result = {"model": reg_spec.model, "version": str(version), "model_id": model_id, "registry": None,
              "digest": None}
    if address is None:
        echo(f"registered {reg_spec.model} version {version} in MLflow only: {why}")
    else:
        try:
            facts = _facts(spec, run, str(version), data, echo)
            manifest, ref, attested = _push(address, reg_spec.model, str(version), model_id, run_id, data,
                                            tracking_uri, facts)
        except BaseException as e:
            _forget(mlc, reg_spec.model, str(version))
            if isinstance(e, TrainerError):
                raise TrainerError(f"register: {e}; MLflow version {version} was removed again") from e
            raise
        with _mlflow(f"pushed {ref}, but cannot tag MLflow version {version}"):
            mlc.set_model_version_tag(reg_spec.model, str(version), TAG_REGISTRY, address)
            mlc.set_model_version_tag(reg_spec.model, str(version), tag_digest("dev"), manifest.digest)
            mlc.set_model_version_tag(reg_spec.model, str(version), tag_ref("dev"), ref)
            if attested:
                mlc.set_model_version_tag(reg_spec.model, str(version), TAG_ATTESTATIONS,
                                          json.dumps(attested, sort_keys=True))
        result.update(registry=address, digest=manifest.digest)
        echo(f"registered {reg_spec.model} version {version} and pushed {ref} ({manifest.digest[:19]})")
    with _mlflow(f"cannot set the dev alias of {reg_spec.model}"):
        mlc.set_registered_model_alias(reg_spec.model, "dev", str(version))
    return result


def _push(address: str, model: str, version: str, model_id: str, run_id: str, data: str | None,
          tracking_uri: str, facts: dict | None = None):
    from trainer.registry.artifacts import ANN_DATA, ANN_MODEL_ID, ANN_RUN_ID, ANN_VERSION, push_model
    from trainer.registry.client import Registry

    reg = Registry(address)
    repo = repository("dev", model)
    with tempfile.TemporaryDirectory(prefix="trainer-register-") as tmp:
        root = Path(tmp) / "artifact"
        artifact_files(tracking_uri, model_id, run_id, root, model, version)
        if facts is not None:      # after artifact_files: the bundle's manifest names the version first
            _sign_bundles(root)
        annotations = {ANN_MODEL_ID: model_id, ANN_VERSION: version, ANN_RUN_ID: run_id}
        if data:
            annotations[ANN_DATA] = data
        manifest = push_model(reg, repo, version_tag(version), root, name=model, version=version,
                              annotations=annotations)
        attested = _attest(reg, repo, root, manifest, facts) if facts is not None else None
    return manifest, f"{reg.host}/{repo}:{version_tag(version)}", attested


def _facts(spec: JobSpec, run, version: str, data: str | None, echo: Callable[[str], None]) -> dict | None:
    """What the provenance attests about the run (None: no signing key, the artifact goes unsigned)."""
    from trainer.signing.provenance import run_facts

    return run_facts(spec, run, version, data, echo)


def _sign_bundles(root: Path) -> None:
    """Every edge bundle in the artifact carries its own signature (manifest.sig), pushed with it."""
    from trainer.signing import keys
    from trainer.signing.bundles import sign_bundles

    with tempfile.TemporaryDirectory(prefix="trainer-key-") as tmp:
        sign_bundles(root, keys.private_key_file(Path(tmp)))


def _attest(reg, repo: str, root: Path, manifest, facts: dict) -> dict:
    """Sign every file the artifact holds and push signature, provenance and ML-BOM as its referrers."""
    from trainer.signing.artifact import attest_artifact

    return attest_artifact(reg, repo, root, manifest, facts)


def artifact_files(tracking_uri: str, model_id: str, run_id: str, root: Path, model: str, version: str) -> None:
    """What goes into a registered model's artifact, under `root`: the native model (MLflow's
    model folder) under model/; the run's conversion output under conversion/ when it has one
    (the report and the targets it kept: ONNX, int8, TFLite, and the edge bundle when the spec's
    conversion made one, whose manifest and README then name this model version too: the job
    converted before the version existed)."""
    import mlflow.artifacts

    mlc = client(tracking_uri)
    with _mlflow(f"cannot download model {model_id} from {redact(tracking_uri)}"), global_store(tracking_uri):
        (root / "model").mkdir(parents=True)
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_id}", dst_path=str(root / "model"),
                                            tracking_uri=tracking_uri)
        if any(a.path == "conversion" for a in mlc.list_artifacts(run_id)):
            mlc.download_artifacts(run_id, "conversion", str(root))
    bundle = root / "conversion" / "edge"
    if (bundle / "manifest.json").is_file():
        from converters.edge.bundle import name_source

        name_source(bundle, model_version=f"{model}/{version}")


def _ensure_registered_model(mlc, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mlc.create_registered_model(name)
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def _forget(mlc, name: str, version: str) -> None:
    try:
        mlc.delete_model_version(name, version)
    except Exception:  # noqa: BLE001 - the error being raised matters more: this one goes to the log
        log.warning("model version %s %s could not be deleted after a failed registration", name, version,
                    exc_info=True)


def _mlflow(message: str):
    """MLflow's errors as one TrackingError line (credentials masked by the tracking layer's URIs):
    the one seam, trainer.errors.translate."""
    return translate(TrackingError, message)


def after_training(spec: JobSpec, run_id: str | None, tracking_uri: str | None,
                   conversion_failed: bool = False) -> None:
    """The job driver's step after conversion: register when the spec has `register:`; after a
    conversion that missed its parity gate only when `register.if_conversion_fails: register`."""
    if spec.register is None or run_id is None:
        return
    if conversion_failed and spec.register.if_conversion_fails == "skip":
        print(f"not registered: the conversion FAILED its parity gate (register.if_conversion_fails: skip; "
              f"set it to 'register' to register {spec.register.model} all the same)", flush=True)
        return
    from trainer.home import resolve_tracking_uri

    register_run(spec, run_id, resolve_tracking_uri(tracking_uri), echo=lambda line: print(line, flush=True))


def register_image(name: str, address: str, digest: str, pushed_ref: str, tracking_uri: str,
                   tags: dict[str, str] | None = None) -> dict:
    """Register a runtime image pushed to `address`/dev/`name` (by digest) as a version of the
    MLflow registered model `name`, tagged and aliased `dev` the way `register_run` does a model,
    and tag it `v<N>` in the registry: `trainer promote NAME --to staging` then moves it through
    the same transaction and history as a model, by digest. An image already registered with this
    digest keeps its version (a second push registers nothing new)."""
    from trainer.registry.client import Registry

    mlc = client(tracking_uri)
    repo = repository("dev", name)
    with _mlflow(f"cannot register image {name} in {redact(tracking_uri)}"), global_store(tracking_uri):
        _ensure_registered_model(mlc, name)
        same = [v for v in mlc.search_model_versions(f"name='{name}'") if v.tags.get(tag_digest("dev")) == digest]
        if same:
            version = str(max(int(v.version) for v in same))
        else:
            version = str(mlc.create_model_version(
                name, source=f"oci://{address}/{repo}@{digest}",
                tags={TAG_GATES: "{}", TAG_REGISTRY: address, **(tags or {})}).version)
    reg = Registry(address)
    manifest = reg.get_manifest(repo, digest)
    stored = reg.put_manifest(repo, version_tag(version), manifest.body, manifest.media_type)
    if stored != digest:
        raise TrainerError(f"{repo}:{version_tag(version)}: the registry stored digest {stored}, not {digest}")
    ref = f"{reg.host}/{repo}:{version_tag(version)}"
    with _mlflow(f"tagged {ref}, but cannot tag MLflow version {version} of {name}"):
        mlc.set_model_version_tag(name, version, tag_digest("dev"), digest)
        mlc.set_model_version_tag(name, version, tag_ref("dev"), ref)
        mlc.set_registered_model_alias(name, "dev", version)
    return {"model": name, "version": version, "ref": ref, "pushed": pushed_ref, "digest": digest}
