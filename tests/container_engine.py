"""A private Docker engine for the template's tests, and the stand-in base image it builds on.

The official ``python:<version>-slim`` images cannot be pulled where this template is tested, and
containers can only use the host's network. So the tests start a dockerd of their own (socket,
data root and exec root in a private folder, no bridge, no iptables), import a stand-in for the
base image and build the generated Dockerfile unchanged on it, with ``--network host``.

The stand-in is Debian bookworm (debootstrap's minbase variant, from the mirror apt uses here)
with Debian's packaged Python 3.11, trusting the host's locally added CA certificates, so that pip
and uv reach the package index during the build exactly as they do on the host. Its tarball is cached
under ``~/.cache/cookiecutter-fastapi-lifespan/``, keyed by everything that goes into it.
"""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

# Bookworm packages Python 3.11, the template's default python_version; no other version has a
# stand-in, so the container tests bake the default.
SUITE = "bookworm"
STAND_IN_TAG = "python:3.11-slim"
STAND_IN_PACKAGES = ("python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates")
# What the official image sets and the generated Dockerfile relies on ($PATH is extended there).
STAND_IN_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)
# Raise when the way the stand-in is made changes: the cached tarball is then rebuilt.
RECIPE_VERSION = 2
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
UV_TOML = "system-certs = true\n"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# Host pip configuration files, lowest precedence first (pip's own order).
HOST_PIP_CONFIGS = (
    Path("/etc/xdg/pip/pip.conf"),
    Path("/etc/pip.conf"),
    Path.home() / ".pip" / "pip.conf",
    Path.home() / ".config" / "pip" / "pip.conf",
)
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
DEBOOTSTRAP_TIMEOUT = 900
# dockerd is up in about 2 s; it stops in about 3.
DOCKERD_START_TIMEOUT = 60
DOCKERD_STOP_TIMEOUT = 30
DOCKERD_FLAGS = (
    "--storage-driver",
    "overlay2",
    "--iptables=false",
    "--ip6tables=false",
    "--bridge=none",
    "--ip-masq=false",
)
PROGRAMS = ("dockerd", "docker", "debootstrap")


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cookiecutter-fastapi-lifespan"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def skip_or_fail(reason: str) -> NoReturn:
    """Skip where the engine cannot run; in CI (CI=true) that is a failure: the run must prove it."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: the container tests must run)", pytrace=False)
    pytest.skip(reason)


def missing_requirements() -> list[str]:
    missing = [f"no {program} on PATH" for program in PROGRAMS if shutil.which(program) is None]
    if os.geteuid() != 0:
        missing.append("dockerd and debootstrap need root")
    return missing


# --- the stand-in base image --------------------------------------------------------------------


def apt_mirror(suite: str = SUITE) -> str:
    """The Debian mirror apt installs ``suite`` from, in one-line or deb822 sources."""
    files: list[Path] = []
    for source in APT_SOURCES:
        if source.is_dir():
            files += sorted(path for path in source.iterdir() if path.suffix in {".list", ".sources"})
        elif source.is_file():
            files.append(source)
    for path in files:
        if path.suffix == ".sources":
            for stanza in path.read_text().split("\n\n"):
                fields = deb822_fields(stanza)
                enabled = fields.get("enabled", "yes").lower() != "no"
                if enabled and "deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split():
                    return fields["uris"].split()[0]
        else:
            for line in path.read_text().splitlines():
                # deb [arch=amd64 signed-by=...] URI SUITE COMPONENT...
                words = re.sub(r"\[[^]]*\]", " ", line.split("#")[0]).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                    return words[1]
    raise RuntimeError(f"no apt source for Debian {suite} in {', '.join(map(str, files))}")


def deb822_fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if line.startswith("#") or ":" not in line or line[:1].isspace():
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    return fields


def host_package_indexes() -> dict[str, str]:
    """The host's pip indexes that a container can reach too (http or https, not local files).

    On the host, pip may also use local indexes, find-links folders or constraints; none of those
    exist inside the build, so they are not carried over.
    """
    settings: dict[str, str] = {}
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    files = [*HOST_PIP_CONFIGS, *([Path(os.environ["PIP_CONFIG_FILE"])] if os.environ.get("PIP_CONFIG_FILE") else [])]
    parser.read([path for path in files if path.is_file()])
    for key in ("index-url", "extra-index-url"):
        if parser.has_option("global", key):
            settings[key] = parser.get("global", key)
        variable = "PIP_" + key.upper().replace("-", "_")
        if os.environ.get(variable):
            settings[key] = os.environ[variable]
    reachable = {
        key: " ".join(url for url in value.split() if url.startswith(("http://", "https://")))
        for key, value in settings.items()
    }
    return {key: value for key, value in reachable.items() if value}


@dataclass(frozen=True)
class StandInRecipe:
    """Everything the stand-in's tarball is made from; its hash names the cached file."""

    mirror: str
    ca_certificates: tuple[tuple[str, bytes], ...]
    pip_conf: str

    @classmethod
    def from_host(cls) -> StandInRecipe:
        # What update-ca-certificates adds to the bundle on the host (none where the folder is empty).
        certificates = tuple(
            (str(path.relative_to(LOCAL_CA_DIR)), path.read_bytes())
            for path in sorted(LOCAL_CA_DIR.rglob("*.crt"))
            if path.is_file()
        )
        lines = ["[global]", f"cert = {CA_BUNDLE}"]
        lines += [f"{key} = {value}" for key, value in host_package_indexes().items()]
        return cls(apt_mirror(), certificates, "\n".join(lines) + "\n")

    def key(self) -> str:
        digest = hashlib.sha256()
        parts = [str(RECIPE_VERSION), SUITE, self.mirror, *STAND_IN_PACKAGES, self.pip_conf, UV_TOML, *STAND_IN_CHANGES]
        for part in parts:
            digest.update(part.encode() + b"\0")
        for name, data in self.ca_certificates:
            digest.update(name.encode() + b"\0" + data + b"\0")
        return digest.hexdigest()[:16]

    def tarball(self, folder: Path) -> Path:
        return folder / f"{STAND_IN_TAG.replace(':', '-')}-standin-{SUITE}-{self.key()}.tar"


