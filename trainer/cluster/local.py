"""The embedded local Ray cluster: a CPU-only head that schedules and runs no training, plus
worker nodes labelled `ray.io/accelerator-type=<ACCEL>` (fake accelerator labels are how tests
exercise placement on one host).

Everything lives under `$TRAINER_HOME/cluster` (state.json, logs) and one Ray temp dir, so
`down` can find and stop exactly the processes this cluster started, never another Ray on the host.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trainer.errors import ClusterError, UsageError
from trainer.home import trainer_home

# Ray writes unix sockets under its temp dir; their paths must stay under ~107 bytes.
MAX_TEMP_DIR_LEN = 40
START_TIMEOUT_S = 120


@dataclass(frozen=True)
class NodeSpec:
    accelerator: str
    cpus: int
    gpus: int = 0

    @classmethod
    def parse(cls, text: str) -> "NodeSpec":
        """`ACCEL:CPUS[:GPUS]`, e.g. `cpu:2`, `A100:1`, `H100:4:1`."""
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9_.-]*):(\d+)(?::(\d+))?", text.strip())
        if not m or int(m.group(2)) < 1:
            raise UsageError(f"--node {text!r}: expected ACCEL:CPUS[:GPUS] with CPUS >= 1, e.g. cpu:2 or A100:1")
        return cls(m.group(1), int(m.group(2)), int(m.group(3) or 0))

    def __str__(self) -> str:
        return f"{self.accelerator}:{self.cpus}" + (f":{self.gpus}" if self.gpus else "")


def default_nodes() -> list[NodeSpec]:
    """One node with all cores, labelled by its GPU model when NVML finds GPUs, else `cpu`."""
    from trainer.cluster.gpus import local_gpus

    gpus = local_gpus()
    label = gpus[0].label if gpus else "cpu"
    return [NodeSpec(label, os.cpu_count() or 1, len(gpus))]


@dataclass
class ClusterState:
    gcs_address: str
    dashboard_url: str
    temp_dir: str
    nodes: list[dict] = field(default_factory=list)
    started_at: float = 0.0

    @property
    def node_specs(self) -> list[NodeSpec]:
        return [NodeSpec(**n) for n in self.nodes]


class LocalCluster:
    def __init__(self, home: Path | None = None):
        self.home = home or trainer_home()
        self.dir = self.home / "cluster"
        self.state_file = self.dir / "state.json"
        self.log_dir = self.dir / "logs"

    # ------------------------------------------------------------------ queries
    def state(self) -> ClusterState | None:
        """The running cluster, or None (a stale state file from a dead cluster is ignored)."""
        if not self.state_file.is_file():
            return None
        try:
            state = ClusterState(**json.loads(self.state_file.read_text()))
        except (ValueError, TypeError):
            return None
        return state if _dashboard_alive(state.dashboard_url) else None

    # ------------------------------------------------------------------ lifecycle
    def up(self, nodes: list[NodeSpec] | None = None, object_store_mb: int | None = None,
           progress=None) -> tuple[ClusterState, bool]:
        """Start the cluster, or reuse the running one. Returns (state, started_now)."""
        running = self.state()
        if running is not None:
            if nodes and sorted(map(str, running.node_specs)) != sorted(map(str, nodes)):
                raise ClusterError(
                    f"a local cluster is already running with nodes {', '.join(map(str, running.node_specs))}; "
                    f"run `trainer cluster down` first to start one with {', '.join(map(str, nodes))}")
            return running, False
        nodes = nodes or default_nodes()
        self._stop_processes(self._temp_dir(), None)  # leftovers of a crashed cluster
        self.log_dir.mkdir(parents=True, exist_ok=True)
        temp_dir = self._temp_dir()
        temp_dir.mkdir(parents=True, exist_ok=True)
        store = str((object_store_mb or _default_object_store_mb(len(nodes) + 1)) * 1024 * 1024)
        gcs_port, dash_port, client_port = _free_port(), _dashboard_port(), _free_port()
        state = ClusterState(gcs_address=f"127.0.0.1:{gcs_port}",
                             dashboard_url=f"http://127.0.0.1:{dash_port}", temp_dir=str(temp_dir),
                             nodes=[asdict(n) for n in nodes], started_at=time.time())
        # Every node's dashboard agent gets its own free HTTP port: Ray's default (52365) is one
        # per host, so a second cluster (or node) on this host would have no agent to take jobs.
        common = ["--node-ip-address=127.0.0.1", f"--object-store-memory={store}", "--disable-usage-stats"]
        try:
            _say(progress, "starting the head (CPU-only: schedules, runs no training)")
            self._ray_start("head", [
                "--head", f"--port={gcs_port}", "--num-cpus=0", "--num-gpus=0",
                "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
                f"--ray-client-server-port={client_port}", f"--temp-dir={temp_dir}",
                f"--dashboard-agent-listen-port={_free_port()}", *common])
            # Nodes join one after another: two started at the same instant race for ports.
            for i, node in enumerate(nodes):
                _say(progress, f"starting worker node {i + 1}/{len(nodes)}: {node}")
                self._ray_start(f"node{i}-{node.accelerator}", [
                    f"--address={state.gcs_address}", f"--num-cpus={node.cpus}", f"--num-gpus={node.gpus}",
                    f"--labels=ray.io/accelerator-type={node.accelerator}",
                    f"--resources={json.dumps({f'accelerator_type:{node.accelerator}': 1})}",
                    "--include-log-monitor=false", f"--dashboard-agent-listen-port={_free_port()}", *common])
            self._wait_for_nodes(state, len(nodes) + 1)
        except BaseException:
            self._stop_processes(temp_dir, gcs_port)
            raise
        self.state_file.write_text(json.dumps(asdict(state), indent=2))
        return state, True

    def down(self) -> int:
        """Stop this cluster's processes (and only those). Returns how many were stopped."""
        state = None
        if self.state_file.is_file():
            try:
                state = ClusterState(**json.loads(self.state_file.read_text()))
            except (ValueError, TypeError):
                pass
        gcs_port = int(state.gcs_address.rsplit(":", 1)[1]) if state else None
        stopped = self._stop_processes(Path(state.temp_dir) if state else self._temp_dir(), gcs_port)
        self.state_file.unlink(missing_ok=True)
        return stopped

    # ------------------------------------------------------------------ internals
    def _temp_dir(self) -> Path:
        preferred = self.home / "ray"
        if len(str(preferred)) <= MAX_TEMP_DIR_LEN:
            return preferred
        short = Path("/tmp") / f"trainer-ray-{hashlib.sha1(str(self.home).encode()).hexdigest()[:10]}"
        self.home.mkdir(parents=True, exist_ok=True)
        if not preferred.exists() and not preferred.is_symlink():
            preferred.symlink_to(short, target_is_directory=True)  # logs still found under $TRAINER_HOME
        return short

    def _ray_start(self, name: str, args: list[str]) -> None:
        ray_start(name, args, self.log_dir, env={"RAY_AUTH_MODE": "disabled"})

    def _wait_for_nodes(self, state: ClusterState, count: int) -> None:
        from trainer.cluster.inventory import nodes

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if _dashboard_alive(state.dashboard_url):
                try:
                    if len(nodes(state.dashboard_url)) >= count:
                        return
                except ClusterError:
                    pass
            time.sleep(0.5)
        raise ClusterError(f"the local cluster did not report {count} alive nodes within "
                           f"{START_TIMEOUT_S}s (logs: {self.log_dir})")

    def _stop_processes(self, temp_dir: Path, gcs_port: int | None) -> int:
        import psutil

        needles = [str(temp_dir), str(temp_dir.resolve())]
        if gcs_port:
            needles.append(f"127.0.0.1:{gcs_port}")
        roots = []
        for proc in psutil.process_iter(["cmdline"]):
            cmd = " ".join(proc.info.get("cmdline") or [])
            if proc.pid != os.getpid() and any(n in cmd for n in needles):
                roots.append(proc)
        victims = {p.pid: p for p in roots}
        for p in roots:
            try:
                victims.update({c.pid: c for c in p.children(recursive=True)})
            except psutil.Error:
                pass
        victims.pop(os.getpid(), None)
        for p in victims.values():
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(list(victims.values()), timeout=8)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)
        return len(victims)


