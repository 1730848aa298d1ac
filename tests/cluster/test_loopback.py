"""The local cluster listens on loopback only, and `down` leaves none of its processes behind
(Ray's client server included: it used to outlive `down`, its command line naming the host's
address, not the cluster's)."""
import time

import psutil
import pytest

from trainer.cluster.local import LocalCluster, NodeSpec

pytestmark = pytest.mark.integration

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _cluster_processes(state) -> dict[int, psutil.Process]:
    """Found the test's own way, not trainer's: every process naming this cluster's (random,
    private) temp dir or its GCS port on its command line, and their descendants."""
    gcs_port = state.gcs_address.rsplit(":", 1)[1]
    needles = (state.temp_dir, f":{gcs_port}")
    roots = [p for p in psutil.process_iter(["cmdline"])
             if any(n in " ".join(p.info["cmdline"] or []) for n in needles) and "ray" in " ".join(p.info["cmdline"] or [])]
    found = {p.pid: p for p in roots}
    for p in roots:
        try:
            found.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    return found


def _listening(procs) -> list[tuple[str, str, int]]:
    out = []
    for p in procs.values():
        try:
            out += [(p.name(), c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="inet")
                    if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            pass
    return out


def test_every_port_is_on_loopback_and_down_leaves_nothing(tmp_path):
    cluster = LocalCluster(home=tmp_path / "home")
    notes: list[str] = []
    state, started = cluster.up([NodeSpec("cpu", 1)], object_store_mb=128, progress=notes.append)
    try:
        assert started
        procs = _cluster_processes(state)
        names = {p.name() for p in procs.values() if p.is_running()}
        assert {"gcs_server", "raylet"} <= names, names
        assert any("ray.util.client.server" in " ".join(p.cmdline()) for p in procs.values())
        listening = _listening(procs)
        assert len(listening) >= 6, listening    # GCS, raylets, dashboard, agents, client server
        exposed = [l for l in listening if l[1] not in LOOPBACK]
        assert exposed == [], exposed
        assert not [n for n in notes if "beyond loopback" in n]
    finally:
        cluster.down()
    deadline = time.monotonic() + 10
    left = procs
    while left and time.monotonic() < deadline:
        left = {pid: p for pid, p in procs.items() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE}
        time.sleep(0.2)
    assert not left, [(p.pid, " ".join(p.cmdline())[:120]) for p in left.values()]
