"""serverless-post-function (priority -2000): run Python functions late in a phase.

See :mod:`pygateway.plugins._serverless` for the function format (Python, not Lua).
"""

from __future__ import annotations

from typing import ClassVar

from pygateway.plugin import Plugin

from ._serverless import ServerlessMixin


class ServerlessPostFunction(ServerlessMixin, Plugin):
    name: ClassVar[str] = "serverless-post-function"
    priority: ClassVar[int] = -2000
