"""The Admin API's HTTP listener: aiohttp on its own thread and event loop.

It checks the client address (``allow_admin``) and the admin key, reads and decodes the
body (1.5 MiB at most, as APISIX), and hands the request to :class:`~.api.AdminApi`: on the
event loop for a local store (a write blocks on a short ``fsync``), on a worker thread for
etcd. Keys are compared in constant time and never written to a log or an answer.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import math
import re
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, Union

from aiohttp import web

from ..config.jsonvalue import loads
from ..config.node import AdminKey, AdminSettings, _split_listen
from .api import AdminApi

__all__ = ["MAX_BODY", "PREFIX", "AdminServer", "check_token"]

log = logging.getLogger("pygateway.admin")

PREFIX = "/apisix/admin"
_SLASHES = re.compile("//+")
MAX_BODY = 1536 * 1024
"""APISIX's limit on an Admin API request body (1.5 MiB)."""

T = TypeVar("T")
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def check_token(
    keys: Sequence[AdminKey], token: str | None, method: str
) -> tuple[bool, str | None]:
    """APISIX's ``check_token``: (ok, the ``description`` of the 401 when not)."""
    if token is None:
        return False, "missing apikey"
    found: AdminKey | None = None
    given = token.encode("utf-8", "surrogateescape")
    for key in keys:  # every key is compared: the time taken does not depend on which matched
        if hmac.compare_digest(given, key.key.encode("utf-8")) and found is None:
            found = key
    if found is None:
        return False, "wrong apikey"
    if found.role == "viewer" and method != "GET":
        return False, "invalid method for role viewer"
    return True, None


def _json(status: int, body: Any) -> web.Response:
    if isinstance(body, str):
        resp = web.Response(status=status, text=body)
    else:
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        resp = web.Response(status=status, text=text, content_type="application/json")
    return _stamped(resp)


def _stamped(resp: web.Response) -> web.Response:
    resp.headers["X-API-VERSION"] = "v3"
    resp.headers["Server"] = "pygateway"
    return resp


class AdminServer:
    """Serves ``api`` on ``settings.listen`` until :meth:`stop`."""

    def __init__(self, api: AdminApi, settings: AdminSettings) -> None:
        self.api = api
        self.settings = settings
        self._allow: list[Network] = [ipaddress.ip_network(c, strict=False) for c in settings.allow]
        self._verdicts: dict[str, bool] = {}  # client address -> allowed (parsed once)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.address: str | None = None
        """``HOST:PORT`` once listening."""

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> str:
        """Bind and serve in a background thread; returns ``HOST:PORT``.

        Raises OSError when the address cannot be bound.
        """
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._bind())
            except BaseException as err:
                failure.append(err)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                if self._runner is not None:
                    loop.run_until_complete(self._runner.cleanup())
                loop.close()

        self._thread = threading.Thread(target=run, name="pygateway-admin", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        assert self.address is not None
        return self.address

    async def _bind(self) -> None:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        host, port = _split_listen(self.settings.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.create_server((host, port), family=family)
        except OSError:
            await runner.cleanup()
            raise
        await web.SockSite(runner, sock).start()
        self._runner = runner
        bound = sock.getsockname()
        shown = f"[{bound[0]}]" if family == socket.AF_INET6 else bound[0]
        self.address = f"{shown}:{bound[1]}"

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and self._thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10)
        self._thread = None
        self._loop = None

    # -- requests --------------------------------------------------------------------

    def _allowed(self, remote: str | None) -> bool:
        if remote is None:
            return False
        known = self._verdicts.get(remote)
        if known is None:
            if len(self._verdicts) >= 1024:
                self._verdicts.clear()
            known = self._verdicts[remote] = self._check_address(remote)
        return known

    def _check_address(self, remote: str) -> bool:
        try:
            addr = ipaddress.ip_address(remote.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self._allow)

    def _token(self, request: web.Request) -> str | None:
        # The first one given, even empty (APISIX: "" is a key, and a wrong one).
        for found in (
            request.query.get("api_key"),
            request.headers.get("X-API-KEY"),
            request.cookies.get("x_api_key"),
        ):
            if found is not None:
                return found
        return None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``: here when the store is local (a write is a short ``fsync``; a
        thread handoff would cost each write two more wake-ups on the node's CPUs), on a
        worker thread when it waits on the network (etcd)."""
        if self.api.store.local:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if not self._allowed(request.remote):
            return _json(403, {"error_msg": "client address not allowed (allow_admin)"})
        path = _SLASHES.sub("/", request.path).rstrip("/")  # nginx's merge_slashes
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            return _json(404, {"error_msg": "not found"})
        method = request.method
        if method == "HEAD" and path == PREFIX:
            return _json(200, "")
        if self.settings.key_required:
            ok, why = check_token(self.settings.keys, self._token(request), method)
            if not ok:
                log.warning("admin: %s %s refused: %s", method, request.path, why)
                return _json(401, {"error_msg": "failed to check token", "description": why})
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge as err:
            size = request.content_length or getattr(err, "actual_size", None) or "?"
            message = (
                f"invalid request body: request size {size} is greater than the maximum size "
                f"{MAX_BODY} allowed"
            )
            return _json(400, {"error_msg": message})
        if path == PREFIX + "/configs" and method in ("GET", "HEAD", "PUT"):
            try:
                answer = await self._call(self.api.configs, method, request.headers, raw)
            except Exception:
                log.exception("admin: %s %s failed", method, request.path)
                return _json(500, {"error_msg": "internal error, see the gateway log"})
            resp = web.Response(status=answer.status, body=answer.body or None)
            if answer.content_type is not None:
                resp.content_type = answer.content_type
            resp.headers.update(answer.headers)
            return _stamped(resp)
        body: Any = None
        if raw:
            try:
                body = loads(raw)
            except ValueError as err:
                text = raw.decode("utf-8", "replace")
                return _json(400, {"error_msg": f"invalid request body: {err}", "req_body": text})
        ttl = request.query.get("ttl")
        if ttl is not None:
            try:
                finite = math.isfinite(float(ttl))
            except ValueError:
                finite = False
            if not finite:
                return _json(400, {"error_msg": "invalid argument ttl: should be a number"})
        segments = path[len(PREFIX) + 1 :].split("/") if path != PREFIX else []
        args = {k: v for k, v in request.query.items() if k != "api_key"}
        try:
            status, answer = await self._call(self.api.handle, method, segments, args, body)
        except Exception:
            log.exception("admin: %s %s failed", method, request.path)
            return _json(500, {"error_msg": "internal error, see the gateway log"})
        return _json(status, answer)
