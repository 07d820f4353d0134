"""The generated Dockerfile built and the image run, for the all-on and the all-off bake.

On a private Docker engine, with a stand-in for the official base image (see container_engine.py
for both): the image builds from a clean bake, and a change under src/ rebuilds it without
reinstalling the dependencies. The container then runs as the Kubernetes manifest runs it (the
same read-only root and tmpfs, dropped capabilities, no privilege escalation and plain
environment values; its own user, which must be the manifest's), against the host's PostgreSQL
and Redis over the host's network: `/health/ready` answers 200, Docker reports the image's
HEALTHCHECK healthy, nothing is written outside what the manifest allows, and `docker stop`
ends it with exit status 0 within the manifest's grace period, having logged in JSON every
resource closed. With PostgreSQL, the migration Job (deploy/k8s/migrate-job.yaml) runs first, from
the same image and as that manifest asks, against a database of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest

import container_engine
from conftest import FIGURES_PROPERTY, Baker, StepResult, project_servers, psql, run_step
from container_engine import DockerEngine
from test_bake import CASES, RESOURCES, Case
from test_deploy_files import dockerfile_instructions, load_yaml

# The name a resource's log events give it, where it is not the option's.
LOGGED_AS = {"opentelemetry": "tracing", "auth": "auth_keys"}
CONTAINER_CASES = [
    case for case in CASES if case.project_name is None and case.enabled in {frozenset(RESOURCES), frozenset()}
]
# The first build installs every dependency from the package index.
BUILD_TIMEOUT = 600
# The service's STARTUP_TIMEOUT is 10 s; a container's start adds little to that.
READY_TIMEOUT = 60
# The image's HEALTHCHECK asks every 10 s; asked every second here, the test need not wait 10 s
# for the first answer. Its timeout, retries and start period stay the image's.
HEALTH_INTERVAL = "1s"
# The manifest sets no WORKERS (the default, 1); a pod may run more, each with its own lifespan.
WORKER_COUNTS = (1, 2)
# After a code change the image may differ from the one before by the service's own files only
# (100 to 250 kB); the dependencies are tens of megabytes.
NEW_LAYERS_LIMIT = 2_000_000
ADMIN_DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
# The heads of the migrations an image ships, as its service reads them.
HEADS = "from {package}.resources.schema import SchemaCheck, read_revisions; print(*SchemaCheck(read_revisions()).heads)"
T = TypeVar("T")


def fail(message: str) -> NoReturn:
    pytest.fail(message, pytrace=False)


def assert_ok(result: StepResult) -> None:
    if not result.ok:
        fail(result.report())


# --- building -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Build:
    result: StepResult
    seconds: float

    def steps(self) -> dict[str, str]:
        """Each step's instruction and the builder's output for it (classic builder format)."""
        steps: dict[str, str] = {}
        current = None
        for line in self.result.output.splitlines():
            if line.startswith("Step ") and " : " in line:
                current = line.partition(" : ")[2]
                steps[current] = ""
            elif current is not None:
                steps[current] += line + "\n"
        return steps

    def step(self, fragment: str) -> str:
        (output,) = [output for instruction, output in self.steps().items() if fragment in instruction]
        return output

    def reused(self, fragment: str) -> bool:
        return "---> Using cache" in self.step(fragment)

    def installed(self) -> set[str]:
        """Names of the distributions pip installed during this build."""
        return {
            requirement.rsplit("-", 1)[0]
            for line in self.result.output.splitlines()
            if line.startswith("Successfully installed ")
            for requirement in line.split()[2:]
        }


def build(engine: DockerEngine, project: Path, tag: str) -> Build:
    started = time.monotonic()
    argv = engine.argv("build", "--network", "host", "--tag", tag, ".")
    result = run_step(f"docker build -t {tag}", argv, cwd=project, env=engine.env, timeout=BUILD_TIMEOUT)
    return Build(result, time.monotonic() - started)


def image_history(engine: DockerEngine, tag: str) -> dict[str, int]:
    """Layer ids and their sizes in bytes."""
    output = engine.output("history", "--no-trunc", "--human=false", "--format", "{{.ID}} {{.Size}}", tag)
    return {layer: int(size) for layer, size in (line.split() for line in output.splitlines())}


def megabytes(size: int) -> str:
    return f"{size / 1e6:.0f} MB"


# --- the manifest's pod -----------------------------------------------------------------------


@dataclass(frozen=True)
class Pod:
    """What a manifest under deploy/k8s/ asks of the container, as `docker run` options."""

    run_options: list[str]
    env: dict[str, str]
    grace_seconds: int
    run_as_user: int
    # The container's command, where the manifest replaces the image's.
    command: list[str]


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes quantity of bytes (``64Mi``, ``1G``, ``500k``...) as a number."""
    match = re.fullmatch(r"(\d+)(k|[MGT]|[KMGT]i)?", str(quantity))
    assert match, f"not a quantity of bytes: {quantity!r}"
    number, unit = match.groups()
    units: dict[str | None, int] = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    units |= {f"{prefix}i": 1024 ** (index + 1) for index, prefix in enumerate("KMGT")}
    return int(number) * units[unit]


