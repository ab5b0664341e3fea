"""The closed loop on one machine: ``make demo``.

mosquitto and a folder-backed S3 server (nanio) are started here; two edge agents run on the
synthetic line (two cameras each) as separate processes; the bootstrap model is registered as
v1. Then the line drifts, the agents keep detecting (worse) and upload hard examples, the
trainer fine-tunes on CPU with the synthetic line as labeler, the gate passes, a staged
rollout delivers the new version, the agents hot-swap, and a before/after table is printed.

Accuracy is measured *through each agent*: labelled frames of the line's current condition
are posted to the agent's own ``/detect`` API, so the numbers are what that box's running
model does (mAP50 at the agent's operating confidence threshold). The last line of output is
one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import httpx
import yaml

from cloud_trainer.config import StorageSection, TrainerConfig
from cloud_trainer.fleet.db import open_database
from cloud_trainer.fleet.params import RolloutParams, RolloutTargets
from cloud_trainer.fleet.rollout import RolloutStatus
from cloud_trainer.fleet.service import ControlPlane
from cloud_trainer.fleet.states import RolloutState
from cloud_trainer.labelstudio.client import LabelStudioClient
from cloud_trainer.labelstudio.pull import pull_labels
from cloud_trainer.labelstudio.push import push_examples
from cloud_trainer.labelstudio.reviews import ReviewLedger
from cloud_trainer.release.evaluate import MetricsAccumulator
from cloud_trainer.release.model_registry import ModelRegistry
from cloud_trainer.retrain import Retrainer, RunReport, RunStatus
from cloud_trainer.store import ObjectStore
from cloud_trainer.training.finetune import EpochReport
from shared.detections import Detections
from shared.errors import LinefleetError
from shared.object_keys import HARD_EXAMPLES
from shared.signing import SigningKey
from shared.synth import CLASS_NAMES, SyntheticLine
from testing.bootstrap_model import bootstrap_files, register_bootstrap
from testing.label_studio_annotator import annotate_with_truth
from testing.local_services import (
    LabelStudioProcess,
    MosquittoProcess,
    NanioS3Process,
    free_port,
)

FLEET = "demo"
MODEL = "line-detector"
BUCKET = "linefleet-demo"
KEY_ID = "demo-release"
DEMO_EPOCHS = 20


@dataclass
class DemoSettings:
    drift: str = "lighting"
    examples: int = 240
    # The trainer's recipe (AdamW at 3e-4: benchmarks/learning_loop.py, README "Learning
    # loop") at half its 40 epochs: the demo must recover within 10 minutes on 2 cores, and 20
    # epochs of its 210 images already take 313 s of its 506 (1.45x the pre-drift mAP50 on
    # the single drift it shows); --quick (the tests) trains 10.
    epochs: int = DEMO_EPOCHS
    camera_fps: float = 4.0
    drift_after_frames: int = 40
    eval_frames: int = 40
    probation_s: float = 8.0
    timeout_s: float = 900.0
    # The committed bootstrap weights (artifacts/ in a checkout); trained first when absent.
    bootstrap_pt: Path | None = None
    # "synthetic": the line's exact truth labels the examples (the default, nothing to
    # install); "label-studio": a local Label Studio, where a scripted annotator submits the
    # truth through Label Studio's API as a person would, and the trainer pushes and pulls.
    labeler: str = "synthetic"
    # The variants the trainer makes and gates; --quick: INT8 only, what the demo's CPU boxes
    # can use (fp16 is for GPUs).
    variants: tuple[str, ...] = ("int8", "fp16")


@dataclass
class DeviceRow:
    device_id: str
    api_port: int
    process: subprocess.Popen[bytes] | None = None
    log: Any = None
    log_offset: int = 0  # where the current run's output starts in agent.log
    scores: dict[str, tuple[int | None, float]] = field(default_factory=dict)
    recalls: dict[str, dict[str, float]] = field(default_factory=dict)


class Demo:
    def __init__(self, work: Path, settings: DemoSettings) -> None:
        self.work = work
        self.settings = settings
        self.started = time.monotonic()
        self.devices = [DeviceRow(f"edge-{i:02d}", 0) for i in (1, 2)]  # ports: at start
        self.services: list[Any] = []
        self.studio: LabelStudioProcess | None = None

    # ------------------------------------------------------------------ output
    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", flush=True)

    # ------------------------------------------------------------------ set-up
    def start_services(self) -> tuple[MosquittoProcess, NanioS3Process]:
        broker = MosquittoProcess(self.work / "mosquitto").start()
        self.services.append(broker)
        self.say(f"mosquitto {broker.version} on {broker.host}:{broker.port}")
        s3 = NanioS3Process(self.work / "s3").start()
        self.services.append(s3)
        self.say(f"object store (nanio, folder {self.work / 's3'}) at {s3.endpoint_url}")
        if self.settings.labeler == "label-studio":
            self.say("starting Label Studio (SQLite, loopback; its first start takes ~1 min)")
            self.studio = LabelStudioProcess(self.work / "label-studio").start()
            self.services.append(self.studio)
            self.say(
                f"Label Studio at {self.studio.url} (user {self.studio.username}, "
                f"password {self.studio.password})"
            )
        return broker, s3

    def trainer_config(self, broker: MosquittoProcess, s3: NanioS3Process) -> TrainerConfig:
        key_file = self.work / "keys" / f"{KEY_ID}.key"
        return TrainerConfig(
            storage=StorageSection(
                bucket=BUCKET,
                endpoint_url=s3.endpoint_url,
                access_key_id=s3.access_key,
                secret_access_key=s3.secret_key,
            ),
            model_line={"name": MODEL, "fleet": FLEET, "imgsz": 320},
            labeling=self.labeling(),
            dataset={"replay_max_train_images": 48},
            export={"variants": list(self.settings.variants)},
            # cpu price: what a 2-vCPU cloud VM costs per hour, to show the cost accounting.
            training={
                "epochs": self.settings.epochs,
                "batch": 16,
                "device": "auto",
                "cpu_price_per_hour_usd": 0.08,
            },
            signing={"key_id": KEY_ID, "key_file": key_file},
            mqtt={"host": broker.host, "port": broker.port},
            fleet={"tick_interval_s": 0.5, "settle_s": 0.5, "api": {"port": free_port()}},
            work_dir=self.work / "trainer",
        )

    def labeling(self) -> dict[str, Any]:
        if self.studio is None:
            return {"source": "synthetic"}
        token = self.studio.personal_access_token()
        return {"source": "yolo_import", "label_studio": {"url": self.studio.url, "token": token}}

    def people_label(self, config: TrainerConfig, store: ObjectStore) -> dict[str, Any]:
        """Push the hard examples to Label Studio, let the scripted annotator submit the
        truth through its API, pull the labels back (what `labels push` and `labels pull`
        do), and return the outcomes and the bootstrap's per-class corrections."""
        assert self.studio is not None
        ledger = ReviewLedger(open_database(config.fleet.url(config.work_dir)))
        with LabelStudioClient.from_section(config.labeling.label_studio) as client:
            pushed = push_examples(store, client, config)
            self.say(f"labels push: {pushed.summary().splitlines()[0]}")
            annotated = annotate_with_truth(client, pushed.project_id, store, list(CLASS_NAMES))
            self.say(f"annotator submitted {annotated.submitted} task(s) in Label Studio")
            pulled = pull_labels(store, client, ledger, config)
            self.say(f"labels pull: {pulled.summary().splitlines()[0]}")
        quality = ledger.quality(FLEET)
        for row in quality:
            self.say(
                f"  people corrected {row.class_name}: missed {row.missed_rate}, "
                f"false {row.false_rate} ({row.prelabeled} pre-labels, {row.labeled} boxes)"
            )
        return {
            "outcomes": ledger.outcomes(FLEET),
            "missed_rate": {row.class_name: row.missed_rate for row in quality},
        }

    def make_key(self) -> SigningKey:
        keys = self.work / "keys"
        keys.mkdir(parents=True, exist_ok=True)
        key = SigningKey.generate(KEY_ID)
        (keys / f"{KEY_ID}.key").write_bytes(key.private_pem())
        (keys / f"{KEY_ID}.pub").write_bytes(key.public_pem())
        return key

    def register_bootstrap(
        self, config: TrainerConfig, store: ObjectStore, key: SigningKey
    ) -> Path:
        folder = self.work / "bootstrap"
        given = self.settings.bootstrap_pt
        if given is None or not given.is_file():
            self.say(f"no bootstrap weights at {given}: training the bootstrap model first")
        files = bootstrap_files(folder, given)
        manifest = register_bootstrap(config, store, key, files, folder)
        self.say(f"registered bootstrap model as {MODEL} v{manifest.version}")
        return files.onnx

    def agent_config(
        self,
        device: DeviceRow,
        index: int,
        broker: MosquittoProcess,
        s3: NanioS3Process,
        onnx: Path,
    ) -> Path:
        s = self.settings
        state = self.work / device.device_id
        state.mkdir(parents=True, exist_ok=True)
        secret = state / "s3-secret"
        secret.write_text(s3.secret_key)
        sampler = {"per_minute": 600, "per_hour": 10_000}
        cameras = [
            {
                "kind": "synthetic",
                "id": f"cam{c}",
                "seed": 100 * index + c,
                "fps": s.camera_fps,
                "drift_schedule": [{"after_frames": s.drift_after_frames, "drift": s.drift}],
            }
            for c in (1, 2)
        ]
        config = {
            "device": {"id": device.device_id, "fleet": FLEET, "group": "line-a"},
            "cameras": cameras,
            "model": {"path": str(onnx), "intra_op_threads": 1},
            "mqtt": {"host": broker.host, "port": broker.port, "events_max_per_s": 2.0},
            "api": {"host": "127.0.0.1", "port": device.api_port},
            "storage": {
                "enabled": True,
                "bucket": BUCKET,
                "endpoint_url": s3.endpoint_url,
                "access_key_id": s3.access_key,
                "secret_access_key_file": str(secret),
            },
            "mining": {
                "confidence_band": sampler,
                "count_anomaly": sampler,
                "flicker": sampler,
                "classes": sampler,
                "random": sampler | {"probability": 0.5},
            },
            "ota": {
                "enabled": True,
                "model_name": MODEL,
                "trusted_keys": {KEY_ID: str(self.work / "keys" / f"{KEY_ID}.pub")},
                "probation_s": s.probation_s,
            },
            "state_dir": str(state / "state"),
            "logging": {"level": "WARNING"},
        }
        path = state / "agent.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def start_agents(self, broker: MosquittoProcess, s3: NanioS3Process, onnx: Path) -> None:
        """Start both agents, each on an API port picked just before it binds it. The OS
        hands the same ephemeral ports to every process here (the broker, the store, Label
        Studio, other tests): an agent whose port was taken in between exits saying so, and
        is started again on another port."""
        pending = list(enumerate(self.devices, start=1))
        for _ in range(3):
            for index, device in pending:
                self._launch_agent(device, index, broker, s3, onnx)
            pending = [(i, d) for i, d in pending if not self._agent_ready(d)]
            if not pending:
                return
        raise RuntimeError(f"{pending[0][1].device_id} lost its API port three times")

    def _launch_agent(
        self,
        device: DeviceRow,
        index: int,
        broker: MosquittoProcess,
        s3: NanioS3Process,
        onnx: Path,
    ) -> None:
        device.api_port = free_port()
        config = self.agent_config(device, index, broker, s3, onnx)
        if device.log is not None:
            device.log.close()
        log_path = self.work / device.device_id / "agent.log"
        device.log_offset = log_path.stat().st_size if log_path.exists() else 0
        device.log = log_path.open("ab")
        device.process = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config)],
            stdout=device.log,
            stderr=subprocess.STDOUT,
            env=os.environ | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
        )

    def _agent_ready(self, device: DeviceRow) -> bool:
        """True once the agent answers ready as itself; False when it exited because its
        port was taken; an error for any other failure."""
        assert device.process is not None
        base = f"http://127.0.0.1:{device.api_port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if device.process.poll() is not None:
                with (self.work / device.device_id / "agent.log").open("rb") as log:
                    log.seek(device.log_offset)
                    said = log.read().decode(errors="replace")
                if "port in use" in said or "address already in use" in said:
                    return False
                raise RuntimeError(f"{device.device_id} exited; see its agent.log")
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
                ready = httpx.get(f"{base}/readyz", timeout=2).status_code == 200
                if (
                    ready
                    and httpx.get(f"{base}/status", timeout=2).json()["device"]["id"]
                    == device.device_id
                ):
                    self.say(
                        f"{device.device_id} running (2 synthetic cameras, API :{device.api_port})"
                    )
                    return True
            time.sleep(0.3)
        raise RuntimeError(f"{device.device_id} did not get ready; see its agent.log")

    # ------------------------------------------------------------------ measuring
    def eval_frames(self, drift: str) -> list[tuple[bytes, Detections]]:
        line = SyntheticLine(seed=9_000, drift=drift)
        out = []
        for index in range(self.settings.eval_frames):
            frame = line.random_scene(index)
            ok, jpeg = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, 92])
            if not ok:
                raise RuntimeError("JPEG encoding failed")
            out.append((jpeg.tobytes(), frame.truth))
        return out

    def measure(self, phase: str, drift: str) -> None:
        frames = self.eval_frames(drift)
        for device in self.devices:
            accumulator = MetricsAccumulator(CLASS_NAMES)
            version = None
            with httpx.Client(base_url=f"http://127.0.0.1:{device.api_port}", timeout=30) as http:
                for jpeg, truth in frames:
                    response = http.post("/detect", content=jpeg)
                    response.raise_for_status()
                    body = response.json()
                    version = body["model"]["version"]
                    accumulator.add(truth, Detections.from_records(body["detections"]))
            metrics = accumulator.metrics()
            score = metrics.map50
            device.scores[phase] = (version, score)
            device.recalls[phase] = metrics.per_class_recall
            self.say(
                f"{device.device_id} {_version(version)}: mAP50 {score:.3f} on the line {phase}"
            )

    def hard_examples(self, store: ObjectStore) -> int:
        return sum(1 for i in store.list(f"{HARD_EXAMPLES}/{FLEET}/") if i.key.endswith(".jpg"))

    def wait_for_examples(self, store: ObjectStore) -> int:
        target = self.settings.examples
        deadline = time.monotonic() + self.settings.timeout_s / 3
        last = -1
        while True:
            count = self.hard_examples(store)
            if count != last:
                self.say(f"hard examples uploaded: {count}/{target}")
                last = count
            if count >= target:
                return count
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {count} hard examples after waiting; see agent logs")
            time.sleep(3)

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict[str, Any]:
        broker, s3 = self.start_services()
        key = self.make_key()
        config = self.trainer_config(broker, s3)
        store = ObjectStore.from_config(config.storage)
        store.create_bucket()
        onnx = self.register_bootstrap(config, store, key)
        self.start_agents(broker, s3, onnx)
        # The console's port, picked now that the agents hold theirs (see start_agents).
        console = config.fleet.api.model_copy(update={"port": free_port()})
        fleet = config.fleet.model_copy(update={"api": console})
        config = config.model_copy(update={"fleet": fleet})
        registry = ModelRegistry(store, MODEL)
        plane = ControlPlane(config, registry.manifest, key)
        plane.start()
        self.services.append(plane)
        api = plane.serve_api(registry, store)
        self.services.append(api)
        self.say(f"control plane running; dashboard: http://127.0.0.1:{api.port}/")

        self.measure("before drift", "none")
        s = self.settings
        self.say(f"the line drifts to {s.drift!r} after {s.drift_after_frames} frames per camera")
        examples = self.wait_for_examples(store)
        self.measure("after drift", self.settings.drift)
        people = self.people_label(config, store) if self.studio is not None else None

        self.say("retrain: select -> build -> fine-tune (CPU) -> export -> gate -> publish")
        report = Retrainer(config, store, announce=self.say, on_epoch=self._epoch).run()
        if report.status is not RunStatus.PUBLISHED or report.published_version is None:
            raise RuntimeError(f"retrain did not publish: {report.status}: {report.reason}")
        new_version = report.published_version

        self.say(f"staged rollout of v{new_version}: wave 1 = 1 canary, wave 2 = everyone")
        rollout_id = f"demo-v{new_version}"
        plane.controller.start(
            rollout_id,
            MODEL,
            new_version,
            RolloutTargets(whole_fleet=True),
            RolloutParams(waves=[0.5, 1.0], soak_s=3.0, device_timeout_s=300.0),
        )
        self._follow_rollout(plane, rollout_id)
        self.measure("after the OTA update", self.settings.drift)
        # Counted again at the end: the agents kept uploading while the loop ran, and the
        # run selected what was there when it started (labels_used <= this count).
        uploaded = max(examples, self.hard_examples(store))
        summary = self._summary(report, uploaded, plane, rollout_id, new_version)
        summary["labeler"] = self.settings.labeler
        if people is not None:
            summary["label_studio"] = people
        return summary

    def _epoch(self, report: EpochReport) -> None:
        self.say(
            f"  epoch {report.epoch}/{report.epochs}: {report.seconds:.0f} s, val mAP50 "
            f"{report.map50 if report.map50 is not None else float('nan'):.3f}"
        )

    def _follow_rollout(self, plane: ControlPlane, rollout_id: str) -> None:
        def show(status: RolloutStatus) -> None:
            wave = f"wave {status.current_wave + 1}/{len(status.waves)}"
            self.say(f"rollout {status.state}, {wave}: {dict(sorted(status.counts.items()))}")

        status = plane.follow(rollout_id, show, timeout_s=self.settings.timeout_s / 3)
        if status.state is not RolloutState.SUCCEEDED:
            raise RuntimeError(f"rollout ended {status.state}: {status.reason}")

    def _summary(
        self,
        report: RunReport,
        examples: int,
        plane: ControlPlane,
        rollout_id: str,
        new_version: int,
    ) -> dict[str, Any]:
        phases = ("before drift", "after drift", "after the OTA update")
        print()
        print(f"{'device':<10}" + "".join(f"{p:>26}" for p in phases))
        for device in self.devices:
            cells = "".join(
                f"{_version(device.scores[p][0]) + f'  mAP50 {device.scores[p][1]:.3f}':>26}"
                for p in phases
            )
            print(f"{device.device_id:<10}{cells}")
        # What each agent says it runs now, and what the update cost it (the smoke check's
        # latency against the model it replaced, measured beside the other agent).
        for row in plane.registry.devices():
            if row.reason:
                print(f"{row.device_id} reports: {row.reason}")
        training = report.training
        counts = ", ".join(f"{s} {c['images']}" for s, c in report.dataset_counts.items())
        print(
            f"\nhard examples uploaded: {examples}; dataset {report.dataset_version} "
            f"({counts}); "
            f"training {training.compute_seconds if training else 0:.0f} s on "
            f"{training.device if training else '?'}, cost ${report.cost_usd:.4f}; "
            f"total {time.monotonic() - self.started:.0f} s\n"
        )

        def mean(phase: str) -> float:
            return round(sum(d.scores[phase][1] for d in self.devices) / len(self.devices), 4)

        def mean_recall(phase: str, name: str) -> float:
            found = [d.recalls[phase].get(name, 0.0) for d in self.devices]
            return round(sum(found) / len(found), 4)

        updated = [d for d in plane.registry.devices() if d.running_version == new_version]
        frames_seen = self._frames_seen()
        sources = report.dataset_sources
        return {
            "map50_before_drift": mean("before drift"),
            "map50_after_drift": mean("after drift"),
            "map50_after_update": mean("after the OTA update"),
            "defect_recall_before_drift": mean_recall("before drift", "defect"),
            "defect_recall_after_update": mean_recall("after the OTA update", "defect"),
            "frames_seen": frames_seen,
            "examples_uploaded": examples,
            "frames_uploaded_fraction": round(examples / frames_seen, 4) if frames_seen else None,
            # Labels the run paid for: its new examples, not the replayed data it already had.
            "labels_used": sum(n for source, n in sources.items() if source != "replay"),
            "devices_updated": len(updated),
            "devices_total": len(self.devices),
            # The new version's variants that passed their gate against its fp32 model, and
            # what each agent chose to run (provider, and the precision when not fp32).
            "variants_published": [v.precision for v in report.variants if v.published],
            "running_on": self._running_on(),
            "new_version": new_version,
            "rollout_id": rollout_id,
            "train_seconds": training.compute_seconds if training else None,
            "demo_seconds": round(time.monotonic() - self.started, 1),
        }

    def _running_on(self) -> dict[str, str]:
        running = {}
        for device in self.devices:
            model = httpx.get(f"http://127.0.0.1:{device.api_port}/status").json()["model"]
            precision = model.get("precision", "fp32")
            suffix = "" if precision == "fp32" else f" {precision}"
            running[device.device_id] = f"{model['provider']}{suffix}"
        return running

    def _frames_seen(self) -> int:
        total = 0
        for device in self.devices:
            status = httpx.get(f"http://127.0.0.1:{device.api_port}/status").json()
            total += int(
                sum(c.get("frames_captured", 0) for c in status.get("cameras", {}).values())
            )
        return total

    def close(self) -> None:
        for device in self.devices:
            if device.process is not None and device.process.poll() is None:
                device.process.terminate()
                try:
                    device.process.wait(10)
                except subprocess.TimeoutExpired:
                    device.process.kill()
            if device.log is not None:
                device.log.close()
        for service in reversed(self.services):
            service.stop()


