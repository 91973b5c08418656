"""Which plugins run, in which order, per phase, and running them against a Ctx.

Engine-independent (APISIX semantics, ``docs/CONTRACT-plugins.md``)::

    pipeline = Pipeline(registry, enabled=node.plugins, plugin_timeout=5.0)
    run = pipeline.start(ctx, route["plugins"], [rule["plugins"] for rule in global_rules])
    resp = run.run_phase("rewrite") or run.run_phase("access")   # or: await run_phase_async
    ...                                                            # pick the upstream
    resp = resp or run.run_phase("before_proxy")
    if resp is not None: send resp.status / resp.headers / resp.body
    ctx.set_response(status, headers); run.run_phase("header_filter")
    chunk = run.body_filter(chunk, eof)                            # per chunk
    run.run_phase("log")

:meth:`Pipeline.plan` sorts and filters a route's plugins once per (route plugins, global
rules) object identity (config changes deliver new dicts; confs are never mutated in place),
so the per-request work is iterating tuples, evaluating ``_meta.filter`` and calling methods.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from ._version import __version__
from .config import expr
from .ctx import Ctx, RequestBodyTooLarge
from .plugin import PHASES, Plugin, PluginRegistry, is_async

__all__ = [
    "REQUEST_PHASES",
    "Execution",
    "Pipeline",
    "Plan",
    "PluginResponse",
    "Step",
    "normalize_response",
]

log = logging.getLogger("pygateway.pipeline")

REQUEST_PHASES = ("rewrite", "access", "before_proxy")
"""Phases whose return value may end the request."""

DEFAULT_PLUGIN_TIMEOUT = 5.0
JSON_CONTENT_TYPE = "application/json"


def _json_body(value: Any) -> bytes:
    return (json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


@dataclass
class PluginResponse:
    """A response that ends the request (from a plugin, or an error of the runtime)."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    plugin: str | None = None
    phase: str | None = None

    def header(self, name: str) -> str | None:
        key = name.lower()
        for n, v in self.headers:
            if n.lower() == key:
                return v
        return None

    @classmethod
    def error(
        cls, status: int, message: str, plugin: str | None = None, phase: str | None = None
    ) -> PluginResponse:
        return cls(
            status,
            _json_body({"error_msg": message}),
            [("Content-Type", JSON_CONTENT_TYPE)],
            plugin,
            phase,
        )


_NGINX_REASONS = {
    # nginx's wording (ngx_http_special_response.c) where it differs from the registry's.
    401: "Authorization Required",
    405: "Not Allowed",
    408: "Request Time-out",
    413: "Request Entity Too Large",
    414: "Request-URI Too Large",
    416: "Requested Range Not Satisfiable",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}
_PAGE_FOOTER = f"pygateway/{__version__}"


def nginx_page(status: int) -> bytes:
    """nginx's page for a bare status: what APISIX's ``core.response.exit(code)`` (→
    ``ngx.exit``) and its proxy failures answer."""
    reason = _NGINX_REASONS.get(status) or (
        HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
    )
    line = f"{status} {reason}".rstrip()
    return (
        f"<html>\r\n<head><title>{line}</title></head>\r\n<body>\r\n<center><h1>{line}"
        f"</h1></center>\r\n<hr><center>{_PAGE_FOOTER}</center>\r\n</body>\r\n</html>\r\n"
    ).encode()


def _encode_body(body: Any) -> tuple[bytes, bool]:
    """(bytes, is_json)."""
    if body is None:
        return b"", False
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body), False
    if isinstance(body, str):
        return body.encode(), False
    if isinstance(body, (dict, list)):
        return _json_body(body), True
    if isinstance(body, bool):
        return (b"true" if body else b"false"), False
    return str(body).encode(), False


def _header_pairs(headers: Any) -> list[tuple[str, str]]:
    if headers is None:
        return []
    pairs: Iterable[Any] = headers.items() if isinstance(headers, Mapping) else headers
    out: list[tuple[str, str]] = []
    for name, value in pairs:
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            out.extend((str(name), str(v)) for v in value)
        else:
            out.append((str(name), str(value)))
    return out


