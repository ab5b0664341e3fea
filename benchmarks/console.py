"""The operator's console with a large fleet: the API's answers and the page's first render.

    python benchmarks/console.py [--devices 5000] [--requests 40] [--quick]

A fleet registry (SQLite file, as ``cloud-trainer serve`` keeps it) is filled through its
real ingestion path: a signed-off reported state and a heartbeat with two cameras per
device, in 20 groups. The control plane's API (uvicorn in its thread, bearer token) serves
it, with a folder-backed S3 server (nanio) for models, runs and hard examples.

The API runs in its own process, as ``cloud-trainer serve`` runs it.

- ``GET /api/devices`` (every device, as the page asks for it): p50/p95 over ``--requests``
  calls, alternating with the floor: the same rows by a plain ``SELECT`` on the same
  database (SQLAlchemy core, rows fetched, nothing converted). Ratio of p95s.
- The dashboard in headless Chromium: from navigation to its first full render (every
  device row, the rollouts, models and runs; the page marks it), and the median of its
  next refreshes (it refreshes every 2 s). Target: first render <= 2 s on 2 cores.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import select  # noqa: E402

from benchmarks.machine import describe_machine  # noqa: E402
from cloud_trainer.config import StorageSection  # noqa: E402
from cloud_trainer.fleet.api import create_control_app  # noqa: E402
from cloud_trainer.fleet.db import devices, open_database  # noqa: E402
from cloud_trainer.fleet.device_registry import FleetRegistry  # noqa: E402
from cloud_trainer.fleet.params import RolloutParams  # noqa: E402
from cloud_trainer.fleet.rollout import RolloutController  # noqa: E402
from cloud_trainer.release.model_registry import ModelRegistry  # noqa: E402
from cloud_trainer.store import ObjectStore  # noqa: E402
from shared.infra.http import HttpServer  # noqa: E402
from shared.messages import (  # noqa: E402
    CameraHealth,
    CameraState,
    Heartbeat,
    OtaState,
    ReportedState,
    ReportSequence,
    utc_now,
)
from shared.signing import SigningKey  # noqa: E402
from shared.topics import Channel, Topics  # noqa: E402
from testing.local_services import NanioS3Process, free_port, wait_for_port  # noqa: E402
from tests.browser import HeadlessPage  # noqa: E402

FLEET = "bench"
TOKEN = "bench-console-token"


def fill(registry: FleetRegistry, count: int) -> float:
    """Every device reports and beats once, through the registry's ingestion; seconds."""
    topics = Topics(FLEET)
    sequence = ReportSequence()
    started = time.perf_counter()
    for i in range(count):
        device = f"edge-{i:05d}"
        report = ReportedState(
            device_id=device,
            fleet=FLEET,
            group=f"line-{i % 20:02d}",
            agent_version="0.1.0",
            ota_state=OtaState.ACTIVE,
            model_name="line-detector",
            running_version=1 + i % 3,
            sequence=sequence.next(),
            updated_at=utc_now(),
        )
        registry.ingest(topics.device(device, Channel.REPORTED), report.to_payload())
        camera = CameraHealth(
            state=CameraState.STREAMING, fps=25.0, fps_in=25.0, frame_age_ms_p99=12.0
        )
        beat = Heartbeat(
            device_id=device,
            sent_at=utc_now(),
            uptime_s=100.0,
            model_name="line-detector",
            model_version=1 + i % 3,
            provider="CPUExecutionProvider",
            fps=25.0,
            latency_ms_p50=8.0,
            latency_ms_p99=15.0,
            spool_depth=i % 7,
            cameras={"cam0": camera, "cam1": camera},
            ota_enabled=True,
            trusted_keys=["release-2026"],
        )
        registry.ingest(topics.device(device, Channel.HEARTBEAT), beat.to_payload())
    return time.perf_counter() - started