@dataclass(frozen=True)
class StandIn:
    tarball: Path
    # Seconds spent making it in this run: 0 when it came from the cache.
    build_seconds: float


def stand_in_base(recipe: StandInRecipe, folder: Path) -> StandIn:
    """The stand-in's tarball, made once per recipe; concurrent test workers wait for the first."""
    folder.mkdir(parents=True, exist_ok=True)
    tarball = recipe.tarball(folder)
    with (folder / f"{tarball.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.is_file():
            return StandIn(tarball, 0.0)
        started = time.monotonic()
        make_stand_in(recipe, tarball)
        return StandIn(tarball, time.monotonic() - started)


def make_stand_in(recipe: StandInRecipe, tarball: Path) -> None:
    rootfs = tarball.with_suffix(".rootfs")
    shutil.rmtree(rootfs, ignore_errors=True)
    try:
        run_checked(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(STAND_IN_PACKAGES)}",
                SUITE,
                str(rootfs),
                recipe.mirror,
            ],
            timeout=DEBOOTSTRAP_TIMEOUT,
        )
        # The downloaded packages and indexes: the official slim image does not keep them either.
        for leftovers in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / leftovers).glob("*"):
                if path.is_file():
                    path.unlink()
        certificates = rootfs / LOCAL_CA_DIR.relative_to("/")
        for name, data in recipe.ca_certificates:
            (certificates / name).parent.mkdir(parents=True, exist_ok=True)
            (certificates / name).write_bytes(data)
        run_checked(["chroot", str(rootfs), "update-ca-certificates"], timeout=120)
        (rootfs / "etc" / "pip.conf").write_text(recipe.pip_conf)
        # uv (the Dockerfile's `uv sync`) reads no pip.conf and trusts its own roots unless told to
        # use the system's, which hold the host's local certificates.
        (rootfs / "etc" / "uv").mkdir()
        (rootfs / "etc" / "uv" / "uv.toml").write_text(UV_TOML)
        partial = tarball.with_suffix(".partial")
        run_checked(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."], timeout=300)
        partial.rename(tarball)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def run_checked(argv: list[str], timeout: float) -> str:
    completed = subprocess.run(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False
    )
    if completed.returncode != 0:
        tail = "\n".join(completed.stdout.splitlines()[-40:])
        raise RuntimeError(f"{argv[0]} failed (exit {completed.returncode}):\n{tail}")
    return completed.stdout


# --- the private daemon ----------------------------------------------------------------------


@dataclass
class DockerEngine:
    """The docker command line, talking to the private daemon only."""

    folder: Path
    # The versions and the stand-in base, for the test summary.
    description: str = ""

    @property
    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/root"),
            "DOCKER_HOST": f"unix://{self.folder / 'docker.sock'}",
            # No credential helpers or contexts of the host's ~/.docker.
            "DOCKER_CONFIG": str(self.folder / "client"),
            # dockerd 20.10's classic builder: no buildx plugin is needed, and its
            # "Using cache" lines say which steps were reused.
            "DOCKER_BUILDKIT": "0",
        }

    def argv(self, *args: str) -> list[str]:
        docker = shutil.which("docker")
        assert docker is not None
        return [docker, *args]

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )

    def output(self, *args: str, timeout: float = 60) -> str:
        completed = self.run(*args, timeout=timeout)
        if completed.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} failed (exit {completed.returncode}):\n{completed.stdout}")
        return completed.stdout

    def inspect(self, *names: str) -> list[dict]:
        documents = json.loads(self.output("inspect", *names))
        assert isinstance(documents, list)
        return documents

    def versions(self) -> str:
        return self.output("version", "--format", "client {{.Client.Version}}, daemon {{.Server.Version}}").strip()

    def import_stand_in(self, stand_in: StandIn) -> None:
        changes = [arg for change in STAND_IN_CHANGES for arg in ("--change", change)]
        self.output("import", *changes, str(stand_in.tarball), STAND_IN_TAG, timeout=300)


