"""Config stores: where routes, upstreams, consumers... live at run time.

A store is a flat key-value map with etcd's shape: keys are relative to the prefix
(``routes/1``, ``consumers/jack/credentials/a``, ``plugin_metadata/limit-count``), values are
the JSON objects APISIX stores, each with etcd-style ``created_index``/``modified_index``.
The Admin API writes through a store; the gateway listens to it and feeds the data plane.

* :class:`Store` is the interface (:mod:`.base`);
* ``embedded``: a local file, atomic writes, survives ``kill -9`` (the default);
* ``yaml``: the standalone file, read-only;
* ``etcd``: APISIX's etcd layout, shared by many nodes.
"""

from __future__ import annotations

from .base import Change, Entry, Listener, ReadOnlyStore, Store, StoreError, StoreUnavailable

__all__ = [
    "Change",
    "Entry",
    "Listener",
    "ReadOnlyStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
]