def ray_start(name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Path:
    """`ray start ARGS` (this interpreter's ray), its output in `log_dir/<name>.log`. Token auth
    stays off unless RAY_AUTH_MODE says otherwise (workers joining by address cannot present
    a token the head wrote elsewhere)."""
    ray_bin = Path(sys.executable).parent / "ray"
    cmd = [str(ray_bin) if ray_bin.exists() else "ray", "start", *args]
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"), "RAY_USAGE_STATS_ENABLED": "0",
           **(env or {})}
    with log.open("w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=START_TIMEOUT_S)
    if proc.returncode != 0:
        tail = [l for l in log.read_text().splitlines() if l.strip()][-1:] or ["(no output)"]
        raise ClusterError(f"`ray start` for {name} failed (exit {proc.returncode}): {tail[0][:300]} "
                           f"(full log: {log})")
    return log


def join_args(address: str, gpus: list, cpus: int, object_store_mb: int | None = None,
              temp_dir: str | None = None, node_ip: str | None = None) -> list[str]:
    """`ray start` arguments for a worker node joining the head at `address` (HOST:PORT), labelled
    by its GPUs through the identity table (no GPUs: `cpu`), with the GPU count set."""
    from trainer.cluster.gpus import node_labels

    labels = node_labels(gpus, "ray")
    accelerator = labels["ray.io/accelerator-type"]
    if gpus:
        labels.update(node_labels(gpus, "gfd"))
        labels = {k: v for k, v in labels.items() if k in ("ray.io/accelerator-type", "nvidia.com/gpu.product")}
    args = [f"--address={address}", f"--num-cpus={cpus}", f"--num-gpus={len(gpus)}",
            "--labels=" + ",".join(f"{k}={v}" for k, v in labels.items()),
            f"--resources={json.dumps({f'accelerator_type:{accelerator}': 1})}", "--disable-usage-stats"]
    if object_store_mb:
        args.append(f"--object-store-memory={object_store_mb * 1024 * 1024}")
    if temp_dir:
        args.append(f"--temp-dir={temp_dir}")
    if node_ip:
        args.append(f"--node-ip-address={node_ip}")
    return args


def join(address: str, *, cpus: int | None = None, object_store_mb: int | None = None,
         temp_dir: str | None = None, gpus: list | None = None, log_dir: Path | None = None,
         node_ip: str | None = None, extra_args: tuple[str, ...] = ()) -> dict:
    """Start a Ray worker node on this host joining the head at `address`; returns what it was
    started with (labels, GPUs, and why there are none)."""
    from trainer.cluster.gpus import Probe, probe

    found = Probe(list(gpus), "") if gpus is not None else probe()
    cpus = cpus or os.cpu_count() or 1
    if ":" not in address or "://" in address:
        raise UsageError(f"--address {address!r}: expected the head's GCS address HOST:PORT (e.g. head:6379)")
    args = join_args(address, found.gpus, cpus, object_store_mb, temp_dir, node_ip) + list(extra_args)
    log = ray_start("join", args, log_dir or trainer_home() / "cluster" / "logs")
    labels = next(a for a in args if a.startswith("--labels="))[len("--labels="):]
    return {"address": address, "cpus": cpus, "gpus": len(found.gpus),
            "gpu_names": [g.name for g in found.gpus], "labels": dict(kv.split("=", 1) for kv in labels.split(",")),
            "no_gpu_reason": found.reason, "log": str(log)}


def _dashboard_alive(url: str) -> bool:
    import requests

    try:
        return requests.get(f"{url}/api/version", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dashboard_port() -> int:
    """Ray's usual 8265 when free (what users expect), else any free port."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 8265))
            return 8265
        except OSError:
            pass
    return _free_port()


def _default_object_store_mb(node_count: int) -> int:
    """Bounded: Ray would reserve ~30% of RAM per node; a few hundred MB each is plenty here."""
    import psutil

    total_mb = psutil.virtual_memory().total // (1024 * 1024)
    return int(max(128, min(1024, total_mb * 0.1 / node_count)))


def _say(progress, text: str) -> None:
    if progress is not None:
        progress(text)
