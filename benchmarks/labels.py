"""People in the loop at scale: ``labels push`` and ``labels pull`` against a real Label Studio.

    python benchmarks/labels.py [--examples 2000] [--baseline 300] [--quick]

A local Label Studio (SQLite, from the virtual environment ``make test`` gives it) and a
folder-backed S3 server (nanio) behind it. ``--examples`` hard examples of the synthetic
line are uploaded as agents upload them, with the model's boxes in their sidecars.

- **push**: ``push_examples`` (list the project, read sidecars, batched imports with
  pre-labels): examples/s.
- **baseline**: the SDK's plain one-by-one import, as its documentation shows it, run in
  Label Studio's own environment (where ``label-studio-sdk`` lives): ``tasks.create`` and
  ``predictions.create`` per example, the same task JSON, ``--baseline`` examples (its rate
  is steady; the whole set would take minutes). Target: push >= 5x its examples/s.
- The scripted annotator then submits the truth of every task through Label Studio's API.
- **pull**: ``pull_labels`` (paged listing, conversion, labels to the store, ledger rows):
  examples/s.
- **memory**: peak Python allocations (tracemalloc) of push and of pull for a quarter of
  the examples and for all of them, in separate projects: flat means the ratio stays near 1
  while the examples grow 4x.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe_machine  # noqa: E402
from cloud_trainer.config import TrainerConfig  # noqa: E402
from cloud_trainer.fleet.db import open_database  # noqa: E402
from cloud_trainer.labelstudio.client import LabelStudioClient  # noqa: E402
from cloud_trainer.labelstudio.pull import pull_labels  # noqa: E402
from cloud_trainer.labelstudio.push import ensure_project, push_examples  # noqa: E402
from cloud_trainer.labelstudio.reviews import ReviewLedger  # noqa: E402
from cloud_trainer.labelstudio.tasks import label_config, task_for_example  # noqa: E402
from cloud_trainer.store import ObjectStore  # noqa: E402
from shared.hard_examples import HardExampleSidecar  # noqa: E402
from shared.synth import CLASS_NAMES  # noqa: E402
from testing.label_studio_annotator import annotate_with_truth  # noqa: E402
from testing.local_services import (  # noqa: E402
    LabelStudioProcess,
    NanioS3Process,
    find_label_studio,
)
from testing.synthetic_examples import upload_examples  # noqa: E402

T = TypeVar("T")

# The SDK's one-by-one import, run by Label Studio's own interpreter.
SDK_BASELINE = """
import json, sys, time
from label_studio_sdk import LabelStudio
url, token, project, path = sys.argv[1:5]
tasks = json.load(open(path))
client = LabelStudio(base_url=url, api_key=token)
started = time.perf_counter()
for task in tasks:
    created = client.tasks.create(project=int(project), data=task["data"])
    for p in task["predictions"]:
        client.predictions.create(
            task=created.id, result=p["result"], score=p["score"], model_version=p["model_version"]
        )
print(json.dumps({"seconds": time.perf_counter() - started, "tasks": len(tasks)}))
"""


def measured(call: Callable[[], T]) -> tuple[T, float, int]:
    """(result, seconds, peak bytes of Python allocations during the call)."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = call()
    finally:
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return result, seconds, peak


def config_for(
    fleet: str, nanio: NanioS3Process, studio: LabelStudioProcess, work: Path
) -> TrainerConfig:
    return TrainerConfig(
        storage={
            "bucket": "labels-bench",
            "endpoint_url": nanio.endpoint_url,
            "access_key_id": nanio.access_key,
            "secret_access_key": nanio.secret_key,
        },
        model_line={"fleet": fleet, "name": "bolts"},
        labeling={"label_studio": {"url": studio.url, "token": studio.personal_access_token()}},
        work_dir=work / fleet,
    )


