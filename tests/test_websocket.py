"""WebSocket proxying (``enable_websocket``), on both engines, with a real WebSocket origin
and client (aiohttp's): the handshake, frames both ways, subprotocols, close, idle timeout."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import request, route


class WsOrigin:
    """An aiohttp server on a free loopback port: any path greets, then echoes each message
    (``close`` closes), or answers 426 to a plain GET; every Upgrade header is recorded."""

    def __init__(self) -> None:
        self.upgrades: list[str | None] = []
        self.closed = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        self.upgrades.append(request.headers.get("Upgrade"))
        ws = web.WebSocketResponse(protocols=("chat",), autoping=True)
        if not ws.can_prepare(request).ok:
            return web.Response(status=426, text="upgrade required\n")
        await ws.prepare(request)
        await ws.send_str(f"hello {request.headers.get('X-Forwarded-For')}")
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                if msg.data == "close":
                    await ws.close()
                else:
                    await ws.send_str("echo " + msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        self.closed.set()
        return ws

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._ws)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        async def cleanup() -> None:
            assert self._runner is not None
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


ENDED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


@pytest.fixture
def ws_origin() -> Iterator[WsOrigin]:
    o = WsOrigin()
    yield o
    o.stop()


async def _talk(url: str, protocols: tuple[str, ...] = ()) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, protocols=protocols) as ws:
            got: dict[str, Any] = {"protocol": ws.protocol}
            got["greeting"] = (await ws.receive(timeout=5)).data
            await ws.send_str("one")
            got["text"] = (await ws.receive(timeout=5)).data
            big = bytes(range(256)) * 400  # 100 KiB: several reads on the way
            await ws.send_bytes(big)
            got["binary_ok"] = (await ws.receive(timeout=5)).data == big[::-1]
            await ws.send_str("close")
            msg = await ws.receive(timeout=5)
            got["closed"] = msg.type in ENDED[:2]
            return got


def test_websocket_frames_go_both_ways_when_enabled(
    gateway: Any, ws_origin: WsOrigin, engine: str
) -> None:
    gw = gateway({"routes": [route("/ws", ws_origin.addr, enable_websocket=True)]})
    got = asyncio.run(_talk(f"{gw.url}/ws", protocols=("chat",)))
    assert got == {
        "protocol": "chat",
        "greeting": "hello 127.0.0.1",
        "text": "echo one",
        "binary_ok": True,
        "closed": True,
    }
    assert ws_origin.upgrades == ["websocket"]
    assert ws_origin.closed.wait(5)
    # the connection pool is untouched: plain requests on the same route still work
    assert request(gw.url, "/ws").status == 426


def test_websocket_enabled_on_the_service_applies_to_its_routes(
    gateway: Any, ws_origin: WsOrigin, engine: str
) -> None:
    config = {
        "services": [
            {"id": "s", "enable_websocket": True, "upstream": {"nodes": {ws_origin.addr: 1}}}
        ],
        "routes": [
            {"id": "on", "uri": "/ws", "service_id": "s"},
            {"id": "off", "uri": "/off/*", "service_id": "s", "enable_websocket": False},
        ],
    }
    gw = gateway(config)
    assert asyncio.run(_talk(f"{gw.url}/ws"))["text"] == "echo one"
    with pytest.raises(aiohttp.WSServerHandshakeError):  # the route's false wins
        asyncio.run(_talk(f"{gw.url}/off/ws"))
    assert ws_origin.upgrades == ["websocket", None]


def test_without_enable_websocket_the_upgrade_is_not_passed_on(
    gateway: Any, ws_origin: WsOrigin, engine: str
) -> None:
    # As APISIX: Upgrade and Connection never reach the upstream, which sees a plain GET.
    gw = gateway({"routes": [route("/ws", ws_origin.addr)]})
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        asyncio.run(_talk(f"{gw.url}/ws"))
    assert caught.value.status == 426
    assert ws_origin.upgrades == [None]


def test_an_idle_tunnel_is_closed_after_the_read_timeout(
    gateway: Any, ws_origin: WsOrigin, engine: str
) -> None:
    timeout = {"connect": 1, "send": 1, "read": 1}
    gw = gateway({"routes": [route("/ws", ws_origin.addr, enable_websocket=True, timeout=timeout)]})

    async def idle() -> float:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{gw.url}/ws", autoping=False) as ws:
                await ws.receive(timeout=5)  # the greeting
                start = time.monotonic()
                msg = await ws.receive(timeout=10)
                assert msg.type in ENDED
                return time.monotonic() - start

    waited = asyncio.run(idle())
    assert 0.5 < waited < 8, waited


def test_limit_conn_counts_an_open_tunnel_until_it_closes(
    gateway: Any, ws_origin: WsOrigin, engine: str
) -> None:
    # APISIX: limit-conn holds a WebSocket's slot until the connection ends.
    limit = {"limit-conn": {"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key": "route_id"}}
    gw = gateway({"routes": [route("/ws", ws_origin.addr, enable_websocket=True, plugins=limit)]})

    async def scenario() -> tuple[int, str]:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{gw.url}/ws") as first:
                await first.receive(timeout=5)
                with pytest.raises(aiohttp.WSServerHandshakeError) as second:
                    await session.ws_connect(f"{gw.url}/ws")
            await asyncio.sleep(0.3)  # the first tunnel's end reaches the gateway
            async with session.ws_connect(f"{gw.url}/ws") as third:
                return second.value.status, (await third.receive(timeout=5)).data

    status, greeting = asyncio.run(scenario())
    assert status == 503 and greeting.startswith("hello")


def test_a_draining_node_keeps_open_tunnels_until_they_close(
    gateway: Any, ws_origin: WsOrigin, engine: str
) -> None:
    gw = gateway({"routes": [route("/ws", ws_origin.addr, enable_websocket=True)]})

    async def scenario() -> tuple[str, bool]:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{gw.url}/ws") as ws:
                await ws.receive(timeout=5)
                stopping = threading.Thread(target=gw.stop, args=(10,))
                stopping.start()
                await asyncio.sleep(0.5)  # draining: no new connection, this one kept
                await ws.send_str("still there")
                echoed = (await ws.receive(timeout=5)).data
            await asyncio.to_thread(stopping.join, 10)
            return echoed, not stopping.is_alive()

    echoed, stopped = asyncio.run(scenario())
    assert echoed == "echo still there" and stopped
