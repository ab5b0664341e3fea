"""Headless Chromium driven over the DevTools protocol: load a page, run JavaScript in it
(click a button, read the DOM), for tests of the dashboard as an operator uses it.

Chromium is Debian's (installed by ``scripts/install-system-deps.sh``); the protocol is spoken
over a WebSocket with the ``websockets`` package the API server already depends on.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
from websockets.sync.client import ClientConnection, connect

from testing.local_services import free_port

# Screenshots of the console kept as test artifacts (CI can archive the folder).
ARTIFACTS = Path(os.environ.get("LINEFLEET_TEST_ARTIFACTS", "test-artifacts")).resolve()


class BrowserError(AssertionError):
    """The page could not be driven (Chromium missing, a script threw, a timeout)."""


class HeadlessPage:
    """One Chromium tab. ``evaluate`` runs an expression (awaiting a promise) and returns
    its JSON value; a thrown error fails the test with the page's message."""

    def __init__(self) -> None:
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            raise BrowserError("chromium is installed by scripts/install-system-deps.sh")
        # Chromium's helper processes may still write to the profile as the browser goes:
        # cleaning it up must not fail the test.
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True)
        port = free_port()
        self._process = subprocess.Popen(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={Path(self._profile.name)}",
                f"--remote-debugging-port={port}",
                "--remote-allow-origins=*",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopping it stops its helpers
        )
        self._ids = itertools.count(1)
        self._stack = contextlib.ExitStack()
        try:
            socket = connect(_page_socket(port), max_size=2**24)
            self._socket: ClientConnection = self._stack.enter_context(socket)
        except BaseException:
            self._stop_chromium()
            raise

    def _call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        self._socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv(timeout=30))
            if message.get("id") == call_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))

    def goto(self, url: str) -> None:
        self._call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str) -> Any:
        result = self._call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"the page threw: {text}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 15.0) -> None:
        """Until ``expression`` is truthy in the page."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(f"Boolean({expression})"):
                return
            time.sleep(0.1)
        raise BrowserError(f"{expression!r} did not hold within {timeout:g} s")

    def screenshot(self, path: Path, *, width: int = 1366, height: int = 768) -> Path:
        """A PNG of the whole page as a 1366x768 screen lays it out (the smallest the
        console must work on), written to ``path``."""
        self._call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        size = self._call("Page.getLayoutMetrics")["cssContentSize"]
        shot = self._call(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1},
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        self._stack.close()
        self._stop_chromium()

    def _stop_chromium(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait(timeout=10)
        self._profile.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _page_socket(port: int) -> str:
    """The WebSocket address of Chromium's first tab, once its DevTools endpoint answers."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            pages = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=1).json()
            for page in pages:
                if page.get("type") == "page":
                    return str(page["webSocketDebuggerUrl"])
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)
    raise BrowserError("chromium's DevTools endpoint did not come up within 30 s")
