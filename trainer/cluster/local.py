"""The embedded local Ray cluster: a CPU-only head that schedules and runs no training, plus
worker nodes labelled `ray.io/accelerator-type=<ACCEL>` (fake accelerator labels are how tests
exercise placement on one host).

Everything lives under `$TRAINER_HOME/cluster` (state.json, logs, the auth token) and one Ray temp
dir. Every node is started with this cluster's owner mark in its environment (a token recorded in
state.json, 0600: `trainer.cluster.processes`), so `down` stops exactly the processes this cluster
started and their children, never another Ray on the host and never by a guess at a command line.
That folder is private (0700) and Ray's token auth is on (`trainer.cluster.auth`): no other local
user or process can submit a job, read its logs or join a node.

Every node listens on loopback only: the head runs with node IP 127.0.0.1 (Ray then binds its GCS,
raylet, dashboard agent, metrics and client server there; `ray start` would otherwise swap
127.0.0.1 for the host's address), the workers take 127.0.0.1 from the head's address. `up` checks
the listening sockets of the cluster's processes and names any port bound beyond loopback.
"""
from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trainer import ports
from trainer.cluster import auth, containers, processes
from trainer.errors import ClusterError, UsageError
from trainer.home import trainer_home

# Ray writes unix sockets under its temp dir; their paths must stay under ~107 bytes (measured:
# the temp dir + 62). The head takes this folder; worker node i takes `<folder>/<i>`.
MAX_TEMP_DIR_LEN = 40
START_TIMEOUT_S = 120
# A worker node's `ray start` (launched while the head's still starts, see `up`) asks the GCS for
# the head's node every 2 s, NUM_REDIS_GET_RETRIES (20) times: 40 s, less than a head's start can
# take on a loaded host (its raylet registers only once its dashboard is up), and the worker then
# failed "No node info found for head node in GCS" (measured at load ~8). It gets as long as the
# head has.
WAIT_FOR_HEAD_ENV = {"RAY_NUM_REDIS_GET_RETRIES": str(START_TIMEOUT_S // 2)}
# What a `ray start` says when a port it was given is taken meanwhile (then `up` tries new ports).
PORT_TAKEN = ("already occupied", "address already in use")


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
    token_file: str = ""    # empty: started by an older trainer, with token auth off
    owner_token: str = ""   # in every node's environment (TRAINER_OWNER): what `down` stops
    image: str = ""         # the runtime image the worker nodes run in (podman containers); "": the host

    @property
    def headers(self) -> dict[str, str]:
        """What a client sends to this cluster's dashboard (its token)."""
        return auth.headers(auth.read_own_token(Path(self.token_file))) if self.token_file else {}

    @property
    def node_specs(self) -> list[NodeSpec]:
        return [NodeSpec(**n) for n in self.nodes]


class LocalCluster:
    def __init__(self, home: Path | None = None):
        self.home = home or trainer_home()
        self.dir = auth.cluster_dir(self.home)
        self.state_file = self.dir / auth.STATE_FILE
        self.token_file = auth.token_path(self.home)
        self.log_dir = self.dir / "logs"

    # ------------------------------------------------------------------ queries
    def state(self) -> ClusterState | None:
        """The running cluster, or None (a stale state file from a dead cluster is ignored)."""
        state = self._recorded()
        # Both: after its GCS dies the head's dashboard still answers until it gives up on the GCS
        # (a minute), and `cluster up` then would reuse a cluster that has lost every job.
        alive = state is not None and _gcs_alive(state.gcs_address) and _dashboard_alive(state.dashboard_url,
                                                                                            state.headers)
        return state if alive else None

    def _recorded(self) -> ClusterState | None:
        """What state.json records (alive or not); a state file that is a link, not ours or
        writable by others, or not what trainer writes, is refused (ClusterError)."""
        data = processes.read_private_json(self.state_file, ClusterError)
        if data is None:
            return None
        known = {f for f in ClusterState.__dataclass_fields__}
        try:
            return ClusterState(**{k: v for k, v in data.items() if k in known})
        except TypeError:
            raise ClusterError(f"{self.state_file} is not a cluster state trainer wrote (fields missing); "
                               f"remove it") from None

    def owner_env(self, state: ClusterState) -> dict[str, str]:
        """The environment mark of this cluster's processes (a node joined on this host with it
        is stopped by `down` too)."""
        return processes.owner_env(state.owner_token, self.dir)

    # ------------------------------------------------------------------ lifecycle
    def up(self, nodes: list[NodeSpec] | None = None, object_store_mb: int | None = None,
           progress=None, image: str | None = None) -> tuple[ClusterState, bool]:
        """Start the cluster, or reuse the running one. Returns (state, started_now). With
        `image`, the worker nodes run as containers of that runtime image (its Ray must be the
        head's: refused before anything starts); the head stays on the host."""
        running = self.state()
        if running is not None:
            if image and image != running.image:
                raise ClusterError(
                    f"a local cluster is already running with its workers {_where(running.image)}; run "
                    f"`trainer cluster down` first to start one with its workers {_where(image)}")
            if nodes and sorted(map(str, running.node_specs)) != sorted(map(str, nodes)):
                raise ClusterError(
                    f"a local cluster is already running with nodes {', '.join(map(str, running.node_specs))}; "
                    f"run `trainer cluster down` first to start one with {', '.join(map(str, nodes))}")
            if not running.token_file:
                raise ClusterError("the local cluster running now was started with token auth off (by an older "
                                   "trainer): any local process can submit jobs to it; restart it with "
                                   "`trainer cluster down` then `trainer cluster up`")
            return running, False
        nodes = nodes or default_nodes()
        if image:
            from importlib.metadata import version

            _say(progress, f"checking the Ray version inside {image}")
            containers.check_ray(image, version("ray"), f"{sys.version_info.major}.{sys.version_info.minor}")
        leftover = self._recorded()
        if leftover is not None and leftover.owner_token:
            # Leftovers of a crashed cluster, killed outright: a job driver asked to stop would end
            # its run KILLED, as if cancelled; left RUNNING, `trainer status` closes it FAILED as
            # lost to this restart (trainer.api.jobs).
            if leftover.image:
                containers.remove(leftover.owner_token)
            self._stop_processes(self.owner_env(leftover), hard=True)
        auth.private_dir(self.dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        temp_dir = self._temp_dir(create=True)
        temp_dir.mkdir(exist_ok=True)
        # A new token at every start: one sent to a dead cluster's port is worth nothing.
        auth.create_token(self.token_file)
        state = ClusterState(gcs_address="", dashboard_url="", temp_dir=str(temp_dir),
                             nodes=[asdict(n) for n in nodes], started_at=time.time(),
                             token_file=str(self.token_file), owner_token=processes.new_token(),
                             image=image or "")
        owner = self.owner_env(state)
        # Recorded before the first process starts: a crash half-way leaves what `down` needs.
        processes.write_private_json(self.state_file, asdict(state))
        store_mb = object_store_mb or _default_object_store_mb(len(nodes) + 1)
        # Every node's dashboard agent gets its own free HTTP port: Ray's default (52365) is one
        # per host, so a second cluster (or node) on this host would have no agent to take jobs.
        common = [f"--object-store-memory={store_mb * 1024 * 1024}", "--disable-usage-stats"]
        try:
            _say(progress, "starting the head (CPU-only: schedules, runs no training)")
            for attempt in range(3):
                # Every listening port chosen here is distinct from the others (picked together);
                # the rest (node manager, object manager, metrics, agents' gRPC) each process binds
                # itself at port 0, so nodes starting at once cannot collide on them.
                gcs_port, dash_port, client_port, *agent_ports = ports.free_ports(3 + len(nodes) + 1)
                if not attempt:
                    dash_port = _dashboard_port(avoid=[gcs_port, client_port, *agent_ports]) or dash_port
                state.gcs_address, state.dashboard_url = f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dash_port}"
                # Node IP 127.0.0.1 for real: `ray start` replaces a loopback --node-ip-address
                # with the host's address unless Ray believes it runs single-host
                # (ray._private.services.get_node_ip_address); with 127.0.0.1 the GCS, raylet,
                # agents, metrics and client server bind loopback only.
                head = self._launch("head", [
                    "--head", f"--port={gcs_port}", "--num-cpus=0", "--num-gpus=0",
                    "--node-ip-address=127.0.0.1",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
                    f"--ray-client-server-port={client_port}", f"--temp-dir={temp_dir}",
                    f"--dashboard-agent-listen-port={agent_ports[0]}", *common],
                    {**owner, SINGLE_HOST_ENV: "0", **_dashboard_timeout()})
                worker = None
                try:
                    # A worker node's `ray start` is launched as soon as the head's GCS answers: it
                    # imports Ray and connects while the head's still waits for its dashboard. Ray
                    # then holds it until the head's raylet has registered (a worker reads the
                    # head's session dir from its node info), and the head starts its raylet only
                    # once the dashboard is up: the dashboard's start stays on the path of every
                    # node, the rest of the worker's start runs beside the head's. One worker after
                    # another, so that two `ray start`s at most share the CPUs: more at once slowed
                    # the head's dashboard past Ray's startup timeout on a loaded host.
                    wait_for_gcs(head, state.gcs_address)
                    for i, node in enumerate(nodes):
                        _say(progress, f"starting worker node {i + 1}/{len(nodes)}: {node}"
                                       + (f" in a container of {image}" if image else ""))
                        worker = self._start_worker(state, i, node, agent_ports[1 + i], common, store_mb, owner,
                                                    image)
                        if worker is not None:
                            worker.wait(alongside=head)
                    head.wait()
                    break
                except ClusterError as e:
                    # Another Ray on this host took a port between choosing it and binding it
                    # (Ray says "already occupied" for most ports, "address already in use" for
                    # the dashboard's: two clusters starting at once both saw 8265 free).
                    if attempt == 2 or not port_taken(e):
                        raise
                    self._stop_processes(owner)
                    if image:
                        containers.remove(state.owner_token)
                    for started in (head, worker):
                        if started is not None:
                            started.reap()
            self._wait_for_nodes(state, len(nodes) + 1)
            exposed = beyond_loopback(owner)
        except BaseException:
            if image:
                containers.remove(state.owner_token)
            self._stop_processes(owner)
            raise
        processes.write_private_json(self.state_file, asdict(state))
        if exposed:
            _say(progress, "warning: these ports listen beyond loopback (Ray offers no way to bind them "
                           "to 127.0.0.1): " + ", ".join(exposed))
        return state, True

    def down(self) -> int:
        """Stop this cluster's processes (and only those: the ones started with its owner mark,
        and their children). Returns how many were stopped."""
        state = self._recorded()
        if state is not None and not state.owner_token:
            raise ClusterError(f"{self.state_file} was written by an older trainer and does not say which "
                               f"processes are this cluster's: stop them yourself (`ray stop` stops every Ray "
                               f"of yours on this host), then remove the file")
        stopped = 0
        if state is not None and state.image:
            stopped += containers.remove(state.owner_token)
        stopped += self._stop_processes(self.owner_env(state)) if state is not None else 0
        self.state_file.unlink(missing_ok=True)
        self.token_file.unlink(missing_ok=True)
        return stopped

    # ------------------------------------------------------------------ internals
    def _temp_dir(self, create: bool = False) -> Path | None:
        return private_temp_dir(self.dir, create)

    def _launch(self, name: str, args: list[str], env: dict[str, str]) -> "RayStart":
        return RayStart.launch(name, args, self.log_dir, env={**auth.node_env(self.token_file), **env})

    def _start_worker(self, state: ClusterState, i: int, node: NodeSpec, agent_port: int, common: list[str],
                      store_mb: int, owner: dict[str, str], image: str | None) -> "RayStart | None":
        """Launch worker node `i` (its `ray start` runs on; None: a container, started and
        checked by `containers.start_node`). Each node gets its own temp dir, as on separate
        hosts: nodes sharing one session dir share `runtime_resources`, and every node's
        runtime-env agent re-creates a job's working_dir there (Ray's WorkingDirPlugin unpacks
        with overwrite=True), deleting it under the driver and the workers already running in
        it. So each node also runs its own log monitor (the head's reads only the head's session
        dir): workers' output reaches the job's log. A worker's node IP is the one it reaches the
        head's 127.0.0.1 from: loopback (no --node-ip-address, which Ray would swap for the host's)."""
        node_temp = Path(state.temp_dir) / str(i)
        node_temp.mkdir(exist_ok=True)
        labels = f"ray.io/accelerator-type={node.accelerator}"
        if image:
            labels += f",{containers.RAY_IMAGE_LABEL}={containers.image_label_value(image)}"
        args = [f"--address={state.gcs_address}", f"--num-cpus={node.cpus}", f"--num-gpus={node.gpus}",
                f"--labels={labels}", f"--resources={json.dumps({f'accelerator_type:{node.accelerator}': 1})}",
                f"--temp-dir={node_temp}", f"--dashboard-agent-listen-port={agent_port}", *common]
        if not image:
            return self._launch(f"node{i}-{node.accelerator}", args, {**owner, **WAIT_FOR_HEAD_ENV})
        containers.start_node(
            image, f"trainer-{containers.cluster_label(state.owner_token)[:8]}-node{i}",
            state.owner_token, args,
            {**auth.node_env(self.token_file), **owner, **containers.PYTHON_MATCH, "RAY_USAGE_STATS_ENABLED": "0",
             "TRAINER_HOME": str(self.home), **WAIT_FOR_HEAD_ENV},
            [self.home, node_temp, self.token_file.parent], store_mb + 256,
            _RAY_START_LOOPBACK)
        return None

    def _wait_for_nodes(self, state: ClusterState, count: int) -> None:
        from trainer.cluster.inventory import nodes

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if state.image:
                stopped = containers.exited(state.owner_token)
                if stopped:
                    raise ClusterError(f"a worker node container stopped: {stopped[0]}")
            if _dashboard_alive(state.dashboard_url, state.headers):
                try:
                    if len(nodes(state.dashboard_url, headers=state.headers)) >= count:
                        return
                except ClusterError:
                    pass
            time.sleep(0.5)
        raise ClusterError(f"the local cluster did not report {count} alive nodes within "
                           f"{START_TIMEOUT_S}s (logs: {self.log_dir})")

    def _stop_processes(self, owner: dict[str, str], hard: bool = False) -> int:
        return processes.terminate(processes.marked_processes(owner[processes.ENV_OWNER]), hard=hard)


# `ray start` keeps a loopback --node-ip-address only when this says Ray runs single-host (its
# `ENABLE_RAY_CLUSTER`); set for the head only: a worker's `ray start --address` refuses it.
SINGLE_HOST_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def _where(image: str) -> str:
    return f"in containers of {image}" if image else "on the host"


def beyond_loopback(owner: dict[str, str]) -> list[str]:
    """`name:port on ADDRESS` for each listening TCP socket of the marked processes (and their
    children) bound beyond loopback."""
    import psutil

    out = []
    for p in processes.marked_processes(owner[processes.ENV_OWNER]):
        try:
            conns, name = p.net_connections(kind="inet"), p.name()
        except psutil.Error:
            continue      # ended while we looked
        out += [f"{name}:{c.laddr.port} on {c.laddr.ip}" for c in conns
                if c.status == psutil.CONN_LISTEN and c.laddr.ip not in LOOPBACK]
    return sorted(set(out))


def private_temp_dir(folder: Path, create: bool = False) -> Path | None:
    """Ray's temp dir for the nodes trainer starts from `folder` (a private, 0700 folder under
    $TRAINER_HOME): `folder/ray`. Ray makes its temp dir itself world-writable (0777), so the
    privacy is its parent's: nobody else can enter it. When that path is too long for Ray's unix
    sockets, a fresh random 0700 folder in /tmp holds it instead (never a predictable name),
    recorded by the link `folder/ray` (so logs are still found there). Returns None when nothing
    is recorded yet and `create` is false, or when the recorded folder is not private and ours."""
    preferred = folder / "ray"
    if len(str(preferred)) <= MAX_TEMP_DIR_LEN:
        if create:
            auth.private_dir(folder)
        return preferred
    if preferred.is_symlink():
        target = Path(os.readlink(preferred))
        if _private_and_ours(target.parent):
            return target
    if not create:
        return None
    auth.private_dir(folder)
    target = Path(tempfile.mkdtemp(prefix="trainer-", dir="/tmp")) / "ray"   # mkdtemp: 0700, ours
    if preferred.is_symlink() or preferred.exists():
        preferred.unlink()
    preferred.symlink_to(target, target_is_directory=True)
    return target


def _private_and_ours(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


# `ray start` for a worker joining a head on 127.0.0.1, keeping 127.0.0.1: Ray swaps a loopback
# head address (and node IP) for the host's (`services.resolve_ip_for_localhost`), where a head
# bound to loopback does not listen, and the switch that stops it (SINGLE_HOST_ENV) makes a
# worker's `ray start` refuse. So the switch is set after `ray start` has read it, for the node's
# processes only (its dashboard agent, the drivers and workers it starts): they connect to the
# head's 127.0.0.1 as the head's own processes do (a driver on a container node would otherwise
# dial the host's address, and the agent serving its log time out).
_RAY_START_LOOPBACK = (
    "import os, sys\n"
    "from ray._common.network_utils import is_localhost\n"
    "from ray._private import services\n"
    "swap = services.resolve_ip_for_localhost\n"
    "services.resolve_ip_for_localhost = lambda host: '127.0.0.1' if is_localhost(host) else swap(host)\n"
    "from ray.scripts.scripts import main\n"
    f"os.environ['{SINGLE_HOST_ENV}'] = '0'\n"
    "sys.argv[0] = 'ray'\n"
    "main()\n")


@dataclass
class RayStart:
    """One `ray start` running in the background, its output in `log`."""
    name: str
    proc: subprocess.Popen
    log: Path
    deadline: float

    @classmethod
    def launch(cls, name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> "RayStart":
        """`ray start ARGS` (this interpreter's ray), its output in `log_dir/<name>.log`, with `env`
        over this process's environment. Token auth: `env` says (`auth.node_env`), else Ray's own
        variables (RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH turn it on), else off. A worker joining a
        head at 127.0.0.1 (or localhost) stays on 127.0.0.1, where such a head listens."""
        ray_bin = Path(sys.executable).parent / "ray"
        if any(a.startswith(("--address=127.0.0.1:", "--address=localhost:")) for a in args):
            cmd = [sys.executable, "-c", _RAY_START_LOOPBACK, "start", *args]
        else:
            cmd = [str(ray_bin) if ray_bin.exists() else "ray", "start", *args]
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"{name}.log"
        given = env or {}
        env = {**os.environ, auth.ENV_MODE: _auth_mode(), "RAY_USAGE_STATS_ENABLED": "0", **given}
        if auth.ENV_TOKEN_PATH in given and auth.ENV_TOKEN not in given:
            env.pop(auth.ENV_TOKEN, None)   # Ray prefers RAY_AUTH_TOKEN to the file it is given
        with log.open("w") as fh:
            # Ray's own lines carry their time: with this first one the log shows how the nodes'
            # starts overlapped, and where each one's seconds went.
            fh.write(f"{_log_time(time.time())}\tINFO trainer -- launched `ray start` for {name}\n")
            fh.flush()
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        return cls(name, proc, log, time.monotonic() + START_TIMEOUT_S)

    def wait(self, alongside: "RayStart | None" = None) -> Path:
        """Until `ray start` is done (its node is up); ClusterError with its last line when it
        failed or ran past START_TIMEOUT_S (then it is killed), or when `alongside` (a `ray start`
        running meanwhile, this node's head) failed first."""
        deadline = self.deadline
        while self.proc.poll() is None:
            if alongside is not None and alongside.proc.poll() not in (None, 0):
                alongside.wait()
            if alongside is not None and alongside.proc.poll() is None:
                # The two share the CPUs: this one's time runs out only START_TIMEOUT_S after the
                # other is done, as when they started one after another.
                deadline = max(deadline, time.monotonic() + START_TIMEOUT_S)
            if time.monotonic() > deadline:
                self.reap()
                raise ClusterError(f"`ray start` for {self.name} did not finish within {START_TIMEOUT_S}s: "
                                   f"{self.last_line()} (full log: {self.log})")
            time.sleep(0.05)
        if self.proc.returncode != 0:
            raise ClusterError(f"`ray start` for {self.name} failed (exit {self.proc.returncode}): "
                               f"{self.last_line()} (full log: {self.log})")
        return self.log

    def reap(self) -> None:
        """Kill it (if still running) and collect its exit."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def last_line(self) -> str:
        lines = [l for l in self.log.read_text(errors="replace").splitlines() if l.strip()]
        return (lines[-1:] or ["(no output)"])[0][:300]


def _log_time(t: float) -> str:
    """`t` as Ray's log lines write their time (local time, milliseconds after a comma)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f",{int(t % 1 * 1000):03d}"


def start_timeline(log_dir: Path) -> dict[str, tuple[float, float]]:
    """`ray start` name -> (launched, done), in epoch seconds, for each node start logged in
    `log_dir` by RayStart (its first line, then Ray's timestamped lines; the last one is written
    as its `ray start` ends). How long each took and how they overlapped: a cold start itemised."""
    out = {}
    for log in sorted(log_dir.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        if not lines or "\tINFO trainer -- launched `ray start`" not in lines[0]:
            continue
        stamps = []
        for line in lines:
            try:
                stamps.append(time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000)
            except ValueError:
                continue    # a traceback's or a banner's line: no time
        out[log.stem] = (stamps[0], stamps[-1])
    return out


def ray_start(name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Path:
    """`ray start ARGS` to the end (RayStart.launch, then wait)."""
    return RayStart.launch(name, args, log_dir, env).wait()


def wait_for_gcs(head: RayStart, address: str) -> None:
    """Until the GCS that `head` starts accepts connections; the head's ClusterError when its
    `ray start` ends first (failed, or done: then the GCS answers too)."""
    while not _gcs_alive(address, timeout=0.5):
        if head.proc.poll() is not None:
            head.wait()
            if not _gcs_alive(address):
                raise ClusterError(f"`ray start` for {head.name} finished but its GCS at {address} does not "
                                   f"answer (full log: {head.log})")
            return
        if time.monotonic() > head.deadline:
            head.wait()     # raises: past its deadline
        time.sleep(0.05)


def _auth_mode() -> str:
    """RAY_AUTH_MODE for a `ray start`: as set, else `token` when Ray's token variables are set,
    else `disabled` (explicit: with the mode unset Ray turns auth on by itself whenever a stray
    ~/.ray/auth_token exists, and the node then fails to join an open head)."""
    if os.environ.get(auth.ENV_MODE):
        return os.environ[auth.ENV_MODE]
    return "token" if os.environ.get(auth.ENV_TOKEN) or os.environ.get(auth.ENV_TOKEN_PATH) else "disabled"


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
         node_ip: str | None = None, extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> dict:
    """Start a Ray worker node on this host joining the head at `address`; returns what it was
    started with (labels, GPUs, and why there are none). A head with token auth on is joined with
    the token Ray's variables give (RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH); Ray's temp dir is a
    private one under $TRAINER_HOME/node unless `temp_dir` says otherwise. `env` goes over this
    process's environment (a local cluster's `owner_env`: its `down` stops this node too)."""
    from trainer.cluster.gpus import Probe, probe

    found = Probe(list(gpus), "") if gpus is not None else probe()
    cpus = cpus or os.cpu_count() or 1
    if ":" not in address or "://" in address:
        raise UsageError(f"--address {address!r}: expected the head's GCS address HOST:PORT (e.g. head:6379)")
    auth.check_join_token_file()
    if temp_dir is None:
        temp_dir = str(private_temp_dir(trainer_home() / "node", create=True))
    args = join_args(address, found.gpus, cpus, object_store_mb, temp_dir, node_ip) + list(extra_args)
    log = ray_start("join", args, log_dir or trainer_home() / "cluster" / "logs", env=env)
    labels = next(a for a in args if a.startswith("--labels="))[len("--labels="):]
    return {"address": address, "cpus": cpus, "gpus": len(found.gpus),
            "gpu_names": [g.name for g in found.gpus], "labels": dict(kv.split("=", 1) for kv in labels.split(",")),
            "no_gpu_reason": found.reason, "log": str(log)}


def _dashboard_alive(url: str, headers: dict[str, str]) -> bool:
    import requests

    try:
        return requests.get(f"{url}/api/version", headers=headers, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _gcs_alive(address: str, timeout: float = 2) -> bool:
    """Whether the head's GCS accepts connections (a killed GCS's port refuses at once)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return False
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def _dashboard_timeout() -> dict[str, str]:
    """Ray's wait for the head's dashboard (60 s by default) as long as ours for a whole node, unless
    set: the dashboard imports its modules while the worker nodes start beside it, and on a loaded
    host that can take more than a minute."""
    key = "RAY_DASHBOARD_STARTUP_TIMEOUT_S"
    return {} if os.environ.get(key) else {key: str(START_TIMEOUT_S)}


def port_taken(error: ClusterError) -> bool:
    """Whether a `ray start` failed on a port another process took meanwhile."""
    return any(m in str(error) for m in PORT_TAKEN)


def _dashboard_port(avoid: Collection[int] = ()) -> int | None:
    """Ray's usual 8265 when free and not in `avoid` (what users expect), else None."""
    if 8265 in avoid:
        return None
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 8265))
            return 8265
        except OSError:
            return None


def _default_object_store_mb(node_count: int) -> int:
    """Bounded: Ray would reserve ~30% of RAM per node; a few hundred MB each is plenty here."""
    import psutil

    total_mb = psutil.virtual_memory().total // (1024 * 1024)
    return int(max(128, min(1024, total_mb * 0.1 / node_count)))


def _say(progress, text: str) -> None:
    if progress is not None:
        progress(text)
