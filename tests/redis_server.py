"""Real redis-server processes for the tests: one server, or a 3-node cluster, on free
loopback ports with temporary directories, stopped afterwards."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from origin import free_port

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def available() -> bool:
    return Path(REDIS).exists() and Path(REDIS_CLI).exists()


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a redis cluster node")


class RedisServer:
    """One redis-server; ``stop()`` kills it (data is not persisted), ``start()`` again
    brings it back on the same port."""

    def __init__(
        self, port: int | None = None, *, cluster: bool = False, tls: bool = False
    ) -> None:
        self.port = port or (_cluster_port() if cluster else free_port())
        self.cluster = cluster
        self.tls = tls
        """Serve TLS only (a self-signed certificate made with openssl; clients not checked)."""
        self.dir = tempfile.mkdtemp(prefix="pygw-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        args = [
            REDIS,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.dir,
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
        ]  # fmt: skip
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        if self.tls:
            cert, key = f"{self.dir}/cert.pem", f"{self.dir}/key.pem"
            if not Path(cert).exists():
                subprocess.run(
                    ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                     "-out", cert, "-days", "2", "-subj", "/CN=localhost"],
                    capture_output=True, timeout=60, check=True,
                )  # fmt: skip
            args[args.index("--port") + 1] = "0"
            args += ["--tls-port", str(self.port), "--tls-cert-file", cert, "--tls-key-file", key]
            args += ["--tls-ca-cert-file", cert, "--tls-auth-clients", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 10
        while not self._ready():
            if time.monotonic() > end or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def _ready(self) -> bool:
        if not self.tls:
            return _ping(self.port)
        try:
            return self.cli("ping") == "PONG"
        except subprocess.SubprocessError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def cli(self, *args: str) -> str:
        tls = ["--tls", "--insecure"] if self.tls else []
        out = subprocess.run(
            [REDIS_CLI, "-p", str(self.port), *tls, *args],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return out.stdout.strip()


class RedisCluster:
    """Three masters, no replicas (``redis-cli --cluster create``)."""

    def __init__(self) -> None:
        self.nodes = [RedisServer(cluster=True) for _ in range(3)]

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{n.port}" for n in self.nodes]

    def start(self) -> RedisCluster:
        for n in self.nodes:
            n.start()
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *self.addresses, "--cluster-yes"],
            capture_output=True,
            timeout=60,
            check=True,
        )
        end = time.monotonic() + 20
        while time.monotonic() < end:
            if all("cluster_state:ok" in n.cli("cluster", "info") for n in self.nodes):
                return self
            time.sleep(0.1)
        raise RuntimeError("the redis cluster did not become ready")

    def cleanup(self) -> None:
        for n in self.nodes:
            n.cleanup()
