"""Issue 22 end to end on the digits model: the job driver's own registration (run_local, 1
epoch, width 4, ONNX) signs and attests the artifact; `verify` passes; a later change to the
run's metrics (what an ad-hoc `trainer convert models:/...` did to parity.passed) does not change
what the staging gate reads: it reads the signed provenance; and an ad-hoc conversion of the
registered version now logs to a run of its own. Prints the sign/verify timings."""
import json
import time
from pathlib import Path

import pytest

import trainer
from trainer.promotion.registration import TAG_ATTESTATIONS, register_run, tag_digest
from trainer.spec import load_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
MODEL = "digits-signed"
GATES = {"staging": {"accuracy": ">=0.1", "parity": "passed"}}
SET = ["config.epochs=1", "config.width=4", "workers=1", "convert.targets=[onnx]", "tracking.experiment=signed",
       f"register={json.dumps({'model': MODEL, 'gates': GATES})}"]


def test_registration_signs_and_gates_read_the_attested_evidence(oci_registry, tmp_path, monkeypatch):
    from trainer.api import promote, verify
    from trainer.signing import keys
    from trainer.tracking.runs import client

    monkeypatch.setenv("TRAINER_KEYS_DIR", str(tmp_path / "keys"))
    keys.init()
    run = trainer.run_local(REPO / "examples/digits/torch.yaml", set=SET)
    mlc = client(run.tracking_uri)
    mv = mlc.get_model_version_by_alias(MODEL, "dev")
    attested = json.loads(mv.tags[TAG_ATTESTATIONS])
    assert attested["signed_by"] == keys.trusted("staging")[0].key_id

    # timings on the digits model: a second registration of the same run, then verify
    spec, _ = load_spec(REPO / "examples/digits/torch.yaml", SET)
    t0 = time.perf_counter()
    version = register_run(spec, run.run_id, run.tracking_uri, echo=lambda _: None)["version"]
    register_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    verdict = verify(f"{MODEL}@{version}")
    verify_s = time.perf_counter() - t0
    assert verdict["ok"], verdict["failures"]
    assert verdict["evidence"]["parity"] == "passed" and verdict["evidence"]["metrics"]["parity.passed"] == 1.0
    from trainer.api import registry_pull
    from trainer.signing.artifact import sign_folder

    pulled = tmp_path / "pulled"
    registry_pull(mlc.get_model_version(MODEL, version).tags["trainer.registry.dev.ref"], pulled)
    (pulled / ".trainer-pull.json").unlink()
    t0 = time.perf_counter()
    sign_folder(pulled, keys.keys_dir() / keys.PRIVATE_NAME)
    sign_s = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in pulled.rglob("*") if p.is_file())
    print(f"\ndigits: model signing {sign_s:.2f}s ({verdict['files']} files, {size} bytes); "
          f"register+sign+attest+push {register_s:.2f}s; verify (download + hash + 3 signatures) {verify_s:.2f}s")

    # the run's evidence changed after the fact: the gate still reads the signed values
    mlc.log_metric(run.run_id, "parity.passed", 0.0)
    record = promote(MODEL, "staging", version)
    assert record["changed"] and record["digest"] == mlc.get_model_version(MODEL, version).tags[tag_digest("dev")]
    assert {g["gate"]: g["value"] for g in record["gates"]}["parity"] == 1.0

    # an ad-hoc conversion of the registered version logs to a run of its own, never over the
    # registered run's conversion/ and parity.* (the repro: --atol 1e-9)
    from converters.api import TAG_CONVERSION_OF, convert
    from trainer.errors import ParityError

    before = [m.value for m in mlc.get_metric_history(run.run_id, "parity.passed")]
    try:
        report = convert(f"models:/{MODEL}@staging", None, ["onnx"], atol=1e-9, rtol=0.0,
                         out_dir=tmp_path / "adhoc", tracking_uri=run.tracking_uri)
    except ParityError as err:
        report = err.report
    assert report.run_id != run.run_id
    assert mlc.get_run(report.run_id).data.tags[TAG_CONVERSION_OF] == run.run_id
    assert [m.value for m in mlc.get_metric_history(run.run_id, "parity.passed")] == before
