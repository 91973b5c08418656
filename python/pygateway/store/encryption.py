"""APISIX's ``data_encryption``: plugins' ``encrypt_fields`` are ciphertext in etcd.

APISIX 3.x encrypts by default, when its config lives in etcd, the secret fields a plugin's
schema lists in ``encrypt_fields`` (key-auth's ``key``, basic-auth's ``password``, jwt-auth's
``secret``, the limiters' ``redis_password``...): AES-CBC with each keyring entry as both key
and IV (16 bytes: AES-128, 32: AES-256 with the first 16 as the IV), PKCS#7, base64. It
encrypts with the first entry when the Admin API writes and tries every entry when it reads;
a value that does not decrypt is used as it is (written before encryption was on, or by
hand).

:class:`FieldEncryption` does the same at the etcd store's edge: what goes to etcd (and to
the store's snapshot file) is encrypted, what the store hands to the Admin API and the config
builder is plaintext. So a pygateway node and APISIX nodes can share one etcd, consumers and
all, with APISIX's default keyring or the one they were given.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Sequence
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..config.jsonvalue import json_copy
from ..config.node import keyring_problem

__all__ = ["APISIX_DEFAULT_KEYRING", "FieldEncryption", "FieldsOf"]

log = logging.getLogger("pygateway.store")

APISIX_DEFAULT_KEYRING = ("qeddd145sfvddff3", "edd1c9f0985e76a2")
"""APISIX's default ``apisix.data_encryption.keyring``: what an APISIX cluster left at its
defaults encrypted its etcd with."""

FieldsOf = Callable[[str, str], Sequence[str]]
"""``fields(plugin_name, schema_type)``: the plugin's ``encrypt_fields`` for that schema
type (``"schema"``, ``"consumer"`` or ``"metadata"``); empty for an unknown plugin."""


class _Key:
    def __init__(self, secret: str) -> None:
        raw = secret.encode()
        # APISIX passes the key as the IV too; OpenSSL reads the 16 bytes an AES IV has.
        self._cipher = Cipher(algorithms.AES(raw), modes.CBC(raw[:16]))

    def encrypt(self, text: str) -> str:
        padder = padding.PKCS7(128).padder()
        data = padder.update(text.encode()) + padder.finalize()
        enc = self._cipher.encryptor()
        return base64.b64encode(enc.update(data) + enc.finalize()).decode()

    def decrypt(self, data: bytes) -> str | None:
        if not data or len(data) % 16:
            return None
        dec = self._cipher.decryptor()
        unpadder = padding.PKCS7(128).unpadder()
        try:
            raw = unpadder.update(dec.update(data) + dec.finalize()) + unpadder.finalize()
            return raw.decode()
        except (ValueError, UnicodeDecodeError):
            return None


class FieldEncryption:
    """Encrypts and decrypts the ``encrypt_fields`` of the plugins in stored values."""

    def __init__(self, keyring: Sequence[str], fields: FieldsOf) -> None:
        problem = keyring_problem(tuple(keyring))
        if problem is not None:
            raise ValueError(f"keyring[{problem[0]}]: {problem[1]}")
        self._keys = [_Key(k) for k in keyring]
        self._fields = fields

    def encrypt_text(self, text: str) -> str:
        return self._keys[0].encrypt(text) if self._keys else text

    def decrypt_text(self, text: str) -> str | None:
        """The plaintext, or None when no key of the keyring decrypts ``text``."""
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return None
        for key in self._keys:
            plain = key.decrypt(data)
            if plain is not None:
                return plain
        return None

    def encode(self, key: str, value: dict[str, Any]) -> dict[str, Any]:
        """``value`` as it goes to etcd (a copy when anything was encrypted)."""
        return self._process(key, value, self.encrypt_text)

    def decode(self, key: str, value: dict[str, Any]) -> dict[str, Any]:
        """``value`` as it came from etcd, its encrypted fields in plaintext (a copy when
        anything was decrypted); a field that does not decrypt is kept as it is."""
        return self._process(key, value, self.decrypt_text)

    def _process(
        self, key: str, value: dict[str, Any], op: Callable[[str], str | None]
    ) -> dict[str, Any]:
        if not self._keys:
            return value
        resource, _, rest = key.partition("/")
        if resource == "plugin_metadata":
            names = self._fields(rest, "metadata")
            return self._apply(value, names, op) if names else value
        plugins = value.get("plugins")
        if not isinstance(plugins, dict):
            return value
        schema_type = "consumer" if resource == "consumers" else "schema"
        out: dict[str, Any] | None = None
        for name, conf in plugins.items():
            names = self._fields(name, schema_type) if isinstance(conf, dict) else ()
            if not names:
                continue
            done = self._apply(conf, names, op)
            if done is not conf:
                if out is None:
                    out = dict(value)
                    out["plugins"] = dict(plugins)
                out["plugins"][name] = done
        return value if out is None else out

    def _apply(
        self, conf: dict[str, Any], paths: Sequence[str], op: Callable[[str], str | None]
    ) -> dict[str, Any]:
        copied = json_copy(conf)
        changed = False
        for path in paths:
            changed = _walk(copied, path.split("."), op) or changed
        return copied if changed else conf


def _walk(node: Any, path: list[str], op: Callable[[str], str | None]) -> bool:
    """Apply ``op`` to the strings at ``path`` under ``node`` (APISIX's traversal: lists
    met on the way are walked element by element; the leaf may be a string, a list of
    strings or a map of strings). Whether anything changed."""
    if not isinstance(node, dict) or path[0] not in node:
        return False
    head, rest = path[0], path[1:]
    child = node[head]
    if rest:
        items = child if isinstance(child, list) else [child]
        return any([_walk(item, rest, op) for item in items])
    if isinstance(child, str):
        return _replace(node, head, op)
    if isinstance(child, list):
        return any([_replace(child, i, op) for i in range(len(child))])
    if isinstance(child, dict):
        return any([_replace(child, k, op) for k in list(child)])
    return False


def _replace(container: Any, key: Any, op: Callable[[str], str | None]) -> bool:
    """``container[key] = op(container[key])`` for a string that ``op`` changes."""
    value = container[key]
    if not isinstance(value, str):
        return False
    done = op(value)
    if done is None or done == value:
        return False
    container[key] = done
    return True