@contextlib.contextmanager
def private_dockerd(folder: Path) -> Iterator[DockerEngine]:
    """Run dockerd with everything it keeps in ``folder``; stop it by its pid at the end."""
    engine = DockerEngine(folder)
    log = (folder / "dockerd.log").open("w")
    daemon = subprocess.Popen(
        [
            "dockerd",
            "--host",
            engine.env["DOCKER_HOST"],
            "--data-root",
            str(folder / "data"),
            "--exec-root",
            str(folder / "exec"),
            "--pidfile",
            str(folder / "dockerd.pid"),
            *DOCKERD_FLAGS,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until_ready(engine, daemon, folder / "dockerd.log")
        yield engine
    finally:
        stop(daemon)
        log.close()
        unmount_leftovers(folder)
        # The images and layers (about 1 GB): pytest keeps its last temporary folders around.
        for state in ("data", "exec"):
            shutil.rmtree(folder / state, ignore_errors=True)


def wait_until_ready(engine: DockerEngine, daemon: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + DOCKERD_START_TIMEOUT
    while engine.run("version", timeout=10).returncode != 0:
        if daemon.poll() is not None or time.monotonic() > deadline:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"dockerd did not start (exit {daemon.poll()}):\n{tail}")
        time.sleep(0.1)


def stop(daemon: subprocess.Popen[bytes]) -> None:
    """SIGTERM (dockerd stops its containers and containerd), SIGKILL after the deadline."""
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(DOCKERD_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def unmount_leftovers(folder: Path) -> None:
    """dockerd leaves its network namespace (and after a kill, layers) mounted in its folder."""
    prefix = str(folder.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if (m + "/").startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mount], check=False)