def _version(version: int | None) -> str:
    # The bootstrap runs from the agent's configured file, outside any OTA manifest.
    return "bootstrap" if version is None else f"v{version}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="linefleet-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path(".demo"))
    parser.add_argument("--quick", action="store_true", help="fewer examples and epochs (tests)")
    parser.add_argument("--keep", action="store_true", help="keep the previous work dir")
    parser.add_argument(
        "--bootstrap",
        type=Path,
        default=Path("artifacts/bootstrap-yolov8n-320.pt"),
        help="bootstrap weights to register as v1 (trained first when the file is missing)",
    )
    parser.add_argument(
        "--labeler",
        choices=["synthetic", "label-studio"],
        default="synthetic",
        help="who labels: the line's truth, or a scripted annotator in a local Label Studio "
        "(`make labelstudio` installs it)",
    )
    parser.add_argument("--examples", type=int, help="hard examples to wait for and label")
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs")
    args = parser.parse_args(argv)
    settings = DemoSettings(bootstrap_pt=args.bootstrap.resolve(), labeler=args.labeler)
    if args.quick:
        settings = dataclasses.replace(
            settings,
            examples=160,
            epochs=10,
            drift_after_frames=12,
            eval_frames=24,
            probation_s=4.0,
            variants=("int8",),
        )
    if args.examples is not None:
        settings = dataclasses.replace(settings, examples=args.examples)
    if args.epochs is not None:
        settings = dataclasses.replace(settings, epochs=args.epochs)
    work = args.work_dir.resolve()
    if work.exists() and not args.keep:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    demo = Demo(work, settings)
    try:
        summary = demo.run()
    except (RuntimeError, OSError, LinefleetError) as exc:
        print(f"demo failed: {exc} (logs under {work})", file=sys.stderr)
        return 1
    finally:
        demo.close()
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
