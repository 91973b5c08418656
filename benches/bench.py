#!/usr/bin/env python3
"""pygateway benchmark harness: one command, one run, peers measured side by side.

    python benches/bench.py [--scenario proxy] [--duration 8] [--rounds 3] [--targets a,b]

Starts the origin (nginx), the reference peers (nginx proxy, ...) and pygateway as
subprocesses, checks every target answers 200 ``hello world\\n`` on ``/hello``, then loads
each with wrk on loopback in interleaved rounds (A B C A B C ...) after a discarded warm-up.
Prints a markdown table (medians of the rounds, ratios against the scenario's reference peer)
and writes every raw round to ``benches/results/<scenario>-<timestamp>.json``.

Everything it starts runs in its own process group and is killed on exit, Ctrl-C or error.
See docs/benchmarks.md for the method.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
CONFIG_DIR = BENCH_DIR / "config"
RESULTS_DIR = BENCH_DIR / "results"

HOST = "127.0.0.1"
ORIGIN_PORT = 1980
GATEWAY_PORT = 9090
REDIS_PORT = 6390
EXPECTED_BODY = b"hello world\n"
APT_PACKAGES = ("nginx-light", "libnginx-mod-http-lua", "lua-resty-core", "wrk", "redis-server")
LUA_MODULE = Path("/usr/lib/nginx/modules/ngx_http_lua_module.so")
DEFAULT_GATEWAY_CMD = (
    "{python} -m pygateway run --routes {routes} --listen {host}:{port} --workers {workers}"
)
# A gateway with the Admin API on (Target.admin_port): its config lives in an embedded store in
# the run's temporary folder, seeded through the Admin API from the routes file once it is up.
ADMIN_GATEWAY_CMD = "{python} -m pygateway run --listen {host}:{port} --workers {workers}"
# A throwaway key for this run's Admin APIs (given to the gateway in its environment).
ADMIN_KEY = secrets.token_hex(16)


# --------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class Target:
    """Something that answers HTTP on a port and can be loaded with wrk."""

    name: str
    port: int
    kind: str  # "nginx" (source = conf in shared/bench), "script" (python file), "gateway"
    source: str = ""
    description: str = ""
    routes: str = ""  # gateway: routes file in benches/config (default: the scenario's)
    args: tuple[str, ...] = ()  # gateway: extra flags
    needs: tuple[str, ...] = ()  # services started first: "redis" (redis-server on REDIS_PORT)
    admin_port: int = 0  # gateway: Admin API port; config in an embedded store, not a file


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "origin",
            ORIGIN_PORT,
            "nginx",
            "upstream.nginx.conf",
            "the origin itself, no proxy (baseline)",
        ),
        Target(
            "nginx",
            9081,
            "nginx",
            "proxy.nginx.conf",
            "nginx proxy_pass, upstream keepalive pool, 1 worker",
        ),
        Target(
            "nginx-lua",
            9082,
            "nginx",
            "lua-limit.nginx.conf",
            "nginx + Lua fixed-window counter (shared dict), then proxied, 1 worker",
        ),
        Target(
            "aiohttp",
            9083,
            "script",
            "aiohttp_proxy.py",
            "aiohttp (+uvloop if present) proxy with a per-client counter, 1 process",
        ),
        Target("pygateway", GATEWAY_PORT, "gateway", "", "pygateway native data plane"),
        Target(
            "pygw-python",
            GATEWAY_PORT + 3,
            "gateway",
            "",
            "pygateway pure-Python data plane (--engine python: aiohttp, one event loop)",
            args=("--engine", "python"),
        ),
        Target(
            "pygw-redis",
            GATEWAY_PORT + 4,
            "gateway",
            "",
            "pygateway native, limit-count with policy redis (redis-server on loopback)",
            routes="limit-redis.yaml",
            needs=("redis",),
        ),
        Target(
            "pygw-sync",
            GATEWAY_PORT + 1,
            "gateway",
            "",
            "pygateway native + one sync Python plugin (access sets a request header)",
            routes="plugin-sync.yaml",
            args=("--config", str(Path(__file__).parent / "config" / "plugins-node.yaml")),
        ),
        Target(
            "pygw-async",
            GATEWAY_PORT + 2,
            "gateway",
            "",
            "pygateway native + one async Python plugin (access sets a request header)",
            routes="plugin-async.yaml",
            args=("--config", str(Path(__file__).parent / "config" / "plugins-node.yaml")),
        ),
    )
}


@dataclass(frozen=True)
class Scenario:
    """A benchmark scenario: which targets, how pygateway is configured, what is requested.

    Adding a scenario = adding one entry to SCENARIOS (plus its routes file in benches/config).
    """

    name: str
    description: str
    targets: tuple[str, ...]  # measured by default, in this order (origin is always started)
    reference: str  # the peer that ratios are taken against
    routes: str  # pygateway routes file, relative to benches/config
    gateway_args: tuple[str, ...] = ()  # extra flags appended to the pygateway command
    path: str = "/hello"
    expected_body: bytes = EXPECTED_BODY


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            name="proxy",
            description="plain reverse proxy: one route /* to the origin, no plugins",
            targets=("origin", "nginx", "pygateway"),
            reference="nginx",
            routes="proxy.yaml",
        ),
        Scenario(
            name="limit",
            description="limit-count on every request (never reached: the counter's cost), then "
            "proxied; the peer is the seed's nginx + Lua shared-dict counter",
            targets=("origin", "nginx-lua", "pygateway", "pygw-redis"),
            reference="nginx-lua",
            routes="limit-local.yaml",
        ),
        Scenario(
            name="limit-plugin",
            description="limit-count (local) on every request plus one sync Python plugin "
            "(access sets an upstream request header), then proxied; the peer is the nginx + "
            "Lua counter",
            targets=("origin", "nginx-lua", "pygateway", "pygw-python"),
            reference="nginx-lua",
            routes="limit-plugin.yaml",
            gateway_args=("--config", str(CONFIG_DIR / "plugins-node.yaml")),
        ),
        Scenario(
            name="plugin",
            description="one route /* to the origin; pygateway with no / one sync / one async "
            "Python plugin in access",
            targets=("origin", "nginx", "pygateway", "pygw-sync", "pygw-async"),
            reference="nginx",
            routes="proxy.yaml",
        ),
    )
}


# --------------------------------------------------------------------------- errors / logging


class BenchError(Exception):
    """A failure with a message meant for the user; the harness exits non-zero."""


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


# --------------------------------------------------------------------------- process handling


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    extra_logs: list[Path] = field(default_factory=list)

    def tail(self, lines: int = 20) -> str:
        out = []
        for p in [self.log_path, *self.extra_logs]:
            try:
                text = p.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            if text:
                out.append(f"--- {p}:\n" + "\n".join(text))
        return "\n".join(out) or "(no output)"


class ProcessGroup:
    """Starts servers in their own sessions; stop_all() kills every process group it started."""

    def __init__(self, workdir: Path, cpu_prefix: Sequence[str]) -> None:
        self.workdir = workdir
        self.cpu_prefix = list(cpu_prefix)
        self.procs: list[Proc] = []

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        extra_logs: Sequence[Path] = (),
        env: Mapping[str, str] | None = None,
    ) -> Proc:
        full = [*self.cpu_prefix, *cmd]
        log_path = self.workdir / f"{name}.log"
        log(f"start {name}: {shlex.join(full)}")
        with open(log_path, "wb") as fh:
            popen = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
                env={**os.environ, **env} if env else None,
            )
        proc = Proc(name, popen, log_path, list(extra_logs))
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        # A second Ctrl-C must not leave servers behind: ignore SIGINT while cleaning up.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for proc in reversed(self.procs):
                _kill_group(proc.popen)
            self.procs.clear()
        finally:
            signal.signal(signal.SIGINT, old)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group(popen: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    pgid = popen.pid  # start_new_session: the leader's pid is the group id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout=grace)
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _group_alive(pgid) or popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=grace)


# --------------------------------------------------------------------------- environment checks


def shared_bench_dir() -> Path:
    env = os.environ.get("PYGW_SHARED_BENCH")
    d = Path(env) if env else REPO.parent / "shared" / "bench"
    if not (d / "upstream.nginx.conf").is_file():
        raise BenchError(
            f"peer configs not found in {d} (set PYGW_SHARED_BENCH to the shared/bench folder)"
        )
    return d.resolve()


def apt_command() -> str:
    return "apt-get update && apt-get install -y " + " ".join(APT_PACKAGES)


def check_tools(targets: Sequence[Target], pin: bool, install: bool) -> None:
    missing = [t for t in ("nginx", "wrk") if shutil.which(t) is None]
    if any("redis" in t.needs for t in targets) and shutil.which("redis-server") is None:
        missing.append("redis-server")
    if any(t.name == "nginx-lua" for t in targets) and not LUA_MODULE.exists():
        missing.append(str(LUA_MODULE))
    if missing and install:
        log(f"missing {', '.join(missing)}; running: {apt_command()}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", *APT_PACKAGES]):
            try:
                subprocess.run(cmd, check=True, timeout=900, env=env)
            except (subprocess.SubprocessError, OSError) as e:
                raise BenchError(f"install failed: {shlex.join(cmd)}: {e}") from e
        return check_tools(targets, pin, install=False)
    if missing:
        raise BenchError(
            f"missing: {', '.join(missing)}\n  install with:  {apt_command()}\n"
            "  (or rerun with --install)"
        )
    if pin and shutil.which("taskset") is None:
        raise BenchError("--pin needs taskset (apt-get install -y util-linux)")
    return None


def check_ports_free(ports: Sequence[int]) -> None:
    busy = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, port))
            except OSError:
                busy.append(port)
    if busy:
        raise BenchError(
            f"port(s) already in use on {HOST}: {', '.join(map(str, busy))} "
            f"(a leftover server? see `ss -ltnp`); refusing to measure someone else's process"
        )


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        nproc = int(
            subprocess.run(["nproc"], capture_output=True, text=True, timeout=5).stdout.strip()
        )
    except (OSError, ValueError, subprocess.SubprocessError):
        nproc = os.cpu_count() or 0
    return {
        "nproc": nproc,
        "cpu": cpu,
        "kernel": f"{platform.system()} {platform.release()}",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "nginx": _version(["nginx", "-v"]),
        "wrk": _version(["wrk", "-v"]),
    }


def _version(cmd: Sequence[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    text = (r.stdout + r.stderr).strip().splitlines()
    return text[0] if text else "unknown"


# --------------------------------------------------------------------------- launching targets


def launch_command(
    target: Target, scenario: Scenario, args: argparse.Namespace, shared: Path, workdir: Path
) -> tuple[list[str], list[Path]]:
    """The command that starts `target`, plus log files worth showing if it fails."""
    if target.kind == "nginx":
        conf = shared / target.source
        m = re.search(r"^\s*error_log\s+(\S+?);?\s", conf.read_text(), re.M)
        conf_log = [Path(m.group(1))] if m else []
        prefix = workdir / f"nginx-{target.name}"
        prefix.mkdir(exist_ok=True)
        return (
            ["nginx", "-p", f"{prefix}/", "-e", str(prefix / "startup-error.log"), "-c", str(conf)],
            [prefix / "startup-error.log", *conf_log],
        )
    if target.kind == "script":
        return [sys.executable, str(shared / target.source), str(target.port)], []
    if target.kind == "gateway":
        routes = CONFIG_DIR / (target.routes or scenario.routes)
        fmt = {
            "python": shlex.quote(sys.executable),
            "routes": shlex.quote(str(routes)),
            "host": HOST,
            "port": str(target.port),
            "workers": str(args.workers),
        }
        if target.admin_port:
            store = workdir / f"{target.name}-store.jsonl"
            admin = ["--admin-listen", f"{HOST}:{target.admin_port}", "--store", str(store)]
            cmd = [*shlex.split(ADMIN_GATEWAY_CMD.format(**fmt)), *admin]
            return [*cmd, *scenario.gateway_args, *target.args], []
        try:
            cmd = shlex.split(args.gateway_cmd.format(**fmt))
        except (KeyError, IndexError, ValueError) as e:
            raise BenchError(
                f"bad --gateway-cmd {args.gateway_cmd!r}: {e} "
                "(placeholders: {python} {routes} {host} {port} {workers})"
            ) from e
        return [*cmd, *scenario.gateway_args, *target.args], []
    raise BenchError(f"unknown target kind {target.kind!r}")


def wait_port(port: int, timeout: float) -> None:
    """Wait until something accepts connections on HOST:port."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing listens on {HOST}:{port} after {timeout}s")


