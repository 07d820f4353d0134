"""The baseline: a bare FastAPI app whose /health/live returns the same JSON as the service's.

Same route definition (an async handler returning a pydantic model), none of the service's
wiring: no middleware, no logging setup, no lifespan.
"""

from typing import Literal

from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class Liveness(BaseModel):
    status: Literal["ok", "unavailable"]


@app.get("/health/live")
async def live() -> Liveness:
    return Liveness(status="ok")
