"""``/apisix/admin/configs``: the whole configuration at once, as APISIX's API-driven
standalone mode serves it (``apisix/admin/standalone.lua``, APISIX 3.13+).

- ``GET`` answers the configuration in the standalone file's shape, every resource list with
  its ``<resource>_conf_version``; JSON, or YAML when ``Accept`` asks for
  ``application/yaml``. ``X-Digest`` and ``X-Last-Modified`` tell what the last PUT set.
- ``HEAD`` answers those two headers only.
- ``PUT`` replaces the configuration (JSON, or YAML by ``Content-Type``). ``X-Digest`` is
  required; the digest already in place answers 204 and changes nothing. Per resource, a
  ``<resource>_conf_version`` lower than the current one is a 400, an equal one keeps that
  resource as it is, a greater (or absent: current + 1) one replaces it with the request's
  list. The result is validated as a standalone file is, then written in one store change
  (the embedded store: one journal write): 202.

pygateway keeps this configuration in its embedded store (APISIX keeps it in memory): it
survives a restart. A node on etcd answers these paths 404 as APISIX does outside standalone
mode; a node serving a standalone file answers GET and HEAD and refuses PUT (read-only).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..config import ConfigError, ConfigIssue, PluginCatalog, build_config
from ..config.jsonvalue import TOO_DEEP, check_value
from ..config.standalone import RESOURCES, UNSUPPORTED, item_id
from ..store.base import Store
from ..store.build import parse_key

__all__ = ["META_KEY", "Answer", "configs", "error_answer"]

META_KEY = "configs/meta"
"""Where the conf versions, digest and time of the last PUT are kept (not a config object)."""

DIGEST, LAST_MODIFIED = "X-Digest", "X-Last-Modified"
TIME_FIELDS = ("create_time", "update_time")


@dataclass
class Answer:
    """An HTTP answer with a body already encoded."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def error_answer(status: int, message: str) -> Answer:
    """APISIX's ``{"error_msg": ...}`` answer."""
    body = json.dumps({"error_msg": message}, ensure_ascii=False).encode()
    return Answer(status, body, "application/json")


def _meta(store: Store) -> dict[str, Any]:
    entry = store.get(META_KEY)
    return dict(entry.value) if entry is not None else {}


def _meta_headers(meta: Mapping[str, Any]) -> dict[str, str]:
    found = {name: meta.get(name) for name in (DIGEST, LAST_MODIFIED)}
    return {name: str(value) for name, value in found.items() if value is not None}


def _current(store: Store, resource: str) -> list[dict[str, Any]]:
    """The stored items of one resource, as the standalone file lists them (in the order
    they were created: a PUT's list order)."""
    found = []
    for entry in sorted(store.items(f"{resource}/"), key=lambda e: (e.created_index, e.key)):
        parts = parse_key(entry.key)
        if parts is not None and parts[0] == resource:
            found.append(entry.value)
    return found


def _export(store: Store, meta: Mapping[str, Any]) -> dict[str, Any]:
    versions = meta.get("versions") or {}
    out: dict[str, Any] = {}
    for resource in RESOURCES:
        items = _current(store, resource)
        if items:
            out[resource] = items
        out[f"{resource}_conf_version"] = versions.get(resource, 0)
    return out


def configs(
    store: Store,
    catalog: PluginCatalog,
    method: str,
    headers: Mapping[str, str],
    raw: bytes,
) -> Answer:
    """Answer one request to ``/apisix/admin/configs`` (``headers``: case-insensitive)."""
    if not store.replaceable and not store.read_only:
        return error_answer(404, "Unsupported resource type: configs")
    meta = _meta(store)
    if method == "HEAD":
        return Answer(200, headers=_meta_headers(meta))
    if method == "GET":
        data = _export(store, meta)
        extra = _meta_headers(meta)
        if headers.get("Accept", "").startswith("application/yaml"):
            text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
            return Answer(200, text.encode(), "application/yaml", extra)
        body = json.dumps(data, ensure_ascii=False).encode()
        return Answer(200, body, "application/json", extra)
    if method == "PUT":
        return _replace(store, catalog, meta, headers, raw)
    return error_answer(404, "not found")


