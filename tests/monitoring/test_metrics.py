"""The metric catalogue follows Prometheus's conventions (promtool check metrics), the exporter
reports the cluster's jobs and MLflow's promotion records, and GPU metrics are absent (never
zeros) where there is no GPU."""
import time

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from _promtool import run_promtool
from trainer.errors import TrackingError
from trainer.telemetry import catalog, gpu, record as metrics
from trainer.monitoring.exporter import TrainerCollector, exposition


def _catalog_exposition() -> bytes:
    """Every catalogued metric with one sample, as a Prometheus client exposes it."""
    reg = CollectorRegistry()
    for m in catalog.METRICS:
        labels = {k: "x" for k in m.labels}
        if m.kind == "counter":
            c = Counter(m.name.removesuffix("_total"), m.help, list(m.labels), registry=reg)
            (c.labels(**labels) if labels else c).inc()
        elif m.kind == "gauge":
            g = Gauge(m.name, m.help, list(m.labels), registry=reg)
            (g.labels(**labels) if labels else g).set(1)
        else:
            h = Histogram(m.name, m.help, list(m.labels), buckets=m.buckets, registry=reg)
            (h.labels(**labels) if labels else h).observe(1)
    return generate_latest(reg)


def test_catalog_names_pass_promtool_check_metrics(promtool):
    proc = run_promtool(promtool, "check", "metrics", stdin=_catalog_exposition())
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()


def test_promtool_check_metrics_catches_a_bad_name(promtool):
    """The check above can fail: a counter without `_total`-style naming and a non-base unit."""
    bad = (b"# HELP trainer_checkpoint_write_milliseconds x\n# TYPE trainer_checkpoint_write_milliseconds gauge\n"
           b"trainer_checkpoint_write_milliseconds 1\n")
    assert run_promtool(promtool, "check", "metrics", stdin=bad).returncode != 0


def test_catalog_conventions():
    for m in catalog.METRICS:
        assert m.name.startswith("trainer_"), m.name
        assert m.name.endswith("_total") == (m.kind == "counter"), m.name
        assert "job" not in m.labels, f"{m.name}: `job` is Prometheus's own target label; use trainer_job"
        assert m.source in ("job", "exporter")
        if m.kind == "histogram":
            assert m.name.endswith("_seconds") and list(m.buckets) == sorted(m.buckets)


def _jobs():
    now = time.time()
    return [{"job": "a-1", "name": "digits", "state": "RUNNING", "start": now - 30, "end": None},
            {"job": "b-1", "name": "digits", "state": "PENDING", "start": now - 200, "end": None},
            {"job": "c-1", "name": "mlp", "state": "SUCCEEDED", "start": now - 100, "end": now - 50},
            {"job": "d-1", "name": "mlp", "state": "FAILED", "start": now - 9000, "end": now - 8000}]


def _promotions():
    return [{"to": "staging", "in_registry": True}, {"to": "staging", "in_registry": None},
            {"to": "production", "in_registry": False}, {"to": "production", "in_registry": "unreachable"}]


def _samples(text: bytes) -> dict:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_exporter_reports_jobs_by_state_queue_and_durations(promtool):
    text = exposition(TrainerCollector(jobs=_jobs, promotions=list))
    assert run_promtool(promtool, "check", "metrics", stdin=text).returncode == 0, text.decode()
    s = _samples(text)
    assert s[("trainer_jobs", (("state", "RUNNING"),))] == 1
    assert s[("trainer_jobs", (("state", "CANCELLED"),))] == 0
    # the queue: only the pending job, with its wait
    queued = {k: v for k, v in s.items() if k[0] == "trainer_job_queued_seconds"}
    assert list(queued) == [("trainer_job_queued_seconds", (("name", "digits"), ("trainer_job", "b-1")))]
    assert 199 <= next(iter(queued.values())) < 260
    # current states: live jobs and those finished within the hour (d-1 ended 8000 s ago)
    current = {dict(k[1])["trainer_job"] for k in s if k[0] == "trainer_job_state"}
    assert current == {"a-1", "b-1", "c-1"}
    assert s[("trainer_job_duration_seconds_count", (("state", "SUCCEEDED"),))] == 1
    assert s[("trainer_job_duration_seconds_bucket", (("le", "60.0"), ("state", "SUCCEEDED")))] == 1
    assert s[("trainer_job_duration_seconds_bucket", (("le", "30.0"), ("state", "SUCCEEDED")))] == 0
    assert s[("trainer_exporter_source_up", (("source", "cluster"),))] == 1


