"""The HTTP server both programs run (the agent's local API, the control plane's API and
dashboard), and the one bearer-token check they share.

uvicorn runs in a thread of its own so the caller keeps its stop event and threads; with port 0
the OS picks a free port.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI, HTTPException, Request

from shared.errors import LinefleetError


class HttpServerError(LinefleetError):
    """The HTTP server could not start (the port is in use, or the address is not ours)."""


def bearer_auth(token: str | None) -> Callable[[Request], None]:
    """A FastAPI dependency: ``Authorization: Bearer <token>`` must match, compared in constant
    time; the scheme is case-insensitive (RFC 7235). With no token configured it lets all in."""
    expected = token.encode("utf-8") if token else None

    def require_token(request: Request) -> None:
        if expected is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8", "surrogateescape"), expected
        ):
            raise HTTPException(
                status_code=401,
                detail="missing or wrong bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_token


class HttpServer:
    """uvicorn in a thread, stoppable."""

    def __init__(self, app: FastAPI, host: str, port: int, *, name: str = "api") -> None:
        # log_config=None: uvicorn's own messages (a port in use ...) go through the program's
        # logging set-up (one JSON object a line on the agent), not uvicorn's plain format.
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            log_config=None,
            lifespan="off",
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=name, daemon=True)
        self.host = host
        self._requested_port = port

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._server.should_exit = True
                raise HttpServerError(
                    f"HTTP server did not start on {self.host}:{self._requested_port}: "
                    "is the port in use by another process? Choose another port in the config"
                )
            time.sleep(0.02)

    @property
    def port(self) -> int:
        sockets = self._server.servers[0].sockets
        return int(sockets[0].getsockname()[1])

    def stop(self, timeout: float = 3.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
