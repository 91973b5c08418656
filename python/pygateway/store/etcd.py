"""The etcd store: APISIX's etcd layout, shared by every node of a cluster.

Keys are ``<prefix>/<resource>/<id>`` (``/apisix/routes/1``), values JSON objects, so a
pygateway node can join the etcd of an existing APISIX cluster. The store talks to etcd v3
through its JSON gRPC gateway (``/v3/kv/*``, ``/v3/watch``) with the standard library only.

How it stays in step with etcd (as ``apisix/core/config_etcd.lua`` does):

* ``start`` loads everything under the prefix with one range request, remembers the
  revision, hands the whole content to the listener, then a background thread watches from
  ``revision + 1``. A watch that times out is re-created from the same revision.
* The content is loaded again (a full resync) when etcd says the watched revision was
  compacted, when its revision goes backwards or its cluster id changes (etcd was wiped),
  and after the connection to etcd was lost (then only the difference reaches the listener).
* Several endpoints: a failing one is skipped for the next; when none answers, the thread
  backs off (0.1 s doubling to 2 s) and the cache keeps serving: ``get``/``items`` never touch
  the network.
* Writes return the entry etcd acknowledged and show it to ``get``/``items`` at once (read
  your writes); the listener hears about them from the watch, like any other node's write.
* With ``snapshot``, the last good content is kept in a file, so a node can boot (and serve)
  while etcd is down; it resyncs once etcd answers.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import math
import os
import random
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..config.jsonvalue import loads
from .base import Change, Entry, Listener, Store, StoreError, StoreUnavailable
from .encryption import FieldEncryption

__all__ = ["EtcdStore"]

log = logging.getLogger("pygateway.store.etcd")

WATCH_TIMEOUT = 50.0
"""Seconds a watch may stay silent before it is re-created (APISIX's ``watch_timeout``)."""

CONNECT_TIMEOUT = 1.0
"""Seconds to wait for one endpoint's TCP handshake before trying the next."""

BACKOFF_MIN = 0.1
BACKOFF_MAX = 2.0
"""Bounds of the wait between two rounds over every endpoint (doubling, with jitter)."""

SNAPSHOT_INTERVAL = 0.5
"""At most one snapshot write per this many seconds; changes in between are coalesced."""

SNAPSHOT_FORMAT = 1

_UNREACHABLE_ROUNDS = 3
"""Rounds a request makes when no endpoint even accepts a connection (fail fast)."""

_RETRYABLE_CODES = frozenset({4, 14})
"""gRPC codes worth retrying elsewhere: DEADLINE_EXCEEDED, UNAVAILABLE (no leader...)."""

_JSON_HEADERS = {"Content-Type": "application/json"}
_WATCH_HEADERS = {**_JSON_HEADERS, "Grpc-Metadata-hasleader": "true"}
"""``hasleader``: etcd cancels the watch when its member loses the leader (a partition)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _prefix_end(key: bytes) -> bytes:
    """The smallest key after every key that starts with ``key`` (etcd's range_end)."""
    end = bytearray(key)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


class _EtcdError(Exception):
    """etcd (or something at its address) answered, with an error."""

    def __init__(self, status: int, code: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    @property
    def retryable(self) -> bool:
        """Another endpoint, or a later try, may succeed (no leader, not etcd at all...)."""
        return self.code is None or self.code in _RETRYABLE_CODES or self.status >= 500


class _Resync(Exception):
    """The watch cannot continue from the remembered revision: load everything again."""


@dataclass(frozen=True)
class _Endpoint:
    """One etcd client URL."""

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> _Endpoint:
        text = url.strip()
        parts = urlsplit(text if "://" in text else f"http://{text}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"invalid etcd endpoint {url!r}: expected http(s)://host:port")
        return cls(parts.scheme, parts.hostname, parts.port or 2379)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        """An open connection; ``timeout`` bounds the handshake and every later read."""
        connect_timeout = min(timeout, CONNECT_TIMEOUT)
        conn: http.client.HTTPConnection
        if self.scheme == "https":
            context = ssl.create_default_context()
            conn = http.client.HTTPSConnection(
                self.host, self.port, timeout=connect_timeout, context=context
            )
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=connect_timeout)
        try:
            conn.connect()
            assert conn.sock is not None
            conn.sock.settimeout(timeout)
        except BaseException:
            conn.close()
            raise
        return conn


def _etcd_error(status: int, raw: bytes) -> _EtcdError:
    try:
        body = json.loads(raw)
    except ValueError:
        return _EtcdError(status, None, f"HTTP {status}: {raw[:200]!r}")
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):  # the watch stream wraps its errors
        body = err
    if not isinstance(body, dict):
        return _EtcdError(status, None, f"HTTP {status}: {raw[:200]!r}")
    code = body.get("code")
    message = body.get("message") or body.get("error") or f"HTTP {status}"
    return _EtcdError(status, code if isinstance(code, int) else None, str(message))


def _kv_revision(kv: dict[str, Any], field: str) -> int:
    return int(kv.get(field) or 0)  # the JSON gateway leaves zero fields out


class EtcdStore(Store):
    """Config objects in etcd under ``prefix``, cached locally and watched.

    ``endpoints`` are etcd client URLs (``http://127.0.0.1:2379``; the scheme defaults to
    http). ``timeout`` bounds every request (a write raises :class:`StoreUnavailable` when no
    endpoint answered in time). ``snapshot`` is a file that keeps the last good content.
    ``encryption`` (APISIX's data_encryption): the plugins' secret fields are encrypted in
    etcd and in the snapshot, plaintext in what the store returns.
    """

    watch_timeout: float = WATCH_TIMEOUT
    local = False

    def __init__(
        self,
        endpoints: Sequence[str],
        prefix: str = "/apisix",
        *,
        timeout: float = 5.0,
        snapshot: str | None = None,
        encryption: FieldEncryption | None = None,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        self._endpoints = [_Endpoint.parse(url) for url in endpoints]
        if not self._endpoints:
            raise ValueError("EtcdStore needs at least one endpoint")
        self.prefix = prefix.rstrip("/")
        if not self.prefix:
            raise ValueError("the etcd prefix must not be empty or '/'")
        self.timeout = timeout
        self.snapshot = snapshot
        self._encryption = encryption
        self._dir = f"{self.prefix}/"
        self._dir_key = self._dir.encode()
        self._range = {"key": _b64(self._dir_key), "range_end": _b64(_prefix_end(self._dir_key))}

        self._lock = threading.Lock()
        self._view: dict[str, Entry] = {}  # what the listener has been told
        self._local: dict[str, tuple[int, Entry | None]] = {}  # own writes the watch has not shown
        self._revision = 0  # the view is etcd's content at this revision
        self._cluster_id: str | None = None
        self._current = 0  # index of the endpoint that answered last
        self._listener: Listener | None = None
        self._reload: str | None = None  # "full" or "diff": load before watching again
        self._delay = BACKOFF_MIN
        self._reachable = True
        self._closed = threading.Event()
        self._watch_conn: http.client.HTTPConnection | None = None
        self._thread: threading.Thread | None = None
        self._snapshot_thread: threading.Thread | None = None
        self._snapshot_due = threading.Event()
        self._snapshot_seq = 0  # content changes so far
        self._snapshot_saved = 0  # the change the file holds

    def __repr__(self) -> str:
        urls = ",".join(str(ep) for ep in self._endpoints)
        return f"EtcdStore({urls!r}, prefix={self.prefix!r})"

    @property
    def revision(self) -> int:
        """The etcd revision the cached content (as the listener knows it) is at."""
        with self._lock:
            return self._revision

    @property
    def endpoints(self) -> list[str]:
        """The etcd client URLs, in the order given."""
        return [str(ep) for ep in self._endpoints]

    @property
    def endpoint(self) -> str:
        """The endpoint used last."""
        return str(self._endpoints[self._current])

    # -- Store interface ---------------------------------------------------------------

    def start(self, listener: Listener) -> None:
        """Load everything under the prefix, call ``listener(all, True)``, then watch."""
        if self._listener is not None:
            raise RuntimeError("EtcdStore.start() was already called")
        self._listener = listener
        try:
            self._load(full=True)
        except StoreUnavailable as err:
            if self.snapshot is None:
                raise
            self._boot_from_snapshot(err)
        self._thread = threading.Thread(target=self._run, name="etcd-watch", daemon=True)
        self._thread.start()
        if self.snapshot is not None:
            self._snapshot_thread = threading.Thread(
                target=self._snapshot_loop, name="etcd-snapshot", daemon=True
            )
            self._snapshot_thread.start()

    def close(self) -> None:
        """Stop watching; the last content is flushed to the snapshot file."""
        self._closed.set()
        self._snapshot_due.set()
        with self._lock:
            conn = self._watch_conn
        if conn is not None and conn.sock is not None:
            try:  # wakes the watch thread out of its blocking read
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in (self._thread, self._snapshot_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=self.timeout + CONNECT_TIMEOUT)
        if self.snapshot is not None and self._snapshot_seq != self._snapshot_saved:
            self._write_snapshot()

    def get(self, key: str) -> Entry | None:
        """The cached entry at ``key`` (own writes included)."""
        with self._lock:
            local = self._local.get(key)
            if local is not None and local[0] > self._revision:
                return local[1]
            return self._view.get(key)

    def items(self, prefix: str) -> list[Entry]:
        """Cached entries whose key starts with ``prefix``, ordered by key."""
        with self._lock:
            found = {k: e for k, e in self._view.items() if k.startswith(prefix)}
            for key, (rev, entry) in self._local.items():
                if rev <= self._revision or not key.startswith(prefix):
                    continue
                if entry is None:
                    found.pop(key, None)
                else:
                    found[key] = entry
        return [found[k] for k in sorted(found)]

    def put(self, key: str, value: dict[str, Any], ttl: float | None = None) -> tuple[Entry, bool]:
        """Write ``value`` at ``key``; returns the entry and whether the key was created.
        With ``ttl``, the key is attached to a new lease of that many seconds (rounded up:
        etcd counts whole seconds), as APISIX does."""
        stored = self._encryption.encode(key, value) if self._encryption else value
        data = json.dumps(stored, ensure_ascii=False, separators=(",", ":")).encode()
        body: dict[str, Any] = {
            "key": _b64(self._etcd_key(key)),
            "value": _b64(data),
            "prev_kv": True,
        }
        if ttl is not None:
            lease = self._request("/v3/lease/grant", {"TTL": max(math.ceil(ttl), 1)})
            body["lease"] = lease["ID"]
        try:
            reply = self._request("/v3/kv/put", body)
        except StoreError:
            if "lease" in body:  # a lease no key uses: revoked now rather than left to expire
                try:
                    self._request("/v3/lease/revoke", {"ID": body["lease"]})
                except StoreError:
                    pass
            raise
        revision = int(reply["header"]["revision"])
        prev = reply.get("prev_kv")
        created_index = _kv_revision(prev, "create_revision") if prev else revision
        entry = Entry(key, value, created_index, revision)
        self._remember(key, revision, entry)
        return entry, prev is None

    def delete(self, key: str) -> Entry | None:
        """Delete ``key``; returns the previous entry (None when there was none)."""
        body = {"key": _b64(self._etcd_key(key)), "prev_kv": True}
        reply = self._request("/v3/kv/deleterange", body)
        if not int(reply.get("deleted") or 0):
            return None
        self._remember(key, int(reply["header"]["revision"]), None)
        for kv in reply.get("prev_kvs") or ():
            return self._entry(key, kv, quiet=True)
        return None

    def new_id(self) -> str:
        """APISIX's id for POST: the revision of a write to ``<prefix>/gen_id``, %020d."""
        body = {"key": _b64(f"{self._dir}gen_id".encode()), "value": _b64(b"1")}
        reply = self._request("/v3/kv/put", body)
        return f"{int(reply['header']['revision']):020d}"

    # -- keys and values ---------------------------------------------------------------

    def _etcd_key(self, key: str) -> bytes:
        if not key or key.startswith("/"):
            raise StoreError(f"invalid key {key!r}")
        return f"{self._dir}{key}".encode()

    def _key(self, kv: dict[str, Any]) -> str | None:
        """The store key of an etcd kv, or None for what is not a config object's key."""
        raw = base64.b64decode(kv.get("key") or "")
        try:
            full = raw.decode()
        except UnicodeDecodeError:
            log.debug("etcd: ignoring a key that is not UTF-8: %r", raw)
            return None
        key = full[len(self._dir) :] if full.startswith(self._dir) else ""
        # gen_id, plugins and APISIX 2.x directory markers (routes = "init_dir") have no '/'
        if "/" not in key or key.startswith("/") or key.endswith("/"):
            log.debug("etcd: ignoring bookkeeping key %s", full)
            return None
        return key

    def _entry(self, key: str, kv: dict[str, Any], quiet: bool = False) -> Entry | None:
        """The entry of a kv, or None (logged) when its value is not a JSON object: the
        caller keeps the key's last valid value, as APISIX does."""
        raw = base64.b64decode(kv.get("value") or "")
        why: str | None
        try:
            value = loads(raw)
        except ValueError as err:
            why = f"not JSON ({err})"
        else:
            why = None if isinstance(value, dict) else "it should be an object"
        revision = _kv_revision(kv, "mod_revision")
        if why is not None:
            if quiet:
                return None
            log.error(
                "etcd: invalid item data of %s%s (revision %d), %s: skipped, its last valid "
                "value (if any) keeps serving",
                self._dir,
                key,
                revision,
                why,
            )
            return None
        if self._encryption is not None:
            value = self._encryption.decode(key, value)
        return Entry(key, value, _kv_revision(kv, "create_revision"), revision)

    def _remember(self, key: str, revision: int, entry: Entry | None) -> None:
        """Show an acknowledged write to readers before the watch brings it."""
        with self._lock:
            known = self._local.get(key)
            if revision > self._revision and (known is None or known[0] < revision):
                self._local[key] = (revision, entry)

    # -- talking to etcd ---------------------------------------------------------------

    def _order(self) -> Iterator[int]:
        """Endpoint indexes, starting with the one that answered last."""
        start = self._current
        n = len(self._endpoints)
        return ((start + i) % n for i in range(n))

    def _post(self, index: int, path: str, body: dict[str, Any], timeout: float) -> Any:
        conn = self._endpoints[index].connect(timeout)
        try:
            conn.request("POST", path, body=json.dumps(body).encode(), headers=_JSON_HEADERS)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise _etcd_error(resp.status, raw)
        try:
            reply = json.loads(raw)
        except ValueError:
            raise _EtcdError(resp.status, None, f"not etcd: {raw[:200]!r}") from None
        if not isinstance(reply, dict) or "header" not in reply:
            raise _EtcdError(resp.status, None, f"not etcd: {raw[:200]!r}")
        return reply

    def _request(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the first endpoint that answers, within ``timeout``.

        Rounds over every endpoint are repeated with a backoff while some member answers
        but cannot serve (a leader election); when none even accepts a connection, the
        request gives up after a few quick rounds.
        """
        deadline = time.monotonic() + self.timeout
        failures: list[str] = []
        delay = BACKOFF_MIN
        rounds = 0
        while True:
            rounds += 1
            reachable = False
            for left, index in zip(range(len(self._endpoints), 0, -1), self._order()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:  # a hung endpoint gets its share of the time, not all of it
                    reply: dict[str, Any] = self._post(index, path, body, remaining / left)
                except (OSError, http.client.HTTPException) as err:
                    failures.append(f"{self._endpoints[index]}: {err or type(err).__name__}")
                    continue
                except _EtcdError as err:
                    if not err.retryable:
                        raise StoreError(f"etcd refused the request: {err.message}") from None
                    reachable = True
                    failures.append(f"{self._endpoints[index]}: {err.message}")
                    continue
                self._current = index
                return reply
            if (not reachable and rounds >= _UNREACHABLE_ROUNDS) or (
                time.monotonic() + delay >= deadline
            ):
                break
            if self._closed.wait(delay):
                break
            delay = min(delay * 2, BACKOFF_MAX)
        last = "; ".join(failures[-len(self._endpoints) :]) or f"no answer in {self.timeout}s"
        raise StoreUnavailable(f"etcd is unavailable: {last}")

    def _open_watch(self) -> http.client.HTTPResponse:
        """A watch stream from ``revision + 1`` on the first endpoint that accepts it."""
        with self._lock:
            start = self._revision + 1
        create = {**self._range, "start_revision": str(start)}
        body = json.dumps({"create_request": create}).encode()
        failures: list[str] = []
        for index in self._order():
            endpoint = self._endpoints[index]
            try:
                conn = endpoint.connect(self.timeout)
            except OSError as err:
                failures.append(f"{endpoint}: {err}")
                continue
            with self._lock:
                if self._closed.is_set():
                    conn.close()
                    raise _Closed
                self._watch_conn = conn
            try:
                conn.request("POST", "/v3/watch", body=body, headers=_WATCH_HEADERS)
                resp = conn.getresponse()
                if resp.status != 200:
                    raise _etcd_error(resp.status, resp.read())
            except (OSError, http.client.HTTPException, _EtcdError) as err:
                self._drop_watch_conn()
                failures.append(f"{endpoint}: {err}")
                continue
            assert conn.sock is not None
            conn.sock.settimeout(self.watch_timeout)
            self._current = index
            return resp
        raise StoreUnavailable(f"etcd is unavailable: {'; '.join(failures)}")

    def _drop_watch_conn(self) -> None:
        with self._lock:
            conn, self._watch_conn = self._watch_conn, None
        if conn is not None:
            conn.close()

    # -- loading -----------------------------------------------------------------------

    def _load(self, full: bool) -> None:
        """Range over the prefix; tell the listener everything (``full``) or what changed."""
        reply = self._request("/v3/kv/range", self._range)
        header = reply["header"]
        revision = int(header["revision"])
        cluster_id = str(header.get("cluster_id", ""))
        content: dict[str, Entry] = {}
        invalid: list[str] = []
        for kv in reply.get("kvs") or ():
            key = self._key(kv)
            if key is None:
                continue
            entry = self._entry(key, kv)
            if entry is not None:
                content[key] = entry
            else:
                invalid.append(key)
        with self._lock:
            previous = self._view
            if revision < self._revision or (
                self._cluster_id is not None and cluster_id != self._cluster_id
            ):
                log.warning(
                    "etcd: revision went from %d to %d (cluster %s → %s): etcd was wiped or "
                    "replaced, reloading everything",
                    self._revision,
                    revision,
                    self._cluster_id,
                    cluster_id,
                )
                full = True
                self._local.clear()
            else:  # the same etcd: an invalid key keeps its last valid value
                for key in invalid:
                    if key in previous:
                        content[key] = previous[key]
            self._view = content
            self._revision = revision
            self._cluster_id = cluster_id
            self._prune_local()
        if full:
            changes = [Change(k, content[k]) for k in sorted(content)]
        else:
            changes = [Change(k, e) for k, e in content.items() if previous.get(k) != e]
            changes += [Change(k, None) for k in previous if k not in content]
        log.debug("etcd: loaded %d entries at revision %d", len(content), revision)
        self._content_changed()
        if full or changes:
            self._notify(changes, full)

    def _prune_local(self) -> None:
        """Drop own writes the view has caught up with (the lock is held)."""
        if self._local:
            self._local = {k: v for k, v in self._local.items() if v[0] > self._revision}

    def _notify(self, changes: Sequence[Change], full: bool) -> None:
        if self._listener is None or (self._closed.is_set() and not full):
            return
        try:
            self._listener(changes, full)
        except Exception:
            log.exception("etcd: the store listener failed on %d changes", len(changes))

    # -- watching ----------------------------------------------------------------------

    def _run(self) -> None:
        """The watch thread: watch, reload when needed, back off while etcd is away."""
        while not self._closed.is_set():
            try:
                if self._reload is not None:
                    self._load(full=self._reload == "full")
                    self._reload = None
                    self._recovered()
                self._watch()
            except _Closed:
                break
            except _Resync as why:
                log.warning("etcd: %s; reloading everything", why)
                self._reload = "full"
                self._closed.wait(BACKOFF_MIN)  # a resync loop must not spin
            except (OSError, http.client.HTTPException, StoreError, _EtcdError, ValueError) as err:
                if self._closed.is_set():
                    break
                self._lost(err)
            except Exception as err:  # a bug: keep the node in sync with etcd anyway
                log.exception("etcd: the watch failed")
                self._lost(err)
            finally:
                self._drop_watch_conn()

    def _lost(self, err: BaseException) -> None:
        """The connection failed: reload (the difference) once etcd is back; back off."""
        if self._reload is None:
            self._reload = "diff"
        if self._reachable:
            log.warning("etcd watch failed (%s); serving the cached config, retrying", err)
            self._reachable = False
        else:
            log.debug("etcd watch still failing: %s", err)
        self._closed.wait(self._delay * random.uniform(0.8, 1.2))
        self._delay = min(self._delay * 2, BACKOFF_MAX)

    def _recovered(self) -> None:
        self._delay = BACKOFF_MIN
        if not self._reachable:
            log.warning("etcd is reachable again at %s, config resynced", self.endpoint)
            self._reachable = True

    def _watch(self) -> None:
        """Follow one watch stream until it times out (returns) or fails (raises)."""
        resp = self._open_watch()
        while not self._closed.is_set():
            try:
                line = resp.readline()
            except socket.timeout:
                return  # quiet for watch_timeout: watch again from the same revision
            if self._closed.is_set():
                raise _Closed
            if not line:
                raise ConnectionError(f"etcd {self.endpoint} closed the watch stream")
            message = json.loads(line)
            if "error" in message:
                raise _etcd_error(200, line)
            result = message.get("result") or {}
            header = result.get("header") or {}
            cluster_id = header.get("cluster_id")
            if cluster_id is not None and self._cluster_id and cluster_id != self._cluster_id:
                raise _Resync(f"the cluster id changed ({self._cluster_id} → {cluster_id})")
            if result.get("created"):
                revision = int(header.get("revision") or 0)
                if revision < self._revision:
                    raise _Resync(f"the revision went backwards ({self._revision} → {revision})")
                self._recovered()
            if result.get("canceled"):
                compacted = int(result.get("compact_revision") or 0)
                if compacted:
                    raise _Resync(f"revision {self._revision + 1} was compacted ({compacted})")
                raise _EtcdError(200, None, result.get("cancel_reason") or "watch canceled")
            if result.get("events"):
                self._apply(result["events"])

    def _apply(self, events: list[dict[str, Any]]) -> None:
        """Apply one watch response to the view and tell the listener."""
        changes: dict[str, Change] = {}
        revision = self._revision
        for event in events:
            kv = event.get("kv") or {}
            revision = max(revision, _kv_revision(kv, "mod_revision"))
            key = self._key(kv)
            if key is None:
                continue
            if event.get("type") == "DELETE":
                entry = None
                if key not in changes and key not in self._view:
                    continue  # never shown
            else:
                entry = self._entry(key, kv)
                if entry is None:
                    continue  # invalid: the last valid value keeps serving
            changes.pop(key, None)  # keep the batch in the order of the last change per key
            changes[key] = Change(key, entry)
        with self._lock:
            for change in changes.values():
                if change.entry is None:
                    self._view.pop(change.key, None)
                else:
                    self._view[change.key] = change.entry
            self._revision = revision
            self._prune_local()
        if changes:
            self._content_changed()
            self._notify(list(changes.values()), False)

    # -- snapshot ----------------------------------------------------------------------

    def _content_changed(self) -> None:
        self._snapshot_seq += 1
        self._snapshot_due.set()

    def _snapshot_loop(self) -> None:
        while True:
            self._snapshot_due.wait()
            if self._closed.is_set():
                return
            self._snapshot_due.clear()
            self._write_snapshot()
            self._closed.wait(SNAPSHOT_INTERVAL)  # coalesce the changes of the next 0.5 s

    def _write_snapshot(self) -> None:
        """Replace the snapshot file atomically (tmp + fsync + rename)."""
        assert self.snapshot is not None
        with self._lock:
            seq = self._snapshot_seq
            entries = [self._view[k] for k in sorted(self._view)]
            doc = {
                "format": SNAPSHOT_FORMAT,
                "prefix": self.prefix,
                "revision": self._revision,
                "cluster_id": self._cluster_id,
                "saved_at": time.time(),
                "entries": [
                    {
                        "key": e.key,
                        "value": self._encryption.encode(e.key, e.value)
                        if self._encryption
                        else e.value,
                        "createdIndex": e.created_index,
                        "modifiedIndex": e.modified_index,
                    }
                    for e in entries
                ],
            }
        path = self.snapshot
        tmp = f"{path}.tmp"
        try:
            # owner-only: the content holds consumer credentials
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as err:
            log.warning("etcd: cannot write the snapshot %s: %s", path, err)
            return
        self._snapshot_saved = seq

    def _boot_from_snapshot(self, err: StoreUnavailable) -> None:
        """etcd is down at start: serve the snapshot, resync in the background."""
        assert self.snapshot is not None
        try:
            with open(self.snapshot, encoding="utf-8") as f:
                doc = json.load(f)
            if doc.get("prefix") != self.prefix:
                raise ValueError(f"it holds prefix {doc.get('prefix')!r}, not {self.prefix!r}")
            decode = self._encryption.decode if self._encryption else lambda _, v: v
            content = {
                item["key"]: Entry(
                    item["key"],
                    decode(item["key"], item["value"]),
                    item["createdIndex"],
                    item["modifiedIndex"],
                )
                for item in doc["entries"]
            }
            revision = int(doc["revision"])
            cluster_id = doc.get("cluster_id")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as why:
            raise StoreUnavailable(f"{err}; no usable snapshot {self.snapshot}: {why}") from None
        age = time.time() - float(doc.get("saved_at") or 0)
        log.warning(
            "%s; serving the snapshot %s (%d entries, revision %d, %.0f s old) until etcd answers",
            err,
            self.snapshot,
            len(content),
            revision,
            age,
        )
        with self._lock:
            self._view = content
            self._revision = revision
            self._cluster_id = str(cluster_id) if cluster_id is not None else None
        self._reload = "full"
        self._reachable = False
        self._notify([Change(k, content[k]) for k in sorted(content)], True)


class _Closed(Exception):
    """The store was closed while the watch thread was connecting."""
