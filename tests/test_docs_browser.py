"""The API docs of a baked all-on service, opened in headless Chromium (Debian's `chromium`; CI
installs it) that may reach the service and nothing else: Swagger UI must render every operation
of the service's OpenAPI document from the service's own files.

A template test rather than one of the generated project's: the project's CI would need a
browser for it. The project's own tests/test_docs.py checks the same page without one (its URLs
point at the service, and the files behind them are served).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import browser
import container_engine
from conftest import Baker, ProjectVenv, get_json, process, project_servers

# A name, as a deployment has, rather than localhost or 127.0.0.1: Swagger UI behaves differently
# for those in places. The browser resolves it to 127.0.0.1 and no other name at all.
SERVICE_HOST = "service.test"
# The operations of the examples, which must be among those rendered.
EXAMPLE_OPERATIONS = {("POST", "/notes"), ("PUT", "/cache/{key}"), ("GET", "/upstream/{path}")}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# From starting Chromium to the last operation rendered: 2.5 s here, 4 s on busy cores.
BROWSER_SECONDS = 30

# Resolves, once Swagger UI has rendered at least `expected` operations, with each one's method
# and path as the page shows them; it waits on the page's own changes, not on a clock.
RENDERED_OPERATIONS = """
new Promise((resolve) => {
  const operations = () => Array.from(document.querySelectorAll('.opblock-summary'), (summary) => [
    summary.querySelector('.opblock-summary-method')?.textContent,
    summary.querySelector('.opblock-summary-path')?.dataset.path,
  ]);
  const check = () => {
    const found = operations();
    if (found.length >= %d) {
      observer.disconnect();
      resolve(found);
    }
  };
  const observer = new MutationObserver(check);
  observer.observe(document, {childList: true, subtree: true});
  check();
})
"""
# What the page shows when it is not what was expected: for the failure message.
PAGE_TEXT = "document.body ? document.body.innerText.slice(0, 500) : '(no body)'"
# The guard checks itself: a request to another host must be seen and refused.
FETCH_ELSEWHERE = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"
FETCH_ELSEWHERE_JS = f"fetch({json.dumps(FETCH_ELSEWHERE)}).then(() => 'loaded', () => 'refused')"


def is_live(url: str) -> bool:
    try:
        return get_json(url)["status"] == "ok"
    except OSError:  # not listening yet
        return False


@pytest.mark.slow
def test_docs_render_in_a_browser_that_reaches_only_the_service(
    baker: Baker, tmp_path: Path, scram_postgres_url: str
) -> None:
    if browser.chromium_path() is None:
        missing = "chromium is not installed (Debian: apt-get install chromium)"
        if container_engine.in_ci():
            pytest.fail(f"{missing}; CI is set: this test must run", pytrace=False)
        pytest.skip(missing)
    project = baker.bake(tmp_path / "out", {})
    venv = ProjectVenv(tmp_path / "venv")
    installed = venv.create(project)
    if not installed.ok:
        pytest.fail(installed.report(), pytrace=False)

    port = project_servers.free_port()
    env = venv.env() | {
        "PORT": str(port),
        "DATABASE_URL": scram_postgres_url,
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        # The server's own database, never migrated: the docs need no schema.
        "DB_SCHEMA_CHECK": "false",
    }
    profile = tmp_path / "chromium-profile"  # new and empty
    profile.mkdir()
    argv = [str(venv.bin / "python"), "-m", "my_service"]
    with process(argv, env, tmp_path / "service.log", cwd=project) as started:
        project_servers.wait_until(
            lambda: is_live(f"http://127.0.0.1:{port}/health/live") or started.poll() is not None,
            timeout=30,
            message="the service never answered /health/live",
        )
        assert started.poll() is None, (tmp_path / "service.log").read_text()[-3000:]
        schema = get_json(f"http://127.0.0.1:{port}/openapi.json")
        expected = {
            (method.upper(), path)
            for path, item in schema["paths"].items()
            for method in item
            if method in HTTP_METHODS
        }
        assert expected >= EXAMPLE_OPERATIONS, expected

        deadline = time.monotonic() + BROWSER_SECONDS
        with browser.chromium(profile, tmp_path / "chromium.log", host=SERVICE_HOST, port=port) as chromium:
            page = chromium.open(f"http://{SERVICE_HOST}:{port}/docs", deadline=deadline)
            try:
                rendered = chromium.evaluate(page, RENDERED_OPERATIONS % len(expected), deadline=deadline)
            except TimeoutError:
                rendered = None
            if rendered is None:
                shown = chromium.evaluate(page, PAGE_TEXT, deadline=time.monotonic() + 5)
                chromium.screenshot(page, tmp_path / "docs.png", deadline=time.monotonic() + 5)
                pytest.fail(
                    f"Swagger UI did not render the {len(expected)} operations within {BROWSER_SECONDS} s;"
                    f" refused requests to other hosts: {chromium.blocked};"
                    f" requests to the service: {chromium.allowed}; JavaScript errors: {chromium.exceptions};"
                    f" the page shows: {shown!r} (screenshot: {tmp_path / 'docs.png'})",
                    pytrace=False,
                )
            blocked_while_rendering = list(chromium.blocked)
            guard = chromium.evaluate(page, FETCH_ELSEWHERE_JS, deadline=deadline)

    assert blocked_while_rendering == [], "the docs page asked for files of another host"
    assert chromium.exceptions == []
    assert sorted(map(tuple, rendered)) == sorted(expected)
    requested = {url.removeprefix(f"http://{SERVICE_HOST}:{port}") for url in chromium.allowed}
    assert {"/docs", "/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css", "/openapi.json"} <= requested
    assert (guard, chromium.blocked) == ("refused", [FETCH_ELSEWHERE]), "the guard let a request through unseen"
