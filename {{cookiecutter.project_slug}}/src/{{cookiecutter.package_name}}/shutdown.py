"""Draining on SIGTERM: /health/ready turns 503 at once while the server keeps serving for
DRAIN_SECONDS, so that load balancers stop sending requests before the listener closes; then the
server's own graceful shutdown lets the requests in flight finish."""

import asyncio
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType

import structlog

log = structlog.get_logger(__name__)


class ShutdownState:
    def __init__(self) -> None:
        self.draining = False


@asynccontextmanager
async def drain_on_sigterm(drain_seconds: float) -> AsyncIterator[ShutdownState]:
    """Put ourselves in front of the server's SIGTERM handler for the life of the app."""
    shutdown = ShutdownState()
    server_handler = signal.getsignal(signal.SIGTERM)
    # Only a server that stops on SIGTERM (uvicorn) has a handler to put off; an app run in a
    # test, or outside the main thread, has none and is never drained.
    if not callable(server_handler) or threading.current_thread() is not threading.main_thread():
        yield shutdown
        return
    loop = asyncio.get_running_loop()

    def start_draining() -> None:
        log.info("shutdown.draining", drain_seconds=drain_seconds)
        loop.call_later(drain_seconds, server_handler, signal.SIGTERM, None)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if shutdown.draining:  # a second SIGTERM: stop waiting
            server_handler(signum, frame)
            return
        shutdown.draining = True
        # A signal handler interrupts whatever runs: hand the rest to the event loop.
        loop.call_soon_threadsafe(start_draining)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield shutdown
    finally:
        signal.signal(signal.SIGTERM, server_handler)
