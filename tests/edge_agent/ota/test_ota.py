"""OTA end to end: a real agent, a real mosquitto, a real S3 server, signed models."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.agent import Agent
from edge_agent.camera import SyntheticSource
from edge_agent.config import load_config
from shared.digests import file_sha256
from shared.messages import DesiredAction, DesiredTarget, OtaState, utc_now
from shared.signing import SigningKey
from shared.synth import CLASS_NAMES
from shared.topics import Topics
from testing.local_services import MosquittoProcess, MotoS3Process
from tests.edge_agent.onnx_models import brightness_detector
from tests.edge_agent.ota.helpers import ControlPlane, make_manifest
from tests.waiting import wait_for

pytestmark = pytest.mark.integration
DEVICE = "edge-ota"
FUZZ_DEVICE = "edge-fuzz"


def thread_priorities() -> set[int]:
    """The nice values of this process's threads (Linux: per thread)."""
    seen: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            seen.add(os.getpriority(os.PRIO_PROCESS, int(task.name)))
    return seen


@pytest.fixture
def plane(
    tmp_path: Path, mosquitto: MosquittoProcess, s3_client: Any, bucket: str, fleet_name: str
) -> Iterator[ControlPlane]:
    cp = ControlPlane(
        mosquitto, Topics(fleet_name), s3_client, bucket, SigningKey.generate("release-1")
    )
    yield cp
    cp.close()


def write_agent_config(
    tmp_path: Path,
    plane: ControlPlane,
    s3_server: MotoS3Process,
    *,
    drift: str = "none",
    probation: float = 1.0,
    device: str = DEVICE,
    group: str | None = None,
    broker_port: int | None = None,
    v1_busy_nodes: int = 0,
    health_interval_s: float = 60.0,
) -> Path:
    """An agent config on the synthetic line with OTA on, v1 shipped with its manifest."""
    keys = tmp_path / "keys"
    keys.mkdir(exist_ok=True)
    (keys / "release-1.pub").write_bytes(plane.key.public_pem())
    (tmp_path / "v1").mkdir(exist_ok=True)
    v1 = brightness_detector(
        tmp_path / "v1" / "model.onnx", names=list(CLASS_NAMES), busy_nodes=v1_busy_nodes
    )
    # The bootstrap model ships with its manifest: name and version 1.
    (tmp_path / "v1" / "manifest.json").write_text(
        make_manifest(v1.read_bytes(), 1).model_dump_json()
    )
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"""
device: {{id: {device}, fleet: {plane.topics.fleet}{f", group: {group}" if group else ""}}}
cameras: [{{kind: synthetic, id: cam0, width: 320, height: 320, fps: 30, drift: {drift}}}]
model: {{path: {v1}}}
mqtt: {{host: 127.0.0.1, port: {broker_port or plane.broker.port}, keepalive_s: 5}}
api: {{enabled: false}}
state_dir: {tmp_path / "state"}
mining: {{enabled: false}}
storage: {{enabled: true, bucket: {plane.bucket}, endpoint_url: '{s3_server.endpoint_url}',
           access_key_id: testing, secret_access_key: testing}}
ota: {{enabled: true, model_name: line-detector,
       trusted_keys: {{release-1: {keys / "release-1.pub"}}},
       probation_s: {probation}, download_retry_s: 0.3,
       health_interval_s: {health_interval_s}, health_min_frames: 10}}
"""
    )
    return config


def start_agent(
    tmp_path: Path,
    plane: ControlPlane,
    s3_server: MotoS3Process,
    *,
    drift: str = "none",
    probation: float = 1.0,
    device: str = DEVICE,
    group: str | None = None,
    v1_busy_nodes: int = 0,
    health_interval_s: float = 60.0,
) -> Agent:
    config = write_agent_config(
        tmp_path,
        plane,
        s3_server,
        drift=drift,
        probation=probation,
        device=device,
        group=group,
        v1_busy_nodes=v1_busy_nodes,
        health_interval_s=health_interval_s,
    )
    agent = Agent(load_config(config))
    agent.start()
    plane.wait_report(lambda r: r.device_id == device and r.running_version == 1)
    return agent