def pod_from_manifest(project: Path, manifest: str = "deployment.yaml") -> Pod:
    pod = load_yaml(project / "deploy/k8s" / manifest)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = container.get("securityContext", {})
    options = ["--read-only"] if security.get("readOnlyRootFilesystem") else []
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        assert "emptyDir" in volume, f"the test knows no volume but emptyDir: {volume}"
        size = volume["emptyDir"].get("sizeLimit")
        options += ["--tmpfs", mount["mountPath"] + (f":size={quantity_bytes(size)}" if size else "")]
    options += [f"--cap-drop={capability}" for capability in security.get("capabilities", {}).get("drop", [])]
    if security.get("allowPrivilegeEscalation") is False:
        options += ["--security-opt", "no-new-privileges"]
    return Pod(
        run_options=options,
        env={variable["name"]: variable["value"] for variable in container["env"] if "value" in variable},
        grace_seconds=pod.get("terminationGracePeriodSeconds", 30),  # Kubernetes' default
        run_as_user=pod["securityContext"]["runAsUser"],
        command=container.get("command", []),
    )


# --- the servers --------------------------------------------------------------------------------


def libpq_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme=parts.scheme.split("+")[0]))


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty database on the host's PostgreSQL, dropped at the end; yields its URL."""
    if shutil.which("psql") is None:
        container_engine.skip_or_fail("no psql on PATH")
    admin = libpq_url(ADMIN_DATABASE_URL)
    name = f"container_{uuid.uuid4().hex[:12]}"
    psql(admin, f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(admin)._replace(path=f"/{name}"))
    finally:
        psql(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- running ------------------------------------------------------------------------------------


def poll(what: str, probe: Callable[[], T | None], timeout: float) -> T:
    """The first value `probe` returns that is not None, or a failure at the deadline."""
    deadline = time.monotonic() + timeout
    while (value := probe()) is None:
        if time.monotonic() > deadline:
            fail(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)
    return value


def http_status(url: str) -> int | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return None


@dataclass(frozen=True)
class Container:
    engine: DockerEngine
    id: str

    def state(self) -> dict:
        state = self.engine.inspect(self.id)[0]["State"]
        assert isinstance(state, dict)
        return state

    def logs(self) -> str:
        return self.engine.output("logs", self.id)

    def assert_running(self) -> None:
        if not self.state()["Running"]:
            fail(f"the container stopped (exit {self.state()['ExitCode']}):\n{self.logs()}")

    def ready_status(self, port: int) -> int | None:
        self.assert_running()
        status = http_status(f"http://127.0.0.1:{port}/health/ready")
        return status if status == 200 else None

    def health(self) -> str | None:
        self.assert_running()
        status = self.state()["Health"]["Status"]
        if status == "unhealthy":
            fail(f"Docker reports the container unhealthy: {self.state()['Health']['Log']}")
        return status if status == "healthy" else None

    def process_uids(self) -> set[int]:
        """Real, effective, saved and filesystem uid of the container's PID 1, seen from the host."""
        status = Path(f"/proc/{self.state()['Pid']}/status").read_text()
        (uids,) = [line.split()[1:] for line in status.splitlines() if line.startswith("Uid:")]
        return {int(uid) for uid in uids}


def env_options(env: dict[str, str]) -> list[str]:
    return [option for name, value in env.items() for option in ("--env", f"{name}={value}")]


@contextlib.contextmanager
def running(engine: DockerEngine, tag: str, pod: Pod, env: dict[str, str]) -> Iterator[Container]:
    options = ["--network", "host", *pod.run_options, "--health-interval", HEALTH_INTERVAL, *env_options(env)]
    container = Container(engine, engine.output("run", "--detach", *options, tag).strip())
    try:
        yield container
    finally:
        engine.run("rm", "--force", container.id)


def migrate(engine: DockerEngine, tag: str, job: Pod, database_url: str, package: str) -> None:
    """The migration Job's command from the image, twice (the second run has nothing to do); the
    database ends at the heads of the migrations the image ships."""
    options = ["--rm", "--network", "host", *job.run_options, *env_options({"DATABASE_URL": database_url})]
    upgraded = engine.run("run", *options, tag, *job.command, timeout=120)
    again = engine.run("run", *options, tag, *job.command, timeout=120)
    heads = engine.output("run", *options, tag, "python", "-c", HEADS.format(package=package), timeout=120)

    assert upgraded.returncode == 0, upgraded.stdout
    assert "Running upgrade" in upgraded.stdout
    assert (again.returncode, "Running upgrade" in again.stdout) == (0, False), again.stdout
    applied = psql(libpq_url(database_url), "SELECT version_num FROM alembic_version")
    assert set(applied.split()) == set(heads.split())


def json_events(log: str) -> list[dict]:
    events = []
    for line in log.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            fail(f"a log line that is not JSON: {line!r}")
        assert isinstance(event, dict), line
        events.append(event)
    return events


def build_and_rebuild(engine: DockerEngine, project: Path, case: Case, tag: str) -> str:
    """Build from the clean bake, then after a code change; the figures of both builds."""
    first = build(engine, project, tag)
    assert_ok(first.result)
    first_layers = image_history(engine, tag)
    size = engine.inspect(tag)[0]["Size"]

    # A code change: the dependencies stay installed in their layer, in the builder and in the
    # runtime image; only the service is built and installed again.
    init = project / "src" / case.package / "__init__.py"
    init.write_text(init.read_text() + "# changed\n")
    second = build(engine, project, tag)
    assert_ok(second.result)
    assert second.reused("uv sync --locked"), second.step("uv sync --locked")
    assert second.reused("COPY --from=builder /opt/venv"), second.step("COPY --from=builder /opt/venv")
    assert not second.reused("COPY src"), second.step("COPY src")
    assert second.installed() == {case.slug}

    new_layers = [size for layer, size in image_history(engine, tag).items() if layer not in first_layers]
    assert sum(new_layers) < NEW_LAYERS_LIMIT, f"a code change made {megabytes(sum(new_layers))} of new layers"
    return (
        f"{case.id}: image {megabytes(size)}; first build {first.seconds:.1f} s; after a src/ change "
        f"{second.seconds:.1f} s, {sum(new_layers) / 1e3:.0f} kB of new layers"
    )


class CountingCollector(BaseHTTPRequestHandler):
    """A stand-in collector on the host: accepts OTLP/HTTP exports and counts them."""

    exports = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).exports += 1
        self.send_response(200)  # an empty ExportTraceServiceResponse: all accepted
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


