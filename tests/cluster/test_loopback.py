"""A local cluster of its own (token auth on, as `trainer cluster up` makes it): a host joins it
(`trainer cluster join`) labelled by its GPU; then every port of it, the joined node's included,
is on loopback only, and `down` leaves none of its processes behind (Ray's client server
included: it used to outlive `down`, its command line naming the host's address, not the
cluster's). One cluster serves both tests, in this order: each start costs ~20 s."""
import time

import psutil
import pytest

from trainer.cluster.gpus import Gpu
from trainer.cluster.local import LocalCluster, NodeSpec

pytestmark = pytest.mark.integration

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
H100 = Gpu(0, "NVIDIA H100 80GB HBM3", 79.6, (9, 0))


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory):
    """(cluster, state, started, progress notes) of a cpu:1 cluster in its own home."""
    cluster = LocalCluster(home=tmp_path_factory.mktemp("own") / "home")
    notes: list[str] = []
    state, started = cluster.up([NodeSpec("cpu", 1)], object_store_mb=128, progress=notes.append)
    try:
        yield cluster, state, started, notes
    finally:
        cluster.down()      # again after the last test's own `down`: a no-op then


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


def test_a_node_joins_a_running_head_labelled(own_cluster, tmp_path, monkeypatch):
    """A real head (the module's cluster) and a node joining it by GCS
    address with the head's token (RAY_AUTH_TOKEN_PATH, as a user gives it), given an H100 as NVML
    would report it: the head's inventory shows the label and the GPU."""
    from trainer.cluster.inventory import nodes
    from trainer.cluster.local import join
    from trainer.ports import free_port

    cluster, state, _, _ = own_cluster
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", state.token_file)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)     # set by the token variable alone
    joined = join(state.gcs_address, cpus=1, object_store_mb=128, temp_dir=state.temp_dir, gpus=[H100],
                  log_dir=tmp_path / "logs", node_ip="127.0.0.1",
                  extra_args=(f"--dashboard-agent-listen-port={free_port()}", "--include-log-monitor=false"),
                  env=cluster.owner_env(state))    # so that cluster.down() stops it too
    assert joined["labels"]["ray.io/accelerator-type"] == "H100" and joined["gpus"] == 1
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        found = [n for n in nodes(state.dashboard_url, free=False) if n.accelerator == "H100"]
        if found:
            break
        time.sleep(1)
    (node,) = found
    assert node.gpus == 1 and node.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"


def test_every_port_is_on_loopback_and_down_leaves_nothing(own_cluster):
    cluster, state, started, notes = own_cluster
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
