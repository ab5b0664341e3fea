"""Local HTTP API (127.0.0.1 by default): health, readiness, status, metrics, one-shot detect.

With a token configured every route but ``/healthz`` needs ``Authorization: Bearer <token>``
(``/healthz`` stays open so a supervisor can probe liveness without the secret).
"""

from __future__ import annotations

import time
from typing import Any, Protocol, cast

import cv2
import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from numpy.typing import NDArray
from prometheus_client import CONTENT_TYPE_LATEST

from edge_agent.errors import EdgeAgentError
from edge_agent.frame_path import ActiveModel
from edge_agent.status import AgentStatus
from shared.image_header import ImageHeaderError, image_size
from shared.infra.http import bearer_auth


class AgentView(Protocol):
    """What the API needs from the agent (kept narrow so the API stays a thin layer)."""

    def status(self) -> AgentStatus: ...

    def alive(self) -> bool: ...

    def readiness(self) -> list[str]: ...

    def active_model(self) -> ActiveModel | None: ...

    def metrics_text(self) -> bytes: ...


def _decode_and_detect(body: bytes, model: ActiveModel) -> dict[str, Any]:
    image = cast(
        "NDArray[np.uint8] | None",
        cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR),
    )
    if image is None:
        raise HTTPException(400, "body is not a decodable image (JPEG or PNG expected)")
    started = time.monotonic()
    try:
        (detections,) = model.runner.detect([image])
    except EdgeAgentError as exc:
        raise HTTPException(500, f"inference failed: {exc}") from exc
    return {
        "model": {"name": model.name, "version": model.version},
        "image": {"width": int(image.shape[1]), "height": int(image.shape[0])},
        "latency_ms": round((time.monotonic() - started) * 1000, 2),
        "detections": detections.to_records(model.class_names),
    }


def create_app(
    agent: AgentView, *, token: str | None, max_upload_bytes: int, max_image_pixels: int
) -> FastAPI:
    app = FastAPI(title="linefleet edge agent", version="1", docs_url=None, redoc_url=None)

    guarded = [Depends(bearer_auth(token))]

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        ok = agent.alive()
        return JSONResponse({"status": "ok" if ok else "dead"}, status_code=200 if ok else 503)

    @app.get("/readyz", dependencies=guarded)
    def readyz() -> JSONResponse:
        problems = agent.readiness()
        return JSONResponse(
            {"ready": not problems, "problems": problems}, status_code=503 if problems else 200
        )

    @app.get("/status", dependencies=guarded, response_model=AgentStatus)
    def status() -> AgentStatus:
        return agent.status()

    @app.get("/metrics", dependencies=guarded)
    def metrics() -> Response:
        return Response(agent.metrics_text(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/detect", dependencies=guarded)
    async def detect(request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_upload_bytes:
            raise HTTPException(413, f"image larger than {max_upload_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > max_upload_bytes:
                raise HTTPException(413, f"image larger than {max_upload_bytes} bytes")
        if not body:
            raise HTTPException(400, "empty body: send the image bytes (JPEG or PNG)")
        try:
            width, height = image_size(bytes(body))
        except ImageHeaderError as exc:
            raise HTTPException(
                400, f"body is not a decodable image (JPEG or PNG expected): {exc}"
            ) from exc
        if width * height > max_image_pixels:
            raise HTTPException(
                413, f"image of {width}x{height} pixels exceeds the {max_image_pixels}-pixel limit"
            )
        model = agent.active_model()
        if model is None:
            raise HTTPException(503, "no model loaded yet")
        # Decoding and inference take milliseconds to seconds of CPU: off the event loop, so
        # /healthz and /metrics keep answering meanwhile.
        return await run_in_threadpool(_decode_and_detect, bytes(body), model)

    return app
