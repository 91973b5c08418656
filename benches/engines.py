#!/usr/bin/env python3
"""The engines suite: native and python engines against the peers, closed and open loop.

    python benches/engines.py [--duration 8] [--rounds 3] [--rate REQ_PER_S] [--pin]

One session, three scenarios (bench.py's `proxy`, `limit`, `limit-plugin`), six targets each:
the origin alone, pygateway native, pygateway `--engine python`, nginx proxy_pass, nginx + Lua
limit counter, the plain aiohttp proxy. pygateway gets the scenario's routes file; the peers
run their fixed config (nginx-lua and aiohttp count every request in every scenario).

Per scenario: bench.py's closed loop (wrk, interleaved rounds, medians), then an open-loop run
per target and round at one fixed rate, the same for every target: `--rate`, or
`--rate-fraction` (0.8) of the slowest target's closed-loop req/s in that scenario. The open
loop is `benches/openloop` (built with cargo on first use): latency from each request's
intended send time, so a stall is not hidden by the load slowing down.

Prints a markdown table per scenario and the checks (native ≥ 8x the python engine's req/s in
every scenario; python engine ≥ the aiohttp proxy), writes every raw round to
`benches/results/engines-<timestamp>.json` and a chart (req/s, open-loop p99) next to it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bench
from bench import BenchError, Target, log

SUITE = ("proxy", "limit", "limit-plugin")
TARGET_NAMES = ("origin", "pygateway", "pygw-python", "nginx", "nginx-lua", "aiohttp")
NATIVE, PYTHON, AIOHTTP = "pygateway", "pygw-python", "aiohttp"
NATIVE_OVER_PYTHON_TARGET = 8.0
PEER_NOTE = (
    "nginx-lua and aiohttp run their own fixed config in every scenario: both count every "
    "request (a per-client fixed window) before proxying, even in `proxy`; nginx never counts."
)

OPENLOOP_DIR = bench.BENCH_DIR / "openloop"
OPENLOOP_BIN = OPENLOOP_DIR / "target" / "release" / "openloop"
OPENLOOP_TIMEOUT_S = 2.0


# --------------------------------------------------------------------------- open loop


def openloop_binary() -> Path:
    """The open-loop generator, built (release) if missing or older than its source."""
    sources = [OPENLOOP_DIR / "Cargo.toml", *(OPENLOOP_DIR / "src").glob("*.rs")]
    newest = max(p.stat().st_mtime for p in sources)
    if OPENLOOP_BIN.is_file() and OPENLOOP_BIN.stat().st_mtime >= newest:
        return OPENLOOP_BIN
    cmd = ["cargo", "build", "--release", "--manifest-path", str(OPENLOOP_DIR / "Cargo.toml")]
    log(f"building the open-loop generator: {shlex.join(cmd)}")
    try:
        subprocess.run(cmd, check=True, timeout=600, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as e:
        raise BenchError(f"cannot build benches/openloop ({shlex.join(cmd)}): {e}") from e
    return OPENLOOP_BIN


def run_openloop(
    binary: Path,
    port: int,
    path: str,
    rate: float,
    duration: int,
    connections: int,
    prefix: Sequence[str],
) -> dict[str, Any]:
    cmd = [
        *prefix,
        str(binary),
        "--url",
        f"http://{bench.HOST}:{port}{path}",
        "--rate",
        f"{rate:g}",
        "--duration",
        str(duration),
        "--connections",
        str(connections),
        "--timeout",
        f"{OPENLOOP_TIMEOUT_S:g}",
    ]
    limit = duration + 3 * OPENLOOP_TIMEOUT_S + 30
    try:
        r = subprocess.run(
            cmd, capture_output=True, text=True, timeout=limit, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"openloop did not finish in {limit:.0f}s: {shlex.join(cmd)}") from e
    if r.returncode != 0:
        raise BenchError(f"openloop failed ({r.returncode}): {shlex.join(cmd)}\n{r.stderr}")
    try:
        res: dict[str, Any] = json.loads(r.stdout)
    except ValueError as e:
        raise BenchError(f"openloop printed no JSON: {shlex.join(cmd)}\n{r.stdout}") from e
    res["command"] = shlex.join(cmd)
    return res


def open_loop_rounds(
    binary: Path,
    targets: Sequence[Target],
    path: str,
    rate: float,
    args: argparse.Namespace,
    prefix: Sequence[str],
) -> list[dict[str, Any]]:
    """`--rounds` interleaved open-loop runs at `rate`, one per target and round."""
    rounds: list[dict[str, Any]] = []
    for i in range(1, args.rounds + 1):
        for t in targets:
            res = run_openloop(
                binary, t.port, path, rate, args.ol_duration, args.ol_connections, prefix
            )
            res.update(target=t.name, round=i)
            rounds.append(res)
            bad = res["errors"] + res["non_2xx_3xx"] + res["unsent"]
            flag = f"  ERRORS/UNSENT: {bad}" if bad else ""
            log(
                f"open loop {i}/{args.rounds} {t.name} at {rate:,.0f} req/s: "
                f"p50 {bench.fmt_ms(res['p50_ms'])} p99 {bench.fmt_ms(res['p99_ms'])} "
                f"p99.9 {bench.fmt_ms(res['p999_ms'])}{flag}"
            )
    return rounds


# --------------------------------------------------------------------------- report


def summarize(
    names: Sequence[str],
    closed: list[dict[str, Any]],
    opened: list[dict[str, Any]],
    reference: str,
) -> dict[str, dict[str, Any]]:
    """bench.py's closed-loop summary plus the open-loop medians per target."""
    summary = bench.summarize(names, closed, reference)
    for name in names:
        rs = [r for r in opened if r["target"] == name]
        s = summary[name]
        for key in ("p50_ms", "p99_ms", "p999_ms", "send_lag_p99_ms"):
            s[f"ol_{key}_median"] = round(statistics.median(r[key] for r in rs), 4)
        s["ol_errors"] = sum(r["errors"] + r["non_2xx_3xx"] for r in rs)
        s["ol_unsent"] = sum(r["unsent"] for r in rs)
    return summary


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def render_table(summary: dict[str, dict[str, Any]], reference: str, rate: float) -> str:
    fmt = bench.fmt_ms

    def x(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}x"

    head = (
        f"| target | req/s | wrk p50 | wrk p99 | open p50 | open p99 | open p99.9 | errors "
        f"| req/s vs {reference} | open p99 vs {reference} |"
    )
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    ref = summary.get(reference)
    for name, s in summary.items():
        bad = s["errors"] + s["ol_errors"] + s["ol_unsent"]
        errors = (
            f"**FLAG: {s['errors']} wrk, {s['ol_errors']} open, {s['ol_unsent']} unsent**"
            if bad
            else "0"
        )
        p99_ratio = ratio(s["ol_p99_ms_median"], ref["ol_p99_ms_median"]) if ref else None
        lines.append(
            f"| {name} | {s['rps_median']:,.0f} | {fmt(s['p50_ms_median'])} "
            f"| {fmt(s['p99_ms_median'])} | {fmt(s['ol_p50_ms_median'])} "
            f"| {fmt(s['ol_p99_ms_median'])} | {fmt(s['ol_p999_ms_median'])} | {errors} "
            f"| {x(s['rps_vs_reference'])} | {x(p99_ratio)} |"
        )
    return "\n".join(lines) + f"\n\nOpen loop at {rate:,.0f} req/s for every target."


