"""ip-restriction: allow (whitelist) or deny (blacklist) clients by IP address / CIDR."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Any, ClassVar, Union

from pygateway.config.schema import IP_DEF
from pygateway.ctx import Ctx
from pygateway.plugin import Plugin, Response

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


@lru_cache(maxsize=512)
def _networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def ip_in(addr: str | None, cidrs: list[str]) -> bool:
    """Is ``addr`` inside one of ``cidrs``?  An unparsable address matches nothing."""
    if not addr:
        return False
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        mapped: ipaddress.IPv4Address | ipaddress.IPv6Address = ip.ipv4_mapped
    else:
        mapped = ip
    for net in _networks(tuple(cidrs)):
        if (ip.version == net.version and ip in net) or (
            mapped.version == net.version and mapped in net
        ):
            return True
    return False


class IpRestriction(Plugin):
    name: ClassVar[str] = "ip-restriction"
    priority: ClassVar[int] = 3000
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "message": {
                "type": "string",
                "minLength": 1,
                "maxLength": 1024,
                "default": "Your IP address is not allowed",
            },
            "response_code": {"type": "integer", "minimum": 403, "maximum": 404, "default": 403},
            "whitelist": {"type": "array", "items": {"anyOf": IP_DEF}, "minItems": 1},
            "blacklist": {"type": "array", "items": {"anyOf": IP_DEF}, "minItems": 1},
        },
        "oneOf": [{"required": ["whitelist"]}, {"required": ["blacklist"]}],
    }

    def check_schema(self, conf: dict[str, Any], schema_type: str) -> str | None:
        for key in ("whitelist", "blacklist"):
            for cidr in conf.get(key) or []:
                try:
                    ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    return f"invalid ip address: {cidr}"
        return None

    def access(self, conf: dict[str, Any], ctx: Ctx) -> Response | None:
        addr = ctx.remote_addr
        block = False
        if conf.get("blacklist"):
            block = ip_in(addr, conf["blacklist"])
        if conf.get("whitelist"):
            block = not ip_in(addr, conf["whitelist"])
        if block:
            return conf.get("response_code", 403), {
                "message": conf.get("message", "Your IP address is not allowed")
            }
        return None
