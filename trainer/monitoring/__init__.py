"""Observability: the metrics trainer exports (catalog), how jobs record them through Ray
(metrics, gpu), the exporter for what lives outside jobs, the Prometheus config, alert rules and
Grafana dashboards, and the local Prometheus behind `trainer monitor up | down | status`.

Nothing is re-exported here: the job's modules (trainer.context, trainer.tracking) import
`trainer.monitoring.metrics` from a layer below the exporter and the Prometheus lifecycle,
which this package's face would otherwise pull in.
"""
