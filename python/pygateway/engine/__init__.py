"""The pure-Python data plane (``--engine python``): aiohttp on asyncio, same change sets,
same routing, proxying and plugin semantics as the native plane (``docs/compatibility.md``
lists the differences)."""

from __future__ import annotations

from .plane import EngineError, PythonDataPlane

__all__ = ["EngineError", "PythonDataPlane"]
