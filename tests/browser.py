"""Headless Chromium (Debian's `chromium` package), driven over the DevTools protocol on a pipe
(`--remote-debugging-pipe`): no WebDriver, no debugging port, no package beyond the standard
library.

The browser may reach one host only. The host resolver knows that one name and no other (so the
browser's own traffic, which no page interception sees, cannot leave the machine), and every
request a page makes is intercepted: one to the allowed host goes on, any other is refused
before it leaves the browser and recorded in `Browser.blocked`.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

FLAGS = [
    "--headless",
    "--no-sandbox",  # it runs as root in CI; the sandbox refuses to
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",  # a proxy set in the environment would be asked for every name
]

# Chromium reads commands from its fd 3 and writes replies and events to its fd 4, each message
# ended by a NUL byte. The shell moves the pipes given as its stdin and stdout there.
PIPES_TO_FDS_3_AND_4 = 'exec "$0" "$@" 3<&0 4>&1 </dev/null >&2'


class DevToolsError(Exception):
    """A command failed, or Chromium exited."""


def chromium_path() -> str | None:
    return shutil.which("chromium")


@dataclass
class Browser:
    commands: int  # our end of the pipe Chromium reads
    replies: int  # our end of the pipe Chromium writes
    allowed_host: str  # host:port
    log: Path
    allowed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    _buffer: bytes = b""
    _last_id: int = 0

    def call(
        self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None, deadline: float
    ) -> dict[str, Any]:
        """Send one command and return its result, answering the events that come first."""
        message_id = self._send(method, params or {}, session)
        while True:
            message = self._receive(deadline)
            if message.get("id") == message_id:
                if "error" in message:
                    raise DevToolsError(f"{method}: {message['error']}")
                return message["result"]
            if "method" in message:
                self._on_event(message)

    def open(self, url: str, *, deadline: float) -> str:
        """A new tab with its requests intercepted, navigated to `url`; returns its session."""
        target = self.call("Target.createTarget", {"url": "about:blank"}, deadline=deadline)["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True}, deadline=deadline)[
            "sessionId"
        ]
        self.call("Fetch.enable", {"patterns": [{"urlPattern": "*"}]}, session=session, deadline=deadline)
        self.call("Runtime.enable", session=session, deadline=deadline)
        navigated = self.call("Page.navigate", {"url": url}, session=session, deadline=deadline)
        if "errorText" in navigated:
            raise DevToolsError(f"{url}: {navigated['errorText']}")
        return session

    def evaluate(self, session: str, expression: str, *, deadline: float) -> Any:
        """The value of a JavaScript expression in the page, its promise awaited."""
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session=session,
            deadline=deadline,
        )
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression[:80]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, session: str, path: Path, *, deadline: float) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png"}, session=session, deadline=deadline)["data"]
        path.write_bytes(base64.b64decode(data))

    def _on_event(self, message: dict[str, Any]) -> None:
        params = message["params"]
        if message["method"] == "Fetch.requestPaused":
            url = params["request"]["url"]
            if urlsplit(url).netloc == self.allowed_host:
                self.allowed.append(url)
                self._send("Fetch.continueRequest", {"requestId": params["requestId"]}, message["sessionId"])
            else:
                self.blocked.append(url)
                self._send(
                    "Fetch.failRequest",
                    {"requestId": params["requestId"], "errorReason": "BlockedByClient"},
                    message["sessionId"],
                )
        elif message["method"] == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.exceptions.append(details.get("exception", {}).get("description") or details["text"])

    def _send(self, method: str, params: dict[str, Any], session: str | None) -> int:
        self._last_id += 1
        message: dict[str, Any] = {"id": self._last_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self.commands, data) :]
        return self._last_id

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no answer from Chromium before the deadline")
            readable, _, _ = select.select([self.replies], [], [], remaining)
            if readable:
                chunk = os.read(self.replies, 1 << 16)
                if not chunk:
                    raise DevToolsError(f"Chromium exited; its log: {self.log}")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)


@contextmanager
def chromium(profile: Path, log: Path, *, host: str, port: int) -> Iterator[Browser]:
    """Chromium with a new, empty profile, whose resolver maps `host` to 127.0.0.1 and knows no
    other name; pages may request http://host:port/... and nothing else."""
    path = chromium_path()
    assert path is not None
    argv = [
        *FLAGS,
        f"--user-data-dir={profile}",
        f"--host-resolver-rules=MAP {host} 127.0.0.1, MAP * ~NOTFOUND",
        "--remote-debugging-pipe",
        "about:blank",
    ]
    commands_read, commands_write = os.pipe()
    replies_read, replies_write = os.pipe()
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            ["/bin/sh", "-c", PIPES_TO_FDS_3_AND_4, path, *argv],
            stdin=commands_read,
            stdout=replies_write,
            stderr=stderr,
            start_new_session=True,  # its renderers and helpers are ended with it
        )
    os.close(commands_read)
    os.close(replies_write)
    browser = Browser(commands_write, replies_read, f"{host}:{port}", log)
    try:
        yield browser
    finally:
        try:
            browser.call("Browser.close", deadline=time.monotonic() + 5)
        except (DevToolsError, TimeoutError, OSError):
            pass
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        os.close(commands_write)
        os.close(replies_read)
