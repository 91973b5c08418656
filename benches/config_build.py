"""How long validating and building a standalone config takes, per route.

    python benches/config_build.py [--routes 5000] [--rounds 5]

Builds (validates, with schema defaults) an APISIX standalone config of ``--routes`` routes,
each with an inline upstream, hosts and methods, every other one with a limit-count, the
way ``pygateway run --routes FILE`` and a store resync do, and prints the median time of
the rounds and the time per route. No network, no data plane.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from pygateway.config import build_config
from pygateway.plugin import PluginRegistry, RegistryCatalog


def config(n: int) -> dict[str, Any]:
    routes = []
    for i in range(n):
        route: dict[str, Any] = {
            "id": str(i),
            "uri": f"/r/{i}/*",
            "methods": ["GET", "POST"],
            "hosts": ["a.example.com"],
            "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}},
        }
        if i % 2:
            route["plugins"] = {"limit-count": {"count": 100, "time_window": 60}}
        routes.append(route)
    return {"routes": routes}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--routes", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    catalog = RegistryCatalog(PluginRegistry([], builtins=True))
    took = []
    for _ in range(args.rounds):
        data = config(args.routes)
        started = time.perf_counter()
        built = build_config(data, source="<bench>", catalog=catalog)
        took.append(time.perf_counter() - started)
        assert len(built.routes) == args.routes
    median = statistics.median(took)
    print(
        f"{args.routes} routes: {median:.3f} s per build (median of {args.rounds}; "
        f"min {min(took):.3f}, max {max(took):.3f}), {median / args.routes * 1e6:.0f} µs per route"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
