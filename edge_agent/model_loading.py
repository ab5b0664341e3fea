"""Loading a model version the way the line runs it: the fp32 reference as configured, or the
fastest (runtime, model file) that agrees with it (:mod:`edge_agent.inference.selection`),
remembered across restarts (:mod:`edge_agent.inference.choice_cache`)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeGuard

from pydantic import ValidationError

from edge_agent.config import ModelSection
from edge_agent.errors import EdgeAgentError, ModelLoadError
from edge_agent.frame_path import ActiveModel
from edge_agent.inference import RUNTIMES, InferenceRunner, RunnerOptions, Runtime
from edge_agent.inference.choice_cache import ChoiceCache, choice_key
from edge_agent.inference.selection import (
    AgreementRule,
    ModelWorkRunner,
    RuntimeChoice,
    RuntimeTrial,
    choose_runtime,
    run_in_place,
)
from edge_agent.inference.variants import (
    ModelFile,
    PrecisionSetting,
    model_files,
    wanted_variants,
)
from shared.digests import file_sha256
from shared.manifest import ModelManifest

log = logging.getLogger(__name__)


def _runner_factory(
    manifest: ModelManifest | None,
) -> Callable[[ModelFile, RunnerOptions], InferenceRunner]:
    """Builds a runner for one of the version's model files; the manifest (if any) pins
    classes, input size and format."""
    if manifest is None:
        return lambda file, options: InferenceRunner(file.path, options)
    return lambda file, options: InferenceRunner(
        file.path,
        options,
        class_names=tuple(manifest.class_names),
        expected_input=(manifest.input.height, manifest.input.width),
        output_format=manifest.output_format,
    )


def _active(
    runner: InferenceRunner,
    path: Path,
    manifest: ModelManifest | None,
    choice: RuntimeChoice | None = None,
) -> ActiveModel:
    if manifest is None:
        return ActiveModel(runner, path.stem, None, runtime_choice=choice)
    return ActiveModel(
        runner, manifest.model_name, manifest.version, manifest.artifact.sha256, choice
    )


def load_model(path: Path, options: RunnerOptions, manifest: ModelManifest | None) -> ActiveModel:
    """Load and warm up the fp32 model in the runtime ``options`` names."""
    return _active(_runner_factory(manifest)(ModelFile("fp32", path), options), path, manifest)


@dataclass(frozen=True)
class Choosing:
    """What ``model`` config allows the agent to choose among, and how it judges agreement."""

    runtime: Literal["onnxruntime", "openvino", "auto"]
    precision: PrecisionSetting
    rule: AgreementRule = dataclasses.field(default_factory=AgreementRule)

    @classmethod
    def from_config(cls, model: ModelSection) -> Choosing:
        rule = AgreementRule(
            min_agreement=model.runtime_min_agreement,
            match_iou=model.runtime_match_iou,
            variant_match_iou=model.variant_match_iou,
            score_margin=model.runtime_score_margin,
        )
        return cls(model.runtime, model.precision, rule)

    def settings(self, runtimes: Sequence[str], refused: dict[str, str]) -> dict[str, Any]:
        """What a choice depended on besides the files and the box (its cache key)."""
        return {
            "runtimes": list(runtimes),
            "precision": self.precision,
            "agreement": dataclasses.asdict(self.rule),
            "refused": sorted(refused),
        }

    def needed(self, manifest: ModelManifest | None, options: RunnerOptions) -> bool:
        """Whether there is a choice to make (several runtimes, or variants for this box to
        try), or a pinned precision to report on."""
        if self.runtime == "auto" or self.precision in ("fp16", "int8"):
            return True
        return bool(wanted_variants(manifest, options, self.precision))


def load_model_choosing(
    path: Path,
    options: RunnerOptions,
    manifest: ModelManifest | None,
    choosing: Choosing,
    *,
    live_images: list[Any] | None = None,
    run_model_work: ModelWorkRunner = run_in_place,
    cache: ChoiceCache | None = None,
    reuse: bool = False,
) -> ActiveModel:
    """Load the fastest (runtime, model file) that agrees with onnxruntime fp32 (on
    ``live_images`` when there are enough, each run as ``run_model_work``). ``cache``
    records the choice; with ``reuse``, a choice recorded for the same files, box and
    settings is loaded directly instead (a restart)."""
    files, refused = model_files(path, manifest, options, choosing.precision)
    runtimes = RUNTIMES if choosing.runtime == "auto" else (choosing.runtime,)
    factory = _runner_factory(manifest)
    key = None
    if cache is not None:
        digests = [(f, _file_digest(f, manifest)) for f in files]
        key = choice_key(digests, options, choosing.settings(runtimes, refused))
        remembered = cache.get(key) if reuse else None
        if remembered is not None:
            model = _load_remembered(
                remembered, files, refused, options=options, path=path, manifest=manifest
            )
            if model is not None:
                return model
    runner, choice = choose_runtime(
        factory,
        options,
        files,
        runtimes=runtimes,
        refused=refused,
        live_images=live_images,
        run_model_work=run_model_work,
        rule=choosing.rule,
    )
    if cache is not None and key is not None:
        cache.put(key, choice.chosen, choice.precision)
    return _active(runner, path, manifest, choice)


def _file_digest(file: ModelFile, manifest: ModelManifest | None) -> str:
    """The manifest's digest (the file was checked against it), else the file's own."""
    if manifest is not None:
        if file.precision == "fp32":
            return manifest.artifact.sha256
        variant = manifest.variant(file.precision)
        if variant is not None:
            return variant.artifact.sha256
    return file_sha256(file.path)


def _is_runtime(name: str) -> TypeGuard[Runtime]:
    return name in RUNTIMES


def _load_remembered(
    remembered: tuple[str, str],
    files: list[ModelFile],
    refused: dict[str, str],
    *,
    options: RunnerOptions,
    path: Path,
    manifest: ModelManifest | None,
) -> ActiveModel | None:
    """The remembered (runtime, precision), loaded; None when it no longer applies or fails
    to load (the caller then chooses again)."""
    runtime, precision = remembered
    file = next((f for f in files if f.precision == precision and f.candidate), None)
    if file is None or not _is_runtime(runtime) or not file.vouched_for(runtime):
        return None
    try:
        runner = _runner_factory(manifest)(file, dataclasses.replace(options, runtime=runtime))
    except EdgeAgentError as exc:
        log.warning("remembered runtime choice failed: choosing again", extra={"error": str(exc)})
        return None
    trials = [
        RuntimeTrial("*", None, None, None, reason[:300], name) for name, reason in refused.items()
    ]
    trials.append(RuntimeTrial(runtime, runner.provider, None, None, None, precision))
    choice = RuntimeChoice(
        runtime,
        tuple(trials),
        probe="remembered",
        precision=precision,
    )
    log.info("runtime choice remembered", extra={"runtime": runtime, "precision": precision})
    return _active(runner, path, manifest, choice)


def read_local_manifest(model_path: Path) -> ModelManifest | None:
    """``manifest.json`` beside a locally configured model, if there is one."""
    candidate = model_path.with_name("manifest.json")
    if not candidate.is_file():
        return None
    try:
        return ModelManifest.model_validate_json(candidate.read_bytes())
    except (ValidationError, OSError) as exc:
        raise ModelLoadError(f"{candidate} is not a valid manifest: {exc}") from exc
