"""Shared fixtures: origins on free loopback ports, gateways started in-process or as the CLI."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from origin import Blackhole, Origin
from pygateway import Gateway

ENGINES = ["native", "python"]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    base: str,
    path: str = "/",
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 10,
) -> Reply:
    """One request on a new connection."""
    host, _, port = base.removeprefix("http://").rpartition(":")
    host = host.strip("[]")  # IPv6 literal
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    finally:
        conn.close()


def raw(base: str, data: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes, return everything read until the server closes or goes quiet."""
    host, _, port = base.removeprefix("http://").rpartition(":")
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        return out


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def origin() -> Iterator[Origin]:
    o = Origin("a").start()
    yield o
    o.stop()


@pytest.fixture
def origin_b() -> Iterator[Origin]:
    o = Origin("b").start()
    yield o
    o.stop()


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    b = Blackhole()
    yield b
    b.stop()


@pytest.fixture
def gateway(engine: str) -> Iterator[Callable[..., Gateway]]:
    """``gateway(config_dict, **node_settings)`` → a started in-process gateway."""
    started: list[Gateway] = []

    def make(config: dict[str, Any], **node: Any) -> Gateway:
        node.setdefault("listen", ["127.0.0.1:0"])
        node.setdefault("workers", 2)
        gw = Gateway(config=config, engine=engine, **node).start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop(0)


def route(uri: str, *nodes: str, **fields: Any) -> dict[str, Any]:
    """A route to nodes (weight 1 each)."""
    r: dict[str, Any] = {"uri": uri, "upstream": {"nodes": {n: 1 for n in nodes}}}
    r.update(fields)
    return r


@dataclass
class CliGateway:
    proc: subprocess.Popen[str]
    base: str

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return self.proc.returncode, out


def wait_http(base: str, deadline: float = 15) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            request(base, "/", timeout=1)
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing answered on {base} within {deadline}s")


@pytest.fixture
def cli() -> Iterator[Callable[..., CliGateway]]:
    """``cli(*args)`` → ``pygateway run ARGS`` as a subprocess, once it answers."""
    procs: list[CliGateway] = []

    def start(*args: str, port: int, env: dict[str, str] | None = None) -> CliGateway:
        cmd = [sys.executable, "-m", "pygateway", "run", *args]
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        g = CliGateway(proc, f"http://127.0.0.1:{port}")
        procs.append(g)
        try:
            wait_http(g.base)
        except AssertionError:
            code, out = g.stop()
            raise AssertionError(f"gateway did not start (exit {code}):\n{out}") from None
        return g

    yield start
    for g in procs:
        g.stop()


def write_config(path: Path, text: str) -> None:
    """Replace a file atomically (as editors and config managers do)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
