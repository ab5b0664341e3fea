"""The fastest (runtime, precision) on this box whose detections agree with onnxruntime fp32
(the reference the gate measured), chosen when a model is loaded.

Candidates: each allowed runtime (all installed ones with ``model.runtime: auto``) with each
model file the box has for the version: the fp32 reference and the variants the manifest lists
for this box's accelerators (INT8 for CPUs, fp16 for GPUs; see
:mod:`edge_agent.inference.variants`). Each loads; each runs the same probe images; the
reference's detections are the yardstick (:class:`AgreementRule`). A candidate that cannot
load, or whose detections disagree, is refused with its reason; the reference always
qualifies, so a box never ends up without a model. The trials,
with their measured latency, are kept for ``/status`` and the OTA report.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray

from edge_agent.errors import EdgeAgentError
from edge_agent.inference.backend import RUNTIMES, CancelToken, Runtime
from edge_agent.inference.preprocess import letterbox
from edge_agent.inference.runner import InferenceRunner, RunnerOptions
from edge_agent.inference.variants import ModelFile
from shared.detections import Detections, matched_masks
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
    runtime: str  # "*": a variant refused before any runtime tried it (e.g. its digest)
    device: str | None
    latency_ms: float | None  # median model run on the probe images
    agreement: float | None  # share of counted boxes matched (AgreementRule)
    refused: str | None  # why it was not eligible
    precision: str = "fp32"


@dataclass(frozen=True)
class RuntimeChoice:
    chosen: Runtime
    trials: tuple[RuntimeTrial, ...]
    # What the runtimes were judged on: the line's recent frames, or the synthetic line; or
    # "remembered": the choice made for the same files on this box before a restart.
    probe: Literal["live", "synthetic", "remembered"] = "synthetic"
    probe_images: int = 0
    precision: str = "fp32"  # of the model file chosen

    def chosen_trial(self) -> RuntimeTrial | None:
        return next(
            (
                t
                for t in self.trials
                if t.runtime == self.chosen and t.precision == self.precision and not t.refused
            ),
            None,
        )

    def summary(self) -> str:
        """One line for the OTA report: what runs, how fast against fp32, what was refused."""
        chosen = self.chosen_trial()
        reference = next(
            (t for t in self.trials if t.runtime == REFERENCE and t.precision == "fp32"), None
        )
        text = f"running {self.precision} on {self.chosen}"
        if chosen is not None and chosen.latency_ms is not None:
            text += f" ({chosen.latency_ms:.1f} ms"
            if reference is not None and reference.latency_ms and reference is not chosen:
                text += f"; fp32 on {REFERENCE} {reference.latency_ms:.1f} ms"
            text += ")"
        refused = [f"{t.precision}/{t.runtime}: {t.refused}" for t in self.trials if t.refused]
        if refused:
            text += "; refused " + "; ".join(refused)
        return text[:480]


def probe_images(
    height: int, width: int, count: int = 6, seed: int = 97
) -> list[NDArray[np.uint8]]:
    """Frames of the synthetic line at its own frame size (the scale the bootstrap model was
    trained at), or the model's input size if larger. Frames made at a 320 model's input
    size showed the parts at twice their trained scale: the bootstrap model scored them
    near its threshold, and its INT8 variant agreed on 79% of boxes there against 99% on
    the line's own frames."""
    default = LineConfig()
    config = LineConfig(
        width=max(width, default.width), height=max(height, default.height), seed=seed
    )
    line = SyntheticLine(config)
    return [line.next_frame().image for _ in range(count)]


def agreement(
    candidate: list[Detections],
    reference: list[Detections],
    iou: float,
    *,
    counted_from: float = 0.0,
) -> float:
    """The share of boxes scoring ``counted_from`` or more, on either side, that are matched
    one-to-one to a box of the other side (of any score it was decoded at) of the same class
    at ``iou``. 1.0 when no box counts."""
    agreed = counted = 0
    for c, r in zip(candidate, reference, strict=True):
        in_c, in_r = matched_masks(c, r, iou)
        counts_c, counts_r = c.confidence >= counted_from, r.confidence >= counted_from
        counted += int(counts_c.sum() + counts_r.sum())
        agreed += int((in_c & counts_c).sum() + (in_r & counts_r).sum())
    return 1.0 if counted == 0 else agreed / counted


