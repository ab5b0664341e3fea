"""Prometheus metrics of one agent, in its own registry (several agents can share a process).

Hot-path figures (stage latencies, events) are recorded as they happen; state that already
lives elsewhere (camera states, drop counts, model version) is read at scrape time by a
collector, so there is one source of truth and no bookkeeping on the frame path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from edge_agent.status import AgentStatus

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)


_PER_CAMERA = {
    "frames_captured": ("linefleet_camera_frames_total", "Frames captured", True),
    "frames_dropped": ("linefleet_camera_frames_dropped_total", "Stale frames skipped", True),
    "corrupt_frames": ("linefleet_camera_corrupt_frames_total", "Unusable frames", True),
    "read_errors": ("linefleet_camera_read_errors_total", "Read errors", True),
    "reconnects": ("linefleet_camera_reconnects_total", "Reconnects", True),
    "fps": ("linefleet_camera_fps", "Frames offered to the pipeline per second", False),
    "fps_in": ("linefleet_camera_fps_in", "Frames read from the camera per second", False),
    "stalls": ("linefleet_camera_stalls_total", "Stalls (no data on an open connection)", True),
    "frame_age_ms_p99": (
        "linefleet_camera_frame_age_p99_ms",
        "Age of frames at pickup by the pipeline, 99th percentile",
        False,
    ),
}
_SPOOL = (
    ("depth", "gauge", "Hard examples waiting in the spool"),
    ("bytes", "gauge", "Bytes in the spool"),
    ("oldest_age_s", "gauge", "Age of the oldest spooled example"),
    ("accepted", "counter", "Examples accepted into the spool"),
    ("evicted", "counter", "Examples evicted by the quota"),
    ("rejected", "counter", "Examples refused (quota, disk)"),
    ("uploaded", "counter", "Examples confirmed by the object store"),
    ("failures", "counter", "Failed upload attempts"),
)


class _StatusCollector(Collector):
    def __init__(self, snapshot: Callable[[], AgentStatus]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        status = self._snapshot()
        for key, (name, doc, is_counter) in _PER_CAMERA.items():
            family: CounterMetricFamily | GaugeMetricFamily = (
                CounterMetricFamily(name, doc, labels=["camera"])
                if is_counter
                else GaugeMetricFamily(name, doc, labels=["camera"])
            )
            for camera_id, cam in status.cameras.items():
                family.add_metric([camera_id], float(getattr(cam, key)))
            yield family
        state = GaugeMetricFamily(
            "linefleet_camera_state", "1 for the camera's current state", labels=["camera", "state"]
        )
        for camera_id, cam in status.cameras.items():
            state.add_metric([camera_id, cam.state.value], 1.0)
        yield state
        pipe = status.pipeline
        yield GaugeMetricFamily("linefleet_fps", "Frames processed per second", value=pipe.fps)
        processed = CounterMetricFamily("linefleet_frames_processed", "Frames through the model")
        processed.add_metric([], float(pipe.processed))
        yield processed
        errors = CounterMetricFamily("linefleet_inference_errors", "Frames whose inference failed")
        errors.add_metric([], float(pipe.inference_errors))
        yield errors
        for key, kind, doc in _SPOOL:
            name = f"linefleet_spool_{key}"
            value = float(getattr(status.spool, key)) if status.spool else 0.0
            yield (
                CounterMetricFamily(name, doc, value=value)
                if kind == "counter"
                else GaugeMetricFamily(name, doc, value=value)
            )
        yield GaugeMetricFamily(
            "linefleet_spool_disk_low",
            "1 while the spool's disk is at its free-space floor (new examples dropped)",
            value=1.0 if status.spool and status.spool.disk_low else 0.0,
        )
        yield GaugeMetricFamily(
            "linefleet_degraded",
            "Number of ways the agent works less than configured (see /status degraded)",
            value=float(len(status.degraded)),
        )
        upload_errors = CounterMetricFamily(
            "linefleet_upload_errors", "Upload errors by kind", labels=["kind"]
        )
        for kind, count in (status.uploader.errors_by_kind if status.uploader else {}).items():
            upload_errors.add_metric([kind], float(count))
        yield upload_errors
        uploaded_bytes = CounterMetricFamily("linefleet_upload_bytes", "Bytes uploaded")
        uploaded_bytes.add_metric([], float(status.uploader.bytes if status.uploader else 0))
        yield uploaded_bytes
        model = status.model
        info = InfoMetricFamily("linefleet_model", "The active model")
        info.add_metric(
            [],
            {
                "name": model.name if model else "",
                "version": str(model.version or "") if model else "",
                "provider": model.provider if model else "",
            },
        )
        yield info


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.stage_latency = Histogram(
            "linefleet_stage_latency_seconds",
            "Per-stage latency (prepare, infer, finish; total is capture to sinks)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.events_published = Counter(
            "linefleet_events_published_total", "Detection events queued", registry=self.registry
        )
        self.events_suppressed = Counter(
            "linefleet_events_suppressed_total",
            "Detection events skipped by the rate limit",
            registry=self.registry,
        )

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_latency.labels(stage).observe(seconds)

    def watch(self, snapshot: Callable[[], AgentStatus]) -> None:
        self.registry.register(_StatusCollector(snapshot))

    def render(self) -> bytes:
        return generate_latest(self.registry)
