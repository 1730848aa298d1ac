"""The retrain decision on content digests, against an embedded MLflow store (no cluster)."""
from trainer.data import fingerprint
from trainer.home import default_tracking_uri
from trainer.promotion.registration import TAG_DATA
from trainer.promotion.retrain import decide
from trainer.spec import load_spec
from trainer.tracking.runs import client, finish_run, start_run


def test_changed_until_recorded_then_production_decides(isolated_home, tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "train.py").write_text("def f(ctx): pass\n")
    data = tmp_path / "data.csv"
    data.write_text("1,2\n")
    (tmp_path / "spec.yaml").write_text("name: r\nframework: torch\nentrypoint: train.py:f\ndata: {path: data.csv}\n"
                                        "register: {model: r}\n")
    spec, workdir = load_spec(tmp_path / "spec.yaml")
    uri = default_tracking_uri()
    first = fingerprint("data.csv", workdir)
    assert decide(spec, first.digest, uri).changed           # nothing recorded yet

    run_id = start_run(spec, "r-1", uri, "local", first)
    assert decide(spec, first.digest, uri).changed           # a run that did not finish does not count
    finish_run(uri, run_id, "FINISHED")
    # Issue 27: a spec that registers a model compares with production only; none yet: changed,
    # and it says why (a finished run, a notebook's or a branch build's, does not stand for it).
    none_yet = decide(spec, first.digest, uri)
    assert none_yet.changed and none_yet.recorded is None
    assert none_yet.describe() == "data treated as changed: r has no production version yet; retraining"
    # A spec without register: has only its experiment's runs to compare with.
    unregistered, _ = load_spec(tmp_path / "spec.yaml", ["register=null"])
    same = decide(unregistered, first.digest, uri)
    assert not same.changed and same.recorded == first.digest and run_id in same.against

    data.write_text("1,3\n")
    second = fingerprint("data.csv", workdir)
    assert decide(spec, second.digest, uri).changed

    # A production version decides over the newest run.
    mlc = client(uri)
    mlc.create_registered_model("r")
    (tmp_path / "model").mkdir()
    mv = mlc.create_model_version("r", source=(tmp_path / "model").as_uri(), tags={TAG_DATA: second.digest})
    mlc.set_registered_model_alias("r", "production", mv.version)
    decision = decide(spec, second.digest, uri)
    assert not decision.changed and "production" in decision.against
    assert decide(spec, first.digest, uri).changed
