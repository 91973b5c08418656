"""Configuration errors: one :class:`ConfigIssue` per problem, all collected."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ConfigError", "ConfigIssue"]


@dataclass(frozen=True)
class ConfigIssue:
    """One problem found in a configuration.

    * ``resource``: ``routes``, ``upstreams``, ... or ``""`` for the file as a whole;
    * ``id``: the item id (``arr_<n>`` for id-less items), or None;
    * ``path``: the field, ``upstream.nodes[0].port`` (``""`` = the item itself);
    * ``message``: the full APISIX wording, as the Admin API would put in ``error_msg``;
    * ``detail``: the same message relative to ``path`` (what ``str()`` shows);
    * ``source``, ``line``, ``column``, ``position`` (of the item in its list): where, when
      known (1-based).

    ``str(issue)`` is ``<resource>[id=<id>] <path>: <detail>``, e.g.
    ``routes[id=1] upstream.timeout.connect: expected 0 to be greater than 0``, prefixed
    by ``<source>:<line>:<column>: `` when a position is known.
    """

    resource: str
    id: str | None
    path: str
    message: str
    detail: str = ""
    source: str | None = None
    line: int | None = None
    column: int | None = None
    position: int | None = None
    """1-based place of the item in its resource list, when known."""

    def __str__(self) -> str:
        where = ""
        if self.source is not None and self.line is not None:
            where = f"{self.source}:{self.line}"
            if self.column is not None:
                where += f":{self.column}"
            where += ": "
        subject = self.resource
        if self.id is not None:
            subject += f"[id={self.id}]"
        if self.path:
            subject = f"{subject} {self.path}" if subject else self.path
        text = self.detail or self.message
        return f"{where}{subject}: {text}" if subject else f"{where}{text}"


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` lists every problem found."""

    def __init__(self, errors: Sequence[ConfigIssue]) -> None:
        self.errors: list[ConfigIssue] = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)
