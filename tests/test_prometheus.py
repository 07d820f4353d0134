"""A real Prometheus server scrapes a running baked service (Debian's `prometheus` package; CI
installs it). Its HTTP API must then report the target up and the pool figures of the service."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.parse
import urllib.request
from urllib.parse import urlsplit, urlunsplit
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Baker, ProjectVenv, get_json, process, project_servers, run_step

SCRAPE_INTERVAL = "1s"


def poll(check: Callable[[], object], *, within: float, message: str) -> object:
    """The first truthy result of `check`, retried (errors included) until the deadline."""
    deadline = time.monotonic() + within
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except OSError as exc:  # not listening yet
            last_error = exc
        else:
            if result:
                return result
        time.sleep(0.2)
    pytest.fail(f"{message} within {within:.0f}s (last error: {last_error})", pytrace=False)


@pytest.mark.slow
def test_prometheus_scrapes_the_service(
    baker: Baker, tmp_path: Path, scram_postgres_url: str
) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        project_servers.cannot_start("prometheus is not installed (Debian: apt-get install prometheus)")
    project = baker.bake(tmp_path / "out", {})
    venv = ProjectVenv(tmp_path / "venv")
    installed = venv.create(project)
    if not installed.ok:
        pytest.fail(installed.report(), pytrace=False)

    service_port, prometheus_port = project_servers.free_port(), project_servers.free_port()
    service_env = venv.env() | {
        "PORT": str(service_port),
        "LOG_FORMAT": "json",
        # A database of its own, which `make migrate` creates and migrates: the service is ready
        # only with every migration applied.
        "DATABASE_URL": urlunsplit(urlsplit(scram_postgres_url)._replace(path="/prometheus_test")),
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    }
    migrated = run_step(
        "make migrate", ["make", "migrate", f"VENV={venv.path}"], cwd=project, env=service_env, timeout=120
    )
    if not migrated.ok:
        pytest.fail(migrated.report(), pytrace=False)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL},
                "scrape_configs": [
                    {"job_name": "service", "static_configs": [{"targets": [f"127.0.0.1:{service_port}"]}]}
                ],
            }
        )
    )
    prometheus_argv = [
        prometheus,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prometheus_port}",
    ]
    api = f"http://127.0.0.1:{prometheus_port}/api/v1"

    def query(promql: str) -> list[dict]:
        answer = get_json(f"{api}/query?{urllib.parse.urlencode({'query': promql})}")
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    with (
        process([str(venv.bin / "python"), "-m", "my_service"], service_env, tmp_path / "service.log", cwd=project),
        process(prometheus_argv, {"PATH": os.environ["PATH"]}, tmp_path / "prometheus.log"),
    ):
        poll(
            lambda: get_json(f"http://127.0.0.1:{service_port}/health/ready")["status"] == "ok",
            within=30,
            message="the service never became ready",
        )
        up = poll(lambda: query('up{job="service"} == 1'), within=30, message="Prometheus never saw the target up")
        pool_max = poll(
            lambda: query('db_client_connection_max{db_client_connection_pool_name="postgres"}'),
            within=10,
            message="Prometheus has no pool figures",
        )
        requests = poll(
            lambda: query('http_server_request_duration_seconds_count{http_route="/health/ready"}'),
            within=10,
            message="Prometheus has no request durations",
        )
        targets = get_json(f"{api}/targets")["data"]["activeTargets"]

    assert [target["health"] for target in targets] == ["up"], targets
    assert [sample["value"][1] for sample in up] == ["1"]
    assert [sample["value"][1] for sample in pool_max] == ["10"]  # DB_POOL_SIZE + DB_MAX_OVERFLOW
    assert float(requests[0]["value"][1]) >= 1
