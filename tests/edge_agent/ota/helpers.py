"""A tiny "control plane" for OTA tests: publish signed models to S3 and desired states
over a real broker."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from shared.manifest import (
    ArtifactRef,
    ClassInfo,
    EvalMetrics,
    InputSpec,
    ModelManifest,
    ModelVariant,
)
from shared.messages import (
    DesiredAction,
    DesiredState,
    DesiredTarget,
    OtaState,
    ReportedState,
    parse_payload,
    utc_now,
)
from shared.object_keys import model_artifact_key, model_variant_key
from shared.signing import SigningKey
from shared.synth import CLASS_NAMES
from shared.topics import Channel, Topics
from testing.local_services import MosquittoProcess

MODEL = "line-detector"


def make_manifest(
    model_bytes: bytes, version: int, *, size: int = 64, key: str | None = None, **overrides: Any
) -> ModelManifest:
    fields: dict[str, Any] = {
        "model_name": MODEL,
        "version": version,
        "created_at": utc_now() - timedelta(minutes=1),
        "expires_at": utc_now() + timedelta(days=30),
        "artifact": ArtifactRef(
            key=key or model_artifact_key(MODEL, version),
            sha256=hashlib.sha256(model_bytes).hexdigest(),
            size_bytes=len(model_bytes),
        ),
        "onnx_opset": 17,
        "input": InputSpec(height=size, width=size),
        "output_format": "yolo_raw",
        "classes": [ClassInfo(id=i, name=n) for i, n in enumerate(CLASS_NAMES)],
    }
    fields.update(overrides)
    return ModelManifest(**fields)


@dataclass
class ControlPlane:
    broker: MosquittoProcess
    topics: Topics
    s3: Any
    bucket: str
    key: SigningKey
    device: str = "edge-ota"  # whom desired() addresses unless told otherwise
    sequence: int = 0
    reports: list[ReportedState] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(
            self.topics.all_devices(Channel.REPORTED), qos=1
        )
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(self.broker.host, self.broker.port)
        self.client.loop_start()
        assert subscribed.wait(5)

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        report = parse_payload(ReportedState, bytes(message.payload))
        with self._lock:
            self.reports.append(report)

    def upload(self, model: Path, version: int, **overrides: Any) -> ModelManifest:
        data = model.read_bytes()
        manifest = make_manifest(data, version, **overrides)
        self.s3.put_object(Bucket=self.bucket, Key=manifest.artifact.key, Body=data)
        return self.key.sign(manifest)

    def upload_variant(
        self, model: Path, version: int, precision: str, *, stored: bytes | None = None
    ) -> ModelVariant:
        """A variant of ``version`` for the manifest; ``stored``: other bytes put in the
        store under its key (a tampered or replaced variant)."""
        data = model.read_bytes()
        variant = ModelVariant(
            precision=precision,  # type: ignore[arg-type]
            accelerator="gpu" if precision == "fp16" else "cpu",
            artifact=ArtifactRef(
                key=model_variant_key(MODEL, version, precision),
                sha256=hashlib.sha256(data).hexdigest(),
                size_bytes=len(data),
            ),
            metrics=EvalMetrics(map50=0.5, map50_95=0.3),
            runtimes=["onnxruntime"],
        )
        body = data if stored is None else stored
        self.s3.put_object(Bucket=self.bucket, Key=variant.artifact.key, Body=body)
        return variant

    def desired(
        self,
        manifest: ModelManifest,
        *,
        action: DesiredAction = DesiredAction.UPDATE,
        sequence: int | None = None,
        signer: SigningKey | None = None,
        target: DesiredTarget | None = None,
        fleet: str | None = None,
        artifact_url: str | None = None,
    ) -> DesiredState:
        if sequence is None:
            self.sequence += 1
            sequence = self.sequence
        state = DesiredState(
            fleet=fleet or self.topics.fleet,
            target=target or DesiredTarget.device(self.device),
            rollout_id="r-test",
            sequence=sequence,
            issued_at=utc_now(),
            action=action,
            manifest=manifest,
            artifact_url=artifact_url,
        )
        return (signer or self.key).sign(state)

    def publish(self, device: str, payload: bytes) -> None:
        info = self.client.publish(
            self.topics.device(device, Channel.DESIRED), payload, qos=1, retain=True
        )
        info.wait_for_publish(5)

    def publish_group(self, group: str, payload: bytes) -> None:
        info = self.client.publish(self.topics.group_desired(group), payload, qos=1, retain=True)
        info.wait_for_publish(5)

    def send(self, device: str, desired: DesiredState) -> None:
        self.publish(device, desired.to_payload())

    def wait_report(self, predicate: Any, timeout: float = 30.0) -> ReportedState:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for report in reversed(self.reports):
                    if predicate(report):
                        return report
            time.sleep(0.05)
        with self._lock:
            seen = [
                (r.ota_state.value, r.running_version, r.reason[:80]) for r in self.reports[-8:]
            ]
        raise AssertionError(f"no matching report; last ones: {seen}")

    def wait_active(self, version: int, timeout: float = 30.0) -> ReportedState:
        """Until a device reports ``version`` active and proven (no probation reason)."""
        return self.wait_report(
            lambda r: (
                r.running_version == version and r.ota_state is OtaState.ACTIVE and not r.probation
            ),
            timeout,
        )

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