def one_round(
    count: int, fleet: str, nanio: NanioS3Process, studio: LabelStudioProcess, work: Path
) -> dict[str, Any]:
    config = config_for(fleet, nanio, studio, work)
    store = ObjectStore.from_config(config.storage)
    upload_examples(
        store, fleet=fleet, count=count, with_predictions=True, model=("bolts", 1), seed=3
    )
    ledger = ReviewLedger(open_database(config.fleet.url(config.work_dir)))
    with LabelStudioClient.from_section(config.labeling.label_studio) as client:
        pushed, push_s, push_peak = measured(lambda: push_examples(store, client, config))
        assert pushed.pushed == count, pushed.summary()
        started = time.perf_counter()
        annotated = annotate_with_truth(client, pushed.project_id, store, list(CLASS_NAMES))
        annotate_s = time.perf_counter() - started
        pulled, pull_s, pull_peak = measured(lambda: pull_labels(store, client, ledger, config))
        assert pulled.labeled == count, pulled.summary()
        again, again_s, _ = measured(lambda: pull_labels(store, client, ledger, config))
        assert again.unchanged == count
    return {
        "examples": count,
        "push_s": round(push_s, 2),
        "push_per_s": round(count / push_s, 1),
        "push_peak_kib": push_peak // 1024,
        "annotator_per_s": round(annotated.submitted / annotate_s, 1),
        "pull_s": round(pull_s, 2),
        "pull_per_s": round(count / pull_s, 1),
        "pull_peak_kib": pull_peak // 1024,
        "repull_unchanged_per_s": round(count / again_s, 1),
    }


def sdk_baseline(
    count: int, nanio: NanioS3Process, studio: LabelStudioProcess, work: Path
) -> dict[str, Any]:
    fleet = "sdk"
    config = config_for(fleet, nanio, studio, work)
    store = ObjectStore.from_config(config.storage)
    uploaded = upload_examples(
        store, fleet=fleet, count=count, with_predictions=True, model=("bolts", 1), seed=3
    )
    tasks = []
    for example in uploaded:
        body, _ = store.get(example.keys.sidecar)
        sidecar = HardExampleSidecar.model_validate_json(body)
        tasks.append(
            task_for_example(
                sidecar,
                example_key=example.keys.image,
                image_uri=f"s3://{store.bucket}/{example.keys.image}",
                classes=list(CLASS_NAMES),
            )
        )
    path = work / "sdk-tasks.json"
    path.write_text(json.dumps(tasks))
    with LabelStudioClient.from_section(config.labeling.label_studio) as client:
        project_id = ensure_project(client, config)
        assert client.project(project_id)["label_config"] == label_config(CLASS_NAMES)
    python = Path(find_label_studio()).with_name("python")  # its own environment
    done = subprocess.run(
        [
            str(python),
            "-c",
            SDK_BASELINE,
            studio.url,
            studio.personal_access_token(),
            str(project_id),
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "examples": figures["tasks"],
        "seconds": round(figures["seconds"], 2),
        "per_s": round(figures["tasks"] / figures["seconds"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--baseline", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="200 examples, 50 for the SDK")
    args = parser.parse_args()
    if args.quick:
        args.examples, args.baseline = 200, 50
    work = Path(tempfile.mkdtemp(prefix="lf-labels-bench-"))
    with NanioS3Process(work / "nanio") as nanio, LabelStudioProcess(work / "studio") as studio:
        ObjectStore.from_config(config_for("x", nanio, studio, work).storage).create_bucket()
        quarter = one_round(args.examples // 4, "quarter", nanio, studio, work)
        print("quarter:", json.dumps(quarter), flush=True)
        full = one_round(args.examples, "full", nanio, studio, work)
        print("full:", json.dumps(full), flush=True)
        baseline = sdk_baseline(args.baseline, nanio, studio, work)
        print("sdk one-by-one:", json.dumps(baseline), flush=True)
    result = {
        "benchmark": "labels",
        "machine": describe_machine(),
        "label_studio": "1.23.2 (SQLite, loopback)",
        "examples": args.examples,
        "push_examples_per_s": full["push_per_s"],
        "pull_examples_per_s": full["pull_per_s"],
        "sdk_one_by_one_examples_per_s": baseline["per_s"],
        "push_vs_sdk_one_by_one": round(full["push_per_s"] / baseline["per_s"], 2),
        "push_peak_kib_growth_4x_examples": round(
            full["push_peak_kib"] / max(quarter["push_peak_kib"], 1), 2
        ),
        "pull_peak_kib_growth_4x_examples": round(
            full["pull_peak_kib"] / max(quarter["pull_peak_kib"], 1), 2
        ),
        "quarter": quarter,
        "full": full,
        "sdk_baseline": baseline,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
