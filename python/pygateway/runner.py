"""Runs Python plugin phases for the native data plane.

The data plane never takes the GIL: it queues jobs. The plugin thread waits for them in
Rust without the GIL (``DataPlane.wait_jobs``, woken only when it sleeps), takes every
queued job, runs sync phases inline and completes each job with the plugins' decision (the
data plane gets it at once, and is woken once for what arrives before it looks). Async
phases run as tasks on an asyncio loop in a second thread, so awaiting plugins never hold
up the sync ones.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast, overload
from urllib.parse import quote

from . import _core
from .ctx import (
    Headers,
    RequestBodyTooLarge,
    SimpleCtx,
    UpstreamChanges,
    Vars,
    parse_args,
)
from .pipeline import REQUEST_PHASES, Execution, Pipeline, Plan, PluginResponse
from .plugins._limit import limiter_specs

log = logging.getLogger("pygateway.runner")
PLUGIN_LOG = logging.getLogger("pygateway.plugins")

PLUGIN_BODY_LIMIT = 1024 * 1024
"""Most bytes of a request body a plugin may read (nginx's client_max_body_size default)."""

STALE_AFTER = 300.0
"""Seconds after which a request's plugin run is dropped if its log phase never came."""

_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_NO_ROUTE: Mapping[str, Any] = {}
_NO_CHANGES = UpstreamChanges()
_INTERNAL = b'{"error_msg":"internal error"}\n'


def upstream_target(changes: UpstreamChanges, request_uri: str) -> str | None:
    """The request target plugins asked for (None: the client's, unchanged).

    ``ctx.uri`` is the decoded path: what must be is percent-encoded again; the query is
    the client's unless a plugin set one.
    """
    if changes.upstream_uri is not None:
        return changes.upstream_uri
    if changes.uri is None and changes.query is None:
        return None
    raw_path, _, raw_query = request_uri.partition("?")
    path = quote(changes.uri, safe=_PATH_SAFE) if changes.uri is not None else raw_path
    query = changes.query if changes.query is not None else raw_query
    return f"{path}?{query}" if query else path


@dataclass
class PluginView:
    """What the runner needs of the config: swapped whole on every config change."""

    routes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Compiled routes by id (their merged ``plugins``, ``name``, ``service_id``)."""
    global_rules: Sequence[Mapping[str, Any]] = ()
    """The ``plugins`` of each global rule."""
    consumers: Sequence[dict[str, Any]] = ()
    plugin_metadata: Mapping[str, dict[str, Any]] = field(default_factory=dict)


T = TypeVar("T")


class Lazy(Generic[T]):
    """A :class:`NativeCtx` attribute made from the job on first read, then a plain instance
    attribute (a non-data descriptor: the instance's dict wins once filled). No exception
    is raised on the way, as ``__getattr__`` would need."""

    __slots__ = ("make", "name")

    def __init__(self, make: Callable[[NativeCtx], T]) -> None:
        self.make = make
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Lazy[T]: ...
    @overload
    def __get__(self, obj: NativeCtx, owner: type | None = None) -> T: ...
    def __get__(self, obj: NativeCtx | None, owner: type | None = None) -> T | Lazy[T]:
        if obj is None:
            return self
        value = self.make(obj)
        obj.__dict__[self.name] = value
        return value


class NativeCtx(SimpleCtx):
    """A :class:`SimpleCtx` over a native job, filled on first use.

    Only what a plugin touches is fetched from Rust: a plugin that sets one header never
    pays for the request headers, args or variables. The lazily made attributes are exactly
    those ``SimpleCtx.__init__`` sets; once made they are plain attributes.
    """

    _job: _core.Job
    _route: Mapping[str, Any]
    _view: PluginView

    # Defaults read from the class until a phase sets them on the instance.
    consumer: dict[str, Any] | None = None
    consumer_name: str | None = None
    consumer_group_id: str | None = None
    plugin_name = ""
    plugin_global = False
    log: logging.Logger = PLUGIN_LOG
    scheme = "http"
    status = 200
    client_max_body_size: int | None = PLUGIN_BODY_LIMIT
    _body: bytes | None = None

    # Made from the job (or the route, or the config view) when first read.
    changes = Lazy(lambda c: UpstreamChanges())
    state: Lazy[dict[str, Any]] = Lazy(lambda c: {})
    _headers = Lazy(lambda c: c._fetch_headers())
    _method = Lazy(lambda c: c._job.method)
    _uri = Lazy(lambda c: c._job.path)
    _query = Lazy(lambda c: c._job.query or "")
    _args = Lazy(lambda c: parse_args(c._query))
    _host = Lazy(lambda c: c._job.host)
    remote_addr = Lazy(lambda c: c._job.remote_addr)
    server_port = Lazy(lambda c: c._job.server_port)
    route_id: Lazy[str | None] = Lazy(lambda c: c._job.route_id)
    route_name: Lazy[str | None] = Lazy(lambda c: c._route.get("name"))
    service_id: Lazy[str | None] = Lazy(lambda c: c._route.get("service_id"))
    params: Lazy[dict[str, Any]] = Lazy(lambda c: dict(c._job.params()))
    request_uri = Lazy(lambda c: c._job.request_uri)
    _body_reader: Lazy[Callable[[], bytes] | Callable[[], Awaitable[bytes]] | None] = Lazy(
        lambda c: c._read_body
    )
    # Only read: the view's own, not copies.
    _consumers: Lazy[list[dict[str, Any]]] = Lazy(lambda c: cast(Any, c._view.consumers))
    _plugin_metadata: Lazy[dict[str, dict[str, Any]]] = Lazy(
        lambda c: cast(Any, c._view.plugin_metadata)
    )
    _plugin_attr: Lazy[dict[str, dict[str, Any]]] = Lazy(lambda c: {})
    response_headers = Lazy(lambda c: Headers())
    # A weak reference back: no cycle, the ctx is freed when its request ends.
    var = Lazy(lambda c: Vars(cast(SimpleCtx, weakref.proxy(c))))

    def __init__(self, job: _core.Job, route: Mapping[str, Any], view: PluginView) -> None:
        # SimpleCtx.__init__ is not called: the attributes it sets are made on demand.
        self._job = job
        self._route = route
        self._view = view

    def _read_body(self) -> bytes:
        """The client body from the data plane (buffered there, then also sent upstream)."""
        data = self._job.read_body(self.client_max_body_size or PLUGIN_BODY_LIMIT)
        if data is None:
            raise RequestBodyTooLarge(f"request body larger than {self.client_max_body_size} bytes")
        return data

    async def body_async(self) -> bytes:
        """As :meth:`body`, without holding up the plugin thread's other requests."""
        if self.__dict__.get("_body") is None:
            loop = asyncio.get_running_loop()
            self._body = await loop.run_in_executor(None, self._read_body)
        return self.body()

    def set_header(self, name: str, value: str) -> None:
        if "_headers" in self.__dict__:
            super().set_header(name, value)
            return
        # The request headers were not read: record the change only, it is applied when
        # (if ever) they are fetched.
        key = name.lower()
        changes = self.changes
        changes.removed_headers.discard(key)
        changes.set_headers[key] = (name, str(value))

    def remove_header(self, name: str) -> None:
        if "_headers" in self.__dict__:
            super().remove_header(name)
            return
        key = name.lower()
        self.changes.set_headers.pop(key, None)
        self.changes.removed_headers.add(key)

    def _fetch_headers(self) -> Headers:
        headers = Headers(self._job.headers())
        changes = self.changes
        for key in changes.removed_headers:
            if key in headers:
                del headers[key]
        for name, value in changes.set_headers.values():
            headers[name] = value
        return headers


@dataclass(frozen=True)
class _Shape:
    phases: tuple[str, ...]
    before_limits: tuple[str, ...]
    """``phases`` when the route has native limiters: before_proxy waits for the late
    crossing."""
    is_async: bool
    later: bool


class PluginRunner:
    """The plugin thread of a native gateway."""

    def __init__(self, plane: _core.DataPlane, pipeline: Pipeline, *, debug: bool = False) -> None:
        self._plane = plane
        self.pipeline = pipeline
        self.debug = debug
        self.view = PluginView()
        self._live: dict[int, tuple[Execution, float]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._loop_thread: threading.Thread | None = None
        self._running = False
        self._started = threading.Event()
        self._calls: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]]
        self._calls = collections.deque()
        self._last_sweep = time.monotonic()
        self._tasks: set[asyncio.Future[None]] = set()
        self._shapes: dict[Plan, _Shape] = {}
        self._plans: dict[str, tuple[Any, Any, tuple[int, int], Plan, _Shape]] = {}
        self._consumer_specs: dict[tuple[int, int], tuple[Any, Any, str | None]] = {}
        self._late: dict[int, tuple[Execution, float]] = {}
        """Plugin runs waiting for their late crossing (after the native limiters)."""

    def start(self) -> None:
        self._running = True
        self._loop_thread = threading.Thread(
            target=self._run_loop, name="pygateway-plugins-async", daemon=True
        )
        self._loop_thread.start()
        self._started.wait(5)
        self._thread = threading.Thread(target=self._run, name="pygateway-plugins", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._running = False
        if self._thread is not None:
            self._plane.interrupt()
            self._thread.join(5)
            self._thread = None
        loop = self._loop
        if loop is not None and self._loop_thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            self._loop_thread.join(5)
        self._loop_thread = None

    def call(self, fn: Callable[[], Any], timeout: float = 30) -> Any:
        """Run ``fn`` on the plugin thread between batches (plugins never see a half reload)."""
        thread = self._thread
        if thread is None or not thread.is_alive() or thread is threading.current_thread():
            return fn()
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._calls.append((fn, done))
        self._plane.interrupt()
        return done.result(timeout)

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            # Jobs left behind, and later ones, fail their requests instead of waiting.
            self._plane.close_jobs()

    def _serve(self) -> None:
        plane = self._plane
        while self._running:
            jobs = plane.wait_jobs(0.5)
            for job in jobs:
                try:
                    self._dispatch(job)
                except Exception:
                    log.exception("plugin runner failed on a %s job", job.phase)
                    self._fail(job)
            while self._calls:
                fn, done = self._calls.popleft()
                try:
                    done.set_result(fn())
                except BaseException as err:
                    done.set_exception(err)
            now = time.monotonic()
            if now - self._last_sweep > 10:
                self._last_sweep = now
                for waiting in (self._live, self._late):
                    stale = [k for k, (_, t) in waiting.items() if now - t > STALE_AFTER]
                    for k in stale:
                        waiting.pop(k, None)

    def _run_loop(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    # -- dispatch ---------------------------------------------------------------------

    def _fail(self, job: _core.Job) -> None:
        try:
            if job.phase in ("request", "request_late") and not job.cancelled:
                job.respond(500, [("Content-Type", "application/json")], _INTERNAL)
            elif job.phase == "header_filter":
                job.send_head(job.status or 500, job.response_headers())
        except Exception:  # already completed
            pass

    def _dispatch(self, job: _core.Job) -> None:
        phase = job.phase
        if phase == "request":
            run, shape, route = self._start(job)
            if shape.later:
                self._live[job.request_id] = (run, time.monotonic())
            phases = shape.phases
            if route.get("limits"):
                # The route's limiters run between the access plugins above and below them.
                run.stage = 1
                phases = shape.before_limits
            if shape.is_async:
                done = lambda resp: self._reply_early(job, run, resp)  # noqa: E731
                self._spawn(job, run.run_phases_async(phases), done)
            else:
                flat = run.plan.flat_request_steps(run.stage)
                resp = run.run_flat(flat) if flat is not None else run.run_phases(phases)
                self._reply_early(job, run, resp)
        elif phase == "request_late":
            entry = self._late.pop(job.request_id, None)
            if job.cancelled:
                return
            if entry is not None:
                run = entry[0]
                # The request's data is the same; a body read must go through this job.
                ctx = run.ctx
                if isinstance(ctx, NativeCtx):
                    ctx._job = job
            else:  # every request plugin of the route is below its limiters: one crossing
                run, shape, _ = self._start(job)
                if shape.later:
                    self._live[job.request_id] = (run, time.monotonic())
            run.stage = 2
            if any(run.plan.has_async(p) for p in REQUEST_PHASES):
                done = lambda resp: self._reply(job, run, resp)  # noqa: E731
                self._spawn(job, run.run_phases_async(("access", "before_proxy")), done)
            else:
                flat = run.plan.flat_request_steps(2)
                if flat is not None:
                    self._reply(job, run, run.run_flat(flat))
                else:
                    self._reply(job, run, run.run_phases(("access", "before_proxy")))
        elif phase == "header_filter":
            self._response_phase(job, self._run_of(job), "header_filter", self._send_head)
        elif phase == "body_filter":
            run = self._run_of(job)
            if run.plan.has_async("body_filter"):
                self._spawn(job, run.body_filter_async(job.chunk, job.eof), job.send_chunk)
            else:
                job.send_chunk(run.body_filter(job.chunk, job.eof))
        else:  # log: the request is over
            entry = self._live.pop(job.request_id, None)
            run = entry[0] if entry is not None else self._begin(job)
            self._response_phase(job, run, "log", lambda job, run: None)

    def _run_of(self, job: _core.Job) -> Execution:
        """The plugin run of a request; made now if it had no request phase."""
        entry = self._live.get(job.request_id)
        if entry is not None:
            return entry[0]
        run = self._begin(job)
        self._live[job.request_id] = (run, time.monotonic())
        return run

    def _response_phase(
        self,
        job: _core.Job,
        run: Execution,
        phase: str,
        then: Callable[[_core.Job, Execution], None],
    ) -> None:
        """header_filter / log: show plugins the response, run the phase, then ``then``."""
        ctx = run.ctx
        assert isinstance(ctx, SimpleCtx)
        ctx.set_response(job.status or 200, job.response_headers())
        if run.plan.has_async(phase):
            self._spawn(job, run.run_phase_async(phase), lambda _: then(job, run))
        else:
            run.run_phase(phase)
            then(job, run)

    def _shape(self, plan: Plan) -> _Shape:
        """What a plan needs per request, worked out once per plan."""
        shape = self._shapes.get(plan)
        if shape is None:
            # After rewrite (authentication) a consumer's plugins may join any later phase.
            phases = (
                REQUEST_PHASES
                if plan.steps("rewrite")
                else tuple(p for p in REQUEST_PHASES if plan.steps(p))
            )
            shape = _Shape(
                phases=phases,
                before_limits=tuple(p for p in phases if p != "before_proxy"),
                is_async=any(plan.has_async(p) for p in REQUEST_PHASES),
                later=any(plan.steps(p) for p in ("header_filter", "body_filter", "log")),
            )
            if len(self._shapes) > 4096:
                self._shapes.clear()
            self._shapes[plan] = shape
        return shape

    def _spawn(self, job: _core.Job, coro: Awaitable[Any], done: Callable[[Any], None]) -> None:
        """Run an async phase of ``job`` as a task on the loop thread; ``done`` gets its
        result. Whatever fails, the job is answered."""

        async def task() -> None:
            try:
                done(await coro)
            except Exception:
                log.exception("plugin runner failed on a %s job", job.phase)
                self._fail(job)

        def schedule() -> None:
            # The loop keeps only weak references to tasks: hold them until they finish.
            t = asyncio.ensure_future(task())
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

        loop = self._loop
        if loop is None:
            raise RuntimeError("the plugin runner is not started")
        loop.call_soon_threadsafe(schedule)

    def _begin(self, job: _core.Job) -> Execution:
        return self._start(job)[0]

    def _start(self, job: _core.Job) -> tuple[Execution, _Shape, Mapping[str, Any]]:
        """The plugin run of a job's request, the shape of its plan, and its route."""
        view = self.view
        route_id = job.route_id
        route = view.routes.get(route_id, _NO_ROUTE)
        # The route's plan, remembered here without the pipeline's lock and LRU bookkeeping.
        plugins = route.get("plugins") or _NO_ROUTE
        rules = view.global_rules
        pipeline = self.pipeline
        epoch = pipeline.epoch
        known = self._plans.get(route_id)
        if known is not None and known[0] is plugins and known[1] is rules and known[2] == epoch:
            plan, shape = known[3], known[4]
        else:
            plan = pipeline.plan(plugins, rules)
            shape = self._shape(plan)
            if len(self._plans) > 65536:
                self._plans.clear()
            self._plans[route_id] = (plugins, rules, epoch, plan, shape)
        return Execution(pipeline, NativeCtx(job, route, view), plan), shape, route

    def _debug(self, run: Execution) -> str | None:
        return run.debug_header() if self.debug else None

    def _reply_early(self, job: _core.Job, run: Execution, resp: PluginResponse | None) -> None:
        """The first request crossing: asks for a second one when plugins wait for the
        route's limiters."""
        again = run.stage == 1 and resp is None and run.late_pending()
        if again:
            self._late[job.request_id] = (run, time.monotonic())
        self._reply(job, run, resp, again)

    def _reply(
        self, job: _core.Job, run: Execution, resp: PluginResponse | None, again: bool = False
    ) -> None:
        if resp is not None:
            job.respond(resp.status, resp.headers, resp.body, self._debug(run))
            return
        ctx = run.ctx
        assert isinstance(ctx, SimpleCtx)
        ch = ctx.__dict__.get("changes") or _NO_CHANGES
        removed = ch.removed_headers
        rewritten = ch.upstream_uri is not None or ch.uri is not None or ch.query is not None
        if not (
            removed
            or rewritten
            or again
            or self.debug
            or ch.method is not None
            or ch.host is not None
            or ctx.consumer_name is not None
            or ctx.consumer is not None
        ):
            # The common case (at most headers set) in the cheapest call.
            job.proceed(list(ch.set_headers.values()))
            return
        job.proceed(
            list(ch.set_headers.values()),
            sorted(removed) if removed else [],
            upstream_target(ch, job.request_uri) if rewritten else None,
            None if ch.method is None else str(ch.method),
            None if ch.host is None else str(ch.host),
            self._debug(run),
            ctx.consumer_name,
            self._consumer_limits(ctx) if ctx.consumer is not None else None,
            again,
        )

    def _consumer_limits(self, ctx: SimpleCtx) -> str | None:
        """The consumer's (and its group's) native limiter confs as the data plane takes
        them, or None; made once per consumer object."""
        consumer = ctx.consumer
        group_id = ctx.consumer_group_id or (consumer or {}).get("group_id")
        group = self.pipeline.consumer_groups.get(group_id) if group_id else None
        key = (id(consumer), id(group))
        known = self._consumer_specs.get(key)
        if known is not None and known[0] is consumer and known[1] is group:
            return known[2]
        registry, enabled = self.pipeline.registry, self.pipeline.enabled
        merged = {}
        if group is not None:
            for spec in limiter_specs(
                registry, enabled, f"consumer_groups/{group_id}", group.get("plugins") or {}
            ):
                merged[spec["name"]] = spec
        name = (consumer or {}).get("username")
        for spec in limiter_specs(
            registry, enabled, f"consumers/{name}", (consumer or {}).get("plugins") or {}
        ):
            merged[spec["name"]] = spec
        text = json.dumps(list(merged.values()), sort_keys=True) if merged else None
        if len(self._consumer_specs) > 4096:
            self._consumer_specs.clear()
        self._consumer_specs[key] = (consumer, group, text)
        return text

    def _send_head(self, job: _core.Job, run: Execution) -> None:
        ctx = run.ctx
        assert isinstance(ctx, SimpleCtx)
        job.send_head(ctx.status, ctx.response_headers.items_list(), self._debug(run))