def test_exporter_counts_promotions_by_environment_and_outcome():
    s = _samples(exposition(TrainerCollector(jobs=list, promotions=_promotions)))

    def n(env, outcome):
        return s[("trainer_promotions_total", (("environment", env), ("outcome", outcome)))]
    assert n("staging", "promoted") == 2
    assert n("production", "not_in_registry") == 1 and n("production", "registry_unreachable") == 1
    # every environment x outcome exists from the first scrape (so increase() sees a first failure)
    assert n("dev", "promoted") == 0 and n("dev", "not_in_registry") == 0


def test_exporter_says_a_source_is_down_instead_of_stale_series():
    def down():
        raise TrackingError("cannot reach MLflow")
    s = _samples(exposition(TrainerCollector(jobs=_jobs, promotions=down)))
    assert s[("trainer_exporter_source_up", (("source", "mlflow"),))] == 0
    assert not [k for k in s if k[0].startswith("trainer_promotions")]
    assert s[("trainer_jobs", (("state", "RUNNING"),))] == 1


def test_exporter_reads_promotion_records_from_a_real_mlflow_store(tmp_path):
    """A promotion record as trainer.promotion.transaction writes it (a version tag), read back
    through trainer.promotion.history by the exporter."""
    import json

    from mlflow import MlflowClient

    from trainer.promotion.registration import TAG_RECORD_PREFIX

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlc = MlflowClient(uri, registry_uri=uri)
    mlc.create_registered_model("digits")
    mv = mlc.create_model_version("digits", source=str(tmp_path / "model"))
    for seq, to in ((1, "staging"), (2, "production")):
        mlc.set_model_version_tag("digits", mv.version, f"{TAG_RECORD_PREFIX}{seq:04d}", json.dumps(
            {"model": "digits", "version": mv.version, "from": "dev", "to": to, "at": f"2026-12-0{seq}T00:00:00Z",
             "seq": seq, "digest": None}))
    s = _samples(exposition(TrainerCollector(jobs=list, tracking_uri=uri)))
    assert s[("trainer_promotions_total", (("environment", "staging"), ("outcome", "promoted")))] == 1
    assert s[("trainer_promotions_total", (("environment", "production"), ("outcome", "promoted")))] == 1
    assert s[("trainer_exporter_source_up", (("source", "mlflow"),))] == 1


# ---------------------------------------------------------------- GPUs: absent, not zeros
def test_no_gpu_sampler_without_a_gpu():
    sampler, reason = gpu.open_sampler()
    try:
        import pynvml
        pynvml.nvmlInit()
        has_gpu = pynvml.nvmlDeviceGetCount() > 0
    except Exception:  # noqa: BLE001 - no NVML library or driver: no GPU here
        has_gpu = False
    if has_gpu:
        pytest.skip("this machine has a GPU (the device check covers sampling)")
    assert sampler is None and reason


def test_a_worker_given_no_gpu_samples_none():
    sampler, reason = gpu.open_sampler({"CUDA_VISIBLE_DEVICES": ""})
    assert sampler is None and "CUDA_VISIBLE_DEVICES" in reason


def test_recording_outside_a_ray_job_is_a_no_op():
    """`trainer run --local` and unit tests: no Ray, so nothing is recorded and nothing raises."""
    import ray

    assert not ray.is_initialized()
    metrics.bind("local-job", 0)
    metrics.reported(1, {"loss": 0.5})
    metrics.checkpoint_written(0.1, 10, ok=True)
    metrics.tracking_flushed(0.1, ok=True)
    assert metrics._objects == {}


class _FakeNvml:
    """NVML's calls the sampler makes, for the one thing this machine cannot run: a GPU."""
    class NVMLError(Exception):
        pass

    def nvmlDeviceGetUtilizationRates(self, h):
        return type("U", (), {"gpu": h["util"]})()

    def nvmlDeviceGetMemoryInfo(self, h):
        return type("M", (), {"used": h["mem"]})()

    def nvmlDeviceGetPowerUsage(self, h):
        if h["mw"] is None:
            raise self.NVMLError("not supported")
        return h["mw"]


def test_sampler_reads_base_units():
    """Percent -> ratio, milliwatts -> watts; a board without power readings gives no power value."""
    sampler = gpu.Sampler(_FakeNvml(), [("0", {"util": 87, "mem": 2**30, "mw": 312500}),
                                        ("3", {"util": 0, "mem": 0, "mw": None})])
    a, b = sampler.sample()
    assert (a.index, a.utilization_ratio, a.memory_used_bytes, a.power_watts) == ("0", 0.87, 2**30, 312.5)
    assert (b.index, b.utilization_ratio, b.power_watts) == ("3", 0.0, None)


def test_visible_devices_by_index_or_uuid():
    assert gpu.visible({}) is None
    assert gpu.visible({"CUDA_VISIBLE_DEVICES": "0,GPU-1234"}) == ["0", "GPU-1234"]
    assert gpu.visible({"CUDA_VISIBLE_DEVICES": "-1"}) == []