def running(agent: Agent) -> int | None:
    model = agent.models.current
    return model.version if model else None


def test_update_goes_active_and_frames_keep_flowing(
    tmp_path: Path, plane: ControlPlane, s3_server: MotoS3Process
) -> None:
    agent = start_agent(tmp_path, plane, s3_server)
    try:
        v2 = brightness_detector(tmp_path / "v2.onnx", names=list(CLASS_NAMES))
        plane.send(DEVICE, plane.desired(plane.upload(v2, 2)))
        report = plane.wait_report(
            lambda r: r.ota_state is OtaState.ACTIVE and r.running_version == 2 and not r.probation
        )
        assert report.previous_good_version == 2 and running(agent) == 2
        # The smoke check ran v2 on three live frames in place of v1, not beside the line.
        assert agent.pipeline.stats.trial_frames == 3
        if sys.platform == "linux":  # v2's own threads run at the line's priority
            assert thread_priorities() == {os.getpriority(os.PRIO_PROCESS, 0)}
        processed = agent.pipeline.stats.processed
        time.sleep(0.5)
        assert agent.pipeline.stats.processed > processed
        store = agent.status().model_dump(mode="json")["ota"]["store"]
        assert store["current"] == 2 and store["probation"] is False
        beat = agent.heartbeat()  # the fleet learns the agent takes updates, and whose
        assert beat.ota_enabled is True and beat.trusted_keys == sorted(
            agent.config.ota.trusted_keys
        )
        assert beat.trusted_keys, "the test agent trusts the control plane's key"
    finally:
        agent.stop()


def test_on_runtime_auto_a_candidate_chooses_its_runtime_on_live_frames(
    tmp_path: Path, plane: ControlPlane, s3_server: MotoS3Process
) -> None:
    """At first start no frame exists: the synthetic line judges the runtimes. An update is
    judged on the line's own recent frames, its trial runs in the line's gaps."""
    config = write_agent_config(tmp_path, plane, s3_server)
    text = config.read_text()
    config.write_text(text.replace("model: {path: ", "model: {runtime: auto, path: "))
    agent = Agent(load_config(config))
    agent.start()
    try:
        plane.wait_report(lambda r: r.device_id == DEVICE and r.running_version == 1)
        first = agent.models.current
        assert first is not None and first.runtime_choice is not None
        assert first.runtime_choice.probe == "synthetic"
        wait_for(lambda: agent.pipeline.stats.processed >= 10, timeout=10)
        v2 = brightness_detector(tmp_path / "v2.onnx", names=list(CLASS_NAMES))
        plane.send(DEVICE, plane.desired(plane.upload(v2, 2)))
        plane.wait_report(
            lambda r: r.ota_state is OtaState.ACTIVE and r.running_version == 2 and not r.probation
        )
        status = agent.status()
        assert status.model is not None and status.model.version == 2
        choice = status.model.runtime_choice
        assert choice is not None and choice.probe == "live" and choice.probe_images >= 3
        assert {t.runtime for t in choice.trials} == {"onnxruntime", "openvino"}
        chosen = next(t for t in choice.trials if t.runtime == choice.chosen)
        assert status.model.provider == chosen.device and chosen.latency_ms is not None
        processed = agent.pipeline.stats.processed
        wait_for(lambda: agent.pipeline.stats.processed > processed + 5, timeout=10)
    finally:
        agent.stop()


