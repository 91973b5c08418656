"""referer-restriction: allow or deny requests by the host of their ``Referer``, as APISIX's
plugin does: exact hosts, or ``*.example.com`` (any host ending in ``.example.com``; ``*``
alone: any host); 403 ``{"message": message}``. A request without a ``Referer`` (or with one
whose host cannot be read) is refused unless ``bypass_missing``."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, ClassVar

from pygateway.config.schema import HOST_DEF
from pygateway.ctx import Ctx
from pygateway.plugin import Plugin, Response

from ._util import restriction_schema

# lua-resty-http's parse_uri: an optional scheme, then //host (a bracketed IPv6 literal or a
# name), the port and the rest.
_URI = re.compile(r"^(?:(https?):)?//((?:[^\[\]:/?]+)|(?:\[.+\]))")


@lru_cache(maxsize=512)
def _matcher(hosts: tuple[str, ...]) -> tuple[frozenset[str], tuple[str, ...]]:
    """(exact hosts, suffixes of the ``*`` ones)."""
    return (
        frozenset(h for h in hosts if not h.startswith("*")),
        tuple(h[1:] for h in hosts if h.startswith("*")),
    )


def host_listed(host: str, hosts: list[str]) -> bool:
    exact, suffixes = _matcher(tuple(hosts))
    return host in exact or any(host.endswith(s) for s in suffixes)


class RefererRestriction(Plugin):
    name: ClassVar[str] = "referer-restriction"
    priority: ClassVar[int] = 2990
    schema: ClassVar[dict[str, Any]] = restriction_schema(
        "whitelist", "blacklist", HOST_DEF, "Your referer host is not allowed"
    )

    def access(self, conf: dict[str, Any], ctx: Ctx) -> Response | None:
        referer = ctx.headers.get("referer")
        m = _URI.match(referer) if referer is not None else None
        if m is None:
            block = not conf.get("bypass_missing")
        elif conf.get("whitelist"):
            block = not host_listed(m.group(2), conf["whitelist"])
        else:
            block = host_listed(m.group(2), conf.get("blacklist") or [])
        if block:
            return 403, {"message": conf.get("message", "Your referer host is not allowed")}
        return None