def normalize_response(
    value: Any,
    *,
    error_response: Any = None,
    plugin: str | None = None,
    phase: str | None = None,
) -> PluginResponse | None:
    """Turn a phase's return value into a :class:`PluginResponse` (None: carry on).

    Accepts ``(status, body)``, ``(status, body, headers)`` and a bare status.  A status of
    None carries on (Lua's ``return nil, body``).  Raises TypeError on anything else.
    """
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        status, body, headers = value, None, None
    elif isinstance(value, (tuple, list)) and len(value) in (2, 3):
        status, body = value[0], value[1]
        headers = value[2] if len(value) == 3 else None
    else:
        raise TypeError(
            f"a phase must return None, (status, body) or (status, body, headers), not {value!r}"
        )
    if status is None:
        return None
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise TypeError(f"invalid response status {status!r}")
    if status >= 400 and error_response is not None:
        body = error_response
    pairs = _header_pairs(headers)
    if body is None and status >= 300 and status != 304:
        # A bare status: nginx's page, as APISIX's exit(code) gives.
        if not any(n.lower() == "content-type" for n, _ in pairs):
            pairs.append(("Content-Type", "text/html"))
        return PluginResponse(status, nginx_page(status), pairs, plugin, phase)
    data, is_json = _encode_body(body)
    if is_json and not any(n.lower() == "content-type" for n, _ in pairs):
        pairs.append(("Content-Type", JSON_CONTENT_TYPE))
    return PluginResponse(status, data, pairs, plugin, phase)


_NO_FILTER: Any = object()


@dataclass(frozen=True, eq=False)
class Step:
    """One plugin instance of a plan: the plugin, its conf and what was precomputed."""

    name: str
    plugin: Plugin
    conf: dict[str, Any]
    priority: int
    filter: Any  # compiled _meta.filter, or _NO_FILTER
    error_response: Any
    from_consumer: bool
    logger: logging.Logger
    methods: Mapping[str, tuple[Callable[..., Any], bool]]
    global_rule: bool = False

    def method(self, phase: str) -> tuple[Callable[..., Any], bool] | None:
        return self.methods.get(phase)


@dataclass(frozen=True, eq=False)
class Plan:
    """The sorted plugins of a route (and of the global rules) for every phase."""

    global_steps: tuple[Step, ...]
    route_steps: tuple[Step, ...]
    route_plugins: Mapping[str, Any]
    global_phase: Mapping[str, tuple[Step, ...]]
    route_phase: Mapping[str, tuple[Step, ...]]
    _async: dict[str, bool] = field(default_factory=dict, repr=False)
    _all: dict[str, tuple[Step, ...]] = field(default_factory=dict, repr=False)
    _split: dict[int, tuple[tuple[Step, ...], bool]] = field(default_factory=dict, repr=False)
    _flat: dict[int, tuple[tuple[str, Step], ...] | None] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        global_steps: Sequence[Step],
        route_steps: Sequence[Step],
        route_plugins: Mapping[str, Any],
    ) -> Plan:
        gp = {ph: tuple(s for s in global_steps if ph in s.methods) for ph in PHASES}
        rp = {ph: tuple(s for s in route_steps if ph in s.methods) for ph in PHASES}
        every = {ph: gp[ph] + rp[ph] for ph in PHASES}
        return cls(tuple(global_steps), tuple(route_steps), route_plugins, gp, rp, {}, every)

    def steps(self, phase: str) -> tuple[Step, ...]:
        """Steps implementing ``phase``: global rules first, then the route's."""
        found = self._all.get(phase)
        if found is None:
            return self.global_phase.get(phase, ()) + self.route_phase.get(phase, ())
        return found

    def has_async(self, phase: str) -> bool:
        """Does any plugin of ``phase`` (global or route) have an ``async def`` method?"""
        cached = self._async.get(phase)
        if cached is None:
            cached = any(s.methods[phase][1] for s in self.steps(phase))
            self._async[phase] = cached
        return cached

    def names(self) -> list[str]:
        return [s.name for s in self.global_steps] + [s.name for s in self.route_steps]

    def flat_request_steps(self, stage: int) -> tuple[tuple[str, Step], ...] | None:
        """The request phases' steps of ``stage`` (see :attr:`Execution.stage`) as one
        sequence of (phase, step), for :meth:`Execution.run_flat`; None when the plan needs
        the general path: a ``rewrite`` step (the consumer's plugins join after it), an
        async method or a ``_meta.filter``."""
        if stage in self._flat:
            return self._flat[stage]
        flat: tuple[tuple[str, Step], ...] | None = None
        if not self.steps("rewrite"):
            phases: list[tuple[str, tuple[Step, ...]]] = []
            if stage in (0, 2):
                access = self.steps("access") if stage == 0 else self.access_split(2)[0]
                phases = [("access", access), ("before_proxy", self.steps("before_proxy"))]
            else:
                phases = [("access", self.access_split(1)[0])]
            pairs = tuple((ph, st) for ph, steps in phases for st in steps)
            if all(not st.methods[ph][1] and st.filter is _NO_FILTER for ph, st in pairs):
                flat = pairs
        self._flat[stage] = flat
        return flat

    def access_split(self, stage: int) -> tuple[tuple[Step, ...], bool]:
        """The access steps of ``stage`` (1: above the native limiters' priority, 2: below),
        and whether anything waits for after the limiters (stage 2 access, before_proxy)."""
        found = self._split.get(stage)
        if found is None:
            access = self.steps("access")
            if stage == 1:
                steps = tuple(s for s in access if s.priority >= NATIVE_LIMITER_PRIORITY)
            else:
                steps = tuple(s for s in access if s.priority < NATIVE_LIMITER_PRIORITY)
            later = bool(self.steps("before_proxy")) or any(
                s.priority < NATIVE_LIMITER_PRIORITY for s in access
            )
            found = self._split[stage] = (steps, later)
        return found