def test_an_update_runs_the_fastest_variant_that_agrees_and_says_so(
    tmp_path: Path, plane: ControlPlane, s3_server: MotoS3Process
) -> None:
    """v2 lists an INT8 variant (here: the same detector without v2's extra work, so it is
    faster and agrees) and an fp16 one for GPUs. A CPU box fetches the INT8 only, judges it
    against fp32 on its own recent frames, runs it, and says so everywhere."""
    agent = start_agent(tmp_path, plane, s3_server)
    try:
        wait_for(lambda: agent.pipeline.stats.processed >= 10, timeout=10)
        v2 = brightness_detector(tmp_path / "v2.onnx", names=list(CLASS_NAMES), busy_nodes=30)
        fast = brightness_detector(tmp_path / "v2-int8.onnx", names=list(CLASS_NAMES))
        variants = [
            plane.upload_variant(fast, 2, "int8"),
            plane.upload_variant(fast, 2, "fp16"),
        ]
        plane.send(DEVICE, plane.desired(plane.upload(v2, 2, schema_version=2, variants=variants)))
        report = plane.wait_active(2)
        assert report.reason.startswith("running int8 on onnxruntime"), report.reason
        assert "fp32 on onnxruntime" in report.reason
        # What the update costs this box, against the model it replaced.
        assert re.search(
            r"smoke check: latency [\d.]+ ms vs [\d.]+ ms of the running model "
            r"\([\d.]+x, limit 3x",
            report.reason,
        ), report.reason
        stored = sorted(p.name for p in agent.store.version_dir(2).iterdir())
        assert stored == ["manifest.json", "model.int8.onnx", "model.onnx"]  # no fp16 here
        status = agent.status()
        assert status.model is not None and status.model.precision == "int8"
        choice = status.model.runtime_choice
        assert choice is not None and choice.probe == "live"
        assert {(t.runtime, t.precision) for t in choice.trials} == {
            ("onnxruntime", "fp32"),
            ("onnxruntime", "int8"),
        }
        assert agent.heartbeat().provider == "CPUExecutionProvider int8"
        processed = agent.pipeline.stats.processed
        wait_for(lambda: agent.pipeline.stats.processed > processed + 5, timeout=10)
    finally:
        agent.stop()


def test_a_tampered_or_disagreeing_variant_is_refused_and_fp32_runs(
    tmp_path: Path, plane: ControlPlane, s3_server: MotoS3Process
) -> None:
    agent = start_agent(tmp_path, plane, s3_server)
    try:
        wait_for(lambda: agent.pipeline.stats.processed >= 10, timeout=10)
        v2 = brightness_detector(tmp_path / "v2.onnx", names=list(CLASS_NAMES))
        good = v2.read_bytes()
        tampered = plane.upload_variant(v2, 2, "int8", stored=good[:-1] + b"x")
        plane.send(
            DEVICE, plane.desired(plane.upload(v2, 2, schema_version=2, variants=[tampered]))
        )
        report = plane.wait_active(2)
        assert report.reason.startswith("running fp32 on onnxruntime"), report.reason
        assert "int8 variant not fetched" in report.reason and "sha256" in report.reason
        assert not (agent.store.version_dir(2) / "model.int8.onnx").exists()
        # v3's INT8 draws other boxes than fp32 does (half the size): refused on live frames.
        v3 = brightness_detector(tmp_path / "v3.onnx", names=list(CLASS_NAMES))
        coarse = brightness_detector(tmp_path / "v3-int8.onnx", names=list(CLASS_NAMES), box_size=8)
        disagreeing = plane.upload_variant(coarse, 3, "int8")
        plane.send(
            DEVICE, plane.desired(plane.upload(v3, 3, schema_version=2, variants=[disagreeing]))
        )
        report = plane.wait_active(3)
        assert report.reason.startswith("running fp32"), report.reason
        assert "refused int8/onnxruntime: detections agree" in report.reason, report.reason
        status = agent.status()
        assert status.model is not None and status.model.precision == "fp32"
    finally:
        agent.stop()


