"""OTA hot swap under load: publish a new model while the agent runs the synthetic line.

    python benchmarks/ota_swap.py [--quick] [--onnx model.onnx]

Starts mosquitto and an S3 server (moto), an agent with OTA on a lossless synthetic camera
(every frame must come out once), publishes a signed v2, and reports:
- publish_to_active_s: desired published -> reported active (probation started);
- frames_dropped / frames_duplicated: frames the camera produced but no sink saw, or saw
  twice, across the swap (target 0 / 0);
- worst_latency_vs_median: worst capture-to-sink latency in the second around the swap
  over the median before it (target <= 2).
Without ``--onnx`` a small built-in detector is used (tests' model builder).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from botocore.config import Config  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from edge_agent.agent import Agent  # noqa: E402
from edge_agent.config import load_config  # noqa: E402
from edge_agent.pipeline import DetectionResult  # noqa: E402
from shared.local_services import MosquittoProcess, MotoS3Process  # noqa: E402
from shared.messages import DesiredState, OtaState, ReportedState, parse_payload, utc_now  # noqa: E402
from shared.signing import SigningKey  # noqa: E402
from shared.synth import CLASS_NAMES  # noqa: E402
from shared.topics import Channel, Topics  # noqa: E402
from tests.edge_agent.ota.helpers import make_manifest  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--onnx", type=Path)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument(
        "--infer-workers", type=int, default=1, help="the agent's model.infer_workers"
    )
    parser.add_argument(
        "--s3-same-priority",
        action="store_true",
        help="leave the local S3 server at normal priority (it then competes with the agent)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lf-ota-bench-"))
    if args.onnx:
        model, size = args.onnx, args.imgsz
    else:
        from tests.edge_agent.onnx_models import brightness_detector

        model, size = brightness_detector(work / "model.onnx", names=list(CLASS_NAMES)), 64
    (work / "v1").mkdir()
    v1 = work / "v1" / "model.onnx"
    v1.write_bytes(model.read_bytes())
    (work / "v1" / "manifest.json").write_text(
        make_manifest(v1.read_bytes(), 1, size=size).model_dump_json()
    )
    key = SigningKey.generate("release-1")
    (work / "release-1.pub").write_bytes(key.public_pem())
    warm_s, after_s = (3.0, 4.0) if args.quick else (10.0, 10.0)

    with MosquittoProcess(work / "mosquitto") as broker, MotoS3Process(work / "moto") as s3server:
        # The S3 server stands in for a remote object store: on a box it would not share the
        # agent's cores. Lowest priority here, so serving the 12 MB download is not billed to
        # the agent's frames (--s3-same-priority measures it the other way).
        if not args.s3_same_priority and s3server.pid is not None:
            os.setpriority(os.PRIO_PROCESS, s3server.pid, 19)
        s3 = boto3.client(
            "s3",
            endpoint_url=s3server.endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
        )
        s3.create_bucket(Bucket="models")
        v2 = key.sign(make_manifest(model.read_bytes(), 2, size=size))
        s3.put_object(Bucket="models", Key=v2.artifact.key, Body=model.read_bytes())
        config = work / "agent.yaml"
        config.write_text(f"""
device: {{id: bench-01, fleet: bench}}
cameras: [{{kind: synthetic, id: cam0, fps: 30, buffer: lossless}}]
model: {{path: {v1}, infer_workers: {args.infer_workers}}}
mqtt: {{host: 127.0.0.1, port: {broker.port}}}
api: {{enabled: false}}
mining: {{enabled: false}}
state_dir: {work / "state"}
storage: {{enabled: true, bucket: models, endpoint_url: '{s3server.endpoint_url}',
          access_key_id: testing, secret_access_key: testing}}
ota: {{enabled: true, model_name: line-detector,
      trusted_keys: {{release-1: {work / "release-1.pub"}}}, probation_s: 2.0}}
""")
        agent = Agent(load_config(config))
        seen: list[tuple[int, float, float, int | None]] = []  # seq, done_at, latency, version
        lock = threading.Lock()

        def record(result: DetectionResult) -> None:
            with lock:
                seen.append(
                    (
                        result.frame.sequence,
                        time.monotonic(),
                        result.latency_s["total"],
                        result.model.version,
                    )
                )

        agent.add_sink(record)
        active_at: list[float] = []
        reports: list[str] = []  # every OTA state seen, so a run that never swaps says why
        report_times: list[tuple[float, str]] = []
        topics = Topics("bench")
        listener = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

        def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
            report = parse_payload(ReportedState, bytes(message.payload))
            reports.append(f"{report.ota_state.value} v{report.running_version} {report.reason}")
            report_times.append((time.monotonic(), report.ota_state.value))
            if (
                report.ota_state is OtaState.ACTIVE
                and report.running_version == 2
                and not active_at
            ):
                active_at.append(time.monotonic())

        listener.on_message = on_message
        listener.connect(broker.host, broker.port)
        listener.subscribe(topics.device("bench-01", Channel.REPORTED), qos=1)
        listener.loop_start()
        agent.start()
        time.sleep(warm_s)
        desired = key.sign(
            DesiredState(
                fleet="bench", rollout_id="bench", sequence=1, issued_at=utc_now(), manifest=v2
            )
        )
        published = time.monotonic()
        listener.publish(
            topics.device("bench-01", Channel.DESIRED), desired.to_payload(), qos=1, retain=True
        )
        time.sleep(after_s)
        camera = agent.cameras[0]
        agent.stop()
        listener.loop_stop()
        listener.disconnect()

    with lock:
        records = list(seen)
    sequences = [r[0] for r in records]
    produced = camera.stats.frames
    # Frames still in flight when the agent stopped are not the swap's doing: count gaps only
    # below the last frame that came out.
    last = max(sequences)
    dropped = len(set(range(last + 1)) - set(sequences))
    duplicated = len(sequences) - len(set(sequences))
    switch = next((r[1] for r in records if r[3] == 2), None)
    before = [r[2] for r in records if r[1] < published]
    around = [r[2] for r in records if switch is not None and abs(r[1] - switch) <= 1.0]
    median = statistics.median(before)
    # The same measure on a quiet stretch before the publish: the line's own jitter on this
    # machine, so the swap's figure can be read against it.
    quiet = [r[2] for r in records if published - 3.0 <= r[1] < published - 1.0]
    report = {
        "frames_processed": len(records),
        "frames_produced": produced,
        "publish_to_active_s": round(active_at[0] - published, 3) if active_at else None,
        "ota_states": reports[-6:],
        "frames_dropped": dropped,
        "frames_duplicated": duplicated,
        "median_latency_ms": round(median * 1000, 2),
        "worst_latency_around_swap_ms": round(max(around) * 1000, 2) if around else None,
        "worst_latency_vs_median": round(max(around) / median, 3) if around else None,
        "worst_latency_vs_median_without_swap": round(max(quiet) / median, 3) if quiet else None,
        "model": "given" if args.onnx else "built-in 64px detector",
        "s3_server_nice": 0 if args.s3_same_priority else 19,
        "infer_workers": args.infer_workers,
        # When the OTA states arrived and when the slowest frames finished, in seconds from
        # the first frame of the new model: says which step a slow frame overlapped.
        "ota_timeline_s": [(state, round(t - switch, 3)) for t, state in report_times]
        if switch is not None
        else [],
        "slowest_frames_s": sorted(
            (
                (round(r[1] - switch, 3), round(r[2] * 1000, 1))
                for r in records
                if abs(r[1] - switch) <= 1.0
            ),
            key=lambda item: -item[1],
        )[:5]
        if switch is not None
        else [],
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
