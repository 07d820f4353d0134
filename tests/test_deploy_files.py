"""The deployment files of every baked combination, checked without Docker, GitHub or a cluster.

Nothing here builds an image or starts a container (test_container.py does, for two bakes), so
each file goes through a validator that works offline: hadolint for the Dockerfile, the Compose specification and GitHub workflow JSON
schemas that check-jsonschema ships, and the Kubernetes API schemas that kubernetes-validate
ships. The tests then read the parsed files for what a schema cannot know: which services follow
which flags, what the probes ask, and whether the shutdown fits its grace period.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from conftest import Baker, StepResult, run_step
from test_bake import CASES, Case

VALIDATORS = Path(sys.executable).parent
# Any download a validator tried would go to this dead proxy and fail: the checks are offline.
OFFLINE_ENV = {
    "PATH": os.environ.get("PATH", ""),
    "HOME": os.environ.get("HOME", "/tmp"),
    # hadolint reads files in the locale's encoding.
    "LANG": "C.UTF-8",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "",
}
K8S_FILES = ("deployment.yaml", "service.yaml", "pdb.yaml", "hpa.yaml")
# With PostgreSQL: the Job that applies the migrations before a rollout.
MIGRATE_JOB = "migrate-job.yaml"
# The generated page on the image, CI, Kubernetes and scaling out.
DEPLOYMENT_PAGE = "docs/deployment.md"
# Servers the service talks to, by flag: compose and CI run one container each.
SERVERS = {"postgres": "DATABASE_URL", "redis": "REDIS_URL", "rabbitmq": "RABBITMQ_URL"}
HEALTH_COMMANDS = {"postgres": "pg_isready", "redis": "redis-cli ping", "rabbitmq": "rabbitmq-diagnostics -q ping"}
# Resources that close one after another at shutdown, each within SHUTDOWN_TIMEOUT.
RESOURCES_CLOSED_AT_SHUTDOWN = ("opentelemetry", "postgres", "redis", "http_client", "auth", "rabbitmq")


def validate(name: str, argv: list[str], cwd: Path) -> StepResult:
    executable, *args = argv
    return run_step(name, [VALIDATORS / executable, *args], cwd=cwd, env=OFFLINE_ENV, timeout=120)


def assert_ok(result: StepResult) -> None:
    if not result.ok:
        pytest.fail(result.report(), pytrace=False)


# The validators, each given a file it must accept (the baked one) or reject (a broken one).
HADOLINT = ["hadolint", "--no-color", "--failure-threshold", "style"]
COMPOSE_SCHEMA = ["check-jsonschema", "--builtin-schema", "vendor.compose-spec"]
WORKFLOW_SCHEMA = ["check-jsonschema", "--builtin-schema", "vendor.github-workflows"]
K8S_SCHEMA = ["kubernetes-validate", "--strict", "--quiet"]


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form CMD, ENTRYPOINT or HEALTHCHECK CMD."""
        # HEALTHCHECK [OPTIONS] CMD [...]
        text = self.arguments.partition("CMD ")[2] if self.keyword == "HEALTHCHECK" else self.arguments
        value = json.loads(text)
        assert isinstance(value, list), f"{self.keyword} is not in exec form: {self.arguments}"
        return value