@pytest.mark.parametrize(
    "case",
    [
        "tampered",
        "bad_signature",
        "untrusted_key",
        "expired",
        "downgrade",
        "wrong_input",
        "nan",
        "slow",
        "wrong_model",
        "other_fleet",
        "other_device",
        "other_group",
        "missing_artifact",
        "truncated_artifact",
    ],
)
def test_refusals_keep_the_old_model(
    tmp_path: Path, plane: ControlPlane, s3_server: MotoS3Process, case: str
) -> None:
    agent = start_agent(tmp_path, plane, s3_server)
    try:
        good = brightness_detector(tmp_path / "good.onnx", names=list(CLASS_NAMES))
        expected_reason = {
            "tampered": "sha256",
            "bad_signature": "does not match",
            "untrusted_key": "untrusted key id",
            "expired": "expired",
            "downgrade": "downgrade",
            "wrong_input": "manifest says 96x96",
            "nan": "NaN",
            "slow": "latency",
            "wrong_model": "this device runs",
            "other_fleet": "is for fleet 'elsewhere'",
            "other_device": "a desired state for device 'edge-other'",
            "other_group": "a desired state for group 'line-b'",
            "missing_artifact": "NoSuchKey",
            "truncated_artifact": "the store holds 100 bytes",
        }[case]
        if case == "tampered":
            manifest = plane.upload(good, 2)
            plane.s3.put_object(
                Bucket=plane.bucket,
                Key=manifest.artifact.key,
                Body=b"x" * manifest.artifact.size_bytes,
            )
            desired = plane.desired(manifest)
        elif case == "bad_signature":
            manifest = plane.upload(good, 2)
            desired = plane.desired(manifest.model_copy(update={"notes": "changed after signing"}))
        elif case == "untrusted_key":
            desired = plane.desired(plane.upload(good, 2), signer=SigningKey.generate("intruder"))
        elif case == "expired":
            manifest = plane.upload(
                good,
                2,
                created_at=utc_now() - timedelta(days=2),
                expires_at=utc_now() - timedelta(days=1),
            )
            desired = plane.desired(manifest)
        elif case == "downgrade":
            # Move to v2 first; then a desired state for v1 that is not a signed rollback.
            plane.send(DEVICE, plane.desired(plane.upload(good, 2)))
            plane.wait_active(2)
            desired = plane.desired(plane.upload(good, 1))
        elif case == "wrong_input":
            wrong = brightness_detector(tmp_path / "wrong.onnx", size=64, names=list(CLASS_NAMES))
            desired = plane.desired(plane.upload(wrong, 2, size=96))
        elif case == "nan":
            nan = brightness_detector(
                tmp_path / "nan.onnx", poison_nan=True, names=list(CLASS_NAMES)
            )
            desired = plane.desired(plane.upload(nan, 2))
        elif case == "slow":
            # ~40 ms a frame against the running model's ~0.1 ms: far over the smoke check's
            # latency limit. Its first live frame is stopped at 3x the limit (~15 ms) and
            # run again by v1; the model is refused.
            slow = brightness_detector(
                tmp_path / "slow.onnx", busy_nodes=300, names=list(CLASS_NAMES)
            )
            desired = plane.desired(plane.upload(slow, 2))
        elif case == "other_fleet":
            # Validly signed, published on this device's topic, but for another fleet: a
            # message lifted from one plant's broker must not steer a box of another.
            desired = plane.desired(plane.upload(good, 2), fleet="elsewhere")
        elif case == "other_device":
            target = DesiredTarget.device("edge-other")
            desired = plane.desired(plane.upload(good, 2), target=target)
        elif case == "other_group":
            desired = plane.desired(plane.upload(good, 2), target=DesiredTarget.group("line-b"))
        elif case in ("missing_artifact", "truncated_artifact"):
            # Permanent: reported as failed at once, not retried every few seconds until the
            # rollout's device timeout.
            manifest = plane.upload(good, 2)
            plane.s3.delete_object(Bucket=plane.bucket, Key=manifest.artifact.key)
            if case == "truncated_artifact":
                body = good.read_bytes()[:100]
                plane.s3.put_object(Bucket=plane.bucket, Key=manifest.artifact.key, Body=body)
            desired = plane.desired(manifest)
        else:
            desired = plane.desired(plane.upload(good, 2, model_name="other-line"))
        before = running(agent)
        plane.send(DEVICE, desired)
        report = plane.wait_report(lambda r: r.ota_state is OtaState.FAILED)
        assert expected_reason in report.reason
        assert running(agent) == before, "still on the old model"
        if case != "downgrade":  # there v2 is the running version, rightly kept
            assert agent.store is not None and not agent.store.has(2), "refused: removed"
        assert agent.alive()
    finally:
        agent.stop()


