"""Example of work the client need not wait for: accepted at once, done by the supervisor."""

import asyncio

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field

{% if cookiecutter.use_auth -%}
from {{ cookiecutter.package_name }}.auth import require_token
{% endif -%}
from {{ cookiecutter.package_name }}.background import BackgroundRefusedError
from {{ cookiecutter.package_name }}.dependencies import Background

{% if cookiecutter.use_auth -%}
# Every route here needs a valid bearer token (auth.py).
router = APIRouter(prefix="/background", tags=["background"], dependencies=[require_token()])


{% else -%}
router = APIRouter(prefix="/background", tags=["background"])


{% endif -%}
class Job(BaseModel):
    # How long the stand-in work takes; capped, so that no caller can hold a task's slot long.
    seconds: float = Field(default=1.0, ge=0, le=10)


class Accepted(BaseModel):
    task: str


async def _stand_in_work(seconds: float) -> None:
    """Where a real service sends an e-mail, calls a webhook or warms a cache."""
    await asyncio.sleep(seconds)


@router.post(
    "/example",
    status_code=status.HTTP_202_ACCEPTED,
    responses={status.HTTP_503_SERVICE_UNAVAILABLE: {}},
)
async def start_example(job: Job, background: Background) -> Accepted:
    try:
        background.spawn("example", _stand_in_work(job.seconds))
    except BackgroundRefusedError as exc:
        # Full or stopping: shed the load, as for any resource that is unavailable; the client
        # tries again later, perhaps on another replica.
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"background work refused: {exc}",
            headers={"Retry-After": "1"},
        ) from None
    return Accepted(task="example")
