#!/usr/bin/env python3
"""Route churn: does changing routes through the Admin API disturb the traffic being served?

    python benches/churn.py [--duration 8] [--rounds 3] [--interval 0.1]

Starts the origin and the native gateway with the Admin API on (embedded store in the run's
temporary folder, config seeded from benches/config/proxy.yaml through the Admin API), then
loads the served route in interleaved rounds of seven runs:

- `steady`: no writes;
- `cpu-1ms`: no writes; a separate process burns 1 ms of CPU every `--interval`: what any
  burst of that size (about an Admin API write's CPU in the node) costs on these shared CPUs;
- `client-only`: the same PUTs, every `--interval`, sent to the origin instead (nginx answers
  200): what the writing client itself costs on these shared CPUs, no change to the gateway;
- `python-401`: the same PUTs to a separate aiohttp server that answers 401: what any Python
  HTTP server answering them costs the traffic;
- `refused`: the same PUTs to the gateway's Admin API with a wrong key (answered 401, nothing
  written): what the Admin API answering HTTP costs, without the write path;
- `churn-other`: a side thread PUTs another route (a new `uri` each time) every `--interval`;
- `churn-served`: it PUTs the served route itself with a changed field (`desc`).

Two loads, each in interleaved rounds of the seven runs (`--loop`, default both):

- closed loop: wrk at saturation (`-t1 -c50`), as bench.py: req/s, p50, p99;
- open loop: `benches/openloop` at a fixed rate below the knee (`--rate`, or `--rate-fraction`
  (0.25) of the steady closed-loop req/s), every request's latency counted from its due time:
  p50, p99, p99.9. Latency at saturation moves with anything else the two CPUs run; at a fixed
  rate it shows what a write does to requests that do not queue behind each other.

Reports, per load, each run's medians and errors, the p99 ratio to `steady` (and to
`client-only`) and the target: p99 within 20% of steady, zero errors (the load generator's and
the Admin API's). Raw rounds go to `benches/results/route-churn-<timestamp>.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench
import engines
from bench import BenchError, Scenario, Target, log

SCENARIO = Scenario(
    name="route-churn",
    description="one catch-all route to the origin, served while the Admin API changes routes",
    targets=("pygw-admin",),
    reference="steady",
    routes="proxy.yaml",
)
GATEWAY = Target(
    "pygw-admin",
    bench.GATEWAY_PORT + 5,
    "gateway",
    description="pygateway native, Admin API on, embedded store (config written through it)",
    admin_port=bench.GATEWAY_PORT + 95,
)
SERVED_ROUTE_ID = "bench-proxy"  # the id in proxy.yaml
P99_TOLERANCE = 0.20


def served_route(k: int) -> dict[str, Any]:
    """proxy.yaml's route, with a field that changes at every write."""
    return {
        "uri": "/*",
        "desc": f"churn write {k}",
        "upstream": {"type": "roundrobin", "nodes": {f"{bench.HOST}:{bench.ORIGIN_PORT}": 1}},
    }


def other_route(k: int) -> dict[str, Any]:
    """A route beside the served one, its uri changing at every write."""
    return {
        "uri": f"/churn/{k}",
        "upstream": {"type": "roundrobin", "nodes": {f"{bench.HOST}:{bench.ORIGIN_PORT}": 1}},
    }


def extra_route(n: int) -> dict[str, Any]:
    """One of the `--extra-routes`: a size a real store has, with a plugin to plan."""
    return {
        "uri": f"/extra/{n}/*",
        "plugins": {"limit-count": {"count": 1000, "time_window": 60}} if n % 4 == 0 else {},
        "upstream": {"type": "roundrobin", "nodes": {f"{bench.HOST}:{bench.ORIGIN_PORT}": 1}},
    }


SINK = "client-only"
"""The run with the same PUTs sent to the origin instead: the writing client's own cost on
these shared CPUs, with no change to the gateway."""

REFUSED = "refused"
"""The run with the same PUTs sent to the gateway's Admin API with a wrong key: answered 401
before the store or the routes are touched. Against `client-only`, what answering HTTP on the
Admin API costs the traffic; against the churn runs, what a write itself adds."""

WRONG_KEY = "churn-wrong-key-0123456789"