def test_replayed_desired_state_is_ignored(
    tmp_path: Path, plane: ControlPlane, s3_server: MotoS3Process
) -> None:
    agent = start_agent(tmp_path, plane, s3_server)
    try:
        good = brightness_detector(tmp_path / "good.onnx", names=list(CLASS_NAMES))
        old = plane.desired(plane.upload(good, 2))
        newer = plane.desired(plane.upload(good, 3))
        plane.send(DEVICE, newer)
        plane.wait_active(3)
        seen = len(plane.reports)
        plane.send(DEVICE, old)  # validly signed, but older: a replay
        # Ignored, and the device says again what it is: active on v3, not "failed".
        report = plane.wait_report(
            lambda r: r.ota_state is OtaState.VERIFYING and r.desired_version == 2
        )
        after = plane.wait_report(
            lambda r: r.sequence > report.sequence and r.ota_state is not OtaState.VERIFYING
        )
        assert after.ota_state is OtaState.ACTIVE and after.running_version == 3
        assert not any(r.ota_state is OtaState.FAILED for r in plane.reports[seen:])
        assert running(agent) == 3
    finally:
        agent.stop()


def test_group_desired_state_clearing_and_garbage(
    tmp_path: Path, plane: ControlPlane, s3_server: MotoS3Process
) -> None:
    """A device follows its group's desired state unless it has its own; clearing its own falls
    back to the group's at once; garbage on the group topic does not fail a device that follows
    its own."""
    agent = start_agent(tmp_path, plane, s3_server, group="line-a")
    try:
        good = brightness_detector(tmp_path / "good.onnx", names=list(CLASS_NAMES))
        group_v2 = plane.desired(plane.upload(good, 2), target=DesiredTarget.group("line-a"))
        plane.publish_group("line-a", group_v2.to_payload())
        plane.wait_active(2)
        plane.send(DEVICE, plane.desired(plane.upload(good, 3)))
        plane.wait_active(3)
        seen = len(plane.reports)
        plane.publish_group("line-a", b"{not json")
        time.sleep(1.0)
        assert not any(r.ota_state is OtaState.FAILED for r in plane.reports[seen:])
        group_v4 = plane.desired(plane.upload(good, 4), target=DesiredTarget.group("line-a"))
        plane.publish_group("line-a", group_v4.to_payload())
        time.sleep(1.0)
        assert running(agent) == 3, "the device's own desired state wins over its group's"
        plane.publish(DEVICE, b"")  # the operator clears the device's own desired state
        plane.wait_active(4)
    finally:
        agent.stop()