@dataclass(frozen=True)
class AgreementRule:
    """When a candidate's detections agree with onnxruntime fp32's on the probe images.

    Every box the line would act on (scored at least the confidence threshold), on either
    side, must be matched by a box of the other side of the same class: at ``match_iou``
    for a runtime running the fp32 file itself (its boxes should be the reference's), or at
    ``variant_match_iou`` for a reduced-precision variant, the gate's own criterion (IoU
    0.5, as in mAP50): INT8 moves a 40-pixel box by a pixel or two, and the trainer has
    already measured what that costs on the held-out set; what the box checks is that the
    variant finds the same objects on this runtime and this line. The matching box may
    score down to ``score_margin`` under the threshold: a box one side scores 0.27 and the
    other 0.22, at a threshold of 0.25, is the same object, not a disagreement.

    Measured on the bootstrap yolov8n's INT8 variants (within 0.01 mAP50 of fp32 on 200
    held-out frames), 24 frames of the synthetic line: at 320, 96% of boxes at IoU 0.9 and
    99% at 0.5; at 640, 82% at IoU 0.9 with no margin (the earlier rule, which refused it),
    96-99% at IoU 0.5 with a margin of 0.15 (93-98% with 0.1).
    """

    min_agreement: float = 0.95
    match_iou: float = 0.9
    variant_match_iou: float = 0.5
    score_margin: float = 0.15

    def probe_threshold(self, conf_threshold: float) -> float:
        """What probe detections are decoded at: the partners a counted box may match."""
        return max(0.01, conf_threshold - self.score_margin)

    def agreement(
        self,
        candidate: list[Detections],
        reference: list[Detections],
        *,
        precision: str,
        conf_threshold: float,
    ) -> float:
        """``candidate`` and ``reference`` decoded at :meth:`probe_threshold`."""
        iou = self.match_iou if precision == "fp32" else self.variant_match_iou
        return agreement(candidate, reference, iou, counted_from=conf_threshold)


Candidate = tuple[Runtime, str]  # (runtime, precision)


def _median_runs_ms(
    runners: dict[Candidate, InferenceRunner],
    blobs: list[NDArray[np.floating]],
    runs: int,
    run_model_work: ModelWorkRunner,
) -> dict[Candidate, float]:
    """Median model run per runtime, measured in alternating slices of three runs, so a burst
    of load on the box falls on all of them alike. Each run is one piece of model work."""

    times: dict[Candidate, list[float]] = {name: [] for name in runners}
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


def _detect_one(
    runner: InferenceRunner, image: NDArray[np.uint8], conf: float, _cancel: CancelToken
) -> Any:
    return runner.detect([image], conf_threshold=conf)[0]


def _detect_each(
    runner: InferenceRunner,
    images: list[NDArray[np.uint8]],
    run_model_work: ModelWorkRunner,
    conf: float,
) -> list[Detections]:
    """One piece of model work per image: a live frame waits for one run at most."""
    return [run_model_work(functools.partial(_detect_one, runner, image, conf)) for image in images]


