"""The agent process: one stop event, cameras, pipeline, sinks, MQTT, local API, heartbeats.

Every long-running part is a thread that watches the same ``stop`` event, so SIGTERM ends
everything within a few seconds, and any part that dies sets it so systemd restarts us.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler

from edge_agent import __version__
from edge_agent.api import create_app
from edge_agent.camera import (
    CameraState,
    CameraWorker,
    FrameHub,
    FrameSource,
    OpenCVSource,
    PyAVSource,
    SyntheticSource,
)
from edge_agent.config import AgentConfig, StreamCamera, SyntheticCamera
from edge_agent.errors import EdgeAgentError, ModelLoadError
from edge_agent.frame_path import ActiveModel, ModelSlot, Sink
from edge_agent.inference import (
    RunnerOptions,
    intra_op_threads,
)
from edge_agent.inference.choice_cache import ChoiceCache
from edge_agent.metrics import AgentMetrics
from edge_agent.model_loading import (
    Choosing,
    load_model,
    load_model_choosing,
    read_local_manifest,
)
from edge_agent.ota.controller import OtaController, OtaPolicy
from edge_agent.ota.health import HealthPolicy
from edge_agent.ota.parts import ArtifactSource, CandidateLoader, OtaTarget
from edge_agent.ota.smoke import RecentFrames
from edge_agent.ota.store import ModelStore
from edge_agent.pipeline import Pipeline
from edge_agent.sinks.events import EventsSink
from edge_agent.sinks.mining import DisagreementSampler, HardExamplePolicy, NearDuplicateFilter
from edge_agent.sinks.mining.factory import build_samplers
from edge_agent.sinks.mining.line_stats import LineStats
from edge_agent.status import (
    AgentStatus,
    CameraStatus,
    CameraTransition,
    DeviceStatus,
    MiningStatus,
    ModelStatus,
    MqttStatus,
    OtaStatus,
    PipelineStatus,
    UploaderStatus,
)
from edge_agent.systemd_notify import notify, watchdog_interval_s
from edge_agent.upload.spool import Spool
from edge_agent.upload.uploader import Uploader
from shared.infra.http import HttpServer
from shared.infra.mqtt_link import MqttLink
from shared.infra.s3 import make_s3_client
from shared.manifest import ModelManifest
from shared.messages import DriftAlert, Heartbeat, utc_now
from shared.signing import Verifier
from shared.topics import Channel, Topics

log = logging.getLogger(__name__)

SPOOL_DISK_LOW = "spool disk below its free-space floor: new hard examples are dropped"


def build_source(camera: SyntheticCamera | StreamCamera) -> FrameSource:
    if isinstance(camera, SyntheticCamera):
        return SyntheticSource(
            camera.line_config(),
            drift_schedule=[(s.after_frames, s.drift) for s in camera.drift_schedule],
        )
    if isinstance(camera.url, str) and camera.capture != "opencv":
        return PyAVSource(
            camera.url,
            loop=camera.loop,
            open_timeout_s=camera.open_timeout_s,
            read_timeout_s=camera.read_timeout_s,
            rtsp_transport=camera.rtsp_transport,
            decode=camera.decode,
            decode_threads=camera.decode_threads,
            hwaccel=None if camera.hwaccel == "none" else camera.hwaccel,
            max_pixels=camera.max_pixels,
        )
    return OpenCVSource(
        camera.url,
        loop=camera.loop,
        open_timeout_s=camera.open_timeout_s,
        read_timeout_s=camera.read_timeout_s,
    )


def runner_options(config: AgentConfig) -> RunnerOptions:
    m = config.model
    return RunnerOptions(
        providers=tuple(m.providers),
        intra_op_threads=intra_op_threads(m.intra_op_threads, workers=m.infer_workers),
        conf_threshold=m.conf_threshold,
        iou_threshold=m.iou_threshold,
        max_detections=m.max_detections,
        max_batch=m.max_batch,
        trt_cache_dir=m.trt_cache_dir,
        thread_spinning=m.thread_spinning,
        # "auto": onnxruntime until the agent has chosen (edge_agent.inference.selection)
        runtime="onnxruntime" if m.runtime == "auto" else m.runtime,
        openvino_device=m.openvino_device,
        openvino_precision=m.openvino_precision,
    )


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.stop_event = threading.Event()
        self.started_mono = time.monotonic()
        self._started = False
        self._stops = contextlib.ExitStack()
        # The runner options models load with; with model.runtime "auto", the runtime chosen
        # when the first model loads (edge_agent.inference.selection), kept for the shadow
        # model. Each OTA candidate chooses again, on the line's recent frames.
        self.runner_options = runner_options(config)
        self.choosing = Choosing.from_config(config.model)
        self.choice_cache = ChoiceCache(config.state_dir / "runtime-choice.json")
        self.metrics = AgentMetrics()
        self.hub = FrameHub()
        self.models = ModelSlot()
        self.topics = Topics(config.device.fleet, prefix=config.mqtt.topic_prefix)
        self.cameras = [
            CameraWorker(
                cam.id,
                build_source(cam),
                self.hub,
                self.stop_event,
                fps_limit=cam.fps if isinstance(cam, SyntheticCamera) else cam.fps_limit,
                stall_timeout_s=config.stall_timeout_s,
                lossless=cam.buffer == "lossless",
                auth_retry_s=cam.auth_retry_s if isinstance(cam, StreamCamera) else 60.0,
            )
            for cam in config.cameras
        ]
        self.pipeline = Pipeline(
            self.hub,
            self.models,
            self.stop_event,
            max_batch=config.model.max_batch,
            infer_workers=config.model.infer_workers,
            observe_latency=self.metrics.observe_stage,
        )
        self.mqtt: MqttLink | None = None
        if config.mqtt.enabled:
            self.mqtt = MqttLink(
                config.mqtt,
                config.device.id,
                presence_topic=self.topics.device(config.device.id, Channel.ONLINE),
                agent_version=__version__,
            )
            self.pipeline.add_sink(
                EventsSink(
                    self.mqtt,
                    self.topics,
                    config.device.id,
                    self.metrics,
                    qos=config.mqtt.events_qos,
                    max_per_s=config.mqtt.events_max_per_s,
                    only_with_detections=config.mqtt.events_only_with_detections,
                )
            )
        self.spool: Spool | None = None
        self.mining: HardExamplePolicy | None = None
        self.uploader: Uploader | None = None
        self._degraded: list[str] = []
        # What the model reports per camera between heartbeats: the console's drift charts.
        band = config.mining.confidence_band
        self.line_stats = LineStats((band.low, band.high))
        self._drifting: dict[str, bool] = {}  # per camera, as the last heartbeat said
        self.pipeline.add_sink(self.line_stats)
        mining = config.mining.enabled
        if mining and not config.storage.enabled and not config.mining.spool_without_storage:
            mining = False
            self._degraded.append(
                "hard-example mining is off: storage is disabled, so nothing would upload "
                "the examples (enable storage, or set mining.spool_without_storage)"
            )
            log.warning(self._degraded[-1])
        if mining or config.storage.enabled:
            self.spool = Spool(
                config.state_dir / "spool",
                quota_bytes=config.spool.quota_bytes,
                min_free_bytes=config.spool.min_free_bytes,
            )
        if mining and self.spool is not None:
            self.mining = HardExamplePolicy(
                build_samplers(config.mining),
                self.spool,
                self.stop_event,
                fleet=config.device.fleet,
                device_id=config.device.id,
                dedup=NearDuplicateFilter(
                    config.mining.dedup_max_distance, config.mining.dedup_history
                ),
                queue_size=config.mining.queue_size,
                jpeg_quality=config.spool.jpeg_quality,
                line_stats=self.line_stats,
            )
            self.pipeline.add_sink(self.mining)
        if config.storage.enabled and self.spool is not None:
            self.uploader = Uploader(
                self.spool,
                config.storage.target(),
                self.stop_event,
                concurrency=config.storage.concurrency,
                bandwidth_bytes_s=config.storage.bandwidth_bytes_per_s,
                backoff_initial_s=config.storage.backoff_initial_s,
                backoff_max_s=config.storage.backoff_max_s,
                probe_interval_s=config.storage.probe_interval_s,
            )
        self.store: ModelStore | None = None
        self.ota: OtaController | None = None
        self._recent: RecentFrames | None = None  # the line's last frames, for OTA trials
        if config.ota.enabled and self.mqtt is not None:  # the config requires MQTT for OTA
            self.store = ModelStore(
                config.state_dir / "models", keep_versions=config.ota.keep_versions
            )
            recent = RecentFrames()
            self.pipeline.add_sink(recent)
            self._recent = recent
            self.ota = OtaController(
                target=OtaTarget(
                    device_id=config.device.id,
                    fleet=config.device.fleet,
                    group=config.device.group,
                    model_name=config.ota.model_name,
                ),
                line=self.pipeline,
                recent=recent,
                link=self.mqtt,
                topics=self.topics,
                store=self.store,
                verifier=Verifier.from_pem_files(dict(config.ota.trusted_keys)),
                loader=CandidateLoader(
                    self.runner_options, self._load_candidate, config.model.precision
                ),
                artifacts=ArtifactSource(
                    make_s3_client(config.storage.target()), config.storage.bucket
                )
                if config.storage.enabled
                else ArtifactSource(),
                stop=self.stop_event,
                policy=OtaPolicy(
                    probation_s=config.ota.probation_s,
                    max_error_rate=config.ota.max_error_rate,
                    latency_factor=config.ota.latency_factor,
                    download_retry_s=config.ota.download_retry_s,
                    download_retry_max_s=config.ota.download_retry_max_s,
                    health=HealthPolicy(
                        interval_s=config.ota.health_interval_s,
                        max_error_rate=config.ota.max_error_rate,
                        min_frames=config.ota.health_min_frames,
                        action=config.ota.health_action,
                    ),
                    download_bytes_per_s=config.ota.download_bandwidth_bytes_per_s,
                ),
            )
        self.api: HttpServer | None = None
        self._scheduler = BackgroundScheduler(daemon=True)
        self.metrics.watch(self.status)

    # ----------------------------------------------------------------- parts
    def add_sink(self, sink: Sink) -> None:
        self.pipeline.add_sink(sink)

    def load_stored_model(self) -> bool:
        """Start on the store's current version; roll a crash-looping one back first."""
        if self.store is None:
            return False
        state = self.store.record_boot()
        if state.probation and state.boot_attempts > self.config.ota.max_boot_attempts:
            log.error(
                "model crash loop: rolling back",
                extra={"version": state.current, "boots": state.boot_attempts},
            )
            state = self.store.rollback()
        for _ in range(2):
            if state.current is None or not self.store.has(state.current):
                return False
            try:
                model = self._load_line_model(
                    self.store.model_path(state.current), self.store.manifest(state.current)
                )
            except (ModelLoadError, EdgeAgentError) as exc:
                log.error("stored model unusable: rolling back", extra={"error": str(exc)})
                state = self.store.rollback()
                continue
            self.models.swap(model)
            log.info("model loaded from store", extra={"version": model.version})
            return True
        return False

    def _load_line_model(self, path: Path, manifest: ModelManifest | None) -> ActiveModel:
        """The model the line starts with; when there is a runtime or variant to choose, it
        is chosen on the synthetic line (no camera frame exists yet)."""
        if not self.choosing.needed(manifest, self.runner_options):
            return load_model(path, self.runner_options, manifest)
        model = load_model_choosing(
            path,
            self.runner_options,
            manifest,
            self.choosing,
            cache=self.choice_cache,
            reuse=True,
        )
        assert model.runtime_choice is not None
        self.runner_options = dataclasses.replace(
            self.runner_options, runtime=model.runtime_choice.chosen
        )
        return model

    def _load_candidate(
        self, path: Path, options: RunnerOptions, manifest: ModelManifest | None
    ) -> ActiveModel:
        """An OTA candidate: its runtime and model file chosen again when there is a choice,
        judged on the line's recent frames, each trial run as model work in the line's gaps."""
        if not self.choosing.needed(manifest, options):
            return load_model(path, options, manifest)
        return load_model_choosing(
            path,
            options,
            manifest,
            self.choosing,
            live_images=self._recent.images() if self._recent is not None else None,
            run_model_work=self.pipeline.call_between_batches,
            cache=self.choice_cache,
        )

    def load_configured_model(self) -> None:
        if self.load_stored_model():
            return
        path = self.config.model.path
        if path is None:
            log.warning("no model configured; waiting for one over OTA")
            return
        model = self._load_line_model(path, read_local_manifest(path))
        self.models.swap(model)
        log.info(
            "model loaded",
            extra={
                "model": model.name,
                "version": model.version,
                "provider": model.runner.provider,
                "precision": model.precision,
            },
        )

    def load_shadow_model(self) -> None:
        """Give the disagreement sampler its shadow model, when one is configured."""
        path = self.config.model.shadow_path
        if path is None or self.mining is None:
            return
        shadow = load_model(path, self.runner_options, read_local_manifest(path))
        for sampler in self.mining.samplers:
            if isinstance(sampler, DisagreementSampler):
                sampler.shadow = shadow.runner
        log.info("shadow model loaded", extra={"model": shadow.name, "version": shadow.version})

    def active_model(self) -> ActiveModel | None:
        return self.models.current

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start every part; each one started registers how it stops, so a start that fails
        half-way (a model that does not load, the API port taken) stops exactly what ran."""
        self._started = True
        stops = self._stops
        self.load_configured_model()
        self.load_shadow_model()
        if self.mqtt is not None:
            self.mqtt.start()
            stops.callback(self.mqtt.stop)
        if self.ota is not None:
            self.ota.start()
            stops.callback(self.ota.join, timeout=2.0)
        for camera in self.cameras:
            camera.start()
            stops.callback(camera.join, timeout=1.0)
        self.pipeline.start()
        stops.callback(self.pipeline.join, timeout=3.0)
        if self.mining is not None:
            self.mining.start()
            stops.callback(self.mining.join, timeout=2.0)
        if self.uploader is not None:
            self.uploader.start()
            stops.callback(self.uploader.join, timeout=3.0)
        if self.config.api.enabled:
            token = self.config.api.token.get_secret_value() if self.config.api.token else None
            app = create_app(
                self,
                token=token,
                max_upload_bytes=self.config.api.max_upload_bytes,
                max_image_pixels=self.config.api.max_image_pixels,
            )
            self.api = HttpServer(app, self.config.api.host, self.config.api.port)
            stops.callback(self.api.stop)
            self.api.start()
        if self.mqtt is not None:
            self._scheduler.add_job(
                self.publish_heartbeat, "interval", seconds=10, id="heartbeat", max_instances=1
            )
        if self.spool is not None:
            self._scheduler.add_job(self.spool.compact, "interval", minutes=10, id="spool-compact")
        self._scheduler.start()
        stops.callback(self._scheduler.shutdown, wait=False)
        log.info("agent started", extra={"device": self.config.device.id, "version": __version__})

    def run_until_stopped(self) -> None:
        """Block until stop; feed the systemd watchdog only while the pipeline is alive."""
        self.start()
        notify("READY=1")
        interval = watchdog_interval_s() or 1.0
        while not self.stop_event.wait(interval):
            if self.alive():
                notify("WATCHDOG=1")

    def stop(self) -> None:
        """Stop what was started, newest first (the API before the pipeline it serves, MQTT
        last so the final reports and the offline message go out)."""
        self.stop_event.set()
        if self._started:
            notify("STOPPING=1")
            self._stops.close()
            log.info("agent stopped")
        if self.spool is not None:  # opened at construction: released even if never started
            self.spool.close()

    # ----------------------------------------------------------------- views
    def alive(self) -> bool:
        return self.pipeline.alive and not self.stop_event.is_set()

    def readiness(self) -> list[str]:
        problems = []
        if self.models.current is None:
            problems.append("no model loaded")
        if not any(c.state is CameraState.STREAMING for c in self.cameras):
            problems.append("no camera streaming")
        if not self.pipeline.alive:
            problems.append("pipeline not running")
        if self.mqtt is not None and not self.mqtt.connected.is_set():
            problems.append("mqtt not connected")
        if self.spool is not None and self.spool.disk_low:
            problems.append(SPOOL_DISK_LOW)
        return problems

    def status(self) -> AgentStatus:
        model = self.models.current
        stats = self.pipeline.stats
        device = self.config.device
        now = time.monotonic()
        drifting = self.mining.drifting_cameras() if self.mining is not None else set()
        return AgentStatus(
            device=DeviceStatus(id=device.id, fleet=device.fleet, group=device.group),
            agent_version=__version__,
            uptime_s=round(time.monotonic() - self.started_mono, 1),
            model=None
            if model is None
            else ModelStatus(
                name=model.name,
                version=model.version,
                provider=model.runner.provider,
                precision=model.precision,
                runtime_choice=model.runtime_choice,
                input=(model.runner.info.input_height, model.runner.info.input_width),
                classes=list(model.class_names),
            ),
            pipeline=PipelineStatus(
                fps=round(stats.fps(), 2),
                processed=stats.processed,
                infer_workers=self.config.model.infer_workers,
                inference_errors=stats.inference_errors,
                sink_errors=stats.sink_errors,
                infer_latency_ms_p50=round(stats.latency_ms(0.5), 2),
                infer_latency_ms_p99=round(stats.latency_ms(0.99), 2),
            ),
            cameras={
                c.camera_id: CameraStatus(
                    source=c.source.description,
                    state=c.state,
                    fps=round(c.stats.fps, 2),
                    fps_in=round(c.stats.fps_in, 2),
                    frames_captured=c.stats.frames,
                    frames_dropped=self.hub.dropped.get(c.camera_id, 0),
                    corrupt_frames=c.stats.corrupt_frames,
                    read_errors=c.stats.read_errors,
                    reconnects=c.stats.reconnects,
                    stalls=c.stats.stalls,
                    frame_age_ms_p50=round(stats.frame_age_ms(c.camera_id, 0.5), 2),
                    frame_age_ms_p99=round(stats.frame_age_ms(c.camera_id, 0.99), 2),
                    last_error=c.stats.last_error,
                    recent_states=[
                        CameraTransition(seconds_ago=round(now - at, 1), state=state, reason=why)
                        for at, state, why in list(c.history)[-8:]
                    ],
                    drifting=c.camera_id in drifting,
                )
                for c in self.cameras
            },
            ota=None
            if self.ota is None or self.store is None
            else OtaStatus(
                state=self.ota.state,
                reason=self.ota.last_reason,
                store=self.store.state(),
            ),
            spool=None if self.spool is None else self.spool.stats(),
            uploader=None
            if self.uploader is None
            else UploaderStatus(
                uploaded=self.uploader.stats.uploaded,
                failed=self.uploader.stats.failed,
                bytes=self.uploader.stats.bytes,
                errors_by_kind=dict(self.uploader.stats.errors_by_kind),
                last_error=self.uploader.stats.last_error,
            ),
            mining=None
            if self.mining is None
            else MiningStatus(
                seen=self.mining.stats.seen,
                accepted=self.mining.stats.accepted,
                duplicates=self.mining.stats.duplicates,
                queue_skipped=self.mining.stats.queue_skipped,
                triggered=dict(self.mining.stats.triggered),
                rate_limited=dict(self.mining.stats.rate_limited),
                rejected=self.mining.stats.rejected,
                evicted=self.mining.stats.evicted,
            ),
            mqtt=None
            if self.mqtt is None
            else MqttStatus(
                connected=self.mqtt.connected.is_set(),
                published=self.mqtt.stats.published,
                dropped=self.mqtt.stats.dropped,
            ),
            degraded=[
                *self._degraded,
                *([SPOOL_DISK_LOW] if self.spool is not None and self.spool.disk_low else []),
            ],
            ota_enabled=self.ota is not None,
            ota_trusted_keys=sorted(self.config.ota.trusted_keys) if self.ota is not None else [],
        )

    def metrics_text(self) -> bytes:
        return self.metrics.render()

    def heartbeat(self) -> Heartbeat:
        """The status as a heartbeat, with each camera's line window since the last one
        (taken here, so only heartbeats restart the windows, not ``/status`` reads)."""
        return self.status().heartbeat(utc_now(), self.line_stats.take())

    def publish_heartbeat(self) -> None:
        if self.mqtt is None:
            return
        beat = self.heartbeat()
        topic = self.topics.device(self.config.device.id, Channel.HEARTBEAT)
        self.mqtt.publish(topic, beat.to_payload(), qos=0)
        self.publish_drift_alerts(beat)

    def publish_drift_alerts(self, beat: Heartbeat) -> list[DriftAlert]:
        """A :class:`DriftAlert` for each camera whose drifting flag changed since the last
        heartbeat (QoS 1: the plant's systems should not miss one)."""
        alerts = []
        for camera_id, health in beat.cameras.items():
            if self._drifting.get(camera_id, False) == health.drifting:
                continue
            self._drifting[camera_id] = health.drifting
            alert = DriftAlert(
                device_id=beat.device_id,
                camera_id=camera_id,
                drifting=health.drifting,
                at=beat.sent_at,
                model_name=beat.model_name,
                model_version=beat.model_version,
                line=health.line,
            )
            log.warning(
                "camera line %s under the model",
                "drifting" if health.drifting else "back to its baseline",
                extra={"camera": camera_id},
            )
            if self.mqtt is not None:
                topic = self.topics.device(self.config.device.id, Channel.ALERTS)
                self.mqtt.publish(topic, alert.to_payload(), qos=1)
            alerts.append(alert)
        return alerts