def dockerfile_instructions(path: Path) -> list[Instruction]:
    """The instructions in order, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    instructions = []
    for line in lines:
        keyword, _, arguments = line.strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
    return instructions


def dockerignored(path: str, patterns: list[str]) -> bool:
    parts = Path(path).parts
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    for pattern in patterns:
        anywhere = pattern.startswith("**/")
        pattern = pattern.removeprefix("**/")
        candidates = [*prefixes, *parts] if anywhere else prefixes
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in candidates):
            return True
    return False


def settings_variables(project: Path, package: str) -> set[str]:
    """Environment variables the generated Settings read (their field names, upper-cased)."""
    tree = ast.parse((project / "src" / package / "settings.py").read_text())
    settings = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Settings")
    return {
        node.target.id.upper()
        for node in settings.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id != "model_config"
    }


def load_yaml(path: Path) -> dict:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), f"{path.name} is not a YAML mapping"
    return document


@dataclass(frozen=True)
class Deployed:
    case: Case
    project: Path

    def on(self, resource: str) -> bool:
        return resource in self.case.enabled

    @property
    def servers(self) -> set[str]:
        return {server for server in SERVERS if self.on(server)}

    def path(self, relative: str) -> Path:
        return self.project / relative


# The deployment files do not depend on tracing: its flag would only double these checks. (The
# renamed all-on case has it on, for the shutdown arithmetic with the tracer provider closing.)
DEPLOY_CASES = [case for case in CASES if case.project_name or "opentelemetry" not in case.enabled]


@pytest.fixture(scope="module", params=DEPLOY_CASES, ids=[case.id for case in DEPLOY_CASES])
def deployed(request: pytest.FixtureRequest, baker: Baker, tmp_path_factory: pytest.TempPathFactory) -> Deployed:
    case: Case = request.param
    return Deployed(case, baker.bake(tmp_path_factory.mktemp(f"deploy-{case.id}"), case.context))


# --- the validators themselves ------------------------------------------------------------------

BROKEN_FILES = {
    "hadolint": (HADOLINT, "Dockerfile", "FROM python\nRUN pip install requests\nCMD python -m app\n"),
    "compose": (COMPOSE_SCHEMA, "compose.yaml", "services:\n  app:\n    imagee: app\n"),
    "workflow": (WORKFLOW_SCHEMA, "ci.yml", "name: CI\non: push\njobs:\n  check:\n    steps: []\n"),
    "kubernetes": (
        K8S_SCHEMA,
        "deployment.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\nspec:\n  replicas: two\n",
    ),
}


@pytest.mark.parametrize("validator", list(BROKEN_FILES))
def test_each_validator_rejects_a_broken_file(validator: str, tmp_path: Path) -> None:
    argv, name, text = BROKEN_FILES[validator]
    (tmp_path / name).write_text(text)

    result = validate(validator, [*argv, name], cwd=tmp_path)

    assert result.returncode == 1, result.report()


# --- Dockerfile -----------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint(deployed: Deployed) -> None:
    assert_ok(validate("hadolint", [*HADOLINT, "Dockerfile"], cwd=deployed.project))


def test_dockerfile_builds_dependencies_first_and_runs_slim_and_unprivileged(deployed: Deployed) -> None:
    instructions = dockerfile_instructions(deployed.path("Dockerfile"))
    keywords = [instruction.keyword for instruction in instructions]
    stages = [instruction.arguments for instruction in instructions if instruction.keyword == "FROM"]
    copies = [instruction.arguments for instruction in instructions if instruction.keyword == "COPY"]
    runtime = instructions[keywords.index("FROM", 1) :]

    assert stages == ["python:3.11-slim AS builder", "python:3.11-slim AS runtime"]
    # The dependencies install from pyproject.toml and uv.lock alone, exactly as locked, before any
    # source reaches the image; the service's wheel goes on top in the runtime stage.
    assert copies.index("pyproject.toml uv.lock ./") < copies.index("src ./src")
    (sync,) = [index for index, instruction in enumerate(instructions) if "uv sync" in instruction.arguments]
    assert {"--locked", "--no-dev", "--no-install-project"} <= set(instructions[sync].arguments.split())
    (wheel,) = [index for index, instruction in enumerate(runtime) if "/wheels/" in instruction.arguments]
    assert sync < instructions.index(Instruction("COPY", "src ./src")) < len(instructions) - len(runtime) + wheel
    assert "pip install" in runtime[wheel].arguments

    users = [instruction.arguments for instruction in runtime if instruction.keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert "HOST=0.0.0.0" in " ".join(i.arguments for i in runtime if i.keyword == "ENV").split()
    (cmd,) = [instruction for instruction in runtime if instruction.keyword in {"CMD", "ENTRYPOINT"}]
    assert cmd.exec_form() == ["python", "-m", deployed.case.package]
    (healthcheck,) = [instruction for instruction in runtime if instruction.keyword == "HEALTHCHECK"]
    probe = healthcheck.exec_form()
    assert probe[:2] == ["python", "-c"] and "urllib" in probe[2] and "/health/live" in probe[2]


def test_dockerfile_copies_only_files_the_build_context_has(deployed: Deployed) -> None:
    ignored = [
        line.strip()
        for line in deployed.path(".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for secret in (".env", ".git", ".venv"):
        assert secret in ignored
    sources = [
        source
        for instruction in dockerfile_instructions(deployed.path("Dockerfile"))
        if instruction.keyword == "COPY" and not instruction.arguments.startswith("--from")
        for source in shlex.split(instruction.arguments)[:-1]
    ]

    assert [source for source in sources if not deployed.path(source).exists()] == []
    assert [source for source in sources if dockerignored(source, ignored)] == []
    # The migrations travel inside the wheel, found wherever it is installed.
    assert not {"migrations", "alembic.ini"} & set(sources)


# --- compose.yaml ---------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification(deployed: Deployed) -> None:
    assert_ok(validate("check-jsonschema", [*COMPOSE_SCHEMA, "compose.yaml"], cwd=deployed.project))


def test_compose_runs_a_server_for_each_enabled_resource(deployed: Deployed) -> None:
    services = load_yaml(deployed.path("compose.yaml"))["services"]
    app = services["app"]
    migrations = {"migrate"} if deployed.on("postgres") else set()

    assert set(services) == {"app", *deployed.servers, *migrations}
    expected_conditions = {server: "service_healthy" for server in deployed.servers}
    if deployed.on("postgres"):
        expected_conditions["migrate"] = "service_completed_successfully"
        assert services["migrate"]["command"] == ["python", "-m", f"{deployed.case.package}.migrate"]
        assert services["migrate"]["image"] == app["image"]
    conditions = {name: dependency["condition"] for name, dependency in app.get("depends_on", {}).items()}
    assert conditions == expected_conditions
    for server, variable in SERVERS.items():
        url = app["environment"].get(variable)
        assert (url is not None) == deployed.on(server), variable
        if url is not None:
            assert urlsplit(url).hostname == server
            health = " ".join(services[server]["healthcheck"]["test"])
            assert HEALTH_COMMANDS[server] in health
    assert "/health/live" in " ".join(app["healthcheck"]["test"])
    assert set(app["environment"]) <= settings_variables(deployed.project, deployed.case.package)


# --- GitHub Actions -------------------------------------------------------------------------------


def test_workflow_matches_the_github_workflow_schema(deployed: Deployed) -> None:
    workflow = ".github/workflows/ci.yml"
    assert_ok(validate("check-jsonschema", [*WORKFLOW_SCHEMA, workflow], cwd=deployed.project))


def test_workflow_runs_the_checks_against_a_container_per_enabled_server(deployed: Deployed) -> None:
    workflow = load_yaml(deployed.path(".github/workflows/ci.yml"))
    (job,) = workflow["jobs"].values()
    services = job.get("services", {})
    commands = [step["run"] for step in job["steps"] if "run" in step]
    (setup_python,) = [step for step in job["steps"] if step.get("uses", "").startswith("actions/setup-python@")]

    assert workflow["concurrency"]["group"] == "${{ github.workflow }}-${{ github.ref }}"
    assert set(services) == deployed.servers
    for server in services:
        assert "--health-cmd" in services[server]["options"]
        assert HEALTH_COMMANDS[server] in services[server]["options"]
    for server, variable in SERVERS.items():
        url = job.get("env", {}).get(variable)
        assert (url is not None) == deployed.on(server), variable
        if url is not None:
            port = services[server]["ports"][0].split(":")[0]
            assert urlsplit(url).port == int(port)
    (setup_uv,) = [step for step in job["steps"] if step.get("uses", "").startswith("astral-sh/setup-uv@")]

    assert setup_python["with"]["python-version"] == "3.11"
    assert re.fullmatch(r"\d+\.\d+\.\d+", setup_uv["with"]["version"]), "a pinned uv"
    # Exactly the locked versions, installed before the checks run with them, never re-locked.
    install = commands.index('uv sync --locked --python "3.11"')
    for command in ("ruff check .", "ruff format --check .", "mypy", "pytest"):
        assert commands.index(f"uv run --frozen {command}") > install, command
    assert any("apt-get install" in run and "redis-server" in run for run in commands) == deployed.on("redis")
    assert any("apt-get install" in run and "pgbouncer" in run for run in commands) == deployed.on("postgres")


# --- Kubernetes -----------------------------------------------------------------------------------


def k8s_files(deployed: Deployed) -> list[str]:
    return [*K8S_FILES, *([MIGRATE_JOB] if deployed.on("postgres") else [])]


def test_kubernetes_manifests_match_the_api_schemas(deployed: Deployed) -> None:
    assert sorted(path.name for path in deployed.path("deploy/k8s").iterdir()) == sorted(k8s_files(deployed))
    assert_ok(validate("kubernetes-validate", [*K8S_SCHEMA, *k8s_files(deployed)], cwd=deployed.path("deploy/k8s")))


def container_env(container: dict) -> dict[str, dict]:
    return {variable["name"]: variable for variable in container["env"]}


def test_deployment_probes_and_shutdown_fit_the_service(deployed: Deployed) -> None:
    deployment = load_yaml(deployed.path("deploy/k8s/deployment.yaml"))
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = container_env(container)
    port_names = {port["name"] for port in container["ports"]}

    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {kind: probe["path"] for kind, probe in probes.items()} == {
        "startupProbe": "/health/live",
        "livenessProbe": "/health/live",
        "readinessProbe": "/health/ready",
    }
    assert {probe["port"] for probe in probes.values()} <= port_names

    # SIGKILL comes terminationGracePeriodSeconds after the preStop hook starts: the pause, the
    # requests in flight, the background tasks' drain and every resource closing in turn must fit
    # before it.
    pause_command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pause_command[0] == "sleep"
    enabled_resources = [name for name in RESOURCES_CLOSED_AT_SHUTDOWN if deployed.on(name)]
    graceful = int(env["GRACEFUL_SHUTDOWN_TIMEOUT"]["value"])
    background_drain = float(env["BACKGROUND_DRAIN_SECONDS"]["value"])
    close_each = float(env["SHUTDOWN_TIMEOUT"]["value"])
    # With RabbitMQ, the messages being handled get RABBITMQ_DRAIN_SECONDS before the closes.
    message_drain = float(env["RABBITMQ_DRAIN_SECONDS"]["value"]) if deployed.on("rabbitmq") else 0.0
    assert ("RABBITMQ_DRAIN_SECONDS" in env) == deployed.on("rabbitmq")
    # The background tasks cancelled after their drain get SHUTDOWN_TIMEOUT too, and so does the
    # outbox relay's stop (PostgreSQL and RabbitMQ both on).
    outbox_relay = deployed.on("postgres") and deployed.on("rabbitmq")
    closing_steps = len(enabled_resources) + 1 + outbox_relay
    longest_stop = float(pause_command[1]) + graceful + background_drain + message_drain + close_each * closing_steps
    assert pod["terminationGracePeriodSeconds"] > longest_stop
    # The manifest's GRACEFUL_SHUTDOWN_TIMEOUT is the one the service reads.
    assert set(env) <= settings_variables(deployed.project, deployed.case.package)
    assert "GRACEFUL_SHUTDOWN_TIMEOUT" in settings_variables(deployed.project, deployed.case.package)

    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_deployment_takes_the_urls_of_enabled_servers_from_a_secret(deployed: Deployed) -> None:
    deployment = load_yaml(deployed.path("deploy/k8s/deployment.yaml"))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = container_env(container)

    from_secrets = {name for name, variable in env.items() if "secretKeyRef" in variable.get("valueFrom", {})}
    assert from_secrets == {SERVERS[server] for server in deployed.servers}
    assert not any("value" in env[name] for name in from_secrets)


def test_the_migration_job_runs_the_release_image_once_and_bounded(deployed: Deployed) -> None:
    if not deployed.on("postgres"):
        return
    k8s = deployed.path("deploy/k8s")
    deployment, job = load_yaml(k8s / "deployment.yaml"), load_yaml(k8s / MIGRATE_JOB)
    pod, job_pod = deployment["spec"]["template"]["spec"], job["spec"]["template"]["spec"]
    (app,), (migrate,) = pod["containers"], job_pod["containers"]

    assert job["kind"] == "Job"
    assert migrate["image"] == app["image"]
    assert migrate["command"] == ["python", "-m", f"{deployed.case.package}.migrate"]
    assert container_env(migrate)["DATABASE_URL"] == container_env(app)["DATABASE_URL"]
    # One attempt at a time, a few retries, a deadline: a rollout never waits forever.
    assert job["spec"].get("parallelism", 1) == 1
    assert 0 < job["spec"]["backoffLimit"] <= 3
    assert 0 < job["spec"]["activeDeadlineSeconds"] <= 600
    assert job_pod["restartPolicy"] == "Never"
    # Under the same restrictions as the service's own pods.
    assert job_pod["securityContext"] == pod["securityContext"]
    assert migrate["securityContext"] == app["securityContext"]
    assert migrate["resources"]["limits"]["memory"] == app["resources"]["limits"]["memory"]
    # The documented rollout order is the Job's own.
    deployment_page = deployed.path(DEPLOYMENT_PAGE).read_text()
    steps = (f"kubectl apply -f deploy/k8s/{MIGRATE_JOB}", "kubectl wait", "kubectl apply -f deploy/k8s/deployment.yaml")
    rollout = [deployment_page.index(step) for step in steps]
    assert rollout == sorted(rollout)


def test_service_and_budget_select_the_deployments_pods(deployed: Deployed) -> None:
    k8s = deployed.path("deploy/k8s")
    deployment, service, budget, _ = (load_yaml(k8s / name) for name in K8S_FILES)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    port_names = {port["name"] for port in container["ports"]}

    for selector in (service["spec"]["selector"], budget["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items()
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names
    assert deployment["metadata"]["name"] == deployed.case.slug


def settings_default(project: Path, package: str, variable: str) -> int:
    """The default the generated Settings give a variable."""
    tree = ast.parse((project / "src" / package / "settings.py").read_text())
    settings = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Settings")
    for node in settings.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == variable.lower():
            assert node.value is not None
            default = node.value
            if isinstance(default, ast.Call):  # Field(default=...)
                default = next(keyword.value for keyword in default.keywords if keyword.arg == "default")
            return int(ast.literal_eval(default))
    raise AssertionError(f"Settings has no {variable}")


def test_autoscaler_targets_the_deployment_and_owns_its_replicas(deployed: Deployed) -> None:
    k8s = deployed.path("deploy/k8s")
    deployment, hpa = load_yaml(k8s / "deployment.yaml"), load_yaml(k8s / "hpa.yaml")
    budget = load_yaml(k8s / "pdb.yaml")

    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"]
    # Draining a node must leave a pod serving: more pods than the budget keeps.
    assert hpa["spec"]["minReplicas"] > budget["spec"]["minAvailable"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["requests"]["cpu"], "a CPU target needs a CPU request"


def test_the_most_pods_at_once_fit_the_databases_connections(deployed: Deployed) -> None:
    """docs/deployment.md, "Scaling out": (maxReplicas + maxSurge) x WORKERS x (DB_POOL_SIZE +
    DB_MAX_OVERFLOW) <= max_connections - reserve, with the numbers the page documents."""
    deployment_page = deployed.path(DEPLOYMENT_PAGE).read_text()
    if not deployed.on("postgres"):
        assert "This service opens no database pool yet" in deployment_page
        return
    max_connections = int(re.search(r"`max_connections` \((\d+) by default\)", deployment_page).group(1))
    reserve = int(re.search(r"the reserve \((\d+) connections here\)", deployment_page).group(1))
    k8s = deployed.path("deploy/k8s")
    deployment, hpa = load_yaml(k8s / "deployment.yaml"), load_yaml(k8s / "hpa.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = container_env(container)

    def setting(variable: str) -> int:
        if variable in env:
            return int(env[variable]["value"])
        return settings_default(deployed.project, deployed.case.package, variable)

    most_pods = hpa["spec"]["maxReplicas"] + deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    # With RabbitMQ, each worker's outbox relay holds one connection besides its pool.
    relay = 1 if deployed.on("rabbitmq") else 0
    per_pod = setting("WORKERS") * (setting("DB_POOL_SIZE") + setting("DB_MAX_OVERFLOW") + relay)
    assert most_pods * per_pod <= max_connections - reserve
    # And the page's worked example is this very sum.
    assert f"= {most_pods * per_pod} ≤ {max_connections} − {reserve}" in deployment_page


def test_pods_are_annotated_for_scraping_on_the_service_port(deployed: Deployed) -> None:
    deployment = load_yaml(deployed.path("deploy/k8s/deployment.yaml"))
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]

    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert [annotations["prometheus.io/port"]] == [str(port["containerPort"]) for port in container["ports"]]


def test_image_user_and_port_agree_with_the_manifest(deployed: Deployed) -> None:
    instructions = dockerfile_instructions(deployed.path("Dockerfile"))
    image_user = [instruction.arguments for instruction in instructions if instruction.keyword == "USER"][-1]
    exposed = [instruction.arguments for instruction in instructions if instruction.keyword == "EXPOSE"]
    pod = load_yaml(deployed.path("deploy/k8s/deployment.yaml"))["spec"]["template"]["spec"]
    (container,) = pod["containers"]

    assert image_user.split(":")[0] == str(pod["securityContext"]["runAsUser"])
    assert [str(port["containerPort"]) for port in container["ports"]] == exposed


# --- a Python version other than the default ---------------------------------------------------------


def test_python_version_reaches_the_image_and_ci(baker: Baker, tmp_path: Path) -> None:
    project = baker.bake(tmp_path, {"python_version": "3.13"})
    stages = [i.arguments for i in dockerfile_instructions(project / "Dockerfile") if i.keyword == "FROM"]
    (job,) = load_yaml(project / ".github/workflows/ci.yml")["jobs"].values()
    (setup_python,) = [step for step in job["steps"] if step.get("uses", "").startswith("actions/setup-python@")]

    assert [stage.split()[0] for stage in stages] == ["python:3.13-slim", "python:3.13-slim"]
    assert setup_python["with"]["python-version"] == "3.13"
