"""Helpers shared by the built-in plugins: ``$var`` templates, nginx-style regex substitution,
URI escaping and header-value normalisation.  Not a plugin (the leading underscore keeps the
registry from loading it)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from functools import lru_cache
from typing import Any

from pygateway.config.validator import lua_number
from pygateway.ctx import Ctx

__all__ = [
    "PCRE_OPTION_FLAGS",
    "add_value",
    "compile_pcre",
    "header_value",
    "ngx_sub",
    "resolve_captures",
    "resolve_var",
    "uri_safe_encode",
    "var_lookup",
]

# `$name`, `${name}` and `${name ?? default}`; a backslash before `$` escapes it.
_VAR_RE = re.compile(r"(?<!\\)\$(\{\s*([^}]+?)\s*\}|([\w.]+))", re.ASCII)
_DEFAULT_SPLIT_RE = re.compile(r"\s*\?\?\s*")
_CAPTURE_RE = re.compile(r"(?<!\\)\$\{?(\d+)\}?")

PCRE_OPTION_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}


def var_lookup(var: Mapping[str, Any], name: str) -> Any:
    """``var[name]`` that treats a missing variable as ``None``."""
    try:
        return var.get(name)
    except (KeyError, LookupError):
        return None


def _to_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return lua_number(value)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def resolve_var(
    template: str, var: Mapping[str, Any], escaper: Callable[[str], str] | None = None
) -> str:
    """Interpolate ``$name`` / ``${name}`` / ``${name ?? default}`` from ``var``.

    A missing variable becomes the empty string (or the default), as APISIX's
    ``core.utils.resolve_var`` does.
    """
    if "$" not in template:
        return template

    def repl(m: re.Match[str]) -> str:
        name = m.group(2) or m.group(3) or ""
        segs = _DEFAULT_SPLIT_RE.split(name)
        value = var_lookup(var, segs[0])
        if value is None:
            if len(segs) == 1:
                return ""
            value = segs[1]
        text = _to_text(value)
        return escaper(text) if escaper is not None else text

    return _VAR_RE.sub(repl, template)


def resolve_captures(template: str, captures: list[str | None] | None) -> str:
    """Replace ``$1`` / ``${1}`` with regex captures (``captures[0]`` is the whole match)."""
    if "$" not in template:
        return template
    caps = captures or []

    def repl(m: re.Match[str]) -> str:
        idx = int(m.group(1))
        if idx < len(caps):
            return caps[idx] or ""
        return ""

    return _CAPTURE_RE.sub(repl, template)


@lru_cache(maxsize=512)
def compile_pcre(pattern: str, options: str = "jo") -> re.Pattern[str]:
    """Compile a PCRE pattern with ngx.re option letters (``j``/``o``/``u`` are ignored)."""
    flags = 0
    for ch in options:
        flags |= PCRE_OPTION_FLAGS.get(ch, 0)
    return re.compile(pattern, flags)


def pcre_problem(rules: Iterable[str]) -> str | None:
    """Why one of ``rules`` does not compile (for a plugin's ``check_schema``), or None."""
    for rule in rules:
        try:
            compile_pcre(rule, "j")
        except re.error as err:
            return f"{err} in {rule!r}"
    return None


_TEMPLATE_RE = re.compile(r"\$(?:\{(\d+)\}|(\d+)|(\$))|\$")


@lru_cache(maxsize=512)
def _parse_template(template: str) -> tuple[tuple[str | int, ...], ...]:
    parts: list[tuple[str | int, ...]] = []
    pos = 0
    for m in _TEMPLATE_RE.finditer(template):
        if m.start() > pos:
            parts.append((template[pos : m.start()],))
        if m.group(1) is not None or m.group(2) is not None:
            parts.append((int(m.group(1) or m.group(2)),))
        elif m.group(3) is not None:
            parts.append(("$",))
        else:
            raise ValueError("invalid capturing variable name")
        pos = m.end()
    if pos < len(template):
        parts.append((template[pos:],))
    return tuple(parts)


def ngx_sub(
    subject: str, pattern: str, template: str, options: str = "jo", *, count: int = 1
) -> tuple[str, int]:
    """``ngx.re.sub`` (``count=1``) / ``ngx.re.gsub`` (``count=0``).

    The template uses ``$0``, ``$1``, ``${1}`` and ``$$``.  Returns ``(result, n)``.
    Raises ``re.error`` / ``ValueError`` on a bad pattern or template.
    """
    regex = compile_pcre(pattern, options)
    parts = _parse_template(template)

    def repl(m: re.Match[str]) -> str:
        out: list[str] = []
        for part in parts:
            item = part[0]
            if isinstance(item, int):
                if item > (regex.groups or 0):
                    continue
                out.append(m.group(item) or "")
            else:
                out.append(item)
        return "".join(out)

    return regex.subn(repl, subject, count=count)


# nginx's NGX_ESCAPE_URI: space, '#', '%', '?', control characters and non-ASCII bytes.
_URI_UNSAFE = frozenset(b" #%?\x7f") | frozenset(range(0x20)) | frozenset(range(0x80, 0x100))


def uri_safe_encode(uri: str) -> str:
    """APISIX ``core.utils.uri_safe_encode`` (nginx ``ngx_escape_uri`` type URI)."""
    raw = uri.encode("utf-8", "surrogateescape")
    if not any(b in _URI_UNSAFE for b in raw):
        return uri
    return "".join(f"%{b:02X}" if b in _URI_UNSAFE else chr(b) for b in raw)


def decode_base64(text: str) -> bytes | None:
    """nginx's ``decode_base64``: standard alphabet, the ``=`` padding optional; None when
    the text is not base64."""
    text = text.strip()
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def header_value(value: Any) -> str:
    """A conf header value (string or number) as text, Lua ``tostring`` style."""
    return _to_text(value)


def add_value(headers: MutableMapping[str, str], name: str, value: str) -> None:
    """Add a header line, as nginx's ``add_header`` (APISIX ``core.response.add_header``):
    a separate line in a multi-valued mapping (two ``Set-Cookie`` must not become one), else
    joined with ``, `` (RFC 9110 §5.3)."""
    add = getattr(headers, "add", None)
    if callable(add):
        add(name, value)
        return
    existing = headers.get(name)
    headers[name] = f"{existing}, {value}" if existing else value


def restriction_schema(allow: str, deny: str, item: dict[str, Any], message: str) -> dict[str, Any]:
    """The schema of APISIX's ``*-restriction`` plugins: an ``allow`` or a ``deny`` list of
    ``item``, ``bypass_missing`` and the 403's ``message``."""
    items = {"type": "array", "items": item, "minItems": 1}
    return {
        "type": "object",
        "properties": {
            "bypass_missing": {"type": "boolean", "default": False},
            allow: items,
            deny: items,
            "message": {"type": "string", "minLength": 1, "maxLength": 1024, "default": message},
        },
        "oneOf": [{"required": [allow]}, {"required": [deny]}],
    }


# -- auth plugins ------------------------------------------------------------------------------

REALM_PATTERN = "^[\x20-\x21\x23-\x5b\\]-\x7e]+$"


def realm_schema(default: str) -> dict[str, Any]:
    """APISIX ``schema_def.get_realm_schema``: printable ASCII without ``"`` and ``\\``."""
    return {
        "type": "string",
        "pattern": REALM_PATTERN,
        "default": default,
        "minLength": 1,
        "maxLength": 128,
    }


ANONYMOUS_CONSUMER_SCHEMA: dict[str, Any] = {"type": "string", "minLength": 1}


def find_consumer(ctx: Ctx, plugin_name: str, key_field: str, value: str) -> dict[str, Any] | None:
    """The consumer whose ``plugin_name`` conf has ``key_field == value`` (runtime lookup)."""
    finder = getattr(ctx, "find_consumer", None)
    if finder is None:
        return None
    found: dict[str, Any] | None = finder(plugin_name, key_field, value)
    return found


def get_consumer(ctx: Ctx, username: str) -> dict[str, Any] | None:
    """A consumer by username (for ``anonymous_consumer``)."""
    getter = getattr(ctx, "get_consumer", None)
    if getter is None:
        return None
    found: dict[str, Any] | None = getter(username)
    return found


def or_anonymous(
    ctx: Ctx, plugin_name: str, conf: dict[str, Any], consumer: dict[str, Any] | None, err: str
) -> tuple[dict[str, Any] | None, str]:
    """``consumer``, else the conf's ``anonymous_consumer`` (APISIX's auth plugins); None
    and the 401's message when there is neither."""
    if consumer is not None:
        return consumer, err
    anonymous = conf.get("anonymous_consumer")
    if not anonymous:
        return None, err
    found = get_consumer(ctx, anonymous)
    if found is None:
        ctx.log.error(
            "%s failed to authenticate the request, code: 401. error: "
            "failed to get anonymous consumer %s",
            plugin_name,
            anonymous,
        )
        return None, "Invalid user authorization"
    return found, err


def attach_consumer(ctx: Ctx, consumer: dict[str, Any]) -> None:
    """``ctx.attach_consumer`` plus the upstream headers APISIX's attach_consumer sets."""
    ctx.attach_consumer(consumer)
    for header, key in (
        ("X-Consumer-Username", "username"),
        ("X-Credential-Identifier", "credential_id"),
        ("X-Consumer-Custom-ID", "custom_id"),
    ):
        value = consumer.get(key)
        if value is not None and value != "":
            ctx.set_header(header, str(value))
        else:
            ctx.remove_header(header)


def remove_query_arg(query: str | None, name: str) -> str:
    """``query`` without every ``name=...`` parameter; other parameters keep their encoding."""
    from urllib.parse import unquote_plus

    if not query:
        return ""
    kept = [
        part for part in query.split("&") if part and unquote_plus(part.split("=", 1)[0]) != name
    ]
    return "&".join(kept)