def _replace(
    store: Store,
    catalog: PluginCatalog,
    meta: Mapping[str, Any],
    headers: Mapping[str, str],
    raw: bytes,
) -> Answer:
    digest = headers.get(DIGEST)
    if not digest:
        return error_answer(400, "missing digest header")
    if not raw:
        return error_answer(400, "invalid request body: empty request body")
    try:
        if headers.get("Content-Type", "application/json").startswith("application/yaml"):
            data = yaml.safe_load(raw)
            if not isinstance(data, dict):
                return error_answer(400, "invalid request body: invalid yaml request body")
        else:
            # NaN and 1e400 decode here: a conf version of theirs gets APISIX's own answer
            # below; anywhere else check_value refuses them
            data = json.loads(raw)
    except (ValueError, yaml.YAMLError) as err:
        return error_answer(400, f"invalid request body: {err}")
    except RecursionError:
        return error_answer(400, f"invalid request body: {TOO_DEEP}")
    if not isinstance(data, dict):
        return error_answer(400, "invalid request body: expected an object")
    if store.read_only:
        store.replace((), ())  # raises the store's refusal, answered as for any write
    if meta.get(DIGEST) == digest:
        return Answer(204)  # accepted, nothing changed

    old_versions = meta.get("versions") or {}
    versions: dict[str, float] = {}
    effective: dict[str, Any] = {k: v for k, v in data.items() if k in UNSUPPORTED}
    replaced: list[str] = []
    for resource in RESOURCES:
        name = f"{resource}_conf_version"
        current = old_versions.get(resource, 0)
        given = data.get(name)
        if given is None:
            version = current + 1
        elif (
            isinstance(given, bool)
            or not isinstance(given, (int, float))
            or not math.isfinite(given)
        ):
            return error_answer(400, f"{name} must be a number")
        elif given < current:
            return error_answer(400, f"{name} must be greater than or equal to ({current})")
        else:
            version = given  # kept as given, fractions included (as APISIX)
        versions[resource] = version
        if version == current:
            # kept as they are; checked again only for the references of the others (the
            # time stamps the Admin API adds are not theirs to judge)
            effective[resource] = [
                {k: v for k, v in item.items() if k not in TIME_FIELDS}
                for item in _current(store, resource)
            ]
        else:
            effective[resource] = data.get(resource) or []
            replaced.append(resource)
    try:  # depth, NaN/Infinity, aliases' expansion: what JSON bodies get from loads
        check_value(data)
    except ValueError as err:
        return error_answer(400, f"invalid request body: {err}")

    try:
        config = build_config(effective, source="<request>", catalog=catalog)
    except ConfigError as err:
        first = err.errors[0]
        duplicate = duplicate_text(first)
        if duplicate is not None:
            return error_answer(400, duplicate)
        return error_answer(400, _located(first.resource, first.id, first.message, effective))

    puts: list[tuple[str, dict[str, Any]]] = []
    deletes: list[str] = []
    for resource in replaced:
        items = config.items_of(resource)
        puts += [(f"{resource}/{ident}", item.conf) for ident, item in items.items()]
        for entry in store.items(f"{resource}/"):
            parts = parse_key(entry.key)
            # a consumer that goes takes its credentials along (as DELETE /consumers/x)
            gone = parts is not None and parts[1] not in items
            if gone and parts is not None and parts[0] in (resource, "credentials"):
                deletes.append(entry.key)
    new_meta = {"versions": versions, DIGEST: digest, LAST_MODIFIED: int(time.time())}
    puts.append((META_KEY, new_meta))
    store.replace(puts, deletes)
    return Answer(202)


def duplicate_text(issue: ConfigIssue) -> str | None:
    """APISIX's words for a duplicate id (``found duplicate id r1 in routes``), or None."""
    if issue.path in ("id", "username") and issue.message.startswith("duplicate "):
        what = "username" if issue.resource == "consumers" else "id"
        return f"found duplicate {what} {issue.id} in {issue.resource}"
    return None


def _located(resource: str, ident: str | None, message: str, data: Mapping[str, Any]) -> str:
    """APISIX's ``invalid <resource> at index <i>, err: <message>`` when the item is found."""
    items = data.get(resource)
    if isinstance(items, list) and ident is not None:
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                continue
            own = item.get("id", item.get("username") if resource == "consumers" else None)
            if item_id(own if own is not None else f"arr_{index + 1}") == ident:
                return f"invalid {resource} at index {index}, err: {message}"
    return f"invalid {resource}: {message}" if resource else message
