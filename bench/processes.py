"""The processes a benchmark starts: free ports, waiting for HTTP, memory, and stopping them."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 (local URLs)
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, urllib.error.URLError):
        return None


def request_json(method: str, url: str, body: object) -> object:
    """Send `body` as JSON and return the decoded JSON reply (an HTTP error raises)."""
    req = urllib.request.Request(  # noqa: S310 (local URLs)
        url,
        data=json.dumps(body).encode(),
        method=method,
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as reply:  # noqa: S310
        return json.loads(reply.read())


def wait_for_status(
    url: str, process: subprocess.Popen[bytes], *, timeout: float, interval: float = 0.005
) -> float:
    """Poll `url` until it answers 200; the time.perf_counter() reading of that moment."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if http_status(url, timeout=1.0) == 200:
            return time.perf_counter()
        if process.poll() is not None:
            raise RuntimeError(
                f"{process.args!r} exited with {process.returncode} before {url} was 200"
            )
        time.sleep(interval)
    raise TimeoutError(f"{url} did not answer 200 within {timeout} s")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def wait_until_idle(pid: int, *, timeout: float, interval: float = 0.1) -> None:
    """Poll until the process used no CPU for one interval: a server that is still working
    off requests a load generator gave up on would slow the next measurement."""
    deadline = time.perf_counter() + timeout
    used = cpu_seconds(pid)
    while time.perf_counter() < deadline:
        time.sleep(interval)
        now = cpu_seconds(pid)
        if now - used < 0.01:
            return
        used = now
    raise TimeoutError(f"pid {pid} was still busy after {timeout} s")


def stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Processes:
    """Starts processes with their output in log files, and stops each of them at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[subprocess.Popen[bytes]] = []
        self.by_name: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, argv: Sequence[str | Path], *, env: Mapping[str, str], cwd: Path
    ) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [str(arg) for arg in argv],
            env={**os.environ, **env},
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()  # the child holds its own copy
        self.started.append(process)
        self.by_name[name] = process
        return process

    def pid_of(self, name: str) -> int:
        return self.by_name[name].pid

    def stop_all(self) -> None:
        for process in reversed(self.started):
            stop(process)
        self.started.clear()
        self.by_name.clear()


@contextlib.contextmanager
def processes(log_dir: Path) -> Iterator[Processes]:
    group = Processes(log_dir)
    try:
        yield group
    finally:
        group.stop_all()