def serve(database_url: str, section: StorageSection, port: int) -> None:
    """The control plane's API on the filled registry (runs in a child process)."""
    engine = open_database(database_url)
    registry = FleetRegistry(engine, FLEET)
    store = ObjectStore.from_config(section)
    models = ModelRegistry(store, "line-detector")
    controller = RolloutController(
        engine, registry, models.manifest, SigningKey.generate("bench"), lambda _t, _p: None
    )
    app = create_control_app(
        registry=registry,
        controller=controller,
        models=models,
        store=store,
        token=TOKEN,
        default_params=RolloutParams(),
    )
    HttpServer(app, "127.0.0.1", port).start()
    threading.Event().wait()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="500 devices, 10 requests")
    args = parser.parse_args()
    count, requests = (500, 10) if args.quick else (args.devices, args.requests)

    with tempfile.TemporaryDirectory(prefix="lf-bench-console-") as tmp:
        work = Path(tmp)
        engine = open_database(f"sqlite:///{work / 'fleet.db'}")
        registry = FleetRegistry(engine, FLEET)
        fill_s = fill(registry, count)
        with NanioS3Process(work / "s3") as s3:
            section = StorageSection(
                bucket="bench-console",
                endpoint_url=s3.endpoint_url,
                access_key_id=s3.access_key,
                secret_access_key=s3.secret_key,  # type: ignore[arg-type]
            )
            ObjectStore.from_config(section).create_bucket()
            port = free_port()
            # The API in its own process, as `cloud-trainer serve` runs it: the client and
            # the floor's SELECT here do not share its interpreter.
            server = multiprocessing.get_context("spawn").Process(
                target=serve, args=(f"sqlite:///{work / 'fleet.db'}", section, port), daemon=True
            )
            server.start()
            base = f"http://127.0.0.1:{port}"
            try:
                wait_for_port("127.0.0.1", port, timeout=60)
                api_s, floor_s, size = measure_api(base, engine, requests, count)
                page = measure_page(base, count)
            finally:
                server.terminate()
                server.join(10)

    api_p95, floor_p95 = percentile(api_s, 0.95), percentile(floor_s, 0.95)
    result: dict[str, Any] = {
        "benchmark": "console",
        "machine": describe_machine(),
        "devices": count,
        "requests": requests,
        "fill_s": round(fill_s, 2),
        "fill_messages_per_s": round(2 * count / fill_s, 1),
        "api_devices_ms": {
            "p50": round(1000 * statistics.median(api_s), 1),
            "p95": round(1000 * api_p95, 1),
        },
        "floor_select_ms": {
            "p50": round(1000 * statistics.median(floor_s), 1),
            "p95": round(1000 * floor_p95, 1),
        },
        "api_p95_vs_floor": round(api_p95 / floor_p95, 2),
        "api_devices_bytes": size,
        "page_first_render_ms": page["first_render_ms"],
        "page_refresh_ms_median": page["refresh_ms_median"],
        "page_rows": page["rows"],
        "command": "python " + " ".join(sys.argv),
    }
    print(json.dumps(result))


def measure_api(
    base: str, engine: Any, requests: int, count: int
) -> tuple[list[float], list[float], int]:
    """Alternating calls: the API over HTTP, then the floor's plain SELECT."""
    api_s: list[float] = []
    floor_s: list[float] = []
    size = 0
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        http.get("/api/devices").raise_for_status()  # warm both paths once
        for _ in range(requests):
            started = time.perf_counter()
            response = http.get("/api/devices")
            response.raise_for_status()
            body = response.content
            api_s.append(time.perf_counter() - started)
            size = len(body)
            started = time.perf_counter()
            with engine.connect() as connection:
                rows = connection.execute(select(devices).where(devices.c.fleet == FLEET)).all()
            floor_s.append(time.perf_counter() - started)
            if len(rows) != count:
                raise SystemExit(f"the floor read {len(rows)} rows, expected {count}")
    return api_s, floor_s, size


def measure_page(base: str, count: int) -> dict[str, Any]:
    with HeadlessPage() as page:
        page.goto(f"{base}/#token={TOKEN}")
        page.wait_for("performance.getEntriesByName('devices-rendered').length", timeout=120)
        first = page.evaluate("performance.getEntriesByName('devices-rendered')[0].startTime")
        rows = page.evaluate("document.querySelectorAll('#devices tr').length")
        page.wait_for("performance.getEntriesByName('refresh').length >= 4", timeout=120)
        refreshes = page.evaluate(
            "performance.getEntriesByName('refresh').slice(1).map(e => e.duration)"
        )
    if rows != count:
        raise SystemExit(f"the page shows {rows} device rows, expected {count}")
    return {
        "first_render_ms": round(float(first), 1),
        "refresh_ms_median": round(statistics.median(refreshes), 1),
        "rows": rows,
    }


if __name__ == "__main__":
    main()
