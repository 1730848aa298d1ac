"""Monitoring: a local Prometheus scraping the local cluster's Ray metrics and trainer's exporter,
with trainer's alert rules (the work is in trainer.monitoring.prometheus)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from trainer.monitoring import prometheus


def monitor_up(port: int | None = None, rules: str | Path | None = None,
               progress: Callable[[str], None] | None = None) -> tuple[dict, bool]:
    """Start Prometheus and the exporter (or find them running): (state, started)."""
    return prometheus.up(port=port, rules=Path(rules) if rules is not None else None, progress=progress)


def monitor_down() -> int:
    """Stop the processes `monitor_up` started; returns how many were stopped."""
    return prometheus.down()


def monitor_status() -> dict:
    """Prometheus's URL, each scrape target's health and the alerts pending or firing."""
    return prometheus.status()
