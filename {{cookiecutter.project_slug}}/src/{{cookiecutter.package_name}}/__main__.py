"""`python -m {{ cookiecutter.package_name }}`: serve the app with uvicorn on HOST:PORT."""

import signal
from types import FrameType

import uvicorn

from {{ cookiecutter.package_name }}.settings import load_settings


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main() -> None:
    settings = load_settings()
    # After a graceful shutdown uvicorn raises the signal it stopped on once more, under the
    # handler that was there before it: this one, so that a clean stop on SIGTERM exits 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        "{{ cookiecutter.package_name }}.main:app",
        host=settings.host,
        port=settings.port,
        lifespan="on",
        timeout_graceful_shutdown=settings.graceful_shutdown_timeout,
        # main.py routes uvicorn's records into our log stream; the middleware logs each request.
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