def test_a_version_is_its_digest_not_its_number(
    tmp_path: Path, plane: ControlPlane, s3_server: MotoS3Process
) -> None:
    """A re-signed manifest naming other bytes under a version number already on the box:
    refused while that version runs, downloaded anew (not the stale file) when it does not."""
    agent = start_agent(tmp_path, plane, s3_server)
    try:
        first = brightness_detector(tmp_path / "first.onnx", names=list(CLASS_NAMES))
        other = brightness_detector(
            tmp_path / "other.onnx", names=list(CLASS_NAMES), with_metadata=False
        )
        v2_first = plane.upload(first, 2)
        plane.send(DEVICE, plane.desired(v2_first))
        plane.wait_active(2)
        v2_other = plane.upload(other, 2)
        assert v2_other.artifact.sha256 != v2_first.artifact.sha256
        plane.send(DEVICE, plane.desired(v2_other))
        refused = plane.wait_report(lambda r: r.ota_state is OtaState.FAILED)
        assert "a version number names one artifact" in refused.reason
        assert agent.models.current is not None
        assert agent.models.current.sha256 == v2_first.artifact.sha256
        plane.send(DEVICE, plane.desired(plane.upload(first, 3)))
        plane.wait_active(3)
        # v2 (first) stays in the store as the fallback; a signed rollback to v2 (other) must
        # run the bytes its manifest names, not the stored file of the same number.
        mark = plane.reports[-1].sequence
        plane.send(DEVICE, plane.desired(v2_other, action=DesiredAction.ROLLBACK))
        plane.wait_report(
            lambda r: (
                r.sequence > mark
                and r.running_version == 2
                and r.ota_state is OtaState.ACTIVE
                and not r.probation
            )
        )
        assert agent.models.current.sha256 == v2_other.artifact.sha256
        assert agent.store is not None
        assert file_sha256(agent.store.model_path(2)) == v2_other.artifact.sha256
    finally:
        agent.stop()


def test_a_signed_rollback_is_held_to_its_own_past_latency(
    tmp_path: Path, plane: ControlPlane, s3_server: MotoS3Process
) -> None:
    """Rolling back from a fast (but broken) model to the slower one that ran well here: the
    latency check compares the old model with its own past on this line, not with the fast
    one (which refused the rollback: "latency 12.4 ms vs 0.2 ms")."""
    agent = start_agent(tmp_path, plane, s3_server, v1_busy_nodes=30)
    try:
        time.sleep(1.0)  # v1's one-frame latency on the line is known
        fast = brightness_detector(tmp_path / "fast.onnx", names=list(CLASS_NAMES))
        plane.send(DEVICE, plane.desired(plane.upload(fast, 2)))
        plane.wait_active(2)
        time.sleep(1.0)
        mark = plane.reports[-1].sequence
        v1 = plane.upload(tmp_path / "v1" / "model.onnx", 1)
        plane.send(DEVICE, plane.desired(v1, action=DesiredAction.ROLLBACK))
        back = plane.wait_report(
            lambda r: (
                r.sequence > mark
                and r.ota_state in (OtaState.FAILED, OtaState.ACTIVE)
                and not r.probation
                and r.desired_version == 1
            )
        )
        assert back.ota_state is OtaState.ACTIVE and back.running_version == 1, back.reason
    finally:
        agent.stop()


def test_signed_rollback_may_downgrade(
    tmp_path: Path, plane: ControlPlane, s3_server: MotoS3Process
) -> None:
    agent = start_agent(tmp_path, plane, s3_server)
    try:
        good = brightness_detector(tmp_path / "good.onnx", names=list(CLASS_NAMES))
        v3 = plane.upload(good, 3)
        plane.send(DEVICE, plane.desired(v3))
        plane.wait_active(3)
        v2 = plane.upload(good, 2)
        plane.send(DEVICE, plane.desired(v2, action=DesiredAction.ROLLBACK))
        plane.wait_active(2)
    finally:
        agent.stop()


def test_a_model_that_fails_after_probation_is_rolled_back(
    tmp_path: Path, plane: ControlPlane, s3_server: MotoS3Process
) -> None:
    """Probation passed; then the line changes and the model fails on it. It used to run on
    with its errors: the lifetime watch rolls back to the previous good version."""
    agent = start_agent(tmp_path, plane, s3_server, health_interval_s=1.0)
    try:
        good = brightness_detector(tmp_path / "good.onnx", names=list(CLASS_NAMES))
        fragile = brightness_detector(
            tmp_path / "fragile.onnx", nan_when_dark=True, names=list(CLASS_NAMES)
        )
        plane.send(DEVICE, plane.desired(plane.upload(good, 2)))
        plane.wait_active(2)
        plane.send(DEVICE, plane.desired(plane.upload(fragile, 3)))
        plane.wait_active(3)
        source = agent.cameras[0].source
        assert isinstance(source, SyntheticSource)
        source.set_drift("lighting")  # a lamp fails: v3 outputs NaN from now on
        report = plane.wait_report(lambda r: r.ota_state is OtaState.ROLLED_BACK)
        assert "unhealthy after probation: inference errors" in report.reason
        assert running(agent) == 2
    finally:
        agent.stop()


