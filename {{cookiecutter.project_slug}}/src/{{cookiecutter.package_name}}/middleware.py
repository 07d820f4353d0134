"""Request ids and one log line per request, as a pure ASGI middleware (no response buffering)."""

import re
import secrets
import time

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from {{ cookiecutter.package_name }}.timing import elapsed_ms

REQUEST_ID_HEADER = "X-Request-ID"
_RAW_REQUEST_ID_HEADER = REQUEST_ID_HEADER.lower().encode("latin-1")
# Incoming ids are echoed and logged, so only short, printable ones are trusted.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

_INTERNAL_ERROR_BODY = b'{"detail":"Internal Server Error"}'

log = structlog.get_logger(__name__)


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == _RAW_REQUEST_ID_HEADER:
            request_id = value.decode("latin-1")
            return request_id if _VALID_REQUEST_ID.fullmatch(request_id) else None
    return None


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id = _incoming_request_id(scope) or secrets.token_hex(16)
        started = time.perf_counter()
        status_code: int | None = None
        request_id_header = (_RAW_REQUEST_ID_HEADER, request_id.encode("latin-1"))

        async def send_with_request_id(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                message["headers"] = [*message.get("headers", ()), request_id_header]
            await send(message)

        # Reset on the way out, so that the id cannot leak into the next request served by
        # this task. (Tokens, unlike bound_contextvars(), do not copy the whole context.)
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_request_id)
        except Exception:
            # Logged here, where the request id is bound, and answered here so that even a 500
            # carries the id the client can quote.
            log.exception("http.unhandled_error")
            if status_code is not None:
                raise  # the response has started: only dropping the connection is left
            await send_with_request_id(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send_with_request_id({"type": "http.response.body", "body": _INTERNAL_ERROR_BODY})
        finally:
            log.info(
                "http.request",
                method=scope["method"],
                path=scope["path"],
                status=status_code,
                duration_ms=elapsed_ms(started),
            )
            structlog.contextvars.reset_contextvars(**tokens)
