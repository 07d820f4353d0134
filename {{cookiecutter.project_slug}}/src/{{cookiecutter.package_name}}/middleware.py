"""Request ids, a limit on request bodies, one log line and the metrics of each request, as one
pure ASGI middleware (no response buffering): a layer of its own for each would cost every
request another call, `send` wrapper and try/finally."""

import json
import logging
import os
import re
import time
from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from {{ cookiecutter.package_name }}.metrics import RequestMetrics

REQUEST_ID_HEADER = "X-Request-ID"
_RAW_REQUEST_ID_HEADER = REQUEST_ID_HEADER.lower().encode("latin-1")
# Incoming ids are echoed and logged, so only short, printable ones are trusted.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

_INTERNAL_ERROR_BODY = b'{"detail":"Internal Server Error"}'
# The scope's key for the tokens of what bind_request_log_fields bound.
_BOUND_FIELDS = "log_fields_bound"

# Requests of probes and scrapes are logged at PROBE_LOG_LEVEL rather than INFO.
_PROBE_PATH_PREFIX = "/health/"
_SCRAPE_PATH = "/metrics"

log = structlog.get_logger(__name__)


class RequestBodyTooLarge(HTTPException):
    """Raised from `receive` as soon as the body read so far exceeds the limit. An HTTPException
    because FastAPI passes those on while it reads a body (any other error becomes a 400), so
    that the app's exception handling answers it as a 413."""

    def __init__(self, limit: int) -> None:
        # The rest of the body is never read: closing the connection spares the server from
        # receiving it only to throw it away.
        super().__init__(413, _too_large_detail(limit), headers={"Connection": "close"})


def bind_request_log_fields(scope: Scope, **fields: Any) -> None:
    """Add `fields` to every log line of the rest of this request, its `http.request` line
    included; they are unbound when the request ends (a connection's next request is served
    by the same task, and must not inherit them)."""
    tokens = structlog.contextvars.bind_contextvars(**fields)
    scope.setdefault(_BOUND_FIELDS, []).append(tokens)


def _too_large_detail(limit: int) -> str:
    return f"request body too large: the limit is {limit} bytes"


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == _RAW_REQUEST_ID_HEADER:
            request_id = value.decode("latin-1")
            return request_id if _VALID_REQUEST_ID.fullmatch(request_id) else None
    return None


def _declared_body_length(scope: Scope) -> int:
    """The Content-Length the client declared; 0 without one (a chunked body is counted as it
    is read). The server has already refused a malformed one."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


def _limit_body(receive: Receive, limit: int) -> Receive:
    """`receive`, raising RequestBodyTooLarge once more than `limit` body bytes have come."""
    received = 0

    async def receive_within_limit() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise RequestBodyTooLarge(limit)
        return message

    return receive_within_limit


async def _send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    start_headers = [(b"content-type", b"application/json"), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": start_headers})
    await send({"type": "http.response.body", "body": body})


class RequestContextMiddleware:
    """`metrics` None (METRICS_ENABLED=false): nothing is recorded, at no cost."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        probe_log_level: str,
        metrics: RequestMetrics | None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self._probe_level = logging.getLevelNamesMapping()[probe_log_level]
        self._too_large_body = json.dumps({"detail": _too_large_detail(max_body_bytes)}).encode()
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        metrics = self._metrics
        # What secrets.token_hex(16) returns, without its two calls in Python.
        request_id = _incoming_request_id(scope) or os.urandom(16).hex()
        status_code: int | None = None
        request_id_header = (_RAW_REQUEST_ID_HEADER, request_id.encode("latin-1"))

        async def send_with_request_id(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                message["headers"] = [*message.get("headers", ()), request_id_header]
            await send(message)

        # Nothing of another request's (a server that starts a pipelined request's task from
        # the previous one's copies its context); reset on the way out, so that the id cannot
        # leak into the next request served by this task. (Tokens, unlike
        # bound_contextvars(), do not copy the whole context.)
        structlog.contextvars.clear_contextvars()
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        method = scope["method"]
        metric_method = metrics.started(method) if metrics is not None else method
        started = time.perf_counter()
        try:
            if _declared_body_length(scope) > self.max_body_bytes:
                await self._refuse_too_large(send_with_request_id)  # before a byte is read
            else:
                receive_within_limit = _limit_body(receive, self.max_body_bytes)
                await self.app(scope, receive_within_limit, send_with_request_id)
        except RequestBodyTooLarge:
            # From a body read outside the app's exception handling (another middleware).
            if status_code is not None:
                raise
            await self._refuse_too_large(send_with_request_id)
        except Exception:
            # Logged here, where the request id is bound, and answered here so that even a 500
            # carries the id the client can quote.
            log.exception("http.unhandled_error")
            if status_code is not None:
                raise  # the response has started: only dropping the connection is left
            await _send_json(send_with_request_id, 500, _INTERNAL_ERROR_BODY)
        finally:
            seconds = time.perf_counter() - started
            if metrics is not None:
                # The router wrote the route it matched into the scope.
                metrics.finished(metric_method, scope.get("route"), status_code, seconds)
            path = scope["path"]
            is_probe = path.startswith(_PROBE_PATH_PREFIX) or path == _SCRAPE_PATH
            client = scope.get("client")
            log.log(
                self._probe_level if is_probe else logging.INFO,
                "http.request",
                method=method,
                path=path,
                # As uvicorn resolved it: X-Forwarded-For's, from a FORWARDED_ALLOW_IPS peer.
                client=client[0] if client else None,
                status=status_code,
                duration_ms=round(seconds * 1000, 2),  # as timing.elapsed_ms gives it
            )
            for bound in reversed(scope.get(_BOUND_FIELDS, ())):
                structlog.contextvars.reset_contextvars(**bound)
            structlog.contextvars.reset_contextvars(**tokens)

    async def _refuse_too_large(self, send: Send) -> None:
        await _send_json(send, 413, self._too_large_body, [(b"connection", b"close")])
