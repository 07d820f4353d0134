"""Example outgoing call through the shared HTTP client (to HTTP_CLIENT_BASE_URL)."""

import httpx
from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel

from {{ cookiecutter.package_name }}.dependencies import AppSettings, HttpClient

router = APIRouter(prefix="/upstream", tags=["upstream"])


class UpstreamReply(BaseModel):
    status_code: int
    body: str


@router.get(
    "/{path:path}",
    responses={
        status.HTTP_502_BAD_GATEWAY: {},
        status.HTTP_503_SERVICE_UNAVAILABLE: {},
        status.HTTP_504_GATEWAY_TIMEOUT: {},
    },
)
async def call_upstream(path: str, client: HttpClient, settings: AppSettings) -> UpstreamReply:
    if settings.http_client_base_url is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "HTTP_CLIENT_BASE_URL is not set")
    try:
        reply = await client.get(f"/{path}")
    except httpx.TimeoutException:
        raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, "upstream timed out") from None
    except httpx.TransportError:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, "upstream unreachable") from None
    return UpstreamReply(status_code=reply.status_code, body=reply.text[:1000])
