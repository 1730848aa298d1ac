"""Promotion under attack and under contention, against the real docker-registry, the session's
SQLite MLflow store and the malicious OCI server: concurrent promotions serialize, a registry
named by an MLflow tag gets nothing unless it is the configured one, hand-edited gates tags are
one clean line. A registered version is made without Ray: a run with metrics, a tiny ModelPack
artifact pushed to dev/, a model version tagged the way registration tags it."""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from trainer.promotion.registration import (TAG_GATES, TAG_RECORD_PREFIX, TAG_REGISTRY, tag_digest, tag_ref,
                                            version_tag)
from trainer.promotion.transaction import GateError, promote
from trainer.registry.artifacts import push_model, read_records
from trainer.registry.client import Registry

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "registry"))
from _evil_oci import EvilRegistry  # noqa: E402

pytestmark = pytest.mark.integration
TRAINER = str(Path(sys.executable).parent / "trainer")
GATES = {"staging": {"accuracy": ">=0.9"}}


def _registered(model: str, address: str, gates=GATES) -> str:
    """Version 1 of `model`, in dev/ of the registry at `address`, aliased dev; returns its digest."""
    from trainer.home import default_tracking_uri
    from trainer.tracking.runs import client

    mlc = client(default_tracking_uri())
    exp = mlc.get_experiment_by_name("promo-hardening")
    exp_id = exp.experiment_id if exp else mlc.create_experiment("promo-hardening")
    run = mlc.create_run(exp_id)
    mlc.log_metric(run.info.run_id, "accuracy", 0.97)
    mlc.set_terminated(run.info.run_id)
    mlc.create_registered_model(model)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "model.bin").write_bytes(model.encode())
        manifest = push_model(Registry(address), f"dev/{model}", version_tag(1), Path(tmp), name=model, version="1")
    tags = {TAG_GATES: json.dumps(gates), TAG_REGISTRY: address, tag_digest("dev"): manifest.digest,
            tag_ref("dev"): f"{address}/dev/{model}:v1"}
    mv = mlc.create_model_version(model, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id, tags=tags)
    assert str(mv.version) == "1"
    mlc.set_registered_model_alias(model, "dev", "1")
    return manifest.digest


def _tags(model: str) -> dict:
    from trainer.home import default_tracking_uri
    from trainer.tracking.runs import client

    return dict(client(default_tracking_uri()).get_model_version(model, "1").tags)


