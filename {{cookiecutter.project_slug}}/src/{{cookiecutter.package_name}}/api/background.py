"""Example of work the client need not wait for: accepted at once, done by the supervisor."""

import asyncio

from fastapi import APIRouter, status
from pydantic import BaseModel, Field

from {{ cookiecutter.package_name }}.dependencies import Background

router = APIRouter(prefix="/background", tags=["background"])


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
    # Full or stopping, spawn raises BackgroundRefusedError: left uncaught, it is a 503 with
    # Retry-After. A route that would rather do the work itself catches it.
    background.spawn("example", _stand_in_work(job.seconds))
    return Accepted(task="example")
