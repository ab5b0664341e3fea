"""``model.runtime: auto``: the fastest runtime installed on this box whose detections agree
with onnxruntime fp32 (the reference the gate measured), chosen when a model is loaded.

Each installed runtime loads the model; each runs the same probe images; the reference's
detections are the yardstick (boxes of the same class matched at an IoU, over the larger
set). A runtime that cannot load the model, or whose detections disagree, is refused with
its reason; the reference always qualifies, so a box never ends up without a model. The
trials, with their measured latency, are kept for ``/status``.

Probe images: at OTA staging, the line's own recent frames (the plant's parts, light and
camera judge the agreement), each model run as model work in the line's gaps so the live
model never waits behind a trial. At first start no frame exists yet: the synthetic line at
the model's input size stands in (it costs no camera time), and so it does when a stalled
line left fewer than ``MIN_LIVE_PROBE_IMAGES`` frames.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray

from edge_agent.errors import EdgeAgentError
from edge_agent.inference.backend import RUNTIMES, CancelToken, Runtime
from edge_agent.inference.preprocess import letterbox
from edge_agent.inference.runner import InferenceRunner, RunnerOptions
from shared.detections import Detections, count_matches
from shared.synth import LineConfig, SyntheticLine

log = logging.getLogger(__name__)

REFERENCE: Runtime = "onnxruntime"
MIN_LIVE_PROBE_IMAGES = 3

T = TypeVar("T")
# Runs one piece of model work (given a token a live frame may cancel it with) and returns its
# result; at staging the pipeline's ``call_between_batches``, which reruns cancelled work in a
# later gap.
ModelWorkRunner = Callable[[Callable[[CancelToken], Any]], Any]


def run_in_place(work: Callable[[CancelToken], T]) -> T:
    return work(CancelToken())


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
    # What the runtimes were judged on: the line's recent frames, or the synthetic line.
    probe: Literal["live", "synthetic"] = "synthetic"
    probe_images: int = 0


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
    runners: dict[Runtime, InferenceRunner],
    blobs: list[NDArray[np.floating]],
    runs: int,
    run_model_work: ModelWorkRunner,
) -> dict[Runtime, float]:
    """Median model run per runtime, measured in alternating slices of three runs, so a burst
    of load on the box falls on all of them alike. Each run is one piece of model work."""

    times: dict[Runtime, list[float]] = {name: [] for name in runners}
    for start in range(0, runs, 3):
        for name, runner in runners.items():
            for i in range(start, min(start + 3, runs)):
                work = functools.partial(_timed_run, runner, blobs[i % len(blobs)])
                times[name].append(float(run_model_work(work)))
    return {name: statistics.median(values) * 1000.0 for name, values in times.items()}


def _timed_run(runner: InferenceRunner, blob: NDArray[np.floating], cancel: CancelToken) -> float:
    started = time.perf_counter()
    runner.run(blob, cancel=cancel)
    return time.perf_counter() - started


def _detect_one(runner: InferenceRunner, image: NDArray[np.uint8], _cancel: CancelToken) -> Any:
    return runner.detect([image])[0]


def _detect_each(
    runner: InferenceRunner, images: list[NDArray[np.uint8]], run_model_work: ModelWorkRunner
) -> list[Detections]:
    """One piece of model work per image: a live frame waits for one run at most."""
    return [run_model_work(functools.partial(_detect_one, runner, image)) for image in images]


def choose_runtime(
    load: Callable[[RunnerOptions], InferenceRunner],
    options: RunnerOptions,
    *,
    live_images: list[NDArray[np.uint8]] | None = None,
    run_model_work: ModelWorkRunner = run_in_place,
    min_agreement: float = 0.95,
    iou: float = 0.9,
    runs: int = 12,
) -> tuple[InferenceRunner, RuntimeChoice]:
    """Load the model in every runtime (``load`` builds a runner for given options) and keep
    the fastest eligible one; the others are closed. ``live_images``: the line's recent
    frames, used when there are at least ``MIN_LIVE_PROBE_IMAGES``."""
    reference = load(dataclasses.replace(options, runtime=REFERENCE))
    info = reference.info
    live = live_images is not None and len(live_images) >= MIN_LIVE_PROBE_IMAGES
    images = list(live_images or []) if live else probe_images(info.input_height, info.input_width)
    expected = _detect_each(reference, images, run_model_work)
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
            agreed = agreement(_detect_each(runner, images, run_model_work), expected, iou)
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
    measured = _median_runs_ms(runners, blobs, runs, run_model_work)
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
    choice = RuntimeChoice(
        chosen,
        tuple(sorted(trials, key=lambda t: t.runtime)),
        probe="live" if live else "synthetic",
        probe_images=len(images),
    )
    log.info(
        "runtime chosen",
        extra={
            "runtime": chosen,
            "probe": choice.probe,
            "trials": [dataclasses.asdict(t) for t in choice.trials],
        },
    )
    return runners[chosen], choice
