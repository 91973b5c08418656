"""Units of the native engine's plugin runner that need no data plane."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from pygateway.pipeline import Pipeline
from pygateway.plugin import PluginRegistry
from pygateway.runner import PluginRunner


class StandInJob:
    """Records how the runner answers a request crossing."""

    phase = "request"
    cancelled = False

    def __init__(self) -> None:
        self.answer: tuple[Any, ...] | None = None

    def respond(self, *args: Any) -> None:
        self.answer = args


def test_a_failure_after_an_async_phase_still_answers_the_job() -> None:
    registry = PluginRegistry([], builtins=False, entry_points=False)
    runner = PluginRunner(object(), Pipeline(registry, skip_native=True))  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner._loop = loop
    try:

        async def phase() -> None:
            return None

        def done(_: Any) -> None:
            raise TypeError("the reply could not be made")

        job = StandInJob()
        runner._spawn(job, phase(), done)  # type: ignore[arg-type]
        deadline = time.monotonic() + 5
        while job.answer is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert job.answer is not None, "the request would wait for an answer forever"
        assert job.answer[0] == 500
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