PYTHON_401 = "python-401"
"""The run with the same PUTs sent to a separate aiohttp server answering 401 (the Admin API's
refusal, in a process of its own): what any Python HTTP server answering these requests costs
the traffic on these shared CPUs, against `refused` (the gateway's own Admin API doing it)."""
PYTHON_401_PORT = bench.GATEWAY_PORT + 96
PYTHON_401_CODE = """
import sys
from aiohttp import web

async def refuse(request):
    await request.read()
    body = {"error_msg": "failed to check token", "description": "wrong apikey"}
    return web.json_response(body, status=401)

app = web.Application()
app.router.add_route("*", "/{tail:.*}", refuse)
web.run_app(app, host=sys.argv[1], port=int(sys.argv[2]), access_log=None, print=None)
"""

SPIN = "cpu-1ms"
"""The run with no PUT at all: a separate process burns 1 ms of CPU every interval (at the
servers' priority). What any 10 Hz burst of that size, unrelated to the gateway, costs the
traffic on these shared CPUs; an Admin API write takes about as much CPU in the node."""
SPIN_MS = 1.0


@dataclass(frozen=True)
class Writes:
    """The PUTs of one run: ``body(k)`` to routes/``route_id`` every interval."""

    route_id: str
    body: Callable[[int], dict[str, Any]]
    to: str = "gateway"  # or "origin" (nginx), or PYTHON_401 (a separate aiohttp server)
    key: str | None = None  # None: the run's admin key
    expect: tuple[int, ...] = (200, 201)


@dataclass(frozen=True)
class Spin:
    """No writes: a child process busy for ``ms`` of CPU every interval."""

    ms: float


CHANGES: dict[str, Writes | Spin | None] = {
    "steady": None,
    SPIN: Spin(SPIN_MS),
    SINK: Writes("churn-other", other_route, to="origin"),
    PYTHON_401: Writes("churn-other", other_route, to=PYTHON_401, expect=(401,)),
    REFUSED: Writes("churn-other", other_route, key=WRONG_KEY, expect=(401,)),
    "churn-other": Writes("churn-other", other_route),
    "churn-served": Writes(SERVED_ROUTE_ID, served_route),
}
REFERENCES = ("steady", SPIN, SINK, PYTHON_401, REFUSED)
"""Runs that change nothing in the gateway: no target applies to them."""


class Churner:
    """PUTs `body(k)` to routes/`route_id` every `interval` seconds on a thread, on a fixed
    schedule (a slow write does not push the next ones back), until stopped."""

    def __init__(self, port: int, writes: Writes, interval: float, nice: int) -> None:
        self.port, self.writes = port, writes
        self.interval, self.nice = interval, nice
        self.stop_event = threading.Event()
        self.latencies_ms: list[float] = []
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self._run, name="churn", daemon=True)

    def _run(self) -> None:
        if self.nice:
            # The Admin API's client stands in for a remote one: on these shared CPUs it
            # yields to the servers (Linux: the nice value of this thread only).
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
        start, k = time.monotonic(), 0
        while not self.stop_event.wait(max(0.0, start + k * self.interval - time.monotonic())):
            t0 = time.perf_counter()
            try:
                w = self.writes
                status, body = bench.admin_request(
                    self.port, "PUT", f"routes/{w.route_id}", w.body(k), key=w.key
                )
            except OSError as e:
                self.failures.append(f"PUT {k}: {type(e).__name__}: {e}")
            else:
                if status not in self.writes.expect:
                    self.failures.append(f"PUT {k}: {status} {body[:200]!r}")
            self.latencies_ms.append((time.perf_counter() - t0) * 1e3)
            k += 1

    def __enter__(self) -> Churner:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)


Measure = Callable[[], dict[str, Any]]


def closed_loop(args: argparse.Namespace, prefix: list[str]) -> Measure:
    """One wrk run on the served route, as bench.py runs it."""
    return lambda: bench.run_wrk(
        GATEWAY.port, SCENARIO.path, args.duration, args.connections, args.threads, prefix
    )


