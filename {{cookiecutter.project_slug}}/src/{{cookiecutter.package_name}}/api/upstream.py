"""Example outgoing call through the shared HTTP client (to HTTP_CLIENT_BASE_URL)."""

from urllib.parse import quote, unquote

import httpx
from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel

from {{ cookiecutter.package_name }}.dependencies import AppSettings, HttpClient

router = APIRouter(prefix="/upstream", tags=["upstream"])

# What the example returns of the upstream's body; the rest is never read.
REPLY_CHARACTERS = 1000


def _refuse_dot_segments(path: str) -> None:
    """A `..` would lead the upstream call out from under HTTP_CLIENT_BASE_URL's path, however
    it is spelled: percent-encoded (the upstream may decode it), encoded twice or more (`%252e`:
    servers and proxies decode again), with backslashes (read as slashes by some servers), or
    with a path parameter (`..;/`: Tomcat and Spring read it as `..`). No legitimate path needs a
    dot segment, so `.` and `..` are refused as they read once fully decoded, rather than
    resolved."""
    decoded = path
    while (once_more := unquote(decoded)) != decoded:  # every round is shorter: it ends
        decoded = once_more
    for segment in decoded.replace("\\", "/").split("/"):
        if segment.partition(";")[0] in {".", ".."}:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST, 'the path must not contain "." or ".." segments'
            )


def _as_one_path(path: str) -> str:
    """`path` (as the caller's URL spelled it, decoded once) as a path and nothing else: every
    `?`, `#`, `;` and `%` in it is sent percent-encoded, so the upstream reads it as a character
    of the path, never as a query, fragment, parameter or escape that the caller slipped in.
    Without its leading slashes: `//host/x` would name a host."""
    return quote(path.lstrip("/"), safe="/")


async def _first_characters(reply: httpx.Response, count: int) -> str:
    """The start of the body, decoded; the call reads no further, whatever the body's size."""
    text = ""
    async for piece in reply.aiter_text():
        text += piece
        if len(text) >= count:
            break
    return text[:count]


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
async def call_upstream(path: str, client: HttpClient, settings: AppSettings) -> UpstreamReply:
    _refuse_dot_segments(path)
    if settings.http_client_base_url is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "HTTP_CLIENT_BASE_URL is not set")
    try:
        async with client.stream("GET", f"/{_as_one_path(path)}") as reply:
            body = await _first_characters(reply, REPLY_CHARACTERS)
    except httpx.PoolTimeout:
        # Every connection of the client is busy: shed load rather than queue without end.
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "upstream busy") from None
    except httpx.TimeoutException:
        raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, "upstream timed out") from None
    except httpx.TransportError:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, "upstream unreachable") from None
    return UpstreamReply(status_code=reply.status_code, body=body)