def checks(scenarios: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The suite's targets, per scenario: what was required, what was measured, met or not."""
    out = []
    for name, sc in scenarios.items():
        s = sc["summary"]
        if NATIVE in s and PYTHON in s:
            r = ratio(s[NATIVE]["rps_median"], s[PYTHON]["rps_median"])
            out.append(
                {
                    "scenario": name,
                    "check": f"native >= {NATIVE_OVER_PYTHON_TARGET:g}x python engine req/s",
                    "value": r,
                    "met": r is not None and r >= NATIVE_OVER_PYTHON_TARGET,
                }
            )
        if PYTHON in s and AIOHTTP in s:
            r = ratio(s[PYTHON]["rps_median"], s[AIOHTTP]["rps_median"])
            out.append(
                {
                    "scenario": name,
                    "check": "python engine >= aiohttp proxy req/s",
                    "value": r,
                    "met": r is not None and r >= 1.0,
                }
            )
    return out


def render_checks(results: list[dict[str, Any]]) -> str:
    lines = ["| scenario | check | measured | met |", "| --- | --- | ---: | --- |"]
    for c in results:
        value = "n/a" if c["value"] is None else f"{c['value']:.2f}x"
        lines.append(
            f"| {c['scenario']} | {c['check']} | {value} | {'yes' if c['met'] else '**NO**'} |"
        )
    return "\n".join(lines)


def ensure_matplotlib(install: bool) -> Any:
    """matplotlib's pyplot (Agg), pip-installed into this interpreter if missing and allowed."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        how = f"{sys.executable} -m pip install matplotlib  (or: pip install -e '.[bench]')"
        if not install:
            log(f"no chart: matplotlib is missing; install it with: {how}")
            return None
        cmd = [sys.executable, "-m", "pip", "install", "matplotlib"]
        log(f"matplotlib is missing; running: {shlex.join(cmd)}")
        try:
            subprocess.run(cmd, check=True, timeout=600, stdin=subprocess.DEVNULL)
            matplotlib = importlib.import_module("matplotlib")
        except (OSError, subprocess.SubprocessError, ImportError) as e:
            log(f"no chart: installing matplotlib failed ({e}); install it with: {how}")
            return None
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def draw_chart(plt: Any, scenarios: dict[str, dict[str, Any]], out: Path, title: str) -> None:
    """Two panels: closed-loop req/s and open-loop p99, grouped by scenario, a bar per target."""
    names = list(scenarios)
    targets = list(dict.fromkeys(t for sc in scenarios.values() for t in sc["summary"]))
    fig, axes = plt.subplots(2, 1, figsize=(11, 8), constrained_layout=True)
    width = 0.8 / max(len(targets), 1)
    panels = (
        ("rps_median", "req/s (closed loop, wrk)", False),
        ("ol_p99_ms_median", "p99 ms (open loop, fixed rate; log scale)", True),
    )
    for ax, (key, label, log_scale) in zip(axes, panels):
        for j, target in enumerate(targets):
            xs, ys = [], []
            for i, name in enumerate(names):
                s = scenarios[name]["summary"].get(target)
                if s is not None:
                    xs.append(i + (j - (len(targets) - 1) / 2) * width)
                    ys.append(s[key])
            ax.bar(xs, ys, width, label=target)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(
            [f"{n}\n(open loop at {scenarios[n]['rate']:,.0f} req/s)" for n in names]
        )
        ax.set_ylabel(label)
        if log_scale:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(ncol=len(targets), fontsize="small", loc="lower center", bbox_to_anchor=(0.5, 1))
    fig.suptitle(title, fontsize="medium")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"chart: {out}")


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="pygateway native vs python engine vs nginx, nginx+Lua and aiohttp: "
        "closed-loop req/s and open-loop latency at a fixed rate, three scenarios.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--scenarios", default=",".join(SUITE), help=f"comma-separated subset of {SUITE}"
    )
    p.add_argument(
        "--targets", default=",".join(TARGET_NAMES), help="comma-separated subset of the targets"
    )
    p.add_argument("--duration", type=int, default=8, help="seconds per wrk round")
    p.add_argument("--connections", type=int, default=50, help="wrk connections")
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (both loops)")
    p.add_argument("--warmup", type=int, default=2, help="seconds of discarded warm-up (0: none)")
    p.add_argument("--workers", type=int, default=1, help="pygateway --workers")
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="open-loop req/s for every target and scenario "
        "(default: --rate-fraction of the slowest target's req/s, per scenario)",
    )
    p.add_argument("--rate-fraction", type=float, default=0.8)
    p.add_argument(
        "--ol-duration", type=int, default=None, help="seconds per open-loop run (--duration)"
    )
    p.add_argument(
        "--ol-connections", type=int, default=50, help="open-loop keep-alive connections"
    )
    p.add_argument(
        "--gateway-cmd",
        default=bench.DEFAULT_GATEWAY_CMD,
        help="how to launch pygateway (see bench.py)",
    )
    p.add_argument("--ready-timeout", type=float, default=20.0)
    p.add_argument("--pin", action="store_true", help="taskset: load on CPU 0, servers on others")
    p.add_argument(
        "--install",
        action="store_true",
        help="apt-get install nginx/wrk and pip install matplotlib if missing",
    )
    p.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    p.add_argument(
        "--output", type=Path, default=None, help="JSON path (default: benches/results/...)"
    )
    args = p.parse_args(argv)
    for flag in ("duration", "connections", "threads", "rounds", "workers", "ol_connections"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    if args.rate is not None and args.rate <= 0:
        p.error("--rate must be > 0")
    if not 0 < args.rate_fraction <= 1:
        p.error("--rate-fraction must be in (0, 1]")
    args.ol_duration = args.ol_duration or args.duration
    return args


def run(args: argparse.Namespace) -> int:
    scenario_names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in scenario_names if n not in bench.SCENARIOS]
    if unknown or not scenario_names:
        raise BenchError(f"unknown scenario(s) {unknown or scenario_names}; suite: {SUITE}")
    targets = bench.select_targets(args, bench.SCENARIOS[scenario_names[0]])
    shared = bench.shared_bench_dir()
    bench.check_tools(targets, args.pin, args.install)
    binary = openloop_binary()
    load_prefix, server_prefix, pin_note = bench.pin_prefixes(args.pin)
    plt = None if args.no_chart else ensure_matplotlib(args.install)

    machine = bench.machine_info()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    scenarios: dict[str, dict[str, Any]] = {}
    for name in scenario_names:
        scenario = bench.SCENARIOS[name]
        log(f"scenario {name}: {scenario.description}")
        with bench.serving(scenario, targets, args, shared, server_prefix) as served:
            bench.warm_up(targets, scenario.path, args, load_prefix)
            closed = bench.closed_loop_rounds(targets, scenario.path, args, load_prefix)
            slowest = min(
                statistics.median(r["rps"] for r in closed if r["target"] == t.name)
                for t in targets
            )
            rate = args.rate or max(1.0, round(args.rate_fraction * slowest))
            log(f"open loop at {rate:,.0f} req/s (slowest target: {slowest:,.0f} req/s)")
            opened = open_loop_rounds(binary, targets, scenario.path, rate, args, load_prefix)
        summary = summarize([t.name for t in targets], closed, opened, scenario.reference)
        scenarios[name] = {
            "description": scenario.description,
            "reference": scenario.reference,
            "routes_file": str((bench.CONFIG_DIR / scenario.routes).relative_to(bench.REPO)),
            "gateway_args": list(scenario.gateway_args),
            "rate": rate,
            "commands": served.commands,
            "summary": summary,
            "table_markdown": render_table(summary, scenario.reference, rate),
            "closed_loop_rounds": closed,
            "open_loop_rounds": opened,
        }

    results = checks(scenarios)
    mline = bench.machine_line(machine, args, pin_note) + (
        f"; open loop: benches/openloop, {args.ol_connections} connections, "
        f"{args.ol_duration}s per run, rate "
        + (f"{args.rate:g} req/s" if args.rate else f"{args.rate_fraction:g} x slowest target")
    )
    for name, sc in scenarios.items():
        print(f"\n### Scenario `{name}`: {sc['description']}\n")
        print(sc["table_markdown"])
        for c in results:
            if c["scenario"] == name and c["value"] is not None:
                print(f"{c['check']}: {c['value']:.2f}x ({'met' if c['met'] else 'NOT met'})")
    print(f"\n{PEER_NOTE}\n\n### Checks\n\n{render_checks(results)}\n\n{mline}")
    if any(
        s["errors"] + s["ol_errors"] + s["ol_unsent"]
        for sc in scenarios.values()
        for s in sc["summary"].values()
    ):
        print(
            "\nWARNING: some targets had errors or unsent open-loop requests (flagged above); "
            "their figures are not comparable."
        )

    out = args.output or bench.RESULTS_DIR / f"engines-{stamp}.json"
    report = {
        "suite": "engines",
        "timestamp": stamp,
        "machine": machine,
        "machine_line": mline,
        "params": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        | {"pin": pin_note},
        "peer_note": PEER_NOTE,
        "checks": results,
        "scenarios": scenarios,
    }
    bench.write_json(report, out)
    if plt is not None:
        title = f"pygateway engines, {machine['nproc']} CPUs, {machine['date']}, {pin_note}"
        draw_chart(plt, scenarios, out.with_suffix(".png"), title)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return bench.run_command(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