def choose_runtime(
    load: Callable[[ModelFile, RunnerOptions], InferenceRunner],
    options: RunnerOptions,
    files: Sequence[ModelFile],
    *,
    runtimes: Sequence[Runtime] = RUNTIMES,
    refused: Mapping[str, str] | None = None,
    live_images: list[NDArray[np.uint8]] | None = None,
    run_model_work: ModelWorkRunner = run_in_place,
    rule: AgreementRule = AgreementRule(),
    runs: int = 12,
) -> tuple[InferenceRunner, RuntimeChoice]:
    """Load each of ``files`` (the fp32 reference first, then variants) in each of
    ``runtimes`` (``load`` builds a runner for a file and options) and keep the fastest
    eligible candidate; the others are closed. ``refused``: variants turned down before
    loading (precision -> why), listed among the trials. ``live_images``: the line's recent
    frames, used when there are at least ``MIN_LIVE_PROBE_IMAGES``."""
    reference_file = files[0]
    if reference_file.precision != "fp32":
        raise ValueError("the first model file must be the fp32 reference")
    reference = load(reference_file, dataclasses.replace(options, runtime=REFERENCE))
    info = reference.info
    live = live_images is not None and len(live_images) >= MIN_LIVE_PROBE_IMAGES
    images = list(live_images or []) if live else probe_images(info.input_height, info.input_width)
    probe_conf = rule.probe_threshold(options.conf_threshold)
    expected = _detect_each(reference, images, run_model_work, probe_conf)
    blobs = [
        letterbox([image], info.input_height, info.input_width, dtype=info.input_dtype)[0]
        for image in images
    ]
    runners: dict[Candidate, InferenceRunner] = {}
    agreements: dict[Candidate, float] = {}
    if REFERENCE in runtimes and reference_file.candidate:
        runners[(REFERENCE, "fp32")] = reference
        agreements[(REFERENCE, "fp32")] = 1.0
    trials = [
        RuntimeTrial("*", None, None, None, reason[:300], precision)
        for precision, reason in (refused or {}).items()
    ]
    judge = _Judge(images, expected, run_model_work, rule)
    for file in files:
        for runtime in runtimes:
            if (runtime, file.precision) in runners or not file.candidate:
                continue
            if not file.vouched_for(runtime):
                trials.append(
                    RuntimeTrial(
                        runtime,
                        None,
                        None,
                        None,
                        f"the trainer measured this variant within tolerance on "
                        f"{', '.join(file.runtimes or ())} only",
                        file.precision,
                    )
                )
                continue
            trial = judge.try_candidate(load, dataclasses.replace(options, runtime=runtime), file)
            if isinstance(trial, RuntimeTrial):
                trials.append(trial)
                continue
            runner, agreed = trial
            runners[(runtime, file.precision)] = runner
            agreements[(runtime, file.precision)] = agreed
    if not runners:  # every allowed candidate refused: the reference runs, and says why
        runners[(REFERENCE, "fp32")] = reference
        agreements[(REFERENCE, "fp32")] = 1.0
    measured = _median_runs_ms(runners, blobs, runs, run_model_work)
    for (runtime, precision), runner in runners.items():
        trials.append(
            RuntimeTrial(
                runtime,
                runner.provider,
                round(measured[(runtime, precision)], 3),
                round(agreements[(runtime, precision)], 4),
                None,
                precision,
            )
        )
    chosen = min(runners, key=lambda candidate: measured[candidate])
    for candidate, runner in runners.items():
        if candidate != chosen:
            runner.close()
    if (REFERENCE, "fp32") not in runners:
        reference.close()
    choice = RuntimeChoice(
        chosen[0],
        tuple(sorted(trials, key=lambda t: (t.runtime, t.precision))),
        probe="live" if live else "synthetic",
        probe_images=len(images),
        precision=chosen[1],
    )
    log.info(
        "runtime chosen",
        extra={
            "runtime": chosen[0],
            "precision": chosen[1],
            "probe": choice.probe,
            "trials": [dataclasses.asdict(t) for t in choice.trials],
        },
    )
    return runners[chosen], choice


@dataclass(frozen=True)
class _Judge:
    """The yardstick every candidate is held to: the reference's detections on the probe."""

    images: list[NDArray[np.uint8]]
    expected: list[Detections]
    run_model_work: ModelWorkRunner
    rule: AgreementRule

    def try_candidate(
        self,
        load: Callable[[ModelFile, RunnerOptions], InferenceRunner],
        options: RunnerOptions,
        file: ModelFile,
    ) -> tuple[InferenceRunner, float] | RuntimeTrial:
        """The loaded runner and its agreement with the reference, or the refusing trial."""
        runtime, precision = options.runtime, file.precision
        try:
            runner = load(file, options)
        except EdgeAgentError as exc:
            return RuntimeTrial(runtime, None, None, None, str(exc)[:300], precision)
        try:
            detected = _detect_each(
                runner,
                self.images,
                self.run_model_work,
                self.rule.probe_threshold(options.conf_threshold),
            )
        except EdgeAgentError as exc:  # e.g. non-finite output on these frames
            runner.close()
            return RuntimeTrial(runtime, runner.provider, None, None, str(exc)[:300], precision)
        agreed = self.rule.agreement(
            detected,
            self.expected,
            precision=precision,
            conf_threshold=options.conf_threshold,
        )
        if agreed < self.rule.min_agreement:
            runner.close()
            return RuntimeTrial(
                runtime,
                runner.provider,
                None,
                round(agreed, 4),
                f"detections agree {agreed:.0%} with {REFERENCE} fp32 "
                f"(< {self.rule.min_agreement:.0%})",
                precision,
            )
        return runner, agreed
