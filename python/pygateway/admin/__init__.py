"""The Admin API v3 (APISIX's ``/apisix/admin``): read and write the config store.

* :mod:`.api`: resources, methods, validation and answers (no HTTP);
* :mod:`.server`: the aiohttp listener (its own thread), admin keys, ``allow_admin``.

See ``docs/admin.md``.
"""

from __future__ import annotations

from .api import AdminApi
from .server import AdminServer

__all__ = ["AdminApi", "AdminServer"]