def test_with_no_version_to_go_back_to_the_watch_reports(
    tmp_path: Path, plane: ControlPlane, s3_server: MotoS3Process
) -> None:
    agent = start_agent(tmp_path, plane, s3_server, health_interval_s=1.0)
    try:
        fragile = brightness_detector(
            tmp_path / "fragile.onnx", nan_when_dark=True, names=list(CLASS_NAMES)
        )
        plane.send(DEVICE, plane.desired(plane.upload(fragile, 2)))
        plane.wait_active(2)
        source = agent.cameras[0].source
        assert isinstance(source, SyntheticSource)
        source.set_drift("lighting")
        report = plane.wait_report(
            lambda r: r.ota_state is OtaState.ACTIVE and r.reason.startswith("unhealthy:")
        )
        assert report.running_version == 2 and running(agent) == 2
    finally:
        agent.stop()


def test_model_that_fails_on_the_line_is_rolled_back(
    tmp_path: Path, plane: ControlPlane, s3_server: MotoS3Process
) -> None:
    # v2 is fine on the line as it is (passes warm-up and the smoke test on real frames);
    # then a lamp fails, the belt darkens and v2 outputs NaN: probation catches it.
    agent = start_agent(tmp_path, plane, s3_server, probation=6.0)
    try:
        fragile = brightness_detector(
            tmp_path / "fragile.onnx", nan_when_dark=True, names=list(CLASS_NAMES)
        )
        plane.send(DEVICE, plane.desired(plane.upload(fragile, 2)))
        plane.wait_report(lambda r: r.running_version == 2 and r.probation)
        source = agent.cameras[0].source
        assert isinstance(source, SyntheticSource)
        source.set_drift("lighting")
        report = plane.wait_report(lambda r: r.ota_state is OtaState.ROLLED_BACK)
        assert "error rate" in report.reason and running(agent) == 1
        assert list(agent.status().model_dump(mode="json")["ota"]["store"]["rejected"]) == [2]
        # The same version is not retried from a re-sent desired state.
        plane.send(DEVICE, plane.desired(plane.upload(fragile, 2)))
        failed = plane.wait_report(lambda r: r.ota_state is OtaState.FAILED)
        assert "failed here before" in failed.reason
    finally:
        agent.stop()


