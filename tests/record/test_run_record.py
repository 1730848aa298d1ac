"""The run as a job's record (trainer.tracking.record), without Ray: the capped log, the worker
groups and their cost, the driver's recorder writing into a real (SQLite) MLflow store, the code
kept once per digest, and a rerun refused when its data changed. The cluster-side proofs (a job
that fails, then the cluster goes; a seeded rerun) are in test_outlives_cluster.py / test_rerun.py."""
import gzip
import json
import sys
import time
from pathlib import Path

import pytest

from trainer.errors import JobError, TrackingError
from trainer.protocol import LogFilter, event_line, retry_line
from trainer.spec import load_spec
from trainer.tracking import record, runs

SPEC = {"name": "rec", "framework": "torch", "entrypoint": "train.py:train", "workers": 2,
        "resources": {"accelerator": "cpu", "cpus_per_worker": 1.5}, "config": {"seed": 0},
        "tracking": {"experiment": "record-unit"}}


def test_capped_log_keeps_head_and_tail_and_says_what_was_cut():
    log = record.CappedLog(head=100, tail=200)
    lines = [f"line {i:04d} " + "x" * 10 for i in range(100)]      # 21 bytes each: 2100 bytes in all
    for line in lines:
        log.add(line)
    text = log.text().splitlines()
    assert text[0] == lines[0] and text[3] == lines[3] and lines[4] not in text      # the head: 4 lines fit 100
    assert text[-1] == lines[-1] and lines[-9] in text and lines[-10] not in text    # the tail: 9 lines fit 200
    note = [t for t in text if t.startswith("[trainer: ")]
    assert note == [f"[trainer: 87 lines (1.8 KiB) cut here: a job's recorded log keeps its first 100 bytes and "
                    f"its last 200 bytes]"]
    assert log.head_bytes + log.tail_bytes <= 300 and log.total_bytes == 2100


def test_uncut_log_has_no_note():
    log = record.CappedLog(head=100, tail=200)
    log.add("only")
    assert log.text() == "only\n"


def test_groups_and_cost_from_the_workers_events():
    ev = [{"event": record.WORKER_START, "time": 10.0, "rank": 0, "group": "pg1", "node": "a"},
          {"event": record.WORKER_START, "time": 11.0, "rank": 1, "group": "pg1", "node": "b"},
          # rank 1 dies without a word; the group's restart is the next group's start
          {"event": record.WORKER_START, "time": 40.0, "rank": 1, "group": "pg2", "node": "b"},
          {"event": record.WORKER_START, "time": 41.0, "rank": 0, "group": "pg2", "node": "a"},
          {"event": record.WORKER_END, "time": 100.0, "rank": 0, "group": "pg2"},
          {"event": record.WORKER_END, "time": 101.0, "rank": 1, "group": "pg2"}]
    groups = record.groups_of(ev, ended_at=105.0)
    assert [(g["group"], g["start"], g["end"], g["ranks"]) for g in groups] == [(1, 10.0, 40.0, [0, 1]),
                                                                               (2, 40.0, 101.0, [0, 1])]
    assert record.cost_of(groups, workers=2, cpus_per_worker=1.5, gpus_per_worker=0.5) == {
        "cpu_seconds": (30 + 61) * 2 * 1.5, "gpu_seconds": (30 + 61) * 2 * 0.5, "worker_groups": 2}


def test_a_running_group_counts_up_to_now():
    groups = record.groups_of([{"event": record.WORKER_START, "time": 10.0, "rank": 0, "group": "g"}], None)
    assert groups[0]["end"] is None
    assert record.cost_of(groups, 1, 1, 0, now=25.0)["cpu_seconds"] == 15.0


