"""What the OTA controller works with, as a few collaborators instead of a long argument list:
who the device is, the running line it swaps models into, how it loads a candidate, and where
artifacts come from."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from edge_agent.frame_path import ActiveModel, ModelSlot, ModelWork, PipelineStats
from edge_agent.inference import RunnerOptions
from edge_agent.inference.variants import PrecisionSetting, wanted_variants
from shared.manifest import ModelManifest, ModelVariant

T = TypeVar("T")

ModelLoader = Callable[[Path, RunnerOptions, ModelManifest | None], ActiveModel]


@dataclass(frozen=True)
class OtaTarget:
    """This device, as the desired states it accepts and the reports it sends name it."""

    device_id: str
    fleet: str
    group: str | None
    model_name: str


@dataclass(frozen=True)
class ArtifactSource:
    """The object store model files are fetched from when a desired state brings no URL;
    ``None`` for a box without store credentials (presigned URLs only)."""

    s3_client: Any | None = None
    bucket: str | None = None


@dataclass(frozen=True)
class CandidateLoader:
    """Loads a model version the way the line runs it (``load`` is the agent's loader)."""

    options: RunnerOptions
    load: ModelLoader
    precision: PrecisionSetting = "auto"  # model.precision: which variants are worth fetching

    def variants_to_fetch(self, manifest: ModelManifest) -> list[ModelVariant]:
        """The variants this box may run (its accelerators, the configured precision)."""
        return wanted_variants(manifest, self.options, self.precision)

    def __call__(
        self, path: Path, manifest: ModelManifest | None, *, warm_up: bool = True
    ) -> ActiveModel:
        options = self.options
        if not warm_up:  # warmed up later, between two of the line's batches
            options = dataclasses.replace(options, warm_up_at_load=False)
        return self.load(path, options, manifest)


class RunningLine(Protocol):
    """What the controller needs of the running pipeline: the slot it swaps, the figures the
    health watch reads, and the two ways model work shares the line's infer workers."""

    @property
    def models(self) -> ModelSlot: ...

    @property
    def stats(self) -> PipelineStats: ...

    def call_between_batches(self, work: ModelWork[T], timeout_s: float = ...) -> T: ...

    def trial_on_live_frames(
        self,
        candidate: ActiveModel,
        frames: int,
        *,
        run_limit_s: float | None = ...,
        timeout_s: float = ...,
    ) -> list[float]: ...
