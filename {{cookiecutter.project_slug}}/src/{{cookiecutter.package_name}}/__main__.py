"""`python -m {{ cookiecutter.package_name }}`: serve the app with uvicorn on HOST:PORT, in WORKERS processes."""

import atexit
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from types import FrameType

import uvicorn
from prometheus_client import multiprocess
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from {{ cookiecutter.package_name }}.logging import configure_logging
from {{ cookiecutter.package_name }}.settings import load_settings


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    # By now uvicorn has finished its graceful shutdown and the lifespan has closed every
    # resource. Tearing the interpreter down (freeing every imported module) would take longer
    # than all of that, so exit at once, after the exit handlers and with the output flushed.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class _Workers(Multiprocess):
    """uvicorn's supervisor, which also tells prometheus-client when a worker is gone (killed by
    the OOM killer, crashed, or replaced): the files of its live gauges would otherwise stay and
    count in every scrape, twice the connection limits once it is replaced."""

    def keep_subprocess_alive(self) -> None:
        with self._marking_the_gone_dead():
            super().keep_subprocess_alive()

    def restart_all(self) -> None:
        with self._marking_the_gone_dead():
            super().restart_all()

    @contextlib.contextmanager
    def _marking_the_gone_dead(self) -> Iterator[None]:
        before = {process.pid for process in self.processes}
        try:
            yield
        finally:
            gone = before - {process.pid for process in self.processes}
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # unset with METRICS_ENABLED=false
                for pid in filter(None, gone):
                    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def main(app: str = "{{ cookiecutter.package_name }}.main:app") -> None:
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    config = uvicorn.Config(
        # An import string, not the app: each worker imports it, so nothing is opened before
        # the fork and every worker runs a lifespan (and pools) of its own.
        app,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        lifespan="on",
        timeout_graceful_shutdown=settings.graceful_shutdown_timeout,
        # Explicit, so that uvicorn's own FORWARDED_ALLOW_IPS variable is not read behind the
        # settings' back: the request line logs the client these make of X-Forwarded-For.
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        # main.py routes uvicorn's records into our log stream; the middleware logs each request.
        log_config=None,
        access_log=False,
        # Each request starts in an empty context. With httptools, a pipelined request's task
        # is created inside the previous request's and copied its context: that request's log
        # fields (its subject) and its trace span.
        reset_contextvars=True,
    )
    if settings.workers == 1:
        # After a graceful shutdown uvicorn raises the signal it stopped on once more, under
        # the handler that was there before it: this one, so that a clean stop exits 0.
        signal.signal(signal.SIGTERM, _exit_cleanly)
        server = uvicorn.Server(config)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn has already stopped
            server.run()
        if not server.started:
            raise SystemExit(STARTUP_FAILURE)
        return

    if settings.metrics_enabled:
        # Before any worker starts (they inherit it), and a new one per run: prometheus-client
        # would otherwise add the counters of an earlier run.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="metrics-")
        atexit.register(shutil.rmtree, os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
    supervisor = _Workers(config, sockets=[config.bind_socket()])
    supervisor.run()
    # uvicorn stops every worker when one fails to start, rather than restart it in a loop;
    # the exit status has to say so.
    if any(worker.exitcode == STARTUP_FAILURE for worker in supervisor.processes):
        raise SystemExit(STARTUP_FAILURE)


if __name__ == "__main__":
    main()
