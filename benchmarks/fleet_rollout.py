"""A staged rollout to a simulated fleet over a real mosquitto on loopback.

    python benchmarks/fleet_rollout.py [--devices 1000] [--processes 4] [--soak 2]

Simulated agents (``testing.fleet_simulator``: lightweight MQTT clients implementing
the device side of the contract, each process driving its share from one selector loop)
report v1, then the rollout controller (this process: registry + controller, SQLite file)
rolls v2 out in 3 waves (10% -> 50% -> 100%) with ``--soak`` seconds of soak per wave.
Reported: wall time from ``rollout start`` to success minus the configured soak
(``rollout_s_beyond_soak``), per-wave time from targeting to the last device active, and the
controller process's CPU seconds over the rollout (``controller_cpu_s``). The peer figure is
the soak itself: controller overhead is what the rollout costs beyond waiting on purpose.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from cloud_trainer.config import StorageSection, TrainerConfig  # noqa: E402
from cloud_trainer.fleet.db import rollout_devices  # noqa: E402
from cloud_trainer.fleet.params import RolloutParams, RolloutTargets  # noqa: E402
from cloud_trainer.fleet.service import ControlPlane  # noqa: E402
from cloud_trainer.release.model_registry import ModelRegistry, PublishFiles  # noqa: E402
from cloud_trainer.store import ObjectStore  # noqa: E402
from shared.manifest import (  # noqa: E402
    ArtifactRef,
    ClassInfo,
    InputSpec,
    Lineage,
    ModelManifest,
    ModelVariant,
)
from shared.messages import utc_now  # noqa: E402
from shared.signing import SigningKey  # noqa: E402
from shared.topics import Topics  # noqa: E402
from testing.local_services import MosquittoProcess, MotoS3Process  # noqa: E402

FLEET = "bench"
MODEL = "line-detector"
WAVES = [0.1, 0.5, 1.0]


def run_devices(where: tuple[str, int], ids: tuple[int, int], stop: Any, ready: Any) -> None:
    (host, port), (first, count) = where, ids
    from testing.fleet_simulator import DeviceBehaviour, SimulatedDevice, SimulatedFleet

    devices = [
        SimulatedDevice(f"dev-{i:05d}", "line", 1, DeviceBehaviour(update_delay_s=0.2))
        for i in range(first, first + count)
    ]
    fleet = SimulatedFleet(host, port, Topics(FLEET), devices, heartbeat_s=10.0)
    fleet.start()
    ready.release()
    stop.wait()
    fleet.stop()


def publish_two_versions(store: ObjectStore, key: SigningKey, work: Path) -> ModelRegistry:
    registry = ModelRegistry(store, MODEL)
    for index in (1, 2):
        onnx = work / f"v{index}.onnx"
        onnx.write_bytes(b"bench-model-%d" % index)

        def build(
            version: int,
            artifact: ArtifactRef,
            weights: ArtifactRef | None,
            variants: list[ModelVariant],
        ) -> ModelManifest:
            return ModelManifest(
                model_name=MODEL,
                version=version,
                created_at=utc_now(),
                artifact=artifact,
                onnx_opset=18,
                input=InputSpec(height=320, width=320),
                output_format="yolo_raw",
                classes=[ClassInfo(id=0, name="part")],
            )

        registry.publish(build, PublishFiles(onnx=onnx), key, lineage=Lineage())
    return registry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--soak", type=float, default=2.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lf-bench-fleet-"))
    key = SigningKey.generate("bench")
    ctx = multiprocessing.get_context("spawn")
    with MosquittoProcess(work / "mqtt") as broker, MotoS3Process(work / "s3") as s3:
        section = StorageSection(
            bucket="bench-fleet",
            endpoint_url=s3.endpoint_url,
            access_key_id=s3.access_key,
            secret_access_key=s3.secret_key,  # type: ignore[arg-type]
        )
        store = ObjectStore.from_config(section)
        store.create_bucket()
        registry = publish_two_versions(store, key, work)
        stop, ready = ctx.Event(), ctx.Semaphore(0)
        share = -(-args.devices // args.processes)
        procs = []
        started = time.monotonic()
        for p in range(args.processes):
            count = min(share, args.devices - p * share)
            proc = ctx.Process(
                target=run_devices,
                args=((broker.host, broker.port), (p * share, count), stop, ready),
            )
            proc.start()
            procs.append(proc)
        for _ in procs:
            ready.acquire()
        connect_s = time.monotonic() - started
        config = TrainerConfig(
            storage=section,
            mqtt={"host": broker.host, "port": broker.port, "outbox_limit": 100_000},  # type: ignore[arg-type]
            model_line={"name": MODEL, "fleet": FLEET},  # type: ignore[arg-type]
            fleet={"database_url": f"sqlite:///{work / 'fleet.db'}", "tick_interval_s": 0.2},  # type: ignore[arg-type]
            work_dir=work,
        )
        plane = ControlPlane(config, registry.manifest, key)
        plane.start()
        deadline = time.monotonic() + 120
        while len(plane.registry.devices()) < args.devices and time.monotonic() < deadline:
            time.sleep(0.2)
        known = len(plane.registry.devices())
        params = RolloutParams(waves=WAVES, soak_s=args.soak, device_timeout_s=300)
        cpu_before = time.process_time()
        wall_before = time.monotonic()
        plane.controller.start("bench", MODEL, 2, RolloutTargets(whole_fleet=True), params)
        stop_run = threading.Event()
        plane.run(stop_run, until=lambda: plane.controller.status("bench").state != "running")
        wall = time.monotonic() - wall_before
        cpu = time.process_time() - cpu_before
        status = plane.controller.status("bench")
        with plane.engine.connect() as connection:
            rows = connection.execute(
                select(
                    rollout_devices.c.wave,
                    func.min(rollout_devices.c.targeted_at),
                    func.max(rollout_devices.c.done_at),
                    func.count(),
                ).group_by(rollout_devices.c.wave)
            ).all()
        plane.stop()
        stop.set()
        for proc in procs:
            proc.join(30)
    waves = [
        {
            "wave": int(w) + 1,
            "devices": int(n),
            "targeted_to_all_active_s": round((done - targeted).total_seconds(), 2),
        }
        for w, targeted, done, n in rows
    ]
    soak_total = args.soak * len(WAVES)
    print(
        json.dumps(
            {
                "benchmark": "fleet_rollout",
                "devices": args.devices,
                "devices_registered": known,
                "simulator_processes": args.processes,
                "connect_s": round(connect_s, 2),
                "state": status.state,
                "counts": status.counts,
                "waves": waves,
                "soak_s_per_wave": args.soak,
                "rollout_wall_s": round(wall, 2),
                "rollout_s_beyond_soak": round(wall - soak_total, 2),
                "controller_cpu_s": round(cpu, 2),
                "controller_cpu_per_device_ms": round(1000 * cpu / max(args.devices, 1), 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
