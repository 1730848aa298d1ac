"""The exporter for what lives outside jobs: the cluster's job list (jobs by state, how long a
pending one has waited, finished jobs' wall times) and the promotions MLflow records.

Read on each scrape (promotions at most every PROMOTIONS_CACHE_S: each model's history is a few
MLflow and registry requests). A source that cannot be read gives `trainer_exporter_source_up 0`
and none of its series, rather than stale ones. `trainer monitor up` runs it as
`python -m trainer.monitoring.exporter --port PORT` on 127.0.0.1.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from trainer.errors import TrainerError, first_line
from trainer.telemetry import catalog
from trainer.state import JobState

log = logging.getLogger(__name__)

PROMOTIONS_CACHE_S = 30.0
RECENT_S = 3600.0            # finished jobs keep a trainer_job_state series this long
# A promotion record's outcome: was its artifact found in the registry (None: no registry part).
OUTCOMES = ("promoted", "not_in_registry", "registry_unreachable")


def _family(name: str, **kw):
    m = catalog.get(name)
    labels = kw.pop("labels", m.labels)
    if m.kind == "counter":
        return CounterMetricFamily(name.removesuffix("_total"), m.help, labels=labels)
    if m.kind == "gauge":
        return GaugeMetricFamily(name, m.help, labels=labels)
    return HistogramMetricFamily(name, m.help, labels=labels)


class TrainerCollector:
    """A prometheus_client collector; `jobs` and `promotions` are injectable for tests (each
    returns a list, or raises TrainerError when its source cannot be read)."""

    def __init__(self, home: Path | None = None, tracking_uri: str | None = None, *, jobs=None, promotions=None):
        self._home = home
        self._tracking_uri = tracking_uri
        self._jobs = jobs or self._cluster_jobs
        self._promotions = promotions or self._mlflow_promotions
        self._cached: tuple[float, list[dict]] | None = None

    # ------------------------------------------------------------------ sources
    def _cluster_jobs(self) -> list[dict]:
        """[{job, name, state, start, end}] of the local cluster; [] when none runs."""
        from trainer.cluster.local import LocalCluster
        from trainer.scheduling.ray_jobs import RayJobs

        state = LocalCluster(self._home).state()
        if state is None:
            return []
        return [{"job": j.submission_id, "name": (j.metadata or {}).get("name") or "",
                 "state": JobState.from_ray(j.status).value,
                 "start": j.start_time / 1000 if j.start_time else None,
                 "end": j.end_time / 1000 if j.end_time else None} for j in RayJobs(state.dashboard_url).list()]

    def _mlflow_promotions(self) -> list[dict]:
        """Every promotion record of every registered model (trainer.promotion.history)."""
        from trainer.home import resolve_tracking_uri
        from trainer.promotion.history import history
        from trainer.promotion.registration import _mlflow, client

        uri = resolve_tracking_uri(self._tracking_uri)
        with _mlflow("cannot list the registered models in MLflow"):
            models = [m.name for m in client(uri).search_registered_models()]
        return [r for model in models for r in history(model, uri, check_registry=True)]

    def _promotion_records(self) -> list[dict]:
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > PROMOTIONS_CACHE_S:
            self._cached = (now, self._promotions())
        return self._cached[1]

    # ------------------------------------------------------------------ the scrape
    def collect(self):
        up = GaugeMetricFamily("trainer_exporter_source_up", catalog.get("trainer_exporter_source_up").help,
                               labels=["source"])
        for source, families in (("cluster", self._job_families), ("mlflow", self._promotion_families)):
            try:
                out = families()
            except TrainerError as e:
                log.warning("exporter: %s: %s", source, first_line(e))
                up.add_metric([source], 0)
                continue
            up.add_metric([source], 1)
            yield from out
        yield up

    def _job_families(self) -> list:
        jobs = self._jobs()
        now = time.time()
        by_state = _family("trainer_jobs")
        for s in JobState:
            by_state.add_metric([s.value], sum(1 for j in jobs if j["state"] == s.value))
        current = _family("trainer_job_state")
        queued = _family("trainer_job_queued_seconds")
        for j in jobs:
            terminal = JobState(j["state"]).is_terminal
            if not terminal or (j["end"] and now - j["end"] < RECENT_S):
                current.add_metric([j["job"], j["name"], j["state"]], 1)
            if j["state"] == JobState.PENDING.value and j["start"]:
                queued.add_metric([j["job"], j["name"]], max(0.0, now - j["start"]))
        durations = _family("trainer_job_duration_seconds")
        buckets = catalog.get("trainer_job_duration_seconds").buckets
        for s in (s for s in JobState if s.is_terminal):
            walls = [j["end"] - j["start"] for j in jobs if j["state"] == s.value and j["start"] and j["end"]]
            counts = [sum(1 for w in walls if w <= b) for b in buckets]
            durations.add_metric([s.value], [(_le(b), c) for b, c in zip(buckets, counts)] + [("+Inf", len(walls))],
                                 sum_value=sum(walls))
        return [by_state, current, queued, durations]

    def _promotion_families(self) -> list:
        from trainer.promotion.registration import PROJECTS

        counts = {(env, o): 0 for env in PROJECTS for o in OUTCOMES}   # every series exists from the start
        for r in self._promotion_records():
            outcome = {None: "promoted", True: "promoted", False: "not_in_registry"}.get(r.get("in_registry"),
                                                                                         "registry_unreachable")
            key = (str(r.get("to")), outcome)
            counts[key] = counts.get(key, 0) + 1
        family = _family("trainer_promotions_total")
        for (env, outcome), n in sorted(counts.items()):
            family.add_metric([env, outcome], n)
        return [family]


def _le(bound: float) -> str:
    return repr(float(bound))


def registry_for(collector: TrainerCollector) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg


def exposition(collector: TrainerCollector) -> bytes:
    """One scrape's text, as Prometheus would read it."""
    return generate_latest(registry_for(collector))


def serve(port: int, host: str = "127.0.0.1", home: Path | None = None) -> None:
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr=host, registry=registry_for(TrainerCollector(home)))
    thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.monitoring.exporter")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    from trainer.logs import quiet

    quiet()
    serve(args.port, args.host)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