def admin_request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    timeout: float = 5.0,
    key: str | None = None,
) -> tuple[int, bytes]:
    """One Admin API call with `key` (default: this run's key); `body` is sent as JSON."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"X-API-KEY": key or ADMIN_KEY, "Content-Type": "application/json"}
        conn.request(method, f"/apisix/admin/{path.lstrip('/')}", body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def seed_store(target: Target, routes_file: Path, timeout: float) -> None:
    """PUT the objects of a standalone routes file through `target`'s Admin API."""
    import yaml  # a pygateway dependency; only gateways with an Admin API need it here

    wait_port(target.admin_port, timeout)
    config = yaml.safe_load(routes_file.read_text()) or {}
    for resource in ("upstreams", "services", "routes"):
        for i, obj in enumerate(config.get(resource) or [], start=1):
            obj_id = obj.pop("id", f"bench-{i}")
            status, body = admin_request(target.admin_port, "PUT", f"{resource}/{obj_id}", obj)
            if status not in (200, 201):
                raise BenchError(
                    f"{target.name}: Admin API PUT {resource}/{obj_id} answered {status}: "
                    f"{body[:300]!r}"
                )


def probe(port: int, path: str, timeout: float = 1.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_ready(proc: Proc, target: Target, scenario: Scenario, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise BenchError(
                f"{target.name} exited with code {proc.popen.returncode} before answering "
                f"on {HOST}:{target.port}\n{proc.tail()}"
            )
        try:
            status, body = probe(target.port, scenario.path)
        except (OSError, http.client.HTTPException) as e:
            last = f"{type(e).__name__}: {e}"
        else:
            if status == 200 and body == scenario.expected_body:
                log(f"{target.name} ready on {HOST}:{target.port} (200 {body!r})")
                return
            if status == 200:
                raise BenchError(
                    f"{target.name}: GET {scenario.path} answered 200 with body {body[:200]!r},"
                    f" expected {scenario.expected_body!r}"
                )
            last = f"HTTP {status} {body[:200]!r}"
        time.sleep(0.1)
    raise BenchError(
        f"{target.name} did not answer 200 on http://{HOST}:{target.port}{scenario.path} "
        f"within {timeout:.0f}s (last: {last})\n{proc.tail()}"
    )


# --------------------------------------------------------------------------- wrk


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def parse_duration_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"unparsable wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    """Parse `wrk --latency` output; latencies in milliseconds."""
    res: dict[str, Any] = {"percentiles_ms": {}}
    for pct, val in re.findall(r"^\s*(50|75|90|99)%\s+(\S+)\s*$", out, re.M):
        res["percentiles_ms"][pct] = parse_duration_ms(val)
    m = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    if not m or "50" not in res["percentiles_ms"] or "99" not in res["percentiles_ms"]:
        raise ValueError("wrk output lacks Requests/sec or latency percentiles")
    res["rps"] = float(m.group(1))
    res["p50_ms"] = res["percentiles_ms"]["50"]
    res["p99_ms"] = res["percentiles_ms"]["99"]
    m = re.search(r"^\s*(\d+) requests in ([\d.]+\w+)", out, re.M)
    res["requests"] = int(m.group(1)) if m else None
    res["elapsed_ms"] = parse_duration_ms(m.group(2)) if m else None
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()))) if m else {}
    )
    res["socket_errors"] = socket_errors
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non_2xx_3xx"] = int(m.group(1)) if m else 0
    res["errors"] = sum(socket_errors.values()) + res["non_2xx_3xx"]
    return res


def run_wrk(
    port: int, path: str, duration: int, connections: int, threads: int, prefix: Sequence[str]
) -> dict[str, Any]:
    cmd = [
        *prefix,
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        f"http://{HOST}:{port}{path}",
    ]
    try:
        r = subprocess.run(
            cmd, capture_output=True, text=True, timeout=duration + 30, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"wrk did not finish in {duration + 30}s: {shlex.join(cmd)}") from e
    if r.returncode != 0:
        raise BenchError(f"wrk failed ({r.returncode}): {shlex.join(cmd)}\n{r.stdout}{r.stderr}")
    try:
        res = parse_wrk(r.stdout)
    except ValueError as e:
        raise BenchError(f"{e}: {shlex.join(cmd)}\n{r.stdout}{r.stderr}") from e
    res["command"] = shlex.join(cmd)
    res["raw"] = r.stdout
    return res


# --------------------------------------------------------------------------- report


def fmt_ms(ms: float) -> str:
    return f"{ms * 1000:.0f} us" if ms < 1 else f"{ms:.2f} ms"


def summarize(
    names: Sequence[str], rounds: list[dict[str, Any]], reference: str
) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for name in names:
        rs = [r for r in rounds if r["target"] == name]
        rps = [r["rps"] for r in rs]
        summary[name] = {
            "rounds": len(rs),
            "rps_median": statistics.median(rps),
            "rps_min": min(rps),
            "rps_max": max(rps),
            "p50_ms_median": round(statistics.median(r["p50_ms"] for r in rs), 4),
            "p99_ms_median": round(statistics.median(r["p99_ms"] for r in rs), 4),
            "errors": sum(r["errors"] for r in rs),
            "non_2xx_3xx": sum(r["non_2xx_3xx"] for r in rs),
            "socket_errors": sum(sum(r["socket_errors"].values()) for r in rs),
        }
    ref = summary.get(reference)
    for s in summary.values():
        s["rps_vs_reference"] = round(s["rps_median"] / ref["rps_median"], 4) if ref else None
        s["p99_vs_reference"] = round(s["p99_ms_median"] / ref["p99_ms_median"], 4) if ref else None
    return summary


def render_table(summary: dict[str, dict[str, Any]], reference: str) -> str:
    def ratio(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}x"

    head = (
        f"| target | req/s (median) | req/s min-max | p50 | p99 | errors "
        f"| req/s vs {reference} | p99 vs {reference} |"
    )
    lines = [head, "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for name, s in summary.items():
        if s["errors"]:
            errors = f"**FLAG: {s['non_2xx_3xx']} non-2xx/3xx, {s['socket_errors']} socket**"
        else:
            errors = "0"
        lines.append(
            f"| {name} | {s['rps_median']:,.0f} | {s['rps_min']:,.0f}-{s['rps_max']:,.0f} "
            f"| {fmt_ms(s['p50_ms_median'])} | {fmt_ms(s['p99_ms_median'])} | {errors} "
            f"| {ratio(s['rps_vs_reference'])} | {ratio(s['p99_vs_reference'])} |"
        )
    return "\n".join(lines)


def machine_line(m: dict[str, Any], args: argparse.Namespace, pin_note: str) -> str:
    return (
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['kernel']}, {m['date']}; "
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency, "
        f"{args.rounds} interleaved rounds after a {args.warmup}s warm-up; {pin_note}"
    )


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark pygateway against nginx (and other peers) in one run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--scenario", default="proxy", choices=sorted(SCENARIOS))
    p.add_argument(
        "--targets",
        default=None,
        help=f"comma-separated subset to measure (default: the scenario's); "
        f"known: {','.join(TARGETS)}",
    )
    p.add_argument("--duration", type=int, default=8, help="seconds per wrk round")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2, help="seconds of discarded warm-up (0: none)")
    p.add_argument("--workers", type=int, default=1, help="pygateway --workers")
    p.add_argument(
        "--gateway-cmd",
        default=DEFAULT_GATEWAY_CMD,
        help="how to launch pygateway; placeholders {python} {routes} {host} {port} "
        "{workers}; the scenario's extra flags are appended",
    )
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=20.0,
        help="seconds to wait for each target to answer 200",
    )
    p.add_argument(
        "--pin", action="store_true", help="taskset: wrk on CPU 0, all servers on the other CPUs"
    )
    p.add_argument("--install", action="store_true", help="apt-get install nginx/wrk if missing")
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON path (default: benches/results/<scenario>-<timestamp>.json)",
    )
    args = p.parse_args(argv)
    for flag in ("duration", "connections", "threads", "rounds", "workers"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


def select_targets(args: argparse.Namespace, scenario: Scenario) -> list[Target]:
    names = (
        [n.strip() for n in args.targets.split(",") if n.strip()]
        if args.targets
        else list(scenario.targets)
    )
    unknown = [n for n in names if n not in TARGETS]
    if unknown or not names:
        raise BenchError(f"unknown target(s) {unknown or names}; known: {', '.join(TARGETS)}")
    return [TARGETS[n] for n in dict.fromkeys(names)]


def pin_prefixes(pin: bool) -> tuple[list[str], list[str], str]:
    if not pin:
        return [], [], "not pinned (wrk and servers share all CPUs)"
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise BenchError("--pin needs at least 2 CPUs")
    load, servers = str(cpus[0]), ",".join(map(str, cpus[1:]))
    return (
        ["taskset", "-c", load],
        ["taskset", "-c", servers],
        f"pinned: wrk on CPU {load}, servers on CPU {servers}",
    )


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    old = {s: signal.signal(s, _raise_exit) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@dataclass
class Served:
    """What serving() started: the commands (for the report) and the servers' folder."""

    workdir: Path
    procs: ProcessGroup
    commands: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def serving(
    scenario: Scenario,
    targets: Sequence[Target],
    args: argparse.Namespace,
    shared: Path,
    server_prefix: Sequence[str],
) -> Iterator[Served]:
    """Starts the origin, the services the targets need and the targets, each checked to answer
    200 with the expected body; stops them all on exit. Logs are kept if anything failed,
    including a server that died while the body of the `with` ran."""
    # The origin is always needed (every proxy forwards to it), measured only if selected.
    to_start = [TARGETS["origin"], *[t for t in targets if t.name != "origin"]]
    needs = {n for t in targets for n in t.needs}
    ports = [t.port for t in to_start] + [t.admin_port for t in to_start if t.admin_port]
    check_ports_free(ports + ([REDIS_PORT] if "redis" in needs else []))

    workdir = Path(tempfile.mkdtemp(prefix=f"pygw-bench-{scenario.name}-"))
    served = Served(workdir, ProcessGroup(workdir, server_prefix))
    procs = served.procs
    ok = False
    try:
        if "redis" in needs:
            redis_cmd = ["redis-server", "--port", str(REDIS_PORT), "--bind", HOST]
            redis_cmd += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
            served.commands["redis"] = shlex.join([*server_prefix, *redis_cmd])
            procs.start("redis", redis_cmd)
            wait_port(REDIS_PORT, args.ready_timeout)
        for t in to_start:
            cmd, extra_logs = launch_command(t, scenario, args, shared, workdir)
            served.commands[t.name] = shlex.join([*server_prefix, *cmd])
            env = {"PYGATEWAY_ADMIN_KEY": ADMIN_KEY} if t.admin_port else None
            proc = procs.start(t.name, cmd, extra_logs, env)
            if t.admin_port:
                seed_store(t, CONFIG_DIR / (t.routes or scenario.routes), args.ready_timeout)
            wait_ready(proc, t, scenario, args.ready_timeout)
        yield served
        # Server-side health after the load: still up?
        for proc in procs.procs:
            if proc.popen.poll() is not None:
                raise BenchError(f"{proc.name} died during the run\n{proc.tail()}")
        ok = True
    finally:
        procs.stop_all()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"logs kept in {workdir}")


def warm_up(
    targets: Sequence[Target], path: str, args: argparse.Namespace, prefix: list[str]
) -> None:
    """One discarded wrk run per target (`--warmup` seconds; none if 0)."""
    if not args.warmup:
        return
    for t in targets:
        log(f"warm-up {t.name} ({args.warmup}s, discarded)")
        run_wrk(t.port, path, args.warmup, args.connections, args.threads, prefix)


def closed_loop_rounds(
    targets: Sequence[Target], path: str, args: argparse.Namespace, prefix: list[str]
) -> list[dict[str, Any]]:
    """`--rounds` interleaved wrk rounds (A B C A B C ...): every raw round, tagged."""
    rounds: list[dict[str, Any]] = []
    for i in range(1, args.rounds + 1):
        for t in targets:
            res = run_wrk(t.port, path, args.duration, args.connections, args.threads, prefix)
            res.update(target=t.name, round=i)
            rounds.append(res)
            flag = f"  ERRORS: {res['errors']}" if res["errors"] else ""
            log(
                f"round {i}/{args.rounds} {t.name}: {res['rps']:,.0f} req/s "
                f"p50 {fmt_ms(res['p50_ms'])} p99 {fmt_ms(res['p99_ms'])}{flag}"
            )
    return rounds


def write_json(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nraw rounds: {out}")


def run(args: argparse.Namespace) -> int:
    scenario = SCENARIOS[args.scenario]
    targets = select_targets(args, scenario)
    shared = shared_bench_dir()
    check_tools(targets, args.pin, args.install)
    wrk_prefix, server_prefix, pin_note = pin_prefixes(args.pin)

    machine = machine_info()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    with serving(scenario, targets, args, shared, server_prefix) as served:
        warm_up(targets, scenario.path, args, wrk_prefix)
        rounds = closed_loop_rounds(targets, scenario.path, args, wrk_prefix)
    commands = served.commands

    summary = summarize([t.name for t in targets], rounds, scenario.reference)
    table = render_table(summary, scenario.reference)
    mline = machine_line(machine, args, pin_note)
    print(f"\n### Scenario `{scenario.name}`: {scenario.description}\n")
    print(table)
    print(f"\n{mline}")
    if any(s["errors"] for s in summary.values()):
        print(
            "\nWARNING: some targets had non-2xx/3xx responses or socket errors "
            "(flagged above); their figures are not comparable."
        )

    report = {
        "scenario": scenario.name,
        "description": scenario.description,
        "reference": scenario.reference,
        "timestamp": stamp,
        "machine": machine,
        "params": {
            "duration_s": args.duration,
            "connections": args.connections,
            "threads": args.threads,
            "rounds": args.rounds,
            "warmup_s": args.warmup,
            "workers": args.workers,
            "path": scenario.path,
            "pin": pin_note,
        },
        "targets": {
            t.name: {"port": t.port, "description": t.description, "command": commands.get(t.name)}
            for t in targets
        },
        "routes_file": str((CONFIG_DIR / scenario.routes).relative_to(REPO)),
        "summary": summary,
        "table_markdown": table,
        "machine_line": mline,
        "rounds": rounds,
    }
    write_json(report, args.output or RESULTS_DIR / f"{scenario.name}-{stamp}.json")
    return 0


def run_command(run_fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a benchmark command: signals stop every process started, errors are one line."""
    try:
        with handle_signals():
            return run_fn(args)
    except BenchError as e:
        log(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        log("interrupted; every process started was stopped")
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
