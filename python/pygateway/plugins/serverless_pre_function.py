"""serverless-pre-function (priority 10000): run Python functions early in a phase.

See :mod:`pygateway.plugins._serverless` for the function format (Python, not Lua).
"""

from __future__ import annotations

from typing import ClassVar

from pygateway.plugin import Plugin

from ._serverless import ServerlessMixin


class ServerlessPreFunction(ServerlessMixin, Plugin):
    name: ClassVar[str] = "serverless-pre-function"
    priority: ClassVar[int] = 10000