def _meta(conf: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = conf.get("_meta")
    return meta if isinstance(meta, dict) else {}


def _disabled(conf: Any) -> bool:
    return isinstance(conf, dict) and _meta(conf).get("disable") is True


class Pipeline:
    """Plans and runs plugin phases for one registry and enabled list.

    ``enabled``: the node's ``plugins:`` list (None = every registered plugin).
    ``plugin_timeout``: seconds an async phase may take (504 beyond).
    ``consumer_groups``: consumer group id → group conf (its ``plugins`` are merged under the
    consumer's, see :meth:`Execution.merge_consumer`).
    ``skip_native``: leave out plugins the native data plane runs itself (``Plugin.native``).
    """

    def __init__(
        self,
        registry: PluginRegistry,
        enabled: Iterable[str] | None = None,
        *,
        plugin_timeout: float = DEFAULT_PLUGIN_TIMEOUT,
        consumer_groups: Mapping[str, Mapping[str, Any]] | None = None,
        cache_size: int = 4096,
        skip_native: bool = False,
    ) -> None:
        self.registry = registry
        self.skip_native = skip_native
        self._enabled: frozenset[str] | None = None if enabled is None else frozenset(enabled)
        self.plugin_timeout = plugin_timeout
        self.consumer_groups: Mapping[str, Mapping[str, Any]] = consumer_groups or {}
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[Any, ...], tuple[Any, Plan]] = OrderedDict()
        self._generation = registry.generation
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self._clears = 0

    @property
    def enabled(self) -> frozenset[str] | None:
        return self._enabled

    @enabled.setter
    def enabled(self, value: Iterable[str] | None) -> None:
        self._enabled = None if value is None else frozenset(value)
        self.clear_cache()

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
            self._clears += 1

    @property
    def epoch(self) -> tuple[int, int]:
        """Changes whenever cached plans become stale (plugins reloaded, cache cleared)."""
        return (self.registry.generation, self._clears)

    # -- planning -----------------------------------------------------------------------

    def _step(self, name: str, conf: Any, from_consumer: bool) -> Step | None:
        if not isinstance(conf, dict):
            return None
        if self._enabled is not None and name not in self._enabled:
            return None
        plugin = self.registry.get(name)
        if plugin is not None and self.skip_native and plugin.native:
            return None
        if plugin is None:
            if name not in self._warned:
                self._warned.add(name)
                log.warning("plugin %s is configured but not loaded; skipped", name)
            return None
        meta = _meta(conf)
        if meta.get("disable") is True:
            return None
        priority = meta.get("priority")
        if not isinstance(priority, int) or isinstance(priority, bool):
            priority = plugin.priority
        compiled: Any = _NO_FILTER
        if "filter" in meta:
            try:
                compiled = expr.compile_expr(meta["filter"])
            except expr.ExprError as err:
                log.warning("plugin %s: failed to get the 'vars' expression: %s", name, err)
        methods: dict[str, tuple[Callable[..., Any], bool]] = {}
        for phase in PHASES:
            fn = getattr(plugin, phase, None)
            if callable(fn):
                methods[phase] = (fn, is_async(fn))
        return Step(
            name=name,
            plugin=plugin,
            conf=conf,
            priority=priority,
            filter=compiled,
            error_response=meta.get("error_response"),
            from_consumer=from_consumer,
            logger=logging.getLogger(f"pygateway.plugins.{name}"),
            methods=methods,
        )

    @staticmethod
    def _sorted(steps: Iterable[Step | None]) -> list[Step]:
        kept = [s for s in steps if s is not None]
        kept.sort(key=lambda s: (-s.priority, -s.plugin.priority, s.name))
        return kept

    def _check_generation(self) -> None:
        if self.registry.generation != self._generation:
            with self._lock:
                self._cache.clear()
                self._generation = self.registry.generation
                self._warned.clear()

    def _cached(self, key: tuple[Any, ...], refs: Any, build: Callable[[], Plan]) -> Plan:
        self._check_generation()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit[1]
        plan = build()
        with self._lock:
            self._cache[key] = (refs, plan)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return plan

    def plan(
        self,
        route_plugins: Mapping[str, Any] | None,
        global_rules: Sequence[Mapping[str, Any]] = (),
    ) -> Plan:
        """The plan for a route's merged plugins and the global rules' plugins (cached)."""
        route = route_plugins if route_plugins is not None else {}
        rules = tuple(global_rules)
        key = ("route", id(route), *(id(r) for r in rules))
        return self._cached(key, (route, rules), lambda: self._build(route, rules))

    def _build(self, route: Mapping[str, Any], rules: tuple[Mapping[str, Any], ...]) -> Plan:
        counts = Counter(name for rule in rules for name in rule)
        global_confs: dict[str, Any] = {}
        for rule in rules:
            for name, conf in rule.items():
                if counts[name] > 1:
                    continue
                plugin = self.registry.get(name)
                if (
                    plugin is not None
                    and plugin.run_policy == "prefer_route"
                    and isinstance(route.get(name), dict)
                    and not _disabled(route[name])
                ):
                    continue
                global_confs[name] = conf
        for name in sorted(n for n, c in counts.items() if c > 1):
            log.error(
                "Found %s configured across different global rules. "
                "Removing it from execution list",
                name,
            )
        global_steps = [
            dataclasses.replace(s, global_rule=True)
            for s in self._sorted(self._step(n, c, False) for n, c in global_confs.items())
        ]
        route_steps = self._sorted(self._step(n, c, False) for n, c in route.items())
        return Plan.build(global_steps, route_steps, route)

    def consumer_plan(
        self,
        plan: Plan,
        consumer_plugins: Mapping[str, Any] | None,
        group_plugins: Mapping[str, Any] | None = None,
    ) -> Plan:
        """``plan`` with consumer-group then consumer plugin confs overlaid (cached).

        Precedence Consumer > Consumer Group > Route (APISIX ``merge_consumer_route``).
        """
        cons = consumer_plugins or {}
        group = group_plugins or {}
        key = ("consumer", id(plan), id(cons), id(group))

        def build() -> Plan:
            merged: dict[str, tuple[Any, bool]] = {
                n: (c, False) for n, c in plan.route_plugins.items()
            }
            for source in (group, cons):
                for name, conf in source.items():
                    merged[name] = (conf, True)
            route_steps = self._sorted(self._step(n, c, fc) for n, (c, fc) in merged.items())
            confs = {n: c for n, (c, _) in merged.items()}
            return Plan.build(plan.global_steps, route_steps, confs)

        return self._cached(key, (plan, cons, group), build)

    def start(
        self,
        ctx: Ctx,
        route_plugins: Mapping[str, Any] | None = None,
        global_rules: Sequence[Mapping[str, Any]] = (),
        *,
        plan: Plan | None = None,
    ) -> Execution:
        """Begin running the plugins of one request."""
        if plan is None:
            plan = self.plan(route_plugins, global_rules)
        return Execution(self, ctx, plan)


