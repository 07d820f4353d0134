"""Readiness under a flood of probes: concurrent probes share one check per resource, so a
flood costs each resource one round trip and takes nothing from real requests."""

import asyncio
{%- if cookiecutter.use_postgres %}
from collections.abc import Callable
from typing import Any
{%- endif %}

from httpx import AsyncClient
{%- if cookiecutter.use_postgres %}
from sqlalchemy import event
from sqlalchemy.pool import Pool

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.resources.postgres import APPLICATION_NAME
from {{ cookiecutter.package_name }}.settings import Settings
from tests.conftest import RESOURCES, serve
{%- else %}

from tests.conftest import RESOURCES
{%- endif %}

PROBES = 48


async def test_a_probe_flood_costs_one_check_per_resource(client: AsyncClient) -> None:
    responses = await asyncio.gather(*(client.get("/health/ready") for _ in range(PROBES)))

    assert [response.status_code for response in responses] == [200] * PROBES
    for resource in RESOURCES:
        # Each check measures its own latency: one value means one check served every probe.
        checks = {response.json()["resources"][resource]["latency_ms"] for response in responses}
        assert len(checks) == 1, f"{resource}: {len(checks)} checks for {PROBES} probes"
{%- if cookiecutter.use_postgres %}


async def test_probes_take_one_database_connection_among_real_requests(
    make_settings: Callable[..., Settings],
) -> None:
    checkouts: list[object] = []

    def count(dbapi_connection: Any, record: object, proxy: object) -> None:
        # The requests' connections: not that of the outbox relay, where there is one.
        if dbapi_connection.driver_connection.get_settings().application_name == APPLICATION_NAME:
            checkouts.append(dbapi_connection)

    # Long enough to outlast the flood on a slow machine: every probe after the first check
    # reuses it or joins it.
    settings = make_settings(readiness_cache_seconds=30)
    async with serve(create_app(settings)) as client:
        note = (await client.post("/notes", json={"text": "flood"})).json()
        event.listen(Pool, "checkout", count)
        try:
            probes = [client.get("/health/ready") for _ in range(PROBES)]
            reads = [client.get(f"/notes/{note['id']}") for _ in range(PROBES // 4)]
            responses = await asyncio.gather(*probes, *reads)
        finally:
            event.remove(Pool, "checkout", count)

    assert [response.status_code for response in responses] == [200] * len(responses)
    assert len(checkouts) == len(reads) + 1
{%- endif %}
