"""The ``redis`` and ``redis-cluster`` policies of the limiters on the python engine.

The counters have the native engine's names and are changed by the same server-side
scripts (``limit_scripts/*.lua``, which ``rust/limit/redis.rs`` embeds too), so native and
python nodes on one Redis share their counters. Each event loop keeps one pooled client per
target, made on first use; a failed connection is dropped and made again at most once per
:data:`RECONNECT_BACKOFF`, so a dead Redis costs a fast error (then the plugin's
``allow_degradation`` decides), not a connect attempt per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import weakref
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:  # redis-py is imported on first use: most gateways never need it
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

RECONNECT_BACKOFF = 0.2
"""Seconds after a failed connection during which requests fail without trying again."""

Client = Union["Redis", "RedisCluster"]


class StoreError(Exception):
    """Redis could not answer (down, timed out, refused the script)."""


@dataclass(frozen=True)
class Script:
    """One server-side script: its text and SHA-1 (for EVALSHA)."""

    name: str
    source: str
    sha: str

    @classmethod
    def load(cls, name: str) -> Script:
        path = resources.files(__package__).joinpath("limit_scripts").joinpath(f"{name}.lua")
        source = path.read_text(encoding="utf-8")
        return cls(name, source, hashlib.sha1(source.encode()).hexdigest())


FIXED = Script.load("fixed")
SLIDING = Script.load("sliding")
BUCKET = Script.load("bucket")
CONN_ENTER = Script.load("conn_enter")
CONN_LEAVE = Script.load("conn_leave")


@dataclass(frozen=True)
class Target:
    """Where a limiter's counters live, with its ``redis_timeout`` (seconds)."""

    host: str
    port: int
    username: str | None
    password: str | None
    database: int
    nodes: tuple[str, ...]
    """``redis_cluster_nodes`` (``host:port``); empty for one server."""
    timeout: float
    tls: bool | None = None
    """TLS: None (off), False (no certificate check: APISIX's default), True (checked)."""

    @classmethod
    def of(cls, conf: dict[str, Any]) -> Target | None:
        """The conf's target; None with the local policy."""
        policy = conf.get("policy", "local")
        if policy not in ("redis", "redis-cluster"):
            return None
        timeout = max(float(conf.get("redis_timeout", 1000)) / 1000, 0.001)
        password = conf.get("redis_password") or None
        if policy == "redis-cluster":
            nodes = tuple(conf.get("redis_cluster_nodes") or ())
            tls = (
                bool(conf.get("redis_cluster_ssl_verify"))
                if conf.get("redis_cluster_ssl")
                else None
            )
            return cls("", 0, None, password, 0, nodes, timeout, tls)
        return cls(
            str(conf.get("redis_host") or ""),
            int(conf.get("redis_port", 6379)),
            conf.get("redis_username"),
            password,
            int(conf.get("redis_database", 0)),
            (),
            timeout,
            bool(conf.get("redis_ssl_verify")) if conf.get("redis_ssl") else None,
        )

    def client(self) -> Client:
        """A new client (it connects on first use; its connections are pooled)."""
        from redis.asyncio import Redis
        from redis.asyncio.cluster import ClusterNode, RedisCluster
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        common: dict[str, Any] = {
            "password": self.password,
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "retry": Retry(NoBackoff(), 0),  # our own backoff decides when to retry
        }
        if self.tls is not None:
            common["ssl"] = True
            common["ssl_cert_reqs"] = "required" if self.tls else "none"
            common["ssl_check_hostname"] = self.tls
        if self.nodes:
            seeds = []
            for node in self.nodes:
                host, _, port = node.rpartition(":")
                seeds.append(ClusterNode(host.strip("[]"), int(port)))
            return RedisCluster(startup_nodes=seeds, **common)
        return Redis(
            host=self.host, port=self.port, db=self.database, username=self.username, **common
        )


class _Slot:
    """The client of one target on one loop, or when it last failed."""

    def __init__(self) -> None:
        self.client: Client | None = None
        self.failed_at = float("-inf")
        self.lock = asyncio.Lock()


_LOOPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Target, _Slot]] = (
    weakref.WeakKeyDictionary()
)
_LOOPS_LOCK = threading.Lock()
_BACKGROUND: set[asyncio.Task[Any]] = set()


def _slot(target: Target) -> _Slot:
    loop = asyncio.get_running_loop()
    with _LOOPS_LOCK:
        slots = _LOOPS.get(loop)
        if slots is None:
            slots = _LOOPS[loop] = {}
        slot = slots.get(target)
        if slot is None:
            slot = slots[target] = _Slot()
    return slot


