"""The baseline: a bare FastAPI app whose /health/live returns the same JSON as the service's.

Same route definition (an async handler returning a pydantic model), none of the service's
wiring: no middleware, no logging setup, no lifespan. The route is declared on the app itself;
the same route also sits in an included APIRouter, at /routed/health/live, as the service's
routes do: since FastAPI 0.137 an included router is a routing layer of its own on every
request, a cost of FastAPI rather than of the service.
"""

from typing import Literal

from fastapi import APIRouter, FastAPI
from pydantic import BaseModel

app = FastAPI()
router = APIRouter(prefix="/routed/health")


class Liveness(BaseModel):
    status: Literal["ok", "unavailable"]


@app.get("/health/live")
async def live() -> Liveness:
    return Liveness(status="ok")


@router.get("/live")
async def routed_live() -> Liveness:
    return Liveness(status="ok")


app.include_router(router)
