"""Choosing the loopback ports trainer's servers listen on (Ray's head and node agents, the
registry, the MLflow server, Prometheus).

A port chosen now and bound later by another process (`ray start`, a server's command line) is
only safe if nothing else can take it in between. A process binding port 0 gets one from the
kernel's ephemeral range (/proc/sys/net/ipv4/ip_local_port_range), and a Ray node binds many that
way (raylet, object manager, the agents' gRPC servers): a port picked from that range could be
handed to one of them first. That was seen: a node agent's HTTP port answered with a gRPC
server's HTTP/2 frames, the agent having given up its own HTTP server after five failed binds
(ray.dashboard.agent logs it and goes on without one, so the node took no jobs). So the ports
chosen here come from below the ephemeral range and above Ray's worker ports (10002-19999 by
default), where only a process that asks for that very port can land.
"""
from __future__ import annotations

import random
import socket
from pathlib import Path

HOST = "127.0.0.1"
LOW = 20000                 # above Ray's default worker ports (--min/max-worker-port 10002-19999)
EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")


def chosen_range() -> tuple[int, int]:
    """The ports to choose from, [low, high): from LOW to the start of the ephemeral range; the
    ephemeral range itself where it leaves too few below it (then port 0 is used)."""
    try:
        first = int(EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32768
    return (LOW, first) if first - LOW >= 1000 else (0, 0)


def free_ports(count: int, host: str = HOST) -> list[int]:
    """`count` distinct ports free on `host` now: each is held until all are chosen."""
    low, high = chosen_range()
    rng = random.SystemRandom()     # two processes choosing at once should not draw alike
    held: list[socket.socket] = []
    misses = 0
    try:
        while len(held) < count:
            s = socket.socket()
            try:
                s.bind((host, rng.randrange(low, high) if high and misses < 100 else 0))
            except OSError:         # in use: draw again (after 100 misses, take the kernel's)
                s.close()
                misses += 1
                continue
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def free_port(preferred: int | None = None, host: str = HOST) -> int:
    """`preferred` if it is free now, else a port chosen as free_ports does."""
    if preferred:
        with socket.socket() as s:
            try:
                s.bind((host, preferred))
                return preferred
            except OSError:
                pass
    return free_ports(1, host)[0]
