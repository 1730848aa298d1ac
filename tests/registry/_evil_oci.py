"""A malicious OCI registry on 127.0.0.1, for tests of what the client does with hostile answers.

Each route is `(method, path) -> behaviour`; a behaviour is a function of the request handler
that writes whatever it likes (huge, endless or trickled bodies, redirects, challenges). Every
request is recorded with its headers, and `sent` counts the body bytes the server managed to
write (how much a client read before it hung up).

    with EvilRegistry() as evil:
        evil.route("GET", "/v2/r/manifests/t", evil.endless(b"{"))
        Registry(evil.address, credentials=None).get_manifest("r", "t")   # refused, bounded
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class EvilRegistry:
    def __init__(self, host: str = "127.0.0.1"):
        self.routes: dict[tuple[str, str], object] = {}
        self.requests: list[dict] = []
        self.sent = 0
        self.stop = threading.Event()
        evil = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                path = self.path.split("?", 1)[0]
                evil.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers)})
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                behaviour = evil.routes.get((self.command, path)) or evil.routes.get(("*", path)) \
                    or evil.routes.get(("*", "*"))
                try:
                    if behaviour is None:
                        evil.send(self, 404, b'{"errors": [{"code": "NOT_FOUND", "message": "no"}]}')
                    else:
                        behaviour(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = _any

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_port
        self.address = f"{host}:{self.port}"

    def __enter__(self) -> "EvilRegistry":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()

    def route(self, method: str, path: str, behaviour) -> None:
        self.routes[(method, path)] = behaviour

    def authorizations(self) -> list[str]:
        return [r["headers"]["Authorization"] for r in self.requests if r["headers"].get("Authorization")]

    # ---------------------------------------------------------------- behaviours
    def send(self, h, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)
            self.sent += len(body)

    def answer(self, status: int, body: bytes = b"", headers: dict | None = None):
        return lambda h: self.send(h, status, body, headers)

    def manifest(self, data: dict | bytes):
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        return self.answer(200, body, {"Content-Type": "application/vnd.oci.image.manifest.v1+json",
                                       "Docker-Content-Digest": digest})

    def streaming(self, declared: int | None, block: bytes, every: float = 0.0):
        """A body of `declared` bytes (None: chunked, endless) of `block` repeated, one block
        every `every` seconds, until the client hangs up or the test ends."""
        def behaviour(h):
            h.send_response(200)
            h.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            if declared is None:
                h.send_header("Transfer-Encoding", "chunked")
            else:
                h.send_header("Content-Length", str(declared))
            h.end_headers()
            left = declared
            while not self.stop.is_set() and (left is None or left > 0):
                piece = block if left is None else block[:left]
                if declared is None:
                    h.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                else:
                    h.wfile.write(piece)
                h.wfile.flush()
                self.sent += len(piece)
                if left is not None:
                    left -= len(piece)
                if every:
                    time.sleep(every)
        return behaviour

    def trickled_headers(self, every: float):
        """A status line, then one header byte every `every` seconds, never an empty line."""
        def behaviour(h):
            h.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while not self.stop.is_set():
                h.wfile.write(b"a")
                h.wfile.flush()
                time.sleep(every)
        return behaviour

    def endless(self, block: bytes = b"A" * 65536):
        return self.streaming(None, block)

    def challenge(self, header: str):
        return self.answer(401, b'{"errors": [{"code": "UNAUTHORIZED", "message": "auth"}]}',
                           {"WWW-Authenticate": header})

    def basic_then(self, behaviour):
        """401 Basic until the request carries Authorization, then `behaviour`."""
        def gate(h):
            if h.headers.get("Authorization"):
                return behaviour(h)
            return self.challenge('Basic realm="evil"')(h)
        return gate
