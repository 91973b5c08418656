"""Plugins the benchmark loads through ``plugin_paths``: one Python phase call each."""

from __future__ import annotations

from typing import Any

from pygateway.plugin import Plugin


class BenchSetHeader(Plugin):
    """A sync ``access`` phase that sets one upstream request header."""

    name = "bench-set-header"
    priority = 0

    def access(self, conf: dict[str, Any], ctx: Any) -> None:
        ctx.set_header("X-Bench", "1")


class BenchAsyncHeader(Plugin):
    """The same as an ``async def`` phase (run as a task on the plugin thread's loop)."""

    name = "bench-async-header"
    priority = 0

    async def access(self, conf: dict[str, Any], ctx: Any) -> None:
        ctx.set_header("X-Bench", "1")
