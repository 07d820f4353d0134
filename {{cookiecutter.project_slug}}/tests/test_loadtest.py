"""scripts/loadtest.py, briefly, against the service started as `python -m` is started."""

import re
import subprocess
import sys
from pathlib import Path

from tests.processes import running, wait_until_ready
from tests.servers import free_port

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
REPORT_ROW = re.compile(r"^(?P<route>.+?)\s+(?P<requests>\d+)\s+\S+\s+\S+\s+\S+\s+(?P<errors>\d+)$")


def load(url: str, seconds: float) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(SCRIPT), "--url", url, "--concurrency", "4"]
    return subprocess.run(
        [*command, "--duration", str(seconds)], capture_output=True, text=True, timeout=60
    )


def report_rows(stdout: str) -> dict[str, tuple[int, int]]:
    """Requests and errors by route, "total" included."""
    rows = (REPORT_ROW.match(line) for line in stdout.splitlines())
    return {m["route"]: (int(m["requests"]), int(m["errors"])) for m in rows if m}


def test_a_short_load_runs_clean(service_env: dict[str, str], tmp_path: Path) -> None:
    with running("python -m", service_env, tmp_path) as service:
        wait_until_ready(service, service_env["PORT"])
        result = load(f"http://127.0.0.1:{service_env['PORT']}", seconds=1)

    assert result.returncode == 0, result.stdout + result.stderr
    rows = report_rows(result.stdout)
    assert list(rows) == [*ROUTES, "total"], result.stdout
    for route, (requests, errors) in rows.items():
        assert requests > 0, route
        assert errors == 0, route


def test_any_error_makes_it_exit_nonzero() -> None:
    result = load(f"http://127.0.0.1:{free_port()}", seconds=0.2)  # nothing listens there

    assert result.returncode != 0