# The public half of an RSA key, made once for this test: the service only has to load it.
PUBLIC_JWK = {
    "kty": "RSA",
    "kid": "container-test",
    "use": "sig",
    "alg": "RS256",
    "e": "AQAB",
    "n": (
        "qASKxeLLssti4Wxa_o9Z6lwOJ1JNtds1aE2e13q7smI8UaZ_SjGZ6_72YwdSh__qtSKfy1OTFLXeFwZQlfQeGnvyK2ItWbwZ2R"
        "ZqDWXGYUQjItzNcu5HTjn10NdDJiT9m3WNMnkjlEJeiLa11wO6bi44EG-jXiIklfU84BS7PRCPOuNs5Fy87d1bgI4N4TdjWzDg"
        "pBOwh-m_Y025Tos1Wmljr60YOxl7O-gx7X_T8uLvmPpxkbsi1A3RqMz8cXySF42gOQIzDtEntck1gx2_I66JmOnxV7Etoi15jy"
        "Gsgxv9RWAGFm65JO5Cp4sCd-YVlzo0tCem1JMdouCG3ky44Q"
    ),
}


class StandInProvider(BaseHTTPRequestHandler):
    """An identity provider's discovery document and key set, as the service fetches them."""

    def do_GET(self) -> None:
        issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        documents = {
            "/.well-known/openid-configuration": {"issuer": issuer, "jwks_uri": f"{issuer}/jwks"},
            "/jwks": {"keys": [PUBLIC_JWK]},
        }
        body = json.dumps(documents.get(self.path, {})).encode()
        self.send_response(200 if self.path in documents else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


def server_env(engine: DockerEngine, tag: str, project: Path, case: Case, stack: contextlib.ExitStack) -> dict[str, str]:
    """The URLs of the host's servers; with PostgreSQL, a fresh database migrated by the image."""
    env = {}
    if "redis" in case.enabled:
        env["REDIS_URL"] = REDIS_URL
    if "rabbitmq" in case.enabled:
        # One stable name: each run declares the same topology again, so nothing piles up.
        env |= {"RABBITMQ_URL": RABBITMQ_URL, "RABBITMQ_QUEUE": "template-container-test"}
    if "auth" in case.enabled:
        env["AUTH_ISSUER"] = stack.enter_context(project_servers.http_server(StandInProvider))
    if "postgres" in case.enabled:
        env["DATABASE_URL"] = stack.enter_context(fresh_database())
        migrate(engine, tag, pod_from_manifest(project, "migrate-job.yaml"), env["DATABASE_URL"], case.package)
    return env


def serve_until_stopped(engine: DockerEngine, tag: str, pod: Pod, env: dict[str, str]) -> list[dict]:
    """Run the image as the manifest would until it serves, then stop it; its log events."""
    port = project_servers.free_port()
    with running(engine, tag, pod, pod.env | env | {"PORT": str(port)}) as container:
        poll("/health/ready to answer 200", lambda: container.ready_status(port), READY_TIMEOUT)
        poll("Docker to report the container healthy", container.health, READY_TIMEOUT)
        assert container.process_uids() == {pod.run_as_user}
        assert engine.output("diff", container.id) == "", "the container wrote outside its tmpfs"

        started = time.monotonic()
        stopped = engine.run("stop", "--time", str(pod.grace_seconds), container.id, timeout=pod.grace_seconds + 30)
        assert stopped.returncode == 0, stopped.stdout
        assert time.monotonic() - started < pod.grace_seconds
        state = container.state()
        assert (state["ExitCode"], state["OOMKilled"]) == (0, False), container.logs()
        return json_events(container.logs())


# --- the test -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("case", CONTAINER_CASES, ids=[case.id for case in CONTAINER_CASES])
def test_image_builds_and_runs_as_the_manifest_asks(
    case: Case,
    baker: Baker,
    docker_engine: DockerEngine,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    project = baker.bake(tmp_path, case.context)
    bases = {i.arguments.split()[0] for i in dockerfile_instructions(project / "Dockerfile") if i.keyword == "FROM"}
    assert bases == {container_engine.STAND_IN_TAG}, "the stand-in base exists for the default python_version only"
    tag = f"{case.slug}:container-test"

    figures = [docker_engine.description, build_and_rebuild(docker_engine, project, case, tag)]
    record_property(FIGURES_PROPERTY, figures)
    print(*figures, sep="\n")

    pod = pod_from_manifest(project)
    with contextlib.ExitStack() as stack:
        env = server_env(docker_engine, tag, project, case, stack)
        # With tracing, a collector to export to: without one, closing the tracer provider waits
        # out SHUTDOWN_TIMEOUT on its retries and fails, as the generated docs/observability.md says.
        collector = type("Collector", (CountingCollector,), {})  # a count of this test's own
        if "opentelemetry" in case.enabled:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = stack.enter_context(project_servers.http_server(collector))
        # As the manifest runs it (one worker), then scaled up inside the pod (docs/deployment.md: Scaling out).
        for workers in WORKER_COUNTS:
            events = serve_until_stopped(docker_engine, tag, pod, env | {"WORKERS": str(workers)})

            closed = Counter(event["resource"] for event in events if event["event"] == "resource.closed")
            expected = dict.fromkeys((LOGGED_AS.get(flag, flag) for flag in case.enabled), workers)
            assert closed == expected, f"WORKERS={workers}"
            assert [event["event"] for event in events].count("lifespan.stopped") == workers
        if "opentelemetry" in case.enabled:
            # The probes' spans, sent at the latest when the tracer provider closed.
            assert collector.exports > 0
