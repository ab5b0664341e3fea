"""OTA hot swap under load: publish new models while the agent runs the synthetic line.

    python benchmarks/ota_swap.py [--quick] [--onnx model.onnx] [--swaps N]

Starts mosquitto and an S3 server (moto), an agent with OTA on a lossless synthetic camera
(every frame must come out once), its model downloads capped at ``--link-mbps`` (default
100 Mbit/s, a plant network; the S3 server is on loopback and would otherwise deliver a
12 MB model in ~40 ms, a burst no remote store gives), then publishes N signed versions one
after another, each once the previous one passed probation, and reports:
- publish_to_active_s: desired published -> reported active (probation started), median;
- frames_dropped / frames_duplicated: frames the camera produced but no sink saw, or saw
  twice, over the whole run (target 0 / 0);
- worst_latency_vs_median: for each swap, the worst capture-to-sink latency from the publish
  to 0.5 s after the swap (reported active), over the median latency in the quiet stretch
  before that publish; the median over the swaps (target <= 2), with the highest beside it.
  The window includes the candidate's trial frames (live frames it processes before the
  swap, in place of the running model).
- worst_latency_vs_median_without_swap: the same measure on a window as long, just before
  each publish: the machine's own jitter, the peer the swap's figure is read against (this
  machine is shared: the worst frame of any second can be 2x the median with no swap at all).
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
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from botocore.config import Config  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from edge_agent.agent import Agent  # noqa: E402
from edge_agent.config import load_config  # noqa: E402
from edge_agent.frame_path import DetectionResult  # noqa: E402
from shared.messages import (  # noqa: E402
    DesiredState,
    DesiredTarget,
    OtaState,
    ReportedState,
    parse_payload,
    utc_now,
)
from shared.signing import SigningKey  # noqa: E402
from shared.synth import CLASS_NAMES  # noqa: E402
from shared.topics import Channel, Topics  # noqa: E402
from testing.local_services import MosquittoProcess, MotoS3Process  # noqa: E402
from tests.edge_agent.ota.helpers import make_manifest  # noqa: E402

PAUSE_S = 3.0  # quiet line before each publish: the swap's baseline and control window
SWAP_TAIL_S = 0.5  # the swap window ends this long after the swap (reported active)
PROBATION_S = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--onnx", type=Path)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--swaps", type=int, help="versions to publish (default 6, --quick 2)")
    parser.add_argument(
        "--infer-workers", type=int, default=1, help="the agent's model.infer_workers"
    )
    parser.add_argument(
        "--link-mbps",
        type=float,
        default=100.0,
        help="the agent's ota.download_bandwidth_bytes_per_s, in Mbit/s: the S3 server here "
        "is on loopback and stands in for a store across the plant network (0: no cap)",
    )
    parser.add_argument(
        "--s3-same-priority",
        action="store_true",
        help="leave the local S3 server at normal priority (it then competes with the agent)",
    )
    args = parser.parse_args()
    swaps = args.swaps or (2 if args.quick else 6)
    work = Path(tempfile.mkdtemp(prefix="lf-ota-bench-"))
    if args.onnx:
        model, size = args.onnx, args.imgsz
    else:
        from tests.edge_agent.onnx_models import brightness_detector

        model, size = brightness_detector(work / "model.onnx", names=list(CLASS_NAMES)), 64
    model_bytes = model.read_bytes()
    (work / "v1").mkdir()
    v1 = work / "v1" / "model.onnx"
    v1.write_bytes(model_bytes)
    (work / "v1" / "manifest.json").write_text(
        make_manifest(model_bytes, 1, size=size).model_dump_json()
    )
    key = SigningKey.generate("release-1")
    (work / "release-1.pub").write_bytes(key.public_pem())
    versions = list(range(2, swaps + 2))
    published: dict[int, float] = {}
    records: list[Record] = []
    reports: list[Report] = []

    with MosquittoProcess(work / "mosquitto") as broker, MotoS3Process(work / "moto") as s3server:
        # The S3 server stands in for a remote object store: on a box it would not share the
        # agent's cores. Lowest priority here, so serving the download is not billed to the
        # agent's frames (--s3-same-priority measures it the other way).
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
        manifests = {v: key.sign(make_manifest(model_bytes, v, size=size)) for v in versions}
        for manifest in manifests.values():
            s3.put_object(Bucket="models", Key=manifest.artifact.key, Body=model_bytes)
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
      trusted_keys: {{release-1: {work / "release-1.pub"}}}, probation_s: {PROBATION_S},
      download_bandwidth_bytes_per_s: {args.link_mbps * 1e6 / 8}}}
""")
        agent = Agent(load_config(config))
        lock = threading.Lock()

        def record(result: DetectionResult) -> None:
            with lock:
                records.append(
                    Record(
                        result.frame.sequence,
                        time.monotonic(),
                        result.latency_s["total"],
                        result.model.version,
                    )
                )

        agent.add_sink(record)
        topics = Topics("bench")
        listener = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

        def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
            state = parse_payload(ReportedState, bytes(message.payload))
            reports.append(
                Report(time.monotonic(), state.ota_state, state.running_version, state.probation)
            )

        listener.on_message = on_message
        listener.connect(broker.host, broker.port)
        listener.subscribe(topics.device("bench-01", Channel.REPORTED), qos=1)
        listener.loop_start()
        agent.start()
        time.sleep(PAUSE_S + 2.0)  # start-up, then a quiet stretch before the first publish
        for version in versions:
            desired = key.sign(
                DesiredState(
                    fleet="bench",
                    target=DesiredTarget.device("bench-01"),
                    rollout_id=f"bench-{version}",
                    sequence=version,
                    issued_at=utc_now(),
                    manifest=manifests[version],
                )
            )
            published[version] = time.monotonic()
            listener.publish(
                topics.device("bench-01", Channel.DESIRED),
                desired.to_payload(),
                qos=1,
                retain=True,
            )
            if not _wait_for_outcome(reports, version, published[version], timeout_s=60.0):
                break
            time.sleep(PAUSE_S)
        camera = agent.cameras[0]
        agent.stop()
        listener.loop_stop()
        listener.disconnect()

    print(json.dumps(_report(args, records, reports, published, camera.stats.frames)))


