"""The OTA state machine, one worker thread, driven by retained ``desired`` messages.

    desired ─▶ verifying ─▶ downloading ─▶ staged (loaded, smoke-checked on live frames)
            ─▶ active (swapped, on probation) ─▶ active (good) | rolled_back

The listener (:mod:`edge_agent.ota.listener`) only parses and hands over the newest desired
state from the MQTT callback; all slow work happens in this worker, so the network thread
never blocks. Whatever fails, the running model keeps running and the retained ``reported``
message says why.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from edge_agent import __version__
from edge_agent.bandwidth import TokenBucket
from edge_agent.config import DEFAULT_LATENCY_FACTOR
from edge_agent.errors import EdgeAgentError
from edge_agent.frame_path import ActiveModel
from edge_agent.ota.download import (
    CHUNK,
    DownloadError,
    PermanentDownloadError,
    download_artifact,
)
from edge_agent.ota.health import HealthPolicy, LifetimeWatch
from edge_agent.ota.listener import DesiredListener
from edge_agent.ota.parts import ArtifactSource, CandidateLoader, OtaTarget, RunningLine
from edge_agent.ota.smoke import LatencyComparison, RecentFrames, SmokeCheck
from edge_agent.ota.store import ModelStore, atomic_write
from edge_agent.ota.verify import (
    Expectations,
    OtaRejectedError,
    StaleDesiredError,
    verify_desired,
)
from shared.infra.mqtt_link import MqttLink
from shared.manifest import ModelManifest
from shared.messages import (
    DesiredAction,
    DesiredState,
    OtaState,
    ReportedState,
    ReportSequence,
    utc_now,
)
from shared.signing import Verifier
from shared.topics import Channel, Topics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OtaPolicy:
    probation_s: float = 30.0
    max_error_rate: float = 0.05
    latency_factor: float = DEFAULT_LATENCY_FACTOR
    smoke_frames: int = 3
    download_retry_s: float = 5.0
    download_retry_max_s: float = 300.0
    download_bytes_per_s: float = 0.0  # 0 = unlimited
    health: HealthPolicy = field(default_factory=HealthPolicy)

    def retry_delay_s(self, attempt: int) -> float:
        """Capped exponential backoff with +-20% jitter, so a fleet that lost the store at once
        does not come back to it in lockstep."""
        base = min(self.download_retry_s * 2.0 ** min(attempt, 30), self.download_retry_max_s)
        return base * random.uniform(0.8, 1.2)


class _Report(NamedTuple):
    """What the device last said about itself (restored when a stale message is ignored)."""

    state: OtaState
    reason: str
    desired: DesiredState | None
    probation: bool


class OtaController:
    def __init__(
        self,
        *,
        target: OtaTarget,
        line: RunningLine,
        recent: RecentFrames,
        link: MqttLink,
        topics: Topics,
        store: ModelStore,
        verifier: Verifier,
        loader: CandidateLoader,
        artifacts: ArtifactSource,
        stop: threading.Event,
        policy: OtaPolicy | None = None,
    ) -> None:
        self.target = target
        self.line = line
        self.link = link
        self.topics = topics
        self.store = store
        self.verifier = verifier
        self.loader = loader
        self.artifacts = artifacts
        self.stop_event = stop
        self.policy = policy or OtaPolicy()
        self.health = LifetimeWatch(self.policy.health)
        self._proven_recorded: set[str] = set()
        rate = self.policy.download_bytes_per_s
        # A burst of one chunk: the pace holds from the first byte.
        self._download_bandwidth = TokenBucket(rate, burst_bytes=CHUNK) if rate > 0 else None
        # Variants of the version being fetched that were left out, with why (for reported).
        self._variant_refusals: dict[str, str] = {}
        self.smoke_check = SmokeCheck(
            line.stats,
            recent,
            frames=self.policy.smoke_frames,
            latency_factor=self.policy.latency_factor,
            try_on_line=line.trial_on_live_frames,
            run_model_work=line.call_between_batches,
        )
        self.state = OtaState.IDLE
        self.last_reason = ""
        self._last_report = _Report(OtaState.IDLE, "", None, False)
        self.listener = DesiredListener(
            topics,
            target.device_id,
            target.group,
            on_bad_message=lambda reason: self.report(OtaState.FAILED, reason=reason),
        )
        self._sequence_path = store.root / "ota.json"
        self._last_sequence = self._load_sequence()
        self._report_sequence = ReportSequence()
        self._thread = threading.Thread(target=self._loop, name="ota", daemon=True)

    # ----------------------------------------------------------------- persistence
    def _load_sequence(self) -> int:
        try:
            return int(json.loads(self._sequence_path.read_text())["last_sequence"])
        except (OSError, ValueError, KeyError, TypeError):
            return -1

    def _save_sequence(self, sequence: int) -> None:
        self._last_sequence = sequence
        atomic_write(self._sequence_path, json.dumps({"last_sequence": sequence}).encode())

    # ----------------------------------------------------------------- MQTT side
    def start(self) -> None:
        self.link.add_handler(self.listener.on_message)
        for topic in self.listener.topics:
            self.link.subscribe(topic, qos=1)
        # Report the initial state before the worker can change it: reporting `self.state`
        # after starting the worker raced with a resumed probation and claimed "active".
        self.report(OtaState.IDLE)
        self._thread.start()

    def join(self, timeout: float = 5.0) -> None:
        self.listener.wake()
        self._thread.join(timeout)

    # ----------------------------------------------------------------- reporting
    def report(
        self,
        state: OtaState,
        *,
        reason: str = "",
        desired: DesiredState | None = None,
        probation: bool = False,
    ) -> None:
        self.state = state
        self.last_reason = reason
        self._last_report = _Report(state, reason, desired, probation)
        current = self.line.models.current
        store_state = self.store.state()
        message = ReportedState(
            device_id=self.target.device_id,
            fleet=self.target.fleet,
            group=self.target.group,
            agent_version=__version__,
            ota_state=state,
            model_name=current.name if current else None,
            running_version=current.version if current else None,
            desired_version=desired.manifest.version if desired else None,
            previous_good_version=store_state.previous_good,
            rollout_id=desired.rollout_id if desired else None,
            probation=probation,
            reason=reason[:500],
            sequence=self._report_sequence.next(),
            updated_at=utc_now(),
        )
        self.link.publish(
            self.topics.device(self.target.device_id, Channel.REPORTED),
            message.to_payload(),
            qos=1,
            retain=True,
        )
        log.info(
            "ota state",
            extra={"state": state.value, "probation": probation, "reason": reason[:300]},
        )

    # ----------------------------------------------------------------- worker
    def _resume_probation(self) -> None:
        """The agent restarted while a new model was on probation: finish the watch."""
        state = self.store.state()
        current = self.line.models.current
        if not state.probation or current is None or current.version != state.current:
            return
        self.report(OtaState.ACTIVE, probation=True)
        problem = self._watch_probation(None)
        if self.stop_event.is_set():
            return
        if problem is None:
            self.store.mark_good()
            self.report(OtaState.ACTIVE)
        else:
            self.rollback(current, None, problem, None)

    def _loop(self) -> None:
        # Normal priority on purpose: a candidate's onnxruntime threads are made on this thread
        # and inherit its priority, which they would keep once the candidate is the running
        # model. With sessions that do not spin, the line's cores are idle between frames and
        # staging fits there (measured in benchmarks/ota_swap.py).
        self._resume_probation()
        while not self.stop_event.is_set():
            desired = self.listener.take(0.5)
            if desired is None:
                self._remember_proven()
                self._lifetime_health()
                continue
            self.health.reset()  # whatever the update does, the next window starts afresh
            try:
                self.apply(desired)
            except Exception as exc:
                log.exception("ota step failed unexpectedly")
                self.report(
                    OtaState.FAILED, reason=f"internal error: {exc!r}"[:500], desired=desired
                )

    def _superseded(self) -> bool:
        return self.listener.superseded()

    def apply(self, desired: DesiredState) -> None:
        current = self.line.models.current
        running = current.version if current else None
        if desired.sequence == self._last_sequence:
            return  # the retained message we already handled, delivered again on reconnect
        before = self._last_report
        self.report(OtaState.VERIFYING, desired=desired)
        expected = Expectations(
            model_name=self.target.model_name,
            agent_version=__version__,
            fleet=self.target.fleet,
            device_id=self.target.device_id,
            group=self.target.group,
            class_names=current.class_names if current else None,
        )
        try:
            manifest = verify_desired(
                desired,
                self.verifier,
                expected,
                running_version=running,
                last_sequence=self._last_sequence,
            )
        except StaleDesiredError as exc:
            # A replay changes nothing: the device still is what it was, and says so again.
            log.warning("stale desired state ignored", extra={"error": str(exc)})
            self.report(
                before.state,
                reason=before.reason,
                desired=before.desired,
                probation=before.probation,
            )
            return
        except OtaRejectedError as exc:
            self.report(OtaState.FAILED, reason=str(exc), desired=desired)
            return
        # The sequence is recorded as handled only at an outcome (active, failed, rolled back),
        # so an agent killed mid-update resumes it from the retained message after restart.
        if manifest.version == running and current is not None:
            if current.sha256 is not None and current.sha256 != manifest.artifact.sha256:
                self.report(
                    OtaState.FAILED,
                    reason=(
                        f"version {manifest.version} with sha256 {manifest.artifact.sha256[:12]}… "
                        f"differs from the running version {manifest.version} "
                        f"({current.sha256[:12]}…): a version number names one artifact, "
                        "publish a new version"
                    ),
                    desired=desired,
                )
                self._save_sequence(desired.sequence)
                return
            # Already running it. While it is on probation the watch decides and reports.
            if not self.store.state().probation:
                self.report(OtaState.ACTIVE, desired=desired)
            self._save_sequence(desired.sequence)
            return
        rollback = desired.action is DesiredAction.ROLLBACK
        if manifest.version in self.store.state().rejected:
            if not rollback:
                self.report(
                    OtaState.FAILED,
                    reason=f"version {manifest.version} failed here before",
                    desired=desired,
                )
                self._save_sequence(desired.sequence)
                return
            self.store.clear_rejection(manifest.version)
        path = self._fetch(manifest, desired)
        if path is None:
            return
        self._stage_and_swap(manifest, path, desired)

    def _fetch(self, manifest: ModelManifest, desired: DesiredState) -> Path | None:
        """Download the reference artifact and the variants this box may run, then install
        them together. A variant that can never be fetched (missing, refused, not the
        manifest's bytes) is left out with its reason in ``_variant_refusals``; the
        reference's failure fails the update."""
        self._variant_refusals = {}
        if self.store.holds(manifest):
            return self.store.model_path(manifest.version)
        self.report(OtaState.DOWNLOADING, desired=desired)
        wanted = self.loader.variants_to_fetch(manifest)
        if wanted and self.artifacts.s3_client is None:
            for variant in wanted:
                self._variant_refusals[variant.precision] = (
                    "variants come from the object store, and this box has no store "
                    "credentials (artifact_url names the fp32 model only)"
                )
            wanted = []
        # Named by digest too: a .part of other bytes under the same version is never resumed.
        prefix = f"{manifest.model_name}-{manifest.version}"
        destination = self.store.downloads / f"{prefix}-{manifest.artifact.sha256[:16]}.onnx"
        fetched: dict[str, Path] = {}
        attempt = 0
        while not self.stop_event.is_set():
            try:
                download_artifact(
                    manifest.artifact,
                    destination,
                    self.stop_event,
                    client=self.artifacts.s3_client,
                    bucket=self.artifacts.bucket,
                    url=desired.artifact_url,
                    bandwidth=self._download_bandwidth,
                )
                for variant in wanted:
                    if variant.precision in fetched or variant.precision in self._variant_refusals:
                        continue
                    name = f"{prefix}-{variant.precision}-{variant.artifact.sha256[:16]}.onnx"
                    try:
                        fetched[variant.precision] = download_artifact(
                            variant.artifact,
                            self.store.downloads / name,
                            self.stop_event,
                            client=self.artifacts.s3_client,
                            bucket=self.artifacts.bucket,
                            bandwidth=self._download_bandwidth,
                        )
                    except PermanentDownloadError as exc:
                        log.warning(
                            "variant refused",
                            extra={"precision": variant.precision, "error": str(exc)},
                        )
                        self._variant_refusals[variant.precision] = str(exc)
                return self.store.install(manifest, destination, fetched)
            except PermanentDownloadError as exc:
                # Missing, refused or not the manifest's bytes: no retry changes that. Say so
                # now instead of leaving the fleet to find out at the device timeout.
                self.report(OtaState.FAILED, reason=str(exc), desired=desired)
                self._save_sequence(desired.sequence)
                return None
            except DownloadError as exc:
                delay = self.policy.retry_delay_s(attempt)
                attempt += 1
                log.warning(
                    "download interrupted; will resume",
                    extra={"error": str(exc), "retry_in_s": round(delay, 1)},
                )
                self.report(
                    OtaState.DOWNLOADING,
                    reason=f"retrying in {delay:.0f} s: {exc}",
                    desired=desired,
                )
                if self.stop_event.wait(delay) or self._superseded():
                    return None
        return None

    def _active_reason(self, candidate: ActiveModel, smoke: LatencyComparison | None) -> str:
        """What runs after the swap, for ``reported``: the chosen runtime and precision with
        their latency, the smoke check's latency against the model it replaced, and each
        variant refused, with why (a download's reason first)."""
        parts = []
        if candidate.runtime_choice is not None:
            parts.append(candidate.runtime_choice.summary())
        if candidate.runner.fallback:
            parts.append(candidate.runner.fallback)
        parts += [
            f"{precision} variant not fetched: {reason}"
            for precision, reason in self._variant_refusals.items()
        ]
        if smoke is not None:  # last: the first to be cut when the reason runs long
            parts.append(f"smoke check: {smoke.summary()}")
        return "; ".join(parts)[:500]

    def _stage_and_swap(self, manifest: ModelManifest, path: Path, desired: DesiredState) -> None:
        # Load here (graph optimisation runs on this thread, in the line's idle time). The smoke
        # check then tries the candidate on live frames in place of the running model, so
        # the line does no extra model run (see edge_agent.live_trial for the measurements).
        # A CPU session needs no warm-up (its first run measured within 10% of later ones);
        # on a GPU first runs allocate and tune, so one runs as model work. A TensorRT
        # engine is built by the load itself, here, into the version's folder
        # (edge_agent.inference.tensorrt_engines): never on an infer worker.
        try:
            candidate = self.loader(path, manifest, warm_up=False)
            if not candidate.runner.on_cpu:
                self.line.call_between_batches(
                    lambda cancel: candidate.runner.warm_up(1, cancel=cancel)
                )
        except EdgeAgentError as exc:
            self.store.discard(manifest.version)
            self.report(OtaState.FAILED, reason=f"model refused: {exc}", desired=desired)
            self._save_sequence(desired.sequence)
            return
        previous = self.line.models.current
        proven_latency_s = (
            self.store.proven_latency_s(manifest.artifact.sha256)
            if desired.action is DesiredAction.ROLLBACK
            else None
        )
        try:
            smoke = self.smoke_check(candidate, previous, proven_latency_s=proven_latency_s)
        except EdgeAgentError as exc:
            candidate.runner.close()
            self.store.discard(manifest.version)
            self.report(OtaState.FAILED, reason=f"smoke check failed: {exc}", desired=desired)
            self._save_sequence(desired.sequence)
            return
        if smoke is not None:
            log.info("smoke check passed", extra=smoke.log_fields())
        self.report(
            OtaState.STAGED, reason=smoke.summary() if smoke is not None else "", desired=desired
        )
        self.store.activate(manifest.version)
        self.line.models.swap(candidate)  # between two batches: no frame lost or repeated
        self.report(
            OtaState.ACTIVE,
            reason=self._active_reason(candidate, smoke),
            desired=desired,
            probation=True,
        )
        problem = self._watch_probation(previous, proven_latency_s)
        if self.stop_event.is_set():
            return  # undecided: the next start resumes probation and counts the boot
        self._save_sequence(desired.sequence)
        if problem is None:
            self.store.mark_good()
            if previous is not None:
                previous.runner.close()
            self.report(
                OtaState.ACTIVE, reason=self._active_reason(candidate, smoke), desired=desired
            )
            return
        self.rollback(candidate, previous, problem, desired)

    def _lifetime_health(self) -> None:
        """The running model's error rate, window by window, after probation too."""
        stats = self.line.stats
        problem = self.health.check(stats.processed, stats.inference_errors, time.monotonic())
        current = self.line.models.current
        if problem is None or current is None:
            return
        state = self.store.state()
        can_roll_back = (
            self.health.policy.action == "rollback"
            and not state.probation
            and state.prior_good is not None
            and self.store.has(state.prior_good)
        )
        log.warning(
            "running model unhealthy",
            extra={"version": current.version, "problem": problem, "rollback": can_roll_back},
        )
        if can_roll_back:
            self.rollback(current, None, f"unhealthy after probation: {problem}", None, proven=True)
        else:
            self.report(OtaState.ACTIVE, reason=f"unhealthy: {problem}"[:500])

    def _remember_proven(self) -> None:
        """Record the running model's latency on this line once it is proven (not on
        probation), for a later signed rollback to it. Done in the idle loop, once per model:
        the disk write stays out of the swap, where the line's frames are timed."""
        model = self.line.models.current
        if model is None or model.sha256 is None or model.sha256 in self._proven_recorded:
            return
        latency_s = self.line.stats.single_frame_infer_s()
        if latency_s is None or self.store.state().probation:
            return
        self.store.record_proven(model.sha256, latency_s)
        self._proven_recorded.add(model.sha256)

    def _watch_probation(
        self, previous: ActiveModel | None, proven_latency_s: float | None = None
    ) -> str | None:
        """Watch the line after a swap; the reason to roll back, or None if healthy. A model
        rolled back to is held to its own latency when it last ran well here
        (``proven_latency_s``), not to the model it replaced."""
        start_done, start_errors = self.line.stats.processed, self.line.stats.inference_errors
        baseline = (
            proven_latency_s * 1000.0
            if proven_latency_s is not None
            else self.line.stats.latency_ms(0.5)
        )
        deadline = time.monotonic() + self.policy.probation_s
        while not self.stop_event.wait(0.2):
            done = self.line.stats.processed - start_done
            errors = self.line.stats.inference_errors - start_errors
            attempts = done + errors
            if attempts >= 10 and errors / attempts > self.policy.max_error_rate:
                return f"error rate {errors}/{attempts} above {self.policy.max_error_rate:.0%}"
            if time.monotonic() >= deadline:
                latency = self.line.stats.latency_ms(0.5)
                log.info(
                    "probation over",
                    extra={
                        "latency_p50_ms": round(latency, 2),
                        "before_swap_ms": round(baseline, 2),
                        "limit_factor": self.policy.latency_factor,
                        "errors": errors,
                        "frames": done,
                    },
                )
                if (
                    previous is not None
                    and baseline > 0
                    and latency > self.policy.latency_factor * baseline
                ):
                    return f"latency p50 {latency:.1f} ms vs {baseline:.1f} ms before the swap"
                return None
        return None if self.stop_event.is_set() else "probation interrupted"

    def rollback(
        self,
        candidate: ActiveModel,
        previous: ActiveModel | None,
        reason: str,
        desired: DesiredState | None,
        *,
        proven: bool = False,
    ) -> None:
        """Back from ``candidate``: to ``previous`` (still loaded) or the store's fallback; a
        ``proven`` candidate (past probation) goes back to the good version before it."""
        state = self.store.retreat() if proven else self.store.rollback()
        fallback = previous
        if fallback is None and state.current is not None and self.store.has(state.current):
            fallback = self.loader(
                self.store.model_path(state.current), self.store.manifest(state.current)
            )
        if fallback is not None:
            self.line.models.swap(fallback)
        candidate.runner.close()
        if candidate.version is not None:
            self.store.discard(candidate.version)  # rejected: never installed again
        self.report(OtaState.ROLLED_BACK, reason=reason, desired=desired)
