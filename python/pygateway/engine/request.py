"""What the Python engine derives from a request head before routing (``rust/server/request.rs``):
the canonical path, the host, the client address and APISIX's request variables.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from .router import Address, IpSet

__all__ = ["BadRequest", "RequestInfo", "client_addr", "normalize_path", "split_target"]

_HOST_CHARS = re.compile(r"[a-zA-Z0-9\-._\[\]:]*")
_HEX = frozenset("0123456789abcdefABCDEF")


class BadRequest(Exception):
    """A request head refused with 400."""


def _valid_port(p: str) -> bool:
    return 0 < len(p) <= 5 and p.isascii() and p.isdigit()


def _strip_port(raw: str) -> str:
    """``host[:port]`` or ``[v6][:port]`` → the host part, validated."""
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0:
            raise BadRequest("host")
        after = raw[end + 1 :]
        if after and not (after.startswith(":") and _valid_port(after[1:])):
            raise BadRequest("host")
        host = raw[: end + 1]
    else:
        name, colon, port = raw.rpartition(":")
        if colon:
            if not _valid_port(port):
                raise BadRequest("host")
            host = name
        else:
            host = raw
    if _HOST_CHARS.fullmatch(host) is None:
        raise BadRequest("host")
    return host


def header_text(wire: str) -> str:
    """A request header value as plugins see it (the native plane's view): its bytes
    (here as latin-1 text, one character per byte) read as UTF-8, invalid bytes replaced."""
    return wire if wire.isascii() else wire.encode("latin-1").decode("utf-8", "replace")


def header_wire(text: str) -> str:
    """A header value a plugin set, as latin-1 text of its UTF-8 bytes (what the native
    plane sends): the form the upstream head is encoded from."""
    return text if text.isascii() else text.encode("utf-8").decode("latin-1")


def split_target(target: str) -> tuple[str | None, str]:
    """A request target → (authority of an absolute-form target, path and query). A
    fragment (which clients should not send) is dropped, as nginx's ``$uri`` and the native
    plane's parser do."""
    target = target.partition("#")[0]
    scheme, sep, rest = target.partition("://")
    if sep and scheme and "/" not in scheme and not target.startswith("/"):
        cut = len(rest)
        for ch in "/?":
            i = rest.find(ch)
            if 0 <= i < cut:
                cut = i
        authority, pq = rest[:cut], rest[cut:]
        if not pq:
            pq = "/"
        elif pq.startswith("?"):
            pq = "/" + pq
        return authority, pq
    return None, target


def request_host(host_headers: Sequence[str], authority: str | None, http10: bool) -> str:
    """The host used for routing: lower-cased, without port."""
    if len(host_headers) > 1:
        raise BadRequest("host")
    header = host_headers[0] if host_headers else None
    if authority is not None and header is not None:
        if authority.lower() != header.lower():
            raise BadRequest("host mismatch")
        raw = authority
    elif authority is not None:
        raw = authority
    elif header is not None:
        raw = header
    elif http10:
        raw = ""
    else:
        raise BadRequest("host")
    # nginx's $host: one trailing dot dropped, and two dots in a row refused.
    name = _strip_port(raw).lower()
    if ".." in name:
        raise BadRequest("host")
    return name.removesuffix(".")


def normalize_path(raw: str) -> str:
    """Canonical form of a request path as nginx's ``$uri``: percent-decoded, ``.``/``..``
    resolved, repeated slashes merged. Raises :class:`BadRequest` when impossible."""
    if not raw.startswith("/"):
        if raw == "*":
            return raw
        raise BadRequest("path")
    if not (
        "%" in raw
        or "//" in raw
        or "/./" in raw
        or "/../" in raw
        or raw.endswith("/.")
        or raw.endswith("/..")
    ):
        return raw
    data = raw.encode("latin-1", "surrogateescape") if not raw.isascii() else raw.encode()
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        if b == 0x25:  # %
            hexpair = data[i + 1 : i + 3]
            if len(hexpair) != 2 or not all(chr(c) in _HEX for c in hexpair):
                raise BadRequest("path")
            v = int(hexpair, 16)
            if v == 0:
                raise BadRequest("path")
            out.append(v)
            i += 3
        else:
            out.append(b)
            i += 1
    try:
        text = out.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("path") from None
    trailing = text.endswith(("/", "/.", "/.."))
    segs: list[str] = []
    for seg in text.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if not segs:
                raise BadRequest("path")
            segs.pop()
        else:
            segs.append(seg)
    path = "".join("/" + s for s in segs)
    if trailing or not path:
        path += "/"
    return path


def _parse_ip(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def client_addr(xff_values: Sequence[str], peer: Address, trusted: IpSet) -> Address:
    """The client: X-Forwarded-For is believed only from a trusted peer, walked right to
    left; the first untrusted hop is the client."""
    if not trusted or not trusted.matches(peer):
        return peer
    client = peer
    hops = [h for v in xff_values for h in v.split(",")]
    for hop in reversed(hops):
        ip = _parse_ip(hop)
        if ip is None:
            break
        client = ip
        if not trusted.matches(ip):
            break
    return client


class RequestInfo:
    """A request as the router and plugins see it (``RequestView`` of the native plane)."""

    __slots__ = (
        "client",
        "client_ip",
        "headers",
        "host",
        "local",
        "method",
        "path",
        "peer",
        "peer_trusted",
        "query",
        "request_uri",
        "version",
    )

    def __init__(
        self,
        *,
        method: str,
        request_uri: str,
        headers: list[tuple[str, str]],
        host: str,
        path: str,
        query: str | None,
        client: Address,
        peer: tuple[str, int],
        local: tuple[str, int],
        version: str,
        client_ip: str | None = None,
        peer_trusted: bool = False,
    ) -> None:
        self.method = method
        self.request_uri = request_uri
        """Path and query as received (origin form)."""
        self.headers = headers
        """(lower-cased name, value) as received."""
        self.host = host
        self.path = path
        self.query = query
        self.client = client
        self.client_ip = str(client) if client_ip is None else client_ip
        """``str(client)``."""
        self.peer = peer
        self.peer_trusted = peer_trusted
        """Whether the peer is one of the trusted addresses (its X-Forwarded-* are kept)."""
        self.local = local
        self.version = version

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def var(self, name: str) -> str | None:
        """A variable by its APISIX name; None when absent."""
        if name.startswith("http_"):
            wanted = name[5:].replace("_", "-").lower()
            values = [v for n, v in self.headers if n == wanted]
            if not values:
                return None
            return "; ".join(values) if wanted == "cookie" else values[0]
        if name.startswith("arg_"):
            if self.query is None:
                return None
            key = name[4:].lower()
            for pair in self.query.split("&"):
                k, _, v = pair.partition("=")
                if k.lower() == key:
                    return v
            return None
        if name.startswith("cookie_"):
            key = name[7:]
            for n, v in self.headers:
                if n != "cookie":
                    continue
                for c in v.split(";"):
                    k, _, val = c.strip().partition("=")
                    if k == key:
                        return val
            return None
        if name == "uri":
            return self.path
        if name == "host":
            return self.host
        if name == "request_method":
            return self.method
        if name == "request_uri":
            return self.request_uri
        if name in ("query_string", "args"):
            return self.query
        if name == "is_args":
            return "?" if self.query is not None else ""
        if name == "remote_addr":
            return self.client_ip
        if name == "remote_port":
            return str(self.peer[1])
        if name == "realip_remote_addr":
            return self.peer[0]
        if name == "server_addr":
            return self.local[0]
        if name == "server_port":
            return str(self.local[1])
        if name == "scheme":
            return "http"
        if name == "server_protocol":
            return self.version
        return None