def test_three_concurrent_promotions_promote_once(oci_registry):
    model = "conc-promo"
    digest = _registered(model, oci_registry["address"])
    procs = [subprocess.Popen([TRAINER, "promote", model, "--to", "staging"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(p.wait(timeout=300), p.stdout.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    # Issue 27: the losers find the version already there, a no-op that says so and exits 0
    # (was exit 10); still exactly one promotion happened (one record below).
    assert codes == [0, 0, 0], results
    outputs = [out for _, out in results]
    assert sum("already in staging" in out for out in outputs) == 2, results
    assert sum(out.startswith("promoted ") for out in outputs) == 1, results
    records = [k for k in _tags(model) if k.startswith(TAG_RECORD_PREFIX)]
    assert records == [f"{TAG_RECORD_PREFIX}0001"]
    in_registry = read_records(Registry(oci_registry["address"]), f"staging/{model}", digest)
    assert [r["seq"] for r in in_registry] == [1]


def test_a_registry_named_by_an_mlflow_tag_gets_nothing(oci_registry):
    """`trainer.registry` is data anyone with MLflow access can edit: pointing it at another
    server must not send that server the CI password, nor anything else."""
    from trainer.home import default_tracking_uri
    from trainer.tracking.runs import client

    model = "tag-redirect"
    _registered(model, oci_registry["address"])
    before = _tags(model)
    with EvilRegistry() as evil:
        evil.route("*", "*", evil.basic_then(evil.answer(404)))
        client(default_tracking_uri()).set_model_version_tag(model, "1", TAG_REGISTRY, evil.address)
        done = subprocess.run([TRAINER, "promote", model, "--to", "staging"], capture_output=True, text=True,
                              env={**os.environ, "TRAINER_REGISTRY_USERNAME": "ci",
                                   "TRAINER_REGISTRY_PASSWORD": "ci-password"})
    assert done.returncode == 10, done.stderr
    assert "nothing was sent" in done.stderr and "Traceback" not in done.stderr
    assert evil.requests == []
    assert {k: v for k, v in _tags(model).items() if k != TAG_REGISTRY} == \
        {k: v for k, v in before.items() if k != TAG_REGISTRY}


@pytest.mark.parametrize("tag", ["{not json", '["staging"]', '{"staging": {"accuracy": 5}}',
                                 '{"staging": {"accuracy": ">=abc"}}', '{"staging": []}'])
def test_a_hand_edited_gates_tag_is_one_clean_line(oci_registry, tag):
    from trainer.home import default_tracking_uri
    from trainer.tracking.runs import client

    model = f"gatetag-{abs(hash(tag)) % 10**6}"
    _registered(model, oci_registry["address"])
    client(default_tracking_uri()).set_model_version_tag(model, "1", TAG_GATES, tag)
    with pytest.raises(GateError, match=f"{TAG_GATES} tag .*nothing was changed"):
        promote(model, "staging")
    assert not any(k.startswith(TAG_RECORD_PREFIX) for k in _tags(model))


def test_promotions_that_all_passed_their_checks_at_once_still_promote_once(oci_registry, monkeypatch):
    """The race made wide: each promotion waits at its gate check until all three are there (or
    2 s have passed: under the lock only one ever is). Without the lock all three have read "not
    in staging yet" and all three promote; with it the second and third find it there."""
    import threading

    import trainer.promotion.transaction as transaction

    model = "race-promo"
    digest = _registered(model, oci_registry["address"])
    arrived, everyone = [], threading.Event()
    real = transaction.evaluate

    def evaluate_together(gates, metrics):
        arrived.append(1)
        if len(arrived) == 3:
            everyone.set()
        everyone.wait(timeout=2)
        return real(gates, metrics)
    monkeypatch.setattr(transaction, "evaluate", evaluate_together)
    outcomes = []

    def one():
        record = promote(model, "staging")
        outcomes.append(record["seq"] if record["changed"] else record["reason"])
    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(outcomes, key=str)[0] == 1 and sum(1 for o in outcomes if o == 1) == 1, outcomes
    assert all("already in staging" in o for o in outcomes if o != 1), outcomes
    assert [k for k in _tags(model) if k.startswith(TAG_RECORD_PREFIX)] == [f"{TAG_RECORD_PREFIX}0001"]
    assert len(read_records(Registry(oci_registry["address"]), f"staging/{model}", digest)) == 1


def test_hand_edited_promotion_records_are_shown_cleanly(oci_registry):
    from trainer.home import default_tracking_uri
    from trainer.tracking.runs import client

    model = "history-edited"
    _registered(model, oci_registry["address"])
    promote(model, "staging")
    mlc = client(default_tracking_uri())
    for key, value in ((f"{TAG_RECORD_PREFIX}0002", '{"at": 5, "gates": [{"gate": 1, "value": "x"}], "by": "\x1b[2Jx"}'),
                       (f"{TAG_RECORD_PREFIX}0003", '["not", "a", "record"]'), (f"{TAG_RECORD_PREFIX}0004", "{oops")):
        mlc.set_model_version_tag(model, "1", key, value)
    for output in ([], ["-o", "json"]):
        done = subprocess.run([TRAINER, "promote", "history", model, *output], capture_output=True, text=True,
                              env={**os.environ, "COLUMNS": "80"})
        assert done.returncode == 0, done.stderr
        assert "\x1b" not in done.stdout and "Traceback" not in done.stderr


def test_promoting_what_is_already_there_is_a_no_op_that_exits_0(oci_registry):
    """Issue 27: a pipeline's second run promotes nothing and succeeds (was exit 10 "already in
    staging"); its JSON says changed: false; nothing is written to MLflow or the registry."""
    model = "noop-promo"
    digest = _registered(model, oci_registry["address"])
    first = subprocess.run([TRAINER, "promote", model, "--to", "staging", "-o", "json"], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["changed"] is True
    before = _tags(model)
    again = subprocess.run([TRAINER, "promote", model, "--to", "staging", "-o", "json"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["changed"] is False and doc["version"] == "1" and doc["digest"] == digest
    assert "already in staging" in doc["reason"]
    table = subprocess.run([TRAINER, "promote", model, "--to", "staging"], capture_output=True, text=True)
    assert table.returncode == 0 and "already in staging: nothing changed" in table.stdout, table
    assert _tags(model) == before
    assert len(read_records(Registry(oci_registry["address"]), f"staging/{model}", digest)) == 1


def test_a_failed_promotion_prints_one_json_document_on_stdout(oci_registry):
    """Issue 27: `--output json` of a failure: {"error", "exit_code", "kind"} on stdout (a CI step
    parses it); the human line stays on stderr."""
    model = "json-fail"
    _registered(model, oci_registry["address"])
    done = subprocess.run([TRAINER, "promote", model, "--version", "1", "--to", "production", "-o", "json"],
                          capture_output=True, text=True)
    assert done.returncode == 10, done.stderr
    doc = json.loads(done.stdout)
    assert doc["exit_code"] == 10 and doc["kind"] == "GateError" and "not in staging" in doc["error"]
    assert "error:" in done.stderr and "not in staging" in done.stderr


def test_a_dry_run_says_whether_promoting_would_change_anything(oci_registry):
    """What the Jenkinsfile asks before its approval step: `changed` without the approval, and
    nothing written; once production holds the version, changed: false."""
    model = "dry-promo"
    _registered(model, oci_registry["address"])

    def dry():
        done = subprocess.run([TRAINER, "promote", model, "--version", "1", "--to", "production", "--dry-run",
                               "-o", "json"],
                              capture_output=True, text=True)
        return done.returncode, json.loads(done.stdout) if done.stdout else done.stderr
    code, doc = dry()
    assert code == 10 and doc["kind"] == "GateError" and "not in staging" in doc["error"]     # order still checked
    promote(model, "staging")
    before = _tags(model)
    code, doc = dry()
    assert code == 0 and doc["changed"] is True and doc["dry_run"] is True, doc
    assert _tags(model) == before
    promote(model, "production", approve=True)
    code, doc = dry()
    assert code == 0 and doc["changed"] is False, doc
