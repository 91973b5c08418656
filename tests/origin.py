"""Upstream servers the end-to-end tests proxy to: real sockets on 127.0.0.1.

``Origin`` answers every request with a JSON echo of what it received, and has paths that
misbehave on purpose:

* ``/status/<code>``: answer with that status;
* ``/reason/<code>/<phrase>``: answer with that status line;
* ``/sleep/<seconds>``: wait before answering;
* ``/stream/<n>``: a chunked body of ``n`` chunks, 50 ms apart;
* ``/reset-before-headers``: close the socket (RST) without answering;
* ``/reset-mid-body``: promise 1000 bytes, send 10, reset;
* ``/close``: answer with ``Connection: close``;
* ``/echo-body``: answer with the request body read as it streams (chunk sizes recorded).
"""

from __future__ import annotations

import json
import socket
import socketserver
import struct
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from typing import Any


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle + delayed ACK
        # add ~40 ms to every exchange on a reused connection.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _reset(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            sizes = []
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                out += self.rfile.read(size)
                sizes.append(size)
                self.rfile.readline()
            self.server.chunk_sizes.append(sizes)
            return out
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self) -> None:
        origin = self.server.origin
        origin.requests += 1
        origin.connections.add(self.client_address)
        path = self.path.split("?", 1)[0]
        if path == "/reset-before-headers":
            self._read_body()
            self._reset()
            return
        if path.startswith("/sleep/"):
            time.sleep(float(path.rsplit("/", 1)[1]))
        if path == "/reset-mid-body":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
            self.wfile.flush()
            time.sleep(0.05)
            self._reset()
            return
        if path.startswith("/stream/"):
            n = int(path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            for i in range(n):
                chunk = f"chunk {i}\n".encode()
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()
                time.sleep(0.05)
            self.wfile.write(b"0\r\n\r\n")
            return
        body = self._read_body()
        status, reason = 200, None
        if path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
        if path.startswith("/reason/"):  # /reason/<code>/<phrase>: a status line of one's own
            _, _, code, phrase = path.split("/", 3)
            status, reason = int(code), urllib.parse.unquote(phrase)
        payload = json.dumps(
            {
                "origin": origin.name,
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "header_list": [[k.lower(), v] for k, v in self.headers.items()],
                "body": body.decode("latin-1"),
                "peer": list(self.client_address),
            }
        ).encode()
        self.send_response(status, reason)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("X-Origin", origin.name)
        if "x-echo" in self.headers:  # sent back byte for byte (http.server reads latin-1)
            self.send_header("X-Echo", self.headers["x-echo"])
        self.send_header("Keep-Alive", "timeout=5")
        if path == "/accel":  # headers nginx keeps for itself, and one it relays
            self.send_header("X-Accel-Buffering", "no")
            self.send_header("X-Accel-Redirect", "/internal")
            self.send_header("X-Pad", "avoid browser bug")
            self.send_header("X-Accel-Custom", "relayed")
        if path == "/close":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    origin: Origin
    chunk_sizes: list[list[int]]


class Origin:
    """A threaded HTTP/1.1 origin on a free loopback port."""

    def __init__(self, name: str = "origin") -> None:
        self.name = name
        self.requests = 0
        self.connections: set[tuple[str, int]] = set()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.origin = self
        self._server.chunk_sizes = []
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def chunk_sizes(self) -> list[list[int]]:
        return self._server.chunk_sizes

    def start(self) -> Origin:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Blackhole:
    """Accepts TCP connections and never answers (for read timeouts)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port: int = self.sock.getsockname()[1]
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self._held.append(conn)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for c in self._held:
            c.close()
        self.sock.close()


def free_port() -> int:
    """A port nothing listens on right now (closed again at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Scripted:
    """Answers every request with fixed raw bytes (an upstream that misbehaves on purpose).

    Reads one request head per exchange; ``close`` closes the connection after answering.
    """

    def __init__(self, response: bytes, close: bool = True) -> None:
        self.response = response
        self.close = close
        self.requests: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with conn:
            buf = b""
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    self.requests.append(head)
                    conn.sendall(self.response)
                    if self.close:
                        return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()
