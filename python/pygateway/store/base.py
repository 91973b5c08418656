"""The store interface shared by the embedded, yaml and etcd stores."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Change",
    "Entry",
    "Listener",
    "ReadOnlyStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
]


@dataclass(frozen=True)
class Entry:
    """One stored object. ``key`` is relative to the prefix (``routes/1``)."""

    key: str
    value: dict[str, Any]
    created_index: int
    modified_index: int


@dataclass(frozen=True)
class Change:
    """``entry`` is None when ``key`` was deleted."""

    key: str
    entry: Entry | None


Listener = Callable[[Sequence[Change], bool], None]
"""Called with a batch of changes; the flag is True when the batch is a full resync
(the complete content of the store: every key not in it is gone)."""


class StoreError(Exception):
    """A write was refused (the message is meant for the Admin API's ``error_msg``)."""


class StoreUnavailable(StoreError):
    """The backend cannot be reached: the Admin API answers 503, the node keeps serving."""


class ReadOnlyStore(StoreError):
    """The store cannot be written (the standalone file)."""


class Store(abc.ABC):
    """A key-value store of config objects, watched by the gateway.

    Implementations keep a local cache of every entry; ``get``/``items`` read that cache
    and never block on the network. Writes return once the backend acknowledged them;
    the listener hears about them (also about writes from other nodes) from the watch.
    """

    read_only: bool = False
    local: bool = True
    """Whether writes stay on this machine (a file, memory): they never wait on the network,
    so the Admin API runs them on its event loop instead of handing them to a thread."""
    replaceable: bool = False
    """Whether :meth:`replace` works: the whole config written at once (PUT /configs)."""
    prefix: str = "/apisix"
    """The key prefix shown by the Admin API (``/apisix/routes/1``)."""

    @abc.abstractmethod
    def start(self, listener: Listener) -> None:
        """Load everything, call ``listener(all_changes, True)`` once, then watch.

        Raises :class:`StoreUnavailable` when the initial load is impossible.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Stop watching and release connections."""

    @abc.abstractmethod
    def get(self, key: str) -> Entry | None:
        """The cached entry at ``key``."""

    @abc.abstractmethod
    def items(self, prefix: str) -> list[Entry]:
        """Cached entries whose key starts with ``prefix`` (``routes/``), ordered by key."""

    @abc.abstractmethod
    def put(self, key: str, value: dict[str, Any], ttl: float | None = None) -> tuple[Entry, bool]:
        """Write ``value`` at ``key``; returns the entry and whether the key was created.

        ``ttl``: seconds after which the key is deleted (APISIX's ``?ttl=``, an etcd lease);
        None: kept until deleted (and a key written with a ttl before is kept from now on).
        """

    @abc.abstractmethod
    def delete(self, key: str) -> Entry | None:
        """Delete ``key``; returns the previous entry (None when there was none)."""

    @abc.abstractmethod
    def new_id(self) -> str:
        """A fresh id for POST: APISIX's 20-digit zero-padded revision number."""

    def replace(self, puts: Sequence[tuple[str, dict[str, Any]]], deletes: Sequence[str]) -> None:
        """Write ``puts`` and delete ``deletes`` as one acknowledged change (stores with
        :attr:`replaceable`)."""
        raise StoreError("this store cannot replace the whole configuration at once")