def open_loop(args: argparse.Namespace, prefix: list[str], rate: float) -> Measure:
    """One open-loop run at `rate` on the served route; errors count what was not sent."""
    binary = engines.openloop_binary()

    def run() -> dict[str, Any]:
        res = engines.run_openloop(
            binary, GATEWAY.port, SCENARIO.path, rate, args.duration, args.ol_connections, prefix
        )
        res["errors"] = res["errors"] + res["non_2xx_3xx"] + res["unsent"]
        return res

    return run


SPIN_CODE = """
import sys, time
interval, busy = float(sys.argv[1]), float(sys.argv[2]) / 1e3
print("ready", flush=True)
start, k = time.monotonic(), 0
while True:
    time.sleep(max(0.0, start + k * interval - time.monotonic()))
    t = time.thread_time()
    while time.thread_time() - t < busy:
        pass
    k += 1
"""


@contextlib.contextmanager
def spinning(spin: Spin, interval: float) -> Iterator[None]:
    """A child process burning ``spin.ms`` of CPU every ``interval`` until the block ends;
    started (the interpreter's start-up is not in the measured run) before the block runs."""
    child = subprocess.Popen(
        [sys.executable, "-c", SPIN_CODE, f"{interval:g}", f"{spin.ms:g}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise BenchError("the cpu-1ms process did not start")
        yield
    finally:
        child.kill()
        child.wait()


@contextlib.contextmanager
def python_401(ready_timeout: float) -> Iterator[int]:
    """A separate aiohttp server answering every request 401, for one run: its port."""
    bench.check_ports_free([PYTHON_401_PORT])
    child = subprocess.Popen(
        [sys.executable, "-c", PYTHON_401_CODE, bench.HOST, str(PYTHON_401_PORT)],
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            try:
                status, _ = bench.admin_request(PYTHON_401_PORT, "GET", "routes")
            except OSError:
                status = 0
            if status == 401:
                break
            if child.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the {PYTHON_401} server did not start (needs aiohttp)")
            time.sleep(0.1)
        yield PYTHON_401_PORT
    finally:
        child.kill()
        child.wait()


def load(run_name: str, args: argparse.Namespace, measure: Measure) -> dict[str, Any]:
    """One measured run on the gateway, with the writes of `run_name` going on meanwhile."""
    writes = CHANGES[run_name]
    if not isinstance(writes, Writes):
        with spinning(writes, args.interval) if writes else contextlib.nullcontext():
            res = measure()
        return {**res, "puts": 0, "put_failures": [], "put_ms_p50": None, "put_ms_max": None}
    with contextlib.ExitStack() as stack:
        if writes.to == PYTHON_401:
            port = stack.enter_context(python_401(args.ready_timeout))
        else:
            port = bench.ORIGIN_PORT if writes.to == "origin" else GATEWAY.admin_port
        churner = stack.enter_context(Churner(port, writes, args.interval, args.client_nice))
        res = measure()
    lat = churner.latencies_ms
    return {
        **res,
        "puts": len(lat),
        "put_failures": churner.failures,
        "put_ms_p50": round(statistics.median(lat), 3) if lat else None,
        "put_ms_max": round(max(lat), 3) if lat else None,
    }


def interleaved(label: str, args: argparse.Namespace, measure: Measure) -> list[dict[str, Any]]:
    """`--rounds` rounds of every run in CHANGES, one after the other."""
    rounds: list[dict[str, Any]] = []
    for i in range(1, args.rounds + 1):
        for name in CHANGES:
            res = load(name, args, measure)
            res.update(target=name, round=i)
            rounds.append(res)
            rps = f"{res['rps']:,.0f} req/s " if "rps" in res else ""
            log(
                f"{label} round {i}/{args.rounds} {name}: {rps}"
                f"p99 {bench.fmt_ms(res['p99_ms'])} errors {res['errors']} "
                f"PUTs {res['puts']} (failed {len(res['put_failures'])})"
            )
    return rounds


def summarize(rounds: list[dict[str, Any]], closed: bool) -> dict[str, dict[str, Any]]:
    """Medians per run; an open-loop run has no req/s of its own (the rate is fixed)."""
    if closed:
        summary = bench.summarize(list(CHANGES), rounds, "steady")
    else:
        summary = {}
        for name in CHANGES:
            rs = [r for r in rounds if r["target"] == name]
            summary[name] = {
                "rounds": len(rs),
                **{
                    f"{k}_median": round(statistics.median(r[k] for r in rs), 4)
                    for k in ("p50_ms", "p99_ms", "p999_ms", "achieved_rps")
                },
                "errors": sum(r["errors"] for r in rs),
            }
        ref = summary["steady"]["p99_ms_median"]
        for s in summary.values():
            s["p99_vs_reference"] = round(s["p99_ms_median"] / ref, 4) if ref else None
    for name, s in summary.items():
        rs = [r for r in rounds if r["target"] == name]
        s["puts"] = sum(r["puts"] for r in rs)
        s["put_failures"] = sum(len(r["put_failures"]) for r in rs)
        s["put_ms_p50_max"] = max((r["put_ms_p50"] or 0.0) for r in rs)
        s["put_ms_max"] = max((r["put_ms_max"] or 0.0) for r in rs)
        sink = summary[SINK]["p99_ms_median"]
        s["p99_vs_client_only"] = round(s["p99_ms_median"] / sink, 4) if sink else None
        p99 = s["p99_vs_reference"]
        s["met"] = (
            s["errors"] == 0
            and s["put_failures"] == 0
            and (p99 is not None and p99 <= 1 + P99_TOLERANCE)
        )
    return summary


def render_table(summary: dict[str, dict[str, Any]], closed: bool) -> str:
    fmt = bench.fmt_ms
    load = "req/s | p50 | p99 | wrk errors" if closed else "p50 | p99 | p99.9 | errors"
    lines = [
        f"| run | {load} | PUTs (failed) | PUT p50 / max "
        "| p99 vs steady | p99 vs client-only | target met |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, s in summary.items():
        puts = f"{s['puts']} ({s['put_failures']})" if s["puts"] else "-"
        put_ms = f"{s['put_ms_p50_max']:.1f} / {s['put_ms_max']:.1f} ms" if s["puts"] else "-"
        changes = name not in REFERENCES
        met = ("yes" if s["met"] else "**NO**") if changes else ""
        vs_sink = f"{s['p99_vs_client_only']:.2f}x" if changes else ""
        if closed:
            figures = (
                f"{s['rps_median']:,.0f} | {fmt(s['p50_ms_median'])} "
                f"| {fmt(s['p99_ms_median'])} | {s['errors']}"
            )
        else:
            figures = (
                f"{fmt(s['p50_ms_median'])} | {fmt(s['p99_ms_median'])} "
                f"| {fmt(s['p999_ms_median'])} | {s['errors']}"
            )
        lines.append(
            f"| {name} | {figures} | {puts} | {put_ms} "
            f"| {s['p99_vs_reference']:.2f}x | {vs_sink} | {met} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="wrk on the native gateway while the Admin API changes routes, against "
        "the same load without changes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--loop",
        choices=("closed", "open", "both"),
        default="both",
        help="closed: wrk at saturation; open: benches/openloop at a fixed rate",
    )
    p.add_argument("--duration", type=int, default=8, help="seconds per run")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the four runs")
    p.add_argument("--warmup", type=int, default=2, help="seconds of discarded warm-up (0: none)")
    p.add_argument("--workers", type=int, default=1, help="pygateway --workers")
    p.add_argument("--interval", type=float, default=0.1, help="seconds between two PUTs")
    p.add_argument(
        "--extra-routes",
        type=int,
        default=0,
        help="routes stored beside the served one (/extra/<n>, never requested)",
    )
    p.add_argument(
        "--client-nice",
        type=int,
        default=0,
        help="nice value of the thread sending the PUTs (0: same priority as the servers)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="open-loop req/s (default: --rate-fraction of steady's closed-loop req/s)",
    )
    p.add_argument("--rate-fraction", type=float, default=0.25)
    p.add_argument(
        "--ol-connections", type=int, default=50, help="open-loop keep-alive connections"
    )
    p.add_argument("--ready-timeout", type=float, default=20.0)
    p.add_argument("--pin", action="store_true", help="taskset: wrk on CPU 0, servers on others")
    p.add_argument("--install", action="store_true", help="apt-get install nginx/wrk if missing")
    p.add_argument("--output", type=Path, default=None, help="JSON path")
    args = p.parse_args(argv)
    for flag in ("duration", "connections", "threads", "rounds", "workers"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be >= 1")
    if args.warmup < 0 or args.interval <= 0 or args.extra_routes < 0:
        p.error("--warmup and --extra-routes must be >= 0 and --interval > 0")
    if not 0 <= args.client_nice <= 19:
        p.error("--client-nice must be in 0..19")
    if (args.rate is not None and args.rate <= 0) or not 0 < args.rate_fraction <= 1:
        p.error("--rate must be > 0 and --rate-fraction in (0, 1]")
    if args.loop == "open" and args.rate is None:
        p.error("--loop open needs --rate (the default rate comes from the closed loop)")
    args.gateway_cmd = bench.DEFAULT_GATEWAY_CMD  # unused: admin gateways have their own
    return args


def run(args: argparse.Namespace) -> int:
    shared = bench.shared_bench_dir()
    bench.check_tools([GATEWAY], args.pin, args.install)
    wrk_prefix, server_prefix, pin_note = bench.pin_prefixes(args.pin)
    machine = bench.machine_info()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    closed: list[dict[str, Any]] = []
    opened: list[dict[str, Any]] = []
    rate = args.rate
    with bench.serving(SCENARIO, [GATEWAY], args, shared, server_prefix) as served:
        for n in range(args.extra_routes):
            status, body = bench.admin_request(
                GATEWAY.admin_port, "PUT", f"routes/extra-{n}", extra_route(n)
            )
            if status not in (200, 201):
                raise BenchError(f"PUT routes/extra-{n} answered {status}: {body[:300]!r}")
        bench.warm_up([GATEWAY], SCENARIO.path, args, wrk_prefix)
        if args.loop != "open":
            closed = interleaved("closed loop", args, closed_loop(args, wrk_prefix))
        if args.loop != "closed":
            if rate is None:
                steady = statistics.median(r["rps"] for r in closed if r["target"] == "steady")
                rate = round(args.rate_fraction * steady)
            opened = interleaved(
                f"open loop at {rate:,.0f} req/s", args, open_loop(args, wrk_prefix, rate)
            )
        # The last write of the served route must be what the store holds now.
        status, body = bench.admin_request(GATEWAY.admin_port, "GET", f"routes/{SERVED_ROUTE_ID}")
        if status != 200 or b"churn write" not in body:
            raise BenchError(f"the served route was not updated: {status} {body[:300]!r}")

    loads = {"closed": closed, "open": opened}
    summaries = {k: summarize(rs, k == "closed") for k, rs in loads.items() if rs}
    tables = {k: render_table(s, k == "closed") for k, s in summaries.items()}
    mline = (
        bench.machine_line(machine, args, pin_note)
        + f"; one PUT every {args.interval:g}s; {args.extra_routes} extra routes stored"
        + f"; PUT client at nice {args.client_nice}"
        + (
            f"; open loop: benches/openloop at {rate:,.0f} req/s, {args.ol_connections} "
            f"connections, {args.duration}s per run"
            if opened
            else ""
        )
    )
    print(f"\n### Route churn: {SCENARIO.description}\n")
    for k, table in tables.items():
        title = "Closed loop (wrk)" if k == "closed" else f"Open loop at {rate:,.0f} req/s"
        print(f"{title}:\n\n{table}\n")
    print(
        f"Target: p99 within {P99_TOLERANCE:.0%} of steady and zero errors while a route is "
        f"written every {args.interval * 1000:g} ms.\n\n{mline}"
    )
    bench.write_json(
        {
            "scenario": SCENARIO.name,
            "description": SCENARIO.description,
            "timestamp": stamp,
            "machine": machine,
            "machine_line": mline,
            "params": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "gateway_command": served.commands.get(GATEWAY.name),
            "open_loop_rate": rate if opened else None,
            "summary": summaries.get("closed"),
            "open_loop_summary": summaries.get("open"),
            "table_markdown": tables.get("closed"),
            "open_loop_table_markdown": tables.get("open"),
            "rounds": closed,
            "open_loop_rounds": opened,
        },
        args.output or bench.RESULTS_DIR / f"route-churn-{stamp}.json",
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return bench.run_command(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
