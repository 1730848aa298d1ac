"""Watching trainer: the exporter for what lives outside jobs (trainer.monitoring.exporter), the
Prometheus scrape config, alert rules and local Prometheus behind `trainer monitor up | down |
status` (trainer.monitoring.prometheus, rules.yaml), and the Grafana dashboards
(trainer.monitoring.dashboards). What jobs record, and the catalogue of every metric, is
trainer.telemetry: a layer below, because the job's own code (trainer.context, trainer.tracking)
calls it.

Nothing is re-exported here: each module is used by name (the CLI, the tests, `python -m`).
"""
