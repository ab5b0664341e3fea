"""Agent configuration: a YAML file, overridden by ``LINEFLEET_*`` environment variables.

Unknown keys are errors (a typo must not silently fall back to a default). Validation is
pure: whether files exist or the broker answers is checked when the agent starts, not here.
Nested env overrides use ``__``: ``LINEFLEET_MQTT__HOST=broker.plant``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from shared.identifiers import Identifier
from shared.infra.config import (
    MqttConnectionSection,
    S3Section,
    config_error,
    read_yaml,
    with_secret_files,
)
from shared.infra.config import Section as _Section
from shared.synth import DRIFT_PRESETS, LineConfig
from shared.validation import describe_validation_error

Provider = Literal["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


class DriftStep(_Section):
    """After this many frames the synthetic line changes conditions (a drifting line)."""

    after_frames: int = Field(ge=1)
    drift: str


class SyntheticCamera(_Section):
    kind: Literal["synthetic"] = "synthetic"
    id: Identifier
    seed: int = 0
    drift: str = "none"
    drift_schedule: list[DriftStep] = Field(default_factory=list, max_length=32)
    width: int = Field(default=640, ge=128, le=4096)
    height: int = Field(default=640, ge=128, le=4096)
    fps: float | None = Field(default=30.0, gt=0, le=240, description="None: unpaced")
    buffer: Literal["latest", "lossless"] = "latest"

    @model_validator(mode="after")
    def _known_drift(self) -> SyntheticCamera:
        for name in [self.drift, *(s.drift for s in self.drift_schedule)]:
            if name not in DRIFT_PRESETS:
                raise ValueError(f"unknown drift {name!r}; choose one of {sorted(DRIFT_PRESETS)}")
        frames = [s.after_frames for s in self.drift_schedule]
        if frames != sorted(set(frames)):
            raise ValueError("drift_schedule steps must have increasing after_frames")
        self.line_config()  # the generator's own rules (e.g. parts fit the frame), checked now
        return self

    def line_config(self) -> LineConfig:
        """The synthetic line this camera films; ValueError if the generator refuses it."""
        try:
            return LineConfig(
                width=self.width,
                height=self.height,
                fps=self.fps or 30.0,
                seed=self.seed,
                drift=self.drift,
            )
        except ValidationError as exc:
            raise ValueError(describe_validation_error(exc)) from exc


class StreamCamera(_Section):
    """RTSP/HTTP URL, a video file path, or a USB device index."""

    kind: Literal["stream", "file", "usb"]
    id: Identifier
    url: str | int
    loop: bool = False
    fps_limit: float | None = Field(default=None, gt=0, le=240)
    # "lossless" applies to files only: every frame is processed, read on demand.
    buffer: Literal["latest", "lossless"] = "latest"
    open_timeout_s: float = Field(default=10.0, gt=0, le=120)
    # No data for this long on an open connection is a stall: the camera reconnects.
    read_timeout_s: float = Field(default=10.0, gt=0, le=120)
    # "pyav" (FFmpeg's libraries) for streams and files, OpenCV for USB devices; "auto" picks
    # that way (benchmarks/cameras.py and the README say why).
    capture: Literal["auto", "pyav", "opencv"] = "auto"
    # RTSP over TCP by default: UDP loses packets (and so whole GOPs) on a busy plant network.
    rtsp_transport: Literal["tcp", "udp"] = "tcp"
    # "keyframes": decode key frames only (inter frames are dropped before decoding) for a
    # pipeline that needs no more than the camera's key-frame rate.
    decode: Literal["all", "keyframes"] = "all"
    # Threads per stream's decoder; one suits several 1080p streams on a small box.
    decode_threads: int = Field(default=1, ge=0, le=16)
    # Hardware decoding through FFmpeg (PyAV's wheels carry cuda, qsv, drm); none: software.
    hwaccel: Literal["none", "cuda", "qsv", "drm"] = "none"
    # Largest picture the decoder accepts (8K by default): a camera, or whatever answers at
    # its address, cannot make the agent allocate gigabytes with a forged picture size.
    max_pixels: int = Field(default=8192 * 4320, ge=256, le=2**31 - 1)
    # Wait between tries while the camera refuses the credentials.
    auth_retry_s: float = Field(default=60.0, ge=1, le=3600)

    @model_validator(mode="after")
    def _url_fits_kind(self) -> StreamCamera:
        if self.kind == "usb" and not isinstance(self.url, int):
            raise ValueError("usb cameras take a device index as url, e.g. 0")
        if self.kind == "stream" and not (isinstance(self.url, str) and "://" in self.url):
            raise ValueError("stream cameras need a URL like rtsp://host/path")
        if self.kind == "file" and not isinstance(self.url, str):
            raise ValueError("file cameras need a path")
        if self.kind == "usb" and self.capture == "pyav":
            raise ValueError("usb cameras are read through OpenCV: use capture auto or opencv")
        if self.capture == "opencv" and (self.decode == "keyframes" or self.hwaccel != "none"):
            raise ValueError("decode: keyframes and hwaccel need capture pyav (or auto)")
        return self


CameraConfig = Annotated[SyntheticCamera | StreamCamera, Field(discriminator="kind")]


class DeviceSection(_Section):
    id: Identifier = "edge-01"
    fleet: Identifier = "default"
    group: Identifier | None = None


class ModelSection(_Section):
    path: Path | None = None
    # A second model (e.g. the previous version) run beside the active one on sampled frames
    # only, so the disagreement sampler can flag frames where the two differ.
    shadow_path: Path | None = None
    providers: list[Provider] = ["CPUExecutionProvider"]  # noqa: RUF012 - pydantic copies it
    # Threads each inference uses; 0: the cores shared out between the infer workers.
    intra_op_threads: int = Field(default=0, ge=0, le=256)
    # Inferences in flight at once. 1: every frame gets all the cores (lowest latency). On a
    # CPU box whose cameras outpace the model, one worker per core finishes more frames
    # (measured 1.15-1.2x with 2 cores; see benchmarks/pipeline.py) at a higher latency.
    infer_workers: int = Field(default=1, ge=1, le=64)
    conf_threshold: float = Field(default=0.25, gt=0.0, lt=1.0)
    iou_threshold: float = Field(default=0.7, gt=0.0, le=1.0)
    max_detections: int = Field(default=300, ge=1, le=10_000)
    max_batch: int = Field(default=4, ge=1, le=64)
    # TensorRT engines are built while a model loads (OTA staging, or before the line starts)
    # and kept per GPU model, TensorRT and onnxruntime version. By default with the model's
    # version in the model store; set a folder here when the model's folder is read-only.
    trt_cache_dir: Path | None = None
    # onnxruntime's threads spin between runs unless told not to; on a line-paced box a
    # spinning thread keeps a core from the camera, post-processing, uploader and OTA
    # threads. Off: shorter tail latency and a free core, a slightly higher median (figures
    # in edge_agent.inference.runner.session_options). On: the lowest median model latency
    # on a box that does nothing else.
    thread_spinning: bool = False
    # The runtime that runs the model; pre/post-processing is the agent's own either way.
    # "openvino" (x86 boxes; pip install 'linefleet[edge-openvino]') compiles the same ONNX
    # file with OpenVINO: measured in benchmarks/runtimes.py against onnxruntime.
    # "auto": each installed runtime loads the model and runs probe frames; the fastest whose
    # detections agree with onnxruntime fp32 (runtime_min_agreement of the boxes) runs it.
    runtime: Literal["onnxruntime", "openvino", "auto"] = "onnxruntime"
    # The model file: "auto" tries the fp32 reference and each variant the version lists for
    # this box's accelerators (INT8: CPU, fp16: GPU) in the allowed runtimes, and runs the
    # fastest that agrees with fp32; a precision pins it (fp32: variants never downloaded).
    precision: Literal["auto", "fp32", "fp16", "int8"] = "auto"
    # Agreement with onnxruntime fp32 on the probe frames (edge_agent.inference.selection.
    # AgreementRule): at least runtime_min_agreement of the boxes at or above conf_threshold,
    # on either side, matched by a box of the same class at runtime_match_iou (another
    # runtime on the fp32 file) or variant_match_iou (an INT8 or fp16 variant: the gate's
    # IoU 0.5; the trainer measured its accuracy), scoring down to runtime_score_margin
    # under the threshold.
    runtime_min_agreement: float = Field(default=0.95, gt=0.0, le=1.0)
    runtime_match_iou: float = Field(default=0.9, gt=0.0, le=1.0)
    variant_match_iou: float = Field(default=0.5, gt=0.0, le=1.0)
    runtime_score_margin: float = Field(default=0.15, ge=0.0, lt=1.0)
    openvino_device: str = Field(default="CPU", pattern=r"^[A-Z][A-Z0-9_.:,]{0,40}$")
    # "auto": OpenVINO's choice (bf16 on CPUs that have it); "f32" pins full precision.
    openvino_precision: Literal["auto", "f32", "bf16", "f16"] = "auto"


class MqttSection(MqttConnectionSection):
    """The broker connection plus what the agent publishes for the line."""

    events_qos: Literal[0, 1] = 0
    events_max_per_s: float = Field(
        default=10.0, ge=0.0, description="per camera; 0 disables events"
    )
    events_only_with_detections: bool = False


class ApiSection(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=0, le=65535)
    token: SecretStr | None = None
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # Checked in the image header before decoding: a small file can declare a huge image.
    # 40 MP holds an 8K frame (33 MP); a 16,000 x 16,000 PNG is refused unread.
    max_image_pixels: int = Field(default=40_000_000, ge=64 * 64, le=1_000_000_000)


class StorageSection(S3Section):
    """S3-compatible object store for hard examples and model downloads."""

    enabled: bool = False
    concurrency: int = Field(default=2, ge=1, le=32)
    bandwidth_bytes_per_s: float = Field(default=0.0, ge=0.0, description="0 = unlimited")
    read_timeout_s: float = Field(default=30.0, gt=0, le=600)
    backoff_initial_s: float = Field(default=1.0, gt=0, le=600)
    backoff_max_s: float = Field(default=300.0, gt=0, le=86400)
    # While uploads are paused by the backoff, the store is asked this often whether it
    # answers again (a HEAD on the bucket); uploads resume as soon as it does.
    probe_interval_s: float = Field(default=5.0, gt=0, le=3600)


class SpoolSection(_Section):
    quota_bytes: int = Field(default=2 * 1024**3, ge=1024 * 1024)
    min_free_bytes: int = Field(default=512 * 1024**2, ge=0)
    jpeg_quality: int = Field(default=90, ge=30, le=100)


class SamplerSection(_Section):
    enabled: bool = True
    priority: float = Field(default=1.0, ge=0.0, le=1000.0)
    per_minute: int | None = Field(default=30, ge=0)
    per_hour: int | None = Field(default=600, ge=0)
    per_day: int | None = Field(default=5000, ge=0)
    # Seconds between two picks of one camera: the per-minute cap without its burst (30
    # consecutive frames of a belt are one scene; edge_agent/sinks/mining/rate_limit.py).
    min_interval_s: float = Field(default=2.0, ge=0.0, le=86400.0)


class ConfidenceBandSection(SamplerSection):
    low: float = Field(default=0.25, ge=0.0, le=1.0)
    high: float = Field(default=0.5, ge=0.0, le=1.0)
    priority: float = 3.0

    @model_validator(mode="after")
    def _ordered(self) -> ConfidenceBandSection:
        if self.low >= self.high:
            raise ValueError("low must be below high")
        return self


class ClassSamplerSection(SamplerSection):
    classes: list[str] = Field(default_factory=lambda: ["defect"], max_length=1000)
    priority: float = 4.0


class CountAnomalySection(SamplerSection):
    z: float = Field(default=3.0, gt=0)
    min_delta: float = Field(default=2.0, ge=0)
    priority: float = 2.0


class FlickerSection(SamplerSection):
    iou_threshold: float = Field(default=0.3, gt=0.0, le=1.0)
    priority: float = 3.0


class DisagreementSection(SamplerSection):
    every_n: int = Field(default=10, ge=1)
    max_agreement: float = Field(default=0.7, ge=0.0, le=1.0)
    priority: float = 5.0


class DriftSection(SamplerSection):
    """A uniform sample of the line while what the model reports has moved away from the
    camera's own baseline: the class mix by ``shift`` (L1 of the class shares, 0-2) or the
    detections per frame by ``count_change`` (relative)."""

    shift: float = Field(default=0.5, gt=0.0, le=2.0)
    count_change: float = Field(default=0.5, gt=0.0)
    probability: float = Field(default=0.1, gt=0.0, le=1.0)
    fast_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    slow_s: float = Field(default=3600.0, gt=0.0, le=7 * 86400.0)
    warmup_s: float = Field(default=120.0, ge=0.0, le=86400.0, description="baseline first")
    priority: float = 3.5

    @model_validator(mode="after")
    def _fast_below_slow(self) -> DriftSection:
        if self.fast_s >= self.slow_s:
            raise ValueError("fast_s must be below slow_s")
        return self


class RandomSamplerSection(SamplerSection):
    probability: float = Field(default=0.01, ge=0.0, le=1.0)
    priority: float = 0.5


class MiningSection(_Section):
    enabled: bool = True
    # Without storage nothing uploads what is mined, and the spool fills toward its quota for
    # nobody: mining is off then, unless examples should be kept (to enable storage later, or
    # to collect the spool by hand).
    spool_without_storage: bool = False
    queue_size: int = Field(default=16, ge=1, le=1024)
    dedup_max_distance: int = Field(default=4, ge=0, le=64)
    dedup_history: int = Field(default=64, ge=1, le=10_000)
    confidence_band: ConfidenceBandSection = ConfidenceBandSection()
    classes: ClassSamplerSection = ClassSamplerSection()
    count_anomaly: CountAnomalySection = CountAnomalySection()
    flicker: FlickerSection = FlickerSection()
    disagreement: DisagreementSection = DisagreementSection()
    drift: DriftSection = DriftSection()
    random: RandomSamplerSection = RandomSamplerSection()


# A candidate slower than this many times the running model is refused (smoke check) or
# rolled back (probation). 3, not 2: a model with the part inspector fused in cost 1.65x
# the detector alone when it cropped every top anchor (1.18x since it crops each part once;
# benchmarks/inspector.py), and beside a second agent on the same 2 cores CI timed one at
# 2.09x (29.5 vs 14.1 ms) and refused a good update: one-frame timings on a shared box
# swing that much. With one crop a part, the demo's two agents reported the fused v2 at
# 1.07x and 1.35x their running bootstrap, each timed beside the other: 2x would hold there,
# by a margin a trainer finishing on the same box could eat. Keeping up with the line is the
# rollout's fps check (min_fps_ratio); this factor only keeps a far slower model off the
# line. The OTA policy and the smoke check default to it too.
DEFAULT_LATENCY_FACTOR = 3.0


class OtaSection(_Section):
    """Model updates over MQTT. Only manifests and desired states signed by one of
    ``trusted_keys`` (key id -> PEM public key file) are ever acted upon."""

    enabled: bool = False
    model_name: Identifier = "line-detector"
    trusted_keys: dict[Identifier, Path] = Field(default_factory=dict, max_length=32)
    probation_s: float = Field(default=60.0, ge=0.0, le=86400)
    max_error_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    latency_factor: float = Field(default=DEFAULT_LATENCY_FACTOR, ge=1.0, le=100.0)
    max_boot_attempts: int = Field(default=2, ge=1, le=100)
    keep_versions: int = Field(default=3, ge=2, le=100)
    # After probation the running model is still watched, window by window (0 s: off). Over
    # max_error_rate: "rollback" to the previous good version when the store has one, else
    # (or with "report") the reported state says why; the model keeps running.
    health_interval_s: float = Field(default=60.0, ge=0.0, le=86400)
    health_min_frames: int = Field(default=100, ge=1)
    health_action: Literal["report", "rollback"] = "rollback"
    # Transient download failures back off from download_retry_s, doubling up to the cap;
    # permanent ones (missing or refused artifact, wrong size) fail the update at once.
    download_retry_s: float = Field(default=5.0, gt=0.0, le=3600)
    download_retry_max_s: float = Field(default=300.0, gt=0.0, le=86400)
    # Paces model downloads (0 = as fast as the store sends): leaves room on the plant
    # network for the cameras, and spreads the download's CPU work on the box.
    download_bandwidth_bytes_per_s: float = Field(default=0.0, ge=0.0, description="0 = unlimited")

    @model_validator(mode="after")
    def _needs_keys(self) -> OtaSection:
        if self.enabled and not self.trusted_keys:
            raise ValueError("ota.enabled needs at least one entry in ota.trusted_keys")
        return self


class LoggingSection(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = True


def _default_cameras() -> list[SyntheticCamera | StreamCamera]:
    return [SyntheticCamera(id="cam0")]


class AgentConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LINEFLEET_", env_nested_delimiter="__", extra="forbid"
    )

    device: DeviceSection = DeviceSection()
    cameras: list[CameraConfig] = Field(
        default_factory=_default_cameras, min_length=1, max_length=64
    )
    model: ModelSection = ModelSection()
    mqtt: MqttSection = MqttSection()
    api: ApiSection = ApiSection()
    storage: StorageSection = StorageSection()
    spool: SpoolSection = SpoolSection()
    mining: MiningSection = MiningSection()
    ota: OtaSection = OtaSection()
    logging: LoggingSection = LoggingSection()
    state_dir: Path = Path("/var/lib/linefleet")
    stall_timeout_s: float = Field(default=20.0, gt=0)

    @model_validator(mode="after")
    def _ota_needs_mqtt(self) -> AgentConfig:
        if self.ota.enabled and not self.mqtt.enabled:
            raise ValueError("ota.enabled needs mqtt.enabled: desired states come over MQTT")
        return self

    @model_validator(mode="after")
    def _unique_camera_ids(self) -> AgentConfig:
        ids = [c.id for c in self.cameras]
        if len(set(ids)) != len(ids):
            raise ValueError(f"camera ids must be unique, got {ids}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first, then the file's values passed as init kwargs: env wins.
        return (env_settings, init_settings)


def resolve_secret_files(config: AgentConfig) -> AgentConfig:
    """Read ``*_file`` secrets at start-up (kept out of validators: they must not do I/O)."""
    return config.model_copy(update=with_secret_files(config.mqtt, config.storage))


def load_config(path: Path | None) -> AgentConfig:
    """Config from ``path`` (or defaults) plus env overrides; :class:`ConfigError` if invalid."""
    data = read_yaml(path) if path is not None else {}
    try:
        return AgentConfig(**data)
    except ValidationError as exc:
        raise config_error(exc, str(path or "defaults")) from exc
