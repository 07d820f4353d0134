"""Example outgoing call through the shared HTTP client (to HTTP_CLIENT_BASE_URL)."""

import asyncio
import codecs
from urllib.parse import quote, unquote

import httpx
from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel

{% if cookiecutter.use_auth -%}
from {{ cookiecutter.package_name }}.auth import require_token
{% endif -%}
from {{ cookiecutter.package_name }}.dependencies import AppSettings, HttpClient

{% if cookiecutter.use_auth -%}
# Every route here needs a valid bearer token (auth.py).
router = APIRouter(prefix="/upstream", tags=["upstream"], dependencies=[require_token()])

{% else -%}
router = APIRouter(prefix="/upstream", tags=["upstream"])

{% endif -%}
# What the example returns of the upstream's body; the rest is never read.
REPLY_CHARACTERS = 1000
# Enough bytes for that many characters in any charset below (UTF-32 takes four a character).
REPLY_BYTES = 4 * REPLY_CHARACTERS
# The charsets the reply is decoded with as the upstream names them; anything else as UTF-8.
# (Python's codecs also include utf-7, idna, base64, zlib, ...: not charsets of a text body.)
TEXT_CHARSETS = frozenset(
    {"utf-8", "ascii", "iso8859-1", "iso8859-15", "cp1252", "utf-16", "utf-32"}
)
# Longer paths get a 414 (nginx's default limit on a request line is 8 KiB).
MAX_PATH_CHARACTERS = 2048
# Percent-encoding that still decodes after this many rounds is refused rather than decoded on.
MAX_DECODING_ROUNDS = 4


def _refuse_dot_segments(path: str) -> None:
    """A `..` would lead the upstream call out from under HTTP_CLIENT_BASE_URL's path, however
    it is spelled: percent-encoded (the upstream may decode it), encoded twice or more (`%252e`:
    servers and proxies decode again), with backslashes (read as slashes by some servers), or
    with a path parameter (`..;/`: Tomcat and Spring read it as `..`). No legitimate path needs a
    dot segment, so `.` and `..` are refused as they read once fully decoded, rather than
    resolved."""
    decoded = path
    for _ in range(MAX_DECODING_ROUNDS):
        once_more = unquote(decoded)
        if once_more == decoded:
            break
        decoded = once_more
    else:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "the path is percent-encoded too often")
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


async def _first_characters(reply: httpx.Response) -> str:
    """The start of the body as the upstream sent it, decoded; the call reads no further."""
    if (reply.headers.get("content-encoding") or "identity").strip().lower() != "identity":
        # Asked for none: a compressed body may inflate a thousandfold before it is cut.
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, "upstream sent an encoded body")
    received = bytearray()
    async for chunk in reply.aiter_raw():
        received += chunk
        if len(received) >= REPLY_BYTES:
            break
    charset = reply.charset_encoding or "utf-8"
    try:
        codec = codecs.lookup(charset).name
    except LookupError:
        codec = "utf-8"
    encoding = codec if codec in TEXT_CHARSETS else "utf-8"
    return bytes(received[:REPLY_BYTES]).decode(encoding, errors="replace")[:REPLY_CHARACTERS]


class UpstreamReply(BaseModel):
    status_code: int
    body: str


@router.get(
    "/{path:path}",
    responses={
        status.HTTP_400_BAD_REQUEST: {},
        status.HTTP_414_URI_TOO_LONG: {},
        status.HTTP_502_BAD_GATEWAY: {},
        status.HTTP_503_SERVICE_UNAVAILABLE: {},
        status.HTTP_504_GATEWAY_TIMEOUT: {},
    },
)
async def call_upstream(path: str, client: HttpClient, settings: AppSettings) -> UpstreamReply:
    if len(path) > MAX_PATH_CHARACTERS:
        raise HTTPException(status.HTTP_414_URI_TOO_LONG, "the path is too long")
    _refuse_dot_segments(path)
    if settings.http_client_base_url is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "HTTP_CLIENT_BASE_URL is not set")
    # The client's timeouts bound each step; this bounds the call, however the upstream trickles.
    deadline = (
        settings.http_client_pool_timeout
        + settings.http_client_connect_timeout
        + settings.http_client_timeout
    )
    try:
        async with (
            asyncio.timeout(deadline),
            client.stream(
                "GET", f"/{_as_one_path(path)}", headers={"Accept-Encoding": "identity"}
            ) as reply,
        ):
            body = await _first_characters(reply)
    except httpx.PoolTimeout:
        # Every connection of the client is busy: shed load rather than queue without end.
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "upstream busy") from None
    except httpx.TimeoutException:
        raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, "upstream timed out") from None
    except httpx.TransportError:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, "upstream unreachable") from None
    except TimeoutError:  # the call's deadline
        raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, "upstream timed out") from None
    return UpstreamReply(status_code=reply.status_code, body=body)
