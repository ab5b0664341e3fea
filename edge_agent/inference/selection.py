"""``model.runtime: auto``: the fastest runtime installed on this box whose detections agree
with onnxruntime fp32 (the reference the gate measured), chosen when a model is loaded.

Each installed runtime loads the model; each runs the same probe images; the reference's
detections are the yardstick (boxes of the same class matched at an IoU, over the larger
set). A runtime that cannot load the model, or whose detections disagree, is refused with
its reason; the reference always qualifies, so a box never ends up without a model. The
trials, with their measured latency, are kept for ``/status``.

Probe images: the synthetic line at the model's input size. They cost no camera time and
exist at first start, before any frame; the plant's own frames would judge the agreement
better (a next step: probe on recent live frames at OTA staging).
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from edge_agent.errors import EdgeAgentError
from edge_agent.inference.backend import RUNTIMES, Runtime
from edge_agent.inference.preprocess import letterbox
from edge_agent.inference.runner import InferenceRunner, RunnerOptions
from shared.detections import Detections, count_matches
from shared.synth import LineConfig, SyntheticLine

log = logging.getLogger(__name__)

REFERENCE: Runtime = "onnxruntime"


@dataclass(frozen=True)
class RuntimeTrial:
    runtime: str
    device: str | None
    latency_ms: float | None  # median model run on the probe images
    agreement: float | None  # boxes matched with the reference's, over the larger set
    refused: str | None  # why it was not eligible


@dataclass(frozen=True)
class RuntimeChoice:
    chosen: Runtime
    trials: tuple[RuntimeTrial, ...]


def probe_images(
    height: int, width: int, count: int = 6, seed: int = 97
) -> list[NDArray[np.uint8]]:
    """Frames of the synthetic line, each padded to at least the model's input size."""
    config = LineConfig(width=max(width, 320), height=max(height, 320), seed=seed)
    line = SyntheticLine(config)
    return [line.next_frame().image for _ in range(count)]


def agreement(candidate: list[Detections], reference: list[Detections], iou: float) -> float:
    matched = sum(count_matches(c, r, iou) for c, r in zip(candidate, reference, strict=True))
    total = sum(max(len(c), len(r)) for c, r in zip(candidate, reference, strict=True))
    return 1.0 if total == 0 else matched / total


def _median_runs_ms(
    runners: dict[Runtime, InferenceRunner], blobs: list[NDArray[np.floating]], runs: int
) -> dict[Runtime, float]:
    """Median model run per runtime, measured in alternating slices of three runs, so a burst
    of load on the box falls on all of them alike."""
    times: dict[Runtime, list[float]] = {name: [] for name in runners}
    for start in range(0, runs, 3):
        for name, runner in runners.items():
            for i in range(start, min(start + 3, runs)):
                started = time.perf_counter()
                runner.run(blobs[i % len(blobs)])
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) * 1000.0 for name, values in times.items()}


def choose_runtime(
    load: Callable[[RunnerOptions], InferenceRunner],
    options: RunnerOptions,
    *,
    min_agreement: float = 0.95,
    iou: float = 0.9,
    runs: int = 12,
) -> tuple[InferenceRunner, RuntimeChoice]:
    """Load the model in every runtime (``load`` builds a runner for given options) and keep
    the fastest eligible one; the others are closed."""
    reference = load(dataclasses.replace(options, runtime=REFERENCE))
    info = reference.info
    images = probe_images(info.input_height, info.input_width)
    expected = reference.detect(images)
    blobs = [
        letterbox([image], info.input_height, info.input_width, dtype=info.input_dtype)[0]
        for image in images
    ]
    runners: dict[Runtime, InferenceRunner] = {REFERENCE: reference}
    agreements: dict[str, float] = {REFERENCE: 1.0}
    trials: list[RuntimeTrial] = []
    for runtime in RUNTIMES:
        if runtime == REFERENCE:
            continue
        try:
            runner = load(dataclasses.replace(options, runtime=runtime))
        except EdgeAgentError as exc:
            trials.append(RuntimeTrial(runtime, None, None, None, str(exc)[:300]))
            continue
        try:
            agreed = agreement(runner.detect(images), expected, iou)
        except EdgeAgentError as exc:  # e.g. non-finite output on these frames
            runner.close()
            trials.append(RuntimeTrial(runtime, runner.provider, None, None, str(exc)[:300]))
            continue
        if agreed < min_agreement:
            trials.append(
                RuntimeTrial(
                    runtime,
                    runner.provider,
                    None,
                    round(agreed, 4),
                    f"detections agree {agreed:.0%} with {REFERENCE} fp32 (< {min_agreement:.0%})",
                )
            )
            runner.close()
            continue
        runners[runtime] = runner
        agreements[runtime] = agreed
    measured = _median_runs_ms(runners, blobs, runs)
    for name, runner in runners.items():
        trials.append(
            RuntimeTrial(
                name, runner.provider, round(measured[name], 3), round(agreements[name], 4), None
            )
        )
    chosen: Runtime = min(runners, key=lambda name: measured[name])
    for name, runner in runners.items():
        if name != chosen:
            runner.close()
    choice = RuntimeChoice(chosen, tuple(sorted(trials, key=lambda t: t.runtime)))
    log.info(
        "runtime chosen",
        extra={
            "runtime": chosen,
            "trials": [dataclasses.asdict(t) for t in choice.trials],
        },
    )
    return runners[chosen], choice