NATIVE_LIMITER_PRIORITY = 1002
"""On the native engine the limiters (limit-conn 1003, limit-count 1002, limit-req 1001) run
in Rust as one block at this access priority: Python ``access`` plugins of higher priority
run before them, lower ones (and ``before_proxy``) after, in a second crossing."""


class Execution:
    """The plugin run of one request: phases in order, the debug trace, the response."""

    # One per request: slots make it cheaper to create and to read.
    __slots__ = ("consumer_merged", "ctx", "pipeline", "plan", "response", "stage", "trace")

    def __init__(self, pipeline: Pipeline, ctx: Ctx, plan: Plan) -> None:
        self.pipeline = pipeline
        self.ctx = ctx
        self.plan = plan
        self.trace: list[tuple[str, str]] = []
        """(name, phase) of every plugin phase that ran, in order."""
        self.response: PluginResponse | None = None
        """The response that ended the request (a plugin's or an error), if any."""
        self.consumer_merged = False
        self.stage = 0
        """0: every access plugin runs; 1: those above the native limiters only; 2: those
        below only (see :data:`NATIVE_LIMITER_PRIORITY`)."""

    # -- helpers ------------------------------------------------------------------------

    def _filter_ok(self, step: Step) -> bool:
        if step.filter is _NO_FILTER:
            return True
        var = self.ctx.var
        try:
            return expr.evaluate(step.filter, var.get)
        except Exception as err:
            step.logger.warning("failed to evaluate the 'vars' expression: %s", err)
            return True

    def _enter(self, step: Step, phase: str) -> None:
        ctx = self.ctx
        ctx.plugin_name = step.name
        ctx.plugin_global = step.global_rule
        ctx.log = step.logger
        if phase in REQUEST_PHASES or phase == "header_filter":
            self.trace.append((step.name, phase))

    def _timeout(self) -> float | None:
        t = self.pipeline.plugin_timeout
        return t if t and t > 0 else None

    def _run_sync_coro(self, coro: Awaitable[Any]) -> Any:
        async def runner() -> Any:
            return await asyncio.wait_for(coro, self._timeout())

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(runner())
        if asyncio.iscoroutine(coro):
            coro.close()
        raise RuntimeError(
            "async plugin phase called from run_phase() inside an event loop; "
            "use await run_phase_async()"
        )

    def _failure(self, step: Step, phase: str, err: BaseException) -> PluginResponse:
        if isinstance(err, RequestBodyTooLarge):
            step.logger.warning("%s: %s", phase, err)
            return PluginResponse.error(413, "413 Request Entity Too Large", step.name, phase)
        if isinstance(err, (asyncio.TimeoutError, TimeoutError)):
            step.logger.error("%s timed out after %ss", phase, self.pipeline.plugin_timeout)
            return PluginResponse.error(504, "plugin timeout", step.name, phase)
        step.logger.error("%s failed", phase, exc_info=err)
        return PluginResponse.error(500, "internal error", step.name, phase)

    def _result(self, step: Step, phase: str, value: Any) -> PluginResponse | None:
        if value is None or phase not in REQUEST_PHASES:
            return None
        try:
            return normalize_response(
                value, error_response=step.error_response, plugin=step.name, phase=phase
            )
        except TypeError as err:
            step.logger.error("%s: bad return value: %s", phase, err)
            return PluginResponse.error(500, "internal error", step.name, phase)

    def _request_steps(self, phase: str) -> tuple[Step, ...]:
        if self.stage == 0 or phase != "access":
            return self.plan.steps(phase)
        return self.plan.access_split(self.stage)[0]

    def late_pending(self) -> bool:
        """After stage 1: is there anything left for after the native limiters?"""
        return self.plan.access_split(1)[1]

    def _consumer_steps(self) -> tuple[Step, ...] | None:
        """Merge the consumer's plugins (after rewrite); the steps of ``rewrite_in_consumer``."""
        if self.consumer_merged:
            return None
        consumer = self.ctx.consumer
        if consumer is None:
            return None
        self.consumer_merged = True
        cons = consumer.get("plugins")
        group_id = getattr(self.ctx, "consumer_group_id", None) or consumer.get("group_id")
        group_conf = self.pipeline.consumer_groups.get(group_id) if group_id else None
        group = group_conf.get("plugins") if group_conf else None
        if not cons and not group:
            return None
        self.plan = self.pipeline.consumer_plan(self.plan, cons, group)
        return tuple(
            s
            for s in self.plan.route_phase.get("rewrite", ())
            if s.from_consumer and s.plugin.type != "auth"
        )

    def merge_consumer(self) -> None:
        """Overlay consumer-group and consumer plugins now (done after ``rewrite``)."""
        self._consumer_steps()

    # -- sync ---------------------------------------------------------------------------

    def _call_sync(self, step: Step, phase: str, *args: Any) -> tuple[Any, PluginResponse | None]:
        fn, asynchronous = step.methods[phase]
        self._enter(step, phase)
        try:
            if asynchronous:
                return self._run_sync_coro(fn(step.conf, self.ctx, *args)), None
            return fn(step.conf, self.ctx, *args), None
        except Exception as err:
            return None, self._failure(step, phase, err)

    def _steps_sync(self, phase: str, steps: Iterable[Step]) -> PluginResponse | None:
        # The hot path of every sync plugin call: _enter and _call_sync inlined.
        request = phase in REQUEST_PHASES
        traced = request or phase == "header_filter"
        ctx, trace = self.ctx, self.trace
        for step in steps:
            if step.filter is not _NO_FILTER and not self._filter_ok(step):
                continue
            fn, asynchronous = step.methods[phase]
            ctx.plugin_name = step.name
            ctx.plugin_global = step.global_rule
            ctx.log = step.logger
            if traced:
                trace.append((step.name, phase))
            try:
                value = fn(step.conf, ctx)
                if asynchronous:
                    value = self._run_sync_coro(value)
            except Exception as err:
                failure = self._failure(step, phase, err)
                if request:
                    return failure
                continue
            if value is not None:
                resp = self._result(step, phase, value)
                if resp is not None:
                    return resp
        return None

    def run_phase(self, phase: str) -> PluginResponse | None:
        """Run ``phase`` (global rules first); return the response ending the request, if any.

        Async phase methods are run to completion with :func:`asyncio.run` (only outside an
        event loop); engines with a loop use :meth:`run_phase_async`.
        """
        if phase not in PHASES or phase == "body_filter":
            raise ValueError(f"not a phase run_phase can run: {phase!r}")
        if phase in REQUEST_PHASES and self.response is not None:
            return self.response
        resp = self._steps_sync(phase, self._request_steps(phase))
        if resp is None and phase == "rewrite":
            consumer_steps = self._consumer_steps()
            if consumer_steps:
                resp = self._steps_sync("rewrite", consumer_steps)
        if resp is not None:
            self.response = resp
        return resp

    def run_flat(self, pairs: tuple[tuple[str, Step], ...]) -> PluginResponse | None:
        """The request phases of a plan without rewrite, async or filtered steps, given as
        :meth:`Plan.flat_request_steps`: what :meth:`run_phases` does for them, in one loop
        (the hot path of a sync plugin)."""
        ctx, trace = self.ctx, self.trace
        for phase, step in pairs:
            ctx.plugin_name = step.name
            ctx.plugin_global = step.global_rule
            ctx.log = step.logger
            trace.append((step.name, phase))
            try:
                value = step.methods[phase][0](step.conf, ctx)
            except Exception as err:
                self.response = self._failure(step, phase, err)
                return self.response
            if value is not None:
                resp = self._result(step, phase, value)
                if resp is not None:
                    self.response = resp
                    return resp
        return None

    def run_phases(self, phases: Iterable[str] = REQUEST_PHASES) -> PluginResponse | None:
        """Run phases in order, stopping at the first response."""
        for phase in phases:
            resp = self.run_phase(phase)
            if resp is not None:
                return resp
        return None

    def body_filter(self, chunk: bytes, eof: bool) -> bytes:
        """Pass a response body chunk through every plugin's ``body_filter``."""
        for step in self.plan.steps("body_filter"):
            if not self._filter_ok(step):
                continue
            value, failure = self._call_sync(step, "body_filter", chunk, eof)
            chunk = self._chunk(step, chunk, value, failure)
        return chunk

    @staticmethod
    def _chunk(step: Step, chunk: bytes, value: Any, failure: PluginResponse | None) -> bytes:
        if failure is not None or value is None:
            return chunk
        if isinstance(value, str):
            return value.encode()
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        step.logger.error("body_filter returned %s, not bytes; chunk kept", type(value).__name__)
        return chunk

    # -- async --------------------------------------------------------------------------

    async def _call_async(
        self, step: Step, phase: str, *args: Any
    ) -> tuple[Any, PluginResponse | None]:
        fn, asynchronous = step.methods[phase]
        self._enter(step, phase)
        try:
            if asynchronous:
                return await asyncio.wait_for(fn(step.conf, self.ctx, *args), self._timeout()), None
            return fn(step.conf, self.ctx, *args), None
        except Exception as err:
            return None, self._failure(step, phase, err)

    async def _steps_async(self, phase: str, steps: Iterable[Step]) -> PluginResponse | None:
        request = phase in REQUEST_PHASES
        for step in steps:
            if not self._filter_ok(step):
                continue
            value, failure = await self._call_async(step, phase)
            if failure is not None:
                if request:
                    return failure
                continue
            resp = self._result(step, phase, value)
            if resp is not None:
                return resp
        return None

    async def run_phase_async(self, phase: str) -> PluginResponse | None:
        """:meth:`run_phase` awaiting async phase methods (``plugin_timeout`` each → 504)."""
        if phase not in PHASES or phase == "body_filter":
            raise ValueError(f"not a phase run_phase_async can run: {phase!r}")
        if phase in REQUEST_PHASES and self.response is not None:
            return self.response
        resp = await self._steps_async(phase, self._request_steps(phase))
        if resp is None and phase == "rewrite":
            consumer_steps = self._consumer_steps()
            if consumer_steps:
                resp = await self._steps_async("rewrite", consumer_steps)
        if resp is not None:
            self.response = resp
        return resp

    async def run_phases_async(
        self, phases: Iterable[str] = REQUEST_PHASES
    ) -> PluginResponse | None:
        for phase in phases:
            resp = await self.run_phase_async(phase)
            if resp is not None:
                return resp
        return None

    async def body_filter_async(self, chunk: bytes, eof: bool) -> bytes:
        for step in self.plan.steps("body_filter"):
            if not self._filter_ok(step):
                continue
            value, failure = await self._call_async(step, "body_filter", chunk, eof)
            chunk = self._chunk(step, chunk, value, failure)
        return chunk

    # -- debug --------------------------------------------------------------------------

    def debug_entries(self) -> list[str]:
        """``name#phase`` entries: what ran so far plus the ``body_filter`` / ``log`` phases
        still to come (inferred from the plan, as APISIX does)."""
        entries = [f"{name}#{phase}" for name, phase in self.trace]
        for phase in ("body_filter", "log"):
            entries.extend(
                f"{s.name}#{phase}" for s in self.plan.steps(phase) if self._filter_ok(s)
            )
        return entries

    def debug_header(self) -> str:
        """The value of the ``Apisix-Plugins`` debug header."""
        entries = self.debug_entries()
        return ", ".join(entries) if entries else "no plugin"
