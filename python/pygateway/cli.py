"""``pygateway run | validate``: the command line. Flags override the node config file."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .config import ConfigError, NodeConfig, load_node_config, load_standalone
from .gateway import DEFAULT_STORE, Gateway
from .store import StoreError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pygateway",
        description="An APISIX-compatible API gateway: Rust data plane, Python control plane.",
    )
    p.add_argument("--version", action="version", version=f"pygateway {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="serve (the embedded demo config when no routes are given)")
    run.add_argument("--config", metavar="NODE.yaml", help="node config file")
    run.add_argument("--routes", metavar="FILE.yaml", help="APISIX standalone file (watched)")
    run.add_argument(
        "--listen", metavar="HOST:PORT", action="append", help="listen address (repeatable)"
    )
    run.add_argument("--workers", type=int, metavar="N", help="data-plane threads (default: CPUs)")
    run.add_argument("--engine", choices=["native", "python"], help="data plane engine")
    run.add_argument(
        "--router",
        choices=["radixtree_host_uri", "radixtree_uri_with_parameter"],
        help="router (APISIX apisix.router.http)",
    )
    run.add_argument("--debug", action="store_true", default=None, help="debug mode")
    admin = run.add_argument_group("Admin API (started when an admin key is given)")
    admin.add_argument(
        "--admin-listen", metavar="HOST:PORT", help="Admin API address (default 127.0.0.1:9180)"
    )
    admin.add_argument(
        "--admin-key", metavar="KEY", help="admin key (or the PYGATEWAY_ADMIN_KEY variable)"
    )
    admin.add_argument(
        "--store", metavar="PATH", help=f"embedded store file (default ./{DEFAULT_STORE})"
    )
    admin.add_argument(
        "--etcd", metavar="URL[,URL...]", help="etcd endpoints: config from APISIX's etcd layout"
    )
    admin.add_argument("--etcd-prefix", metavar="PREFIX", help="etcd key prefix (default /apisix)")

    val = sub.add_parser("validate", help="check APISIX standalone files; list every error")
    val.add_argument("files", nargs="+", metavar="FILE.yaml")
    val.add_argument(
        "--config", metavar="NODE.yaml", help="node config (its plugin_paths and plugins list)"
    )
    return p


def _admin_overrides(node: NodeConfig, args: argparse.Namespace) -> dict[str, Any]:
    """The ``admin``/``etcd`` settings with the flags (and PYGATEWAY_ADMIN_KEY) applied."""
    overrides: dict[str, Any] = {}
    admin = dict(node.admin)
    key = args.admin_key
    if key is None:
        key = os.environ.get("PYGATEWAY_ADMIN_KEY") or None  # set but empty: not set
    if key is not None:
        admin["keys"] = [{"name": "admin", "key": key, "role": "admin"}]
    if args.admin_listen is not None:
        admin["listen"] = args.admin_listen
    if args.store is not None:
        admin["store"] = os.path.abspath(args.store)
    if admin != node.admin:
        overrides["admin"] = admin
    etcd = dict(node.etcd)
    if args.etcd is not None:
        etcd["endpoints"] = [u.strip() for u in args.etcd.split(",") if u.strip()]
    if args.etcd_prefix is not None:
        etcd["prefix"] = args.etcd_prefix
    if etcd != node.etcd:
        overrides["etcd"] = etcd
    return overrides


def _run(args: argparse.Namespace) -> int:
    node = load_node_config(args.config) if args.config else NodeConfig()
    overrides: dict[str, Any] = {
        "routes": args.routes,
        "listen": args.listen,
        "workers": args.workers,
        "engine": args.engine,
        "router": args.router,
        "debug": args.debug,
        **_admin_overrides(node, args),
    }
    node = node.merged(overrides)
    logging.basicConfig(
        level=logging.INFO if node.debug else logging.WARNING,
        format="%(asctime)s [%(levelname)s] %(name)s: %(message)s",
    )
    gw = Gateway(node=node)
    gw.start()
    count = len(gw.config.items_of("routes")) if gw.config else 0
    if node.engine == "python":
        print(f"pygateway {__version__} (python engine, one asyncio event loop)")
    else:
        print(f"pygateway {__version__} (native engine, {node.workers} worker threads)")
    print(f"config: {gw.source}: {count} route(s)")
    for addr in gw.addresses:
        print(f"listening on http://{addr}")
    if gw.admin_address is not None:
        print(f"Admin API on http://{gw.admin_address}/apisix/admin")
    elif node.routes is None:
        print(f"try: curl -i http://{gw.addresses[0]}/hello")
    sys.stdout.flush()
    # What exists now (modules, plugins, config) lives as long as the process: the collector
    # need not scan it again (freeze is a list splice, no collection before the signal
    # handlers are in place); a larger first generation collects less often (request objects
    # are freed by reference counting, only cycles wait for a collection).
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    gw.serve_forever()
    return 0


def _validate(args: argparse.Namespace) -> int:
    from .plugin import PluginRegistry, RegistryCatalog

    node = load_node_config(args.config) if args.config else NodeConfig()
    # The plugins this node would know: built-ins, entry points and its plugin_paths.
    catalog = RegistryCatalog(PluginRegistry(node.plugin_paths, builtins=True, entry_points=True))
    failed = 0
    for path in args.files:
        try:
            cfg = load_standalone(path, catalog=catalog)
        except ConfigError as err:
            failed += 1
            print(f"{path}: invalid, {len(err.errors)} error(s)", file=sys.stderr)
            for issue in err.errors:
                print(f"  {issue}", file=sys.stderr)
            continue
        counts = ", ".join(
            f"{len(cfg.items_of(r))} {r}" for r in ("routes", "services", "upstreams")
        )
        print(f"{path}: ok ({counts})")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pygateway`` command."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "validate":
            return _validate(args)
    except ConfigError as err:
        print(f"pygateway: invalid configuration:\n{err}", file=sys.stderr)
        return 2
    except StoreError as err:
        print(f"pygateway: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # bind failures and the like: one clear line, no traceback
        if type(err).__name__ == "CoreError":
            print(f"pygateway: {err}", file=sys.stderr)
            return 1
        raise
    _parser().print_help()
    return 2
