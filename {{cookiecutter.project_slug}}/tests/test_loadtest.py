"""scripts/loadtest.py, briefly, against the service started as `python -m` is started, and
against a service that answers the wrong status; and the arithmetic of its report."""

import importlib.util
import json
{%- if cookiecutter.use_auth %}
import os
{%- endif %}
import re
import subprocess
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import ModuleType

{% if cookiecutter.use_auth -%}
from tests.conftest import auth_headers
{% endif -%}
from tests.processes import running, wait_until_ready
from tests.servers import free_port, http_server

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "loadtest.py"
# What the script loads: readiness and every example route of the enabled resources.
ROUTES = [
    "GET /health/ready",
{%- if cookiecutter.use_postgres %}
    "POST /notes",
    "GET /notes/{id}",
{%- endif %}
{%- if cookiecutter.use_redis %}
    "PUT /cache/{key}",
    "GET /cache/{key}",
{%- endif %}
{%- if cookiecutter.use_http_client %}
    "GET /upstream/{path}",
{%- endif %}
]
# A row of the report: the route, then requests, req/s, p50 ms, p99 ms and errors.
REPORT_ROW = re.compile(
    r"^(?P<route>.+?)\s+(?P<requests>\d+)\s+(?P<rate>\S+)\s+(?P<p50>\S+)\s+(?P<p99>\S+)"
    r"\s+(?P<errors>\d+)$"
)


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("loadtest", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(url: str, seconds: float) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(SCRIPT), "--url", url, "--concurrency", "4"]
{%- if cookiecutter.use_auth %}
    token = auth_headers()["Authorization"].removeprefix("Bearer ")
    return subprocess.run(
        [*command, "--duration", str(seconds)],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"LOADTEST_BEARER_TOKEN": token},
    )
{%- else %}
    return subprocess.run(
        [*command, "--duration", str(seconds)], capture_output=True, text=True, timeout=60
    )
{%- endif %}


def report_rows(stdout: str) -> dict[str, re.Match[str]]:
    """The report's rows by route, "total" included."""
    rows = (REPORT_ROW.match(line) for line in stdout.splitlines())
    return {m["route"]: m for m in rows if m}


def test_a_short_load_runs_clean(service_env: dict[str, str], tmp_path: Path) -> None:
    with running("python -m", service_env, tmp_path) as service:
        wait_until_ready(service, service_env["PORT"])
        result = load(f"http://127.0.0.1:{service_env['PORT']}", seconds=1)

    assert result.returncode == 0, result.stdout + result.stderr
    rows = report_rows(result.stdout)
    assert list(rows) == [*ROUTES, "total"], result.stdout
    for route, row in rows.items():
        assert int(row["requests"]) > 0, route
        assert int(row["errors"]) == 0, route


def test_nothing_listening_makes_it_exit_nonzero() -> None:
    result = load(f"http://127.0.0.1:{free_port()}", seconds=0.2)

    assert result.returncode != 0


class WrongStatusService(BaseHTTPRequestHandler):
    """Lets the load test's setup succeed (201 with an id to a POST, 200 to a PUT), then
    answers every GET 503, where the load test expects 200."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the service: requests are quick to repeat

    def do_GET(self) -> None:
        self.answer(503, {"detail": "unavailable"})

    def do_POST(self) -> None:
        self.answer(201, {"id": 1})

    def do_PUT(self) -> None:
        self.answer(200, {})

    def answer(self, status: int, body: dict[str, object]) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        content = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


def test_a_wrong_status_is_one_error_and_no_latency_and_exits_nonzero() -> None:
    with http_server(WrongStatusService) as url:
        result = load(url, seconds=1)

    assert result.returncode == 1, result.stdout + result.stderr
    rows = report_rows(result.stdout)
    total = rows.pop("total")
    assert list(rows) == ROUTES, result.stdout
    assert int(rows["GET /health/ready"]["requests"]) > 0
    for route, row in rows.items():
        failing = route.startswith("GET ")
        assert int(row["errors"]) == (int(row["requests"]) if failing else 0), route
        if failing:
            # Only successes have a latency: none at all where every answer was wrong.
            assert (row["p99"], row["p50"]) == ("nan", "nan"), route
    for column in ("requests", "errors"):
        assert int(total[column]) == sum(int(row[column]) for row in rows.values()), column
    assert "GET /health/ready: " in result.stdout
    assert "errors, the first: status 503: " in result.stdout


def test_the_report_counts_each_request_once() -> None:
    loadtest = load_script()
    results = loadtest.Results(latencies_ms=[30.0, 10.0, 20.0, 40.0], errors=2)

    row = REPORT_ROW.match(loadtest.report_line("GET /x", results, seconds=2.0))

    assert row is not None
    # 4 answered as expected + 2 errors; the percentiles of the 4 latencies alone.
    assert (row["requests"], row["rate"], row["errors"]) == ("6", "3.0", "2")
    assert (row["p50"], row["p99"]) == ("20.00", "40.00")
