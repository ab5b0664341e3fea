"""The events sink: detections to the line over MQTT, rate-limited per camera."""

from __future__ import annotations

import time

from edge_agent.frame_path import DetectionResult
from edge_agent.metrics import AgentMetrics
from shared.infra.mqtt_link import MqttLink
from shared.messages import MAX_DETECTIONS_PER_EVENT, DetectionEvent, DetectionRecord
from shared.topics import Channel, Topics


class EventsSink:
    def __init__(
        self,
        link: MqttLink,
        topics: Topics,
        device_id: str,
        metrics: AgentMetrics,
        *,
        qos: int = 0,
        max_per_s: float = 10.0,
        only_with_detections: bool = False,
    ) -> None:
        self._link = link
        self._topic = topics.device(device_id, Channel.EVENTS)
        self._device_id = device_id
        self._metrics = metrics
        self._qos = qos
        self._min_interval = 1.0 / max_per_s if max_per_s > 0 else None
        self._only_with_detections = only_with_detections
        self._last_sent: dict[str, float] = {}

    def __call__(self, result: DetectionResult) -> None:
        if self._min_interval is None:
            return
        if self._only_with_detections and len(result.detections) == 0:
            return
        camera_id = result.frame.camera_id
        now = time.monotonic()
        if now - self._last_sent.get(camera_id, -1e9) < self._min_interval:
            self._metrics.events_suppressed.inc()
            return
        self._last_sent[camera_id] = now
        self._link.publish(
            self._topic, build_event(result, self._device_id).to_payload(), qos=self._qos
        )
        self._metrics.events_published.inc()


def build_event(result: DetectionResult, device_id: str) -> DetectionEvent:
    detections = result.detections
    if len(detections) > MAX_DETECTIONS_PER_EVENT:
        keep = detections.confidence.argsort()[::-1][:MAX_DETECTIONS_PER_EVENT]
        detections = detections[keep]
    names = result.model.class_names
    frame = result.frame
    height, width = frame.size
    return DetectionEvent(
        device_id=device_id,
        camera_id=frame.camera_id,
        frame_id=frame.frame_id,
        captured_at=frame.captured_at,
        model_name=result.model.name,
        model_version=result.model.version,
        image_width=width,
        image_height=height,
        detections=[DetectionRecord(**record) for record in detections.to_records(names)],
    )
