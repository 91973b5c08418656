"""The Python cost of one plugin crossing, without the network: the plugin runner's work for
one request whose route has one sync ``access`` plugin (``bench-set-header``), driven by a
stand-in job that answers the runner's questions as the native job does.

    python benches/plugin_cost.py [--requests 50000] [--rounds 7]

Prints the median µs per request over the rounds: this is the CPU the plugin thread spends
per request (building the lazy ctx, planning, calling the plugin, replying), i.e. the added
cost of one Python phase call on the plugin thread. The data-plane side of a crossing (the
job, two thread hand-offs) is what the `plugin` scenario of bench.py adds on top.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent / "plugins"))

from bench_plugins import BenchSetHeader
from pygateway.pipeline import Pipeline
from pygateway.plugin import PluginRegistry
from pygateway.runner import PluginRunner, PluginView


class StandInJob:
    """What the runner reads of a native job for this route, and records its answer."""

    __slots__ = ("answer", "request_id")
    phase = "request"
    route_id = "1"
    method = "GET"
    path = "/hello"
    query = None
    host = "127.0.0.1"
    remote_addr = "127.0.0.1"
    server_port = 9080
    request_uri = "/hello"
    status = None

    def __init__(self, request_id: int) -> None:
        self.request_id = request_id
        self.answer: Any = None

    def headers(self) -> list[tuple[str, str]]:
        return [("host", "127.0.0.1:9080"), ("user-agent", "wrk"), ("accept", "*/*")]

    def params(self) -> list[tuple[str, str]]:
        return []

    def proceed(self, *args: Any) -> None:
        self.answer = args

    def respond(self, *args: Any) -> None:
        self.answer = args


class NoPlane:
    """The plane: not used while the runner dispatches jobs."""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=50_000)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    registry = PluginRegistry([], builtins=False, entry_points=False)
    registry.register(BenchSetHeader)
    runner = PluginRunner(NoPlane(), Pipeline(registry, skip_native=True))  # type: ignore[arg-type]
    plugins = {"bench-set-header": {}}
    runner.view = PluginView(routes={"1": {"id": "1", "plugins": plugins}})
    job = StandInJob(0)
    runner._dispatch(job)  # type: ignore[arg-type]
    assert job.answer[0] == [("X-Bench", "1")], job.answer  # the plugin ran and answered
    per_request = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        for i in range(args.requests):
            runner._dispatch(StandInJob(i))  # type: ignore[arg-type]
        per_request.append((time.perf_counter() - started) / args.requests * 1e6)
    print(
        f"one sync access plugin: {statistics.median(per_request):.2f} µs per request "
        f"on the plugin thread (median of {args.rounds} rounds of {args.requests}; "
        f"min {min(per_request):.2f}, max {max(per_request):.2f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
