"""Grafana dashboards, generated with grafanalib: a job view (progress, loss, throughput,
restarts, checkpoints, tracking, GPU use) and a platform view (queue, states, durations,
promotions, conversions, Ray's nodes).

`python -m trainer.monitoring.dashboards` writes them to trainer/monitoring/dashboards/*.json
(committed; a test holds them to this generator). Import them into Grafana with a Prometheus
data source (the `datasource` variable picks it). Each panel's queries are checked against a real
Prometheus after a job (tests/monitoring/test_integration.py); `needs` says which panels can only
have data where a GPU, a `convert:` step or a checkpoint restore happened.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent / "dashboards"
JOB = '{trainer_job=~"$trainer_job"}'
JOB_AND = 'trainer_job=~"$trainer_job", '


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[tuple[str, str], ...]     # (PromQL, legend)
    unit: str = "short"
    needs: str | None = None                 # gpu | convert | restore | promotion: no data without it


def _q(expr: str, legend: str) -> tuple[str, str]:
    return (expr, legend)


JOB_PANELS = (
    Panel("Progress (step)", (_q(f"max by (trainer_job) (trainer_job_step{JOB})", "{{trainer_job}}"),)),
    Panel("Loss", (_q(f'max by (trainer_job, key) (trainer_job_value{{{JOB_AND}key=~".*loss.*"}})',
                      "{{trainer_job}} {{key}}"),)),
    Panel("Reported values", (_q(f"max by (trainer_job, key) (trainer_job_value{JOB})", "{{trainer_job}} {{key}}"),)),
    Panel("Throughput (reports/s)", (_q(f"sum by (trainer_job) (rate(trainer_job_reports_total{JOB}[1m]))",
                                        "{{trainer_job}}"),), "ops"),
    Panel("Worker group restarts", (_q(f"sum by (trainer_job) (trainer_job_worker_group_starts_total{JOB}) - 1",
                                       "{{trainer_job}}"),)),
    Panel("Restores from a checkpoint", (_q(f"sum by (trainer_job, outcome) (trainer_job_restores_total{JOB})",
                                            "{{trainer_job}} {{outcome}}"),), needs="restore"),
    Panel("Placement (driver start to training)",
          (_q(f"sum by (trainer_job) (trainer_job_placement_seconds_sum{JOB}) / "
              f"sum by (trainer_job) (trainer_job_placement_seconds_count{JOB})", "{{trainer_job}}"),), "s"),
    Panel("Checkpoint write time (mean)",
          (_q(f"sum by (trainer_job) (trainer_checkpoint_write_seconds_sum{JOB}) / "
              f"sum by (trainer_job) (trainer_checkpoint_write_seconds_count{JOB})", "{{trainer_job}}"),), "s"),
    Panel("Checkpoint size", (_q(f"max by (trainer_job) (trainer_checkpoint_size_bytes{JOB})", "{{trainer_job}}"),),
          "bytes"),
    Panel("Checkpoint writes", (_q(f"sum by (trainer_job, outcome) (trainer_checkpoint_writes_total{JOB})",
                                   "{{trainer_job}} {{outcome}}"),)),
    Panel("MLflow backlog (values held back)",
          (_q(f"max by (trainer_job) (trainer_tracking_pending_values{JOB})", "{{trainer_job}}"),)),
    Panel("MLflow flush time (mean)",
          (_q(f"sum by (trainer_job) (trainer_tracking_flush_seconds_sum{JOB}) / "
              f"sum by (trainer_job) (trainer_tracking_flush_seconds_count{JOB})", "{{trainer_job}}"),), "s"),
    Panel("GPU utilisation", (_q(f"trainer_gpu_utilization_ratio{JOB}", "{{trainer_job}} rank {{rank}} gpu {{gpu}}"),),
          "percentunit", needs="gpu"),
    Panel("GPU memory", (_q(f"trainer_gpu_memory_used_bytes{JOB}", "{{trainer_job}} rank {{rank}} gpu {{gpu}}"),),
          "bytes", needs="gpu"),
    Panel("GPU power", (_q(f"trainer_gpu_power_watts{JOB}", "{{trainer_job}} rank {{rank}} gpu {{gpu}}"),),
          "watt", needs="gpu"),
)

PLATFORM_PANELS = (
    Panel("Jobs by state", (_q("sum by (state) (trainer_jobs)", "{{state}}"),)),
    Panel("Queue: pending jobs' wait", (_q("trainer_job_queued_seconds", "{{trainer_job}}"),
                                        _q("time() - max by (trainer_job) (trainer_job_start_time_seconds) "
                                           "unless on (trainer_job) max by (trainer_job) "
                                           "(trainer_job_training_start_time_seconds)", "{{trainer_job}} placing")),
          "s"),
    Panel("Running jobs", (_q('count(trainer_job_state{state="RUNNING"}) or vector(0)', "running"),)),
    Panel("Job wall time (mean, finished)",
          (_q("sum by (state) (trainer_job_duration_seconds_sum) / sum by (state) (trainer_job_duration_seconds_count)",
              "{{state}}"),), "s"),
    Panel("Promotions", (_q("sum by (environment, outcome) (trainer_promotions_total)", "{{environment}} {{outcome}}"),)),
    Panel("Conversions", (_q("sum by (target, outcome) (trainer_conversions_total)", "{{target}} {{outcome}}"),),
          needs="convert"),
    Panel("Parity checks", (_q("sum by (target, outcome) (trainer_parity_checks_total)", "{{target}} {{outcome}}"),),
          needs="convert"),
    Panel("Alerts firing", (_q('count by (alertname) (ALERTS{alertstate="firing"}) or vector(0)', "{{alertname}}"),)),
    Panel("Ray nodes: CPU", (_q("avg by (instance) (ray_node_cpu_utilization)", "{{instance}}"),), "percent"),
    Panel("Exporter sources up", (_q("trainer_exporter_source_up", "{{source}}"),)),
)

DASHBOARDS = {"trainer-job": ("trainer: job", JOB_PANELS), "trainer-platform": ("trainer: platform", PLATFORM_PANELS)}


def build(uid: str):
    from grafanalib.core import (Dashboard, GridPos, Target, Template, Templating, Time, TimeSeries)

    title, panels = DASHBOARDS[uid]
    templates = [Template(name="datasource", label="Prometheus", query="prometheus", type="datasource")]
    if uid == "trainer-job":
        templates.append(Template(name="trainer_job", label="Job", dataSource="${datasource}", includeAll=True,
                                  multi=True, default="$__all", refresh=2,
                                  query="label_values(trainer_job_start_time_seconds, trainer_job)"))
    out = []
    for i, p in enumerate(panels):
        out.append(TimeSeries(
            title=p.title, dataSource="${datasource}", unit=p.unit,
            targets=[Target(expr=expr, legendFormat=legend, refId=chr(ord("A") + n))
                     for n, (expr, legend) in enumerate(p.queries)],
            gridPos=GridPos(h=8, w=12, x=12 * (i % 2), y=8 * (i // 2))))
    return Dashboard(title=title, uid=uid, tags=["trainer"], timezone="utc", time=Time("now-1h", "now"),
                     refresh="10s", templating=Templating(templates), panels=out).auto_panel_ids()


def render(uid: str) -> str:
    from grafanalib._gen import DashboardEncoder

    return json.dumps(build(uid).to_json_data(), cls=DashboardEncoder, sort_keys=True, indent=2) + "\n"


def panels() -> list[tuple[str, Panel]]:
    """(dashboard uid, panel) for every panel."""
    return [(uid, p) for uid, (_, ps) in DASHBOARDS.items() for p in ps]


def write(out_dir: Path = OUT_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for uid in DASHBOARDS:
        path = out_dir / f"{uid}.json"
        path.write_text(render(uid))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT_DIR):
        print(path)
