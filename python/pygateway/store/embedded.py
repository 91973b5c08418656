"""The embedded store: the config objects of one node in a local file.

Format: an append-only journal of JSON lines, one record per acknowledged write::

    {"r": 7, "k": "routes/1", "v": {...}, "c": 5}     # put: revision 7, created at 5
    {"r": 7, "k": "routes/1", "v": {...}, "c": 5, "e": 1795826400.5}  # ... expiring then
    {"r": 8, "k": "routes/1"}                          # delete (no "v")
    {"b": [{"r": 9, "k": ...}, {"r": 10, ...}]}        # a batch: one change, all or none

Why a journal rather than rewriting the whole file on each write: a write costs one
small ``write`` + ``fsync`` whatever the number of stored objects (a 1000-route store
would otherwise rewrite ~1 MB per change), and a crash can only tear the *last* line, which
was never acknowledged (the caller hears back only after ``fsync``). On start a torn last
line is cut off; a bad line elsewhere is real corruption and refuses the start.

A failed write (disk full...) is cut off the file before the error is reported, so no
half-written line is left for the next write to follow. The journal is compacted (after the
write that triggers it is in memory) when it holds more than twice as many lines as live objects
(plus slack): the live objects are written to ``<file>.tmp``, fsynced, renamed over the
journal and the directory is fsynced, so the file is always either the old journal or the
new one. An advisory ``flock`` keeps a second process from writing the same file.

A put with a ``ttl`` (APISIX's ``?ttl=``, an etcd lease there) records its expiry time (wall
clock, so it holds across restarts); a thread deletes each key when it expires, with a
journaled delete like any other, and a start deletes those that expired while the node was
down before anything is served. A later put without ``ttl`` makes the key permanent again,
as a put without a lease does in etcd.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

from .base import Change, Entry, Listener, Store, StoreError, StoreUnavailable

__all__ = ["EmbeddedStore"]

log = logging.getLogger("pygateway.store")

COMPACT_SLACK = 1000
"""Records beyond twice the live objects tolerated before a compaction."""


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


EXPIRY_RETRY = 1.0
"""Seconds before an expiry that could not be written (disk full...) is tried again."""

EXPIRY_MAX_WAIT = 3600.0
"""The longest single wait of the expiry thread (``threading`` refuses huge timeouts)."""

Record = tuple[int, str, "Entry | None", "float | None"]
"""(revision, key, the entry written or None for a delete, when the entry expires)."""


def _fields(
    revision: int, key: str, entry: Entry | None, expires: float | None = None
) -> dict[str, Any]:
    rec: dict[str, Any] = {"r": revision, "k": key}
    if entry is not None:
        rec["v"] = entry.value
        rec["c"] = entry.created_index
        if expires is not None:
            rec["e"] = expires
    return rec


def _line(rec: dict[str, Any]) -> bytes:
    return (json.dumps(rec, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")


def _record(revision: int, key: str, entry: Entry | None, expires: float | None = None) -> bytes:
    return _line(_fields(revision, key, entry, expires))


class EmbeddedStore(Store):
    """A :class:`Store` in the local file ``path`` (created if missing)."""

    replaceable = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._entries: dict[str, Entry] = {}
        self._expiry: dict[str, float] = {}  # key -> time.time() it is deleted at
        self._revision = 0
        self._records = 0
        self._file: IO[bytes] | None = None
        self._lock = threading.RLock()
        self._expired = threading.Condition(self._lock)  # wakes the expiry thread
        self._expirer: threading.Thread | None = None
        self._listener: Listener | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self, listener: Listener) -> None:
        with self._lock:
            if self._file is None:
                self._open()
            try:
                self._expire_due()  # what expired while the node was down is never served
            except StoreError as err:  # the expiry thread tries again; the node still starts
                log.error("store %s: cannot delete expired keys: %s", self.path, err)
            self._listener = listener
            changes = [Change(k, e) for k, e in sorted(self._entries.items())]
            listener(changes, True)
            if self._expirer is None:
                self._expirer = threading.Thread(
                    target=self._expire_loop, name="pygateway-store-ttl", daemon=True
                )
                self._expirer.start()

    def close(self) -> None:
        with self._lock:
            self._listener = None
            if self._file is not None:
                self._file.close()
                self._file = None
            self._expired.notify_all()
        expirer, self._expirer = self._expirer, None
        if expirer is not None and expirer is not threading.current_thread():
            expirer.join(5)

    def _expire_loop(self) -> None:
        """Delete each key when its ``ttl`` runs out, until the store is closed."""
        with self._lock:
            while self._file is not None:
                try:
                    if self._expire_due():
                        continue
                    wait = min(self._expiry.values()) - time.time() if self._expiry else None
                except Exception as err:  # the disk, say: tried again, the thread never dies
                    log.error("store %s: cannot delete expired keys: %s", self.path, err)
                    wait = EXPIRY_RETRY
                # Woken by every write with a ttl; an expiry years away is waited for in hours.
                self._expired.wait(None if wait is None else min(wait, EXPIRY_MAX_WAIT))

    def _expire_due(self) -> bool:
        """Delete the keys whose ``ttl`` ran out, in one journal write; whether any did."""
        now = time.time()
        due = sorted(k for k, t in self._expiry.items() if t <= now)
        if not due:
            return False
        self._write([(self._revision + 1 + i, key, None, None) for i, key in enumerate(due)])
        log.info("store %s: %d key(s) expired (ttl): %s", self.path, len(due), ", ".join(due))
        return True

    def _open(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
            f = open(self.path, "a+b")  # kept open: the journal
        except OSError as err:
            raise StoreUnavailable(f"cannot open store file {self.path}: {err.strerror}") from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise StoreUnavailable(
                f"store file {self.path} is in use by another pygateway process"
            ) from None
        self._entries, self._expiry, self._revision, self._records = {}, {}, 0, 0
        try:
            self._replay(f)
        except BaseException:
            f.close()
            raise
        self._file = f

    def _replay(self, f: IO[bytes]) -> None:
        f.seek(0)
        data = f.read()
        good = data.rfind(b"\n") + 1  # bytes after the last newline: a torn, unacked write
        if good < len(data):
            log.warning(
                "store %s: dropping a torn last record (%d bytes) left by a crash",
                self.path,
                len(data) - good,
            )
            f.truncate(good)
            f.flush()
            os.fsync(f.fileno())
        for number, line in enumerate(data[:good].splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                # A batch (several objects written as one change) is one line: all or none.
                batch = rec["b"] if isinstance(rec, dict) and "b" in rec else [rec]
                parsed = [
                    (int(r["r"]), str(r["k"]), r.get("v"), r.get("c"), r.get("e")) for r in batch
                ]
            except (ValueError, KeyError, TypeError) as err:
                raise StoreUnavailable(
                    f"store file {self.path} is corrupt at line {number}: {err}"
                ) from None
            self._records += 1
            for revision, key, value, created, expires in parsed:
                self._revision = max(self._revision, revision)
                if isinstance(value, dict):
                    first = int(created) if created is not None else revision
                    self._entries[key] = Entry(key, value, first, revision)
                else:
                    self._entries.pop(key, None)
                if isinstance(value, dict) and isinstance(expires, (int, float)):
                    self._expiry[key] = float(expires)
                else:
                    self._expiry.pop(key, None)

    # -- reads -----------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        return self._entries.get(key)

    def items(self, prefix: str) -> list[Entry]:
        with self._lock:
            found = [e for k, e in self._entries.items() if k.startswith(prefix)]
        found.sort(key=lambda e: e.key)
        return found

    # -- writes ----------------------------------------------------------------------

    def new_id(self) -> str:
        # Reserved in memory only: a later acknowledged put persists a higher revision, and
        # an id never used by an acknowledged write may be handed out again after a crash.
        with self._lock:
            self._revision += 1
            return f"{self._revision:020d}"

    def put(self, key: str, value: dict[str, Any], ttl: float | None = None) -> tuple[Entry, bool]:
        with self._lock:
            previous = self._entries.get(key)
            revision = self._revision + 1
            created = previous.created_index if previous is not None else revision
            entry = Entry(key, json.loads(json.dumps(value)), created, revision)
            expires = time.time() + ttl if ttl is not None else None
            self._write([(revision, key, entry, expires)])
            return entry, previous is None

    def delete(self, key: str) -> Entry | None:
        with self._lock:
            previous = self._entries.get(key)
            if previous is None:
                return None
            self._write([(self._revision + 1, key, None, None)])
            return previous

    def delete_prefix(self, prefix: str) -> list[Entry]:
        """Delete every key under ``prefix`` in one journal write (a consumer's credentials)."""
        with self._lock:
            gone = [e for k, e in sorted(self._entries.items()) if k.startswith(prefix)]
            if gone:
                revision = self._revision
                self._write([(revision + 1 + i, e.key, None, None) for i, e in enumerate(gone)])
            return gone

    def replace(self, puts: Sequence[tuple[str, dict[str, Any]]], deletes: Sequence[str]) -> None:
        """Delete ``deletes``, then (re)create ``puts`` in their order (their created indexes
        follow it, as a standalone file's order does): one journal line, all or nothing."""
        with self._lock:
            revision = self._revision
            records: list[Record] = []
            for key in deletes:
                if key in self._entries:
                    revision += 1
                    records.append((revision, key, None, None))
            for key, value in puts:
                revision += 1
                entry = Entry(key, json.loads(json.dumps(value)), revision, revision)
                records.append((revision, key, entry, None))
            if records:
                self._write(records)

    def _write(self, records: list[Record]) -> None:
        """Append ``records`` as one journal line, ``fsync``, then apply them, tell the
        listener and compact when due. A failed write leaves file and memory unchanged."""
        f = self._file
        if f is None:
            raise StoreUnavailable(f"store {self.path} is not open")
        if len(records) == 1:
            data = _record(*records[0])
        else:
            data = _line({"b": [_fields(*r) for r in records]})
        end = f.seek(0, os.SEEK_END)
        try:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        except OSError as err:
            try:  # no half-written line may stay for the next write to follow
                f.truncate(end)
                f.flush()
            except OSError:
                log.exception("store %s: cannot cut a failed write off", self.path)
            raise StoreError(f"failed to write store file {self.path}: {err.strerror}") from None
        expiring = False
        for revision, key, entry, expires in records:
            self._revision = max(self._revision, revision)
            if entry is None:
                self._entries.pop(key, None)
            else:
                self._entries[key] = entry
            if entry is None or expires is None:
                self._expiry.pop(key, None)
            else:
                self._expiry[key] = expires
                expiring = True
        if expiring:
            self._expired.notify_all()
        self._records += 1
        self._notify([Change(key, entry) for _, key, entry, _ in records])
        if self._records > 2 * len(self._entries) + COMPACT_SLACK:
            self._compact()

    def _compact(self) -> None:
        """Rewrite the journal with only the live objects (atomic: tmp, fsync, rename)."""
        assert self._file is not None
        tmp = self.path + ".tmp"
        # The newest revision is kept by a final record of a key that is never an object.
        lines = [
            _record(e.modified_index, k, e, self._expiry.get(k))
            for k, e in sorted(self._entries.items())
        ]
        lines.append(_record(self._revision, "_revision", None))
        try:
            with open(tmp, "wb") as out:
                out.write(b"".join(lines))
                out.flush()
                os.fsync(out.fileno())
            f = open(self.path + ".tmp", "a+b")  # becomes the journal
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(tmp, self.path)
            _fsync_dir(self.path)
        except OSError as err:
            log.error("store %s: compaction failed, keeping the journal: %s", self.path, err)
            return
        self._file.close()
        self._file = f
        self._records = len(lines)
        log.info("store %s: compacted to %d objects", self.path, len(self._entries))

    def _notify(self, changes: list[Change]) -> None:
        if self._listener is not None:
            try:
                self._listener(changes, False)
            except Exception:
                log.exception("store listener failed")
