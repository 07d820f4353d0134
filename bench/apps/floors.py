"""What the libraries cost on their own, for the instruction counts: a Starlette app with the
service's own lifespan (its settings, pools and clients, configured as in production) and no
middleware, whose routes make one library call each and answer an empty 200.

    /nothing             the app alone: subtract it from the others
    /redis               one redis-py GET, as GET /cache/{key} does
    /orm/{note_id}       one AsyncSession: get(Note) and commit, as GET /notes/{id} does
    /http                one GET to the upstream with the service's shared httpx client, as
                         GET /upstream/{path} does

bench/run.py also serves it under load: the libraries' own latency at the same concurrency, the
floor under the service's routes. The service's lifespan freezes its startup objects (out of the
garbage collector's way) and gives its PostgreSQL pool a first-come queue; this app undoes both,
to run the libraries as anyone would.
"""

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from my_service.lifespan import State, lifespan
from my_service.logging import configure_logging
from my_service.models import Note
from my_service.resources.postgres_pool import MeteredPool
from my_service.settings import load_settings
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.util.queue import AsyncAdaptedQueue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from seeded import CACHE_KEY


async def nothing(request: Request) -> Response:
    return Response()


async def redis_get(request: Request) -> Response:
    await request.state.redis.get(CACHE_KEY)
    return Response()


async def http_get(request: Request) -> Response:
    (await request.state.http_client.get("/ping")).raise_for_status()
    return Response()


async def orm_read(request: Request) -> Response:
    async with AsyncSession(request.state.postgres, expire_on_commit=False) as session:
        await session.get(Note, request.path_params["note_id"])
        await session.commit()
    return Response()


# SQLAlchemy's own queue for an asyncio pool, in place of the service's FirstComeQueue.
MeteredPool._queue_class = AsyncAdaptedQueue


@asynccontextmanager
async def libraries_lifespan(app: Starlette) -> AsyncIterator[State]:
    settings = load_settings()
    # As main.py does: the client's line per call (http_client.response) is the service's JSON
    # line, not structlog's default console rendering.
    configure_logging(settings.log_format, settings.log_level)
    async with lifespan(app, settings=settings) as state:
        gc.unfreeze()
        yield state


app = Starlette(
    routes=[
        Route("/nothing", nothing),
        Route("/redis", redis_get),
        Route("/orm/{note_id:int}", orm_read),
        Route("/http", http_get),
    ],
    lifespan=libraries_lifespan,
)
