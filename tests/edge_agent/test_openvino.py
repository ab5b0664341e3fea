"""OpenVINO behind the runner's one interface: same checks, same pre/post-processing, the
same detections as onnxruntime; cancellable; a missing runtime is an error, not a fallback."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.errors import ModelIncompatibleError, ModelLoadError, RunCancelledError
from edge_agent.inference import CancelToken, InferenceRunner, RunnerOptions, selection
from edge_agent.inference.choice_cache import ChoiceCache
from edge_agent.inference.selection import choose_runtime
from edge_agent.inference.variants import ModelFile
from shared.synth import LineConfig, SyntheticLine
from tests.edge_agent.onnx_models import brightness_detector

NAMES = ("bolt", "nut", "washer", "bracket", "defect")
OPENVINO = RunnerOptions(runtime="openvino", openvino_precision="f32", intra_op_threads=2)


def test_detections_match_onnxruntime_on_the_synthetic_line(tmp_path: Path) -> None:
    model = brightness_detector(tmp_path / "det.onnx", names=list(NAMES), size=320)
    reference = InferenceRunner(model)
    candidate = InferenceRunner(model, OPENVINO)
    assert candidate.provider == "OpenVINO:CPU:f32" and candidate.on_cpu
    assert candidate.info.class_names == NAMES, "names read from the ONNX metadata"
    assert candidate.info == reference.info.__class__(
        **{**reference.info.__dict__, "provider": candidate.provider}
    )
    line = SyntheticLine(LineConfig(width=640, height=480, seed=3))
    frames = [line.next_frame().image for _ in range(6)]
    for got, want in zip(candidate.detect(frames), reference.detect(frames), strict=True):
        assert len(got) == len(want) > 0
        # Equal scores may come out of NMS in either order: compare as sorted rows.
        rows = [
            np.column_stack([d.class_id, d.xyxy.round(2), d.confidence.round(4)])
            for d in (got, want)
        ]
        ordered = [r[np.lexsort(r.T[::-1])] for r in rows]
        np.testing.assert_allclose(ordered[0], ordered[1], atol=0.01)


def test_a_run_can_be_cancelled_and_the_model_goes_on(tmp_path: Path) -> None:
    slow = InferenceRunner(brightness_detector(tmp_path / "slow.onnx", busy_nodes=300), OPENVINO)
    blob = np.full((1, 3, 64, 64), 0.5, dtype=np.float32)
    expected = slow.run(blob)
    token = CancelToken()
    timer = threading.Timer(0.002, token.cancel)
    timer.start()
    with pytest.raises(RunCancelledError):
        slow.run(blob, cancel=token)
    timer.join()
    already = CancelToken()
    already.cancel()
    with pytest.raises(RunCancelledError):
        slow.warm_up(1, cancel=already)
    np.testing.assert_allclose(slow.run(blob, cancel=CancelToken()), expected, rtol=1e-5)


def test_the_same_refusals_as_onnxruntime(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match=r"OpenVINO refused junk\.onnx"):
        InferenceRunner(junk, OPENVINO)
    nan = brightness_detector(tmp_path / "nan.onnx", poison_nan=True, names=list(NAMES))
    with pytest.raises(Exception, match="NaN"):
        InferenceRunner(nan, OPENVINO)
    model = brightness_detector(tmp_path / "det.onnx", names=list(NAMES))
    with pytest.raises(ModelIncompatibleError, match="manifest says 96x96"):
        InferenceRunner(model, OPENVINO, expected_input=(96, 96))


def test_a_missing_runtime_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    model = brightness_detector(tmp_path / "det.onnx", names=list(NAMES))
    script = (
        "import sys; sys.modules['openvino'] = None\n"
        "from pathlib import Path\n"
        "from edge_agent.inference import InferenceRunner, RunnerOptions\n"
        "from edge_agent.errors import ModelLoadError\n"
        "try:\n"
        f"    InferenceRunner(Path({str(model)!r}), RunnerOptions(runtime='openvino'))\n"
        "except ModelLoadError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'linefleet[edge-openvino]'" in done.stdout


def line_agent(tmp_path: Path, model_options: str) -> Agent:
    """An agent on the synthetic line, MQTT and API off, with these ``model`` options."""
    model = brightness_detector(tmp_path / "det.onnx", names=list(NAMES))
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"""
device: {{id: edge-ov, fleet: test}}
cameras: [{{kind: synthetic, id: cam0, width: 320, height: 320, fps: 30}}]
model: {{path: {model}, {model_options}}}
mqtt: {{enabled: false}}
api: {{enabled: false}}
state_dir: {tmp_path / "state"}
"""
    )
    return Agent(load_config(config))


def test_an_agent_runs_the_line_on_openvino_and_says_so(tmp_path: Path) -> None:
    agent = line_agent(tmp_path, "runtime: openvino, openvino_precision: f32")
    agent.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and agent.status().pipeline.processed < 20:
            time.sleep(0.05)
        status = agent.status()
        assert status.pipeline.processed >= 20 and status.pipeline.inference_errors == 0
        assert status.model is not None and status.model.provider == "OpenVINO:CPU:f32"
        assert agent.heartbeat().provider == "OpenVINO:CPU:f32"
    finally:
        agent.stop()


def test_auto_picks_the_fastest_runtime_that_agrees(tmp_path: Path) -> None:
    model = brightness_detector(tmp_path / "det.onnx", names=list(NAMES), size=320)
    runner, choice = choose_runtime(
        lambda file, options: InferenceRunner(file.path, options),
        RunnerOptions(),
        [ModelFile("fp32", model)],
    )
    trials = {t.runtime: t for t in choice.trials}
    assert set(trials) == {"onnxruntime", "openvino"}
    assert all(t.refused is None and t.agreement == 1.0 for t in trials.values())
    latencies = {name: t.latency_ms for name, t in trials.items()}
    assert choice.chosen == min(latencies, key=lambda n: latencies[n] or 0.0)
    assert runner.provider == trials[choice.chosen].device


def test_auto_refuses_a_runtime_that_disagrees_or_cannot_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = brightness_detector(tmp_path / "det.onnx", names=list(NAMES), size=320)
    # A runtime whose output differs from the reference's (here: a coarser model behind it),
    # and one that fails on the probe frames.
    coarse = brightness_detector(tmp_path / "coarse.onnx", names=list(NAMES), size=64)
    failing = brightness_detector(tmp_path / "nan.onnx", names=list(NAMES), nan_when_dark=True)
    reference = [ModelFile("fp32", model)]

    def disagreeing(_file: ModelFile, options: RunnerOptions) -> InferenceRunner:
        return InferenceRunner(model if options.runtime == "onnxruntime" else coarse, options)

    runner, choice = choose_runtime(disagreeing, RunnerOptions(), reference)
    trials = {t.runtime: t for t in choice.trials}
    assert choice.chosen == "onnxruntime" and runner.provider == "CPUExecutionProvider"
    refused = trials["openvino"].refused
    assert refused is not None and "agree" in refused, refused

    def nan_on_the_line(_file: ModelFile, options: RunnerOptions) -> InferenceRunner:
        return InferenceRunner(model if options.runtime == "onnxruntime" else failing, options)

    # Dark probe frames: the second model passes its warm-up (grey) and fails on them.
    monkeypatch.setattr(selection, "probe_images", lambda h, w: [np.zeros((h, w, 3), np.uint8)] * 3)
    _, choice = choose_runtime(nan_on_the_line, RunnerOptions(), reference)
    failed = next(t for t in choice.trials if t.runtime == "openvino")
    assert choice.chosen == "onnxruntime" and "NaN" in (failed.refused or "")

    def broken(_file: ModelFile, options: RunnerOptions) -> InferenceRunner:
        if options.runtime == "openvino":
            raise ModelLoadError("OpenVINO refused det.onnx on CPU: unsupported op")
        return InferenceRunner(model, options)

    _, choice = choose_runtime(broken, RunnerOptions(), reference)
    assert choice.chosen == "onnxruntime"
    assert "unsupported op" in (
        next(t for t in choice.trials if t.runtime == "openvino").refused or ""
    )


def test_live_frames_judge_the_runtimes_each_run_as_one_piece_of_model_work(
    tmp_path: Path,
) -> None:
    """At OTA staging: the line's recent frames (when there are enough) are the probe, and
    every model run is handed to the line's scheduler, one frame's run at a time."""
    model = brightness_detector(tmp_path / "det.onnx", names=list(NAMES), size=320)
    line = SyntheticLine(LineConfig(width=640, height=480, seed=11))
    live = [line.next_frame().image for _ in range(4)]
    pieces: list[object] = []

    def between_batches(work: Callable[[CancelToken], object]) -> object:
        pieces.append(work)
        return work(CancelToken())

    def load(file: ModelFile, options: RunnerOptions) -> InferenceRunner:
        return InferenceRunner(file.path, options)

    _, choice = choose_runtime(
        load,
        RunnerOptions(),
        [ModelFile("fp32", model)],
        live_images=live,
        run_model_work=between_batches,
        runs=6,
    )
    assert (choice.probe, choice.probe_images) == ("live", 4)
    judged = [t for t in choice.trials if t.agreement is not None]
    timed = [t for t in choice.trials if t.latency_ms is not None]
    assert len(judged) == 2, choice.trials  # both runtimes loaded and were compared
    # One detection per live frame for each runtime compared, then each eligible's runs.
    assert len(pieces) == 4 * len(judged) + 6 * len(timed)
    _, too_few = choose_runtime(
        load, RunnerOptions(), [ModelFile("fp32", model)], live_images=live[:2], runs=3
    )
    assert too_few.probe == "synthetic" and too_few.probe_images == 6


def test_an_agent_on_auto_reports_its_choice(tmp_path: Path) -> None:
    agent = line_agent(tmp_path, "runtime: auto")
    agent.start()
    try:
        status = agent.status()
        assert status.model is not None and status.model.runtime_choice is not None
        choice = status.model.runtime_choice
        assert {t.runtime for t in choice.trials} == {"onnxruntime", "openvino"}
        chosen = next(t for t in choice.trials if t.runtime == choice.chosen)
        assert status.model.provider == chosen.device
        assert agent.runner_options.runtime == choice.chosen, "the shadow model loads in it"
        dumped = status.model_dump(mode="json")["model"]["runtime_choice"]
        assert dumped["chosen"] == choice.chosen
    finally:
        agent.stop()


def test_a_restart_loads_the_remembered_choice_and_a_change_chooses_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same files on the same box with the same settings: a restart loads the runtime
    chosen before, without loading and timing every candidate again."""
    first = line_agent(tmp_path, "runtime: auto")
    first.load_configured_model()
    chosen = first.models.current
    assert chosen is not None and chosen.runtime_choice is not None
    assert chosen.runtime_choice.probe == "synthetic"
    chosen.runner.close()

    loads: list[str] = []
    original = InferenceRunner.__init__

    def counting(self: InferenceRunner, path: Path, options: RunnerOptions, **kw: object) -> None:
        loads.append(options.runtime)
        original(self, path, options, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(InferenceRunner, "__init__", counting)
    again = line_agent(tmp_path, "runtime: auto")
    again.load_configured_model()
    remembered = again.models.current
    assert remembered is not None and remembered.runtime_choice is not None
    assert remembered.runtime_choice.probe == "remembered"
    assert remembered.runtime_choice.chosen == chosen.runtime_choice.chosen
    assert loads == [chosen.runtime_choice.chosen]  # one load, no trial
    remembered.runner.close()

    # Another setting that shaped the choice (here the agreement threshold): chosen afresh.
    loads.clear()
    changed = line_agent(tmp_path, "runtime: auto, runtime_min_agreement: 0.9")
    changed.load_configured_model()
    assert changed.models.current is not None
    assert changed.models.current.runtime_choice is not None
    assert changed.models.current.runtime_choice.probe == "synthetic"
    assert sorted(set(loads)) == ["onnxruntime", "openvino"]
    changed.models.current.runner.close()


def test_an_unreadable_choice_file_is_no_choice(tmp_path: Path) -> None:
    cache = ChoiceCache(tmp_path / "runtime-choice.json")
    assert cache.get("k") is None
    (tmp_path / "runtime-choice.json").write_text("{not json")
    assert cache.get("k") is None
    cache.put("k", "openvino", "int8")
    assert cache.get("k") == ("openvino", "int8")
    (tmp_path / "runtime-choice.json").write_text('{"k": {"runtime": 3}}')
    assert cache.get("k") is None
    (tmp_path / "runtime-choice.json").write_text("[1, 2]")
    assert cache.get("k") is None


def test_variants_are_tried_on_the_runtimes_the_trainer_vouched_for_only(tmp_path: Path) -> None:
    model = brightness_detector(tmp_path / "det.onnx", names=list(NAMES), size=320)
    variant = brightness_detector(tmp_path / "det.int8.onnx", names=list(NAMES), size=320)
    files = [ModelFile("fp32", model), ModelFile("int8", variant, runtimes=("onnxruntime",))]
    runner, choice = choose_runtime(
        lambda file, options: InferenceRunner(file.path, options),
        RunnerOptions(),
        files,
        refused={"fp16": "model.fp16.onnx sha256 0123… is not the manifest's 4567…"},
        runs=3,
    )
    trials = {(t.runtime, t.precision): t for t in choice.trials}
    assert set(trials) == {
        ("onnxruntime", "fp32"),
        ("openvino", "fp32"),
        ("onnxruntime", "int8"),
        ("openvino", "int8"),
        ("*", "fp16"),
    }
    assert "onnxruntime only" in (trials[("openvino", "int8")].refused or "")
    assert trials[("onnxruntime", "int8")].agreement == 1.0
    timed = {k: t.latency_ms for k, t in trials.items() if t.latency_ms is not None}
    assert set(timed) == {("onnxruntime", "fp32"), ("openvino", "fp32"), ("onnxruntime", "int8")}
    assert (choice.chosen, choice.precision) == min(timed, key=lambda k: timed[k] or 0.0)
    assert "refused fp16/*: model.fp16.onnx sha256" in choice.summary()
    runner.close()


def test_the_choice_key_changes_with_the_files_the_box_and_the_runtimes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_agent.inference import choice_cache

    files = [(ModelFile("fp32", tmp_path / "m.onnx"), "ab" * 32)]
    key = choice_cache.choice_key(files, RunnerOptions(), {"runtimes": ["onnxruntime"]})
    assert key == choice_cache.choice_key(files, RunnerOptions(), {"runtimes": ["onnxruntime"]})
    other_file = [(ModelFile("fp32", tmp_path / "m.onnx"), "cd" * 32)]
    assert key != choice_cache.choice_key(
        other_file, RunnerOptions(), {"runtimes": ["onnxruntime"]}
    )
    assert key != choice_cache.choice_key(
        files, RunnerOptions(intra_op_threads=1), {"runtimes": ["onnxruntime"]}
    )
    monkeypatch.setattr(choice_cache, "_installed", lambda package: "99.0")  # an upgrade
    assert key != choice_cache.choice_key(files, RunnerOptions(), {"runtimes": ["onnxruntime"]})