class Record(NamedTuple):
    sequence: int
    done_at: float
    latency_s: float
    version: int | None


class Report(NamedTuple):
    at: float
    state: OtaState
    running_version: int | None
    probation: bool


def _wait_for_outcome(reports: list[Report], version: int, since: float, timeout_s: float) -> bool:
    """Until ``version`` passed probation (True) or the agent gave up on it (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for report in list(reports):
            if report.at < since:
                continue
            if report.state in (OtaState.FAILED, OtaState.ROLLED_BACK):
                return False
            # Reported "active" twice: on probation first, then proven.
            good = report.state is OtaState.ACTIVE and not report.probation
            if good and report.running_version == version:
                return True
        time.sleep(0.05)
    return False


def _swap_figures(
    records: list[Record], reports: list[Report], version: int, published: float, until: float
) -> dict[str, Any]:
    switch = next((r.done_at for r in records if r.version == version), None)
    quiet = [r for r in records if published - PAUSE_S + 0.3 <= r.done_at < published]
    median = statistics.median(r.latency_s for r in quiet)
    active_at = next(
        (
            r.at
            for r in reports
            if r.at >= published and r.state is OtaState.ACTIVE and r.running_version == version
        ),
        None,
    )
    figures: dict[str, Any] = {
        "version": version,
        "publish_to_active_s": round(active_at - published, 3) if active_at else None,
        "median_latency_ms": round(median * 1000, 2),
        "ota_states": [
            (r.state.value, round(r.at - published, 3))
            for r in reports
            if published <= r.at < until
        ],
    }
    if switch is None:
        return figures
    # The first frame of the new model is a trial frame; the swap comes after the trial.
    end = max(switch, active_at or switch) + SWAP_TAIL_S
    window = [r for r in records if published <= r.done_at <= end]
    length = end - published
    # The same measure on an equally long stretch just before the publish (as long as the
    # quiet pause allows): what this machine does with no swap at all.
    control = [r for r in quiet if r.done_at >= published - length]
    worst = max(window, key=lambda r: r.latency_s)
    figures.update(
        worst_latency_ms=round(worst.latency_s * 1000, 2),
        worst_latency_vs_median=round(worst.latency_s / median, 3),
        worst_latency_vs_median_without_swap=round(max(r.latency_s for r in control) / median, 3),
        window_s=round(length, 3),
        # When the slowest frames finished, in seconds from the publish: says which step
        # (downloading, staging, the switch) a slow frame overlapped.
        slowest_frames_s=sorted(
            ((round(r.done_at - published, 3), round(r.latency_s * 1000, 1)) for r in window),
            key=lambda item: -item[1],
        )[:3],
    )
    return figures


def _report(
    args: argparse.Namespace,
    records: list[Record],
    reports: list[Report],
    published: dict[int, float],
    produced: int,
) -> dict[str, Any]:
    sequences = [r.sequence for r in records]
    # Frames still in flight when the agent stopped are not the swaps' doing: count gaps only
    # below the last frame that came out.
    dropped = len(set(range(max(sequences) + 1)) - set(sequences))
    starts = list(published.items())
    ends = [t for _, t in starts[1:]] + [float("inf")]
    per_swap = [
        _swap_figures(records, reports, version, start, end)
        for (version, start), end in zip(starts, ends, strict=True)
    ]
    done = [s for s in per_swap if "worst_latency_vs_median" in s]

    def median_of(name: str) -> float | None:
        values = [s[name] for s in done if s.get(name) is not None]
        return round(statistics.median(values), 3) if values else None

    return {
        "swaps_published": len(per_swap),
        "swaps_completed": len(done),
        "frames_processed": len(records),
        "frames_produced": produced,
        "frames_dropped": dropped,
        "frames_duplicated": len(sequences) - len(set(sequences)),
        "publish_to_active_s": median_of("publish_to_active_s"),
        "worst_latency_vs_median": median_of("worst_latency_vs_median"),
        "worst_latency_vs_median_max": max(
            (s["worst_latency_vs_median"] for s in done), default=None
        ),
        "worst_latency_vs_median_without_swap": median_of("worst_latency_vs_median_without_swap"),
        "worst_latency_vs_median_without_swap_max": max(
            (s["worst_latency_vs_median_without_swap"] for s in done), default=None
        ),
        "model": "given" if args.onnx else "built-in 64px detector",
        "infer_workers": args.infer_workers,
        "s3_server_nice": 0 if args.s3_same_priority else 19,
        "download_link_mbps": args.link_mbps or None,
        "swaps": per_swap,
    }


if __name__ == "__main__":
    main()
