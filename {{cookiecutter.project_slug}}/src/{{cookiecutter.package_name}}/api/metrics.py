"""GET /metrics: every metric, in the format the scraper asks for (Prometheus or OpenMetrics)."""

from typing import Annotated

from fastapi import APIRouter, Header, Response
from prometheus_client.exposition import choose_encoder

from {{ cookiecutter.package_name }}.dependencies import MetricsRegistry

router = APIRouter(tags=["metrics"])


# A plain `def`, which FastAPI runs in a worker thread: with WORKERS > 1 rendering reads every
# worker's files, which must not stall the event loop.
@router.get("/metrics", include_in_schema=False)
def metrics(registry: MetricsRegistry, accept: Annotated[str, Header()] = "") -> Response:
    encode, content_type = choose_encoder(accept)
    return Response(encode(registry), media_type=content_type)