def test_truncated_artifact_fails_and_a_repaired_one_installs(
    tmp_path: Path, plane: ControlPlane, s3_server: MotoS3Process
) -> None:
    """S3 writes objects whole, so one shorter than its manifest is broken, not 'in progress':
    the update fails at once (it used to retry every few seconds until the rollout's device
    timeout). Once the release is repaired, the next desired state installs it."""
    agent = start_agent(tmp_path, plane, s3_server)
    try:
        good = brightness_detector(tmp_path / "good.onnx", names=list(CLASS_NAMES))
        manifest = plane.upload(good, 2)
        data = good.read_bytes()
        plane.s3.put_object(
            Bucket=plane.bucket, Key=manifest.artifact.key, Body=data[: len(data) // 2]
        )
        plane.send(DEVICE, plane.desired(manifest))
        report = plane.wait_report(lambda r: r.ota_state is OtaState.FAILED)
        assert "truncated or replaced" in report.reason and report.desired_version == 2
        assert running(agent) == 1
        plane.s3.put_object(Bucket=plane.bucket, Key=manifest.artifact.key, Body=data)
        plane.send(DEVICE, plane.desired(manifest))
        plane.wait_active(2)
    finally:
        agent.stop()


def test_crash_loop_rolls_back_at_start(
    tmp_path: Path, plane: ControlPlane, s3_server: MotoS3Process
) -> None:
    agent = start_agent(tmp_path, plane, s3_server, probation=30.0)
    good = brightness_detector(tmp_path / "good.onnx", names=list(CLASS_NAMES))
    plane.send(DEVICE, plane.desired(plane.upload(good, 2)))
    plane.wait_report(lambda r: r.running_version == 2 and r.probation)
    agent.stop()  # as if v2 crashed the agent during probation, three times
    state_file = tmp_path / "state" / "models" / "state.json"
    for _ in range(3):
        again = Agent(agent.config)
        again.load_configured_model()
        again.stop()
    state = json.loads(state_file.read_text())
    # v1 came from the config (the bootstrap model), so "previous good" is: no stored version.
    assert state["current"] is None and 2 in state["rejected"]
    assert again.models.current is not None and again.models.current.version == 1


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    payload=st.one_of(
        st.binary(max_size=300),
        st.just(b"{" * 5000),
        st.just(b"[" * 200_000),
        st.just(b'{"sequence": ' + b"9" * 5000 + b"}"),
        st.just(b'{"schema_version": 1}'),
    )
)
def test_garbage_desired_payloads_never_hurt(
    tmp_path_factory: pytest.TempPathFactory,
    mosquitto: MosquittoProcess,
    payload: bytes,
    agent_for_fuzz: Agent,
) -> None:
    plane: ControlPlane = agent_for_fuzz._test_plane  # type: ignore[attr-defined]
    plane.publish(FUZZ_DEVICE, payload or b"x")
    time.sleep(0.02)
    assert agent_for_fuzz.alive() and running(agent_for_fuzz) == 1
    # Every refusal is a contract error handled by the OTA controller: no exception may
    # reach the MQTT link's handler guard (a traceback in the log, nothing reported).
    assert agent_for_fuzz.mqtt is not None and agent_for_fuzz.mqtt.stats.handler_errors == 0


@pytest.fixture(scope="module")
def agent_for_fuzz(
    tmp_path_factory: pytest.TempPathFactory, mosquitto: MosquittoProcess, s3_server: MotoS3Process
) -> Iterator[Agent]:
    import boto3
    from botocore.config import Config

    tmp = tmp_path_factory.mktemp("fuzz")
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    s3.create_bucket(Bucket="fuzz-bucket")
    plane = ControlPlane(
        mosquitto, Topics("fuzzfleet"), s3, "fuzz-bucket", SigningKey.generate("release-1")
    )
    # Its own device id: one MQTT client id per device, or the broker kicks one of the two.
    agent = start_agent(tmp, plane, s3_server, device=FUZZ_DEVICE)
    agent._test_plane = plane  # type: ignore[attr-defined]
    yield agent
    failures = [r for r in plane.reports if r.ota_state is OtaState.FAILED]
    agent.stop()
    plane.close()
    assert failures, "bad payloads were reported, not silently dropped"


def test_probation_resumes_after_restart_and_marks_good(
    tmp_path: Path, plane: ControlPlane, s3_server: MotoS3Process
) -> None:
    agent = start_agent(tmp_path, plane, s3_server, probation=30.0)
    good = brightness_detector(tmp_path / "good.onnx", names=list(CLASS_NAMES))
    plane.send(DEVICE, plane.desired(plane.upload(good, 2)))
    plane.wait_report(lambda r: r.running_version == 2 and r.probation)
    agent.stop()  # restarted once during probation: not a crash loop
    config = agent.config.model_copy(
        update={"ota": agent.config.ota.model_copy(update={"probation_s": 1.0})}
    )
    again = Agent(config)
    again.start()
    try:
        plane.wait_active(2)
        store = again.status().model_dump(mode="json")["ota"]["store"]
        history = [
            (r.ota_state.value, r.running_version, r.desired_version, r.reason, r.updated_at.time())
            for r in plane.reports
        ]
        assert store["current"] == 2, history
        assert store["probation"] is False and store["previous_good"] == 2, (store, history)
    finally:
        again.stop()
