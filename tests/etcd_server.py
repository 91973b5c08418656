"""Real etcd servers for the tests: ``/usr/bin/etcd`` on free loopback ports.

``EtcdCluster(size)`` starts ``size`` members (``--initial-cluster n1=...,n2=...``), each
with its own temporary data directory; members can be stopped, killed, wiped and started
again on the same ports. ``Etcd`` is a raw client of the JSON gateway for the tests' own
writes (what another APISIX node, or ``etcdctl``, would do).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from origin import free_port

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


class EtcdMember:
    """One etcd process; its ports and data directory survive stop/start."""

    def __init__(self, name: str, base: Path) -> None:
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.data_dir = base / name
        self.log_path = base / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self, initial_cluster: str, token: str, client_port: int | None = None) -> None:
        """Start the process (the data directory is created or reused).

        ``client_port`` serves clients elsewhere than usual (the same member, unseen by
        the clients of :attr:`url`).
        """
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running"
        url = f"http://127.0.0.1:{client_port or self.client_port}"
        cmd = [
            ETCD,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={initial_cluster}",
            f"--initial-cluster-token={token}",
            "--initial-cluster-state=new",
            # fast elections: the tests stop members and wait for a new leader
            "--heartbeat-interval=50",
            "--election-timeout=500",
            "--logger=zap",
            "--log-outputs=stderr",
            "--log-level=warn",
        ]
        with open(self.log_path, "ab") as log:  # the child has its own copy of the fd
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def wipe(self) -> None:
        """Delete the data directory (the member must be stopped)."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running"
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def healthy(self) -> bool:
        try:
            status, body = _get(self.url, "/health", timeout=1)
        except OSError:
            return False
        return status == 200 and json.loads(body).get("health") == "true"

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


class EtcdCluster:
    """``size`` members on loopback; ``start()`` returns once every member is healthy."""

    def __init__(self, size: int = 1) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="pygateway-etcd-"))
        self.members = [EtcdMember(f"n{i + 1}", self.base) for i in range(size)]
        self.token = f"pygateway-test-{os.getpid()}-{id(self)}"
        self.initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> list[str]:
        return [m.url for m in self.members]

    @property
    def url(self) -> str:
        return self.members[0].url

    def start(self, timeout: float = 30) -> EtcdCluster:
        for m in self.members:
            m.start(self.initial_cluster, self.token)
        self.wait_healthy(timeout=timeout)
        return self

    def start_member(self, member: EtcdMember, timeout: float = 30) -> None:
        """Start one member again and wait until the cluster is healthy."""
        member.start(self.initial_cluster, self.token)
        self.wait_healthy([member], timeout=timeout)

    def behind_the_clients_back(self, member: EtcdMember, write: Callable[[Etcd], None]) -> None:
        """Run ``member`` on another client port, ``write`` to it, stop it again.

        Single-member clusters only (the member needs no peers to elect itself).
        """
        port = free_port()
        member.start(self.initial_cluster, self.token, client_port=port)
        hidden = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                status, body = _get(hidden, "/health", timeout=1)
                if status == 200 and json.loads(body).get("health") == "true":
                    break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            raise AssertionError(f"etcd {member.name} on {hidden}:\n{member.log_tail()}")
        write(Etcd(hidden))
        member.stop()

    def wait_healthy(self, members: list[EtcdMember] | None = None, timeout: float = 30) -> None:
        waiting = list(members if members is not None else self.members)
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            for m in list(waiting):
                if m.proc is not None and m.proc.poll() is not None:
                    raise AssertionError(f"etcd {m.name} exited:\n{m.log_tail()}")
                if m.healthy():
                    waiting.remove(m)
            if waiting:
                time.sleep(0.05)
        if waiting:
            logs = "\n".join(f"--- {m.name}\n{m.log_tail()}" for m in waiting)
            raise AssertionError(f"etcd not healthy within {timeout}s:\n{logs}")

    def close(self) -> None:
        for m in self.members:
            m.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _get(base: str, path: str, timeout: float) -> tuple[int, bytes]:
    host, _, port = base.removeprefix("http://").rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


class Etcd:
    """A raw client of etcd's JSON gateway (keys are absolute: ``/apisix/routes/1``)."""

    def __init__(self, url: str, timeout: float = 5) -> None:
        self.url = url
        self.timeout = timeout

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        host, _, port = self.url.removeprefix("http://").rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=self.timeout)
        try:
            conn.request("POST", path, body=json.dumps(body))
            r = conn.getresponse()
            data = r.read()
        finally:
            conn.close()
        reply: dict[str, Any] = json.loads(data)
        assert r.status == 200, f"etcd {path} {body}: HTTP {r.status} {reply}"
        return reply

    def put(self, key: str, value: Any) -> int:
        """Store ``value`` (JSON-encoded unless str/bytes); returns the revision."""
        raw = value if isinstance(value, (str, bytes)) else json.dumps(value)
        reply = self.call("/v3/kv/put", {"key": _b64(key), "value": _b64(raw)})
        return int(reply["header"]["revision"])

    def get(self, key: str) -> Any:
        """The JSON value at ``key`` (None when absent)."""
        kvs = self.call("/v3/kv/range", {"key": _b64(key)}).get("kvs")
        return json.loads(base64.b64decode(kvs[0]["value"])) if kvs else None

    def delete(self, key: str) -> int:
        """Delete ``key``; returns the revision."""
        reply = self.call("/v3/kv/deleterange", {"key": _b64(key)})
        return int(reply["header"]["revision"])

    def revision(self) -> int:
        reply = self.call("/v3/kv/range", {"key": _b64("\0")})
        return int(reply["header"]["revision"])

    def compact(self, revision: int | None = None) -> int:
        """Compact up to ``revision`` (default: the current one); returns it."""
        rev = revision if revision is not None else self.revision()
        self.call("/v3/kv/compaction", {"revision": str(rev), "physical": True})
        return rev
