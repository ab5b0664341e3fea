"""The control-plane HTTP API and its dashboard page (``cloud-trainer serve``).

JSON under ``/api`` (OpenAPI at ``/openapi.json``, docs at ``/docs``), bearer-token auth on
everything but ``/healthz`` and the dashboard page itself; the page is one static HTML file
whose script reads the token from the URL fragment (never sent to the server in a URL) and
polls the API. No build step.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from cloud_trainer.errors import ObjectNotFoundError, StorageError, TrainerError
from cloud_trainer.fleet.device_registry import DeviceRow, FleetRegistry, HistoryPoint
from cloud_trainer.fleet.params import RolloutAction, RolloutParams, RolloutRequest
from cloud_trainer.fleet.rollout import (
    RolloutController,
    RolloutDeviceView,
    RolloutError,
    RolloutStatus,
)
from cloud_trainer.labelstudio.reviews import ClassQuality, ReviewLedger
from cloud_trainer.release.model_registry import IndexEntry, ModelRegistry
from cloud_trainer.store import ObjectStore
from shared.errors import ContractError
from shared.hard_examples import HardExampleSidecar
from shared.infra.http import bearer_auth
from shared.object_keys import HARD_EXAMPLES, RUNS, parse_hard_example_key

MAX_THUMBNAIL_BYTES = 4 * 1024 * 1024
MAX_SIDECAR_BYTES = 1024 * 1024


class DeviceView(BaseModel):
    model_config = ConfigDict(frozen=True)

    device: DeviceRow
    history: list[HistoryPoint]


class LabelQualityView(BaseModel):
    """People's labels from Label Studio: outcomes, corrections per model version and
    class (the label-quality signal), and the latest skipped or rejected examples."""

    model_config = ConfigDict(frozen=True)

    outcomes: dict[str, int]
    classes: list[ClassQuality]
    problems: list[dict[str, Any]]


class HardExampleView(BaseModel):
    model_config = ConfigDict(frozen=True)

    key: str
    uploaded_at: datetime
    bytes: int


def create_control_app(
    *,
    registry: FleetRegistry,
    controller: RolloutController,
    models: ModelRegistry,
    store: ObjectStore,
    token: str | None,
    default_params: RolloutParams,
) -> FastAPI:
    app = FastAPI(title="linefleet control plane", version="1")

    guarded = [Depends(bearer_auth(token))]

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    def dashboard() -> str:
        return files("cloud_trainer.fleet").joinpath("dashboard.html").read_text()

    @app.get("/api/devices", dependencies=guarded, response_model=list[DeviceRow])
    def devices() -> Response:
        # Built from the rows with the stored cameras spliced in: FastAPI's own path validates
        # every row again and encodes in Python, and even one pydantic dump of parsed rows is
        # 5-6x the database's time for a fleet of thousands (benchmarks/console.py). The
        # schema in /openapi.json stays the one of DeviceRow.
        return Response(registry.devices_json(), media_type="application/json")

    @app.get("/api/devices/{device_id}", dependencies=guarded)
    def device(
        device_id: str, hours: float = Query(default=6.0, gt=0.0, le=24.0 * 366)
    ) -> DeviceView:
        """One device with its recent history (the console's device page and charts)."""
        row = registry.device(device_id)
        if row is None or row.fleet != registry.fleet:
            raise HTTPException(404, f"no device {device_id!r} in this fleet")
        since = datetime.now(UTC) - timedelta(hours=hours)
        return DeviceView(device=row, history=registry.history(device_id, since))

    @app.get("/api/models", dependencies=guarded)
    def model_versions() -> list[IndexEntry]:
        index, _ = models.read_index()
        return sorted(index.entries, key=lambda e: e.version)

    @app.get("/api/rollouts", dependencies=guarded)
    def rollouts() -> list[RolloutStatus]:
        return [controller.status(r) for r in controller.rollouts()[:50]]

    @app.get("/api/rollouts/{rollout_id}", dependencies=guarded)
    def rollout(rollout_id: str) -> RolloutStatus:
        try:
            return controller.status(rollout_id)
        except RolloutError as exc:
            raise HTTPException(404, str(exc)) from exc

    @app.get("/api/rollouts/{rollout_id}/devices", dependencies=guarded)
    def rollout_devices(
        rollout_id: str,
        wave: int | None = Query(default=None, ge=1, le=20),
        limit: int = Query(default=500, ge=1, le=5000),
    ) -> list[RolloutDeviceView]:
        try:
            return controller.devices(rollout_id, wave=wave, limit=limit)
        except RolloutError as exc:
            raise HTTPException(404, str(exc)) from exc

    @app.post("/api/rollouts", dependencies=guarded, status_code=201)
    def start(body: RolloutRequest) -> RolloutStatus:
        try:
            rollout_id = controller.start_request(body, models.name, default_params)
        except (RolloutError, ContractError) as exc:
            raise HTTPException(409, str(exc)) from exc
        except TrainerError as exc:
            raise HTTPException(400, str(exc)) from exc
        return controller.status(rollout_id)

    @app.post("/api/rollouts/{rollout_id}/{action}", dependencies=guarded)
    def act(rollout_id: str, action: str) -> RolloutStatus:
        try:
            chosen = RolloutAction(action)
        except ValueError:
            known = [a.value for a in RolloutAction]
            raise HTTPException(404, f"unknown action {action!r}; use {known}") from None
        try:
            controller.act(rollout_id, chosen)
        except RolloutError as exc:
            raise HTTPException(409, str(exc)) from exc
        return controller.status(rollout_id)

    @app.get("/api/runs", dependencies=guarded)
    def runs(limit: int = Query(default=20, ge=1, le=200)) -> list[dict[str, Any]]:
        keys = sorted(
            (i for i in store.list(f"{RUNS}/") if i.key.endswith("/report.json")),
            key=lambda i: i.last_modified,
            reverse=True,
        )[:limit]
        out = []
        for info in keys:
            body, _ = store.get(info.key, max_bytes=4 * 1024 * 1024)
            out.append(json.loads(body))
        return out

    @app.get("/api/hard-examples", dependencies=guarded)
    def hard_examples(limit: int = Query(default=12, ge=1, le=100)) -> list[HardExampleView]:
        fleet = registry.fleet
        images = sorted(
            (i for i in store.list(f"{HARD_EXAMPLES}/{fleet}/") if i.key.endswith(".jpg")),
            key=lambda i: i.last_modified,
            reverse=True,
        )[:limit]
        return [
            HardExampleView(key=i.key, uploaded_at=i.last_modified, bytes=i.size) for i in images
        ]

    def own_image_key(key: str) -> str:
        """The key if it names one of this fleet's hard-example images; 400 otherwise."""
        try:
            parsed = parse_hard_example_key(key)
        except ContractError as exc:
            raise HTTPException(400, str(exc)) from exc
        if parsed.extension != "jpg" or parsed.fleet != registry.fleet:
            raise HTTPException(400, "only this fleet's hard-example images are served")
        return key

    @app.get("/api/hard-examples/image", dependencies=guarded)
    def hard_example_image(key: str) -> Response:
        try:
            body, _ = store.get(own_image_key(key), max_bytes=MAX_THUMBNAIL_BYTES)
        except ObjectNotFoundError as exc:
            raise HTTPException(404, "no such image") from exc
        except StorageError as exc:  # over the size limit, or the store failed
            raise HTTPException(502, str(exc)) from exc
        return Response(body, media_type="image/jpeg")

    @app.get("/api/hard-examples/sidecar", dependencies=guarded)
    def hard_example_sidecar(key: str) -> HardExampleSidecar:
        """What the agent said about an image (samplers, device, time, the model's boxes), so
        the page can draw the boxes. The sidecar came from a device: it is validated here, and
        a malformed one is reported, not passed to the browser."""
        sidecar_key = own_image_key(key).removesuffix(".jpg") + ".json"
        try:
            body, _ = store.get(sidecar_key, max_bytes=MAX_SIDECAR_BYTES)
        except ObjectNotFoundError as exc:
            raise HTTPException(404, "no sidecar for this image") from exc
        except StorageError as exc:
            raise HTTPException(502, str(exc)) from exc
        try:
            sidecar = HardExampleSidecar.model_validate_json(body)
        except ValidationError as exc:
            raise HTTPException(
                502, f"the sidecar of {key} is malformed: {str(exc)[:300]}"
            ) from exc
        return sidecar.model_copy(update={"synthetic_truth": None})

    labels = ReviewLedger(registry.engine)

    @app.get("/api/label-quality", dependencies=guarded)
    def label_quality(
        problems: int = Query(default=20, ge=0, le=200),
    ) -> LabelQualityView:
        return LabelQualityView(
            outcomes=labels.outcomes(registry.fleet),
            classes=labels.quality(registry.fleet),
            problems=labels.problems(registry.fleet, limit=problems),
        )

    return app
