"""Example outgoing call through the shared HTTP client (to HTTP_CLIENT_BASE_URL)."""

from typing import Annotated
from urllib.parse import unquote

import httpx
from fastapi import APIRouter, HTTPException, status
from pydantic import AfterValidator, BaseModel

from {{ cookiecutter.package_name }}.dependencies import AppSettings, HttpClient

router = APIRouter(prefix="/upstream", tags=["upstream"])


def _is_a_url_path(path: str) -> str:
    try:
        httpx.URL(f"/{path}")
    except httpx.InvalidURL as exc:
        # The client's mistake (control characters, "//host:port" that is no port, ...),
        # so a 422 before any request goes out, not a 500 from inside the client.
        raise ValueError(f"cannot be sent upstream: {exc}") from None
    return path


UpstreamPath = Annotated[str, AfterValidator(_is_a_url_path)]


def _refuse_dot_segments(path: str) -> None:
    """A `..` would lead the upstream call out from under HTTP_CLIENT_BASE_URL's path, however
    it is spelled: percent-encoded (httpx sends `%2e%2e` as it is, and the upstream may decode
    it), encoded twice or more (`%252e`: servers and proxies decode again), or with backslashes
    (read as slashes by some servers). No legitimate path needs a dot segment, so `.` and `..`
    are refused as they read once fully decoded, rather than resolved."""
    decoded = path
    while (once_more := unquote(decoded)) != decoded:  # every round is shorter: it ends
        decoded = once_more
    if any(segment in {".", ".."} for segment in decoded.replace("\\", "/").split("/")):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, 'the path must not contain "." or ".." segments'
        )


class UpstreamReply(BaseModel):
    status_code: int
    body: str


@router.get(
    "/{path:path}",
    responses={
        status.HTTP_400_BAD_REQUEST: {},
        status.HTTP_502_BAD_GATEWAY: {},
        status.HTTP_503_SERVICE_UNAVAILABLE: {},
        status.HTTP_504_GATEWAY_TIMEOUT: {},
    },
)
async def call_upstream(
    path: UpstreamPath, client: HttpClient, settings: AppSettings
) -> UpstreamReply:
    _refuse_dot_segments(path)
    if settings.http_client_base_url is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "HTTP_CLIENT_BASE_URL is not set")
    try:
        reply = await client.get(f"/{path}")
    except httpx.PoolTimeout:
        # Every connection of the client is busy: shed load rather than queue without end.
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "upstream busy") from None
    except httpx.TimeoutException:
        raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, "upstream timed out") from None
    except httpx.TransportError:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, "upstream unreachable") from None
    return UpstreamReply(status_code=reply.status_code, body=reply.text[:1000])
