"""The agent's status, typed and built once per request: ``/status`` returns it, the heartbeat
is derived from it, and the Prometheus collector reads it. One snapshot, three views, so the
three can never disagree about a figure or drift apart as fields are added."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from edge_agent.inference.selection import RuntimeChoice
from edge_agent.ota.store import StoreState
from edge_agent.upload.spool import SpoolStats
from shared.messages import CameraHealth, CameraState, Heartbeat, LineWindow, OtaState


class _View(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DeviceStatus(_View):
    id: str
    fleet: str
    group: str | None


class ModelStatus(_View):
    name: str
    version: int | None
    provider: str
    input: tuple[int, int]  # height, width
    classes: list[str]
    precision: str = "fp32"  # of the model file running: the reference or a variant
    # When there was a choice (model.runtime "auto", or variants): each trial and the chosen.
    runtime_choice: RuntimeChoice | None = None

    @property
    def runs_on(self) -> str:
        """The provider, and the precision when it is a variant (heartbeats, the console)."""
        return self.provider if self.precision == "fp32" else f"{self.provider} {self.precision}"


class PipelineStatus(_View):
    fps: float
    processed: int
    infer_workers: int
    inference_errors: int
    sink_errors: int
    infer_latency_ms_p50: float
    infer_latency_ms_p99: float


class CameraTransition(_View):
    """One step of a camera's state machine, newest last in ``CameraStatus.recent_states``."""

    seconds_ago: float
    state: CameraState
    reason: str


class CameraStatus(_View):
    source: str
    state: CameraState
    fps: float  # frames offered to the pipeline per second
    fps_in: float  # frames read from the camera per second
    frames_captured: int
    frames_dropped: int  # replaced unread by a newer one (buffer: latest)
    corrupt_frames: int
    read_errors: int
    reconnects: int
    stalls: int
    # Age of a frame when the pipeline took it (read from the camera -> pickup).
    frame_age_ms_p50: float
    frame_age_ms_p99: float
    last_error: str
    # The last transitions (reconnects, stalls, refused credentials), oldest first.
    recent_states: list[CameraTransition]
    # What the model reports from this camera has moved from its baseline (drift sampler).
    drifting: bool = False


class OtaStatus(_View):
    state: OtaState
    reason: str
    store: StoreState  # the model store's own state record


class UploaderStatus(_View):
    uploaded: int
    failed: int
    bytes: int
    errors_by_kind: dict[str, int]
    last_error: str


class MiningStatus(_View):
    seen: int
    accepted: int
    duplicates: int
    queue_skipped: int
    triggered: dict[str, int]
    rate_limited: dict[str, int]
    rejected: int
    evicted: int


class MqttStatus(_View):
    connected: bool
    published: int
    dropped: int


class AgentStatus(_View):
    device: DeviceStatus
    agent_version: str
    uptime_s: float
    model: ModelStatus | None
    pipeline: PipelineStatus
    cameras: dict[str, CameraStatus]
    ota: OtaStatus | None
    spool: SpoolStats | None  # the spool's own figures
    uploader: UploaderStatus | None
    mining: MiningStatus | None
    mqtt: MqttStatus | None
    # What works less than configured, in words (mining off without storage, disk full ...).
    degraded: list[str]
    # Whether this agent acts on OTA updates, and the key ids it accepts them signed by.
    ota_enabled: bool = False
    ota_trusted_keys: list[str] = []

    def heartbeat(
        self, sent_at: datetime, lines: Mapping[str, LineWindow] | None = None
    ) -> Heartbeat:
        """The periodic heartbeat for the fleet: a summary of this status, with each
        camera's line window (``lines``) where the agent measured one."""
        lines = lines or {}
        return Heartbeat(
            device_id=self.device.id,
            sent_at=sent_at,
            uptime_s=self.uptime_s,
            model_name=self.model.name if self.model else None,
            model_version=self.model.version if self.model else None,
            provider=self.model.runs_on if self.model else "none",
            fps=self.pipeline.fps,
            latency_ms_p50=self.pipeline.infer_latency_ms_p50,
            latency_ms_p99=self.pipeline.infer_latency_ms_p99,
            inference_errors=self.pipeline.inference_errors,
            dropped_frames=sum(c.frames_dropped for c in self.cameras.values()),
            spool_depth=self.spool.depth if self.spool else 0,
            spool_bytes=self.spool.bytes if self.spool else 0,
            spool_oldest_age_s=round(self.spool.oldest_age_s, 1) if self.spool else 0.0,
            upload_errors=self.uploader.failed if self.uploader else 0,
            cameras={
                camera_id: CameraHealth(
                    state=c.state,
                    fps=c.fps,
                    dropped_frames=c.frames_dropped,
                    errors=c.read_errors + c.corrupt_frames,
                    fps_in=c.fps_in,
                    frame_age_ms_p99=c.frame_age_ms_p99,
                    reconnects=c.reconnects,
                    stalls=c.stalls,
                    last_error=c.last_error[:300],
                    drifting=c.drifting,
                    line=lines.get(camera_id),
                )
                for camera_id, c in self.cameras.items()
            },
            ota_enabled=self.ota_enabled,
            trusted_keys=self.ota_trusted_keys,
        )