def test_the_log_filter_hides_event_lines():
    line = "(RayTrainWorker pid=1, ip=1.2.3.4) " + event_line(record.WORKER_START, 1.0, rank=0)
    assert LogFilter().feed(line) is None


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One embedded store for the module (creating one costs seconds), in its own $TRAINER_HOME."""
    from trainer.home import default_tracking_uri

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRAINER_HOME", str(tmp_path_factory.mktemp("record") / "home"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield default_tracking_uri()


def _project(root: Path, text: str = "def train(ctx):\n    pass\n") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.py").write_text(text)
    (root / "pkg").mkdir(exist_ok=True)
    (root / "pkg" / "util.py").write_text("X = 1\n")
    (root / "__pycache__").mkdir(exist_ok=True)
    (root / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0\1")     # written once it ran: not code
    return root


def _run(uri, spec, job_id="rec-1", fingerprint=None):
    return runs.start_run(spec, job_id, uri, "http://127.0.0.1:1", fingerprint)


def test_the_recorder_writes_log_timeline_spec_code_and_cost_into_the_run(store, tmp_path):
    spec, _ = load_spec(SPEC)
    run_id = _run(store, spec)
    project = _project(tmp_path / "project")
    real_out = sys.stdout
    rec = record.Recorder(spec, "rec-1", run_id, store, time.time(), project)
    rec.start()
    try:
        assert sys.stdout is not real_out
        print("hello from the driver")
        t = time.time() - 10
        for rank in (0, 1):
            print(f"(RayTrainWorker pid={rank}, ip=10.0.0.{rank}) "
                  + event_line(record.WORKER_START, t, rank=rank, group="g1", node=f"10.0.0.{rank}"))
        # forwarded twice by two Ray nodes on one host: one event
        print("(RayTrainWorker pid=0, ip=10.0.0.0) "
              + event_line(record.WORKER_START, t, rank=0, group="g1", node="10.0.0.0"))
        print("(TrainController pid=9) " + retry_line(2, 3, "ValueError: boom"))
        for rank in (0, 1):
            print(event_line(record.WORKER_START, t + 2, rank=rank, group="g2", node=f"10.0.0.{rank}",
                             restored="checkpoint_000001"))
            print(event_line(record.WORKER_END, t + 5, rank=rank, group="g2"))
        print("a line on stderr", file=sys.stderr)
        print("no newline at the end", end="")
    finally:
        rec.finish("FINISHED")
    assert sys.stdout is real_out
    found = record.read_record(store, run_id)
    assert "hello from the driver" in found["log"] and "a line on stderr" in found["log"]
    assert found["log"].endswith("no newline at the end\n")
    assert found["spec"]["config"] == {"seed": 0}
    tl = found["timeline"]
    kinds = [e["event"] for e in tl["events"]]
    assert kinds[-1] == "ended"
    for kind in ("submitted", "driver_started", "group_started", "restart", "restore", "group_ended"):
        assert kind in kinds, kinds
    assert [(g["group"], g["ranks"]) for g in tl["groups"]] == [(1, [0, 1]), (2, [0, 1])]
    assert {n["node"] for n in tl["where"]["nodes"]} == {"10.0.0.0", "10.0.0.1"}
    assert tl["where"]["runtime"] == "torch" and tl["where"]["lock_sha256"]
    assert tl["cost"]["cpu_seconds"] == pytest.approx(5 * 2 * 1.5, abs=0.2)
    tags = runs.client(store).get_run(run_id).data.tags
    assert float(tags[record.TAG_CPU_SECONDS]) == tl["cost"]["cpu_seconds"]
    from trainer.api import run_summary

    assert run_summary(store, run_id)["cost"] == {"cpu_seconds": tl["cost"]["cpu_seconds"], "gpu_seconds": 0.0}
    assert tags[record.TAG_CODE_DIGEST] == record.code_digest(project)


def test_code_is_kept_once_per_digest_and_comes_back_checked(store, tmp_path):
    from trainer.tracking.runs import client

    mlc = client(store)
    a = _project(tmp_path / "a")
    b = _project(tmp_path / "b")
    (b / "__pycache__" / "other.pyc").write_bytes(b"x")          # bytecode differs: the code does not
    digest_a, run_a = record.store_code(mlc, store, a)
    digest_b, run_b = record.store_code(mlc, store, b)
    assert (digest_a, run_a) == (digest_b, run_b)
    c = _project(tmp_path / "c", "def train(ctx):\n    return 1\n")
    digest_c, run_c = record.store_code(mlc, store, c)
    assert digest_c != digest_a and run_c != run_a

    spec, _ = load_spec(SPEC)
    job_run = _run(store, spec)
    mlc.set_tag(job_run, record.TAG_CODE_DIGEST, digest_a)
    mlc.set_tag(job_run, record.TAG_CODE_RUN, run_a)
    got = record.fetch_code(store, job_run, tmp_path / "cache")
    assert (got / "train.py").read_text() == (a / "train.py").read_text()
    assert sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file()) == ["pkg/util.py", "train.py"]
    assert record.code_digest(got) == digest_a
    assert record.fetch_code(store, job_run, tmp_path / "cache") == got      # unpacked once

    mlc.set_tag(job_run, record.TAG_CODE_DIGEST, digest_c)                   # the code no longer matches its digest
    with pytest.raises(TrackingError, match="does not match its recorded digest"):
        record.fetch_code(store, job_run, tmp_path / "cache2")


def test_a_run_without_recorded_code_says_so(store, tmp_path):
    spec, _ = load_spec(SPEC)
    run_id = _run(store, spec, job_id="rec-nocode")
    with pytest.raises(TrackingError, match="has no recorded code"):
        record.fetch_code(store, run_id, tmp_path / "cache")


def test_rerun_refuses_when_the_data_changed(store, tmp_path):
    from trainer import api as trainer
    from trainer.data import fingerprint

    data = tmp_path / "data.csv"
    data.write_text("1,2\n3,4\n")
    project = _project(tmp_path / "project")
    spec, _ = load_spec({**SPEC, "data": {"path": str(data)}})
    run_id = _run(store, spec, fingerprint=fingerprint(str(data), project))
    rec = record.Recorder(spec, "rec-1", run_id, store, time.time(), project)
    rec._first()                                         # the spec and the code, as the driver records them
    data.write_text("1,2\n3,5\n")
    with pytest.raises(JobError, match=r"changed since run .* trained on it.*--allow-data-change"):
        trainer.rerun(run_id, address="http://127.0.0.1:1")
    with pytest.raises(TrackingError, match="no MLflow run for 'nonexistent-job'"):
        trainer.rerun("nonexistent-job")


def test_inspect_reads_the_record_back(store, tmp_path):
    from trainer import api as trainer

    spec, _ = load_spec(SPEC)
    run_id = _run(store, spec, job_id="rec-inspect")
    rec = record.Recorder(spec, "rec-inspect", run_id, store, time.time(), _project(tmp_path / "p"))
    rec.start()
    try:
        for epoch in range(3):
            print(f"epoch {epoch}")
    finally:
        rec.finish("FINISHED")
    runs.finish_run(store, run_id, "FINISHED")
    info = trainer.inspect_run("rec-inspect")
    assert info["run_id"] == run_id and info["status"] == "SUCCEEDED"
    assert info["log_tail"][-3:] == ["epoch 0", "epoch 1", "epoch 2"]
    assert [e["event"] for e in info["timeline"]][-1] == "ended"
    assert info["code_digest"] and info["cost"]["worker_groups"] == 0
    assert json.dumps(info, default=str)
    assert trainer.inspect_run(run_id)["job_id"] == "rec-inspect"
    prices = Path(store[len("sqlite:///"):]).parent / "prices.yaml"
    prices.write_text("{currency: EUR, cpu_hour: 3600}\n")
    try:
        assert trainer.inspect_run(run_id)["cost"]["currency"] == "EUR"
    finally:
        prices.unlink()


def test_the_recorded_log_is_gzip(store, tmp_path):
    spec, _ = load_spec(SPEC)
    run_id = _run(store, spec)
    rec = record.Recorder(spec, "rec-1", run_id, store, time.time(), _project(tmp_path / "p"))
    rec.start()
    try:
        print("x" * 1000)
    finally:
        rec.finish("FAILED")
    path = Path(runs.client(store).download_artifacts(run_id, record.LOG_ARTIFACT, str(tmp_path)))
    assert gzip.decompress(path.read_bytes()).decode().startswith("x" * 1000)
    assert path.stat().st_size < 200
