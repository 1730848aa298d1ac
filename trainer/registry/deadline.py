"""An overall deadline for a request, headers included.

`requests`' timeout bounds each socket read, not the request: a server that sends one byte every
few seconds (of the status line, a header or the body) keeps a read timeout from ever firing.
The body is read in blocks with the deadline checked between them (client.py); for the part
`requests` reads itself (status line and headers) a watchdog timer shuts the request's sockets
down when the deadline passes, which ends the blocked read at once. The sockets are found by
connection classes that note themselves, per thread, when they send a request.
"""
from __future__ import annotations

import socket
import threading

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_local = threading.local()


def _note(conn) -> None:
    tracked = getattr(_local, "connections", None)
    if tracked is not None:
        tracked.append(conn)


class _HTTPConnection(HTTPConnection):
    def request(self, *args, **kwargs):
        _note(self)
        return super().request(*args, **kwargs)


class _HTTPSConnection(HTTPSConnection):
    def request(self, *args, **kwargs):
        _note(self)
        return super().request(*args, **kwargs)


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class DeadlineAdapter(HTTPAdapter):
    """requests' adapter whose connections a Watchdog can find."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


class Watchdog:
    """Shuts down, after `seconds`, the sockets of the requests this thread sends from `start`
    to `stop`; `stop` also cancels the timer."""

    def __init__(self, seconds: float):
        self.connections: list = []
        self.fired = False
        self._timer = threading.Timer(max(seconds, 0.0), self._fire)
        self._timer.daemon = True

    def start(self) -> "Watchdog":
        _local.connections = self.connections
        self._timer.start()
        return self

    def stop(self) -> None:
        self._timer.cancel()
        if getattr(_local, "connections", None) is self.connections:
            _local.connections = None

    def _fire(self) -> None:
        self.fired = True
        for conn in list(self.connections):
            sock = getattr(conn, "sock", None)
            if sock is None:
                continue
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:       # already closed by its owner: nothing left to end
                continue
