"""Monitoring tests: promtool (Debian's prometheus package) checks the metric names, the rules
and the configs; the lifecycle and integration tests run the real Prometheus binary."""
import pytest

from _promtool import promtool_or_skip


@pytest.fixture(scope="session")
def promtool() -> str:
    return promtool_or_skip()
