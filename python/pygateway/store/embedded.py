"""The embedded store: the config objects of one node in a local file.

Format: an append-only journal of JSON lines, one record per acknowledged write::

    {"r": 7, "k": "routes/1", "v": {...}, "c": 5}     # put: revision 7, created at 5
    {"r": 8, "k": "routes/1"}                          # delete (no "v")

Why a journal rather than rewriting the whole file on each write: a write costs one
small ``write`` + ``fsync`` whatever the number of stored objects (a 1000-route store
would otherwise rewrite ~1 MB per change), and a crash can only tear the *last* line, which
was never acknowledged (the caller hears back only after ``fsync``). On start a torn last
line is cut off; a bad line elsewhere is real corruption and refuses the start.

The journal is compacted when it holds more than twice as many records as live objects
(plus slack): the live objects are written to ``<file>.tmp``, fsynced, renamed over the
journal and the directory is fsynced, so the file is always either the old journal or the
new one. An advisory ``flock`` keeps a second process from writing the same file.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterable, Sequence
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


def _record(revision: int, key: str, entry: Entry | None) -> bytes:
    rec: dict[str, Any] = {"r": revision, "k": key}
    if entry is not None:
        rec["v"] = entry.value
        rec["c"] = entry.created_index
    return (json.dumps(rec, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")


class EmbeddedStore(Store):
    """A :class:`Store` in the local file ``path`` (created if missing)."""

    replaceable = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._entries: dict[str, Entry] = {}
        self._revision = 0
        self._records = 0
        self._file: IO[bytes] | None = None
        self._lock = threading.RLock()
        self._listener: Listener | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self, listener: Listener) -> None:
        with self._lock:
            if self._file is None:
                self._open()
            self._listener = listener
            changes = [Change(k, e) for k, e in sorted(self._entries.items())]
            listener(changes, True)

    def close(self) -> None:
        with self._lock:
            self._listener = None
            if self._file is not None:
                self._file.close()
                self._file = None

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
        self._entries, self._revision, self._records = {}, 0, 0
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
                revision = int(rec["r"])
                key = str(rec["k"])
            except (ValueError, KeyError, TypeError) as err:
                raise StoreUnavailable(
                    f"store file {self.path} is corrupt at line {number}: {err}"
                ) from None
            self._revision = max(self._revision, revision)
            self._records += 1
            value = rec.get("v")
            if isinstance(value, dict):
                created = int(rec.get("c", revision))
                self._entries[key] = Entry(key, value, created, revision)
            else:
                self._entries.pop(key, None)

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

    def put(self, key: str, value: dict[str, Any]) -> tuple[Entry, bool]:
        with self._lock:
            previous = self._entries.get(key)
            revision = self._revision + 1
            created = previous.created_index if previous is not None else revision
            entry = Entry(key, json.loads(json.dumps(value)), created, revision)
            self._append(revision, [(key, entry)])
            self._entries[key] = entry
            self._notify([Change(key, entry)])
            return entry, previous is None

    def delete(self, key: str) -> Entry | None:
        with self._lock:
            previous = self._entries.get(key)
            if previous is None:
                return None
            self._append(self._revision + 1, [(key, None)])
            del self._entries[key]
            self._notify([Change(key, None)])
            return previous

    def delete_prefix(self, prefix: str) -> list[Entry]:
        """Delete every key under ``prefix`` in one journal write (a consumer's credentials)."""
        with self._lock:
            gone = [e for k, e in sorted(self._entries.items()) if k.startswith(prefix)]
            if not gone:
                return []
            self._append(self._revision + 1, [(e.key, None) for e in gone])
            for e in gone:
                del self._entries[e.key]
            self._notify([Change(e.key, None) for e in gone])
            return gone

    def replace(self, puts: Sequence[tuple[str, dict[str, Any]]], deletes: Sequence[str]) -> None:
        """One journal write (one fsync) for every put and delete: all or nothing."""
        with self._lock:
            revision = self._revision + 1
            records: list[tuple[str, Entry | None]] = []
            for key in deletes:
                if key in self._entries:
                    records.append((key, None))
            for key, value in puts:
                previous = self._entries.get(key)
                created = previous.created_index if previous is not None else revision
                records.append((key, Entry(key, json.loads(json.dumps(value)), created, revision)))
            if not records:
                return
            self._append(revision, records)
            for key, written in records:
                if written is None:
                    del self._entries[key]
                else:
                    self._entries[key] = written
            self._notify([Change(key, written) for key, written in records])

    def _append(self, revision: int, records: Iterable[tuple[str, Entry | None]]) -> None:
        f = self._file
        if f is None:
            raise StoreUnavailable(f"store {self.path} is not open")
        data = b"".join(_record(revision, k, e) for k, e in records)
        try:
            f.seek(0, os.SEEK_END)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        except OSError as err:
            raise StoreError(f"failed to write store file {self.path}: {err.strerror}") from None
        self._revision = revision
        self._records += data.count(b"\n")
        if self._records > 2 * len(self._entries) + COMPACT_SLACK:
            self._compact()

    def _compact(self) -> None:
        """Rewrite the journal with only the live objects (atomic: tmp, fsync, rename)."""
        assert self._file is not None
        tmp = self.path + ".tmp"
        # The newest revision is kept by a final record of a key that is never an object.
        lines = [_record(e.modified_index, k, e) for k, e in sorted(self._entries.items())]
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