async def _connect(client: Client) -> None:
    from redis.asyncio.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        await client.initialize()
    else:
        await client.ping()


async def _client(target: Target) -> Client:
    slot = _slot(target)
    if slot.client is not None:
        return slot.client
    async with slot.lock:  # one connect at a time per target and loop
        if slot.client is not None:
            return slot.client
        if time.monotonic() - slot.failed_at < RECONNECT_BACKOFF:
            raise StoreError("redis unavailable: reconnecting")
        client = target.client()
        try:
            await asyncio.wait_for(_connect(client), target.timeout)
        except Exception as err:  # refused, timed out, no reachable cluster node, ...
            slot.failed_at = time.monotonic()
            spawn(_close(client))
            raise StoreError(f"redis unavailable: {err!r}") from err
        slot.client = client
        return client


async def _close(client: Client) -> None:
    try:
        await client.aclose()
    except Exception:  # closing a broken client: nothing left to do
        pass


def _forget(target: Target, client: Client) -> None:
    slot = _slot(target)
    if slot.client is client:
        slot.client = None
        slot.failed_at = time.monotonic()
        spawn(_close(client))


async def _eval(client: Client, script: Script, keys: Sequence[str], args: Sequence[int]) -> Any:
    from redis.exceptions import NoScriptError

    try:
        return await client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        return await client.eval(script.source, len(keys), *keys, *args)


async def run(target: Target, script: Script, keys: Sequence[str], args: Sequence[int]) -> Any:
    """Runs ``script`` on the target, within ``redis_timeout``; raises :class:`StoreError`."""
    from redis.exceptions import ClusterError, ResponseError

    client = await _client(target)
    try:
        return await asyncio.wait_for(_eval(client, script, keys, args), target.timeout)
    except ResponseError as err:
        if isinstance(err, ClusterError):
            _forget(target, client)
        raise StoreError(f"redis {script.name}: {err}") from err
    except Exception as err:  # the connection is suspect: make a new one later
        _forget(target, client)
        raise StoreError(f"redis unavailable: {err!r}") from err


def spawn(coro: Coroutine[Any, Any, Any]) -> None:
    """Runs ``coro`` on the running loop without waiting for it (kept until done); with no
    loop running (a phase run by hand), runs it to the end."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)
        return
    task = loop.create_task(coro)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


async def close_clients() -> None:
    """Closes the clients of the running loop (the python engine stopping)."""
    with _LOOPS_LOCK:
        slots = _LOOPS.pop(asyncio.get_running_loop(), {})
    for slot in slots.values():
        if slot.client is not None:
            await _close(slot.client)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _count_state(left: int, reset_ms: int) -> tuple[bool, int, float]:
    """A script's ``{remaining (negative: rejected), ms until reset}``."""
    return left >= 0, max(left, 0), max(reset_ms, 0) / 1000


async def count_fixed(
    target: Target, key: str, limit: int, window: float, cost: int = 1
) -> tuple[bool, int, float]:
    """limit-count, fixed window: (allowed, remaining, seconds to reset)."""
    window_ms = max(int(window * 1000), 1)
    left, ttl = await run(target, FIXED, [key], [limit, window_ms, cost])
    return _count_state(int(left), int(ttl))


async def count_sliding(
    target: Target, key: str, limit: int, window: float, cost: int = 1
) -> tuple[bool, int, float]:
    """limit-count, sliding window over two aligned windows sharing the key's hash tag."""
    w = max(int(window * 1000), 1)
    now = _now_ms()
    ident = now // w
    keys = [f"{{{key}}}:{ident}", f"{{{key}}}:{ident - 1}"]
    left, reset = await run(target, SLIDING, keys, [limit, w, cost, now - ident * w])
    return _count_state(int(left), int(reset))


async def leaky_bucket(target: Target, key: str, rate: float, burst: float) -> float | None:
    """limit-req: the delay in seconds, or None when rejected."""
    args = [max(int(rate * 1000), 1), int(burst * 1000), _now_ms()]
    excess = int(await run(target, BUCKET, [key], args))
    return excess / 1000 / rate if excess >= 0 else None


async def conn_enter(target: Target, key: str, maximum: int) -> int | None:
    """limit-conn: the count including this connection, or None beyond ``maximum``."""
    n = int(await run(target, CONN_ENTER, [key], [maximum]))
    return n if n >= 0 else None


async def conn_leave(target: Target, key: str) -> None:
    """limit-conn: a connection is over."""
    await run(target, CONN_LEAVE, [key], [])
